"""Late, longer and shorter runs (`late_after`, `warn_if_longer`, `warn_if_shorter`).

Pure: no I/O and no clock reads. The loop hands in the wall time and the monotonic time of its
iteration and the duration history it read from the store (`Store.recent_durations`); the planner
records what comes out (`Warned`) as a `RunWarned` intent and an event, in the batch of the
iteration that noticed it, so a warning and its notification commit together.

Timers, each a heap like the run table's deadlines:
- late: on the wall clock (POSIX times), because a run's due time is a wall time: its scheduled fire
  time, or the `not_before` of a retry. A forward step of the wall clock makes waiting runs late.
- longer: on the monotonic clock from the run's start, like timeouts: a clock step moves no limit.

Each warning is raised once per run. The store keeps one row per (run, warning) and one outbox row
per event id, so a new active that raises a warning its predecessor had already raised (an adopted
run still running past its limit) writes and sends nothing twice.

Layer: run. May import the base modules, `engine.exec.port`, `engine.notify`, `engine.store.abc` and the
run table.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.clock import iso
from engine.exec.port import RunInfo
from engine.model import JobSpec, RunState, RunWarning, Threshold, format_duration
from engine.notify.events import Event, EventKind, run_event_id
from engine.run.table import RunTable
from engine.store.abc import DURATION_HISTORY

#: Successes needed before a percentage threshold applies: the median of one or two runs is noise
#: (a first run that warmed a cache would make every later one "longer").
MIN_HISTORY = 5

#: A run not yet started: what `late_after` watches.
_NOT_STARTED = frozenset({RunState.PENDING, RunState.WAITING, RunState.LAUNCHING})


@dataclass(frozen=True, slots=True)
class Warned:
    """A warning raised on a run, with what its event says."""

    run_id: int
    job: str
    warning: RunWarning
    at: datetime
    state: RunState
    attempt: int
    agent: str | None
    threshold_s: float
    duration_s: float | None  #: how long it ran (so far, for `longer` while running); None for `late`
    reason: str

    def event(self) -> Event:
        kind = EventKind(self.warning.value)
        return Event(
            id=run_event_id(kind, self.run_id),
            event=kind,
            at=self.at,
            job=self.job,
            run_id=self.run_id,
            state=str(self.state),
            reason=self.reason,
            attempt=self.attempt,
            agent=self.agent,
            duration_s=None if self.duration_s is None else round(self.duration_s, 3),
            threshold_s=round(self.threshold_s, 3),
            message=f"job {self.job} run {self.run_id} {_WORDS[self.warning]}: {self.reason}",
        )


_WORDS = {RunWarning.LATE: "is late", RunWarning.LONGER: "runs long", RunWarning.SHORTER: "ended early"}


class RunWatch:
    """The late and longer timers of open runs, and each job's recent successful durations."""

    def __init__(self) -> None:
        self._late: list[tuple[float, int]] = []  # (wall POSIX time it is late at, run id)
        self._longer: list[tuple[float, int, float]] = []  # (monotonic limit, run id, monotonic start)
        self._unstarted: dict[int, RunInfo] = {}  # open runs of jobs with warn_if_longer, start not seen
        self._warned: set[tuple[int, RunWarning]] = set()
        self._history: dict[str, deque[float]] = {}  # job → its latest successful durations, newest first
        self._jobs_seen: Mapping[str, JobSpec] | None = None
        self._percent_jobs: tuple[str, ...] = ()

    # ------------------------------------------------------------ duration history

    def histories_wanted(self, jobs: Mapping[str, JobSpec]) -> list[str]:
        """Jobs with a percentage threshold whose history is not loaded yet (read lazily, once)."""
        if jobs is not self._jobs_seen:  # the planner replaces its jobs at each scan that changes them
            self._jobs_seen = jobs
            self._percent_jobs = tuple(name for name, job in jobs.items() if _uses_percent(job))
        return [name for name in self._percent_jobs if name not in self._history]

    def set_history(self, job: str, durations: list[float]) -> None:
        """`durations`: the job's latest successful durations, newest first."""
        self._history[job] = deque(durations[:DURATION_HISTORY], maxlen=DURATION_HISTORY)

    def median(self, job: str) -> float | None:
        """The median of the job's recent successes; None until it has `MIN_HISTORY` of them."""
        history = self._history.get(job)
        if history is None or len(history) < MIN_HISTORY:
            return None
        import statistics  # on first use: it imports decimal, fractions and random (~1 MB resident)

        return statistics.median(history)

    def limit(self, job: str, threshold: Threshold | None) -> float | None:
        """A threshold in seconds now; None when unset, or a percentage of a job with too short a history."""
        return None if threshold is None else threshold.limit(self.median(job))

    # ------------------------------------------------------------ open runs

    def opened(self, info: RunInfo, job: JobSpec | None, now: datetime) -> None:
        """A run the table now tracks (a new row, or one adopted from a previous active)."""
        if job is None:
            return
        if job.late_after is not None:
            late_at = _late_at(info, job.late_after)
            # Checked when its limit passes (at once if that has passed already): late if not
            # started by then, or started after it (a fire caught up after downtime).
            if info.started_at is None or info.started_at > late_at:
                heapq.heappush(self._late, (late_at.timestamp(), info.id))
        if job.warn_if_longer is not None:
            self._unstarted[info.id] = info

    def arm_started(self, now: datetime, mono: float, table: RunTable, jobs: Mapping[str, JobSpec]) -> None:
        """Runs seen started since the last look get their `warn_if_longer` timer."""
        for run_id, info in list(self._unstarted.items()):
            if not table.is_open(info):
                del self._unstarted[run_id]
            elif info.state is RunState.RUNNING and info.started_at is not None:
                del self._unstarted[run_id]
                job = jobs.get(info.job)
                limit = self.limit(info.job, job.warn_if_longer if job else None)
                # No limit (a percentage and too short a history): the run is checked at its end only.
                if limit is not None:
                    start = _start_mono(info, now, mono)
                    heapq.heappush(self._longer, (start + limit, run_id, start))

    def check(self, now: datetime, mono: float, table: RunTable, jobs: Mapping[str, JobSpec]) -> list[Warned]:
        """The warnings whose time has come: runs not started `late_after` after they were due, and
        runs running past `warn_if_longer`."""
        self.arm_started(now, mono, table, jobs)
        out: list[Warned] = []
        wall = now.timestamp()
        while self._late and self._late[0][0] <= wall:
            _, run_id = heapq.heappop(self._late)
            info = table.get(run_id)
            job = jobs.get(info.job) if info is not None else None
            if info is None or job is None or job.late_after is None or (run_id, RunWarning.LATE) in self._warned:
                continue
            late_at = _late_at(info, job.late_after)
            if late_at.timestamp() > wall:  # `late_after` was raised by a rescan, or a retry's time moved
                heapq.heappush(self._late, (late_at.timestamp(), run_id))
                continue
            if info.state in _NOT_STARTED:
                why = f"not started {format_duration(job.late_after)} after it was due: {waiting_for(info, table)}"
            elif info.started_at is not None and info.started_at > late_at:
                why = f"started {format_duration((info.started_at - _due(info)).total_seconds())} after it was due"
            else:
                continue  # started in time (or the start is not known: an adopted run)
            out.append(self._warn(info, RunWarning.LATE, now, job.late_after, None, why))
        while self._longer and self._longer[0][0] <= mono:
            _, run_id, start = heapq.heappop(self._longer)
            info = table.get(run_id)
            job = jobs.get(info.job) if info is not None else None
            if info is None or job is None or info.state is not RunState.RUNNING:
                continue
            limit = self.limit(info.job, job.warn_if_longer)
            if limit is None or (run_id, RunWarning.LONGER) in self._warned:
                continue
            if start + limit > mono:  # the threshold was raised by a rescan
                heapq.heappush(self._longer, (start + limit, run_id, start))
                continue
            ran = mono - start
            out.append(self._longer_warning(info, job, now, limit, ran, "running for"))
        return out

    def ended(
        self, info: RunInfo, job: JobSpec | None, state: RunState, now: datetime, ended_at: datetime
    ) -> list[Warned]:
        """A run's end: `longer` if it ran past the limit before the timer looked, `shorter` if it
        succeeded too soon. Compared with the history before this run; a success then joins it.

        `now` dates the warnings; `ended_at` (at most `now`) is when the run really ended: one that
        ended while no scheduler was active ran until then, not through the outage."""
        self._unstarted.pop(info.id, None)
        warned_longer = (info.id, RunWarning.LONGER) in self._warned
        warned_late = (info.id, RunWarning.LATE) in self._warned
        for warning in RunWarning:  # the run is over: nothing more is raised on it
            self._warned.discard((info.id, warning))
        if job is None or info.started_at is None:
            return []
        ran = max(0.0, (ended_at - info.started_at).total_seconds())
        out: list[Warned] = []
        if job.late_after is not None and not warned_late and info.started_at > _late_at(info, job.late_after):
            # Started late and ended before a timer looked at it (a quick job caught up after downtime).
            late_by = (info.started_at - _due(info)).total_seconds()
            why = f"started {format_duration(late_by)} after it was due"
            out.append(self._warn(info, RunWarning.LATE, now, job.late_after, None, why, state=state, remember=False))
        longer = self.limit(job.name, job.warn_if_longer)
        if longer is not None and ran > longer and not warned_longer:
            out.append(self._longer_warning(info, job, now, longer, ran, "ran for", state=state))
        shorter = self.limit(job.name, job.warn_if_shorter)
        if state is RunState.SUCCEEDED and shorter is not None and ran < shorter:
            assert job.warn_if_shorter is not None
            why = f"succeeded in {_seconds(ran)}, under warn_if_shorter = {self._describe(job, job.warn_if_shorter)}"
            out.append(self._warn(info, RunWarning.SHORTER, now, shorter, ran, why, state=state, remember=False))
        history = self._history.get(job.name)
        if state is RunState.SUCCEEDED and history is not None:
            history.appendleft(ran)
        return out

    def next_due(self, now: datetime, mono: float) -> float | None:
        """Seconds until the next timer (late or longer), or None when none is set."""
        waits = []
        if self._late:
            waits.append(self._late[0][0] - now.timestamp())
        if self._longer:
            waits.append(self._longer[0][0] - mono)
        return min(waits) if waits else None

    # ------------------------------------------------------------ warnings

    def _longer_warning(
        self,
        info: RunInfo,
        job: JobSpec,
        now: datetime,
        limit: float,
        ran: float,
        verb: str,
        *,
        state: RunState | None = None,
    ) -> Warned:
        assert job.warn_if_longer is not None
        why = f"{verb} {_seconds(ran)}, past warn_if_longer = {self._describe(job, job.warn_if_longer)}"
        return self._warn(info, RunWarning.LONGER, now, limit, ran, why, state=state, remember=state is None)

    def _describe(self, job: JobSpec, threshold: Threshold) -> str:
        """The threshold for people: "30m", or "200% of the median 12.0s of the last 5 successes (24.0s)"."""
        if threshold.percent is None:
            return str(threshold)
        median = self.median(job.name)
        limit = threshold.limit(median)
        if median is None or limit is None:
            return str(threshold)
        count = len(self._history.get(job.name, ()))
        return f"{threshold} of the median {_seconds(median)} of the last {count} successes ({_seconds(limit)})"

    def _warn(
        self,
        info: RunInfo,
        warning: RunWarning,
        now: datetime,
        threshold: float,
        duration: float | None,
        reason: str,
        *,
        state: RunState | None = None,
        remember: bool = True,
    ) -> Warned:
        if remember:  # raised on an open run: not again
            self._warned.add((info.id, warning))
        return Warned(
            run_id=info.id,
            job=info.job,
            warning=warning,
            at=now,
            state=state or info.state,
            attempt=info.attempt,
            agent=info.agent,
            threshold_s=threshold,
            duration_s=duration,
            reason=reason,
        )


def waiting_for(info: RunInfo, table: RunTable) -> str:
    """What a run not yet started waits for, in words."""
    if info.state is RunState.WAITING:
        return f"waiting for a healthy agent of {info.agent!r}" if info.agent else "waiting for a healthy agent"
    if info.state is RunState.LAUNCHING:
        return f"being dispatched to {info.agent!r}" if info.agent else "being launched"
    active, queued = table.open_of(info.job)
    if info.id in queued:
        ahead = queued[: queued.index(info.id)]
        behind = f"run {active[0]} still running" if active else "its job's queue"
        return f"queued behind {behind}" + (f" and {len(ahead)} queued before it" if ahead else "")
    if info.not_before is not None:
        return f"a retry due at {iso(info.not_before)}"
    return "waiting to be launched"


def _uses_percent(job: JobSpec) -> bool:
    return any(t is not None and t.percent is not None for t in (job.warn_if_longer, job.warn_if_shorter))


def _due(info: RunInfo) -> datetime:
    """When a run was due to start: its fire time, or for a retry the time its delay ends."""
    return info.not_before or info.scheduled_for


def _late_at(info: RunInfo, late_after: float) -> datetime:
    return _due(info) + timedelta(seconds=late_after)


def _start_mono(info: RunInfo, now: datetime, mono: float) -> float:
    """The run's start on the monotonic clock: as this process saw it, or derived from its wall start."""
    if info.started_mono is not None:
        return info.started_mono
    assert info.started_at is not None
    return mono - max(0.0, (now - info.started_at).total_seconds())


def _seconds(value: float) -> str:
    """`14ms`, `2.5s`, `3m20s`: a short run is not "0.0s"."""
    if value < 1:
        return f"{value * 1000:.0f}ms"
    return f"{value:.1f}s" if value < 60 else format_duration(value)
