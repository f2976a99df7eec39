"""The planner: fires, retries, overlap, `after` and catch-up, turned into intents and launches.

No I/O: each decision is recorded in a `Batch` (the intents of one transaction and the runs to
launch once it is committed) and in the in-memory state here and in the RunTable. The loop
(engine/run/loop.py) commits the batch and launches.

Layer: run. May import the base modules, `engine.schedule`, `engine.store.intents`,
`engine.exec.port`, the run table and admission.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from engine import schedule
from engine.clock import Clock, iso
from engine.errors import VigilError
from engine.exec.port import RunInfo, ShimExit
from engine.model import (
    FAILURE_STATES,
    Catchup,
    Condition,
    JobSpec,
    OutsideWindow,
    Overlap,
    ResourceUse,
    Run,
    RunState,
    Settings,
    latest_steps,
)
from engine.notify import build
from engine.notify.events import Event
from engine.notify.routing import channels_for
from engine.run import admission
from engine.run.table import RunTable
from engine.run.watch import RunWatch, Warned
from engine.schedule import flows
from engine.store import intents as i

log = logging.getLogger("vigil.scheduler")

#: A fire handled within this many seconds of its time is on time; an older one is late and follows
#: the job's `catchup` policy (a fixed tolerance, not a fraction of the interval).
ON_TIME_TOLERANCE_S = 1.0


class Trigger(StrEnum):
    """What made a run (`runs.trigger`)."""

    SCHEDULE = "schedule"
    MANUAL = "manual"  #: `vigil run`
    RERUN = "rerun"  #: `vigil rerun`
    AFTER = "after"  #: its `after` jobs succeeded
    RETRY = "retry"
    ADOPTED = "adopted"  #: found running in its run directory with no row (a restored database)


class ForwardJump(NamedTuple):
    """A forward step of the wall clock, seen between two looks at the clock."""

    seen_from: datetime  #: the wall time of the look before it: the step came after this
    to: datetime  #: the wall time of the look that saw it
    seconds: float  #: how far the wall clock stepped
    cause: str  #: "clock jumped forward 1h 0m", for the reasons of the fires it passed over


@dataclass
class Batch:
    """What one loop iteration writes in one transaction, then launches."""

    rows: list[i.NewRun] = field(default_factory=list)
    intents: list[i.Intent] = field(default_factory=list)
    launches: list[int] = field(default_factory=list)
    after_commit: list[Callable[[set[int]], None]] = field(default_factory=list)
    # Undo records of new work (fires, run/pause commands), for when its commit fails and it is
    # dropped instead of carried: the fires are then due again and go the catch-up path.
    last_fire_before: dict[str, datetime | None] = field(default_factory=dict)
    due_at: dict[str, datetime] = field(default_factory=dict)
    paused_before: dict[str, bool] = field(default_factory=dict)
    held_before: dict[str, bool] = field(default_factory=dict)
    first_id: int = 0

    def then(self, other: Batch) -> Batch:
        """This batch followed by `other`, as one transaction."""
        return Batch(
            rows=self.rows + other.rows,
            intents=self.intents + other.intents,
            launches=self.launches + other.launches,
            after_commit=self.after_commit + other.after_commit,
        )

    def __bool__(self) -> bool:
        return bool(self.rows or self.intents or self.launches)


class Planner:
    """The jobs as loaded, their fire times and last fires, and every policy decision on them."""

    def __init__(self, table: RunTable, clock: Clock) -> None:
        self.table = table
        self.clock = clock
        self.settings = Settings()
        self.jobs: Mapping[str, JobSpec] = {}  #: the job folder's own mapping (replaced at a scan, never changed)
        self.triggers: dict[str, schedule.Trigger] = {}
        self.next_fire: dict[str, datetime | None] = {}
        self.last_fire: dict[str, datetime] = {}
        self.paused: set[str] = set()
        self.held: set[str] = set()  #: `vigil hold`: their runs wait pending (engine/run/admission.py)
        self.table.need_of = self._holder_need
        self.last_success: dict[str, datetime] = {}
        #: each job's last final outcome (no retry followed it), for `recovered`; seeded at takeover
        self.last_outcome: dict[str, RunState] = {}
        self.downstream: dict[str, list[str]] = defaultdict(list)
        self.next_id = 1
        #: (fire time, job), the time being the one `next_fire` holds (no copy of it as a number): an
        #: entry is current while it is the job's `next_fire` and the job has a trigger; the others (the
        #: job changed, went or moved to a new timeline) are dropped when popped
        self._fire_heap: list[tuple[datetime, str]] = []
        # Why fires were late (the reasons of missed runs).
        self.forward_jumps: deque[ForwardJump] = deque(maxlen=8)
        self.started_at = clock.now()  #: this leadership's start, in the current timeline
        self.takeover_cause = "downtime"
        self.outage_cause: str | None = None  #: the store refused writes
        self._collisions_noted: set[str] = set()  # jobs whose repeated fire times were logged
        self.watch = RunWatch()  #: late_after, warn_if_longer, warn_if_shorter
        #: the flows with an open step, by flow id (rebuilt from the ledger at takeover: `load_flows`)
        self.flows: dict[int, flows.Flow] = {}

    # ------------------------------------------------------------ fire times

    def push_fire(self, name: str, when: datetime | None) -> None:
        self.next_fire[name] = when
        if when is not None:
            heapq.heappush(self._fire_heap, (when, name))

    def next_fire_at(self) -> float | None:
        """The earliest fire time waiting, as a POSIX time (it may be stale: then nothing fires)."""
        return self._fire_heap[0][0].timestamp() if self._fire_heap else None

    def clock_went_back(self, seconds: float, now: datetime, batch: Batch) -> None:
        """Schedules restart on the new timeline: a last fire "in the future" must not hold fires back."""
        self.started_at -= timedelta(seconds=seconds)  # the takeover, in the new timeline
        self.forward_jumps = deque((jump for jump in self.forward_jumps if jump[1] <= now), maxlen=8)
        self._collisions_noted.clear()
        for name, last in list(self.last_fire.items()):
            if last > now:
                self.last_fire[name] = now
                batch.intents.append(i.LastFire(name, now))
        for name, trigger in self.triggers.items():
            self.push_fire(name, trigger.next_fire(now))  # the entries of the old timeline are stale
            batch.intents.append(i.NextFire(name, self.next_fire[name]))

    def handle_fires(self, now: datetime, batch: Batch) -> None:
        due: set[str] = set()
        while self._fire_heap and self._fire_heap[0][0] <= now:
            at, name = heapq.heappop(self._fire_heap)
            if self.next_fire.get(name) == at and name in self.triggers:
                due.add(name)  # a set: the same time pushed twice fires once
        # Fires due together are handled by priority (they may compete for a lock), then by name.
        for name in sorted(due, key=lambda n: (-self.jobs[n].priority, n)) if len(due) > 1 else due:
            job = self.jobs[name]
            trigger = self.triggers[name]
            last = self.last_fire.get(name, now)
            fires, dropped = schedule.fires_between(trigger, last, now, self.settings.max_missed_rows)
            if not fires:
                self.push_fire(name, trigger.next_fire(max(last, now)))
                continue
            previous_fire = last
            batch.last_fire_before.setdefault(name, self.last_fire.get(name))
            batch.due_at.setdefault(name, fires[0])
            self.last_fire[name] = fires[-1]
            batch.intents.append(i.LastFire(name, fires[-1]))
            upcoming = trigger.next_fire(now)
            batch.intents.append(i.NextFire(name, upcoming))
            self.push_fire(name, upcoming)
            # The newest fire, if on time, runs whatever `catchup` says; older ones are late and
            # follow the policy, each missed one naming why it was late.
            plans = schedule.plan_missed_fires(
                fires,
                now,
                job.catchup,
                job.catchup_window,
                cause=self.gap_cause,
                on_time_s=ON_TIME_TOLERANCE_S,
            )
            # One event for the gap, however many rows it left (the summary row stands for its dropped
            # fires): (row id, first fire, last fire) of each missed row, in order.
            missed: list[tuple[int, datetime, datetime]] = []
            if dropped:
                summary = self._note_dropped(batch, name, fires[0], dropped, self.gap_cause(fires[0]), now)
                first = trigger.next_fire(previous_fire) or summary.scheduled_for
                missed.append((summary.id, first, summary.scheduled_for))
            if not job.enabled:
                continue
            # Fires caught up together run one after another, oldest first, whatever `overlap` says:
            # each waits for the one before it instead of being skipped because of it.
            catching_up = sum(plan.action == "run" for plan in plans) > 1
            for plan in plans:
                if plan.action == "missed":
                    row = self.new_row(
                        batch, name, plan.scheduled_for, RunState.MISSED, Trigger.SCHEDULE, now, reason=plan.reason
                    )
                    missed.append((row.id, plan.scheduled_for, plan.scheduled_for))
                else:
                    self.fire(
                        batch,
                        job,
                        plan.scheduled_for,
                        Trigger.SCHEDULE,
                        now,
                        since=previous_fire,
                        catchup_queue=catching_up,
                    )
            if missed:
                first_id, first_at, _ = missed[0]
                event = build.missed_gap(
                    job=name,
                    first_row_id=first_id,
                    count=len(missed) - 1 + dropped if dropped else len(missed),
                    first_at=first_at,
                    last_at=missed[-1][2],
                    cause=self.gap_cause(first_at),
                    at=now,
                )
                self.notify(batch, event)

    def gap_cause(self, fire: datetime) -> str:
        """Why `fire`, handled late, was not handled on time."""
        for jump in reversed(self.forward_jumps):
            # The step came somewhere between the look before it and the look that saw it. It passed
            # over the fires due in that span (not those already late at the look before), and it
            # is their cause if it is most of the span; otherwise the loop was mostly just not looking.
            if not jump.seen_from - timedelta(seconds=ON_TIME_TOLERANCE_S) < fire <= jump.to:
                continue
            if 2 * jump.seconds >= (jump.to - jump.seen_from).total_seconds():
                return jump.cause
        if fire <= self.started_at:
            return self.takeover_cause
        if self.outage_cause is not None:
            return self.outage_cause
        return "scheduler overloaded"

    def _note_dropped(
        self, batch: Batch, name: str, first_kept: datetime, dropped: int, cause: str, now: datetime
    ) -> RunInfo:
        return self.new_row(
            batch,
            name,
            first_kept - timedelta(microseconds=1),
            RunState.MISSED,
            Trigger.SCHEDULE,
            now,
            reason=f"{cause}: {dropped} earlier fires not recorded individually (max_missed_rows)",
        )

    # ------------------------------------------------------------ new runs

    def new_row(
        self,
        batch: Batch,
        job: str,
        scheduled_for: datetime,
        state: RunState,
        trigger: Trigger,
        now: datetime,
        *,
        attempt: int = 1,
        reason: str | None = None,
        not_before: datetime | None = None,
        run_id: int | None = None,
        flow_id: int | None = None,
        starts_flow: bool = False,
    ) -> RunInfo:
        if run_id is None:  # otherwise an id already used (a run found in its directory)
            run_id = self.next_id
            self.next_id += 1
        if starts_flow and flow_id is None and not state.terminal:
            flow_id = run_id
            members = flows.members_of(job, self.downstream, self.triggers.keys() - {job})
            self.flows[run_id] = flows.Flow(run_id, job, members)
        flow = self.flows.get(flow_id) if flow_id is not None else None
        if flow is not None:
            flow.started.add(job)
            flow.attempts[job] = (scheduled_for, attempt)
            if not state.terminal:
                flow.open.add(run_id)
        spec = self.jobs.get(job)
        batch.rows.append(
            i.NewRun(
                id=run_id,
                job=job,
                scheduled_for=scheduled_for,
                attempt=attempt,
                state=state,
                trigger=trigger,
                created_at=now,
                reason=reason,
                not_before=not_before,
                ended_at=now if state.terminal else None,
                command=json.dumps(spec.command) if spec else None,
                agent=spec.agent if spec else None,
                flow_id=flow_id,
            )
        )
        info = RunInfo(
            id=run_id,
            job=job,
            scheduled_for=scheduled_for,
            attempt=attempt,
            trigger=trigger,
            state=state,
            not_before=not_before,
            agent=spec.agent if spec else None,
            flow_id=flow_id,
        )
        if not state.terminal:
            self.table.track(info)
        return info

    def fire(
        self,
        batch: Batch,
        job: JobSpec,
        scheduled_for: datetime,
        trigger: Trigger,
        now: datetime,
        *,
        since: datetime | None = None,
        attempt: int = 1,
        reason: str | None = None,
        overlap: Overlap | None = None,
        catchup_queue: bool = False,
        flow_id: int | None = None,
    ) -> RunInfo:
        """One fire of a job: launched, queued or skipped according to its policies.

        `catchup_queue`: one of several fires caught up at once; it queues behind the job's open
        runs (`max_queued` does not apply: the catch-up is already bounded by its window).
        """
        name = job.name
        # A fire of a job that others depend on starts a flow; a step of one stays in it.
        starts_flow = flow_id is None and any(down not in self.triggers for down in self.downstream.get(name, ()))

        def skipped(reason: str) -> RunInfo:
            return self.new_row(
                batch, name, scheduled_for, RunState.SKIPPED, trigger, now, reason=reason, flow_id=flow_id
            )

        def opened(state: RunState, why: str | None) -> RunInfo:
            return self.new_row(
                batch,
                name,
                scheduled_for,
                state,
                trigger,
                now,
                attempt=attempt,
                reason=why,
                flow_id=flow_id,
                starts_flow=starts_flow,
            )

        if trigger is Trigger.SCHEDULE and name in self.paused:
            return skipped("job paused")
        if trigger is Trigger.SCHEDULE and job.after:
            ok, unmet = schedule.upstream_satisfied(job.after, self.last_success, since)
            if not ok:
                return skipped("after: not yet succeeded since the previous run: " + ", ".join(unmet))
        if trigger is Trigger.SCHEDULE and job.calendar:
            excluded = schedule.fire_excluded(job, self.settings.calendars, scheduled_for)
            if excluded is not None:
                return skipped(excluded)
        if trigger in (Trigger.SCHEDULE, Trigger.AFTER) and job.window:
            held = self._hold_for_window(
                batch, job, scheduled_for, trigger, now, attempt, overlap or job.overlap, flow_id, starts_flow
            )
            if held is not None:
                return held
        # Only runs that are still open count (and are named in a reason); the run ends of this
        # iteration were handled before its fires, so these are the job's runs as of now.
        active, queued = self.table.open_of(name)
        waiting = list(self.table.waiting_by_job.get(name, ()))  # held back by admission: open too
        policy = Overlap.QUEUE if catchup_queue else overlap or job.overlap
        decision = schedule.overlap_decision(policy, len(active) + len(queued) + len(waiting))
        if decision == "skip":
            if waiting and not active:
                return skipped(f"overlap=skip: run {waiting[0]} is waiting to start ({self.table.waiting[waiting[0]]})")
            return skipped(f"overlap=skip: {describe_busy(active, queued or waiting, job)}")
        if decision == "queue":
            blocking = queued[-1] if queued else waiting[-1] if waiting else active[0]
            if not catchup_queue and len(queued) >= job.max_queued:
                # Caught-up fires are not held to the cap, so a longer queue holds some of them.
                included = ", caught-up fires included" if len(queued) > job.max_queued else ""
                return skipped(
                    f"overlap=queue: queue full ({len(queued)} waiting{included}, max_queued = {job.max_queued})"
                )
            why = "catchup=all" if catchup_queue else "overlap=queue"
            info = opened(RunState.PENDING, f"{why}: waiting for run {blocking}")
            self.table.queued[name].append(info.id)
            return info
        if found := self.admission_obstacles(job, self.next_id):
            why = admission.reason(found)
            if len(waiting) >= job.max_queued and not catchup_queue:
                return skipped(f"{why}; {len(waiting)} runs of the job already waiting (max_queued = {job.max_queued})")
            info = opened(RunState.PENDING, why)
            self.table.wait(info, why)
            return info
        return opened(RunState.LAUNCHING, reason)

    def _hold_for_window(
        self,
        batch: Batch,
        job: JobSpec,
        scheduled_for: datetime,
        trigger: Trigger,
        now: datetime,
        attempt: int,
        overlap: Overlap,
        flow_id: int | None,
        starts_flow: bool,
    ) -> RunInfo | None:
        """None when `now` is inside one of the job's windows; else the fire's row: skipped, or pending
        until the next opening (a row with `not_before`, so a new active after a failover waits too).
        Admission is judged when the fire is handled, so a late fire inside a window runs."""
        windows = schedule.windows_for(job.window, job.timezone)
        why = windows.why_outside(now)
        if why is None:
            return None
        opening = windows.next_opening(now)
        name = job.name
        if job.outside_window is OutsideWindow.SKIP or opening is None:
            return self.new_row(
                batch,
                name,
                scheduled_for,
                RunState.SKIPPED,
                trigger,
                now,
                reason=f"outside_window=skip: {why}",
                flow_id=flow_id,
            )
        waiting = self.table.window_waiting_of(name)
        if waiting and overlap is not Overlap.ALLOW:
            reason = f"overlap={overlap}: run {waiting[0]} already waits for the window; {why}"
            return self.new_row(
                batch, name, scheduled_for, RunState.SKIPPED, trigger, now, reason=reason, flow_id=flow_id
            )
        info = self.new_row(
            batch,
            name,
            scheduled_for,
            RunState.PENDING,
            trigger,
            now,
            attempt=attempt,
            not_before=opening,
            reason=f"{why}: waits for it to open",
            flow_id=flow_id,
            starts_flow=starts_flow,
        )
        self.table.wait_for_window(self.clock.monotonic() + (opening - now).total_seconds(), info)
        return info

    def window_close(self, job: JobSpec, now: datetime) -> datetime | None:
        """When a run of `job` starting now must end (`kill_at_window_end`): its window's close."""
        if not (job.kill_at_window_end and job.window):
            return None
        return schedule.windows_for(job.window, job.timezone).closing(now)

    def deadline_cause(self, info: RunInfo) -> str:
        """What a run's deadline is: "window" (its window closed) or "timeout"."""
        job = self.jobs.get(info.job)
        if job is None or not job.kill_at_window_end or info.deadline is None:
            return "timeout"
        if job.timeout is None or info.started_at is None:
            return "window"
        timeout_at = info.started_at + timedelta(seconds=job.timeout)
        return "window" if info.deadline < timeout_at - timedelta(milliseconds=1) else "timeout"

    def notify(self, batch: Batch, event: Event) -> None:
        """Queue `event` in this batch's transaction for the channels it is routed to (if any)."""
        batch.intents.extend(self.notification(event))

    def notification(self, event: Event) -> list[i.Intent]:
        """The outbox intent of `event` (none when no channel takes it), for a transaction of its cause."""
        job = self.jobs.get(event.job) if event.job else None
        channels = channels_for(event, job, self.settings)
        return [i.NotificationQueued(event, channels)] if channels else []

    def watch_runs(self, now: datetime, mono: float, batch: Batch) -> None:
        """Late runs and runs running past `warn_if_longer`, warned in this batch."""
        for info in self.table.take_opened():
            if self.table.is_open(info):
                self.watch.opened(info, self.jobs.get(info.job), now)
        self.warn(batch, self.watch.check(now, mono, self.table, self.jobs))

    def warn(self, batch: Batch, warnings: list[Warned]) -> None:
        """Each warning recorded on its run and queued as an event, in the same transaction."""
        for warned in warnings:
            batch.intents.append(i.RunWarned(warned.run_id, warned.warning, warned.at))
            self.notify(batch, warned.event())

    def handle_retries(self, mono: float, batch: Batch) -> None:
        # A retry that is due starts whatever the job's `overlap` says (the failed run it repeats
        # has ended, but a newer fire may be running beside it).
        for info in self.table.due_retries(mono):
            if self._held_back(info, batch):
                continue
            self.table.start(info)
            batch.intents.append(i.RunLaunching(info.id))
            batch.launches.append(info.id)

    # ------------------------------------------------------------ run ends

    def handle_finished(self, results: list[ShimExit], now: datetime, batch: Batch) -> None:
        """Ends reported by the executors: each run's final state and reason, and what follows it."""
        for result in results:
            info = self.table.get(result.run_id)
            if info is None:
                continue
            if result.exit_code is None:
                state = RunState(result.state or RunState.UNKNOWN)
                reason = result.reason or "the shim left no exit record"
            elif info.kill_requested == "timeout":
                job = self.jobs.get(info.job)
                limit = f" of {job.timeout:g}s" if job and job.timeout else ""
                state, reason = RunState.TIMED_OUT, f"timeout{limit} exceeded; process group killed"
            elif info.kill_requested == "kill":
                state, reason = RunState.KILLED, "killed by operator"
            elif info.kill_requested == "window":
                job = self.jobs.get(info.job)
                closed = f" ({', '.join(job.window)})" if job else ""
                when = iso(info.deadline) if info.deadline else "its end"
                state = RunState.KILLED
                reason = f"kill_at_window_end: its window{closed} closed at {when}; process group killed"
            elif result.exit_code == 0:
                state, reason = RunState.SUCCEEDED, None
            else:
                state, reason = RunState.FAILED, f"exit code {result.exit_code}"
            self.finish(info, state, reason, result, now, batch)

    def finish(
        self,
        info: RunInfo,
        state: RunState,
        reason: str | None,
        result: ShimExit | None,
        now: datetime,
        batch: Batch,
    ) -> None:
        """The run ended: record it and its event, then its retry, its `after` jobs and its job's next
        queued run. Every end of a run comes here (executors, reconciliation, kills, a job gone)."""
        info.state = state
        self.table.forget(info.id, info.job)
        ended = run_end(result.ended_at if result else None, info.started_at, now)
        flow = self.flows.get(info.flow_id) if info.flow_id is not None else None
        outputs = flows.Outputs()
        if flow is not None and result is not None and result.output:
            outputs = flows.parse_outputs(result.output, truncated=result.output_truncated)
            if note := outputs.note():
                reason = f"{reason}; {note}" if reason else note
        batch.intents.append(
            i.RunFinished(
                run_id=info.id,
                state=state,
                reason=reason,
                exit_code=result.exit_code if result else None,
                ended_at=ended,
                pid=result.job_pid if result else None,
                cpu_s=result.cpu_s if result else None,
                peak_rss=result.peak_rss if result else None,
                job=info.job,
                outputs=outputs.pairs,
            )
        )
        job = self.jobs.get(info.job)
        retried = job is not None and schedule.should_retry(str(state), info.attempt, job.retries)
        if not retried:  # a failure that is retried is not an outcome yet: nothing is announced
            self._announce_end(info, state, reason, result, job, now, batch)
        self.warn(batch, self.watch.ended(info, job, state, now, ended))
        if flow is not None:
            flow.open.discard(info.id)
        if job is not None and state is RunState.SUCCEEDED:
            self.last_success[info.job] = now
            if flow is None:
                self._trigger_downstream(info.job, now, batch)
        if flow is not None and not retried:
            flow.ends[info.job] = flows.StepEnd(info.id, state, ended, outputs.pairs)
            self._flow_step_ended(flow, info.job, now, batch)
        if job is not None and retried:
            delay = schedule.retry_delay(job.retry_delay, info.attempt)
            retry = self.new_row(
                batch,
                info.job,
                info.scheduled_for,
                RunState.PENDING,
                Trigger.RETRY,
                now,
                attempt=info.attempt + 1,
                not_before=now + timedelta(seconds=delay),
                reason=f"retry {info.attempt + 1} of {job.retries + 1} after {state} (in {delay:g}s)",
                flow_id=info.flow_id if flow is not None else None,
            )
            self.table.retry_at(self.clock.monotonic() + delay, retry.id)
        if flow is not None and not flow.open:
            del self.flows[flow.id]  # every step that could start has ended: the flow is over
        # If the job is gone, each queued run then fails saying so.
        self.start_queued(info.job, batch, after=info.id)

    def _announce_end(
        self,
        info: RunInfo,
        state: RunState,
        reason: str | None,
        result: ShimExit | None,
        job: JobSpec | None,
        now: datetime,
        batch: Batch,
    ) -> None:
        """A final outcome (no retry follows): its event, or `recovered` for a success after a failure."""
        event: Event | None
        if state is RunState.SUCCEEDED:
            previous = self.last_outcome.get(info.job, RunState.SUCCEEDED)
            event = build.recovered(job=info.job, run_id=info.id, attempt=info.attempt, previous=previous, at=now)
        elif state in build.END_EVENTS:
            event = build.run_ended(
                job=info.job,
                run_id=info.id,
                state=state,
                exit_code=result.exit_code if result else None,
                reason=reason,
                attempt=info.attempt,
                retries=job.retries if job is not None else 0,
                retryable=schedule.retryable(state),
                at=now,
            )
        else:
            return  # skipped (a restored queued run): not an outcome of the job
        self.last_outcome[info.job] = state
        if event is not None:
            self.notify(batch, event)

    def start_queued(self, name: str, batch: Batch, *, after: int | None = None) -> None:
        """The job's next queued run starts if none of its runs is active."""
        if self.table.active[name] or name in self.table.waiting_by_job or not self.table.queued[name]:
            return  # a run of the job waiting for admission goes first: the queue waits behind it
        info = self.table.next_queued(name)
        if info is None or self._held_back(info, batch):
            return
        # Its "waiting for run N" reason is over: say what it waited for instead.
        reason = f"started after run {after} ended" if after is not None else "started from the queue"
        self.table.start(info)
        batch.intents.append(i.RunLaunching(info.id, reason))
        batch.launches.append(info.id)

    def _trigger_downstream(self, upstream: str, now: datetime, batch: Batch) -> None:
        for name in self.downstream.get(upstream, []):
            job = self.jobs.get(name)
            if job is None or not job.enabled or name in self.paused or name in self.triggers:
                continue  # scheduled jobs check `after` at their own fires
            ok, _ = schedule.upstream_satisfied(job.after, self.last_success, self.last_fire.get(name))
            if ok:
                self.last_fire[name] = now
                batch.intents.append(i.LastFire(name, now))
                self.fire(batch, job, now, Trigger.AFTER, now, reason=f"after: {', '.join(job.after)} succeeded")

    # ------------------------------------------------------------ admission (locks, max_running, hold)

    def admission_obstacles(self, job: JobSpec, run_id: int) -> tuple[admission.Obstacle, ...]:
        """Why a run of `job` (numbered `run_id`) that its job's own rules let start must wait."""
        held = job.name in self.held
        if not (held or job.locks or (self.settings.max_running is not None and job.agent is None)):
            return ()
        need = admission.Need(run_id, job.name, job.priority, job.locks, job.agent is None, held)
        ahead = self._ahead_of(need) if job.locks and self.table.waiting else None
        return admission.obstacles(need, self.table.holders, self.settings.resources, self.settings.max_running, ahead)

    def _ahead_of(self, need: admission.Need) -> Callable[[str], int | None]:
        """The first waiting run ahead of `need` in line that needs a lock (asked only for a lock with
        room, which is rare while runs wait: the scan is not paid for every fire)."""

        def first(resource: str) -> int | None:
            ahead = [
                n for n in self._waiting_needs() if n.order < need.order and not n.held and resource in dict(n.locks)
            ]
            return min(ahead, key=lambda n: n.order).run_id if ahead else None

        return first

    def _held_back(self, info: RunInfo, batch: Batch) -> bool:
        """A pending run whose turn came by its job's rules (a due retry, a queued run) waits instead."""
        job = self.jobs.get(info.job)
        found = self.admission_obstacles(job, info.id) if job is not None else ()
        if not found:
            return False
        why = admission.reason(found)
        self.table.wait(info, why)
        batch.intents.append(i.RunBlocked(info.id, why))
        return True

    def admit_waiting(self, batch: Batch) -> None:
        """After a holder or a waiting run went (or a release, a new limit): the waiting runs whose
        locks, slot or release came start in line; the others' reasons say what they wait for now."""
        table = self.table
        if not table.admission_changed:
            return
        table.admission_changed = False
        needs = [self._need(info) for run_id in table.waiting if (info := table.runs.get(run_id)) is not None]
        for need, found in admission.admit(needs, table.holders, self.settings.resources, self.settings.max_running):
            was = table.waiting[need.run_id]
            if not found:
                info = table.runs[need.run_id]
                table.start(info)
                if was == admission.Obstacle(admission.Kind.HELD).text:
                    started = "started: job released"
                else:
                    started = f"started after {was}" if was else "started by the new active"
                batch.intents.append(i.RunLaunching(info.id, started))
                batch.launches.append(info.id)
                continue
            why = admission.reason(found)
            if why != was:
                table.waiting[need.run_id] = why
                batch.intents.append(i.RunBlocked(need.run_id, why))

    def why_waiting(self, run_id: int) -> tuple[admission.Obstacle, ...]:
        """Why a run held back by admission waits now (empty: it does not, or it is not waiting for
        admission): the locks and their holders, the run ahead in line, max_running, a hold."""
        if run_id not in self.table.waiting or (info := self.table.runs.get(run_id)) is None:
            return ()
        need = self._need(info)
        return admission.obstacles(
            need, self.table.holders, self.settings.resources, self.settings.max_running, self._ahead_of(need)
        )

    def restore_waiting(self) -> None:
        """At takeover (the ledger's pending rows back in the job queues): the runs that no queue of
        their job holds back (a manual run, a rerun, a job with overlap = "allow") wait for admission."""
        for name, queue in self.table.queued.items():
            job = self.jobs.get(name)
            for run_id in list(queue):
                info = self.table.runs.get(run_id)
                if info is None or job is None:
                    continue
                if job.overlap is Overlap.ALLOW or info.trigger in (Trigger.MANUAL, Trigger.RERUN):
                    queue.remove(run_id)
                    self.table.wait(info, "")
        self.table.admission_changed = True

    def queue_order(self, names: list[str]) -> list[str]:
        """Jobs in the order their queued runs are offered to admission at takeover (as in line)."""

        def order(name: str) -> tuple[int, int]:
            job, queue = self.jobs.get(name), self.table.queued[name]
            return (-(job.priority if job else 0), queue[0] if queue else 0)

        return sorted(names, key=order)

    def resource_use(self) -> list[ResourceUse]:
        """Each resource's use (and the cap on local runs), as `vigil status --json` and the dashboard show it."""
        holders = self.table.holders
        waiting: Counter[str] = Counter()
        for need in self._waiting_needs():
            for name, _count in need.locks:
                waiting[name] += 1
            if need.local:
                waiting[admission.MAX_RUNNING] += 1
        uses = [
            ResourceUse(name, limit, holders.used.get(name, 0), holders.holders_of(name), waiting[name])
            for name, limit in sorted(self.settings.resources.items())
        ]
        if self.settings.max_running is not None:
            local = holders.holders_of(admission.MAX_RUNNING)
            uses.append(
                ResourceUse(
                    admission.MAX_RUNNING, self.settings.max_running, len(local), local, waiting[admission.MAX_RUNNING]
                )
            )
        return uses

    def _waiting_needs(self) -> list[admission.Need]:
        return [self._need(info) for run_id in self.table.waiting if (info := self.table.runs.get(run_id)) is not None]

    def _need(self, info: RunInfo) -> admission.Need:
        """What a waiting run asks for: its job's locks and priority as loaded now."""
        job = self.jobs.get(info.job)
        if job is None:
            return admission.Need(info.id, info.job, local=info.agent is None)
        return admission.Need(info.id, info.job, job.priority, job.locks, job.agent is None, info.job in self.held)

    def _holder_need(self, info: RunInfo) -> admission.Need:
        """What a run let start holds: its job's locks, and a local slot if it runs here."""
        job = self.jobs.get(info.job)
        locks = job.locks if job is not None else ()
        return admission.Need(info.id, info.job, locks=locks, local=info.agent is None)

    # ------------------------------------------------------------ flows

    def _flow_step_ended(self, flow: flows.Flow, upstream: str, now: datetime, batch: Batch) -> None:
        """A step of `flow` had its final end: start, or skip, each step after it that can now be told.

        A skipped step is an end too, so what follows it is told in turn: every flow ends."""
        todo = deque([upstream])
        while todo:
            for name in self.downstream.get(todo.popleft(), []):
                if name not in flow.members or name in flow.started:
                    continue
                job = self.jobs.get(name)
                if job is None or not job.enabled:
                    continue
                verdict = self._flow_verdict(flow, job)
                if not verdict.ready and not verdict.skip:
                    continue  # waiting for another upstream of this flow
                scheduled_for, attempt = now, 1
                if name in flow.attempts:  # a rerun of the flow: a new attempt of its earlier row
                    scheduled_for, attempt = flow.attempts[name][0], flow.attempts[name][1] + 1
                if verdict.skip or name in self.paused:
                    reason = verdict.reason if verdict.skip else "job paused"
                    info = self.new_row(
                        batch,
                        name,
                        scheduled_for,
                        RunState.SKIPPED,
                        Trigger.AFTER,
                        now,
                        attempt=attempt,
                        reason=reason,
                        flow_id=flow.id,
                    )
                else:
                    self.last_fire[name] = now
                    batch.intents.append(i.LastFire(name, now))
                    info = self.fire(
                        batch,
                        job,
                        scheduled_for,
                        Trigger.AFTER,
                        now,
                        attempt=attempt,
                        reason=verdict.reason,
                        flow_id=flow.id,
                    )
                if info.state.terminal:  # skipped (its condition, a pause, its overlap policy)
                    flow.ends[name] = flows.StepEnd(info.id, info.state, now)
                    todo.append(name)

    def _flow_verdict(self, flow: flows.Flow, job: JobSpec) -> flows.Verdict:
        """`flows.judge` on the edges within the flow; an edge to a job outside it keeps the rule of
        jobs without flows (succeeded since this job's last fire), which, unmet, is waited for."""
        verdict = flows.judge(job, flow)
        if not verdict.ready:
            return verdict
        outside = tuple(name for name in job.after if name not in flow.members)
        if outside:
            ok, unmet = schedule.upstream_satisfied(outside, self.last_success, self.last_fire.get(job.name))
            if not ok:
                waits = tuple(edge for edge in job.after_edges if edge.job in unmet)
                return flows.Verdict(False, False, "not yet succeeded since its last run: " + ", ".join(unmet), waits)
            return flows.Verdict(True, False, f"{verdict.reason}, {', '.join(outside)} succeeded")
        return verdict

    def flow_waiting_for(self, run: RunInfo | Run) -> list[tuple[str, Condition]]:
        """What a flow step of `run`'s job waits for in `run`'s flow: (upstream job, condition) of each
        edge not yet met; empty when it is not a step of an open flow (for `vigil why`)."""
        flow = self.flows.get(run.flow_id) if run.flow_id is not None else None
        job = self.jobs.get(run.job)
        if flow is None or job is None:
            return []
        return [(edge.job, edge.on) for edge in self._flow_verdict(flow, job).waiting_for]

    def launch_env(self, info: RunInfo) -> dict[str, str]:
        """The variables a flow step gets from the outputs of the steps upstream of it (none otherwise)."""
        flow = self.flows.get(info.flow_id) if info.flow_id is not None else None
        if flow is None or not flow.ends:
            return {}
        return flows.flow_env(info.job, self.jobs, flow)

    def load_flows(self, runs: list[Run]) -> None:
        """The flows with an open step, from their runs in the ledger (at takeover)."""
        by_flow: dict[int, list[Run]] = defaultdict(list)
        for run in runs:
            if run.flow_id is not None:
                by_flow[run.flow_id].append(run)
        for flow_id, flow_runs in by_flow.items():
            self.flows[flow_id] = self._flow_of(flow_id, flow_runs)

    def _flow_of(self, flow_id: int, runs: list[Run]) -> flows.Flow:
        root = next((run.job for run in runs if run.id == flow_id), runs[0].job)
        members = flows.members_of(root, self.downstream, self.triggers.keys() - {root})
        flow = flows.Flow(flow_id, root, members)
        for run in runs:
            if run.attempt >= flow.attempts.get(run.job, (run.scheduled_for, 0))[1]:
                flow.attempts[run.job] = (run.scheduled_for, run.attempt)
        for job, run in latest_steps(runs).items():
            flow.started.add(job)
            if run.is_open:
                flow.open.add(run.id)
            else:
                flow.ends[job] = flows.StepEnd(run.id, run.state, run.ended_at or run.created_at, run.outputs)
        return flow

    def rerun_flow(self, flow_id: int, runs: list[Run], user: str, now: datetime, batch: Batch) -> list[int]:
        """`vigil rerun --flow ID --from-failed`: the failed steps of a finished flow again, as new
        attempts in the same flow; the steps after them are told again when they end."""
        if not runs:
            raise VigilError(f"no flow with id {flow_id}")
        open_runs = [run.id for run in runs if run.is_open]
        if open_runs or flow_id in self.flows:
            listed = ", ".join(map(str, open_runs[:5])) or "?"
            raise VigilError(f"flow {flow_id} is still running (open: run {listed}); rerun it once it has ended")
        flow = self._flow_of(flow_id, runs)
        latest = latest_steps(runs)
        failed = {job for job, run in latest.items() if run.state in FAILURE_STATES}
        if not failed:
            raise VigilError(f"flow {flow_id} has no failed step to rerun")
        after_failed: set[str] = set()
        for job in failed:
            after_failed |= flows.members_of(job, self.downstream, self.triggers.keys()) - {job}
        after_failed &= flow.members
        first = sorted(failed - after_failed, key=lambda job: latest[job].id)  # the others follow them
        missing = [job for job in first if job not in self.jobs]
        if missing:
            raise VigilError(f"flow {flow_id}: job {', '.join(missing)} is not loaded")
        for job in failed | after_failed:
            flow.ends.pop(job, None)
            flow.started.discard(job)
        self.flows[flow_id] = flow
        ids = []
        for name in first:
            scheduled_for, attempt = flow.attempts[name]
            info = self.fire(
                batch,
                self.jobs[name],
                scheduled_for,
                Trigger.RERUN,
                now,
                attempt=attempt + 1,
                overlap=Overlap.ALLOW,
                reason=f"rerun of run {latest[name].id} (flow {flow_id}, from failed) by {user}",
                flow_id=flow_id,
            )
            ids.append(info.id)
        if not flow.open:
            del self.flows[flow_id]
        return ids

    def _drop_from_flow(self, row: i.NewRun) -> None:
        """A new row that was never written (undone, or its fire had a row): out of its flow."""
        flow = self.flows.get(row.flow_id) if row.flow_id is not None else None
        if flow is None:
            return
        flow.open.discard(row.id)
        if not flow.open:
            del self.flows[flow.id]

    # ------------------------------------------------------------ after a commit

    def undo(self, work: Batch, last_id: int) -> None:
        """Forget new work whose commit failed: nothing of it was written or launched."""
        for row in work.rows:
            self.table.forget(row.id, row.job)
            self._drop_from_flow(row)
        for name, before in work.last_fire_before.items():
            if before is None:
                self.last_fire.pop(name, None)
            else:
                self.last_fire[name] = before
        for name, due in work.due_at.items():
            self.push_fire(name, due)
        for name, was_held in work.held_before.items():
            if was_held:
                self.held.add(name)
            else:
                self.held.discard(name)
        for name, was_paused in work.paused_before.items():
            if was_paused:
                self.paused.add(name)
            else:
                self.paused.discard(name)
        if self.next_id == last_id:  # no id handed out meanwhile: reuse them, keep ids dense
            self.next_id = work.first_id

    def ignored(self, row: i.NewRun) -> None:
        """A new run's row the store ignored: its fire already had a run. It never launches."""
        self.table.forget(row.id, row.job)
        self._drop_from_flow(row)
        # After the wall clock went back, a fire time can come round again; the ledger keeps one run
        # per job and fire time, so it is not run twice. Said once per job and clock step.
        level = logging.DEBUG if row.job in self._collisions_noted else logging.WARNING
        self._collisions_noted.add(row.job)
        log.log(
            level,
            "job %s: fire time %s already has a run in the ledger (the wall clock went back?); "
            "it is not run twice, later fire times run as scheduled",
            row.job,
            iso(row.scheduled_for),
        )


def run_end(reported: datetime | None, started: datetime | None, now: datetime) -> datetime:
    """When a run ended: as its executor dated it (a run that ended while no scheduler was active
    is reported at the takeover, long after), never before its start nor after now; else now."""
    if reported is None or reported > now:
        return now
    return max(reported, started) if started is not None and started <= now else reported


def describe_busy(active: list[int], queued: list[int], job: JobSpec) -> str:
    """What a skipped fire waited on: "run 7 still running", "run 7 running, 3 caught-up fires queued"."""
    if len(active) == 1:
        running = f"run {active[0]}"
    elif active:
        more = f" and {len(active) - 3} more" if len(active) > 3 else ""
        running = f"runs {', '.join(map(str, active[:3]))}{more}"
    else:
        running = ""
    if not queued:
        return f"{running} still running"
    kind = "caught-up fire" if job.catchup is Catchup.ALL else "run"
    backlog = f"{len(queued)} {kind}{'s' if len(queued) > 1 else ''} queued"
    return f"{running} running, {backlog}" if running else f"{backlog} (next: run {queued[0]})"


def format_jump(seconds: float) -> str:
    """A clock step for people: "1h 0m", "5m 30s", "2.5s"."""
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    if whole >= 60:
        return f"{whole // 60}m {whole % 60}s"
    return f"{seconds:.1f}s"
