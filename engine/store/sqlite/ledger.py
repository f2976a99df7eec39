"""The active scheduler's writer: one sqlite3 connection on its own thread, batched fenced transactions.

Every statement carries this process's epoch in `writer_epoch`; the database's triggers refuse it
once another process has taken over, which surfaces here as FencedError.

The connection lives on one dedicated thread (`_WriterThread`) and each call is one hop to it: a
whole transaction (BEGIN IMMEDIATE … COMMIT) is one function run there, not one await per
statement (docs/decisions.md says why this is not aiosqlite).

SQLite errors are classified once (`db.store_error`): FencedError; StoreRetryableError (another
writer holds the lock, the disk is full), which the scheduler retries with backoff while
`health` logs the fault once and its end once; StoreFatalError, which ends the active.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from engine.clock import iso, parse_iso
from engine.errors import StoreError, StoreFatalError, StoreRetryableError
from engine.model import LeaderRow, Notification, Run, RunState
from engine.paths import StatePaths
from engine.store.abc import DURATION_HISTORY, JobState, LeaderClaim, LedgerStart
from engine.store.health import StoreHealth
from engine.store.intents import CommitObserver, Intent, NewRun
from engine.store.observers import Observers
from engine.store.sqlite.db import BUSY_TIMEOUT_MS, PRAGMAS, connect, rollback_quietly, store_error
from engine.store.sqlite.queries import QUERIES
from engine.store.sqlite.rows import duration_of, leader_of, notification_of, run_of, state_of
from engine.store.sqlite.statements import bind

Params = Sequence[Any] | dict[str, Any]
T = TypeVar("T")
log = logging.getLogger("vigil.ledger")


#: The ledger checkpoints the WAL itself (autocheckpoint off) after this many commits, each time
#: after checking that the database file is still the one it opened.
CHECKPOINT_EVERY = 100
#: The writer connection's page cache, in KiB.
WRITER_CACHE_KIB = 512


#: This many intents of one kind in a row (the catalog of a whole folder, the first fires of its
#: jobs) are bound on the writer thread while they are written, a chunk at a time, instead of all
#: before the commit: 10,000 bound rows at once took ~3 MB, left behind as heap the process kept.
LAZY_ROWS_MIN = 64
LAZY_CHUNK = 256


class _Rows:
    """Consecutive intents of one kind in a commit, bound when the writer thread writes them."""

    __slots__ = ("epoch", "intents")

    def __init__(self, intents: list[Intent], epoch: int) -> None:
        self.intents = intents
        self.epoch = epoch

    def chunks(self) -> Iterator[tuple[str, list[Params]]]:
        """(statement, parameters) runs of at most LAZY_CHUNK rows, in order (a kind may use several
        statements: a forgotten last fire is not a recorded one)."""
        sql = ""
        rows: list[Params] = []
        for intent in self.intents:
            statement, params = bind(intent, self.epoch)
            if statement != sql or len(rows) >= LAZY_CHUNK:
                if rows:
                    yield sql, rows
                sql, rows = statement, []
            rows.append(params)
        if rows:
            yield sql, rows


Statement = tuple[str, Params] | _Rows  #: one bound statement, or a run of intents bound as written


def _transaction(
    conn: sqlite3.Connection,
    groups: list[tuple[str, list[Params]] | _Rows],
    check: tuple[str, Params] | None,
    guard: Callable[[], None],
) -> list[sqlite3.Row]:
    """One BEGIN IMMEDIATE … COMMIT, run in the connection's own thread; rolled back on any error.

    `check` selects the ids of the rows being inserted: the ones it finds afterwards and not before
    are returned (a row already there, under the same id or for the same fire, is not new).
    """
    guard()  # in the thread, right before the write: the smallest window for a file lost meanwhile
    conn.execute("BEGIN IMMEDIATE")
    try:
        existing = {row[0] for row in conn.execute(*check)} if check is not None else set()
        for group in groups:
            for sql, params_list in group.chunks() if isinstance(group, _Rows) else (group,):
                try:
                    conn.executemany(sql, params_list)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # a value sqlite3 cannot bind (an int beyond 64 bits): a bug
                    raise StoreFatalError(f"state database: cannot store {_statement_name(sql)}: {exc}") from exc
        found = [row for row in conn.execute(*check) if row[0] not in existing] if check is not None else []
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    return found


_STATEMENT_NAMES = {sql: name for name, sql in QUERIES.items()}


def _statement_name(sql: str) -> str:
    """The named statement (the intent's kind) `sql` is, for an error message."""
    return _STATEMENT_NAMES.get(sql) or " ".join(sql.split()[:3])


def _checkpoint(conn: sqlite3.Connection, file_is_ours: Callable[[], bool]) -> None:
    if not file_is_ours():
        return  # the commit went through; the next write reports the lost file
    # PASSIVE never waits for readers or writers; an error here (a full disk) shows on the next write.
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _open(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """The writer's connection, made on the writer thread (sqlite3 ties it to the thread that made it)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    try:
        for pragma in PRAGMAS:
            conn.execute(pragma)
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # No checkpoint behind our back: each one first checks the file is still ours (_checkpoint).
        conn.execute("PRAGMA wal_autocheckpoint=0")
        # 512 KiB of page cache, not SQLite's 2 MB: a write touches a few pages at the ends of the
        # tables and their indexes, and the OS caches the file anyway (docs/decisions.md, "Memory").
        conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn


def _fetch(conn: sqlite3.Connection, sql: str, params: Params) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()


class _WriterThread:
    """One thread that owns the writer's connection; `call` runs a function there (one hop)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-ledger")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def stop(self) -> None:
        """End the thread once the calls queued before this one have run."""
        self._pool.shutdown(wait=False)


def _take_leadership(conn: sqlite3.Connection, claim: LeaderClaim, floor: int) -> tuple[int, LeaderRow]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        previous = leader_of(conn.execute(QUERIES["leader"]).fetchone())
        params = {"floor": floor, "pid": claim.pid, "starttime": claim.starttime, "since": iso(claim.since)}
        conn.execute(QUERIES["take_leadership"], params)
        epoch = leader_of(conn.execute(QUERIES["leader"]).fetchone()).epoch
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    return epoch, previous


class Ledger:
    def __init__(self, paths: StatePaths, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.paths = paths
        self.busy_timeout_ms = busy_timeout_ms
        self.epoch = 0
        self._thread: _WriterThread | None = None
        self._conn: sqlite3.Connection | None = None  #: used only on `_thread`
        self._lock = asyncio.Lock()
        self._pending: list[tuple[str, Params]] = []
        self._pending_intents: list[Intent] = []  #: what `_pending` was bound from, for the observers
        self.observers = Observers()
        self._flush_wanted = asyncio.Event()
        self.health = StoreHealth()
        self._file_id: tuple[int, int] | None = None
        self._lost: str | None = None  #: how the database file was lost; from then on nothing is written
        self._commits = 0  #: since the last checkpoint
        self.abandoned = False  #: the connection was left open, not closed: the file was lost (see close)

    async def open(self) -> None:
        connect(self.paths).close()  # creates the schema synchronously, once
        thread = _WriterThread()
        try:
            conn = await thread.call(_open, self.paths.db, self.busy_timeout_ms)
        except sqlite3.Error as exc:
            thread.stop()  # its thread is not a daemon: left running, it would keep the process alive
            raise store_error(exc, self.paths.db) from exc
        try:
            st = os.stat(self.paths.db)
        except OSError as exc:
            await thread.call(conn.close)
            thread.stop()
            raise StoreFatalError(f"state database {self.paths.db}: {exc.strerror}") from exc
        self._thread, self._conn = thread, conn
        self._file_id = (st.st_dev, st.st_ino)

    def file_lost(self) -> str | None:
        """How the database file was lost since open, or None (like LeaderLock.still_ours).

        Writes would still go to the open file, unseen by every reader and the next active.
        Once lost, always lost: this ledger writes nothing more.
        """
        if self._lost is None:
            self._lost = self._look_at_file()
        return self._lost

    def _look_at_file(self) -> str | None:
        try:
            st = os.stat(self.paths.db)
        except FileNotFoundError:
            return "removed"
        except OSError:
            return None  # cannot tell (the directory is unreadable): the writes themselves will say
        if self._file_id is not None and (st.st_dev, st.st_ino) != self._file_id:
            return "replaced"
        if st.st_size == 0:
            return "emptied"  # a WAL database always has its header in the main file
        return None

    def lost_error(self) -> StoreFatalError | None:
        lost = self.file_lost()
        if lost is None:
            return None
        return StoreFatalError(
            f"state database {self.paths.db} was {lost} under the running scheduler; stopping "
            "(restore a backup, or start `vigil up` again)"
        )

    def _guard(self) -> None:
        """Raise instead of writing to a database file that is no longer the one we opened."""
        error = self.lost_error()
        if error is not None:
            raise error

    async def close(self) -> None:
        """Close the connection, or, when the file was lost, leave it open until the process exits.

        SQLite checkpoints the WAL into the database file when its last connection closes (for a
        removed or renamed file it notices and skips this, not for a truncated one): into an
        emptied file that writes a zeroed header and stray pages, which no `vigil up`, reader or
        standby can use. Python 3.11's sqlite3 cannot set SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, so a
        lost file's connection is never closed: its thread ends, the connection object is kept
        alive for good (never finalised, so never closed), and the kernel drops its file
        descriptors and locks when the process exits, which it does next (the node keeps
        `leader.lock` until then, so that no standby opens the path while our locks remain).
        """
        if self._thread is None or self._conn is None:
            return
        thread, conn = self._thread, self._conn
        self._thread = self._conn = None
        if self.file_lost() is None:
            try:
                await thread.call(conn.close)
            finally:
                thread.stop()
            return
        # A reference no one drops: never finalised, so never closed, even when interpreter
        # teardown clears module globals (a list held there would not be enough).
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
        thread.stop()  # after every call queued before it: nothing uses the connection after this
        self.abandoned = True
        log.warning("state database %s was %s: left it untouched (no checkpoint, no close)", self.paths.db, self._lost)

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(connection, *args)` on the writer thread: one hop, whatever `fn` does there."""
        if self._thread is None or self._conn is None:
            # A control request (prune) still running while the scheduler stops gets an answer.
            raise StoreError("the state database is closed: the scheduler is stopping")
        return await self._thread.call(fn, self._conn, *args)

    async def take_leadership(self, claim: LeaderClaim, *, floor: int = 0) -> tuple[int, LeaderRow]:
        """Bump the epoch before anything else; return it and the previous leader's row.

        The new epoch is above both the database's and `floor` (the highest epoch this state
        directory or an agent has seen), so a restored database never hands out a used epoch.
        """
        async with self._lock:
            try:
                epoch, previous = await self._call(_take_leadership, claim, floor)
            except sqlite3.Error as exc:
                raise store_error(exc, self.paths.db) from exc
        self.epoch = epoch
        return self.epoch, previous

    async def query(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Rows of one read on the writer's connection: the typed reads below use it with named
        statements; tests use it to look at what was written."""
        if self._lost is not None:
            self._guard()
        try:
            return await self._call(_fetch, sql, params)
        except sqlite3.Error as exc:
            raise store_error(exc, self.paths.db) from exc

    def defer(self, intent: Intent) -> None:
        """Queue a write for the next batch (state updates that need not block the caller)."""
        self._pending.append(bind(intent, self.epoch))
        if self.observers:
            self._pending_intents.append(intent)
        self._flush_wanted.set()

    def observe(self, observer: CommitObserver) -> None:
        self.observers.add(observer)

    async def commit(self, intents: Iterable[Intent]) -> set[int]:
        """The deferred intents, then `intents` (NewRun rows first), in one transaction.

        Returns the ids of the NewRun rows that were new: a row whose (job, scheduled_for,
        attempt) already exists is ignored, and its id is not returned: that fire has been
        handled before and must not launch again.
        """
        given = list(intents)
        new_runs: list[Statement] = []
        others: list[Statement] = []
        ids: list[int] = []
        run: list[Intent] = []  # consecutive intents of one kind, not bound yet
        for intent in given:
            if isinstance(intent, NewRun):
                new_runs.append(bind(intent, self.epoch))
                ids.append(intent.id)
                continue
            if run and type(run[0]) is not type(intent):
                others += self._bound(run)
                run = []
            run.append(intent)
        others += self._bound(run)
        if not ids:
            await self._commit(others, given=given)
            return set()
        check = (QUERIES["inserted_runs"], {"run_ids": json.dumps(ids)})
        return await self._commit(new_runs + others, check=check, given=given)

    def _bound(self, run: list[Intent]) -> list[Statement]:
        """Intents of one kind as statements: bound now, or, when many, when they are written."""
        if len(run) >= LAZY_ROWS_MIN:
            return [_Rows(run, self.epoch)]
        return [bind(intent, self.epoch) for intent in run]

    # ------------------------------------------------------------ reads the active needs

    async def start_state(self) -> LedgerStart:
        (max_id,) = (await self.query(QUERIES["max_run_id"]))[0]
        (mark,) = (await self.query(QUERIES["run_id_mark_value"]))[0]
        jobs = {
            row["job"]: JobState(
                paused=bool(row["paused"]), last_fire=parse_iso(row["last_fire"]), held=bool(row["held"])
            )
            for row in await self.query(QUERIES["job_states"])
        }
        successes = {row["job"]: parse_iso(row["t"]) for row in await self.query(QUERIES["last_successes"])}
        last_ends = {
            row["job"]: state_of(row["state"]) for row in await self.query(QUERIES["last_ends"]) if row["state"]
        }
        return LedgerStart(
            max_run_id=int(max_id),
            run_id_mark=int(mark),
            jobs=jobs,
            last_success={job: at for job, at in successes.items() if at is not None},
            last_end=last_ends,
            agents_up={row["name"]: bool(row["up"]) for row in await self.query(QUERIES["agents_up"])},
            flow_runs=[run_of(row) for row in await self.query(QUERIES["open_flow_runs"])],
        )

    async def flow_runs(self, flow_id: int) -> list[Run]:
        return [run_of(row) for row in await self.query(QUERIES["flow_runs"], {"flow_id": flow_id})]

    async def recent_durations(self, job: str, limit: int = DURATION_HISTORY) -> list[float]:
        rows = await self.query(QUERIES["recent_durations"], {"job": job, "limit": limit})
        durations = (duration_of(row["started_at"], row["ended_at"]) for row in rows)
        return [d for d in durations if d is not None]

    async def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        rows = await self.query(QUERIES["due_notifications"], {"now": iso(now), "limit": limit})
        return [notification_of(row) for row in rows]

    async def next_notification_at(self) -> datetime | None:
        (at,) = (await self.query(QUERIES["next_notification_at"]))[0]
        return parse_iso(at)

    async def open_runs(self) -> list[Run]:
        return [run_of(row) for row in await self.query(QUERIES["open_runs"])]

    async def run(self, run_id: int) -> Run | None:
        rows = await self.query(QUERIES["run"], {"run_id": run_id})
        return run_of(rows[0]) if rows else None

    async def run_states(self, run_ids: Sequence[int]) -> dict[int, RunState]:
        rows = await self.query(QUERIES["run_states"], {"run_ids": json.dumps(list(run_ids))})
        return {int(row["id"]): state_of(row["state"]) for row in rows}

    async def prunable_runs(self, cutoff: datetime) -> list[int]:
        return [int(row[0]) for row in await self.query(QUERIES["prunable_runs"], {"cutoff": iso(cutoff)})]

    async def flush(self) -> None:
        await self._commit([])

    async def _commit(
        self,
        statements: list[Statement],
        check: tuple[str, Params] | None = None,
        given: Sequence[Intent] = (),
    ) -> set[int]:
        """The deferred writes, then `statements` (bound from `given`), in one transaction; the ids
        `check` found (the new runs)."""
        failures = self.health.failures
        async with self._lock:
            fault = self.health.fault
            if fault is not None and self.health.failures != failures:
                # The write in front of ours has just waited a whole busy timeout and failed: fail
                # now too instead of waiting another one (a command's answer waits on this).
                raise StoreRetryableError(fault.kind, str(fault))
            deferred, self._pending = self._pending, []
            deferred_intents, self._pending_intents = self._pending_intents, []
            self._flush_wanted.clear()
            batch = deferred + statements
            if not batch:
                return set()
            # Only this attempt's: a failed one rolls them back with it, the next builds its own.
            batch += [bind(x, self.epoch) for x in self.health.recovery_intents(time.monotonic())]
            try:
                found = {int(row[0]) for row in await self._run_batch(batch, check)}
            except Exception:
                # Rolled back, whatever the error: the deferred updates (a run's start, a kill
                # request) must not be lost with it; they go first into the next attempt. (Not on
                # cancellation: the transaction may still commit on the writer thread.)
                self._pending = deferred + self._pending
                self._pending_intents = deferred_intents + self._pending_intents
                self._flush_wanted.set()
                raise
        self.observers.committed(deferred_intents, given, found)
        return found

    async def _run_batch(self, batch: list[Statement], check: tuple[str, Params] | None = None) -> list[sqlite3.Row]:
        # Consecutive statements with the same text run as one executemany; order is kept.
        groups: list[tuple[str, list[Params]] | _Rows] = []
        for statement in batch:
            if isinstance(statement, _Rows):
                groups.append(statement)
                continue
            sql, params = statement
            last = groups[-1] if groups else None
            if isinstance(last, tuple) and last[0] == sql:
                last[1].append(params)
            else:
                groups.append((sql, [params]))
        try:
            # The whole transaction in one hop to the writer thread. Each awaited statement would
            # be a round trip between threads (about 0.1 ms idle, several ms when the cores are
            # busy with runs), and this commit stands between a fire and its launch.
            found = await self._call(_transaction, groups, check, self._guard)
        except sqlite3.Error as exc:
            error = store_error(exc, self.paths.db)
            if isinstance(error, StoreRetryableError) and self.health.failed(error, time.monotonic()):
                log.error("%s; retrying with backoff: nothing new launches until a write succeeds", error)
            raise error from exc
        lasted = self.health.succeeded(time.monotonic())
        if lasted is not None:
            log.warning("state database: writable again after %.1fs; catching up", lasted)
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY:
            self._commits = 0
            await self._call(_checkpoint, lambda: self.file_lost() is None)
        return found

    async def wait_for_deferred(self) -> None:
        await self._flush_wanted.wait()
