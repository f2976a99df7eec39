"""The store's contracts: `Store` (the active's side: writes as intents, the reads an active needs)
and `StoreReader` (the readers' side), with the records they exchange. Every backend implements
them and passes the contract suite (tests/contract/); APScheduler 4's `abc.py` is the model.

Layer: store. Imports the base modules only (the write side's types for annotations only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from engine.model import (
    AgentRow,
    AuditRow,
    FailoverRow,
    JobRow,
    LeaderRow,
    Notification,
    NotificationState,
    Run,
    RunState,
    RunsWindow,
)

if TYPE_CHECKING:  # the write side's types: a reader (`vigil runs --json`) never loads them
    from engine.errors import StoreFatalError
    from engine.store.health import StoreHealth
    from engine.store.intents import CommitObserver, Intent


@dataclass(frozen=True, slots=True)
class JobState:
    paused: bool = False
    last_fire: datetime | None = None
    held: bool = False


@dataclass(frozen=True, slots=True)
class LedgerStart:
    """What a new active reads once before it plans anything."""

    max_run_id: int  #: the highest run id with a row (0: none)
    run_id_mark: int  #: the highest run id ever handed out, pruned ones included
    jobs: dict[str, JobState] = field(default_factory=dict)
    last_success: dict[str, datetime] = field(default_factory=dict)  #: latest succeeded end per job
    #: the state of each job's latest final outcome: a run that ran and was not retried (for `recovered`:
    #: the first success after a failure)
    last_end: dict[str, RunState] = field(default_factory=dict)
    #: each agent's recorded health (the `up` of its AgentSeen): what an earlier active has announced
    agents_up: dict[str, bool] = field(default_factory=dict)
    #: every run of each flow with an open run, oldest first: the new active's flows continue from them
    flow_runs: list[Run] = field(default_factory=list)


#: How many successful durations of a job `warn_if_longer = "200%"` takes the median of.
DURATION_HISTORY = 20


@dataclass(frozen=True, slots=True)
class ChannelHealth:
    """A channel as the outbox shows it: its rows by state and its latest delivery failure."""

    channel: str
    counts: dict[NotificationState, int]
    failing: bool  #: its latest attempt failed and nothing was delivered since
    last_error: str | None
    last_sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class LeaderClaim:
    """Who takes leadership: a process named by pid and its start time (to tell pid reuse)."""

    pid: int
    starttime: int | None
    since: datetime


class StoreReader(Protocol):
    """What a reader (the CLI, the dashboard) reads, without being the active. Every failure is a
    StoreError naming the store; a missing run is NotFoundError."""

    def close(self) -> None: ...

    def runs(
        self, *, job: str | None = None, state: str | None = None, limit: int = 50, before_id: int | None = None
    ) -> list[Run]:
        """Newest first; `before_id` pages by id (keyset)."""
        ...

    def run(self, run_id: int) -> Run: ...

    def runs_window(
        self,
        *,
        job: str | None = None,
        state: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        count_base: tuple[int, int] | None = None,
    ) -> RunsWindow:
        """A page with its position and the total, read at one instant (pass `count_base` back)."""
        ...

    def counts_by_state(self) -> dict[str, int]: ...

    def max_run_id(self) -> int: ...

    def runs_after(self, after_id: int, limit: int = 1000) -> list[Run]:
        """Runs with an id above `after_id`, oldest first (new since the last look)."""
        ...

    def runs_by_ids(self, ids: list[int]) -> list[Run]: ...

    def latest_run_per_job(self) -> dict[str, Run]: ...

    def recent_runs_of(self, names: list[str], per_job: int) -> dict[str, list[Run]]: ...

    def jobs(self) -> list[JobRow]:
        """The active's catalog of loaded jobs with their pause flag, by name."""
        ...

    def paused_jobs(self) -> set[str]: ...
    def held_jobs(self) -> set[str]: ...

    def leader(self) -> LeaderRow: ...

    def failovers(self, limit: int = 10) -> list[FailoverRow]: ...

    def failover_counts(self) -> dict[str, int]:
        """Every takeover the ledger has recorded, by cause (`failovers` lists only the newest)."""
        ...

    def agents(self) -> list[AgentRow]: ...

    def audit(self, limit: int = 50) -> list[AuditRow]: ...

    def notifications(
        self, *, state: NotificationState | None = None, channel: str | None = None, limit: int = 50
    ) -> list[Notification]:
        """Outbox rows, newest first. A database older than the outbox has none."""
        ...

    def channel_health(self) -> list[ChannelHealth]:
        """Every channel with outbox rows, by name."""
        ...


class Store(Protocol):
    """The active's store. Fencing is the store's job: every write carries `epoch`, and once another
    node has taken leadership every write raises FencedError.

    Retryable faults (busy, disk full) raise StoreRetryableError and are counted in `health`;
    `commit` and `flush` keep the deferred intents of a failed attempt for the next one.
    """

    health: StoreHealth

    @property
    def epoch(self) -> int: ...

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Close the store; after this every write and read raises StoreError."""
        ...

    @property
    def is_open(self) -> bool:
        """Opened and not yet closed (the node's control server answers "stopping" otherwise)."""
        ...

    @property
    def abandoned(self) -> bool:
        """`close` left the connection open because the file was lost (the process must exit next)."""
        ...

    def file_lost(self) -> str | None:
        """How the store's file was lost since `open` ("removed", "replaced", "emptied"), or None.
        Once lost, always lost: the store writes nothing more."""
        ...

    def lost_error(self) -> StoreFatalError | None:
        """The store's file or database is gone from under this process (never to write again)."""
        ...

    async def take_leadership(self, claim: LeaderClaim, *, floor: int = 0) -> tuple[int, LeaderRow]:
        """Raise the epoch above the stored one and `floor`; return it and the previous leader row."""
        ...

    async def commit(self, intents: Iterable[Intent]) -> set[int]:
        """The deferred intents, then `intents`, in one transaction; NewRun rows are inserted first.

        Returns the ids of the NewRun rows that were new (a repeated fire's id is not returned).
        """
        ...

    def defer(self, intent: Intent) -> None:
        """Queue an intent for the next transaction (updates that need not block the caller)."""
        ...

    async def flush(self) -> None:
        """Commit the deferred intents now."""
        ...

    def observe(self, observer: CommitObserver) -> None:
        """Call `observer` after every successful commit (`commit` and `flush`) with what it wrote."""
        ...

    async def wait_for_deferred(self) -> None:
        """Return once an intent has been deferred since the last commit."""
        ...

    # ------------------------------------------------------------ reads the active needs

    async def start_state(self) -> LedgerStart: ...

    async def flow_runs(self, flow_id: int) -> list[Run]:
        """The runs of one flow, oldest first (`vigil rerun --flow`); a run in no flow is its own."""
        ...

    async def open_runs(self) -> list[Run]:
        """Every run not yet finished, by id."""
        ...

    async def run(self, run_id: int) -> Run | None: ...

    async def run_states(self, run_ids: Sequence[int]) -> dict[int, RunState]:
        """The state of each of these runs that has a row."""
        ...

    async def prunable_runs(self, cutoff: datetime) -> list[int]:
        """Finished runs that ended before `cutoff`, by id."""
        ...

    async def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        """Pending outbox rows whose next attempt is due (`next_attempt_at` unset or not after `now`),
        oldest first."""
        ...

    async def recent_durations(self, job: str, limit: int = DURATION_HISTORY) -> list[float]:
        """Seconds the job's latest successful runs took, newest first (for `warn_if_* = "N%"`)."""
        ...

    async def next_notification_at(self) -> datetime | None:
        """The earliest `next_attempt_at` of the pending rows that have one (None: none waits)."""
        ...
