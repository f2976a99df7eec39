"""The active scheduler's writer: one aiosqlite connection, batched fenced transactions.

Every statement carries this process's epoch in `writer_epoch`; the database's triggers refuse it
once another process has taken over, which surfaces here as FencedError.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from .db import BUSY_TIMEOUT_MS, PRAGMAS, StatePaths, connect
from .errors import FencedError, StoreError

Params = Sequence[Any]


def _translate(exc: sqlite3.Error) -> Exception:
    if "stale epoch" in str(exc):
        return FencedError("this scheduler has been deposed: the database holds a newer epoch")
    return StoreError(f"state database write failed: {exc}")


def _transaction(
    conn: sqlite3.Connection, groups: list[tuple[str, list[Params]]], check: tuple[str, Params] | None
) -> list[sqlite3.Row]:
    """One BEGIN IMMEDIATE … COMMIT, run in the connection's own thread; rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params_list in groups:
            conn.executemany(sql, params_list)
        found = conn.execute(*check).fetchall() if check is not None else []
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


class Ledger:
    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self.epoch = 0
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._pending: list[tuple[str, Params]] = []
        self._flush_wanted = asyncio.Event()

    async def open(self) -> None:
        connect(self.paths).close()  # creates the schema synchronously, once
        db = await aiosqlite.connect(self.paths.db, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        for pragma in PRAGMAS:
            await db.execute(pragma)
        db.row_factory = sqlite3.Row
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "ledger not open"
        return self._db

    async def take_leadership(
        self, pid: int, starttime: int | None, since: str, *, floor: int = 0
    ) -> tuple[int, dict[str, Any]]:
        """Bump the epoch before anything else; return it and the previous leader's row.

        The new epoch is above both the database's and `floor` (the highest epoch this state
        directory or an agent has seen), so a restored database never hands out a used epoch.
        """
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                cur = await self.db.execute("SELECT * FROM leader WHERE id = 1")
                previous = dict(await cur.fetchone())
                await self.db.execute(
                    "UPDATE leader SET epoch = MAX(epoch, ?) + 1, pid = ?, starttime = ?, since = ?, "
                    "clean_stop = 0 WHERE id = 1",
                    (floor, pid, starttime, since),
                )
                cur = await self.db.execute("SELECT epoch FROM leader WHERE id = 1")
                (epoch,) = await cur.fetchone()
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        self.epoch = int(epoch)
        return self.epoch, previous

    async def mark_clean_stop(self) -> None:
        await self.write([("UPDATE leader SET clean_stop = 1 WHERE id = 1 AND epoch = ?", (self.epoch,))])

    async def query(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self.db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    def defer(self, sql: str, params: Params) -> None:
        """Queue a write for the next batch (state updates that need not block the caller)."""
        self._pending.append((sql, params))
        self._flush_wanted.set()

    async def flush(self) -> None:
        await self.write([])

    async def write(self, statements: Iterable[tuple[str, Params]]) -> None:
        """One BEGIN IMMEDIATE transaction with the deferred writes plus `statements`."""
        await self._commit(list(statements))

    async def insert_runs(
        self, rows: list[dict[str, Any]], extra: Iterable[tuple[str, Params]] = ()
    ) -> set[int]:
        """Insert run rows (ids chosen by the caller); return the ids that were new.

        A row whose (job, scheduled_for, attempt) already exists is ignored, and its id is not
        returned: that fire has been handled before and must not launch again.
        """
        if not rows:
            await self.write(extra)
            return set()
        columns = list(rows[0])
        sql = f"INSERT OR IGNORE INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
        ids = [row["id"] for row in rows]
        placeholders = ",".join("?" for _ in ids)
        found = await self._commit(
            [*((sql, tuple(r[c] for c in columns)) for r in rows), *extra],
            check=(f"SELECT id FROM runs WHERE id IN ({placeholders})", ids),
        )
        return {int(r[0]) for r in found}

    async def _commit(
        self, statements: list[tuple[str, Params]], check: tuple[str, Params] | None = None
    ) -> list[sqlite3.Row]:
        """The deferred writes, then `statements`, in one transaction."""
        async with self._lock:
            deferred, self._pending = self._pending, []
            self._flush_wanted.clear()
            batch = deferred + statements
            if not batch:
                return []
            try:
                return await self._run_batch(batch, check)
            except StoreError:
                # Rolled back: the deferred updates (a run's start, a kill request) must not be
                # lost with it; they go first into the next attempt.
                self._pending = deferred + self._pending
                self._flush_wanted.set()
                raise

    async def _run_batch(
        self, batch: list[tuple[str, Params]], check: tuple[str, Params] | None = None
    ) -> list[sqlite3.Row]:
        # Consecutive statements with the same text run as one executemany; order is kept.
        groups: list[tuple[str, list[Params]]] = []
        for sql, params in batch:
            if groups and groups[-1][0] == sql:
                groups[-1][1].append(params)
            else:
                groups.append((sql, [params]))
        found: list[sqlite3.Row] = []
        try:
            run_in_thread = getattr(self.db, "_execute", None)
            if run_in_thread is not None:
                # The whole transaction in one hop to aiosqlite's thread. Each awaited statement
                # is a round trip between threads (about 0.1 ms idle, several ms when the cores are
                # busy with runs), and this commit stands between a fire and its launch.
                return await run_in_thread(_transaction, self.db._conn, groups, check)
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params_list in groups:
                    await self.db.executemany(sql, params_list)
                if check is not None:
                    async with self.db.execute(*check) as cur:
                        found = list(await cur.fetchall())
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _translate(exc) from exc
        return found

    async def wait_for_deferred(self) -> None:
        await self._flush_wanted.wait()
