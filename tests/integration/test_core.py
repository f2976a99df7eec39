"""End-to-end behaviour of `vigil up` with real processes, a real SQLite file and real shims."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path

import psutil

from engine.paths import StatePaths
from engine.run.loop import Scheduler
from tests.helpers import runs, vigil, vigil_json, wait_for, write_job

OPEN = ("pending", "waiting", "launching", "running")


def terminal(state: Path, job: str) -> list[dict]:
    return [r for r in runs(state, "--job", job) if r["state"] not in ("pending", "launching", "running")]


def test_fires_are_ledgered_with_logs_env_and_metrics(start_up, state_dir: Path, jobs_dir: Path) -> None:
    write_job(
        jobs_dir,
        "hello",
        'every = "1s"\n'
        'command = "echo run=$VIGIL_RUN_ID job=$VIGIL_JOB try=$VIGIL_ATTEMPT epoch=$VIGIL_EPOCH '
        'for=$VIGIL_SCHEDULED_FOR; echo oops >&2"\n',
    )
    up = start_up()
    done = wait_for(lambda: [r for r in terminal(state_dir, "hello") if r["state"] == "succeeded"], 10)
    run = done[-1]
    assert run["exit_code"] == 0 and run["attempt"] == 1 and run["epoch"] >= 1
    for key in ("scheduled_for", "started_at", "ended_at"):
        assert run[key].endswith("+00:00")
    assert run["cpu_s"] is not None
    log = vigil(state_dir, "logs", str(run["id"])).stdout
    assert f"run={run['id']} job=hello try=1 epoch={run['epoch']}" in log
    assert f"for={run['scheduled_for']}" in log
    assert "oops" in log  # stderr goes to the same log
    # `every` fires at whole seconds: scheduled_for values are distinct and aligned
    sched = [r["scheduled_for"] for r in runs(state_dir, "--job", "hello")]
    assert len(sched) == len(set(sched))
    assert all(s.split(".")[1].startswith("000000") for s in sched)
    assert up.proc.poll() is None


def test_timeout_kills_the_whole_process_group(start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    write_job(
        jobs_dir,
        "slow",
        f'timeout = "1s"\ncommand = "sleep 60 & echo $! > {pids}; sh -c \'trap \\"\\" TERM; sleep 61\' & sleep 62"\n',
    )
    start_up().wait_active()
    vigil(state_dir, "run", "slow")
    run = wait_for(lambda: terminal(state_dir, "slow"), 10, what="slow to end")[0]
    assert run["state"] == "timed_out", run
    assert "timeout" in run["reason"]
    grandchild = int(pids.read_text())
    wait_for(lambda: not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie", 5)
    # nothing of the run's process group survives
    job_pid = run["pid"]
    assert job_pid is not None

    def group_gone() -> bool:
        try:
            os.killpg(job_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(group_gone, 3, what="the job's process group (one member ignores SIGTERM) to be gone")


def test_sigkill_of_scheduler_mid_run_then_restart(start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    write_job(jobs_dir, "long", f'command = "while [ ! -e {gate} ]; do sleep 0.05; done; exit 7"\n')
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    first = start_up()
    first.wait_active()
    run_id = json.loads(vigil(state_dir, "runs", "--json", "--job", "long").stdout or "[]")
    vigil(state_dir, "run", "long")
    wait_for(lambda: [r for r in runs(state_dir, "--job", "long") if r["state"] == "running"], 5)
    first.kill9()
    gate.touch()  # the job ends while no scheduler is running
    time.sleep(0.3)
    second = start_up()
    second.wait_active()
    done = wait_for(lambda: terminal(state_dir, "long"), 10, what="long's outcome")
    assert run_id == []
    assert len(runs(state_dir, "--job", "long")) == 1  # launched once, never again
    assert done[0]["state"] == "failed" and done[0]["exit_code"] == 7
    ticks = runs(state_dir, "--job", "tick")
    keys = [(r["scheduled_for"], r["attempt"]) for r in ticks]
    assert len(keys) == len(set(keys))
    # the restart saw the gap: fires while down are runs or missed rows with a reason
    assert all(r["reason"] for r in ticks if r["state"] == "missed")


def test_restart_adopts_a_running_job_and_records_its_exit(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    write_job(jobs_dir, "long", f'command = "while [ ! -e {gate} ]; do sleep 0.05; done; exit 4"\n')
    first = start_up()
    first.wait_active()
    vigil(state_dir, "run", "long")
    wait_for(lambda: [r for r in runs(state_dir, "--job", "long") if r["state"] == "running"], 5)
    first.kill9()
    second = start_up()
    second.wait_active()
    wait_for(lambda: "adopted run" in second.output(), 5)
    gate.touch()
    done = wait_for(lambda: terminal(state_dir, "long"), 10)
    assert done[0]["exit_code"] == 4 and done[0]["state"] == "failed"


def test_sigterm_stops_quickly_and_leaves_jobs_running(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    write_job(jobs_dir, "long", f'command = "while [ ! -e {gate} ]; do sleep 0.05; done"\n')
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "long")
    run = wait_for(lambda: [r for r in runs(state_dir, "--job", "long") if r["state"] == "running"], 5)[0]
    started = time.monotonic()
    assert up.stop(timeout=5) == 0
    assert time.monotonic() - started < 5
    job_pid = int((state_dir / "runs" / str(run["id"]) / "started").read_text())
    assert psutil.pid_exists(job_pid)  # the shim owns the job, not the scheduler
    status = vigil_json(state_dir, "status")
    assert status["active"] is None
    gate.touch()
    start_up().wait_active()
    done = wait_for(lambda: terminal(state_dir, "long"), 10)
    assert done[0]["state"] == "succeeded"


def test_cli_actions_reach_the_active_scheduler_and_are_audited(start_up, state_dir: Path, jobs_dir: Path) -> None:
    write_job(jobs_dir, "sleeper", 'command = "sleep 30"\n')
    write_job(jobs_dir, "ticker", 'every = "1s"\ncommand = "true"\n')
    start_up().wait_active()
    started = time.monotonic()
    out = vigil(state_dir, "run", "sleeper").stdout
    run_id = int(out.split()[2])
    wait_for(lambda: vigil_json(state_dir, "runs", "--job", "sleeper")[0]["state"] == "running", 1.5)
    vigil(state_dir, "kill", str(run_id))
    killed = wait_for(lambda: terminal(state_dir, "sleeper"), 3)[0]
    assert killed["state"] == "killed"
    assert time.monotonic() - started < 5
    vigil(state_dir, "pause", "ticker")
    time.sleep(1.5)
    paused = [r for r in runs(state_dir, "--job", "ticker") if r["reason"] == "job paused"]
    assert paused and all(r["state"] == "skipped" for r in paused)
    vigil(state_dir, "resume", "ticker")
    rerun = vigil(state_dir, "rerun", str(run_id)).stdout
    assert "started as run" in rerun
    refused = vigil(state_dir, "run", "no-such-job", check=False)
    assert refused.returncode == 3 and "no job named 'no-such-job'" in refused.stderr  # not found
    conn = sqlite3.connect(state_dir / "vigil.db")
    audit = conn.execute("SELECT os_user, action, target, result FROM audit ORDER BY id").fetchall()
    actions = [a[1] for a in audit]
    assert actions[:5] == ["run", "kill", "pause", "resume", "rerun"]
    assert audit[-1][1] == "run" and audit[-1][3].startswith("refused")
    assert all(a[0] for a in audit)


def test_commands_without_an_active_scheduler_fail_clearly(state_dir: Path, jobs_dir: Path) -> None:
    write_job(jobs_dir, "a", 'command = "true"\n')
    result = vigil(state_dir, "run", "a", check=False)
    assert result.returncode == 1
    assert "no active scheduler" in result.stderr
    status = vigil(state_dir, "status", check=False)  # nothing was ever started here: no state
    assert status.returncode == 1 and status.stderr.startswith("vigil: no Vigil state at")


def test_live_reload_picks_up_new_and_broken_files(start_up, state_dir: Path, jobs_dir: Path) -> None:
    write_job(jobs_dir, "first", 'every = "1s"\ncommand = "true"\n')
    start_up().wait_active()
    t0 = time.monotonic()
    write_job(jobs_dir, "second", 'every = "1s"\ncommand = "echo second"\n')
    wait_for(lambda: runs(state_dir, "--job", "second"), 4, what="the new job to fire")
    assert time.monotonic() - t0 < 3.5
    # break the first job: its last valid version keeps running
    write_job(jobs_dir, "first", 'every = "1s"\ncommand = "true"\nbogus = 1\n')
    time.sleep(1.5)
    before = len(runs(state_dir, "--job", "first"))
    wait_for(lambda: len(runs(state_dir, "--job", "first")) > before + 1, 4)
    catalog = {j["name"]: j for j in vigil_json(state_dir, "jobs", jobs=jobs_dir)}
    assert "second" in catalog


def test_queued_runs_of_a_deleted_job_all_end_with_a_reason(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    write_job(
        jobs_dir, "slow", f'every = "1s"\noverlap = "queue"\ncommand = "while [ ! -e {gate} ]; do sleep 0.05; done"\n'
    )
    start_up().wait_active()
    wait_for(lambda: len([r for r in runs(state_dir, "--job", "slow") if r["state"] == "pending"]) >= 2, 6)
    (jobs_dir / "slow.toml").unlink()
    time.sleep(1.5)  # the rescan drops the job; its running run and queue stay
    gate.touch()
    # The running run ends; each queued one then cannot start, and must not hang in `launching`.
    ended = wait_for(
        lambda: not [r for r in runs(state_dir, "--job", "slow") if r["state"] in OPEN],
        6,
        what="every run of the deleted job to end",
    )
    rows = runs(state_dir, "--job", "slow")
    assert ended and rows[-1]["state"] == "succeeded"
    queued = [r for r in rows if r["state"] != "succeeded"]
    assert len(queued) >= 2
    assert {(r["state"], r["reason"]) for r in queued} == {("failed", "job slow no longer exists")}


def test_log_cap_truncates_and_marks(start_up, state_dir: Path, jobs_dir: Path) -> None:
    (jobs_dir / "vigil.toml").write_text('[scheduler]\nlog_cap = "10KB"\n')
    write_job(jobs_dir, "chatty", 'command = "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done"\n')
    start_up().wait_active()
    vigil(state_dir, "run", "chatty")
    run = wait_for(lambda: terminal(state_dir, "chatty"), 10)[0]
    log = vigil(state_dir, "logs", str(run["id"])).stdout
    assert log.startswith("line-0\n")
    assert "[vigil] log truncated" in log
    assert len(log.encode()) < 10 * 1024 + 200
    assert run["state"] == "succeeded"


def test_retries_overlap_and_after_chain(start_up, state_dir: Path, jobs_dir: Path) -> None:
    write_job(jobs_dir, "flaky", 'retries = 2\nretry_delay = "200ms"\n'
              'command = "[ $VIGIL_ATTEMPT -ge 2 ] || exit 1"\n')  # fmt: skip
    write_job(jobs_dir, "down", 'after = ["flaky"]\ncommand = "echo downstream"\n')
    write_job(jobs_dir, "busy", 'every = "1s"\noverlap = "skip"\ncommand = "sleep 2.5"\n')
    start_up().wait_active()
    vigil(state_dir, "run", "flaky")
    flaky = wait_for(lambda: [r for r in runs(state_dir, "--job", "flaky") if r["state"] == "succeeded"], 8)
    attempts = sorted((r["attempt"], r["state"]) for r in runs(state_dir, "--job", "flaky"))
    assert attempts == [(1, "failed"), (2, "succeeded")]
    assert (
        flaky[0]["scheduled_for"]
        == [r for r in runs(state_dir, "--job", "flaky") if r["attempt"] == 1][0]["scheduled_for"]
    )
    down = wait_for(lambda: terminal(state_dir, "down"), 5, what="downstream fire")
    assert len(down) == 1 and down[0]["state"] == "succeeded"
    skipped = wait_for(lambda: [r for r in runs(state_dir, "--job", "busy") if r["state"] == "skipped"], 6)
    assert "overlap=skip" in skipped[0]["reason"]


def test_validate_reports_every_error(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    write_job(folder, "ok", 'command = "true"\ncron = "*/5 * * * *"\n')
    write_job(folder, "broken", 'command = "true"\ncron = "61 * * * *"\ntimezone = "Mars/Base"\n')
    proc = vigil(tmp_path / "state", "validate", str(folder), check=False)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith(f"{folder}/broken.toml:2: cron:") for line in lines), lines
    assert any(":3: timezone:" in line and "Mars/Base" in line for line in lines), lines
    good = vigil(tmp_path / "state", "validate", "sample_jobs", check=False)
    assert good.returncode == 0, good.stdout


def test_next_shows_utc_offsets(tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    write_job(folder, "berlin", 'command = "true"\ncron = "30 2 * * *"\ntimezone = "Europe/Berlin"\n')
    fires = vigil_json(tmp_path / "state", "next", "berlin", "-n", "3", jobs=folder)
    assert len(fires) == 3
    assert all(f[-6:] in ("+01:00", "+02:00") and ("T02:30:00" in f or "T03:00:00" in f) for f in fires), fires


def test_db_check_backup_and_prune(start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    write_job(jobs_dir, "t", 'every = "1s"\ncommand = "true"\n')
    start_up().wait_active()
    wait_for(lambda: terminal(state_dir, "t"), 5)
    assert vigil(state_dir, "db", "check").stdout.strip() == "ok"
    backup = tmp_path / "backup.db"
    vigil(state_dir, "db", "backup", str(backup))
    copied = sqlite3.connect(backup).execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    assert copied >= 1
    again = vigil(state_dir, "db", "backup", str(backup), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    time.sleep(1.2)
    out = vigil(state_dir, "db", "prune", "--older-than", "1s").stdout
    assert "pruned" in out and int(out.split()[1]) >= 1
    conn = sqlite3.connect(state_dir / "vigil.db")
    assert conn.execute("SELECT action FROM audit WHERE action = 'prune'").fetchone()


def test_listing_is_fast(start_up, state_dir: Path, jobs_dir: Path) -> None:
    write_job(jobs_dir, "t", 'every = "1s"\ncommand = "true"\n')
    start_up().wait_active()
    wait_for(lambda: terminal(state_dir, "t"), 5)
    import subprocess
    import sys

    best = min(
        _timed(lambda: subprocess.run([sys.executable, "-m", "engine.cli", "runs", "--json", "--state", str(state_dir)],
                                      capture_output=True, check=True))
        for _ in range(3)
    )  # fmt: skip
    assert best < 0.5  # the 150 ms target is measured in bench/; this guards against heavy imports
    code = "import sys, engine.cli, engine.api; print(sorted(m for m in ('textual','aiosqlite','psutil','croniter','uvicorn','httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _timed(fn) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def test_a_missing_workdir_fails_saying_it_could_not_start(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    write_job(jobs_dir, "lost", f'workdir = "{tmp_path / "no-such-dir"}"\ncommand = "true"\n')
    start_up().wait_active()
    vigil(state_dir, "run", "lost")
    run = wait_for(lambda: terminal(state_dir, "lost"), 5, what="lost to end")[0]
    # Not the job's exit code: the job never ran.
    assert (run["state"], run["exit_code"]) == ("failed", None), run
    assert run["reason"] == f"could not start: workdir {tmp_path / 'no-such-dir'}: No such file or directory"


def test_a_run_adopted_before_its_start_was_recorded_still_times_out(start_up, state_dir: Path, jobs_dir: Path) -> None:
    write_job(jobs_dir, "slow", 'timeout = "2s"\ncommand = "sleep 60"\n')
    first = start_up()
    first.wait_active()
    vigil(state_dir, "run", "slow")
    run = wait_for(lambda: [r for r in runs(state_dir, "--job", "slow") if r["state"] == "running"], 5)[0]
    first.kill9()
    # As if the active died between starting the shim and recording `running` (a deferred write).
    conn = sqlite3.connect(state_dir / "vigil.db")
    with conn:
        conn.execute(
            "UPDATE runs SET state = 'launching', started_at = NULL, deadline = NULL, "
            "writer_epoch = (SELECT epoch FROM leader) WHERE id = ?",
            (run["id"],),
        )
    conn.close()
    second = start_up()
    second.wait_active()
    wait_for(lambda: "adopted run" in second.output(), 5)
    done = wait_for(lambda: terminal(state_dir, "slow"), 6, what="the adopted run to time out")[0]
    assert done["state"] == "timed_out", done


async def test_a_command_after_the_loop_stopped_is_refused_not_left_hanging(state_dir: Path, jobs_dir: Path) -> None:
    write_job(jobs_dir, "a", 'command = "true"\n')
    scheduler = Scheduler(StatePaths(state_dir), jobs_dir)
    await scheduler.take_leadership(pid=os.getpid(), starttime=None, cause="start")
    await scheduler.prepare()
    loop = asyncio.create_task(scheduler.run())
    scheduler.request_stop()
    assert await asyncio.wait_for(loop, 5) == "stop"
    # A client whose request arrives while the active is stopping must get an answer.
    reply = await asyncio.wait_for(scheduler.command("pause", {"job": "a"}), 2)
    assert reply == {"ok": False, "error": "scheduler is stopping", "kind": "stopping"}


def test_a_malformed_command_is_refused_and_the_scheduler_lives_on(start_up, state_dir: Path, jobs_dir: Path) -> None:
    import socket

    from engine.control import encode, read_line

    write_job(jobs_dir, "a", 'command = "true"\n')
    up = start_up()
    up.wait_active()
    for request in ({"op": "kill", "run_id": "x"}, {"op": "rerun", "run_id": None}):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(state_dir / "control.sock"))
            sock.sendall(encode(request))
            reply = read_line(sock)
        assert reply is not None and reply["ok"] is False, reply
    vigil(state_dir, "run", "a")  # still answering
    assert up.proc.poll() is None


async def test_a_job_added_while_the_loop_fires_it_reaches_the_catalog(state_dir: Path, jobs_dir: Path) -> None:
    from collections.abc import Awaitable, Callable, Iterable
    from datetime import UTC, datetime

    from engine.clock import FakeClock
    from engine.store.intents import Intent
    from engine.store.sqlite.ledger import Ledger

    class RacingLedger(Ledger):
        """Runs `before_next_commit` inside the next commit, before it writes (as the loop would)."""

        before_next_commit: Callable[[], Awaitable[None]] | None = None

        async def commit(self, intents: Iterable[Intent]) -> set[int]:
            hook, self.before_next_commit = self.before_next_commit, None
            if hook is not None:
                await hook()
            return await super().commit(intents)

    clock = FakeClock(datetime(2026, 11, 29, 3, 0, 0, 500000, tzinfo=UTC))
    paths = StatePaths(state_dir)
    ledger = RacingLedger(paths)
    scheduler = Scheduler(paths, jobs_dir, clock=clock, store=ledger)
    await scheduler.take_leadership(pid=os.getpid(), starttime=None, cause="start")
    await scheduler.prepare()
    write_job(jobs_dir, "new", 'every = "1s"\nenabled = false\ncommand = "true"\n')
    fired: list[bool] = []

    async def the_loop_fires_the_new_job() -> None:  # the rescan awaits its commit...
        clock.advance(2)
        await scheduler.iterate()  # ...while the main loop handles the new job's first fire
        fired.append(True)

    ledger.before_next_commit = the_loop_fires_the_new_job
    try:
        await scheduler.rescan()
        assert fired == [True]
        catalog = await ledger.query("SELECT name, next_fire FROM jobs")
    finally:
        await ledger.close()
    assert [(r["name"], r["next_fire"]) for r in catalog] == [("new", "2026-11-29T03:00:03.000000+00:00")]


async def test_the_catalog_shows_a_broken_jobs_new_error_when_the_file_breaks_another_way(
    state_dir: Path, jobs_dir: Path
) -> None:
    """Found by review: only an error that appeared or cleared rewrote the job's catalog row (what
    readers without the files see), so a job broken a second way still showed its first message."""
    from engine.store.sqlite.ledger import Ledger

    paths = StatePaths(state_dir)
    ledger = Ledger(paths)
    scheduler = Scheduler(paths, jobs_dir, store=ledger)
    write_job(jobs_dir, "steady", 'cron = "0 0 1 1 *"\ncommand = "true"\n')
    await scheduler.take_leadership(pid=os.getpid(), starttime=None, cause="start")
    await scheduler.prepare()
    errors: list[str] = []
    try:
        for broken in ("bogus = 1", "other = 1"):
            write_job(jobs_dir, "steady", f'cron = "0 0 1 1 *"\ncommand = "true"\n{broken}\n')
            await scheduler.rescan()
            rows = await ledger.query("SELECT error FROM jobs WHERE name = 'steady'")
            errors.append(rows[0]["error"] or "")
    finally:
        await ledger.close()
    assert "bogus: unknown key" in errors[0]
    assert "other: unknown key" in errors[1]


def test_jobs_lists_a_broken_job_whose_last_valid_version_still_runs(start_up, state_dir: Path, jobs_dir: Path) -> None:
    """`vigil jobs` read only the files: a broken file's job vanished from it while it kept firing."""
    write_job(jobs_dir, "steady", 'cron = "0 0 1 1 *"\ncommand = "true"\n')
    write_job(jobs_dir, "never", 'command = "true"\nevery = "fast"\n')
    write_job(jobs_dir, "evil", 'command = "true"\n"k\\u001b[2J" = 1\n')  # an ESC in a key name
    up = start_up()
    up.wait_active()
    wait_for(lambda: "steady" in {j["name"] for j in vigil_json(state_dir, "jobs", jobs=jobs_dir)}, 5)
    write_job(jobs_dir, "steady", 'cron = "0 0 1 1 *"\ncommand = "true"\nbogus = 1\n')

    def broken_row() -> dict | None:
        found = {j["name"]: j for j in vigil_json(state_dir, "jobs", jobs=jobs_dir)}
        row = found.get("steady")
        return row if row and row["status"].startswith("error") else None

    row = wait_for(broken_row, 5, what="the broken job in `vigil jobs --json`")
    assert row["status"] == "error: using last valid version"
    assert "0 0 1 1 *" in row["schedule"]
    assert row["next_fire"] is not None and row["next_fire"].startswith(f"{time.gmtime().tm_year + 1}-01-01")
    assert "bogus: unknown key" in row["error"]
    never = {j["name"]: j for j in vigil_json(state_dir, "jobs", jobs=jobs_dir)}["never"]
    assert never["status"] == "error: not loaded" and never["next_fire"] is None and "every" in never["error"]
    table = vigil(state_dir, "jobs", jobs=jobs_dir).stdout
    line = next(line for line in table.splitlines() if line.startswith("steady"))
    assert "error: using last valid version" in line and "0 0 1 1 *" in line
    # the scheduler's log names the bad key with the control character escaped, never raw
    wait_for(lambda: "k\\x1b[2J: unknown key" in up.output(), 5, what="the escaped key in the log")
    assert "\x1b" not in up.output()
