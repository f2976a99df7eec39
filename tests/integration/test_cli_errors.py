"""Bad arguments and missing paths on the real `vigil` command: one `vigil:` line and exit 1, never a
hang, a traceback, raw control characters or a silent exit 0 (issue 9 review, items 9, 10, 15-17)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from engine.model import RunState
from engine.paths import StatePaths
from engine.store.sqlite.db import connect
from tests.helpers import Up, control, vigil, write_job


def one_vigil_line(proc: subprocess.CompletedProcess[str], *words: str, code: int = 1) -> str:
    """The command failed with `code` and said why in exactly one `vigil:` line on stderr."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vigil: "), proc.stderr
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def new_state(path: Path) -> Path:
    """A real, empty Vigil state directory (its database created the way `vigil up` creates it)."""
    connect(StatePaths(path)).close()
    return path


# ------------------------------------------------------------------------------- vigil next -n


@pytest.mark.parametrize("count", ["0", "-5", "1001", "999999999999"])
def test_next_count_outside_1_to_1000_is_a_vigil_error_at_once(tmp_path: Path, count: str) -> None:
    jobs = tmp_path / "jobs"
    write_job(jobs, "tick", 'every = "1s"\ncommand = "true"\n')
    for extra in ((), ("--json",)):
        proc = vigil(tmp_path / "state", "next", "tick", "-n", count, *extra, jobs=jobs, check=False, timeout=10)
        one_vigil_line(proc, f"-n {count}", "from 1 to 1000")
        assert proc.stdout == ""


def test_next_count_up_to_the_cap_is_served(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    write_job(jobs, "tick", 'every = "1s"\ncommand = "true"\n')
    out = vigil(tmp_path / "state", "next", "tick", "-n", "1000", jobs=jobs, timeout=10).stdout
    assert len(out.splitlines()) == 1000


# ---------------------------------------------------------------------- db prune --older-than


OUT_OF_RANGE = ("99999999999d", "1000000d", "36501d", "36500d1s", "99999999999999999999999w")


def test_prune_duration_beyond_100_years_is_a_vigil_error_offline(tmp_path: Path) -> None:
    state = new_state(tmp_path / "state")
    for duration in OUT_OF_RANGE:
        proc = vigil(state, "db", "prune", "--older-than", duration, check=False)
        one_vigil_line(proc, "--older-than", f"'{duration}'", "out of range", "at most", "36500d")
    assert "pruned 0 run(s)" in vigil(state, "db", "prune", "--older-than", "36500d").stdout


def test_prune_duration_beyond_100_years_is_a_vigil_error_through_the_active(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    write_job(jobs, "a", 'command = "true"\n')
    up = Up(tmp_path / "state", jobs)
    try:
        up.wait_active()
        for duration in OUT_OF_RANGE:
            proc = vigil(up.state, "db", "prune", "--older-than", duration, check=False)
            one_vigil_line(proc, "out of range", "36500d")
        assert "pruned 0 run(s)" in vigil(up.state, "db", "prune", "--older-than", "36500d").stdout
        # a hand-made client that sends the seconds itself gets the same reason, not "a number of seconds"
        for seconds in (8.64e15, 36500 * 86400 + 1, float("1e300")):
            reply = control(up.state / "control.sock", {"op": "prune", "older_than_s": seconds})
            assert reply["ok"] is False, reply
            assert "out of range" in reply["error"] and "36500d" in reply["error"], reply
        assert up.proc.poll() is None
    finally:
        up.stop()


# ---------------------------------------------------------------------------- vigil runs filters


def test_runs_with_an_unknown_status_names_the_valid_states(tmp_path: Path) -> None:
    state = new_state(tmp_path / "state")
    for status in ("bogus", "Failed", "", "timed-out"):
        for extra in ((), ("--json",)):
            line = one_vigil_line(vigil(state, "runs", "--status", status, *extra, check=False), "--status")
            assert all(s.value in line for s in RunState), line
            assert vigil(state, "runs", "--status", "timed_out", *extra).returncode == 0


def test_runs_job_filter_with_control_characters_is_echoed_escaped(tmp_path: Path) -> None:
    state = new_state(tmp_path / "state")
    proc = vigil(state, "runs", "--job", "\x1b[31mx\x07", check=False)
    line = one_vigil_line(proc, "--job", "'\\x1b[31mx\\x07'")
    assert "\x07" not in line
    # a name a job could have but no run has: an empty listing, as before
    assert vigil(state, "runs", "--job", "etl/extract").stdout.startswith("ID")


# ------------------------------------------------------------------------ missing paths: exit 1


def test_listing_commands_on_a_missing_job_folder_fail_with_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    a_file = tmp_path / "file.toml"
    a_file.write_text('command = "true"\n')
    for folder, why in ((missing, "does not exist"), (a_file, "is not a directory")):
        for args in (("jobs",), ("jobs", "--json"), ("next", "a"), ("next", "a", "--json")):
            one_vigil_line(vigil(tmp_path / "state", *args, jobs=folder, check=False), str(folder), why)
        one_vigil_line(vigil(tmp_path / "state", "validate", str(folder), check=False), str(folder))
    # no state directory yet is fine for `jobs`: the folder is what it lists
    write_job(tmp_path / "jobs", "a", 'command = "true"\n')
    assert vigil(tmp_path / "nostate", "jobs", jobs=tmp_path / "jobs").stdout.splitlines()[1].startswith("a ")


def test_state_commands_on_a_missing_state_directory_fail_with_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    for args in (
        ("status",),
        ("status", "--json"),
        ("runs",),
        ("runs", "--json"),
        ("logs", "1"),
        ("db", "check"),
        ("db", "backup", str(tmp_path / "backup.db")),
        ("db", "prune", "--older-than", "1d"),
    ):
        one_vigil_line(vigil(missing, *args, check=False), str(missing))
    assert not missing.exists()  # and none of them created it
    state = new_state(tmp_path / "state")  # an existing state with no active scheduler is still fine
    proc = vigil(state, "status")
    assert proc.returncode == 0 and proc.stdout.startswith("active: none")
    assert json.loads(vigil(state, "status", "--json").stdout)["active"] is None


def test_exit_codes_are_the_documented_ones(tmp_path: Path) -> None:
    from engine.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE

    docs = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    table = dict(re.findall(r"^\| `(\d+)` \| (.+) \|$", docs, re.M))
    assert set(table) == {"0", "1", "2", "3", "130"}, table
    codes = (EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INTERRUPTED)
    assert {str(code) for code in codes} == set(table)
    assert table["3"].startswith("Not found")
    state = new_state(tmp_path / "state")
    assert vigil(state, "runs").returncode == 0
    assert vigil(state, "runs", "--limit", "0", check=False).returncode == 1
    usage = vigil(state, "runs", "--limit", "many", check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    one_vigil_line(vigil(state, "logs", "999999", check=False), "no run with id 999999", code=3)


# ------------------------------------------------------------------------ not found: exit 3

MISSING_RUN = "999999"
#: A job or run the active looks up itself (its answer carries the kind "not_found").
#: Commands a running scheduler answers: (argv, what the line says).
ASKED_OF_THE_ACTIVE = [
    (["run", "no-such-job"], "no job named 'no-such-job'"),
    (["pause", "no-such-job"], "no job named 'no-such-job'"),
    (["resume", "no-such-job"], "no job named 'no-such-job'"),
    (["kill", MISSING_RUN], f"run {MISSING_RUN} is not running"),
    (["rerun", MISSING_RUN], f"no run with id {MISSING_RUN}"),
]


def test_a_missing_job_or_run_without_an_active_scheduler(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    write_job(jobs, "a", 'every = "1h"\ncommand = "true"\n')
    state = new_state(tmp_path / "state")
    # Read from the files: not found is known without a scheduler.
    one_vigil_line(vigil(state, "logs", MISSING_RUN, jobs=jobs, check=False), f"no run with id {MISSING_RUN}", code=3)
    one_vigil_line(vigil(state, "next", "no-such-job", jobs=jobs, check=False), "no valid job named", code=3)
    write_job(jobs, "broken", 'command = "true"\ncron = "99 * * * *"\n')  # there, but invalid: exit 1
    one_vigil_line(
        vigil(state, "next", "broken", jobs=jobs, check=False), "no valid job named 'broken'", "cron", code=1
    )
    # Commands for the active: with none, nothing can tell whether the job or run exists.
    for argv, _ in ASKED_OF_THE_ACTIVE:
        one_vigil_line(vigil(state, *argv, check=False), "no active scheduler", code=1)


@pytest.fixture(scope="module")
def active(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("active")
    write_job(root / "jobs", "a", 'every = "1h"\ncommand = "true"\n')
    up = Up(root / "state", root / "jobs")
    try:
        up.wait_active()
        yield up
    finally:
        up.stop()


def test_a_missing_run_with_an_active_scheduler_read_from_the_files(active: Up) -> None:
    one_vigil_line(vigil(active.state, "logs", MISSING_RUN, check=False), f"no run with id {MISSING_RUN}", code=3)


@pytest.mark.parametrize(("argv", "says"), ASKED_OF_THE_ACTIVE, ids=[" ".join(a) for a, _ in ASKED_OF_THE_ACTIVE])
def test_a_missing_job_or_run_the_active_looks_up_exits_3(active: Up, argv: list[str], says: str) -> None:
    one_vigil_line(vigil(active.state, *argv, check=False), says, code=3)


def test_the_active_sends_a_handlers_not_found_with_its_kind(active: Up) -> None:
    sock = active.state / "control.sock"
    # A hand-made client's malformed run id: the handler raises NotFoundError, the server sends the kind.
    reply = control(sock, {"op": "rerun", "run_id": "x"})
    assert reply == {"ok": False, "error": "no run with id 'x'", "kind": "not_found"}, reply
    # Other refusals stay "refused", and the CLI keeps exit 1 for them.
    reply = control(sock, {"op": "prune", "older_than_s": "soon"})
    assert reply["ok"] is False and reply["kind"] == "refused", reply
    assert control(sock, {"no": "op"}) == {"ok": False, "error": "malformed request", "kind": "refused"}
    one_vigil_line(vigil(active.state, "switchover", check=False), "no standby", code=1)
    one_vigil_line(vigil(active.state, "kill", "x", check=False), "run id 'x'", code=1)
    assert active.proc.poll() is None


def test_cli_reference_says_each_thing_once() -> None:
    """Merge leftovers (the same clause pasted twice) make the reference contradict itself."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    words = re.findall(r"[\w'`]+", re.sub(r"```.*?```", "", text, flags=re.S).lower())
    first: dict[tuple[str, ...], int] = {}
    repeated = set()
    for i in range(len(words) - 7):
        phrase = tuple(words[i : i + 8])
        if i - first.setdefault(phrase, i) >= 8:
            repeated.add(" ".join(phrase))
    assert not repeated, sorted(repeated)
    assert text.count("overwrite an existing file") == 1
