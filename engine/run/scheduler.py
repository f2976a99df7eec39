"""The active scheduler: turns fires into ledger rows, launches them, ingests their ends.

Order of every launch: the row is committed (with the job's `last_fire`) in one transaction, then
the shim starts. A crash between the two leaves a `launching` row and no shim, which reconciliation
launches once; a crash after leaves a shim, which is adopted. Either way the fire runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import json
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from engine import schedule
from engine.clock import Clock, SystemClock, iso
from engine.config import JobFolder, ScanResult, job_name_of
from engine.durations import MAX_DURATION_S, MAX_DURATION_TEXT
from engine.errors import FencedError, LaunchError, NotFoundError, StoreError, StoreRetryableError, VigilError

if TYPE_CHECKING:
    from engine.agents.dispatcher import AgentDispatcher
from engine.exec.local import LocalExecutor, gather_evidence
from engine.exec.port import Adopted, Executor, RunContext, RunInfo, ShimExit
from engine.exec.reconcile import Action, decide
from engine.exec.rundirs import HighWaterFile, recorded_run, run_dir_ids
from engine.exec.runner import ShimExecutor, file_time
from engine.ids import as_row_id
from engine.model import Catchup, JobSpec, LeaderRow, Overlap, RunState, Settings
from engine.paths import StatePaths
from engine.store import LeaderClaim, Store
from engine.store import intents as i
from engine.store.sqlite.ledger import Ledger
from engine.text import show

log = logging.getLogger("vigil.scheduler")


#: A fire handled within this many seconds of its time is on time; an older one is late and follows
#: the job's `catchup` policy (a fixed tolerance, not a fraction of the interval).
ON_TIME_TOLERANCE_S = 1.0
#: Wall and monotonic clocks disagreeing by more than this between two loop iterations is a clock
#: step (NTP slews far slower: under a millisecond per second).
CLOCK_JUMP_TOLERANCE_S = 1.0


class ForwardJump(NamedTuple):
    """A forward step of the wall clock, seen between two looks at the clock."""

    seen_from: datetime  #: the wall time of the look before it: the step came after this
    to: datetime  #: the wall time of the look that saw it
    seconds: float  #: how far the wall clock stepped
    cause: str  #: "clock jumped forward 1h 0m", for the reasons of the fires it passed over


@dataclass
class Command:
    op: str
    args: dict[str, Any]
    reply: asyncio.Future[dict[str, Any]] = field(repr=False)


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
    first_id: int = 0

    def then(self, other: Batch) -> Batch:
        """This batch followed by `other`, as one transaction."""
        return Batch(
            rows=self.rows + other.rows,
            intents=self.intents + other.intents,
            launches=self.launches + other.launches,
            after_commit=self.after_commit + other.after_commit,
        )


class Scheduler:
    def __init__(
        self,
        paths: StatePaths,
        jobs_dir: os.PathLike[str] | str,
        *,
        clock: Clock | None = None,
        rescan_interval: float = 1.0,
        store: Store | None = None,
        local_executor: Callable[[RunContext], Executor] = ShimExecutor,
    ) -> None:
        self.paths = paths
        self.clock: Clock = clock or SystemClock()
        self.folder = JobFolder(Path(jobs_dir))
        self.rescan_interval = rescan_interval
        self.store: Store = store if store is not None else Ledger(paths)
        self.settings = Settings()
        self.jobs: dict[str, JobSpec] = {}
        self.job_errors: dict[str, str] = {}
        self.triggers: dict[str, schedule.Trigger] = {}
        self.next_fire: dict[str, datetime | None] = {}
        self.last_fire: dict[str, datetime] = {}
        self.paused: set[str] = set()
        self.last_success: dict[str, datetime] = {}
        self.downstream: dict[str, list[str]] = defaultdict(list)
        self.runs: dict[int, RunInfo] = {}  # open runs only
        self.active_by_job: dict[str, set[int]] = defaultdict(set)
        self.queued: dict[str, deque[int]] = defaultdict(deque)
        self.make_local = local_executor
        self.local: Executor | None = None  #: runs on this host; built by prepare()
        self.agents: AgentDispatcher | None = None  #: runs on remote agents; built by prepare()
        self.next_id = 1
        self._fire_heap: list[tuple[float, int, str, int]] = []  # wall-clock POSIX times
        self._generation: dict[str, int] = defaultdict(int)
        self._retry_heap: list[tuple[float, int]] = []  # monotonic times
        self._deadline_heap: list[tuple[float, int]] = []  # monotonic times
        self._clock_mark: tuple[datetime, float] | None = None  # (wall, monotonic) at the last look
        self._forward_jumps: deque[ForwardJump] = deque(maxlen=8)
        self._collisions_noted: set[str] = set()  # jobs whose repeated fire times were logged
        self._finished: list[ShimExit] = []
        self._carry = Batch()  # ends decided mid-commit (failed launches), committed next iteration
        self._commands: list[Command] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._seq = 0
        self._catalog_dirty: set[str] = set()
        self.takeover_cause = "downtime"
        self.started_at = self.clock.now()
        self.stop_reason = "stop"
        self.extra_handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}
        self.high_water = HighWaterFile(paths)  #: used epochs and run ids, kept outside the database
        self.restored = False  #: the database is behind ids used before: restored or replaced
        self.epoch_floor = 0  #: an epoch seen elsewhere (an agent) that this leadership must exceed
        self.epoch_retake_allowed = True  #: False after 3 re-takes within 60 s (see Node._active)
        self.agent_transport_factory: Callable[[Any], Any] | None = None  #: tests: in-process agents
        self.fatal: StoreError | None = None  #: the store fault that stopped this scheduler
        self._outage_cause: str | None = None  #: why fires were late: the store refused writes

    # ---------------------------------------------------------------- lifecycle

    async def take_leadership(self, *, pid: int, starttime: int | None, cause: str) -> LeaderRow:
        """Bump the epoch before anything else. Returns the previous leader row."""
        await self.store.open()
        now = self.clock.now()
        seen = await asyncio.to_thread(self.high_water.load)
        floor = max(seen.epoch, self.epoch_floor)
        epoch, previous = await self.store.take_leadership(LeaderClaim(pid, starttime, now), floor=floor)
        self.high_water.raise_to(epoch=epoch)  # before the epoch reaches an agent or a job
        self.restored = previous.epoch < seen.epoch
        self.takeover_cause = cause
        self.started_at = now
        log.info("active with epoch %d (previous leader pid %s)", epoch, previous.pid)
        return previous

    async def prepare(self) -> None:
        """Load the folder and settle what the previous active left open."""
        await self._load_state()
        result = await asyncio.to_thread(self.folder.scan)
        now, _ = self._read_clock()
        self.settings = result.settings  # the executors start with the settings of this scan
        ctx = RunContext(
            paths=self.paths,
            store=self.store,
            clock=self.clock,
            settings=lambda: self.settings,
            job=lambda name: self.jobs.get(name),  # `jobs` is replaced at each scan
            is_open=lambda run: self.runs.get(run.id) is run,
            finished=self._on_shim_exit,
            store_fault=self.store_fault,
        )
        self.local = self.make_local(ctx)
        from engine.agents.dispatcher import AgentDispatcher  # remote agents

        dispatcher = AgentDispatcher(
            ctx,
            restored=self.restored,
            next_run_id=lambda: self.next_id,
            skip_run_ids=self.skip_run_ids,
            retake_above=self.retake_above,
            transport_factory=self.agent_transport_factory,
        )
        self.agents = dispatcher
        intents = self._settle_stored_fires(result, now)
        intents += self._apply_scan(result, now, initial=True)
        if (self.high_water.mark.from_run_dirs or self.restored) and self.settings.agents:
            # No high-water record here, or a database older than the state directory: before
            # numbering a run, learn the epochs and run ids the agents have seen (docs/agents.md).
            await dispatcher.first_contact(within=3.0)
        await self._reconcile(now)
        dispatcher.ready()  # only now may results be matched to runs (each open run has its flight)
        await self.store.commit(intents)
        await self._write_catalog(full=True)

    def request_stop(self, reason: str = "stop") -> None:
        self.stop_reason = reason
        self._stop.set()
        self._wake.set()

    @property
    def epoch(self) -> int:
        return self.store.epoch

    @property
    def ledger(self) -> Ledger:
        """The SQLite store, for the HA node's few direct uses (until it speaks to `store` alone)."""
        assert isinstance(self.store, Ledger)
        return self.store

    async def run(self) -> str:
        """Main loop until asked to stop; returns why it stopped."""
        side_tasks = [
            asyncio.create_task(self._periodic(self.rescan_interval, self.rescan), name="rescan"),
            asyncio.create_task(self._periodic(0.5, self._sample_tick), name="sample"),
            asyncio.create_task(self._flusher(), name="flusher"),
            asyncio.create_task(self._periodic(3600.0, self._retention_tick, first=60.0), name="retention"),
            asyncio.create_task(self._periodic(1.0, self._check_db_file), name="dbwatch"),
        ]
        try:
            while not self._stop.is_set():
                await self.iterate()
                await self._sleep_until_next()
        except FencedError:
            log.error("deposed: the database holds a newer epoch; stopping without further writes")
            self.stop_reason = "fenced"
        except StoreError as exc:
            self._store_fatal(exc)
        finally:
            self._stop.set()  # from here on, command() refuses instead of queueing
            for task in side_tasks:
                task.cancel()
            for task in side_tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for cmd in self._commands:
                if not cmd.reply.done():
                    cmd.reply.set_result({"ok": False, "error": "scheduler is stopping"})
            for executor in self._executors():
                with contextlib.suppress(Exception):
                    await executor.aclose()
            if self.stop_reason not in ("fenced", "store_fatal"):
                with contextlib.suppress(VigilError):
                    await self.store.flush()
                    await self.store.commit([i.CleanStop()])
            await self.store.close()
            self.high_water.close()
        return self.stop_reason

    async def _periodic(self, interval: float, fn: Callable[[], Awaitable[None]], first: float | None = None) -> None:
        await asyncio.sleep(interval if first is None else first)
        while True:
            try:
                await fn()
            except FencedError:
                self.request_stop("fenced")
                return
            except StoreRetryableError:
                pass  # logged once by the ledger; the next tick tries again
            except StoreError as exc:
                self._store_fatal(exc)
                return
            except Exception:
                log.exception("periodic task failed")
            await asyncio.sleep(interval)

    def store_fault(self, exc: StoreError) -> None:
        """A store fault in a side task (an executor's): fenced, or one the ledger cannot outlive."""
        if isinstance(exc, FencedError):
            self.request_stop("fenced")
        else:
            self._store_fatal(exc)

    def _store_fatal(self, exc: StoreError) -> None:
        """A fault the ledger cannot outlive: stop; the node ends the process (exit != 0)."""
        if self.fatal is None:
            # A file removed or emptied under us often shows first as "corrupt": name the cause.
            self.fatal = self.store.lost_error() or exc
        self.request_stop("store_fatal")

    async def _check_db_file(self) -> None:
        lost = self.store.lost_error()
        if lost is not None:
            raise lost

    async def _flusher(self) -> None:
        while True:
            await self.store.wait_for_deferred()
            await asyncio.sleep(0.02)  # gather a few updates per transaction
            try:
                await self.store.flush()
            except FencedError:
                self.request_stop("fenced")
                return
            except StoreRetryableError:
                # Kept for the next attempt (the main loop's next write carries them too); the
                # ledger logged the fault once.
                await asyncio.sleep(max(0.05, self.store.health.wait(time.monotonic())))
            except StoreError as exc:
                self._store_fatal(exc)
                return

    async def _sleep_until_next(self) -> None:
        # At most a second, so a stepped wall clock is noticed within one.
        timeout = 1.0
        mono = self.clock.monotonic()
        backoff = self.store.health.wait(time.monotonic())
        if backoff > 0:
            # Backing off after a store fault: due fires and retries wait too (trying sooner would
            # only spin); deadlines do not.
            timeout = backoff
        else:
            if self._fire_heap:
                timeout = min(timeout, self._fire_heap[0][0] - self.clock.now().timestamp())
            if self._retry_heap:
                timeout = min(timeout, self._retry_heap[0][0] - mono)
        if self._deadline_heap:
            timeout = min(timeout, self._deadline_heap[0][0] - mono)
        timeout = max(0.0, timeout)
        if timeout > 0 and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    # ---------------------------------------------------------------- clock

    def _read_clock(self) -> tuple[datetime, float]:
        """Wall and monotonic time now; a step of the wall clock since the last look is handled here."""
        now, mono = self.clock.now(), self.clock.monotonic()
        mark, self._clock_mark = self._clock_mark, (now, mono)
        if mark is None:
            return now, mono
        skew = (now - mark[0]).total_seconds() - (mono - mark[1])
        if abs(skew) > CLOCK_JUMP_TOLERANCE_S:
            self._restate_starts(now, mono)
        if skew < -CLOCK_JUMP_TOLERANCE_S:
            self._on_clock_back(-skew, now)
        elif skew > CLOCK_JUMP_TOLERANCE_S:
            cause = f"clock jumped forward {_format_jump(skew)}"
            log.warning(
                "wall clock jumped forward %s; the fires it passed follow each job's catchup", _format_jump(skew)
            )
            self._forward_jumps.append(ForwardJump(mark[0], now, skew, cause))
        return now, mono

    def _restate_starts(self, now: datetime, mono: float) -> None:
        """Runs this process started, re-dated in the new timeline so durations shown stay true."""
        for info in self.runs.values():
            if info.started_mono is None or info.state is not RunState.RUNNING:
                continue
            started = now - timedelta(seconds=mono - info.started_mono)
            if info.deadline is not None and info.deadline_mono is not None:
                info.deadline = now + timedelta(seconds=info.deadline_mono - mono)
            self._carry.intents.append(i.StartRestated(info.id, started, info.deadline))

    def _on_clock_back(self, seconds: float, now: datetime) -> None:
        log.warning(
            "wall clock went back %s: schedules continue from %s; fire times that already ran are not run again",
            _format_jump(seconds),
            iso(now),
        )
        self.started_at -= timedelta(seconds=seconds)  # the takeover, in the new timeline
        self._forward_jumps = deque((jump for jump in self._forward_jumps if jump[1] <= now), maxlen=8)
        self._collisions_noted.clear()
        self._restart_schedules(now, self._carry)
        self._wake.set()

    def _restart_schedules(self, now: datetime, batch: Batch) -> None:
        """After the wall clock went back: a last fire "in the future" must not hold fires back."""
        for name, last in list(self.last_fire.items()):
            if last > now:
                self.last_fire[name] = now
                batch.intents.append(i.LastFire(name, now))
        for name, trigger in self.triggers.items():
            self._generation[name] += 1  # drops the heap entries computed on the old timeline
            self._push_fire(name, trigger.next_fire(now))
            batch.intents.append(i.NextFire(name, self.next_fire[name]))

    # ---------------------------------------------------------------- state loading

    async def _load_state(self) -> None:
        start = await self.store.start_state()
        in_db = max(start.max_run_id, start.run_id_mark)  # the mark keeps pruned ids
        seen = self.high_water.mark
        in_dirs = max(run_dir_ids(self.paths), default=0)  # high-water may lag (a failed write)
        # Run ids continue above every id used before, whatever the database remembers.
        self.next_id = max(in_db, seen.run_id, in_dirs) + 1
        if in_db < max(seen.run_id, in_dirs):
            # Ids this state directory used (high-water, run directories) that the database never
            # recorded: restored or replaced, also with an unchanged epoch.
            self.restored = True
        self.high_water.raise_to(run_id=in_db)
        if self.restored:
            self.store.defer(i.RunIdMark(self.next_id - 1))  # said once
            log.warning(
                "the state database is older than this state directory (restored or replaced): epoch "
                "continues at %d, run ids at %d; the schedule restarts from now (fires since the backup "
                "are neither caught up nor recorded as missed)",
                self.epoch,
                self.next_id,
            )
        for name, state in start.jobs.items():
            if state.paused:
                self.paused.add(name)
            if state.last_fire is not None and not self.restored:
                self.last_fire[name] = state.last_fire
        self.last_success.update(start.last_success)

    def _settle_stored_fires(self, result: ScanResult, now: datetime) -> list[i.Intent]:
        """Stored last fires that must not be trusted at start: of absent jobs, or ahead of the clock."""
        intents: list[i.Intent] = []
        for name in sorted(set(self.last_fire) - set(result.jobs)):
            # Not loaded now: if its file comes back, the time it was away is not missed.
            del self.last_fire[name]
            intents.append(i.LastFire(name, None))
        ahead = {name: last for name, last in self.last_fire.items() if last > now}
        if ahead:
            worst = max((last - now).total_seconds() for last in ahead.values())
            log.warning(
                "the wall clock is up to %s behind the last recorded fire of %d job(s): it went back; "
                "schedules continue from %s and fire times that already ran are not run again",
                _format_jump(worst),
                len(ahead),
                iso(now),
            )
            for name in ahead:
                self.last_fire[name] = now
                intents.append(i.LastFire(name, now))
        return intents

    async def _reconcile(self, now: datetime) -> None:
        """Settle every run a previous active left open: each executor takes over its own."""
        local = self.local
        assert local is not None
        batch = Batch()
        for run in await self.store.open_runs():
            info = RunInfo(
                id=run.id,
                job=run.job,
                scheduled_for=run.scheduled_for,
                attempt=run.attempt,
                trigger=run.trigger,
                state=run.state,
                kill_requested=run.kill_requested,
                deadline=run.deadline,
                not_before=run.not_before,
                agent=run.agent,
            )
            if run.agent and self.agents is not None and info.state is not RunState.PENDING:
                self._track(info, active=True)
                self.agents.adopt(info)  # its end, whatever it is, comes as a finished run
                continue
            restored_queued = self.restored and info.state in (RunState.PENDING, RunState.WAITING)
            if restored_queued and not self.paths.run_dir(info.id).exists():
                # Queued when the backup was taken; what became of it is not known here, and the
                # schedule restarts from now (docs/ha.md, "Restoring a backup").
                self._track(info)
                reason = "queued when the backup was taken; not started after the restore"
                self._finish_run(info, RunState.SKIPPED, reason, None, now, batch)
                continue
            if info.state in (RunState.PENDING, RunState.WAITING) and not restored_queued:
                self._track(info)
                if info.not_before is not None:
                    wait = (info.not_before - now).total_seconds()
                    job = self.jobs.get(info.job)
                    if job is not None and info.attempt > 1:
                        # Never longer than its delay: a clock that went back must not postpone it.
                        wait = min(wait, schedule.retry_delay(job.retry_delay, info.attempt - 1))
                    heapq.heappush(self._retry_heap, (self.clock.monotonic() + wait, info.id))
                else:
                    self.queued[info.job].append(info.id)
                continue
            adoption = local.adopt(info)
            self._track(info)
            if adoption.outcome is Adopted.NEVER_STARTED and self.restored:
                # Open in the backup, so a later scheduler handled it; its directory is gone
                # (pruned?), so whether it ran is unknown. Never run it a second time.
                reason = "open in the restored database but its run directory is gone; not re-run"
                self._finish_run(info, RunState.UNKNOWN, reason, None, now, batch)
            elif adoption.outcome is Adopted.NEVER_STARTED:
                log.info("run %d never started; launching it now", info.id)
                batch.launches.append(info.id)
            elif adoption.outcome is Adopted.ENDING:
                log.warning("run %d: %s; ending its job process group", info.id, adoption.reason)
            elif adoption.outcome is Adopted.WATCHED:
                log.info("adopted run %d", info.id)
                if info.state is RunState.LAUNCHING:
                    # Its start (and deadline) were never recorded: the deferred write died with
                    # the previous active.
                    started = adoption.started_at or now
                    job = self.jobs.get(info.job)
                    if info.deadline is None and job is not None and job.timeout is not None:
                        info.deadline = started + timedelta(seconds=job.timeout)
                    batch.intents.append(i.RunStarted(info.id, started, info.deadline))
                    info.state = RunState.RUNNING
                self._arm_deadline(info)
                if info.kill_requested:
                    local.kill(info)
            elif adoption.outcome is Adopted.LOST:
                self._finish_run(info, RunState.UNKNOWN, adoption.reason, None, now, batch)
        await self._settle_unrecorded_runs(now, batch)
        for name in list(self.queued):
            # A queued run whose predecessor ended while no scheduler was active.
            self._start_queued(name, batch)
        await self._commit(batch, now)

    async def _settle_unrecorded_runs(self, now: datetime, batch: Batch) -> None:
        """Runs still going in `runs/` that the database has no row for: never left unmanaged.

        The database was restored, emptied or replaced while they ran. A live shim is adopted into
        a row from its `run.json` (its job's timeout counts from the shim's start); a job whose
        shim died is ended like any orphan. Finished ones are left as they are (docs/ha.md).
        """
        shims = self._shims()
        if shims is None:
            return  # only a shim executor leaves run directories
        dirs = run_dir_ids(self.paths)
        known = set(await self.store.run_states(dirs))
        for run_id in (d for d in dirs if d not in known):
            run_dir = self.paths.run_dir(run_id)
            decision = decide(gather_evidence(run_dir))
            if decision.action not in (Action.ADOPT, Action.TERMINATE):
                continue
            found = recorded_run(run_dir)
            why = "found running after the state database was restored or replaced (it had no row for it)"
            if found is None:
                log.warning(
                    "run directory %s: %s, and its run.json names no job; ending its job process group", run_dir, why
                )
                if decision.action is Action.TERMINATE:
                    shims.end_orphan(run_id, why)
                elif shims.adopt(run_id):
                    shims.kill(run_id)
                continue
            self.next_id = max(self.next_id, run_id + 1)
            info = self._new_row(
                batch,
                found.job,
                found.scheduled_for,
                RunState.RUNNING,
                "adopted",
                now,
                attempt=found.attempt,
                reason=why,
                run_id=run_id,
            )
            started = file_time(run_dir / "shim") or now
            job = self.jobs.get(found.job)
            if job is not None and job.timeout is not None:
                info.deadline = started + timedelta(seconds=job.timeout)
            batch.intents.append(i.StartRestated(run_id, started, info.deadline))
            if decision.action is Action.TERMINATE:
                cause = f"{why}; {decision.reason}"
                log.warning("run %d (job %s): %s; ending its job process group", run_id, found.job, cause)
                batch.after_commit.append(functools.partial(self._end_unrecorded, shims, run_id, cause))
            else:
                log.warning("run %d (job %s): %s; adopted it", run_id, found.job, why)
                batch.after_commit.append(functools.partial(self._adopt_unrecorded, shims, run_id))

    def _adopt_unrecorded(self, shims: LocalExecutor, run_id: int, new_ids: set[int]) -> None:
        info = self.runs.get(run_id)
        if not shims.adopt(run_id):
            self._finished.append(shims.collect(run_id))  # it ended meanwhile: its record tells
        elif run_id not in new_ids or info is None:
            # Its fire already has another row: it must not run on unrecorded.
            log.warning("run %d: its fire is already recorded under another id; ending its job process group", run_id)
            shims.kill(run_id)
        else:
            self._arm_deadline(info)

    def _end_unrecorded(self, shims: LocalExecutor, run_id: int, cause: str, new_ids: set[int]) -> None:
        shims.end_orphan(run_id, cause)

    def _shims(self) -> LocalExecutor | None:
        """The local shims, by run id (for runs in `runs/` the database has no row for)."""
        return self.local.local if isinstance(self.local, ShimExecutor) else None

    def _executors(self) -> list[Executor]:
        return [executor for executor in (self.local, self.agents) if executor is not None]

    def _executor_for(self, info: RunInfo) -> Executor | None:
        # Where the run went (its `agent`), not where its job points now (the file may have changed).
        if info.agent and self.agents is not None:
            return self.agents
        return self.local

    # ---------------------------------------------------------------- job folder

    def _apply_scan(self, result: ScanResult, now: datetime, *, initial: bool = False) -> list[i.Intent]:
        self.settings = result.settings
        for executor in self._executors():
            executor.configure(self.settings)
        errors: dict[str, str] = {}
        for err in result.errors:
            errors.setdefault(job_name_of(err.path, self.folder.root), err.format())
        new_messages = set(errors.values()) - set(self.job_errors.values())
        for message in sorted(new_messages):
            log.warning("job file error: %s", message)
        touched = set(result.changed) | set(result.removed) | (set(errors) ^ set(self.job_errors))
        self.job_errors = errors
        previous_jobs, self.jobs = self.jobs, dict(result.jobs)
        if initial:
            touched |= set(self.jobs)
        self.downstream = defaultdict(list)
        for job in self.jobs.values():
            for up in job.after:
                self.downstream[up].append(job.name)
        intents: list[i.Intent] = []
        for name in result.removed:
            self.triggers.pop(name, None)
            self.next_fire.pop(name, None)
            self._generation[name] += 1
            # Forgotten in the ledger too, so a re-added file (even after a restart) starts from then.
            if self.last_fire.pop(name, None) is not None:
                intents.append(i.LastFire(name, None))
        for name in (set(result.changed) | (set(self.jobs) if initial else set())) & set(self.jobs):
            job = self.jobs[name]
            trigger = schedule.trigger_for(job)
            self._generation[name] += 1
            if trigger is None:
                self.triggers.pop(name, None)
                self.next_fire[name] = None
                continue
            self.triggers[name] = trigger
            before = previous_jobs.get(name)
            new_schedule = before is not None and not initial and _schedule_of(before) != _schedule_of(job)
            if name not in self.last_fire or (new_schedule and self.last_fire[name] < now):
                # A job seen for the first time, or with a new schedule, is watched from now: fires
                # before it existed are not missed (nor fires its new schedule would have had).
                self.last_fire[name] = now
                intents.append(i.LastFire(name, now))
            self._push_fire(
                name,
                trigger.next_fire(max(self.last_fire[name], now) if not initial else self.last_fire[name]),
            )
        self._catalog_dirty |= touched
        return intents

    async def rescan(self) -> None:
        """Read the job folder again and record what changed (the `rescan` side task)."""
        result = await asyncio.to_thread(self.folder.scan)
        now, _ = self._read_clock()
        intents = self._apply_scan(result, now)
        if intents:
            try:
                await self.store.commit(intents)
            except StoreRetryableError:
                for intent in intents:
                    self.store.defer(intent)  # kept until a write succeeds
                raise
        await self._write_catalog()

    async def _write_catalog(self, *, full: bool = False) -> None:
        names = set(self.jobs) | set(self.job_errors) if full else set(self._catalog_dirty)
        self._catalog_dirty = set()
        if not names:
            return
        try:
            await self._write_catalog_of(names, full)
        except StoreRetryableError:
            self._catalog_dirty |= names  # written again at the next rescan
            raise

    async def _write_catalog_of(self, names: set[str], full: bool) -> None:
        intents: list[i.Intent] = [i.CatalogCleared()] if full else []
        for name in sorted(names):
            job = self.jobs.get(name)
            error = self.job_errors.get(name)
            if job is None:
                intents.append(i.CatalogDrop(name))
                if error:
                    intents.append(i.CatalogUpsert(name, "", "invalid", False, None, "", "", None, error))
                continue
            intents.append(
                i.CatalogUpsert(
                    name=name,
                    path=job.path,
                    schedule=job.schedule_text,
                    enabled=job.enabled,
                    agent=job.agent,
                    description=job.description,
                    tags=",".join(job.tags),
                    next_fire=self.next_fire.get(name),
                    error=error,
                )
            )
        await self.store.commit(intents)

    def _push_fire(self, name: str, when: datetime | None) -> None:
        self.next_fire[name] = when
        if when is None:
            return
        self._seq += 1
        heapq.heappush(self._fire_heap, (when.timestamp(), self._seq, name, self._generation[name]))

    # ---------------------------------------------------------------- main iteration

    async def iterate(self) -> None:
        """One loop iteration: run ends, deadlines, retries, fires and commands, in one commit."""
        now, mono = self._read_clock()
        if self.store.health.failing and self._commands:
            self._answer_commands_while_unwritable(now)
        if self.store.health.wait(time.monotonic()) > 0:
            # Backing off after a retryable store fault. Timeouts are still enforced: a kill needs
            # no write (its record is deferred).
            self._handle_deadlines(mono)
            return
        # Two parts, one transaction. `batch` is accounting (run ends, retries and queued runs
        # starting, kills): if the commit fails it is carried to the next attempt, never lost.
        # `work` is new work (fires, run/rerun/pause/resume): if the commit fails it is undone, so
        # the fires are due again and take the catch-up path, and the commands report the error.
        batch, self._carry = self._carry, Batch()
        self._handle_finished(now, batch)
        self._handle_deadlines(mono)
        self._handle_retries(mono, batch)
        work = Batch(first_id=self.next_id)
        self._handle_fires(now, work)
        commands, self._commands = self._commands, []
        replies: list[tuple[Command, dict[str, Any] | Exception]] = []
        for cmd in commands:
            try:
                replies.append((cmd, self._handle_command(cmd, now, batch if cmd.op == "kill" else work)))
            except VigilError as exc:
                replies.append((cmd, exc))
        last_id = self.next_id
        try:
            await self._commit(batch.then(work), now)
        except StoreRetryableError as exc:
            self._carry = batch.then(self._carry)
            self._undo(work, last_id)
            self._outage_cause = f"state database unavailable: {exc.kind}"
            for cmd, reply in replies:
                if cmd.reply.done():
                    continue
                if isinstance(reply, Exception):
                    cmd.reply.set_result({"ok": False, "error": str(reply)})
                elif cmd.op == "kill":
                    cmd.reply.set_result({"ok": True, **reply})  # sent; its record is carried
                else:
                    cmd.reply.set_result({"ok": False, "error": f"{exc}; try again when it is writable"})
            return
        except VigilError as exc:
            for cmd, _ in replies:
                if not cmd.reply.done():
                    cmd.reply.set_result({"ok": False, "error": str(exc)})
            raise
        if not self.store.health.failing:
            self._outage_cause = None
        for cmd, reply in replies:
            if cmd.reply.done():
                continue
            if isinstance(reply, Exception):
                cmd.reply.set_result({"ok": False, "error": str(reply)})
            else:
                cmd.reply.set_result({"ok": True, **reply})

    def _answer_commands_while_unwritable(self, now: datetime) -> None:
        """While a retryable store fault lasts, answer commands at once instead of after the backoff
        and another busy timeout (the client would have given up): those that need a write are
        refused, a kill is carried out and its record carried to the first write that succeeds."""
        fault = self.store.health.fault
        commands, self._commands = self._commands, []
        for cmd in commands:
            if cmd.reply.done():
                continue
            if cmd.op != "kill":
                cmd.reply.set_result({"ok": False, "error": f"{fault}; try again when it is writable"})
                continue
            try:
                reply = self._handle_command(cmd, now, self._carry)
            except VigilError as exc:
                cmd.reply.set_result({"ok": False, "error": str(exc)})
            else:
                cmd.reply.set_result({"ok": True, **reply})

    def _undo(self, work: Batch, last_id: int) -> None:
        """Forget new work whose commit failed: nothing of it was written or launched."""
        for row in work.rows:
            self._untrack(row)
        for name, before in work.last_fire_before.items():
            if before is None:
                self.last_fire.pop(name, None)
            else:
                self.last_fire[name] = before
        for name, due in work.due_at.items():
            self._push_fire(name, due)
        for name, was_paused in work.paused_before.items():
            if was_paused:
                self.paused.add(name)
            else:
                self.paused.discard(name)
        if self.next_id == last_id:  # no id handed out meanwhile: reuse them, keep ids dense
            self.next_id = work.first_id

    async def _commit(self, batch: Batch, now: datetime) -> None:
        if not (batch.rows or batch.intents or batch.launches):
            return
        new_ids = await self.store.commit([*batch.rows, *batch.intents])
        if new_ids:
            # After the commit (a failed one must not look like a restore later), before any launch;
            # only ids the ledger took: an ignored row's id (its fire time had a run) was never used.
            self.high_water.raise_to(run_id=max(new_ids))
        for hook in batch.after_commit:
            hook(new_ids)
        collided: set[str] = set()
        for row in batch.rows:
            if row.id not in new_ids:
                # Already in the ledger: that fire was handled before; never launch it twice.
                self._untrack(row)
                self._note_collision(row)
                collided.add(row.job)
                continue
            if row.state is RunState.LAUNCHING:
                self._launch(row.id, now)
        for run_id in batch.launches:
            self._launch(run_id, now)
        for job in sorted(collided):
            # An ignored row may have been the run its job's queue waited for (caught-up fires queue
            # behind each other): the next one starts with the next commit, not never.
            self._start_queued(job, self._carry)
            self._wake.set()

    def _untrack(self, row: i.NewRun) -> None:
        """Forget a new run whose row was not written (its commit failed, or its fire had a row)."""
        self.runs.pop(row.id, None)
        self.active_by_job[row.job].discard(row.id)
        with contextlib.suppress(ValueError):
            self.queued[row.job].remove(row.id)

    def _note_collision(self, row: i.NewRun) -> None:
        # After the wall clock went back, a fire time can come round again; the ledger keeps one run
        # per job and fire time, so it is not run twice. Said once per job and clock step.
        job = row.job
        level = logging.DEBUG if job in self._collisions_noted else logging.WARNING
        self._collisions_noted.add(job)
        log.log(
            level,
            "job %s: fire time %s already has a run in the ledger (the wall clock went back?); "
            "it is not run twice, later fire times run as scheduled",
            job,
            iso(row.scheduled_for),
        )

    def _launch(self, run_id: int, now: datetime) -> None:
        info = self.runs.get(run_id)
        if info is None:
            return
        job = self.jobs.get(info.job)
        if job is None:
            self._finish_later(info, RunState.FAILED, f"job {info.job} no longer exists", now)
            return
        info.agent = job.agent  # a pending run launches as its job is configured now
        executor = self._executor_for(info)
        assert executor is not None
        try:
            executor.launch(info, job)
        except LaunchError as exc:  # e.g. a missing workdir: the message is the reason
            self._finish_later(info, RunState.FAILED, str(exc), now)
            return
        except (OSError, ValueError) as exc:
            self._finish_later(info, RunState.FAILED, f"could not start the run's shim: {exc}", now)
            return
        if executor is not self.local:
            return  # a remote run's start is recorded by its executor once the agent confirms it
        info.state = RunState.RUNNING
        info.started_mono = self.clock.monotonic()
        if job.timeout is not None:
            info.deadline = now + timedelta(seconds=job.timeout)
            info.deadline_mono = info.started_mono + job.timeout  # a wall-clock step cannot move it
            self._arm_deadline(info)
        self.store.defer(i.RunStarted(info.id, now, info.deadline))

    def retake_above(self, seen: int) -> bool:
        """Stop, keeping the leader lock, to take the leadership again above epoch `seen` (ha.py).

        False, doing nothing, when no re-take is allowed now (see Node._active)."""
        if not self.epoch_retake_allowed:
            return False
        self.epoch_floor = max(self.epoch_floor, seen)
        self.request_stop("epoch")
        return True

    def skip_run_ids(self, used: int) -> None:
        """Run ids up to `used` are taken elsewhere (an agent has seen them): continue above."""
        if used >= self.next_id:
            log.warning("run ids up to %d are already used (reported by an agent); continuing at %d", used, used + 1)
            self.next_id = used + 1
            self.high_water.raise_to(run_id=used)
            self.store.defer(i.RunIdMark(used))

    def _arm_deadline(self, info: RunInfo) -> None:
        if info.deadline is None:
            return
        if info.deadline_mono is None:  # a deadline set by an earlier process: what is left of it
            left = (info.deadline - self.clock.now()).total_seconds()
            info.deadline_mono = self.clock.monotonic() + left
        heapq.heappush(self._deadline_heap, (info.deadline_mono, info.id))

    def _track(self, info: RunInfo, *, active: bool = False) -> None:
        """An open run; `active` counts it against its job's overlap whatever its state."""
        self.runs[info.id] = info
        if active or info.state in (RunState.LAUNCHING, RunState.RUNNING):
            self.active_by_job[info.job].add(info.id)

    def _new_row(
        self,
        batch: Batch,
        job: str,
        scheduled_for: datetime,
        state: RunState,
        trigger: str,
        now: datetime,
        *,
        attempt: int = 1,
        reason: str | None = None,
        not_before: datetime | None = None,
        run_id: int | None = None,
    ) -> RunInfo:
        if run_id is None:  # otherwise an id already used (a run found in its directory)
            run_id = self.next_id
            self.next_id += 1
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
        )
        if not state.terminal:
            self._track(info)
        return info

    def _handle_fires(self, now: datetime, batch: Batch) -> None:
        now_ts = now.timestamp()
        due: set[str] = set()
        while self._fire_heap and self._fire_heap[0][0] <= now_ts:
            _, _, name, gen = heapq.heappop(self._fire_heap)
            if gen == self._generation[name] and name in self.triggers:
                due.add(name)
        for name in sorted(due):
            job = self.jobs[name]
            trigger = self.triggers[name]
            last = self.last_fire.get(name, now)
            fires, dropped = schedule.fires_between(trigger, last, now, self.settings.max_missed_rows)
            if not fires:
                self._push_fire(name, trigger.next_fire(max(last, now)))
                continue
            previous_fire = last
            batch.last_fire_before.setdefault(name, self.last_fire.get(name))
            batch.due_at.setdefault(name, fires[0])
            self.last_fire[name] = fires[-1]
            batch.intents.append(i.LastFire(name, fires[-1]))
            batch.intents.append(i.NextFire(name, trigger.next_fire(now)))
            self._push_fire(name, trigger.next_fire(now))
            # The newest fire, if on time, runs whatever `catchup` says; older ones are late and
            # follow the policy, each missed one naming why it was late.
            plans = schedule.plan_missed_fires(
                fires,
                now,
                job.catchup,
                job.catchup_window,
                cause=self._gap_cause,
                on_time_s=ON_TIME_TOLERANCE_S,
            )
            if dropped:
                self._note_dropped(batch, name, fires[0], dropped, self._gap_cause(fires[0]), now)
            if not job.enabled:
                continue
            # Fires caught up together run one after another, oldest first, whatever `overlap` says:
            # each waits for the one before it instead of being skipped because of it.
            catching_up = sum(plan.action == "run" for plan in plans) > 1
            for plan in plans:
                if plan.action == "missed":
                    self._new_row(batch, name, plan.scheduled_for, RunState.MISSED, "schedule", now, reason=plan.reason)
                elif catching_up:
                    self._fire(batch, job, plan.scheduled_for, "schedule", now, since=previous_fire, catchup_queue=True)
                else:
                    self._fire(batch, job, plan.scheduled_for, "schedule", now, since=previous_fire)

    def _gap_cause(self, fire: datetime) -> str:
        """Why `fire`, handled late, was not handled on time."""
        for jump in reversed(self._forward_jumps):
            # The step came somewhere between the look before it and the look that saw it. It passed
            # over the fires due in that span (not those already late at the look before), and it
            # is their cause if it is most of the span; otherwise the loop was mostly just not looking.
            if not jump.seen_from - timedelta(seconds=ON_TIME_TOLERANCE_S) < fire <= jump.to:
                continue
            if 2 * jump.seconds >= (jump.to - jump.seen_from).total_seconds():
                return jump.cause
        if fire <= self.started_at:
            return self.takeover_cause
        if self._outage_cause is not None:
            return self._outage_cause
        return "scheduler overloaded"

    def _note_dropped(
        self, batch: Batch, name: str, first_kept: datetime, dropped: int, cause: str, now: datetime
    ) -> None:
        self._new_row(
            batch,
            name,
            first_kept - timedelta(microseconds=1),
            RunState.MISSED,
            "schedule",
            now,
            reason=f"{cause}: {dropped} earlier fires not recorded individually (max_missed_rows)",
        )

    def _fire(
        self,
        batch: Batch,
        job: JobSpec,
        scheduled_for: datetime,
        trigger: str,
        now: datetime,
        *,
        since: datetime | None = None,
        attempt: int = 1,
        reason: str | None = None,
        overlap: Overlap | None = None,
        catchup_queue: bool = False,
    ) -> RunInfo:
        """One fire of a job: launched, queued or skipped according to its policies.

        `catchup_queue`: one of several fires caught up at once; it queues behind the job's open
        runs (`max_queued` does not apply: the catch-up is already bounded by its window).
        """
        name = job.name

        def skipped(reason: str) -> RunInfo:
            return self._new_row(batch, name, scheduled_for, RunState.SKIPPED, trigger, now, reason=reason)

        if trigger == "schedule" and name in self.paused:
            return skipped("job paused")
        if trigger == "schedule" and job.after:
            ok, unmet = schedule.upstream_satisfied(job.after, self.last_success, since)
            if not ok:
                return skipped("after: not yet succeeded since the previous run: " + ", ".join(unmet))
        # Only runs that are still open count (and are named in a reason); the run ends of this
        # iteration were handled before its fires, so these are the job's runs as of now.
        active = sorted(run_id for run_id in self.active_by_job[name] if run_id in self.runs)
        queued = [run_id for run_id in self.queued[name] if run_id in self.runs]
        policy = Overlap.QUEUE if catchup_queue else overlap or job.overlap
        decision = schedule.overlap_decision(policy, len(active) + len(queued))
        if decision == "skip":
            return skipped(f"overlap=skip: {_describe_busy(active, queued, job)}")
        if decision == "queue":
            blocking = queued[-1] if queued else active[0]
            if not catchup_queue and len(queued) >= job.max_queued:
                # Caught-up fires are not held to the cap, so a longer queue holds some of them.
                included = ", caught-up fires included" if len(queued) > job.max_queued else ""
                return skipped(
                    f"overlap=queue: queue full ({len(queued)} waiting{included}, max_queued = {job.max_queued})"
                )
            why = "catchup=all" if catchup_queue else "overlap=queue"
            info = self._new_row(
                batch,
                name,
                scheduled_for,
                RunState.PENDING,
                trigger,
                now,
                attempt=attempt,
                reason=f"{why}: waiting for run {blocking}",
            )
            self.queued[name].append(info.id)
            return info
        return self._new_row(
            batch, name, scheduled_for, RunState.LAUNCHING, trigger, now, attempt=attempt, reason=reason
        )

    def _handle_retries(self, mono: float, batch: Batch) -> None:
        while self._retry_heap and self._retry_heap[0][0] <= mono:
            _, run_id = heapq.heappop(self._retry_heap)
            info = self.runs.get(run_id)
            if info is None or info.state is not RunState.PENDING:
                continue
            self._start_pending(info, batch)

    def _start_pending(self, info: RunInfo, batch: Batch) -> None:
        info.state = RunState.LAUNCHING
        self.active_by_job[info.job].add(info.id)
        batch.intents.append(i.RunLaunching(info.id))
        batch.launches.append(info.id)

    def _handle_deadlines(self, mono: float) -> None:
        while self._deadline_heap and self._deadline_heap[0][0] <= mono:
            _, run_id = heapq.heappop(self._deadline_heap)
            info = self.runs.get(run_id)
            if info is None or info.state is not RunState.RUNNING or info.kill_requested:
                continue
            info.kill_requested = "timeout"
            self.store.defer(i.KillRequested(run_id, "timeout"))
            self._kill_running(info)

    def _kill_running(self, info: RunInfo) -> None:
        executor = self._executor_for(info)
        if executor is not None:
            executor.kill(info)

    # ---------------------------------------------------------------- run ends

    def _on_shim_exit(self, result: ShimExit) -> None:
        self._finished.append(result)
        self._wake.set()

    def _handle_finished(self, now: datetime, batch: Batch) -> None:
        finished, self._finished = self._finished, []
        for result in finished:
            info = self.runs.get(result.run_id)
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
            elif result.exit_code == 0:
                state, reason = RunState.SUCCEEDED, None
            else:
                state, reason = RunState.FAILED, f"exit code {result.exit_code}"
            self._finish_run(info, state, reason, result, now, batch)

    def _finish_later(self, info: RunInfo, state: RunState, reason: str, now: datetime) -> None:
        """End a run from inside a commit; what follows (retry, queued run) goes into the next one."""
        self._finish_run(info, state, reason, None, now, self._carry)
        self._wake.set()

    def _finish_run(
        self,
        info: RunInfo,
        state: RunState,
        reason: str | None,
        result: ShimExit | None,
        now: datetime,
        batch: Batch,
    ) -> None:
        info.state = state
        self.runs.pop(info.id, None)
        self.active_by_job[info.job].discard(info.id)
        with contextlib.suppress(ValueError):
            self.queued[info.job].remove(info.id)
        batch.intents.append(
            i.RunFinished(
                run_id=info.id,
                state=state,
                reason=reason,
                exit_code=result.exit_code if result else None,
                ended_at=now,
                pid=result.job_pid if result else None,
                cpu_s=result.cpu_s if result else None,
                peak_rss=result.peak_rss if result else None,
            )
        )
        job = self.jobs.get(info.job)
        if job is not None and state is RunState.SUCCEEDED:
            self.last_success[info.job] = now
            self._trigger_downstream(info.job, now, batch)
        elif job is not None and schedule.should_retry(str(state), info.attempt, job.retries):
            delay = schedule.retry_delay(job.retry_delay, info.attempt)
            retry = self._new_row(
                batch,
                info.job,
                info.scheduled_for,
                RunState.PENDING,
                "retry",
                now,
                attempt=info.attempt + 1,
                not_before=now + timedelta(seconds=delay),
                reason=f"retry {info.attempt + 1} of {job.retries + 1} after {state} (in {delay:g}s)",
            )
            heapq.heappush(self._retry_heap, (self.clock.monotonic() + delay, retry.id))
        # If the job is gone, each queued run then fails saying so.
        self._start_queued(info.job, batch, after=info.id)

    def _start_queued(self, name: str, batch: Batch, *, after: int | None = None) -> None:
        if self.active_by_job[name] or not self.queued[name]:
            return
        while self.queued[name]:
            info = self.runs.get(self.queued[name].popleft())
            if info is not None and info.state is RunState.PENDING:
                # Its "waiting for run N" reason is over: say what it waited for instead.
                reason = f"started after run {after} ended" if after is not None else "started from the queue"
                info.state = RunState.LAUNCHING
                self.active_by_job[info.job].add(info.id)
                batch.intents.append(i.RunLaunching(info.id, reason))
                batch.launches.append(info.id)
                return

    def _trigger_downstream(self, upstream: str, now: datetime, batch: Batch) -> None:
        for name in self.downstream.get(upstream, []):
            job = self.jobs.get(name)
            if job is None or not job.enabled or name in self.paused or name in self.triggers:
                continue  # scheduled jobs check `after` at their own fires
            ok, _ = schedule.upstream_satisfied(job.after, self.last_success, self.last_fire.get(name))
            if ok:
                self.last_fire[name] = now
                batch.intents.append(i.LastFire(name, now))
                self._fire(batch, job, now, "after", now, reason=f"after: {', '.join(job.after)} succeeded")

    # ---------------------------------------------------------------- periodic

    async def _sample_tick(self) -> None:
        for executor in self._executors():
            executor.sample()

    async def _retention_tick(self) -> None:
        cutoff = self.clock.now() - timedelta(seconds=self.settings.retention)
        await self.prune(cutoff)

    async def prune(self, cutoff: datetime) -> int:
        ids = await self.store.prunable_runs(cutoff)
        if not ids:
            return 0
        for chunk_start in range(0, len(ids), 500):
            chunk = tuple(ids[chunk_start : chunk_start + 500])
            await self.store.commit([i.RunsPruned(chunk), i.RunIdMark(max(chunk))])  # pruned ids stay used
            for run_id in chunk:
                _remove_tree(self.paths.run_dir(run_id))
        return len(ids)

    # ---------------------------------------------------------------- commands

    async def command(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run an operator command inside the main loop and return its reply.

        `args["user"]`, which the audit records, is set by the control server from the socket's
        peer credentials (engine/ha/node.py): a request cannot choose it.
        """
        if op in self.extra_handlers:
            return await self.extra_handlers[op](args)
        if op == "prune":
            user = str(args.get("user", "?"))
            cutoff = self.clock.now() - timedelta(seconds=_prune_age(args.get("older_than_s")))
            if self.store.health.failing:
                raise VigilError(f"{self.store.health.fault}; try again when it is writable")
            try:
                count = await self.prune(cutoff)
                audit = i.Audit(self.clock.now(), user, "prune", f"<{iso(cutoff)}", f"deleted {count} runs")
                await self.store.commit([audit])
            except StoreRetryableError as exc:
                raise VigilError(f"{exc}; try again when it is writable") from exc
            return {"ok": True, "deleted": count}
        if op == "rerun":
            repeated = await self.store.run(_run_id(args))
            if repeated is None:
                return {"ok": False, "error": f"no run with id {args.get('run_id')}"}
            args = {**args, "job": repeated.job}
        if self._stop.is_set():
            # The loop has stopped or is about to: nothing would ever answer this command.
            return {"ok": False, "error": "scheduler is stopping"}
        if self.store.health.failing and op != "kill":
            # Refused now: the loop may be waiting a whole busy timeout on its next write attempt,
            # and the client would give up first. A kill needs no write; the loop carries it out.
            return {"ok": False, "error": f"{self.store.health.fault}; try again when it is writable"}
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._commands.append(Command(op, args, future))
        self._wake.set()
        return await future

    def _handle_command(self, cmd: Command, now: datetime, batch: Batch) -> dict[str, Any]:
        user = str(cmd.args.get("user", "?"))
        # A rerun names the run it repeats (its job is in the result and in the new row).
        key = "run_id" if cmd.op in ("kill", "rerun") else "job"
        target = str(cmd.args.get(key) or "")

        def audit(result: str) -> None:
            batch.intents.append(i.Audit(now, user, cmd.op, target, result))

        try:
            reply = self._dispatch_command(cmd.op, cmd.args, now, batch)
        except VigilError as exc:
            audit(f"refused: {exc}")
            raise
        audit(reply.pop("audit", "ok"))
        return reply

    def _dispatch_command(self, op: str, args: dict[str, Any], now: datetime, batch: Batch) -> dict[str, Any]:
        if op in ("run", "pause", "resume"):
            name = str(args.get("job"))
            job = self.jobs.get(name)
            if job is None:
                raise NotFoundError(f"no job named {show(name)}")
            if op == "run":
                fired = self._fire(
                    batch,
                    job,
                    now,
                    "manual",
                    now,
                    overlap=Overlap.ALLOW,
                    reason=f"run now by {args.get('user', '?')}",
                )
                return {"run_id": fired.id, "audit": f"run {fired.id}"}
            paused = op == "pause"
            batch.paused_before.setdefault(name, name in self.paused)
            if paused:
                self.paused.add(name)
            else:
                self.paused.discard(name)
            batch.intents.append(i.Paused(name, paused))
            return {"job": name, "paused": paused}
        if op in ("kill", "rerun"):
            run_id = _run_id(args)
            if op == "rerun":
                return self._rerun(run_id, args, now, batch)
            info = self.runs.get(run_id)
            if info is None:
                raise NotFoundError(f"run {run_id} is not running (it may have ended already)")
            info.kill_requested = "kill"
            batch.intents.append(i.KillRequested(run_id, "kill"))
            if info.state in (RunState.PENDING, RunState.WAITING):
                self._finish_run(info, RunState.KILLED, "cancelled by operator before it started", None, now, batch)
            else:
                self._kill_running(info)
            return {"run_id": run_id}
        if op == "status":
            return {"status": self.status()}
        raise VigilError(f"unknown command {show(op)}")

    def _rerun(self, run_id: int, args: dict[str, Any], now: datetime, batch: Batch) -> dict[str, Any]:
        job_name = args.get("job")
        job = self.jobs.get(str(job_name)) if job_name else None
        if job is None:
            raise NotFoundError(f"run {run_id}'s job {show(job_name)} is not loaded")
        info = self._fire(
            batch,
            job,
            now,
            "rerun",
            now,
            overlap=Overlap.ALLOW,
            reason=f"rerun of run {run_id} by {args.get('user', '?')}",
        )
        return {"run_id": info.id, "audit": f"rerun as {info.id}"}

    def status(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "jobs": len(self.jobs),
            "open_runs": len(self.runs),
            "paused": sorted(self.paused),
            "config_errors": len(self.job_errors),
        }


def _run_id(args: dict[str, Any]) -> int:
    # A malformed id from a hand-made client is refused; raised in the loop, it would stop it, and
    # one beyond SQLite's integers would fail in the ledger.
    run_id = as_row_id(args.get("run_id"))
    if run_id is None:
        raise NotFoundError(f"no run with id {show(args.get('run_id'))}")
    return run_id


def _describe_busy(active: list[int], queued: list[int], job: JobSpec) -> str:
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


def _schedule_of(job: JobSpec) -> tuple[Any, ...]:
    return (job.cron, job.every, job.at, job.timezone)


def _format_jump(seconds: float) -> str:
    """A clock step for people: "1h 0m", "5m 30s", "2.5s"."""
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    if whole >= 60:
        return f"{whole // 60}m {whole % 60}s"
    return f"{seconds:.1f}s"


def _remove_tree(path: os.PathLike[str]) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _prune_age(given: object) -> float:
    """`older_than_s` of a prune request, checked: raised later, a bad one would end the connection
    without an answer (`vigil db prune` checks it first; this is for hand-made clients)."""
    if isinstance(given, bool) or not isinstance(given, int | float | str):
        raise VigilError(f"prune needs older_than_s, a number of seconds, got {json.dumps(given, default=str)[:60]}")
    try:
        seconds = float(given)
    except (ValueError, OverflowError):
        raise VigilError(f"prune needs older_than_s, a number of seconds, got {json.dumps(given)[:60]}") from None
    if not 0 <= seconds <= MAX_DURATION_S:  # also NaN; past 100 years the cut-off is no datetime
        raise VigilError(
            f"prune: older_than_s {seconds:g} is out of range: from 0 to {MAX_DURATION_S:.0f} seconds "
            f"({MAX_DURATION_TEXT}) is accepted"
        )
    return seconds
