"""The SQLite ledger's own faults on a real file: a full disk, another writer's lock, their classification.

What every store backend must do (a fire inserted once, an end recorded once, fencing, deferred
writes kept across a failed commit) is the contract suite's: tests/contract/test_store.py.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from engine.model import RunState
from engine.paths import StatePaths
from engine.store.abc import LeaderClaim
from engine.store.intents import NewRun, RunFinished
from engine.store.sqlite.ledger import Ledger

NOW = datetime.fromisoformat("2026-11-29T03:00:00.000000+00:00")


def fire(run_id: int, attempt: int = 1, command: str | None = None) -> NewRun:
    return NewRun(run_id, "j", NOW, attempt, RunState.RUNNING, "schedule", NOW, command=command)


def finish(state: RunState, exit_code: int | None, run_id: int = 1) -> RunFinished:
    return RunFinished(run_id, state, None, exit_code, NOW)


# ---------------------------------------------------------------- store faults


async def test_a_full_database_names_the_fault_and_keeps_the_deferred_writes(tmp_path: Path) -> None:
    import pytest

    from engine.errors import StoreRetryableError

    ledger = Ledger(StatePaths(tmp_path))
    await ledger.open()
    try:
        await ledger.take_leadership(LeaderClaim(os.getpid(), None, NOW))
        await ledger.commit([fire(1)])
        ledger.defer(finish(RunState.FAILED, 4))
        (pages,) = (await ledger.query("PRAGMA page_count"))[0]
        await ledger.query(f"PRAGMA max_page_count={pages}")  # SQLITE_FULL, as on a full disk
        big = [fire(i, attempt=i, command="x" * 5000) for i in range(2, 40)]
        with pytest.raises(StoreRetryableError) as failed:
            await ledger.commit(big)
        assert "disk full" in str(failed.value) and "cannot rollback" not in str(failed.value)
        assert ledger.health.failing
        await ledger.query("PRAGMA max_page_count=1073741823")  # space returns
        await ledger.flush()
        assert not ledger.health.failing
        stored = await ledger.run(1)
        assert stored is not None and stored.state == RunState.FAILED
    finally:
        await ledger.close()


async def test_an_external_write_lock_is_a_retryable_fault(tmp_path: Path) -> None:
    import sqlite3

    import pytest

    from engine.errors import StoreRetryableError

    ledger = Ledger(StatePaths(tmp_path), busy_timeout_ms=50)
    await ledger.open()
    try:
        await ledger.take_leadership(LeaderClaim(os.getpid(), None, NOW))
        holder = sqlite3.connect(tmp_path / "vigil.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreRetryableError, match="locked by another writer"):
            await ledger.commit([fire(1)])
        holder.execute("ROLLBACK")
        holder.close()
        assert await ledger.commit([fire(1)]) == {1}
    finally:
        await ledger.close()


def test_store_health_backs_off_logs_once_and_reports_the_recovery_once() -> None:
    from pytest import approx

    from engine.errors import StoreRetryableError
    from engine.store.sqlite.ledger import StoreHealth

    health = StoreHealth(first_delay=0.1, max_delay=0.4)
    full = StoreRetryableError("disk full", "state database: disk full")
    assert health.wait(0.0) == 0.0 and health.succeeded(0.0) is None
    assert health.failed(full, 10.0) is True  # news: log it
    assert health.wait(10.0) == approx(0.1)
    assert health.failed(full, 10.1) is False  # the same fault again: no new line
    assert health.failed(full, 10.3) is False
    assert health.failed(full, 10.7) is False
    assert health.wait(10.7) == approx(0.4)  # doubled up to the cap
    locked = StoreRetryableError("locked by another writer", "state database: locked")
    assert health.failed(locked, 11.0) is True  # another kind of fault is news
    assert health.succeeded(12.5) == approx(2.5)  # lasted since the first failure
    assert health.succeeded(13.0) is None and not health.failing
    assert health.failed(full, 20.0) is True and health.wait(20.0) == approx(0.1)  # a new fault starts afresh


def test_sqlite_errors_are_classified_in_one_place(tmp_path: Path) -> None:
    import sqlite3

    import pytest

    from engine.errors import FencedError, StoreFatalError, StoreRetryableError
    from engine.store.sqlite.db import store_error

    def real_error(setup: str, statement: str) -> sqlite3.Error:
        db.unlink(missing_ok=True)
        conn = sqlite3.connect(db, isolation_level=None)
        conn.executescript(setup)
        with pytest.raises(sqlite3.Error) as caught:
            conn.execute(statement)
        conn.close()
        return caught.value

    db = tmp_path / "x.db"
    fenced = real_error(
        "CREATE TABLE t (x); CREATE TRIGGER f BEFORE INSERT ON t BEGIN SELECT RAISE(ABORT, 'vigil: stale epoch'); END;",
        "INSERT INTO t VALUES (1)",
    )
    assert isinstance(store_error(fenced, db), FencedError)
    full = real_error("CREATE TABLE u (x); PRAGMA max_page_count=2;", "INSERT INTO u VALUES (randomblob(100000))")
    assert isinstance(store_error(full, db), StoreRetryableError)
    garbage_db = tmp_path / "garbage.db"
    garbage_db.write_bytes(b"garbage " * 1000)
    conn = sqlite3.connect(garbage_db)
    with pytest.raises(sqlite3.Error) as caught:
        conn.execute("SELECT * FROM sqlite_master")
    conn.close()
    db = garbage_db
    garbage = caught.value
    fatal = store_error(garbage, db)
    assert isinstance(fatal, StoreFatalError)
    assert "not a database" in str(fatal) and "restore a backup" in str(fatal) and str(db) in str(fatal)
