"""Active/standby failover with real processes: crash, hang, fencing, switch-over, chaos."""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from engine.errors import FencedError
from engine.exec.procs import flock_holders, starttime
from engine.model import RunState
from engine.paths import StatePaths
from engine.store.abc import LeaderClaim
from engine.store.intents import Audit, NewRun, Paused, RunFinished
from engine.store.sqlite.db import connect
from engine.store.sqlite.ledger import Ledger
from tests.helpers import Up, runs, vigil, vigil_json, wait_for, write_job

FAST_HA = '[scheduler]\nheartbeat_interval = "100ms"\nheartbeat_timeout = "1s"\n'


def active_pid(state: Path) -> int | None:
    status = vigil_json(state, "status")
    return status["active"]["pid"] if status["active"] else None


def standby_pids(state: Path) -> set[int]:
    return {s["pid"] for s in vigil_json(state, "status")["standbys"]}


def no_duplicates(state: Path) -> None:
    conn = sqlite3.connect(state / "vigil.db")
    dupes = conn.execute(
        "SELECT job, scheduled_for, attempt, COUNT(*) FROM runs GROUP BY 1, 2, 3 HAVING COUNT(*) > 1"
    ).fetchall()
    assert dupes == []
    launched_twice = conn.execute(
        "SELECT job, scheduled_for, COUNT(*) FROM runs WHERE attempt = 1 AND state NOT IN ('missed', 'skipped') "
        "GROUP BY 1, 2 HAVING COUNT(*) > 1"
    ).fetchall()
    assert launched_twice == []
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def every_fire_accounted(state: Path, job: str, start: datetime, end: datetime) -> None:
    """Each whole second in [start, end] has exactly one row for `job` (a run, or missed/skipped)."""
    seen = Counter(
        datetime.fromisoformat(r["scheduled_for"]).replace(microsecond=0)
        for r in runs(state, "--job", job)
        if r["attempt"] == 1
    )
    t = start.replace(microsecond=0) + timedelta(seconds=1)
    missing = []
    while t <= end:
        if seen[t] != 1:
            missing.append((t.isoformat(), seen[t]))
        t += timedelta(seconds=1)
    assert missing == [], f"fires not accounted for exactly once: {missing[:10]}"


def setup_jobs(jobs_dir: Path, gate: Path) -> None:
    (jobs_dir / "vigil.toml").write_text(FAST_HA)
    write_job(jobs_dir, "tick", 'every = "1s"\ncatchup = "all"\ncommand = "true"\n')
    write_job(jobs_dir, "tock", 'every = "1s"\ncatchup = "latest"\ncommand = "true"\n')
    write_job(jobs_dir, "long", f'command = "while [ ! -e {gate} ]; do sleep 0.05; done; exit 5"\n')


def active_and_standby(start_up, state_dir: Path) -> tuple[Up, Up]:
    """Two `vigil up` on one state: the first active, the second registered as its standby."""
    first = start_up()
    first.wait_active()
    second = start_up()
    wait_for(lambda: second.pid in standby_pids(state_dir), 5, what="standby to register")
    return first, second


def test_crash_failover_adopts_and_accounts_for_every_fire(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    setup_jobs(jobs_dir, gate)
    first, second = active_and_standby(start_up, state_dir)
    t_start = datetime.now(UTC)
    vigil(state_dir, "run", "long")
    wait_for(lambda: [r for r in runs(state_dir, "--job", "long") if r["state"] == "running"], 5)
    time.sleep(1.2)
    first.kill9()
    t_killed = time.monotonic()
    wait_for(lambda: active_pid(state_dir) == second.pid, 3, what="standby to take over")
    takeover = time.monotonic() - t_killed
    assert takeover < 2.0  # sub-second in bench/failover.py; generous here for a loaded CI box
    gate.touch()
    long_runs = wait_for(
        lambda: [r for r in runs(state_dir, "--job", "long") if r["state"] not in ("running", "launching")], 5
    )
    assert len(runs(state_dir, "--job", "long")) == 1
    assert long_runs[0]["state"] == "failed" and long_runs[0]["exit_code"] == 5
    time.sleep(1.5)
    t_end = datetime.now(UTC) - timedelta(seconds=1)
    no_duplicates(state_dir)
    every_fire_accounted(state_dir, "tick", t_start, t_end)
    every_fire_accounted(state_dir, "tock", t_start, t_end)
    status = vigil_json(state_dir, "status")
    failover = status["failovers"][0]
    assert failover["cause"] == "crash" and failover["from_pid"] == first.pid and failover["to_pid"] == second.pid
    assert failover["gap_ms"] is not None and failover["gap_ms"] < 2000
    tock_missed = [r for r in runs(state_dir, "--job", "tock") if r["state"] == "missed"]
    assert all(r["reason"].startswith("failover") for r in tock_missed)


def test_hung_active_is_killed_and_replaced(start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    setup_jobs(jobs_dir, tmp_path / "gate")
    first, second = active_and_standby(start_up, state_dir)
    t_start = datetime.now(UTC)
    os.kill(first.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: first.proc.poll() is not None, 5, what="the standby to kill the hung active")
    finally:
        if first.proc.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
    assert time.monotonic() - stopped < 1.0 + 2.0
    assert first.proc.returncode == -signal.SIGKILL
    wait_for(lambda: active_pid(state_dir) == second.pid, 3)
    time.sleep(1.5)
    no_duplicates(state_dir)
    every_fire_accounted(state_dir, "tick", t_start, datetime.now(UTC) - timedelta(seconds=1))
    failover = vigil_json(state_dir, "status")["failovers"][0]
    assert failover["cause"] == "hang" and failover["from_pid"] == first.pid
    # the killed process never wrote again: every row after the takeover carries the new epoch
    conn = sqlite3.connect(state_dir / "vigil.db")
    epoch = conn.execute("SELECT epoch FROM leader").fetchone()[0]
    assert conn.execute("SELECT COUNT(*) FROM runs WHERE created_at > ? AND epoch <> ?",
                        (failover["at"], epoch)).fetchone()[0] == 0  # fmt: skip


async def test_a_deposed_process_cannot_write(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    old = Ledger(paths)
    await old.open()
    await old.take_leadership(LeaderClaim(1, 1, start))
    await old.commit([Paused("j", False)])  # writes while it leads
    new = Ledger(paths)
    await new.open()
    await new.take_leadership(LeaderClaim(2, 2, start + timedelta(seconds=1)))
    fire = NewRun(1, "j", start, 1, RunState.LAUNCHING, "schedule", start)
    with pytest.raises(FencedError):
        await old.commit([fire])
    with pytest.raises(FencedError):
        await old.commit([Audit(start, "u", "run", "j", "ok")])
    assert await new.commit([fire]) == {1}
    with pytest.raises(FencedError):
        await old.commit([RunFinished(1, RunState.FAILED, None, 1, start)])
    conn = connect(paths)
    assert conn.execute("SELECT state FROM runs WHERE id = 1").fetchone()[0] == "launching"
    await old.close()
    await new.close()


def test_switchover_hands_over_within_a_second(start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    setup_jobs(jobs_dir, tmp_path / "gate")
    first = start_up()
    first.wait_active()
    refused = vigil(state_dir, "switchover", check=False)
    assert refused.returncode == 1 and "no standby" in refused.stderr
    second = start_up()
    wait_for(lambda: second.pid in standby_pids(state_dir), 5)
    t_start = datetime.now(UTC)
    t0 = time.monotonic()
    vigil(state_dir, "switchover")
    wait_for(lambda: active_pid(state_dir) == second.pid, 2, interval=0.02)
    assert time.monotonic() - t0 < 1.5  # includes two CLI process starts
    wait_for(lambda: first.pid in standby_pids(state_dir), 5, what="old active to become a standby")
    assert first.proc.poll() is None
    time.sleep(1.5)
    no_duplicates(state_dir)
    every_fire_accounted(state_dir, "tick", t_start, datetime.now(UTC) - timedelta(seconds=1))
    failover = vigil_json(state_dir, "status")["failovers"][0]
    assert failover["cause"] == "switchover"
    # and back again
    vigil(state_dir, "switchover")
    wait_for(lambda: active_pid(state_dir) == first.pid, 3)


def test_three_instances_one_active(start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    setup_jobs(jobs_dir, tmp_path / "gate")
    ups = [start_up() for _ in range(3)]
    wait_for(lambda: active_pid(state_dir) in {u.pid for u in ups}, 5)
    wait_for(lambda: len(standby_pids(state_dir)) == 2, 5)
    t_start = datetime.now(UTC)
    for _ in range(2):
        current = active_pid(state_dir)
        victim = next(u for u in ups if u.pid == current)
        victim.kill9()
        wait_for(lambda v=victim: active_pid(state_dir) not in (None, v.pid), 3)
    survivor = active_pid(state_dir)
    assert survivor in {u.pid for u in ups if u.proc.poll() is None}
    time.sleep(1.5)
    no_duplicates(state_dir)
    every_fire_accounted(state_dir, "tick", t_start, datetime.now(UTC) - timedelta(seconds=1))
    assert len(vigil_json(state_dir, "status")["failovers"]) == 2


def test_chaos_random_kills(start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    """A handful of SIGKILLs at random moments across three instances, then the invariants."""
    (jobs_dir / "vigil.toml").write_text(FAST_HA)
    write_job(jobs_dir, "tick", 'every = "1s"\ncatchup = "all"\ncommand = "true"\n')
    write_job(jobs_dir, "burst", 'every = "1s"\ncatchup = "all"\ncommand = "sleep 0.3"\n')
    write_job(jobs_dir, "slow", 'every = "2s"\noverlap = "allow"\ncatchup = "all"\ncommand = "sleep 1.5; exit 3"\n')
    rng = random.Random(int(os.environ.get("VIGIL_CHAOS_SEED", "7")))
    ups = [start_up() for _ in range(3)]
    wait_for(lambda: active_pid(state_dir) is not None, 5)
    t_start = datetime.now(UTC)
    for _ in range(5):
        time.sleep(rng.uniform(0.05, 1.2))  # includes moments mid-launch
        pid = active_pid(state_dir)
        victim = next((u for u in ups if u.pid == pid), None)
        if victim is None:
            continue
        victim.kill9()
        ups.append(start_up())
        wait_for(lambda v=victim: active_pid(state_dir) not in (None, v.pid), 4)
    time.sleep(2.5)
    t_end = datetime.now(UTC) - timedelta(seconds=2)
    wait_for(lambda: not [r for r in runs(state_dir, "--status", "running") if r["job"] == "slow"
                          and datetime.fromisoformat(r["scheduled_for"]) < t_end - timedelta(seconds=2)], 5)  # fmt: skip
    no_duplicates(state_dir)
    every_fire_accounted(state_dir, "tick", t_start, t_end)
    every_fire_accounted(state_dir, "burst", t_start, t_end)
    slow = [r for r in runs(state_dir, "--job", "slow") if r["state"] not in ("missed", "skipped", "running")]
    # every slow run that ran reports its real exit code or an explicit unknown
    assert all(r["exit_code"] == 3 or r["state"] == "unknown" for r in slow), slow
    # no orphaned job processes: a job process still alive after the ledger recorded its run's end
    live: dict[str, psutil.Process] = {}
    for started in (state_dir / "runs").glob("*/started"):
        run_id = started.parent.name
        try:
            proc = psutil.Process(int(started.read_text()))
            if proc.environ().get("VIGIL_RUN_ID") == run_id:
                live[run_id] = proc
        except (ValueError, psutil.Error):
            continue
    ended = {str(r["id"]) for r in runs(state_dir) if r["state"] not in ("pending", "waiting", "running", "launching")}
    # Read in this order (processes, then the ledger), a run that starts meanwhile is not taken for an orphan.
    orphans = [run_id for run_id, proc in live.items() if run_id in ended and proc.is_running()]
    assert orphans == [], f"orphan job processes of runs {orphans}"


def test_jobs_do_not_inherit_the_leader_lock(start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    fds = tmp_path / "fds"
    write_job(jobs_dir, "peek", f'command = "ls -l /proc/$$/fd > {fds}"\n')
    start_up().wait_active()
    vigil(state_dir, "run", "peek")
    wait_for(lambda: fds.exists() and fds.read_text(), 5)
    listing = fds.read_text()
    assert "leader.lock" not in listing
    assert "vigil.db" not in listing
    assert "/lock" not in listing  # the run lock stays with the shim


def test_a_switched_over_node_reaps_the_shims_it_started(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    setup_jobs(jobs_dir, gate)
    first, second = active_and_standby(start_up, state_dir)
    vigil(state_dir, "run", "long")
    wait_for(lambda: [r for r in runs(state_dir, "--job", "long") if r["state"] == "running"], 5)
    vigil(state_dir, "switchover")
    wait_for(lambda: active_pid(state_dir) == second.pid, 3)
    gate.touch()
    wait_for(lambda: [r for r in runs(state_dir, "--job", "long") if r["exit_code"] == 5], 5)

    def zombies() -> list[psutil.Process]:
        return [c for c in psutil.Process(first.pid).children() if c.status() == psutil.STATUS_ZOMBIE]

    # The shim the first node started is still its child: it must not stay a zombie of a standby.
    wait_for(lambda: not zombies(), 3, what="the first node to reap its shim")


def test_an_active_whose_start_fails_exits_instead_of_hanging(state_dir: Path, jobs_dir: Path) -> None:
    import subprocess
    import sys

    # A start-up failure inside the active (an internal error while loading) must end the process,
    # so that a standby or a supervisor takes over, not leave it holding the lock and serving.
    program = (
        "import sys, engine.run.loop as s\n"
        "async def fail(self): raise RuntimeError('injected start failure')\n"
        "s.Scheduler.prepare = fail\n"
        "from engine.cli import main\n"
        f"sys.exit(main(['up', '--state', {str(state_dir)!r}, '--jobs', {str(jobs_dir)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=20)
    assert done.returncode != 0
    assert "injected start failure" in done.stderr
    assert not (state_dir / "control.sock").exists()


# ---------------------------------------------------------------- identity of the process a standby kills

HOLD_LOCK = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


def hold_lock(path: Path) -> subprocess.Popen[str]:
    """A process that is not Vigil holding the flock on `path`."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def set_leader_row(state: Path, pid: int, start: int | None) -> None:
    conn = connect(StatePaths(state))
    conn.execute(
        "UPDATE leader SET pid = ?, starttime = ?, since = ?, clean_stop = 0 WHERE id = 1",
        (pid, start, datetime.now(UTC).isoformat()),
    )
    conn.close()


@pytest.mark.parametrize("row_names", ["a dead process", "a live unrelated process", "the holder's reused pid"])
def test_a_standby_never_signals_a_process_that_is_not_the_lock_holder(
    start_up, state_dir: Path, jobs_dir: Path, row_names: str
) -> None:
    (jobs_dir / "vigil.toml").write_text(FAST_HA)
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    connect(StatePaths(state_dir)).close()  # a state directory whose last active is gone
    bystander = subprocess.Popen(["sleep", "60"])
    holder = hold_lock(state_dir / "leader.lock")
    try:
        bystander_start = starttime(bystander.pid)
        assert bystander_start is not None
        if row_names == "a dead process":
            bystander.kill()
            bystander.wait()
            set_leader_row(state_dir, bystander.pid, bystander_start)
        elif row_names == "a live unrelated process":
            set_leader_row(state_dir, bystander.pid, bystander_start)
        else:
            set_leader_row(state_dir, holder.pid, (starttime(holder.pid) or 0) + 1)
        standby = start_up()
        wait_for(lambda: "standby (pid" in standby.output(), 10, what="the standby to start")
        lines_before = len(standby.output().splitlines())
        time.sleep(3.0)  # three heartbeat timeouts of silence
        lines = standby.output().splitlines()[lines_before:]
        assert len(lines) <= 3, "the standby logs per tick:\n" + "\n".join(lines[:20])
        assert not any("killed it" in line for line in lines), lines
        assert holder.poll() is None, "the standby killed a lock holder that the leader row does not name"
        if row_names == "a live unrelated process":
            assert bystander.poll() is None, "the standby killed a process that does not hold the lock"
        assert standby.proc.poll() is None
        holder.kill()
        holder.wait()
        standby.wait_active(5)  # the lock is free: the standby takes over at once
        assert bystander.poll() is None or row_names == "a dead process"
    finally:
        for proc in (holder, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- hang detection from a standby's first second


@pytest.mark.parametrize("when", ["before the standby starts", "as the standby starts"])
def test_an_active_stopped_before_its_standby_subscribed_is_taken_over(
    start_up, state_dir: Path, jobs_dir: Path, when: str
) -> None:
    (jobs_dir / "vigil.toml").write_text('[scheduler]\nheartbeat_interval = "100ms"\nheartbeat_timeout = "2s"\n')
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    first = start_up()
    first.wait_active()
    try:
        if when == "before the standby starts":
            os.kill(first.pid, signal.SIGSTOP)
        second = start_up()
        if when == "as the standby starts":
            os.kill(first.pid, signal.SIGSTOP)
        wait_for(lambda: "standby (pid" in second.output(), 10, what="the standby to start")
        watching = time.monotonic()
        # heartbeat_timeout (2 s) from the standby's first second, plus a margin; not twice the timeout.
        wait_for(lambda: first.proc.poll() is not None, 3.5, interval=0.02, what="the stopped active to be killed")
        assert time.monotonic() - watching < 3.5
    finally:
        if first.proc.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
    assert first.proc.returncode == -signal.SIGKILL
    second.wait_active(5)
    failover = vigil_json(state_dir, "status")["failovers"][0]
    assert failover["cause"] == "hang" and failover["from_pid"] == first.pid


# ---------------------------------------------------------------- leader.lock removed or replaced


def lock_holders(state: Path) -> set[int]:
    try:
        st = os.stat(state / "leader.lock")
    except FileNotFoundError:
        return set()
    return flock_holders((st.st_dev, st.st_ino))


@pytest.mark.parametrize("fault", ["removed", "replaced", "removed, then the active killed"])
def test_a_removed_lock_file_leaves_exactly_one_active(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path, fault: str
) -> None:
    setup_jobs(jobs_dir, tmp_path / "gate")
    first, second = active_and_standby(start_up, state_dir)
    t_start = datetime.now(UTC)
    lock = state_dir / "leader.lock"
    lock.unlink()
    if fault == "replaced":
        lock.touch()
    elif fault == "removed, then the active killed":
        first.kill9()
    ups = (first, second)

    def one_active() -> int | None:
        alive = {u.pid for u in ups if u.proc.poll() is None}
        pid = active_pid(state_dir)
        return pid if pid in alive and lock_holders(state_dir) == {pid} else None

    survivor = wait_for(one_active, 5, what="exactly one active holding the current lock file")
    stable_until = time.monotonic() + 3.0
    while time.monotonic() < stable_until:  # and it stays so: nobody stops later, nobody else takes it
        assert one_active() == survivor, (first.output(), second.output())
        time.sleep(0.1)
    other = second if survivor == first.pid else first
    if other.proc.poll() is None:
        assert other.pid in standby_pids(state_dir)
    time.sleep(1.0)
    no_duplicates(state_dir)
    every_fire_accounted(state_dir, "tick", t_start, datetime.now(UTC) - timedelta(seconds=1))


def test_lock_file_replaced_and_held_by_another_process_stops_the_active(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    setup_jobs(jobs_dir, tmp_path / "gate")
    up = start_up()
    up.wait_active()
    replacement = state_dir / "leader.lock.new"
    holder = hold_lock(replacement)
    replacement.rename(state_dir / "leader.lock")  # atomically: a file someone else already holds
    try:
        wait_for(
            lambda: up.proc.poll() is not None, 5, what="the active to stop: another process holds the new lock file"
        )
        assert f"pid {holder.pid} holds the new one" in up.output()
    finally:
        holder.kill()
        holder.wait()


def test_lock_file_replaced_under_a_lone_active_is_locked_again(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    setup_jobs(jobs_dir, tmp_path / "gate")
    up = start_up()
    up.wait_active()
    lock = state_dir / "leader.lock"
    lock.unlink()
    lock.touch()
    wait_for(lambda: lock_holders(state_dir) == {up.pid}, 3, what="the active to lock the new file")
    assert "locked the new file" in up.output()
    assert up.is_active()
    # A node started now finds the lock taken and waits as a standby.
    second = start_up()
    wait_for(lambda: second.pid in standby_pids(state_dir), 5)


# ---------------------------------------------------------------- a heartbeat subscriber that never reads


def test_a_subscriber_that_never_reads_is_dropped_and_the_others_keep_their_heartbeats(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    setup_jobs(jobs_dir, tmp_path / "gate")
    first, second = active_and_standby(start_up, state_dir)
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(str(state_dir / "control.sock"))
    try:
        # Subscribe, then ask for far more than the socket holds and never read: only heartbeats
        # and these replies pile up in the active's buffer for this client.
        stalled.sendall(b'{"op": "subscribe", "role": "monitor"}\n' + b'{"op": "status"}\n' * 3000)
        wait_for(
            lambda: "dropping monitor subscriber" in first.output(), 10, what="the stalled subscriber to be dropped"
        )
        stalled.settimeout(5)
        received = 0
        while chunk := stalled.recv(1 << 20):  # what the kernel had, then the end: the active hung up
            received += len(chunk)
        assert received < 4 << 20
    except ConnectionResetError:
        pass
    finally:
        stalled.close()
    # The standby heard heartbeats all along: no takeover, the same active answers.
    time.sleep(1.5)
    assert active_pid(state_dir) == first.pid
    assert second.pid in standby_pids(state_dir)
    assert vigil_json(state_dir, "status")["failovers"] == []


def test_a_standby_resumed_from_sigstop_does_not_kill_a_healthy_active(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    setup_jobs(jobs_dir, tmp_path / "gate")  # heartbeat_timeout = 1s
    first, second = active_and_standby(start_up, state_dir)
    for _ in range(2):
        os.kill(second.pid, signal.SIGSTOP)
        time.sleep(1.5)  # longer than the timeout: the standby itself heard nothing meanwhile
        os.kill(second.pid, signal.SIGCONT)
        time.sleep(0.7)
        assert first.proc.poll() is None, "the resumed standby killed a healthy active:\n" + second.output()
    assert active_pid(state_dir) == first.pid
    wait_for(lambda: second.pid in standby_pids(state_dir), 3)


def test_a_crash_after_a_switchover_is_recorded_as_a_crash(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    setup_jobs(jobs_dir, tmp_path / "gate")
    ups = [start_up() for _ in range(3)]
    wait_for(lambda: active_pid(state_dir) in {u.pid for u in ups} and len(standby_pids(state_dir)) == 2, 8)
    old = next(u for u in ups if u.pid == active_pid(state_dir))
    vigil(state_dir, "switchover")
    wait_for(lambda: active_pid(state_dir) not in (None, old.pid), 3)
    new = next(u for u in ups if u.pid == active_pid(state_dir))
    witness = next(u for u in ups if u not in (old, new))  # heard the hand-over, then the new active
    wait_for(lambda: standby_pids(state_dir) == {old.pid, witness.pid}, 5)
    os.kill(old.pid, signal.SIGSTOP)  # so that the witness is the one to take over
    try:
        new.kill9()
        wait_for(lambda: active_pid(state_dir) == witness.pid, 3)
    finally:
        os.kill(old.pid, signal.SIGCONT)
    latest = max(vigil_json(state_dir, "status")["failovers"], key=lambda f: f["at"])
    assert (latest["cause"], latest["from_pid"], latest["to_pid"]) == ("crash", new.pid, witness.pid)
