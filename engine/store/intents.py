"""Typed writes: what the active scheduler, its dispatcher and its node ask the store to record.

Each intent is one fact; a backend maps each kind to one named statement and commits a batch of
them in one transaction (`Store.commit`). The writer's epoch is never part of an intent: the store
adds it, and a write under an epoch that is no longer the leader's raises FencedError.

Times are aware datetimes; the store keeps them in its own text form (`clock.iso`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from engine.model import RunState, RunWarning
from engine.notify.events import Event

# ---------------------------------------------------------------- runs


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run row, with an id the scheduler chose. A second row for the same (job, scheduled_for,
    attempt) is ignored, and `Store.commit` does not return its id: that fire was handled before."""

    id: int
    job: str
    scheduled_for: datetime
    attempt: int
    state: RunState
    trigger: str
    created_at: datetime
    reason: str | None = None
    not_before: datetime | None = None
    ended_at: datetime | None = None  #: set for a row created terminal (skipped, missed)
    command: str | None = None  #: the job's command as JSON text, as launched
    agent: str | None = None
    flow_id: int | None = None  #: the flow it is a step of (its own id when it starts one); None: none


@dataclass(frozen=True, slots=True)
class RunLaunching:
    """A pending run is being started. `reason`, when given, replaces the row's reason."""

    run_id: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RunStarted:
    """The shim (or the agent) started the run: it is running from `started_at`.

    `clear_reason` drops the reason a wait left (an agent run that waited for a healthy agent).
    """

    run_id: int
    started_at: datetime
    deadline: datetime | None
    clear_reason: bool = False


@dataclass(frozen=True, slots=True)
class StartRestated:
    """A running run's start and deadline in this process's terms (adoption, a clock step)."""

    run_id: int
    started_at: datetime
    deadline: datetime | None


@dataclass(frozen=True, slots=True)
class RunFinished:
    """A run ended. Only an open row moves: an end recorded before is never overwritten."""

    run_id: int
    state: RunState
    reason: str | None
    exit_code: int | None
    ended_at: datetime
    pid: int | None = None  #: kept when None
    cpu_s: float | None = None
    peak_rss: int | None = None
    job: str | None = None  #: the run's job, for commit observers (metrics); not stored: the row has it
    outputs: tuple[tuple[str, str], ...] = ()  #: what it wrote to $VIGIL_OUTPUT (a flow step's)


@dataclass(frozen=True, slots=True)
class KillRequested:
    run_id: int
    cause: str  #: "kill" (an operator) or "timeout"


@dataclass(frozen=True, slots=True)
class AgentChosen:
    """The agent (a member of a pool) a still open run was sent to."""

    run_id: int
    agent: str


@dataclass(frozen=True, slots=True)
class RunWaiting:
    """A run waits for a healthy agent; `reason` says what it waits for."""

    run_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class RunBlocked:
    """A pending run waits for a lock, a `max_running` slot or its job's release; `reason` says which."""

    run_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class RunsPruned:
    """Finished runs deleted by retention or `vigil db prune`; their ids stay used (RunIdMark)."""

    run_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NotificationsPruned:
    """Outbox rows delivered, given up or summarised, queued before `cutoff`, deleted (retention or
    `vigil db prune`); a pending row is never deleted."""

    cutoff: datetime


@dataclass(frozen=True, slots=True)
class RunIdMark:
    """Run ids up to `run_id` have been handed out (the mark only ever rises)."""

    run_id: int


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True, slots=True)
class LastFire:
    """The last fire time a job's schedule has handled; None forgets it."""

    job: str
    at: datetime | None


@dataclass(frozen=True, slots=True)
class Paused:
    job: str
    paused: bool


@dataclass(frozen=True, slots=True)
class Held:
    """`vigil hold` / `vigil release`: a held job's new runs wait pending instead of starting."""

    job: str
    held: bool


@dataclass(frozen=True, slots=True)
class CatalogUpsert:
    """A job as the active has loaded it, for readers that do not parse job files."""

    name: str
    path: str
    schedule: str
    enabled: bool
    agent: str | None
    description: str
    tags: str  #: comma-separated
    next_fire: datetime | None
    error: str | None
    priority: int = 0
    locks: str = ""  #: "gpu=1,db=1": the job's `locks`, for the dashboard


@dataclass(frozen=True, slots=True)
class CatalogDrop:
    name: str


@dataclass(frozen=True, slots=True)
class CatalogCleared:
    """Every catalog row goes (before a full rewrite, in the same transaction)."""


@dataclass(frozen=True, slots=True)
class NextFire:
    job: str
    at: datetime | None


# ---------------------------------------------------------------- agents, audit, leadership


@dataclass(frozen=True, slots=True)
class AgentSeen:
    """What the dispatcher last learned of an agent. None keeps `last_contact` and `version`."""

    name: str
    url: str
    up: bool
    last_contact: datetime | None
    version: str | None
    cpu_percent: float | None
    memory_percent: float | None
    load1: float | None
    running: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class AgentDropped:
    """An agent no longer declared in `vigil.toml`."""

    name: str


@dataclass(frozen=True, slots=True)
class Audit:
    at: datetime
    user: str
    action: str
    target: str
    result: str


@dataclass(frozen=True, slots=True)
class Failover:
    """A takeover, recorded by the new active under its own epoch."""

    at: datetime
    from_pid: int | None
    to_pid: int
    cause: str
    gap_ms: float | None


@dataclass(frozen=True, slots=True)
class CleanStop:
    """The active stops cleanly: the next one need not look for a crash."""


# ---------------------------------------------------------------- the notification outbox


@dataclass(frozen=True, slots=True)
class RunWarned:
    """A run crossed `late_after`, `warn_if_longer` or `warn_if_shorter` (each kept once per run)."""

    run_id: int
    warning: RunWarning
    at: datetime


@dataclass(frozen=True, slots=True)
class NotificationQueued:
    """An event for each of `channels`, pending: one outbox row per channel, in the transaction of
    the state change that caused it. A row already there for (event id, channel) is kept as it is."""

    event: Event
    channels: tuple[str, ...]
    not_before: datetime | None = None  #: first attempt not before this (a rate-limit summary)


@dataclass(frozen=True, slots=True)
class NotificationSent:
    event_id: str
    channel: str
    at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class NotificationRetry:
    """A delivery failed; the row stays pending until `next_attempt_at`."""

    event_id: str
    channel: str
    at: datetime  #: when the attempt failed
    attempts: int
    next_attempt_at: datetime
    error: str


@dataclass(frozen=True, slots=True)
class NotificationFailed:
    """Delivery gave up (the channel refused the event for good, or kept failing past the limit)."""

    event_id: str
    channel: str
    at: datetime
    attempts: int
    error: str


@dataclass(frozen=True, slots=True)
class NotificationSuppressed:
    """Pending events held back by the channel's rate limit; `summary_id` is the event counting them."""

    event_ids: tuple[str, ...]
    channel: str
    summary_id: str


@dataclass(frozen=True, slots=True)
class SummaryRecounted:
    """A channel's rate-limit summary counting the events held back in its window (one summary per
    channel and window, however many rounds suppressed events): queued pending, first attempt at
    `not_before`, when its row is absent; else its document rewritten while it is still pending.
    Committed with the NotificationSuppressed that names it, so no row is suppressed under a summary
    that does not exist."""

    event: Event
    channel: str
    not_before: datetime | None = None  #: the window's end (used only when the row is queued)


Intent = (
    NewRun
    | RunLaunching
    | RunStarted
    | StartRestated
    | RunFinished
    | KillRequested
    | AgentChosen
    | RunWaiting
    | RunBlocked
    | RunsPruned
    | NotificationsPruned
    | RunIdMark
    | LastFire
    | Paused
    | Held
    | CatalogUpsert
    | CatalogDrop
    | CatalogCleared
    | NextFire
    | AgentSeen
    | AgentDropped
    | Audit
    | Failover
    | CleanStop
    | RunWarned
    | NotificationQueued
    | NotificationSent
    | NotificationRetry
    | NotificationFailed
    | NotificationSuppressed
    | SummaryRecounted
)

CommitObserver = Callable[[Sequence[Intent]], None]
"""Called after each successful commit with the intents it wrote, in their order: the deferred ones
first, then NewRun rows that were new (a repeated fire's row is left out), then the rest. Called on
the committing task, so it must be quick and must not raise (a raise is logged, never propagated).
Registered with `Store.observe`; the metrics (engine/http/metrics.py) are one."""
