"""The `backend` fixture every Store backend is tested through (tests/contract/test_store.py).

A backend gives stores that share one database, as processes share one state directory, a way
to hold its write lock from outside, and a look at what only readers read (catalog, agents,
failovers: `engine.store.StoreReader`'s part that the Store protocol does not read back). A new backend (PostgreSQL) plugs in as one more parameter,
marked `external_service` so it runs only where its server is (APScheduler's tests/conftest.py
parametrizes its data stores the same way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from engine.model import AgentRow, FailoverRow, JobRow
from engine.paths import StatePaths
from engine.store.abc import Store
from engine.store.memory import MemoryDatabase, MemoryStore
from engine.store.sqlite.ledger import Ledger
from engine.store.sqlite.reader import SqliteReader


class Records(Protocol):
    """The reader's view of what the writers recorded (a part of `engine.store.StoreReader`)."""

    def jobs(self) -> list[JobRow]: ...

    def agents(self) -> list[AgentRow]: ...

    def failovers(self, limit: int = 10) -> list[FailoverRow]: ...

    def close(self) -> None: ...


class _MemoryRecords:
    """`Records` straight from a MemoryDatabase's tables, as the SQLite reader's statements select them."""

    def __init__(self, database: MemoryDatabase) -> None:
        self.database = database

    def jobs(self) -> list[JobRow]:
        t = self.database.tables
        return [
            JobRow(
                name=job.name,
                path=job.path,
                schedule=job.schedule,
                enabled=job.enabled,
                agent=job.agent,
                description=job.description,
                tags=job.tags,
                next_fire=job.next_fire,
                error=job.error,
                paused=name in t.job_state and t.job_state[name].paused,
                loaded=job.path != "",
                held=name in t.job_state and t.job_state[name].held,
                priority=job.priority,
                locks=job.locks,
            )
            for name, job in sorted(t.catalog.items())
        ]

    def agents(self) -> list[AgentRow]:
        return [AgentRow(**dataclasses.asdict(seen)) for _, seen in sorted(self.database.tables.agents.items())]

    def failovers(self, limit: int = 10) -> list[FailoverRow]:
        rows = [FailoverRow(**dataclasses.asdict(f), epoch=epoch) for f, epoch in self.database.tables.failovers]
        return rows[::-1][:limit]

    def close(self) -> None:
        pass


@dataclass
class Backend:
    name: str
    new_store: Callable[[], Store]  #: another writer on the same database (not yet open)
    hold_write_lock: Callable[[], AbstractContextManager[None]]  #: another process holds the write lock
    new_records: Callable[[], Records]  #: a reader of the same database
    opened: list[Store] = field(default_factory=list)
    readers: list[Records] = field(default_factory=list)

    async def store(self) -> Store:
        """A new writer on the database, open (close is the fixture's)."""
        store = self.new_store()
        await store.open()
        self.opened.append(store)
        return store

    def records(self) -> Records:
        """What a reader sees now (close is the fixture's)."""
        records = self.new_records()
        self.readers.append(records)
        return records


def _sqlite(tmp_path: Path) -> Backend:
    paths = StatePaths(tmp_path / "state")

    @contextlib.contextmanager
    def hold_write_lock() -> Iterator[None]:
        holder = sqlite3.connect(paths.db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    # A short busy timeout: a held lock fails a commit in 50 ms instead of the default 5 s.
    return Backend("sqlite", lambda: Ledger(paths, busy_timeout_ms=50), hold_write_lock, lambda: SqliteReader(paths))


def _memory(tmp_path: Path) -> Backend:
    database = MemoryDatabase()
    return Backend("memory", lambda: MemoryStore(database), database.hold_write_lock, lambda: _MemoryRecords(database))


BACKENDS = {"sqlite": _sqlite, "memory": _memory}


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = BACKENDS[request.param](tmp_path)
    try:
        yield made
    finally:
        for store in made.opened:
            await store.close()
        for records in made.readers:
            records.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    """One open writer on a fresh database."""
    return await backend.store()
