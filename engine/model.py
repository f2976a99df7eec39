"""Plain data types shared by the engine, the CLI and the dashboard."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from engine.clock import iso


class RunState(StrEnum):
    PENDING = "pending"  #: row committed; waiting for its launch (or queued behind an overlap)
    WAITING = "waiting"  #: waiting for a healthy agent
    LAUNCHING = "launching"  #: the shim is being started
    RUNNING = "running"  #: the shim was started; `pid` is filled in once it reports the job's pid
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    KILLED = "killed"
    SKIPPED = "skipped"  #: not launched because of the overlap policy or an unmet `after`
    MISSED = "missed"  #: fell due while no scheduler could launch it; reason says why
    UNKNOWN = "unknown"  #: the outcome could not be learned; never silently re-run

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.TIMED_OUT,
        RunState.KILLED,
        RunState.SKIPPED,
        RunState.MISSED,
        RunState.UNKNOWN,
    }
)
#: ended after running (not skipped or missed): what `recovered` compares a success with
RAN_STATES = TERMINAL_STATES - {RunState.SKIPPED, RunState.MISSED}
#: a run that ran and did not succeed
FAILURE_STATES = RAN_STATES - {RunState.SUCCEEDED}
ACTIVE_STATES = frozenset({RunState.LAUNCHING, RunState.RUNNING})
#: not yet finished, in lifecycle order; queries.sql spells them out (tests/contract checks the spelling)
OPEN_STATES = (RunState.PENDING, RunState.WAITING, RunState.LAUNCHING, RunState.RUNNING)
#: open, not yet started: held by the scheduler (pending) or for want of an agent (waiting)
QUEUED_STATES = frozenset({RunState.PENDING, RunState.WAITING})


@dataclass(frozen=True, slots=True)
class Run:
    """One row of the ledger's `runs` table, as every reader and the active see it."""

    id: int
    job: str
    scheduled_for: datetime
    attempt: int
    state: RunState
    trigger: str
    epoch: int  #: of the active that created it
    created_at: datetime
    reason: str | None = None
    not_before: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    pid: int | None = None
    pid_starttime: int | None = None
    deadline: datetime | None = None
    kill_requested: str | None = None
    agent: str | None = None
    peak_rss: int | None = None
    cpu_s: float | None = None
    command: str | None = None  #: JSON text of the command as launched
    warnings: tuple[str, ...] = ()  #: the RunWarning words raised on it ("late", "longer", "shorter")
    #: the id of the run that started its flow (its own id when it started one or is in none)
    flow_id: int | None = None
    #: the NAME=value pairs it wrote to $VIGIL_OUTPUT, in the order written (flow steps only)
    outputs: tuple[tuple[str, str], ...] = ()

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    def duration(self, now: datetime | None = None) -> float | None:
        """Seconds it ran; for a run still going, so far (given `now`)."""
        if self.started_at is None:
            return None
        end = self.ended_at
        if end is None:
            if now is None or self.state not in ACTIVE_STATES:
                return None
            end = now
        return max(0.0, (end - self.started_at).total_seconds())


@dataclass(frozen=True, slots=True)
class LeaderRow:
    """The ledger's leader row: who holds the current epoch, and whether it stopped cleanly."""

    epoch: int
    pid: int | None
    starttime: int | None
    since: datetime | None
    clean_stop: bool


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job of the active's catalog, with its pause flag.

    A row with an `error` is either a file that never loaded (`loaded` False: no schedule) or a
    file that broke while its last valid version stays scheduled (`loaded` True).
    """

    name: str
    path: str
    schedule: str
    enabled: bool
    agent: str | None
    description: str
    tags: str  #: comma-separated
    next_fire: datetime | None
    error: str | None
    paused: bool
    loaded: bool
    held: bool = False  #: `vigil hold`: new runs wait pending until `vigil release`
    priority: int = 0
    locks: str = ""  #: the job's `locks`, "gpu=1,db=1"


@dataclass(frozen=True, slots=True)
class AgentRow:
    """What the active's dispatcher last learned of an agent."""

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
class FailoverRow:
    """A takeover as the new active recorded it."""

    at: datetime
    from_pid: int | None
    to_pid: int
    cause: str
    gap_ms: float | None
    epoch: int


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One operator action and its result."""

    at: datetime
    user: str  #: the OS user who asked
    action: str
    target: str
    result: str


def to_json(record: Any, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A record as the CLI prints it in JSON: times in the database's text form, states as words.

    `names` picks (and orders) the fields; by default all of them, in their order.
    """
    out: dict[str, Any] = {}
    for name in names or tuple(f.name for f in fields(record)):
        value = getattr(record, name)
        if isinstance(value, datetime):
            value = iso(value)
        elif isinstance(value, StrEnum):
            value = value.value
        out[name] = value
    return out


class Overlap(StrEnum):
    SKIP = "skip"
    QUEUE = "queue"
    ALLOW = "allow"


class Catchup(StrEnum):
    LATEST = "latest"
    ALL = "all"
    NONE = "none"


class NonWorking(StrEnum):
    """`on_nonworking`: what a fire on a day its calendar says is not a working day becomes."""

    SKIP = "skip"  #: a `skipped` row naming the day
    NEXT = "next"  #: moved to the next working day, same wall time
    PREVIOUS = "previous"  #: moved to the previous working day, same wall time


class OutsideWindow(StrEnum):
    """`outside_window`: what a fire outside every admission window becomes."""

    WAIT = "wait"  #: a `pending` row that starts at the next opening
    SKIP = "skip"  #: a `skipped` row naming the windows


@dataclass(frozen=True, kw_only=True, slots=True)
class CalendarSpec:
    """`[calendars.NAME]` in vigil.toml: which days are working days.

    A day is a working day when it is in `include`, or its weekday is in `weekdays` and it is not a
    public holiday of `country`/`subdivision`; a day in `exclude` never is (exclude wins)."""

    name: str
    weekdays: frozenset[int] = frozenset(range(5))  #: 0 = Monday … 6 = Sunday
    country: str | None = None  #: ISO 3166 code for the `holidays` package
    subdivision: str | None = None
    include: frozenset[date] = frozenset()  #: extra working days
    exclude: frozenset[date] = frozenset()  #: extra non-working days


class StopReason(StrEnum):
    """Why an active scheduler's term ended (its `stop_reason`; the HA node acts on it)."""

    STOP = "stop"  #: asked to stop (SIGTERM, SIGINT)
    SWITCHOVER = "switchover"  #: handed over to a standby (`vigil switchover`)
    EPOCH = "epoch"  #: an agent has seen a higher epoch: lead again above it
    FENCED = "fenced"  #: another node has taken over (a newer epoch in the database)
    LOCK_LOST = "lock_lost"  #: leader.lock was replaced and another process holds the new one
    STORE_FATAL = "store_fatal"  #: the state database cannot be used any more


@dataclass(frozen=True, kw_only=True, slots=True)  # slots: no __dict__ per job (10,000 of them)
class JobSpec:
    """One validated job file, with folder defaults already applied."""

    name: str  #: path under the job folder without `.toml`, `/`-separated
    path: str  #: the file it came from
    command: str | tuple[str, ...]  #: string → `/bin/sh -c`; tuple → exec'd directly
    cron: str | None = None
    every: float | None = None  #: seconds
    at: datetime | None = None  #: aware
    timezone: str = "UTC"
    after: tuple[str, ...] = ()  #: upstream job names, in the file's order
    #: the condition of each `after` entry, same order; empty when all are `success`
    after_on: tuple[Condition, ...] = ()
    timeout: float | None = None  #: seconds
    retries: int = 0
    retry_delay: float = 10.0  #: seconds before the first retry; doubles each attempt
    overlap: Overlap = Overlap.SKIP
    max_queued: int = 10  #: with overlap = "queue": runs waiting at most; further fires are skipped
    catchup: Catchup = Catchup.LATEST
    catchup_window: float = 3600.0  #: seconds; fires older than this are `missed`
    agent: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    enabled: bool = True
    description: str = ""
    tags: tuple[str, ...] = ()
    notify: tuple[str, ...] | None = None  #: channel names; None: `[scheduler] notify`
    late_after: float | None = None  #: seconds after its scheduled time a run not yet started is late
    warn_if_longer: Threshold | None = None
    warn_if_shorter: Threshold | None = None
    user: str | None = None  #: run the job as this user (the scheduler must be root for another user)
    #: `[resources.NAME]` counts a run takes at once, by name (engine/run/admission.py)
    locks: tuple[tuple[str, int], ...] = ()
    priority: int = 0  #: waiting runs start in this order, higher first, then the oldest
    calendar: str | None = None  #: a `[calendars.NAME]` of vigil.toml
    on_nonworking: NonWorking = NonWorking.SKIP
    workday: int | None = None  #: Nth (1…23) or Nth-last (-1…-23) working day of the month, at `at_time`
    at_time: str | None = None  #: "HH:MM" (or "HH:MM:SS"), with `workday`
    window: tuple[str, ...] = ()  #: admission windows such as "mon-fri 08:00-18:00", in `timezone`
    outside_window: OutsideWindow = OutsideWindow.WAIT
    kill_at_window_end: bool = False  #: a run still going when its window closes is killed

    @property
    def schedule_text(self) -> str:
        """How the dashboard and `vigil jobs` show the schedule."""
        parts: list[str] = []
        if self.cron:
            parts.append(f"cron {self.cron}" + (f" {self.timezone}" if self.timezone != "UTC" else ""))
        if self.every is not None:
            parts.append(f"every {format_duration(self.every)}")
        if self.at is not None:
            parts.append(f"at {self.at.isoformat()}")
        if self.workday is not None:
            zone = f" {self.timezone}" if self.timezone != "UTC" else ""
            parts.append(f"workday {self.workday} at {self.at_time}{zone}")
        if self.after:
            parts.append("after " + ",".join(str(edge) for edge in self.after_edges))
        if self.calendar:
            parts.append(f"calendar {self.calendar}")
        if self.window:
            parts.append("window " + ", ".join(self.window))
        return "; ".join(parts) or "manual"

    @property
    def after_edges(self) -> tuple[AfterEdge, ...]:
        """Each `after` entry with its condition."""
        if not self.after_on:
            return tuple(AfterEdge(name) for name in self.after)
        return tuple(AfterEdge(name, on) for name, on in zip(self.after, self.after_on, strict=True))


class Condition(StrEnum):
    """`after = [{ job = ..., on = ... }]`: which final end of the upstream lets the step run."""

    SUCCESS = "success"  #: it succeeded (a plain string in `after` means this)
    FAILURE = "failure"  #: failed, timed out, killed or unknown, after its last retry
    DONE = "done"  #: any final end, skipped included

    def met_by(self, state: RunState) -> bool:
        if self is Condition.SUCCESS:
            return state is RunState.SUCCEEDED
        if self is Condition.FAILURE:
            return state in FAILURE_STATES
        return state.terminal


@dataclass(frozen=True, slots=True)
class AfterEdge:
    """One `after` entry: an upstream job and the condition on its end."""

    job: str
    on: Condition = Condition.SUCCESS

    def __str__(self) -> str:
        return self.job if self.on is Condition.SUCCESS else f"{self.job}({self.on})"


@dataclass(frozen=True, slots=True)
class Threshold:
    """`warn_if_longer` / `warn_if_shorter`: a fixed duration, or a percentage of the median of the
    job's recent successful durations (`"200%"`)."""

    seconds: float | None = None
    percent: float | None = None

    def limit(self, median: float | None) -> float | None:
        """The threshold in seconds; None when it is a percentage and there is no history yet."""
        if self.seconds is not None:
            return self.seconds
        if self.percent is None or median is None:
            return None
        return median * self.percent / 100.0

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else format_duration(self.seconds or 0.0)


class RunWarning(StrEnum):
    """Warnings a run can carry (`runs --json` `warnings`, the dashboard's glyph)."""

    LATE = "late"  #: not started `late_after` after its scheduled time
    LONGER = "longer"  #: ran past `warn_if_longer`
    SHORTER = "shorter"  #: succeeded in less than `warn_if_shorter`


@dataclass(frozen=True, kw_only=True)
class ChannelSpec:
    """A notification channel, `[notify.NAME]` in vigil.toml: an Apprise `url` or a `command`."""

    name: str
    url: str | None = None
    command: str | tuple[str, ...] | None = None  #: gets the event as one JSON document on stdin
    events: frozenset[str] | None = None  #: event kinds it takes; None: all
    timeout: float = 30.0  #: seconds one delivery may take
    rate_limit: int = 20  #: events delivered per `rate_window`; the rest are summarised
    rate_window: float = 300.0  #: seconds


class NotificationState(StrEnum):
    PENDING = "pending"  #: not yet delivered (waiting for its next attempt)
    SENT = "sent"
    FAILED = "failed"  #: delivery gave up (the channel refused it, or kept failing past the limit)
    SUPPRESSED = "suppressed"  #: held back by the channel's rate limit; counted in a summary event


@dataclass(frozen=True, slots=True)
class Notification:
    """One outbox row: an event for one channel, with its delivery state."""

    event_id: str
    channel: str
    event: str  #: the EventKind
    job: str | None
    run_id: int | None
    created_at: datetime
    state: NotificationState
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    last_attempt_at: datetime | None
    sent_at: datetime | None
    summary_id: str | None  #: the summary event that counts it, when suppressed
    epoch: int  #: of the active that queued it
    document: str  #: the event as JSON text (engine/notify/events.py), without `epoch` and `log_tail`


@dataclass(frozen=True, kw_only=True)
class AgentSpec:
    name: str
    url: str
    token_file: str | None = None
    tls_ca: str | None = None  #: CA bundle to verify the agent's certificate
    tls_cert: str | None = None  #: client certificate for mutual TLS
    tls_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class PoolSpec:
    name: str
    agents: tuple[str, ...]
    mode: str = "fixed-priority"  #: or "round-robin"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Scheduler settings from `vigil.toml` (all optional)."""

    retention: float = 30 * 86400.0  #: seconds of run history kept
    log_cap: int = 1024 * 1024  #: bytes of stdout+stderr kept per run
    kill_grace: float = 5.0  #: seconds between SIGTERM and SIGKILL
    heartbeat_interval: float = 0.25
    heartbeat_timeout: float = 3.0
    max_missed_rows: int = 1000  #: per job per gap; older missed fires are summarised in one row
    agent_poll_interval: float = 2.0
    agent_wait_limit: float = 300.0  #: seconds a run waits for a healthy agent before failing
    agents: dict[str, AgentSpec] = field(default_factory=dict)
    pools: dict[str, PoolSpec] = field(default_factory=dict)
    notify: tuple[str, ...] = ()  #: channels for system events, and for jobs that set no `notify`
    channels: dict[str, ChannelSpec] = field(default_factory=dict)  #: `[notify.NAME]`
    #: `[notify.NAME]` tables declared but invalid: their pending events wait (a typo being fixed)
    invalid_channels: frozenset[str] = frozenset()
    #: vigil.toml could not be read or parsed: no channel can be said to be no longer declared
    channels_unknown: bool = False
    http_listen: str | None = None  #: `[http] listen`, "HOST:PORT": /metrics and /healthz
    max_running: int | None = None  #: `[scheduler] max_running`: local runs at once; None: no cap
    resources: dict[str, int] = field(default_factory=dict)  #: `[resources.NAME] limit`, by name
    calendars: dict[str, CalendarSpec] = field(default_factory=dict)  #: `[calendars.NAME]`


@dataclass(frozen=True, slots=True)
class ResourceUse:
    """One counted resource (or the `max_running` cap) as the active has it: use, limit, holders, waiters."""

    name: str  #: the resource's name; "max_running" for the cap on local runs
    limit: int
    used: int
    holders: tuple[int, ...]  #: run ids holding it (running, launching, or sent to an agent)
    waiting: int  #: pending runs waiting for it


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    out = []
    rest = round(seconds)
    for suffix, size in units:
        if rest >= size:
            out.append(f"{rest // size}{suffix}")
            rest %= size
    return "".join(out) or "0s"


@dataclass(frozen=True)
class RunsWindow:
    """One page of runs and where it sits among all matching runs, read at one instant."""

    runs: list[Run]  #: newest first
    newer: int  #: matching runs newer than the page: its first row is number `newer + 1`
    total: int  #: matching runs in all (never fewer than the page and those before it)
    count_base: tuple[int, int]  #: (anchor id, matching runs up to it): pass back to skip a full count


class FlowState(StrEnum):
    """A flow as `vigil flows` shows it, from the latest run of each of its steps."""

    RUNNING = "running"  #: a step is open (a later one may still start)
    SUCCEEDED = "succeeded"  #: every step's latest run succeeded or was skipped
    FAILED = "failed"  #: a step's latest run failed, timed out, was killed or is unknown


@dataclass(frozen=True, slots=True)
class FlowRow:
    """One flow: the runs that share a `flow_id`, summed up."""

    id: int  #: the flow id: the run that started it
    root_job: str
    state: FlowState
    started_at: datetime  #: its root run's creation
    ended_at: datetime | None  #: its last step's end, once no step is open
    steps: dict[str, int]  #: run state → how many steps (jobs) have their latest run in it
    runs: int  #: rows in all, retries and reruns included


def latest_steps(runs: Iterable[Run]) -> dict[str, Run]:
    """Each job's latest run (highest id) among a flow's runs: the step's current outcome."""
    latest: dict[str, Run] = {}
    for run in runs:
        if run.job not in latest or run.id > latest[run.job].id:
            latest[run.job] = run
    return latest


def flow_summary(flow_id: int, runs: Sequence[Run]) -> FlowRow:
    """The flow `flow_id` from its runs (at least one)."""
    root = next((run for run in runs if run.id == flow_id), min(runs, key=lambda run: run.id))
    steps = latest_steps(runs)
    counts: dict[str, int] = {}
    for run in steps.values():
        counts[run.state.value] = counts.get(run.state.value, 0) + 1
    if any(run.is_open for run in steps.values()):
        state, ended = FlowState.RUNNING, None
    else:
        failed = any(run.state in FAILURE_STATES for run in steps.values())
        state = FlowState.FAILED if failed else FlowState.SUCCEEDED
        ended = max((run.ended_at for run in runs if run.ended_at is not None), default=None)
    return FlowRow(
        id=flow_id,
        root_job=root.job,
        state=state,
        started_at=root.created_at,
        ended_at=ended,
        steps=dict(sorted(counts.items())),
        runs=len(runs),
    )
