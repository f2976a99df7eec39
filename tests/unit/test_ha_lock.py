"""The leader lock follows the file its path names; a standby's kill verdict needs every identity to agree."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from engine.exec.procs import fdinfo_holds_exclusive_flock, flock_holders, holds_flock, parse_flock_holders, starttime
from engine.ha import HolderEvidence, LeaderLock, hang_target

# ---------------------------------------------------------------- /proc parsing

PROC_LOCKS = """\
1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146335 0 EOF
1: -> FLOCK  ADVISORY  WRITE 4343 fe:00:2146335 0 EOF
2: FLOCK  ADVISORY  WRITE 5151 fe:00:999 0 EOF
3: POSIX  ADVISORY  WRITE 6161 fe:00:2146335 0 EOF
4: FLOCK  ADVISORY  READ 7171 00:2d:2146335 0 EOF
5: FLOCK  ADVISORY  WRITE 8181 00:2d:2146335 0 EOF
"""


def test_proc_locks_names_the_holder_not_the_waiters_nor_other_files() -> None:
    assert parse_flock_holders(PROC_LOCKS, 0xFE, 0, 2146335) == {4242}
    assert parse_flock_holders(PROC_LOCKS, 0, 0x2D, 2146335) == {8181}
    assert parse_flock_holders("garbage\n\n1: FLOCK ADVISORY WRITE x y 0 EOF\n", 0xFE, 0, 1) == set()


def test_fdinfo_shows_a_held_exclusive_flock_only() -> None:
    held = "pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t5\nlock:\t1: FLOCK  ADVISORY  WRITE 8481 fe:00:5 0 EOF\n"
    assert fdinfo_holds_exclusive_flock(held)
    assert not fdinfo_holds_exclusive_flock("pos:\t0\nflags:\t02100002\nino:\t5\n")
    assert not fdinfo_holds_exclusive_flock("lock:\t1: FLOCK  ADVISORY  READ 8481 fe:00:5 0 EOF\n")
    assert not fdinfo_holds_exclusive_flock("lock:\t1: POSIX  ADVISORY  WRITE 8481 fe:00:5 0 EOF\n")


def test_this_process_is_seen_holding_its_lock(tmp_path: Path) -> None:
    lock = LeaderLock(tmp_path / "leader.lock")
    key = lock.path_key()
    assert key is None
    assert lock.try_acquire()
    key = lock.path_key()
    assert key is not None
    assert holds_flock(os.getpid(), key)
    assert flock_holders(key) == {os.getpid()}
    assert not holds_flock(1, key)
    lock.release()
    assert not holds_flock(os.getpid(), key)


# ---------------------------------------------------------------- the kill verdict

ROW = (4242, 777)


def evidence(**changes: object) -> HolderEvidence:
    base: dict[str, object] = {
        "row": ROW,
        "row_since": None,
        "row_starttime_now": 777,
        "row_holds_lock": True,
        "lock_holders": frozenset({4242}),
        "heartbeat_alive": False,
    }
    base.update(changes)
    return HolderEvidence(**base)  # type: ignore[arg-type]


def test_the_recorded_holder_that_holds_the_lock_may_be_killed() -> None:
    assert hang_target(evidence(), None, own_pid=1) == (ROW, "")
    assert hang_target(evidence(heartbeat_alive=True), ROW, own_pid=1) == (ROW, "")
    # heartbeats from a process that has since gone say nothing about the current holder
    assert hang_target(evidence(), (999, 1), own_pid=1) == (ROW, "")


@pytest.mark.parametrize(
    ("changes", "heartbeat", "says"),
    [
        ({"row": None}, None, "names no process"),
        ({"row_starttime_now": None, "row_holds_lock": False, "lock_holders": frozenset({5})}, None, "has exited"),
        ({"row_starttime_now": 778}, None, "is now another process"),
        ({"row_holds_lock": False, "lock_holders": frozenset({5})}, None, "held by pid 5"),
        ({"row_holds_lock": False, "lock_holders": frozenset()}, None, "not held by any process"),
        ({"heartbeat_alive": True}, (999, 1), "heartbeats came from pid 999"),
    ],
)
def test_any_doubt_about_the_holder_kills_nothing(changes: dict[str, object], heartbeat, says: str) -> None:
    target, why = hang_target(evidence(**changes), heartbeat, own_pid=1)
    assert target is None
    assert says in why


def test_a_standby_never_targets_itself() -> None:
    target, why = hang_target(evidence(), None, own_pid=ROW[0])
    assert target is None and "this process" in why


# ---------------------------------------------------------------- the lock follows the path


def test_a_lock_on_a_removed_file_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "leader.lock"
    first = LeaderLock(path)
    assert first.try_acquire()
    path.unlink()
    assert not first.still_ours()
    other = LeaderLock(path)
    assert other.try_acquire()  # a new file: the old lock excludes nobody
    assert not first.keep()  # and the first one may not take it back: it stops
    assert other.still_ours()


def test_the_holder_locks_a_removed_or_replaced_file_again(tmp_path: Path) -> None:
    path = tmp_path / "leader.lock"
    first = LeaderLock(path)
    assert first.try_acquire()
    path.unlink()
    assert first.keep()  # re-created and locked
    assert path.exists() and first.still_ours()
    path.unlink()
    path.touch()
    assert first.keep()
    assert first.still_ours()
    assert not LeaderLock(path).try_acquire()


async def test_a_waiter_that_wins_a_removed_file_moves_to_the_path(tmp_path: Path) -> None:
    path = tmp_path / "leader.lock"
    first = LeaderLock(path)
    assert first.try_acquire()
    waiter = LeaderLock(path)
    waiter.poll = 0.02
    task = asyncio.create_task(waiter.acquire())
    await asyncio.sleep(0.1)
    path.unlink()
    first.release()  # the old holder dies: the waiter gets the removed file's lock, worthless
    await asyncio.wait_for(task, 2)
    assert waiter.still_ours()
    assert path.exists()
    assert not LeaderLock(path).try_acquire()


async def test_a_waiter_keeps_waiting_when_the_holder_locks_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "leader.lock"
    first = LeaderLock(path)
    assert first.try_acquire()
    waiter = LeaderLock(path)
    waiter.poll = 0.02
    task = asyncio.create_task(waiter.acquire())
    await asyncio.sleep(0.1)
    path.unlink()
    assert first.keep()  # re-creates the file, locks it, lets go of the old one
    await asyncio.sleep(0.3)
    assert not task.done(), "two holders"
    first.release()
    await asyncio.wait_for(task, 2)
    assert waiter.still_ours()


async def test_a_waiter_moves_to_a_replaced_file_nobody_locks(tmp_path: Path) -> None:
    path = tmp_path / "leader.lock"
    hung = LeaderLock(path)  # a holder that never looks at the path again
    assert hung.try_acquire()
    waiter = LeaderLock(path)
    waiter.poll = 0.02
    waiter.relock_grace = 0.2
    task = asyncio.create_task(waiter.acquire())
    await asyncio.sleep(0.1)
    path.unlink()
    path.touch()
    await asyncio.wait_for(task, 2)
    assert waiter.still_ours()
    assert not hung.still_ours()
    assert not hung.keep()
    hung.release()


async def test_a_cancelled_wait_leaves_no_lock_behind(tmp_path: Path) -> None:
    path = tmp_path / "leader.lock"
    first = LeaderLock(path)
    assert first.try_acquire()
    waiter = LeaderLock(path)
    task = asyncio.create_task(waiter.acquire())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    first.release()
    await asyncio.sleep(0.1)  # the abandoned thread gets the lock and lets go of it at once
    assert LeaderLock(path).try_acquire()


# ---------------------------------------------------------------- the evidence, read from a real ledger


def test_the_evidence_names_the_leader_row_and_who_holds_the_lock(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from engine.clock import iso
    from engine.errors import StoreError
    from engine.ha.heartbeat import gather_evidence
    from engine.paths import StatePaths
    from engine.store.sqlite.db import connect

    paths = StatePaths(tmp_path / "state")
    with pytest.raises(StoreError):  # no database yet: an error the watcher logs, never created
        gather_evidence(paths, (0, 0), None)
    assert not paths.db.exists()
    lock = LeaderLock(paths.lock)
    conn = connect(paths)
    assert lock.try_acquire()
    key = lock.path_key()
    assert key is not None
    fresh = gather_evidence(paths, key, None)  # a database no active has led yet
    assert fresh.row is None and fresh.row_since is None and fresh.lock_holders == {os.getpid()}
    me = (os.getpid(), starttime(os.getpid()))
    since = datetime(2026, 11, 22, 5, 14, 30, tzinfo=UTC)
    conn.execute("UPDATE leader SET pid = ?, starttime = ?, since = ? WHERE id = 1", (*me, iso(since)))
    conn.close()
    evidence = gather_evidence(paths, key, me)
    lock.release()
    assert evidence.row == me and evidence.row_since == since.timestamp()
    assert evidence.row_starttime_now == me[1] and evidence.row_holds_lock and evidence.heartbeat_alive
    assert hang_target(evidence, me, own_pid=os.getpid())[1] == "the leader row names this process"
