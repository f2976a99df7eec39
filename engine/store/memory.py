"""An in-memory `Store`: the SQLite backend's rules without a file, for policy tests and the contract suite.

`MemoryDatabase` is the shared state (the counterpart of one SQLite file); each `MemoryStore` is
one process's writer on it, so two stores on one database fence each other by epoch exactly as two
schedulers on one state directory do. The rules are the SQLite backend's, statement by statement
(engine/store/sqlite/queries.sql and the fencing triggers of schema.sql):

- a write that would insert or change a row under an epoch that is not the leader's raises
  FencedError; an update that matches no row changes nothing and raises nothing (no trigger fires);
  a deliverer's mark of an outbox row touches the row whatever its state, so it is fenced whenever
  the row exists (it changes only a pending one);
- a delete under a stale epoch deletes nothing (the statements check the epoch themselves);
- a commit is all or nothing: it is applied to a copy that replaces the state only when every
  intent went through.

`MemoryDatabase.hold_write_lock()` plays another process holding the write lock: commits and
`take_leadership` then fail with the retryable "locked by another writer", as they do on SQLite once
its busy timeout runs out. As on SQLite, a deferred intent is bound to the epoch of the moment it
was deferred; an integer beyond SQLite's 64 bits cannot be stored (StoreFatalError); a closed store
writes and reads nothing (StoreError).

Layer: store. Imports only the base modules and the store's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from engine.errors import FencedError, StoreError, StoreFatalError, StoreRetryableError
from engine.model import (
    ACTIVE_STATES,
    OPEN_STATES,
    RAN_STATES,
    LeaderRow,
    Notification,
    NotificationState,
    Run,
    RunState,
)
from engine.notify.events import Event
from engine.store import intents as i
from engine.store.abc import DURATION_HISTORY, JobState, LeaderClaim, LedgerStart
from engine.store.health import StoreHealth
from engine.store.observers import Observers

#: The states each conditional update moves a run from (the WHERE clauses of queries.sql).
_STARTABLE = frozenset({RunState.PENDING, RunState.LAUNCHING, RunState.WAITING})

_WAITABLE = frozenset({RunState.LAUNCHING, RunState.WAITING})
#: SQLite's integer range: a Python int beyond it cannot be bound.
_LOWEST, _HIGHEST = -(1 << 63), (1 << 63) - 1


def _storable(intent: i.Intent) -> None:
    """Raise as SQLite's binding does for a value it cannot store (a programming error)."""
    for name in intent.__dataclass_fields__:
        value = getattr(intent, name)
        if isinstance(value, int) and not _LOWEST <= value <= _HIGHEST:
            raise StoreFatalError(
                f"state database: cannot store {type(intent).__name__}: {name} {value} is beyond SQLite's integers"
            )


def _locked_error() -> StoreRetryableError:
    return StoreRetryableError("locked by another writer", "state database: locked by another writer")


@dataclass
class _Tables:
    """Every table of one database; copied per transaction (records are frozen: a shallow copy is enough)."""

    leader: LeaderRow = field(default_factory=lambda: LeaderRow(0, None, None, None, True))
    runs: dict[int, Run] = field(default_factory=dict)
    fires: dict[tuple[str, datetime, int], int] = field(default_factory=dict)  #: UNIQUE (job, scheduled_for, attempt)
    run_id_mark: int = 0
    job_state: dict[str, JobState] = field(default_factory=dict)
    catalog: dict[str, i.CatalogUpsert] = field(default_factory=dict)
    agents: dict[str, i.AgentSeen] = field(default_factory=dict)
    audit: list[i.Audit] = field(default_factory=list)
    failovers: list[tuple[i.Failover, int]] = field(default_factory=list)  #: with the epoch that wrote it
    warnings: dict[tuple[int, str], datetime] = field(default_factory=dict)
    outbox: dict[tuple[str, str], Notification] = field(default_factory=dict)  #: by (event id, channel)
    in_flow: set[int] = field(default_factory=set)  #: runs stored with a flow id (SQLite: flow_id NOT NULL)

    def copy(self) -> _Tables:
        return _Tables(
            leader=self.leader,
            runs=dict(self.runs),
            fires=dict(self.fires),
            run_id_mark=self.run_id_mark,
            job_state=dict(self.job_state),
            catalog=dict(self.catalog),
            agents=dict(self.agents),
            audit=list(self.audit),
            failovers=list(self.failovers),
            warnings=dict(self.warnings),
            outbox=dict(self.outbox),
            in_flow=set(self.in_flow),
        )


class MemoryDatabase:
    """The state several MemoryStores share, as processes share one SQLite file."""

    def __init__(self) -> None:
        self.tables = _Tables()
        self.locked = False

    @contextlib.contextmanager
    def hold_write_lock(self) -> Iterator[None]:
        """Another writer holds the lock meanwhile: every commit fails with a retryable fault."""
        self.locked = True
        try:
            yield
        finally:
            self.locked = False


class _Transaction:
    """One commit's intents applied to a copy of the tables, each under the epoch it was bound to."""

    def __init__(self, tables: _Tables) -> None:
        self.t = tables
        self.epoch = 0  #: the intent being applied's

    def _fence(self) -> None:
        """A row is about to be written: the schema's triggers refuse a stale epoch."""
        if self.epoch != self.t.leader.epoch:
            raise FencedError("this scheduler has been deposed: the database holds a newer epoch")

    def _current(self) -> bool:
        """A delete's own epoch check: a stale writer deletes nothing, and is not told."""
        return self.epoch == self.t.leader.epoch

    def _update_run(self, run_id: int, states: Iterable[RunState] | None, **changes: object) -> None:
        run = self.t.runs.get(run_id)
        if run is None or (states is not None and run.state not in states):
            return  # no row matches: nothing changes, no trigger fires
        self._fence()
        self.t.runs[run_id] = dataclasses.replace(run, **changes)  # type: ignore[arg-type]

    def _update_pending(self, event_id: str, channel: str, **changes: object) -> None:
        """A deliverer's mark: it touches the row whatever its state (so a deposed writer is fenced
        even on a row the new active already marked), and changes only a pending one."""
        row = self.t.outbox.get((event_id, channel))
        if row is None:
            return  # no row matches: nothing changes, no trigger fires
        self._fence()
        if row.state is NotificationState.PENDING:
            self.t.outbox[(event_id, channel)] = dataclasses.replace(row, **changes)  # type: ignore[arg-type]

    def _pending_row(self, event: Event, channel: str, not_before: datetime | None) -> Notification:
        return Notification(
            event_id=event.id,
            channel=channel,
            event=str(event.event),
            job=event.job,
            run_id=event.run_id,
            created_at=event.at,
            state=NotificationState.PENDING,
            attempts=0,
            next_attempt_at=not_before,
            last_error=None,
            last_attempt_at=None,
            sent_at=None,
            summary_id=None,
            epoch=self.epoch,
            document=event.to_json(),
        )

    def apply(self, intent: i.Intent, epoch: int) -> int | None:
        """Apply one intent under `epoch`; for a NewRun, the id when its row was new."""
        _storable(intent)
        self.epoch = epoch
        t = self.t
        match intent:
            case i.NewRun():
                self._fence()
                key = (intent.job, intent.scheduled_for, intent.attempt)
                if key in t.fires or intent.id in t.runs:
                    return None  # INSERT OR IGNORE: that fire was handled before
                t.fires[key] = intent.id
                if intent.flow_id is not None:
                    t.in_flow.add(intent.id)
                t.runs[intent.id] = Run(
                    id=intent.id,
                    job=intent.job,
                    scheduled_for=intent.scheduled_for,
                    attempt=intent.attempt,
                    state=intent.state,
                    trigger=intent.trigger,
                    epoch=self.epoch,
                    created_at=intent.created_at,
                    reason=intent.reason,
                    not_before=intent.not_before,
                    ended_at=intent.ended_at,
                    command=intent.command,
                    agent=intent.agent,
                    flow_id=intent.flow_id if intent.flow_id is not None else intent.id,
                )
                return intent.id
            case i.RunLaunching(run_id=run_id, reason=None):
                self._update_run(run_id, None, state=RunState.LAUNCHING)
            case i.RunLaunching():
                self._update_run(intent.run_id, None, state=RunState.LAUNCHING, reason=intent.reason)
            case i.RunStarted():
                extra = {"reason": None} if intent.clear_reason else {}
                self._update_run(
                    intent.run_id,
                    _STARTABLE,
                    state=RunState.RUNNING,
                    started_at=intent.started_at,
                    deadline=intent.deadline,
                    **extra,
                )
            case i.StartRestated():
                self._update_run(intent.run_id, ACTIVE_STATES, started_at=intent.started_at, deadline=intent.deadline)
            case i.RunFinished():
                run = t.runs.get(intent.run_id)
                pid = intent.pid if intent.pid is not None or run is None else run.pid
                self._update_run(
                    intent.run_id,
                    OPEN_STATES,
                    state=intent.state,
                    reason=intent.reason,
                    exit_code=intent.exit_code,
                    ended_at=intent.ended_at,
                    pid=pid,
                    cpu_s=intent.cpu_s,
                    peak_rss=intent.peak_rss,
                    outputs=intent.outputs,
                )
            case i.KillRequested():
                self._update_run(intent.run_id, None, kill_requested=intent.cause)
            case i.AgentChosen():
                self._update_run(intent.run_id, OPEN_STATES, agent=intent.agent)
            case i.RunBlocked():
                self._update_run(intent.run_id, (RunState.PENDING,), reason=intent.reason)
            case i.RunWaiting():
                self._update_run(intent.run_id, _WAITABLE, state=RunState.WAITING, reason=intent.reason)
            case i.RunsPruned():
                if self._current():
                    for run_id in intent.run_ids:
                        run = t.runs.pop(run_id, None)
                        if run is not None:
                            del t.fires[(run.job, run.scheduled_for, run.attempt)]
                            t.in_flow.discard(run_id)
                    pruned = set(intent.run_ids)  # their warnings go with them (a trigger on SQLite)
                    t.warnings = {key: at for key, at in t.warnings.items() if key[0] not in pruned}
            case i.NotificationsPruned():
                if self._current():
                    t.outbox = {
                        key: row
                        for key, row in t.outbox.items()
                        if row.state is NotificationState.PENDING or row.created_at >= intent.cutoff
                    }
            case i.RunIdMark():
                self._fence()
                t.run_id_mark = max(t.run_id_mark, intent.run_id)
            case i.LastFire(job=job, at=None):
                if job in t.job_state:
                    self._fence()
                    t.job_state[job] = dataclasses.replace(t.job_state[job], last_fire=None)
            case i.LastFire():
                self._fence()
                state = t.job_state.get(intent.job, JobState())
                t.job_state[intent.job] = dataclasses.replace(state, last_fire=intent.at)
            case i.Paused():
                self._fence()
                state = t.job_state.get(intent.job, JobState())
                t.job_state[intent.job] = dataclasses.replace(state, paused=intent.paused)
            case i.Held():
                self._fence()
                state = t.job_state.get(intent.job, JobState())
                t.job_state[intent.job] = dataclasses.replace(state, held=intent.held)
            case i.CatalogUpsert():
                self._fence()
                t.catalog[intent.name] = intent
            case i.CatalogDrop():
                if self._current():
                    t.catalog.pop(intent.name, None)
            case i.CatalogCleared():
                if self._current():
                    t.catalog.clear()
            case i.NextFire():
                entry = t.catalog.get(intent.job)
                if entry is not None:
                    self._fence()
                    t.catalog[intent.job] = dataclasses.replace(entry, next_fire=intent.at)
            case i.AgentSeen():
                self._fence()
                old = t.agents.get(intent.name)
                if old is not None:  # unknown (None) contact and version are kept: COALESCE
                    intent = dataclasses.replace(
                        intent,
                        last_contact=old.last_contact if intent.last_contact is None else intent.last_contact,
                        version=old.version if intent.version is None else intent.version,
                    )
                t.agents[intent.name] = intent
            case i.AgentDropped():
                if self._current():
                    t.agents.pop(intent.name, None)
            case i.Audit():
                self._fence()
                t.audit.append(intent)
            case i.Failover():
                self._fence()
                t.failovers.append((intent, self.epoch))
            case i.CleanStop():
                if self._current():
                    t.leader = dataclasses.replace(t.leader, clean_stop=True)
            case i.RunWarned():
                self._fence()
                t.warnings.setdefault((intent.run_id, str(intent.warning)), intent.at)
            case i.NotificationQueued():
                self._fence()
                for channel in intent.channels:
                    row = self._pending_row(intent.event, channel, intent.not_before)
                    t.outbox.setdefault((intent.event.id, channel), row)
            case i.NotificationSent():
                self._update_pending(
                    intent.event_id,
                    intent.channel,
                    state=NotificationState.SENT,
                    sent_at=intent.at,
                    last_attempt_at=intent.at,
                    attempts=intent.attempts,
                    next_attempt_at=None,
                    last_error=None,  # delivered: an earlier attempt's error is no longer its state
                )
            case i.NotificationRetry():
                self._update_pending(
                    intent.event_id,
                    intent.channel,
                    attempts=intent.attempts,
                    next_attempt_at=intent.next_attempt_at,
                    last_error=intent.error,
                    last_attempt_at=intent.at,
                )
            case i.NotificationFailed():
                self._update_pending(
                    intent.event_id,
                    intent.channel,
                    state=NotificationState.FAILED,
                    attempts=intent.attempts,
                    next_attempt_at=None,
                    last_error=intent.error,
                    last_attempt_at=intent.at,
                )
            case i.NotificationSuppressed():
                for event_id in intent.event_ids:
                    self._update_pending(
                        event_id,
                        intent.channel,
                        state=NotificationState.SUPPRESSED,
                        summary_id=intent.summary_id,
                        next_attempt_at=None,
                    )
            case i.SummaryRecounted():
                self._fence()  # an upsert: its insert's trigger fires first
                if (intent.event.id, intent.channel) not in t.outbox:
                    row = self._pending_row(intent.event, intent.channel, intent.not_before)
                    t.outbox[(intent.event.id, intent.channel)] = row
                else:
                    self._update_pending(intent.event.id, intent.channel, document=intent.event.to_json())
            case _:
                raise TypeError(f"not a store intent: {intent!r}")
        return None


class MemoryStore:
    """One writer on a MemoryDatabase; implements `engine.store.Store`."""

    def __init__(self, database: MemoryDatabase | None = None) -> None:
        self.database = database if database is not None else MemoryDatabase()
        self.health = StoreHealth()
        self._epoch = 0
        self._pending: list[tuple[i.Intent, int]] = []  #: with the epoch when deferred
        self.observers = Observers()
        self._flush_wanted = asyncio.Event()
        self._open = False

    @property
    def epoch(self) -> int:
        return self._epoch

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def lost_error(self) -> StoreFatalError | None:
        return None  # memory cannot be removed from under the process

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("the state database is closed: the scheduler is stopping")

    @property
    def is_open(self) -> bool:
        return self._open

    def file_lost(self) -> str | None:
        return None

    @property
    def abandoned(self) -> bool:
        return False  # nothing to leave open

    async def take_leadership(self, claim: LeaderClaim, *, floor: int = 0) -> tuple[int, LeaderRow]:
        self._check_open()
        if self.database.locked:
            raise _locked_error()
        tables = self.database.tables
        previous = tables.leader
        self._epoch = max(previous.epoch, floor) + 1
        tables.leader = LeaderRow(self._epoch, claim.pid, claim.starttime, claim.since, clean_stop=False)
        return self._epoch, previous

    def defer(self, intent: i.Intent) -> None:
        self._pending.append((intent, self._epoch))
        self._flush_wanted.set()

    async def flush(self) -> None:
        await self.commit([])

    def observe(self, observer: i.CommitObserver) -> None:
        self.observers.add(observer)

    async def wait_for_deferred(self) -> None:
        await self._flush_wanted.wait()

    async def commit(self, intents: Iterable[i.Intent]) -> set[int]:
        self._check_open()
        deferred, self._pending = self._pending, []
        self._flush_wanted.clear()
        given = list(intents)
        # As in the SQLite backend: the deferred intents, then the NewRun rows, then the rest.
        new_runs = [(x, self._epoch) for x in given if isinstance(x, i.NewRun)]
        batch = deferred + new_runs + [(x, self._epoch) for x in given if not isinstance(x, i.NewRun)]
        if not batch:
            return set()
        batch += [(x, self._epoch) for x in self.health.recovery_intents(time.monotonic())]
        try:
            if self.database.locked:
                raise _locked_error()
            txn = _Transaction(self.database.tables.copy())
            new = {run_id for run_id in (txn.apply(x, epoch) for x, epoch in batch) if run_id is not None}
        except Exception as exc:
            # Rolled back: the deferred intents go first into the next attempt.
            self._pending = deferred + self._pending
            self._flush_wanted.set()
            if isinstance(exc, StoreRetryableError):
                self.health.failed(exc, time.monotonic())
            raise
        self.database.tables = txn.t
        self.health.succeeded(time.monotonic())
        self.observers.committed([x for x, _ in deferred], given, new)
        return new

    # ------------------------------------------------------------ reads the active needs

    async def start_state(self) -> LedgerStart:
        self._check_open()
        t = self.database.tables
        last_success: dict[str, datetime] = {}
        for run in t.runs.values():
            if run.state == RunState.SUCCEEDED and run.ended_at is not None:
                best = last_success.get(run.job)
                if best is None or run.ended_at > best:
                    last_success[run.job] = run.ended_at
        open_flows = {run.flow_id for run in t.runs.values() if run.state in OPEN_STATES and run.id in t.in_flow}
        last_end: dict[str, RunState] = {}
        for run_id in sorted(t.runs):  # the newest final outcome, per catalogued job (as `last_ends`)
            run = t.runs[run_id]
            retried = (run.job, run.scheduled_for, run.attempt + 1) in t.fires
            if run.job in t.catalog and run.state in RAN_STATES and not retried:
                last_end[run.job] = run.state
        return LedgerStart(
            max_run_id=max(t.runs, default=0),
            run_id_mark=t.run_id_mark,
            jobs=dict(t.job_state),
            last_success=last_success,
            last_end=last_end,
            agents_up={name: seen.up for name, seen in t.agents.items()},
            flow_runs=[
                t.runs[run_id]
                for run_id in sorted(t.in_flow)
                if run_id in t.runs and t.runs[run_id].flow_id in open_flows
            ],
        )

    async def flow_runs(self, flow_id: int) -> list[Run]:
        self._check_open()
        t = self.database.tables
        return [t.runs[run_id] for run_id in sorted(t.runs) if t.runs[run_id].flow_id == flow_id]

    async def open_runs(self) -> list[Run]:
        self._check_open()
        t = self.database.tables
        return [t.runs[run_id] for run_id in sorted(t.runs) if t.runs[run_id].state in OPEN_STATES]

    async def run(self, run_id: int) -> Run | None:
        self._check_open()
        return self.database.tables.runs.get(run_id)

    async def run_states(self, run_ids: Sequence[int]) -> dict[int, RunState]:
        self._check_open()
        runs = self.database.tables.runs
        return {run_id: runs[run_id].state for run_id in run_ids if run_id in runs}

    async def prunable_runs(self, cutoff: datetime) -> list[int]:
        self._check_open()
        runs = self.database.tables.runs
        return sorted(
            run_id
            for run_id, run in runs.items()
            if run.ended_at is not None and run.ended_at < cutoff and run.state not in OPEN_STATES
        )

    async def recent_durations(self, job: str, limit: int = DURATION_HISTORY) -> list[float]:
        self._check_open()
        runs = self.database.tables.runs
        newest_first = (runs[run_id] for run_id in sorted(runs, reverse=True))
        succeeded = (r for r in newest_first if r.job == job and r.state is RunState.SUCCEEDED)
        durations = (r.duration() for r in succeeded if r.started_at is not None)
        return [d for _, d in zip(range(limit), (d for d in durations if d is not None), strict=False)]

    async def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        self._check_open()
        due = [
            row
            for row in self.database.tables.outbox.values()
            if row.state is NotificationState.PENDING and (row.next_attempt_at is None or row.next_attempt_at <= now)
        ]
        due.sort(key=lambda row: (row.created_at, row.event_id, row.channel))
        return due[:limit]

    async def next_notification_at(self) -> datetime | None:
        self._check_open()
        times = [
            row.next_attempt_at
            for row in self.database.tables.outbox.values()
            if row.state is NotificationState.PENDING and row.next_attempt_at is not None
        ]
        return min(times, default=None)
