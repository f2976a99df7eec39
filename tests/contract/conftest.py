"""The `backend` fixture every Store backend is tested through (tests/contract/test_store.py).

A backend gives stores that share one database, as processes share one state directory, and a way
to hold its write lock from outside. A new backend (PostgreSQL) plugs in as one more parameter,
marked `external_service` so it runs only where its server is (APScheduler's tests/conftest.py
parametrizes its data stores the same way).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.paths import StatePaths
from engine.store import Store
from engine.store.memory import MemoryDatabase, MemoryStore
from engine.store.sqlite.ledger import Ledger


@dataclass
class Backend:
    name: str
    new_store: Callable[[], Store]  #: another writer on the same database (not yet open)
    hold_write_lock: Callable[[], AbstractContextManager[None]]  #: another process holds the write lock
    opened: list[Store] = field(default_factory=list)

    async def store(self) -> Store:
        """A new writer on the database, open (close is the fixture's)."""
        store = self.new_store()
        await store.open()
        self.opened.append(store)
        return store


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
    return Backend("sqlite", lambda: Ledger(paths, busy_timeout_ms=50), hold_write_lock)


def _memory(tmp_path: Path) -> Backend:
    database = MemoryDatabase()
    return Backend("memory", lambda: MemoryStore(database), database.hold_write_lock)


BACKENDS = {"sqlite": _sqlite, "memory": _memory}


@pytest.fixture(params=list(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = BACKENDS[request.param](tmp_path)
    try:
        yield made
    finally:
        for store in made.opened:
            await store.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    """One open writer on a fresh database."""
    return await backend.store()
