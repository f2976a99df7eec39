"""Pure parts of the executor and reconciliation: no processes needed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from engine.errors import VigilError
from engine.exec import local as executor
from engine.exec.reconcile import Action, ShimEvidence, decide


def test_scope_prefix_only_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert executor.scope_prefix(7, {}) == []
    assert executor.scope_prefix(7, {"VIGIL_SYSTEMD_SCOPE": "0", "INVOCATION_ID": "x"}) == []
    prefix = executor.scope_prefix(7, {"VIGIL_SYSTEMD_SCOPE": "1"})
    assert prefix[0] == "/usr/bin/systemd-run" and "--scope" in prefix and prefix[-1] == "--"
    assert any(arg.endswith("-7") for arg in prefix if arg.startswith("--unit="))


def test_no_scope_for_a_non_root_unit_without_a_user_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(executor.os.path, "isdir", lambda path: path == "/run/systemd/system")
    monkeypatch.setattr(executor.os, "getuid", lambda: 1000)
    # A system unit with User=: `systemd-run --user` has no manager to talk to, every run would fail.
    assert executor.scope_prefix(7, {"INVOCATION_ID": "x"}) == []
    assert executor.scope_prefix(7, {"INVOCATION_ID": "x", "XDG_RUNTIME_DIR": "/run/user/1000"})[1] == "--user"
    monkeypatch.setattr(executor.os, "getuid", lambda: 0)
    assert "--user" not in executor.scope_prefix(7, {"INVOCATION_ID": "x"})


def test_job_argv_string_goes_through_sh_and_array_is_execd() -> None:
    assert executor.job_argv("echo $HOME") == ["/bin/sh", "-c", "echo $HOME"]
    assert executor.job_argv(("python3", "-V")) == ["python3", "-V"]


def test_exit_record_must_be_complete(tmp_path: Path) -> None:
    (tmp_path / "exit").write_text("exit=3 end\n")
    assert executor.read_exit_record(tmp_path) == 3
    (tmp_path / "exit").write_text("exit=3")
    assert executor.read_exit_record(tmp_path) is None
    (tmp_path / "exit").write_text("")
    assert executor.read_exit_record(tmp_path) is None


def test_a_complete_exit_record_dates_the_runs_end_by_its_write(tmp_path: Path) -> None:
    record = tmp_path / "exit"
    record.write_bytes(executor.EXIT_RESERVED)  # reserved at launch: no end yet, whatever its time
    assert executor.read_exit(tmp_path) == (None, None)
    with record.open("r+") as f:  # the shim writes in place, as `1<>` does
        f.write("exit=0 end\n")
    os.utime(record, (1_800_000_000.5, 1_800_000_000.5))
    assert executor.read_exit(tmp_path) == (0, 1_800_000_000.5)
    record.write_text("notstarted end\n")
    os.utime(record, (1_800_000_001.0, 1_800_000_001.0))
    assert executor.read_exit(tmp_path) == (None, 1_800_000_001.0)


def test_an_agents_end_is_our_start_plus_the_duration_it_measured() -> None:
    from datetime import UTC, datetime, timedelta

    from engine.agents.dispatcher import agent_end
    from engine.agents.protocol import RunStatus

    ours = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)

    def status(started: str | None, ended: str | None) -> RunStatus:
        return RunStatus(1, "j", "x", 1, "finished", started_at=started, ended_at=ended)

    # The agent's clock is 5 minutes behind ours: only the difference of its two times counts.
    measured = status("2026-11-29T02:55:00.000000+00:00", "2026-11-29T02:55:12.500000+00:00")
    assert agent_end(ours, measured) == ours + timedelta(seconds=12.5)
    assert agent_end(ours, status("2026-11-29T02:55:00+00:00", None)) is None  # an older agent
    assert agent_end(ours, status("2026-11-29T02:55:00+00:00", "2026-11-29T02:54:00+00:00")) is None
    assert agent_end(None, measured) is None


def test_cpu_seconds_from_times_output(tmp_path: Path) -> None:
    (tmp_path / "times").write_text("0m0.001000s 0m0.002000s\n1m2.500000s 0m0.250000s\n")
    assert executor.read_cpu_seconds(tmp_path) == pytest.approx(62.75)


@pytest.mark.parametrize(
    ("evidence", "action"),
    [
        (ShimEvidence(False, False, None, None, None), Action.LAUNCH),
        (ShimEvidence(True, False, None, None, None), Action.LAUNCH),
        (ShimEvidence(True, True, 10, 11, None), Action.ADOPT),
        (ShimEvidence(True, True, None, None, None), Action.ADOPT),
        (ShimEvidence(True, False, 10, 11, 0), Action.INGEST),
        (ShimEvidence(True, True, 10, 11, 2), Action.INGEST),
        (ShimEvidence(True, False, 10, None, None), Action.UNKNOWN),
        (ShimEvidence(True, False, 10, 11, None), Action.UNKNOWN),
    ],
)
def test_reconciliation_decisions(evidence: ShimEvidence, action: Action) -> None:
    decision = decide(evidence)
    assert decision.action is action
    if action is Action.UNKNOWN:
        assert decision.reason and "shim 10" in decision.reason


def test_a_shim_gone_while_its_job_group_lives_ends_the_group() -> None:
    decision = decide(ShimEvidence(True, False, 10, 11, None, job_group_alive=True))
    assert decision.action is Action.TERMINATE
    assert decision.reason == "the run's shim (pid 10) ended without recording the exit of job pid 11"
    # Without a live group the outcome stays unknown; with a live shim it is adopted.
    assert decide(ShimEvidence(True, False, 10, 11, None, job_group_alive=False)).action is Action.UNKNOWN
    assert decide(ShimEvidence(True, True, 10, 11, None, job_group_alive=True)).action is Action.ADOPT


def test_a_record_that_the_job_could_not_start_is_ingested_not_unknown() -> None:
    evidence = ShimEvidence(True, False, 10, None, None, start_failure="could not start: x: command not found")
    assert decide(evidence).action is Action.INGEST


def test_the_job_environment_is_quoted_for_the_shell_and_nul_is_refused(tmp_path: Path) -> None:
    script, words = executor.job_environment_script(
        {"A": "it's $HOME\n`x`", "MY-VAR": "v", "E": ""}, tmp_path / "run dir"
    )
    lines = script.splitlines(keepends=True)
    assert lines[0] == "export A='it'\"'\"'s $HOME\n"
    assert lines[1] == "`x`'\n"
    assert lines[2] == "export E=''\n"
    assert lines[-1].startswith("trap ") and "start-error" in lines[-1] and lines[-1].endswith(" EXIT\n")
    assert words == ["MY-VAR=v"]  # not a shell name: passed through env(1)
    with pytest.raises(VigilError, match=r"environment variable B: the value contains a NUL byte"):
        executor.job_environment_script({"B": "a\0b"}, tmp_path)
    with pytest.raises(VigilError, match="not a valid name"):
        executor.job_environment_script({"C=D": "x"}, tmp_path)


def test_start_failures_read_from_a_complete_record_only(tmp_path: Path) -> None:
    (tmp_path / "start-error").write_text("exec 127 python4")
    assert executor.read_start_failure(tmp_path) is None  # the shim has not written its record yet
    (tmp_path / "exit").write_text("notstarted end\n")
    assert executor.read_start_failure(tmp_path) == "could not start: python4: command not found"
    (tmp_path / "start-error").write_text("exec 126 ./data.csv")
    assert executor.read_start_failure(tmp_path) == "could not start: ./data.csv: cannot be executed (exec status 126)"
    (tmp_path / "start-error").write_text(f"workdir {tmp_path / 'gone'}")
    assert executor.read_start_failure(tmp_path) == (
        f"could not start: workdir {tmp_path / 'gone'}: No such file or directory"
    )
    (tmp_path / "exit").write_text("exit=127 end\n")
    assert executor.read_start_failure(tmp_path) is None  # the job's own 127


def test_how_a_shim_ended_is_named_from_its_wait_status() -> None:
    assert executor.shim_end_cause(5, signal.SIGKILL) == (
        "the run's shim (pid 5) was killed (signal 9, SIGKILL) without recording the job's exit"
    )
    assert (
        executor.shim_end_cause(5, 2 << 8)
        == "the run's shim (pid 5) exited with status 2 without recording the job's exit"
    )
    assert executor.shim_end_cause(5, None) == "the run's shim (pid 5) ended without recording the job's exit"


def test_the_shim_gets_a_fixed_environment_and_absolute_tools() -> None:
    env = executor.shim_environment({"PATH": "/nonexistent", "LD_PRELOAD": "x.so", "XDG_RUNTIME_DIR": "/run/user/1"})
    assert env == {"PATH": executor.SHIM_PATH, "XDG_RUNTIME_DIR": "/run/user/1"}
    tools = executor.find_tools()
    assert os.path.isabs(tools.setsid) and os.path.isabs(tools.env)
    with pytest.raises(VigilError, match=r"could not start: setsid: not found in /nonexistent"):
        executor.find_tools("/nonexistent")


def test_the_reason_after_ending_a_dead_shims_group_says_what_was_done() -> None:
    cause = "the run's shim (pid 5) was killed (signal 9, SIGKILL) without recording the job's exit"
    assert executor.ending_reason(cause, 42, executor.ending_outcome(False, 5), leader_alive=True) == (
        "failed",
        f"{cause}; job process group 42 terminated (SIGTERM)",
    )
    state, reason = executor.ending_reason(cause, 42, executor.ending_outcome(True, 1.5), leader_alive=False)
    assert state == "unknown"  # the job itself had ended: its exit status went with the shim
    assert reason == (
        f"{cause}; job pid 42 had already ended (its exit status is lost); the rest of its process group "
        "killed with SIGKILL after 1.5s (it outlived SIGTERM)"
    )


async def test_a_finished_runs_damaged_exit_record_reads_as_no_exit_recorded(tmp_path: Path) -> None:
    # Bytes that are not UTF-8 in the record (a damaged disk block) once made collecting raise.
    from engine.paths import StatePaths

    paths = StatePaths(tmp_path)
    run_dir = paths.run_dir(3)
    run_dir.mkdir(parents=True)
    (run_dir / "exit").write_bytes(b"\xff\xfeexit=0 end\n")
    (run_dir / "started").write_text("4242\n")
    (run_dir / "times").write_text("0m0.00s 0m0.00s\n0m1.50s 0m0.25s\n")
    ex = executor.LocalExecutor(paths, lambda end: None, log_cap=1 << 20, kill_grace=1.0)
    end = ex.collect(3)
    assert (end.exit_code, end.state, end.reason) == (None, None, None)
    assert (end.job_pid, end.cpu_s) == (4242, 1.75)
    (run_dir / "exit").write_text("exit=5 end\n" + " " * 50)  # over the reserved blanks, as the shim writes
    assert ex.collect(3).exit_code == 5
