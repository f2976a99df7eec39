"""The ledger's write rules on a real SQLite file: a fire inserts once, an end is recorded once."""

from __future__ import annotations

import os
from pathlib import Path

from engine.db import StatePaths
from engine.ledger import Ledger
from engine.scheduler import SQL_FINISH

NOW = "2026-11-29T03:00:00.000000+00:00"


def row(run_id: int, attempt: int = 1) -> dict[str, object]:
    return {
        "id": run_id,
        "job": "j",
        "scheduled_for": NOW,
        "attempt": attempt,
        "state": "running",
        "trigger": "schedule",
        "epoch": 1,
        "writer_epoch": 1,
        "created_at": NOW,
    }


def finish(state: str, exit_code: int | None, run_id: int = 1) -> tuple[str, tuple[object, ...]]:
    return (SQL_FINISH, (state, None, exit_code, NOW, None, None, None, 1, run_id))


async def test_a_fire_is_inserted_once_and_its_end_recorded_once(tmp_path: Path) -> None:
    ledger = Ledger(StatePaths(tmp_path))
    await ledger.open()
    try:
        epoch, _ = await ledger.take_leadership(os.getpid(), None, NOW)
        assert epoch == 1
        assert await ledger.insert_runs([row(1)]) == {1}
        # The same (job, scheduled_for, attempt) under a new id is not new: it must not launch.
        assert await ledger.insert_runs([row(2)]) == set()
        assert await ledger.insert_runs([row(3, attempt=2)]) == {3}

        await ledger.write([finish("failed", 4)])
        # A second report of the same end (a result delivered twice, a late shim record) changes nothing.
        await ledger.write([finish("succeeded", 0)])
        (stored,) = await ledger.query("SELECT state, exit_code FROM runs WHERE id = 1")
        assert (stored["state"], stored["exit_code"]) == ("failed", 4)
    finally:
        await ledger.close()


async def test_deferred_writes_survive_a_failed_transaction(tmp_path: Path) -> None:
    import pytest

    from engine.errors import StoreError

    ledger = Ledger(StatePaths(tmp_path))
    await ledger.open()
    try:
        await ledger.take_leadership(os.getpid(), None, NOW)
        await ledger.insert_runs([row(1)])
        ledger.defer(*finish("failed", 4))
        with pytest.raises(StoreError):  # the transaction that carried the deferred update fails
            await ledger.write([("INSERT INTO runs (id) VALUES (NULL)", ())])
        (still_open,) = await ledger.query("SELECT state FROM runs WHERE id = 1")
        assert still_open["state"] == "running"
        await ledger.flush()  # the next attempt writes it
        (stored,) = await ledger.query("SELECT state, exit_code FROM runs WHERE id = 1")
        assert (stored["state"], stored["exit_code"]) == ("failed", 4)
    finally:
        await ledger.close()
