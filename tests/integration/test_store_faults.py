"""The state database's faults with real processes: a full disk, an external write lock, a lost,
emptied, foreign or corrupt file. The active waits out what passes and ends on what does not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.store.abc import LeaderClaim
from engine.store.intents import Audit
from tests.helpers import Up, exit_recorded, runs, vigil, vigil_json, wait_for, write_job

FAST = '[scheduler]\nheartbeat_interval = "100ms"\nheartbeat_timeout = "1s"\nlog_cap = "10MB"\n'


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MB tmpfs (skipped where mounting is not permitted)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(ballast: Path) -> None:
    """Fill the file system holding `ballast` to its last block."""
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def succeeded_after(state: Path, job: str, min_id: int) -> list[dict]:
    return [r for r in runs(state, "--job", job) if r["id"] > min_id and r["state"] == "succeeded"]


def test_a_full_disk_is_waited_out_and_named_then_the_active_carries_on(
    small_fs: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    state = small_fs / "state"
    stop = tmp_path / "stop-spewing"
    (jobs_dir / "vigil.toml").write_text(FAST)
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    # Writes its output as fast as it can until told to stop: it fills the disk within a second.
    spew = f"while [ ! -e {stop} ]; do head -c 1048576 /dev/zero 2>/dev/null; sleep 0.01; done"
    write_job(jobs_dir, "spew", f'command = "{spew}"\n')
    up = Up(state, jobs_dir, log=tmp_path / "up.log")
    try:
        up.wait_active()
        wait_for(lambda: succeeded_after(state, "tick", 0), 5, what="a first tick")
        spew_id = int(vigil(state, "run", "spew").stdout.split()[2])
        wait_for(lambda: free_bytes(small_fs) < 64 * 1024, 10, what="the disk to fill")
        wait_for(lambda: "disk full" in up.output(), 10, what=f"the fault to be named\n{up.output()}")
        time.sleep(2.5)  # a few fires fall due while nothing can be written
        assert up.proc.poll() is None, f"the active died on a full disk:\n{up.output()}"
        assert up.is_active()  # it still answers, it is not wedged
        full_log = up.output()
        assert "cannot rollback" not in full_log and "Traceback" not in full_log, full_log
        assert full_log.count("disk full") == 1, full_log  # logged once, not per retry
        newest = max(r["id"] for r in runs(state))

        # The operator frees space: the job stops and its huge log goes.
        stop.touch()
        os.truncate(state / "runs" / str(spew_id) / "log", 0)
        wait_for(lambda: succeeded_after(state, "tick", newest), 10, what=f"ticks after recovery\n{up.output()}")
        assert up.output().count("writable again") == 1, up.output()
        wait_for(
            lambda: vigil_json(state, "runs", "--job", "spew")[0]["state"] not in ("running", "launching"),
            10,
            what="the spewing run's end to be recorded",
        )
        # The fires that fell due meanwhile went the catch-up path, named by their cause.
        reasons = [r["reason"] or "" for r in runs(state, "--job", "tick")]
        assert any("state database unavailable: disk full" in r for r in reasons), reasons
        ticks = [(r["scheduled_for"], r["attempt"]) for r in runs(state, "--job", "tick")]
        assert len(ticks) == len(set(ticks))
        assert "Traceback" not in up.output()
    finally:
        stop.touch()
        up.stop()


def test_a_run_that_ends_while_the_disk_is_full_keeps_its_exit_code(
    small_fs: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    # The shim's end record goes into space reserved at launch: a full disk cannot turn a real exit
    # code into "unknown".
    state = small_fs / "state"
    gate = tmp_path / "gate"
    (jobs_dir / "vigil.toml").write_text(FAST)
    write_job(jobs_dir, "late", f'command = "while [ ! -e {gate} ]; do sleep 0.05; done; exit 3"\n')
    up = Up(state, jobs_dir, log=tmp_path / "up.log")
    try:
        up.wait_active()
        run_id = int(vigil(state, "run", "late").stdout.split()[2])
        wait_for(lambda: vigil_json(state, "runs", "--job", "late")[0]["state"] == "running", 10, what="the run")
        fill(small_fs / "ballast")
        gate.touch()  # the job ends now, on a full disk
        wait_for(lambda: exit_recorded(state / "runs" / str(run_id)), 10, what="the shim's end record")
        (small_fs / "ballast").unlink()
        run = wait_for(
            lambda: next((r for r in vigil_json(state, "runs", "--job", "late") if r["state"] != "running"), None),
            15,
            what=f"the run's end\n{up.output()}",
        )
        assert run["state"] == "failed" and run["exit_code"] == 3, run
    finally:
        gate.touch()
        up.stop()


def test_an_external_write_lock_is_waited_out(
    state_dir: Path, jobs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_DB_BUSY_TIMEOUT_MS", "200")
    (jobs_dir / "vigil.toml").write_text(FAST)
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    up = Up(state_dir, jobs_dir, log=tmp_path / "up.log")
    try:
        up.wait_active()
        wait_for(lambda: succeeded_after(state_dir, "tick", 0), 5, what="a first tick")
        holder = sqlite3.connect(state_dir / "vigil.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # what a sqlite3 shell or a backup tool does
        locked_at = time.time()
        try:
            wait_for(lambda: "locked by another writer" in up.output(), 5, what=f"the lock to be named\n{up.output()}")
            time.sleep(max(0.0, locked_at + 2.5 - time.time()))  # well past the busy timeout
            assert up.proc.poll() is None, f"the active gave up on an external lock:\n{up.output()}"
            newest = max(r["id"] for r in runs(state_dir))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_for(lambda: succeeded_after(state_dir, "tick", newest), 10, what=f"ticks after release\n{up.output()}")
        out = up.output()
        assert out.count("locked by another writer") == 1, out
        assert out.count("writable again") == 1, out
        reasons = [r["reason"] or "" for r in runs(state_dir, "--job", "tick")]
        assert any("state database unavailable: locked by another writer" in r for r in reasons), reasons
        assert "Traceback" not in out
    finally:
        up.stop()


def test_commands_during_an_external_write_lock_are_answered_try_again_not_timed_out(
    state_dir: Path, jobs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI inherits the busy timeout too, as it would from the same service environment.
    monkeypatch.setenv("VIGIL_DB_BUSY_TIMEOUT_MS", "2000")
    (jobs_dir / "vigil.toml").write_text(FAST)
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    write_job(jobs_dir, "slow", 'command = "sleep 30"\n')
    up = Up(state_dir, jobs_dir, log=tmp_path / "up.log")

    def timed(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        started = time.monotonic()
        done = vigil(state_dir, *args, check=False, timeout=30)
        return time.monotonic() - started, done

    try:
        up.wait_active()
        slow = int(vigil(state_dir, "run", "slow").stdout.split()[2])
        wait_for(lambda: vigil_json(state_dir, "runs", "--job", "slow")[0]["state"] == "running", 10, what="slow")
        holder = sqlite3.connect(state_dir / "vigil.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a sqlite3 shell, a backup tool
        try:
            # The first command meets the lock itself: answered after one busy timeout, not timed out.
            _, first = timed("run", "tick")
            line = one_vigil_line(first, "locked by another writer", "try again when it is writable")
            assert "did not answer" not in line
            wait_for(lambda: "locked by another writer" in up.output(), 10, what=f"the fault logged\n{up.output()}")
            # While the fault lasts, commands are answered at once, not after another busy timeout.
            for request in (
                {"op": "run", "job": "tick"},
                {"op": "pause", "job": "tick"},
                {"op": "prune", "older_than_s": 1},
            ):
                started = time.monotonic()
                reply = control_request(state_dir, request)
                took = time.monotonic() - started
                assert reply["ok"] is False and reply["error"].endswith("try again when it is writable"), reply
                assert "locked by another writer" in reply["error"], reply
                assert took < 1.0, f"{request} took {took:.1f}s"
            took, killed = timed("kill", str(slow))
            assert killed.returncode == 0, killed.stderr  # carried out now, recorded later
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        run = wait_for(
            lambda: next((r for r in vigil_json(state_dir, "runs", "--job", "slow") if r["state"] == "killed"), None),
            10,
            what=f"the kill recorded after the lock\n{up.output()}",
        )
        assert run["id"] == slow
        assert vigil(state_dir, "pause", "tick").returncode == 0  # writable again: commands work
        assert "Traceback" not in up.output()
    finally:
        up.stop()


def control_request(state: Path, request: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(state / "control.sock"))
        sock.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(sock.makefile("rb").readline())


def test_a_takeover_during_an_external_write_lock_waits_instead_of_exiting(
    state_dir: Path, jobs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The active dies while the database is locked (or the disk full): the standby cannot bump the
    # epoch yet. It must keep trying with a pause, not exit and leave no scheduler at all.
    monkeypatch.setenv("VIGIL_DB_BUSY_TIMEOUT_MS", "200")
    (jobs_dir / "vigil.toml").write_text(FAST)
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    active = Up(state_dir, jobs_dir, log=tmp_path / "active.log")
    standby: Up | None = None
    try:
        active.wait_active()  # before the second starts: which of two at once wins is a race
        standby = Up(state_dir, jobs_dir, log=tmp_path / "standby.log")
        wait_for(lambda: "standby" in standby.output(), 10, what="the standby")
        holder = sqlite3.connect(state_dir / "vigil.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            os.kill(active.pid, 9)
            active.proc.wait(5)
            wait_for(
                lambda: "cannot become active" in standby.output(), 10, what=f"a refused start\n{standby.output()}"
            )
            time.sleep(2.0)  # several attempts' worth
            assert standby.proc.poll() is None, f"the standby gave up:\n{standby.output()}"
            newest = max((r["id"] for r in runs(state_dir)), default=0)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_for(
            lambda: succeeded_after(state_dir, "tick", newest), 20, what=f"ticks after release\n{standby.output()}"
        )
        out = standby.output()
        assert out.count("cannot become active") == 1, out  # logged once, not per attempt
        assert "Traceback" not in out, out
    finally:
        active.stop()
        if standby is not None:
            standby.stop()


def test_a_failing_take_leadership_exits_and_releases_the_lock(state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    (jobs_dir / "vigil.toml").write_text(FAST)
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    # A database on which the epoch cannot be bumped: the leader row refuses updates. (A full disk
    # or an I/O error fails the same statement.)
    first = Up(state_dir, jobs_dir, log=tmp_path / "first.log")
    first.wait_active()
    first.stop()
    conn = sqlite3.connect(state_dir / "vigil.db")
    conn.execute("CREATE TRIGGER no_takeover BEFORE UPDATE ON leader BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
    conn.commit()
    conn.close()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "up", "--state", str(state_dir), "--jobs", str(jobs_dir)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode != 0
    assert time.monotonic() - started < 10
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("vigil: state database") and "disk I/O error" in last, done.stderr
    assert not (state_dir / "control.sock").exists()

    # The lock is free: with the database repaired, another node becomes active.
    conn = sqlite3.connect(state_dir / "vigil.db")
    conn.execute("DROP TRIGGER no_takeover")
    conn.commit()
    conn.close()
    up = Up(state_dir, jobs_dir, log=tmp_path / "second.log")
    try:
        up.wait_active()
    finally:
        up.stop()


def test_an_active_stops_when_its_database_is_removed_or_replaced(
    state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    (jobs_dir / "vigil.toml").write_text(FAST)
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    for how in ("removed", "replaced", "emptied"):
        up = Up(state_dir, jobs_dir, log=tmp_path / f"{how}.log")
        try:
            up.wait_active()
            db = state_dir / "vigil.db"
            if how == "removed":
                db.unlink()
            elif how == "emptied":
                os.truncate(db, 0)
            else:
                copy = state_dir / "copy.db"
                copy.write_bytes(db.read_bytes())
                os.replace(copy, db)
            code = wait_for(up.proc.poll, 5, what=f"the active to stop\n{up.output()}")
            assert code != 0
            out = up.output()
            assert f"was {how} under the running scheduler" in out.strip().splitlines()[-1], out
            assert "Traceback" not in out
            assert not (state_dir / "control.sock").exists()
        finally:
            up.stop()
        for name in ("vigil.db", "vigil.db-wal", "vigil.db-shm"):
            (state_dir / name).unlink(missing_ok=True)


def test_a_node_that_finds_its_database_emptied_never_writes_to_it_again(
    state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    # SQLite checkpoints the WAL into the database when its last connection closes: into an
    # emptied file that makes a zeroed header and pages of the old database, "not a database"
    # for every later `vigil up`, reader and standby. The operator's next step must still work.
    (jobs_dir / "vigil.toml").write_text(FAST)
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    write_job(jobs_dir, "busy", 'every = "1s"\ncommand = "true"\n')  # a WAL with frames to checkpoint
    db = state_dir / "vigil.db"
    up = Up(state_dir, jobs_dir, log=tmp_path / "emptied.log")
    try:
        up.wait_active()
        wait_for(lambda: len(succeeded_after(state_dir, "tick", 0)) >= 2, 10, what="a few ticks")
        with open(db, "r+b") as fh:  # what `: > vigil.db` does
            fh.truncate(0)
        code = wait_for(up.proc.poll, 5, what=f"the active to stop\n{up.output()}")
        assert code != 0
        out = up.output()
        assert "was emptied under the running scheduler" in out.strip().splitlines()[-1], out
        assert "Traceback" not in out, out
    finally:
        up.stop()
    assert db.stat().st_size == 0, f"the stopped node wrote {db.stat().st_size} bytes into the emptied file"
    # The documented next step: start `vigil up` again. It starts on a fresh database and readers work.
    again = Up(state_dir, jobs_dir, log=tmp_path / "again.log")
    try:
        again.wait_active()
        wait_for(lambda: succeeded_after(state_dir, "tick", 0), 10, what=f"a tick after the restart\n{again.output()}")
        assert vigil(state_dir, "db", "check", check=False).returncode == 0
    finally:
        again.stop()


def test_a_fatal_stop_with_a_standby_and_clients_connected_is_one_line_without_traceback(
    state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    (jobs_dir / "vigil.toml").write_text(FAST)
    write_job(jobs_dir, "tick", 'every = "1s"\ncommand = "true"\n')
    active = Up(state_dir, jobs_dir, log=tmp_path / "active.log")
    standby: Up | None = None
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        active.wait_active()
        standby = Up(state_dir, jobs_dir, log=tmp_path / "standby.log")
        wait_for(lambda: len(vigil_json(state_dir, "status")["standbys"]) == 1, 10, what="the standby to subscribe")
        idle.connect(str(state_dir / "control.sock"))  # a client that sent nothing yet
        idle.sendall(b'{"op": "status"')  # half a request
        (state_dir / "vigil.db").unlink()
        code = wait_for(active.proc.poll, 5, what=f"the active to stop\n{active.output()}")
        assert code != 0
        out = active.output()
        assert "Traceback" not in out and "CancelledError" not in out, out
        assert out.strip().splitlines()[-1].startswith("vigil: state database"), out
        wait_for(standby.is_active, 10, what=f"the standby to take over\n{standby.output()}")
        assert "Traceback" not in standby.output(), standby.output()
    finally:
        idle.close()
        active.stop()
        if standby is not None:
            standby.stop()


# ---------------------------------------------------------------- lost, emptied, foreign, corrupt


def make_state(state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    write_job(jobs_dir, "tick", 'every = "1h"\ncommand = "true"\n')
    up = Up(state_dir, jobs_dir, log=tmp_path / "make.log")
    up.wait_active()
    up.stop()
    assert (state_dir / "vigil.db").stat().st_size > 0


def one_vigil_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vigil: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


READERS = (("runs",), ("status",), ("jobs",), ("logs", "1"), ("db", "check"))


def test_an_empty_database_is_refused_by_every_reader_and_not_changed(
    state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    state_dir.mkdir(mode=0o700)
    (state_dir / "vigil.db").write_bytes(b"")
    for args in READERS:
        one_vigil_line(
            vigil(state_dir, *args, jobs=jobs_dir if args[0] in ("jobs", "logs") else None, check=False), "empty"
        )
    assert (state_dir / "vigil.db").stat().st_size == 0  # no reader made state
    assert not (state_dir / "vigil.db-wal").exists()


def test_a_foreign_database_is_refused(state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    state_dir.mkdir(mode=0o700)
    conn = sqlite3.connect(state_dir / "vigil.db")
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    for args in READERS:
        one_vigil_line(
            vigil(state_dir, *args, jobs=jobs_dir if args[0] in ("jobs", "logs") else None, check=False),
            "not a Vigil database",
        )
    write_job(jobs_dir, "tick", 'every = "1h"\ncommand = "true"\n')
    up = vigil(state_dir, "up", jobs=jobs_dir, check=False, timeout=20)
    one_vigil_line(up, "not a Vigil database")
    tables = sqlite3.connect(state_dir / "vigil.db").execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("photos",)]  # `vigil up` did not write its schema into someone else's file


def test_a_corrupt_database_is_reported_with_the_next_step(state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    make_state(state_dir, jobs_dir, tmp_path)
    db = state_dir / "vigil.db"
    data = bytearray(db.read_bytes())
    page = 4096
    for offset in range(page, len(data)):  # every page but the header: garbage inside
        data[offset] = (offset * 7919) & 0xFF
    db.write_bytes(bytes(data))
    line = one_vigil_line(vigil(state_dir, "db", "check", check=False))
    assert "restore a backup" in line and "move it aside" in line, line
    for args in (("runs",), ("status",)):
        one_vigil_line(vigil(state_dir, *args, check=False))
    one_vigil_line(vigil(state_dir, "up", jobs=jobs_dir, check=False, timeout=20), "restore a backup")


def test_garbage_for_a_database_is_reported_with_the_next_step(state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    state_dir.mkdir(mode=0o700)
    (state_dir / "vigil.db").write_bytes(b"this is not a database at all\n" * 200)
    for args in (("db", "check"), ("runs",), ("status",)):
        one_vigil_line(vigil(state_dir, *args, check=False), "not a database", "restore a backup")
    write_job(jobs_dir, "tick", 'every = "1h"\ncommand = "true"\n')
    one_vigil_line(vigil(state_dir, "up", jobs=jobs_dir, check=False, timeout=20), "not a database")


def test_db_prune_on_a_full_disk_is_one_vigil_line(small_fs: Path, jobs_dir: Path, tmp_path: Path) -> None:
    state = small_fs / "state"
    make_state(state, jobs_dir, tmp_path)
    conn = sqlite3.connect(state / "vigil.db")
    conn.executemany(
        "INSERT INTO runs (job, scheduled_for, state, trigger, epoch, writer_epoch, created_at, ended_at) "
        "VALUES ('old', ?, 'succeeded', 'schedule', 1, 1, '2000-01-01', '2000-01-01')",
        [(f"2000-01-01T00:00:{i:06d}",) for i in range(2000)],
    )
    conn.commit()
    conn.close()
    ballast = small_fs / "ballast"
    fill(ballast)
    try:
        one_vigil_line(vigil(state, "db", "prune", "--older-than", "1d", check=False), "disk full")
    finally:
        ballast.unlink()
    assert "pruned 2000" in vigil(state, "db", "prune", "--older-than", "1d").stdout


def test_db_backup_refuses_a_symlink_and_writes_owner_only(state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    make_state(state_dir, jobs_dir, tmp_path)
    elsewhere = tmp_path / "elsewhere.db"
    dangling = tmp_path / "dangling.db"
    dangling.symlink_to(elsewhere)
    one_vigil_line(vigil(state_dir, "db", "backup", str(dangling), check=False), "symbolic link")
    assert not elsewhere.exists()
    existing = tmp_path / "existing"
    existing.write_text("keep me")
    pointing = tmp_path / "pointing.db"
    pointing.symlink_to(existing)
    one_vigil_line(vigil(state_dir, "db", "backup", str(pointing), check=False), "symbolic link")
    assert existing.read_text() == "keep me"

    target = tmp_path / "backup.db"
    old = os.umask(0)
    try:
        vigil(state_dir, "db", "backup", str(target))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o600
    assert sqlite3.connect(target).execute("SELECT epoch FROM leader").fetchone()[0] >= 1


async def test_fires_due_while_writes_are_refused_are_caught_up_not_lost_or_doubled(
    state_dir: Path, jobs_dir: Path
) -> None:
    from datetime import UTC, datetime

    from engine.clock import FakeClock
    from engine.paths import StatePaths
    from engine.run.loop import Scheduler

    write_job(jobs_dir, "tick", 'every = "1s"\ncatchup = "latest"\ncommand = "true"\n')
    clock = FakeClock(datetime(2026, 11, 29, 3, 0, 0, 500000, tzinfo=UTC))
    paths = StatePaths(state_dir)
    scheduler = Scheduler(paths, jobs_dir, clock=clock)
    await scheduler.take_leadership(pid=os.getpid(), starttime=None, cause="start")
    await scheduler.store.query("PRAGMA busy_timeout=20")  # a test does not wait 5 s per write
    await scheduler.prepare()
    holder = sqlite3.connect(state_dir / "vigil.db", isolation_level=None)
    try:
        clock.advance(1)
        await scheduler.iterate()  # 03:00:01 fires and launches
        first_runs = set(scheduler.table.runs)
        holder.execute("BEGIN IMMEDIATE")
        for _ in range(3):  # 03:00:02 .. 03:00:04 fall due while another writer holds the lock
            clock.advance(1)
            scheduler.store.health.retry_at = 0.0  # a test does not wait out the backoff
            await scheduler.iterate()
            assert scheduler.store.health.failing
            # Nothing launched or tracked without its row.
            assert set(scheduler.table.runs) <= first_runs and scheduler.planner.next_id == 2
        holder.execute("ROLLBACK")
        scheduler.store.health.retry_at = 0.0
        await scheduler.iterate()
        assert not scheduler.store.health.failing
        rows = await scheduler.store.query(
            "SELECT id, scheduled_for, state, reason FROM runs WHERE job = 'tick' ORDER BY scheduled_for"
        )
    finally:
        holder.close()
        if scheduler.local is not None:
            await scheduler.local.aclose()
        await scheduler.store.close()
    seconds = [r["scheduled_for"][17:19] for r in rows]
    assert seconds == ["01", "02", "03", "04"]  # every fire once
    states = {r["scheduled_for"][17:19]: r["state"] for r in rows}
    assert states["02"] == states["03"] == "missed"
    assert states["04"] in ("launching", "running", "succeeded")
    missed_reason = next(r["reason"] for r in rows if r["state"] == "missed")
    assert missed_reason.startswith("state database unavailable: locked by another writer"), missed_reason
    assert [r["id"] for r in rows] == [1, 2, 3, 4]  # ids stay dense: undone fires gave theirs back


async def test_timeouts_are_enforced_while_writes_are_refused(state_dir: Path, jobs_dir: Path) -> None:
    from datetime import UTC, datetime

    from engine.clock import FakeClock
    from engine.paths import StatePaths
    from engine.run.loop import Scheduler

    write_job(jobs_dir, "slow", 'every = "1h"\ntimeout = "2s"\ncommand = "sleep 30"\n')
    clock = FakeClock(datetime(2026, 11, 29, 3, 0, 0, 500000, tzinfo=UTC))
    scheduler = Scheduler(StatePaths(state_dir), jobs_dir, clock=clock)
    await scheduler.take_leadership(pid=os.getpid(), starttime=None, cause="start")
    await scheduler.store.query("PRAGMA busy_timeout=20")
    await scheduler.prepare()
    holder = sqlite3.connect(state_dir / "vigil.db", isolation_level=None)
    try:
        reply = asyncio.ensure_future(scheduler.command("run", {"job": "slow", "user": "t"}))
        await asyncio.sleep(0)  # the command reaches the loop's queue
        await scheduler.iterate()
        (run_id,) = scheduler.table.runs
        assert (await reply)["ok"]
        holder.execute("BEGIN IMMEDIATE")
        clock.advance(1)
        refused = asyncio.ensure_future(scheduler.command("run", {"job": "slow", "user": "t"}))
        await asyncio.sleep(0)
        await scheduler.iterate()  # the write fails: backing off from now on
        assert scheduler.store.health.wait(time.monotonic()) > 0
        assert "locked by another writer" in (await refused)["error"]
        assert set(scheduler.table.runs) == {run_id}  # the refused run was not started
        clock.advance(2)  # past the deadline, still backing off
        await scheduler.iterate()
        assert scheduler.table.runs[run_id].kill_requested == "timeout"
    finally:
        holder.close()
        if scheduler.local is not None:
            await scheduler.local.aclose()
        await scheduler.store.close()


async def test_writes_queued_behind_a_locked_write_do_not_each_wait_a_busy_timeout(state_dir: Path) -> None:
    # A command's commit often waits behind another write (the flusher's): when that one has just
    # waited the whole busy timeout and failed, the next fails at once, so a command is answered
    # within one busy timeout, not two or more.
    from engine.errors import StoreRetryableError
    from engine.paths import StatePaths
    from engine.store.sqlite.ledger import Ledger

    ledger = Ledger(StatePaths(state_dir), busy_timeout_ms=1000)
    await ledger.open()
    holder = sqlite3.connect(state_dir / "vigil.db", isolation_level=None)
    try:
        await ledger.take_leadership(
            LeaderClaim(os.getpid(), None, datetime.fromisoformat("2026-11-29T03:00:00+00:00"))
        )
        holder.execute("BEGIN IMMEDIATE")
        audit = Audit(datetime(2026, 11, 29, 3, tzinfo=UTC), "u", "a", "", "")
        started = time.monotonic()
        results = await asyncio.gather(*(ledger.commit([audit]) for _ in range(3)), return_exceptions=True)
        took = time.monotonic() - started
        assert all(isinstance(r, StoreRetryableError) for r in results), results
        assert took < 1.6, f"three queued writes took {took:.1f}s for one busy timeout of 1s"
        holder.execute("ROLLBACK")
        await ledger.commit([audit])  # writable again: nothing sticks
        (count,) = await ledger.query("SELECT COUNT(*) FROM audit")
        assert count[0] == 1
    finally:
        holder.close()
        await ledger.close()
