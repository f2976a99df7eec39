"""The active scheduler's loop: wake, iterate, commit, launch, stop.

Order of every launch: the row is committed (with the job's `last_fire`) in one transaction, then
the run starts. A crash between the two leaves a `launching` row and no shim, which reconciliation
launches once; a crash after leaves a shim, which is adopted. Either way the fire runs once.

What is decided where: the planner (engine/run/planner.py) turns fires, retries and ends into a
batch of intents and launches; the catalog (catalog.py) applies job folder scans; the commands
(commands.py) carry out operator requests; reconciliation (reconcile.py) settles what a previous
active left open. This module owns the I/O: the Store, the Executors, the job folder, the clock.

Layer: run. May import the base modules, config, schedule, store, exec, agents (the dispatcher,
built here) and outbox (the notification deliverer, run here while active); never ha/ or cli/.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import itertools
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.clock import Clock, SystemClock, iso
from engine.config import JobFolder, ScanResult
from engine.control import refusal
from engine.errors import (
    FencedError,
    LaunchError,
    NotFoundError,
    SchedulerStoppingError,
    StoreError,
    StoreRetryableError,
    UnwritableError,
    VigilError,
)
from engine.exec.port import Executor, RunContext, RunInfo, ShimExit
from engine.exec.rundirs import OUTPUT_FILE, HighWaterFile, read_output_file, run_dir_ids
from engine.exec.runner import ShimExecutor
from engine.ids import as_row_id
from engine.linux import ClockSetWatch, FileWatch, wait_readable
from engine.model import LeaderRow, Run, RunState, Settings, to_json
from engine.notify import build
from engine.notify.events import Event
from engine.outbox.deliverer import Deliverer, run_dir_log_tail
from engine.paths import StatePaths
from engine.run.catalog import Catalog
from engine.run.commands import Command, Commands, Op, prune_age, run_id_of
from engine.run.planner import Batch, ForwardJump, Planner, format_jump
from engine.run.reconcile import Reconciler
from engine.run.table import RunTable
from engine.store import intents as i
from engine.store.abc import LeaderClaim, Store
from engine.store.sqlite.ledger import Ledger

if TYPE_CHECKING:
    from engine.agents.dispatcher import AgentDispatcher

log = logging.getLogger("vigil.scheduler")

#: Wall and monotonic clocks disagreeing by more than this between two loop iterations is a clock
#: step (NTP slews far slower: under a millisecond per second).
CLOCK_JUMP_TOLERANCE_S = 1.0
#: How long before a fire the loop stops waiting on epoll (millisecond steps) and sleeps precisely.
FIRE_WAKE_EARLY_S = 0.0015
#: The longest sleep of the loop with no open run, when the kernel tells it of clock steps (a
#: timerfd). Otherwise a second: a stepped wall clock is noticed within one, and so are what open runs
#: learn between iterations (an agent's confirmed start arms its warn_if_longer timer at the next).
LONG_SLEEP_S = 30.0
SHORT_SLEEP_S = 1.0
#: After the kernel reports a change in the job folder, wait this long (at most `rescan_interval`)
#: so that a save of several writes, or a checkout of many files, is one scan.
FOLDER_SETTLE_S = 0.1
#: The longest the loop launches runs without turning to other work (heartbeats, run ends, commands).
LAUNCH_SLICE_S = 0.02
#: The database file is looked at after the kernel reports a change of its name or content, at most
#: this often (a busy ledger writes it at every checkpoint)...
DB_CHECK_GAP_S = 1.0
#: ...and this often anyway (a change no event shows: a parent folder renamed), or every
#: DB_CHECK_GAP_S where inotify is unavailable.
DB_CHECK_EVERY_S = 30.0
#: The deliverer is woken by every commit of an event (`_wake_deliverer`); it looks at the outbox
#: this often anyway (rows another process may have queued), besides each retry's due time.
DELIVERER_POLL_S = 60.0
#: While runs are open, their executors sample them (peak RSS, log caps) this often.
SAMPLE_EVERY_S = 0.5

ExecutorFactory = Callable[[RunContext], Executor]


def _release_free_heap() -> None:
    """Give the C heap's free pages back to the system: glibc keeps them after a burst of allocations
    (about 5 MB after loading 10,000 jobs). A no-op where the C library has no `malloc_trim`."""
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:  # a Python that cannot dlopen (a static build)
        return
    if trim is not None:
        trim(0)


class Scheduler:
    """The active scheduler. Its collaborators may be injected: `store` (default: the SQLite ledger
    of `paths`), `folder` (default: the job folder `jobs_dir`), `clock`, and `local_executor`, which
    builds the executor of runs on this host once the loop is running (default: shims)."""

    def __init__(
        self,
        paths: StatePaths,
        jobs_dir: os.PathLike[str] | str,
        *,
        clock: Clock | None = None,
        rescan_interval: float = 1.0,
        store: Store | None = None,
        folder: JobFolder | None = None,
        local_executor: ExecutorFactory = ShimExecutor,
    ) -> None:
        self.paths = paths
        self.clock: Clock = clock or SystemClock()
        self.folder = folder if folder is not None else JobFolder(Path(jobs_dir))
        self.rescan_interval = rescan_interval
        self.store: Store = store if store is not None else Ledger(paths)
        self.table = RunTable(self.clock)
        self.planner = Planner(self.table, self.clock)
        self.catalog = Catalog(self.planner, self.folder.root)
        self.commands = Commands(self.planner, self._kill_running, self.status, lambda: self.catalog.errors)
        self.make_local = local_executor
        self.local: Executor | None = None  #: runs on this host; built by prepare()
        self.agents: AgentDispatcher | None = None  #: runs on remote agents; built by prepare()
        self._clock_mark: tuple[datetime, float] | None = None  # (wall, monotonic) at the last look
        self._finished: list[ShimExit] = []
        self._flow_runs: list[Run] = []  #: the ledger's runs of open flows, from start_state until loaded
        self._carry = Batch()  # ends decided mid-commit (failed launches), committed next iteration
        self._commands: list[Command] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._runs_open = asyncio.Event()  #: set at each launch: the sampler has something to sample
        #: committed runs not launched yet: a large batch is launched a slice per loop turn
        self._to_launch: deque[int] = deque()
        self._launch_turn: asyncio.Handle | None = None
        #: tells of wall clock steps, so the loop may sleep long (only for the real clock: a fake one
        #: is stepped by tests, which no kernel sees)
        self._clock_set = ClockSetWatch.open() if isinstance(self.clock, SystemClock) else None
        self.stop_reason = "stop"
        self.extra_handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}
        self.high_water = HighWaterFile(paths)  #: used epochs and run ids, kept outside the database
        self.restored = False  #: the database is behind ids used before: restored or replaced
        self.epoch_floor = 0  #: an epoch seen elsewhere (an agent) that this leadership must exceed
        self.epoch_retake_allowed = True  #: False after 3 re-takes within 60 s (see Node._active)
        self.agent_transport_factory: Callable[[Any], Any] | None = None  #: tests: in-process agents
        self.fatal: StoreError | None = None  #: the store fault that stopped this scheduler
        #: sends the notification outbox while this scheduler is active (built by run())
        self.deliverer: Deliverer | None = None
        self.deliverer_restart_delay = 1.0  #: seconds before a failed deliverer is replaced (doubling)
        self._agents_up: dict[str, bool] = {}  #: each agent's health as the ledger had it at takeover
        self.store.health.on_recovery = self._store_recovered
        # Whoever commits an event (the loop, the flusher, the dispatcher's deferred writes, the
        # deliverer's summaries), the deliverer hears of it once it is durable.
        self.store.observe(self._wake_deliverer)

    @property
    def epoch(self) -> int:
        return self.store.epoch

    @property
    def settings(self) -> Settings:
        return self.planner.settings

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
        self.planner.takeover_cause = cause
        self.planner.started_at = now
        log.info("active with epoch %d (previous leader pid %s)", epoch, previous.pid)
        return previous

    async def prepare(self) -> None:
        """Load the folder and settle what the previous active left open."""
        await self._load_state()
        result = await asyncio.to_thread(self.folder.scan)
        now, _ = self._read_clock()
        self.planner.settings = result.settings  # the executors start with the settings of this scan
        ctx = RunContext(
            paths=self.paths,
            store=self.store,
            clock=self.clock,
            settings=lambda: self.planner.settings,
            job=lambda name: self.planner.jobs.get(name),  # `jobs` is replaced at each scan
            is_open=self.table.is_open,
            finished=self._on_finished,
            store_fault=self.store_fault,
        )
        self.local = self.make_local(ctx)
        from engine.agents.dispatcher import AgentDispatcher  # remote agents

        dispatcher = AgentDispatcher(
            ctx,
            restored=self.restored,
            next_run_id=lambda: self.planner.next_id,
            skip_run_ids=self.skip_run_ids,
            retake_above=self.retake_above,
            transport_factory=self.agent_transport_factory,
            agents_up=self._agents_up,
            notification=self.planner.notification,
        )
        self.agents = dispatcher
        intents = self.catalog.settle_stored_fires(result, now)
        intents += self._apply_scan(result, now, initial=True)
        self.planner.load_flows(self._flow_runs)  # flows with an open step continue where they were
        self._flow_runs = []
        if (self.high_water.mark.from_run_dirs or self.restored) and self.settings.agents:
            # No high-water record here, or a database older than the state directory: before
            # numbering a run, learn the epochs and run ids the agents have seen (docs/agents.md).
            await dispatcher.first_contact(within=3.0)
        await self._reconcile(now)
        dispatcher.ready()  # only now may results be matched to runs (each open run has its flight)
        await self.store.commit(intents)
        await self._write_catalog(full=True)
        _release_free_heap()  # the load's transient rows (10,000 catalog rows and their bindings) are gone

    async def _reconcile(self, now: datetime) -> None:
        """Settle every run a previous active left open: each executor takes over its own."""
        assert self.local is not None
        shims = self.local.local if isinstance(self.local, ShimExecutor) else None
        reconciler = Reconciler(
            planner=self.planner,
            store=self.store,
            paths=self.paths,
            local=self.local,
            agents=self.agents,
            shims=shims,
            restored=self.restored,
            finished=self._on_finished,
        )
        await self._commit(await reconciler.settle(now), now)

    def request_stop(self, reason: str = "stop") -> None:
        self.stop_reason = reason
        self._stop.set()
        self._wake.set()

    async def run(self) -> str:
        """Main loop until asked to stop; returns why it stopped."""
        db_watch = FileWatch.open(self.paths.db, written=True)
        if self._clock_set is not None:
            asyncio.get_running_loop().add_reader(self._clock_set.fd, self._on_clock_set)
        side_tasks = [
            asyncio.create_task(self._periodic(self._folder_may_have_changed, self.rescan), name="rescan"),
            asyncio.create_task(self._periodic(self._sample_due, self._sample_tick), name="sample"),
            asyncio.create_task(self._flusher(), name="flusher"),
            asyncio.create_task(self._periodic(_every(3600.0, first=60.0), self._retention_tick), name="retention"),
            asyncio.create_task(
                self._periodic(lambda: self._db_file_may_have_changed(db_watch), self._check_db_file), name="dbwatch"
            ),
            asyncio.create_task(self._deliver(), name="deliverer"),
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
            # Committed, never launched: the next active launches them (their rows say `launching`).
            self._to_launch.clear()
            if self._launch_turn is not None:
                self._launch_turn.cancel()
            for task in side_tasks:
                task.cancel()
            for task in side_tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for cmd in self._commands:
                if not cmd.reply.done():
                    cmd.reply.set_result(refusal(SchedulerStoppingError("scheduler is stopping")))
            await self.close_executors()
            if self.stop_reason not in ("fenced", "store_fatal"):
                with contextlib.suppress(VigilError):
                    await self.store.flush()
                    await self.store.commit([i.CleanStop()])
            await self.store.close()
            self.high_water.close()
            if db_watch is not None:
                db_watch.close()
            if self._clock_set is not None:
                asyncio.get_running_loop().remove_reader(self._clock_set.fd)
                self._clock_set.close()
        return self.stop_reason

    async def _deliver(self) -> None:
        """The outbox's deliverer, for as long as this scheduler is active. One that fails on what it
        did not expect is logged and replaced after a pause (doubling to 60 s), so one bug cannot end
        delivery for the rest of the term with nothing said; a fenced one is not: the scheduler stops."""
        delay = self.deliverer_restart_delay
        while not self._stop.is_set():
            self.deliverer = Deliverer(
                self.store,
                lambda: self.planner.settings,
                self.clock,
                log_tail=run_dir_log_tail(self.paths),
                poll=DELIVERER_POLL_S,
            )
            started = time.monotonic()
            try:
                await self.deliverer.run()
                return
            except FencedError:
                self.request_stop("fenced")
                return
            except StoreError as exc:  # retryable faults the deliverer outlives; this one it cannot
                self._store_fatal(exc)
                return
            except Exception:
                if time.monotonic() - started > 60.0:  # it had been working: start the backoff again
                    delay = self.deliverer_restart_delay
                log.exception("the notification deliverer failed; starting a new one in %gs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 60.0)

    def _store_recovered(self, lasted: float, fault: StoreRetryableError, failures: int) -> list[i.Intent]:
        """`store_error`, for the first transaction that succeeds after a retryable fault."""
        until = self.clock.now()
        since = until - timedelta(seconds=lasted)
        return self.planner.notification(
            build.store_recovered(since=since, until=until, error=str(fault), failures=failures)
        )

    def queue_event(self, event: Event) -> None:
        """An event that no state change of the ledger carries (a standby gone): into the next transaction."""
        for intent in self.planner.notification(event):
            self.store.defer(intent)

    def _wake_deliverer(self, written: Sequence[i.Intent]) -> None:
        """A commit observer: an event was committed, the deliverer sends it now."""
        if self.deliverer is not None and any(isinstance(intent, i.NotificationQueued) for intent in written):
            self.deliverer.wake()

    async def close_executors(self) -> None:
        """Stop watching runs (they go on; the next active adopts them)."""
        for executor in self._executors():
            with contextlib.suppress(Exception):
                await executor.aclose()

    async def _periodic(self, wait: Callable[[], Awaitable[None]], fn: Callable[[], Awaitable[None]]) -> None:
        """`fn` each time `wait` returns, for as long as the scheduler runs."""
        while True:
            await wait()
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

    async def _folder_may_have_changed(self) -> None:
        """Until the job folder may have changed: the kernel said so (inotify), its safety walk is due,
        or, where the kernel cannot tell (see JobFolder.change_fd), `rescan_interval` has passed."""
        fd = self.folder.change_fd()
        if fd is None:
            await asyncio.sleep(self.rescan_interval)
            return
        if await wait_readable(fd, self.folder.walk_due_in()):
            await asyncio.sleep(min(self.rescan_interval, FOLDER_SETTLE_S))

    async def _sample_due(self) -> None:
        """Until the next sample of the open runs: nothing is sampled while no run is open."""
        if not len(self.table):
            self._runs_open.clear()
            await self._runs_open.wait()
        await asyncio.sleep(SAMPLE_EVERY_S)

    async def _db_file_may_have_changed(self, watch: FileWatch | None) -> None:
        """Until the database file may have been removed, replaced or emptied (see DB_CHECK_GAP_S)."""
        await asyncio.sleep(DB_CHECK_GAP_S)
        if watch is None:
            return
        await wait_readable(watch.fd, DB_CHECK_EVERY_S - DB_CHECK_GAP_S)
        watch.drain()

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
            # The outbox is in the store that failed: this fault cannot be queued as an event.
            log.error("the state database failed for good: no store_error event can be queued (the outbox is in it)")
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
                continue
            except StoreError as exc:
                self._store_fatal(exc)
                return

    async def _sleep_until_next(self) -> None:
        # Long only with no open run and if the kernel tells of clock steps (see LONG_SLEEP_S).
        timeout = SHORT_SLEEP_S if self._clock_set is None or len(self.table) else LONG_SLEEP_S
        mono = self.clock.monotonic()
        backoff = self.store.health.wait(time.monotonic())
        next_fire = self.planner.next_fire_at()
        until_fire = None if next_fire is None else next_fire - self.clock.now().timestamp()
        if backoff > 0:
            # Backing off after a store fault: due fires and retries wait too (trying sooner would
            # only spin); deadlines do not.
            timeout = backoff
        else:
            if until_fire is not None:
                timeout = min(timeout, until_fire)
            next_retry = self.table.next_retry()
            if next_retry is not None:
                timeout = min(timeout, next_retry - mono)
        next_deadline = self.table.next_deadline()
        if next_deadline is not None:
            timeout = min(timeout, next_deadline - mono)
        next_warning = self.planner.watch.next_due(self.clock.now(), mono)
        if next_warning is not None:
            timeout = min(timeout, next_warning)
        timeout = max(0.0, timeout)
        # epoll sleeps in whole milliseconds, rounded up: a fire would be handled up to a millisecond
        # (and on average half of one) after its time. When a fire ends this sleep, stop waiting
        # FIRE_WAKE_EARLY_S before it and sleep the rest precisely: nothing else is due by then.
        precise = backoff <= 0 and until_fire is not None and 0 < until_fire <= timeout
        if timeout > 0 and not self._wake.is_set():
            coarse = timeout - FIRE_WAKE_EARLY_S if precise else timeout
            if coarse > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), coarse)
            if precise and not self._wake.is_set() and next_fire is not None:
                rest = next_fire - self.clock.now().timestamp()
                if 0 < rest <= FIRE_WAKE_EARLY_S:
                    time.sleep(rest)  # noqa: ASYNC251 (at most 1.5 ms, and nothing else is due)
        self._wake.clear()

    def _on_clock_set(self) -> None:
        """The kernel says the wall clock was set: look at it now (`_read_clock` handles the step)."""
        watch = self._clock_set
        if watch is None:
            return
        if not watch.rearm():  # the kernel refuses the timer now: wake every second instead
            asyncio.get_running_loop().remove_reader(watch.fd)
            watch.close()
            self._clock_set = None
        self._wake.set()

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
            log.warning(
                "wall clock went back %s: schedules continue from %s; fire times that already ran are not run again",
                format_jump(-skew),
                iso(now),
            )
            self.planner.clock_went_back(-skew, now, self._carry)
            self._wake.set()
        elif skew > CLOCK_JUMP_TOLERANCE_S:
            cause = f"clock jumped forward {format_jump(skew)}"
            log.warning(
                "wall clock jumped forward %s; the fires it passed follow each job's catchup", format_jump(skew)
            )
            self.planner.forward_jumps.append(ForwardJump(mark[0], now, skew, cause))
        return now, mono

    def _restate_starts(self, now: datetime, mono: float) -> None:
        """Runs this process started, re-dated in the new timeline so durations shown stay true."""
        for info in self.table.runs.values():
            if info.started_mono is None or info.state is not RunState.RUNNING:
                continue
            started = now - timedelta(seconds=mono - info.started_mono)
            info.started_at = started
            if info.deadline is not None and info.deadline_mono is not None:
                info.deadline = now + timedelta(seconds=info.deadline_mono - mono)
            self._carry.intents.append(i.StartRestated(info.id, started, info.deadline))

    # ---------------------------------------------------------------- state loading

    async def _load_state(self) -> None:
        p = self.planner
        start = await self.store.start_state()
        in_db = max(start.max_run_id, start.run_id_mark)  # the mark keeps pruned ids
        seen = self.high_water.mark
        in_dirs = max(run_dir_ids(self.paths), default=0)  # high-water may lag (a failed write)
        # Run ids continue above every id used before, whatever the database remembers.
        p.next_id = max(in_db, seen.run_id, in_dirs) + 1
        if in_db < max(seen.run_id, in_dirs):
            # Ids this state directory used (high-water, run directories) that the database never
            # recorded: restored or replaced, also with an unchanged epoch.
            self.restored = True
        self.high_water.raise_to(run_id=in_db)
        if self.restored:
            self.store.defer(i.RunIdMark(p.next_id - 1))  # said once
            log.warning(
                "the state database is older than this state directory (restored or replaced): epoch "
                "continues at %d, run ids at %d; the schedule restarts from now (fires since the backup "
                "are neither caught up nor recorded as missed)",
                self.epoch,
                p.next_id,
            )
        for name, state in start.jobs.items():
            if state.paused:
                p.paused.add(name)
            if state.held:
                p.held.add(name)
            if state.last_fire is not None and not self.restored:
                p.last_fire[name] = state.last_fire
        p.last_success.update(start.last_success)
        p.last_outcome.update(start.last_end)  # `recovered` continues across takeovers
        self._flow_runs = start.flow_runs  # loaded once the jobs are (their `after` shapes the flows)
        self._agents_up = dict(start.agents_up)  # so is agent_down / agent_up

    # ---------------------------------------------------------------- executors

    def _executors(self) -> list[Executor]:
        return [executor for executor in (self.local, self.agents) if executor is not None]

    def _executor_for(self, info: RunInfo) -> Executor | None:
        # Where the run went (its `agent`), not where its job points now (the file may have changed).
        if info.agent and self.agents is not None:
            return self.agents
        return self.local

    def _launch(self, run_id: int, now: datetime) -> None:
        info = self.table.get(run_id)
        if info is None:
            return
        job = self.planner.jobs.get(info.job)
        if job is None:
            self._finish_later(info, RunState.FAILED, f"job {info.job} no longer exists", now)
            return
        if info.kill_requested is not None:  # killed while it waited for its turn to launch
            self._finish_later(info, RunState.KILLED, "cancelled by operator before it started", now)
            return
        info.agent = job.agent  # a pending run launches as its job is configured now
        executor = self._executor_for(info)
        assert executor is not None
        if flow_env := self.planner.launch_env(info):
            # The outputs of the flow's earlier steps; the job's own `env` wins. An agent's dispatch
            # (which may come later, once an agent is up) reads them from the run.
            info.flow_env = tuple(flow_env.items())
            job = dataclasses.replace(job, env=tuple({**flow_env, **dict(job.env)}.items()))
        try:
            executor.launch(info, job)
        except LaunchError as exc:  # e.g. a missing workdir: the message is the reason
            self._finish_later(info, RunState.FAILED, str(exc), now)
            return
        except (OSError, ValueError) as exc:
            self._finish_later(info, RunState.FAILED, f"could not start the run's shim: {exc}", now)
            return
        self._runs_open.set()
        if executor is not self.local:
            return  # a remote run's start is recorded by its executor once the agent confirms it
        info.state = RunState.RUNNING
        info.started_at = now
        info.started_mono = self.clock.monotonic()
        deadline = now + timedelta(seconds=job.timeout) if job.timeout is not None else None
        closes = self.planner.window_close(job, now)  # kill_at_window_end: the window's close
        if closes is not None and (deadline is None or closes < deadline):
            deadline = closes
        if deadline is not None:
            info.deadline = deadline
            # on the monotonic clock, so a wall-clock step cannot move it
            info.deadline_mono = info.started_mono + (deadline - now).total_seconds()
            self.table.arm_deadline(info)
        self.store.defer(i.RunStarted(info.id, now, info.deadline))

    def _kill_running(self, info: RunInfo) -> None:
        executor = self._executor_for(info)
        if executor is not None:
            executor.kill(info)

    def _handle_deadlines(self, mono: float) -> None:
        for info in self.table.due_deadlines(mono):
            cause = self.planner.deadline_cause(info)  # "timeout", or "window" (kill_at_window_end)
            info.kill_requested = cause
            self.store.defer(i.KillRequested(info.id, cause))
            self._kill_running(info)

    def _on_finished(self, result: ShimExit) -> None:
        """A run's end, from its executor: handled in the next iteration."""
        self._finished.append(result)
        self._wake.set()

    def _read_outputs(self, finished: list[ShimExit]) -> None:
        """What each flow step that ran here wrote to its `$VIGIL_OUTPUT` file, for the planner."""
        for result in finished:
            info = self.table.get(result.run_id)
            if info is None or info.flow_id not in self.planner.flows or info.agent:
                continue
            result.output, result.output_truncated = read_output_file(self.paths.run_dir(info.id) / OUTPUT_FILE)

    def _finish_later(self, info: RunInfo, state: RunState, reason: str, now: datetime) -> None:
        """End a run from inside a commit; what follows (retry, queued run) goes into the next one."""
        self.planner.finish(info, state, reason, None, now, self._carry)
        self._wake.set()

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
        if used >= self.planner.next_id:
            log.warning("run ids up to %d are already used (reported by an agent); continuing at %d", used, used + 1)
            self.planner.next_id = used + 1
            self.high_water.raise_to(run_id=used)
            self.store.defer(i.RunIdMark(used))

    # ---------------------------------------------------------------- job folder

    def _apply_scan(self, result: ScanResult, now: datetime, *, initial: bool = False) -> list[i.Intent]:
        intents = self.catalog.apply_scan(result, now, initial=initial)
        self.table.admission_changed = True  # limits, locks or priorities may have changed
        for executor in self._executors():
            executor.configure(self.planner.settings)
        return intents

    async def rescan(self) -> None:
        """Read the job folder again and record what changed (the `rescan` side task)."""
        result = await asyncio.to_thread(self.folder.scan)
        now, _ = self._read_clock()
        intents = self._apply_scan(result, now)
        # The loop may be in a long sleep computed before this scan: a new or edited job's next fire
        # can be sooner than its end.
        self._wake.set()
        if intents:
            try:
                await self.store.commit(intents)
            except StoreRetryableError:
                for intent in intents:
                    self.store.defer(intent)  # kept until a write succeeds
                raise
        await self._write_catalog()

    async def _write_catalog(self, *, full: bool = False) -> None:
        names = self.catalog.take_dirty(full=full)
        if not names:
            return
        try:
            await self.store.commit(self.catalog.rows(names, full=full))
        except StoreRetryableError:
            self.catalog.dirty |= names  # written again at the next rescan
            raise

    # ---------------------------------------------------------------- main iteration

    async def iterate(self) -> None:
        """One loop iteration: run ends, deadlines, retries, fires and commands, in one commit."""
        p = self.planner
        now, mono = self._read_clock()
        if self.store.health.failing and self._commands:
            self._answer_commands_while_unwritable(now)
        if self.store.health.wait(time.monotonic()) > 0:
            # Backing off after a retryable store fault. Timeouts are still enforced: a kill needs
            # no write (its record is deferred).
            self._handle_deadlines(mono)
            return
        await self._load_durations()
        # Two parts, one transaction. `batch` is accounting (run ends, retries and queued runs
        # starting, kills): if the commit fails it is carried to the next attempt, never lost.
        # `work` is new work (fires, run/rerun/pause/resume): if the commit fails it is undone, so
        # the fires are due again and take the catch-up path, and the commands report the error.
        batch, self._carry = self._carry, Batch()
        finished, self._finished = self._finished, []
        self._read_outputs(finished)
        p.handle_finished(finished, now, batch)
        self._handle_deadlines(mono)
        p.handle_retries(mono, batch)
        p.admit_waiting(batch)  # before the fires: a lock freed goes to the runs waiting for it
        p.watch_runs(now, mono, batch)
        work = Batch(first_id=p.next_id)
        p.handle_fires(now, work)
        commands, self._commands = self._commands, []
        replies: list[tuple[Command, dict[str, Any] | VigilError]] = []
        for cmd in commands:
            try:
                replies.append((cmd, self.commands.handle(cmd, now, batch if cmd.op == Op.KILL else work)))
            except VigilError as exc:
                replies.append((cmd, exc))
        p.admit_waiting(batch)  # a release, a kill of a holder or of a waiting run
        last_id = p.next_id
        try:
            await self._commit(batch.then(work), now)
        except StoreRetryableError as exc:
            self._carry = batch.then(self._carry)
            p.undo(work, last_id)
            p.outage_cause = f"state database unavailable: {exc.kind}"
            for cmd, reply in replies:
                if cmd.reply.done():
                    continue
                if isinstance(reply, VigilError):
                    cmd.reply.set_result(refusal(reply))
                elif cmd.op == Op.KILL:
                    cmd.reply.set_result({"ok": True, **reply})  # sent; its record is carried
                else:
                    cmd.reply.set_result(refusal(UnwritableError(f"{exc}; try again when it is writable")))
            return
        except VigilError as exc:
            for cmd, _ in replies:
                if not cmd.reply.done():
                    cmd.reply.set_result(refusal(exc))
            raise
        if not self.store.health.failing:
            p.outage_cause = None
        p.watch.arm_started(now, mono, self.table, p.jobs)  # runs launched just now: their longer timers
        for cmd, reply in replies:
            if cmd.reply.done():
                continue
            if isinstance(reply, VigilError):
                cmd.reply.set_result(refusal(reply))
            else:
                cmd.reply.set_result({"ok": True, **reply})

    async def _load_durations(self) -> None:
        """The recent successful durations of jobs with a percentage threshold, read once per job."""
        watch = self.planner.watch
        for name in watch.histories_wanted(self.planner.jobs):
            try:
                watch.set_history(name, await self.store.recent_durations(name))
            except StoreRetryableError:
                return  # read at the next iteration; until then the percentage has no median

    def _answer_commands_while_unwritable(self, now: datetime) -> None:
        """While a retryable store fault lasts, answer commands at once instead of after the backoff
        and another busy timeout (the client would have given up): those that need a write are
        refused, a kill is carried out and its record carried to the first write that succeeds."""
        fault = self.store.health.fault
        commands, self._commands = self._commands, []
        for cmd in commands:
            if cmd.reply.done():
                continue
            if cmd.op != Op.KILL:
                cmd.reply.set_result(refusal(UnwritableError(f"{fault}; try again when it is writable")))
                continue
            try:
                reply = self.commands.handle(cmd, now, self._carry)
            except VigilError as exc:
                cmd.reply.set_result(refusal(exc))
            else:
                cmd.reply.set_result({"ok": True, **reply})

    async def _commit(self, batch: Batch, now: datetime) -> None:
        if not batch:
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
                self.planner.ignored(row)
                collided.add(row.job)
                continue
            if row.state is RunState.LAUNCHING:
                self._to_launch.append(row.id)
        self._to_launch.extend(batch.launches)
        if self._launch_turn is None:
            self._launch_queued(now)
        for job in sorted(collided):
            # An ignored row may have been the run its job's queue waited for (caught-up fires queue
            # behind each other): the next one starts with the next commit, not never.
            self.planner.start_queued(job, self._carry)
            self._wake.set()

    def _launch_queued(self, now: datetime | None = None) -> None:
        """Launch committed runs, oldest first, for at most LAUNCH_SLICE_S, and the rest at the loop's
        next turns: a burst of thousands never holds up heartbeats, run ends or commands."""
        self._launch_turn = None
        if self._stop.is_set():
            return
        when = now if now is not None else self.clock.now()
        until = time.perf_counter() + LAUNCH_SLICE_S
        while self._to_launch:
            self._launch(self._to_launch.popleft(), when)
            if time.perf_counter() >= until:
                break
        if self._to_launch:
            self._launch_turn = asyncio.get_running_loop().call_soon(self._launch_queued)

    # ---------------------------------------------------------------- periodic

    async def _sample_tick(self) -> None:
        for executor in self._executors():
            executor.sample()

    async def _retention_tick(self) -> None:
        cutoff = self.clock.now() - timedelta(seconds=self.settings.retention)
        await self.prune(cutoff)

    async def prune(self, cutoff: datetime) -> int:
        """Delete the runs that ended before `cutoff` (and the outbox rows done with); how many runs."""
        await self.store.commit([i.NotificationsPruned(cutoff)])  # a pending one is never deleted
        ids = await self.store.prunable_runs(cutoff)
        if not ids:
            return 0
        for chunk_start in range(0, len(ids), 500):
            chunk = tuple(ids[chunk_start : chunk_start + 500])
            await self.store.commit([i.RunsPruned(chunk), i.RunIdMark(max(chunk))])  # pruned ids stay used
            for run_id in chunk:
                shutil.rmtree(self.paths.run_dir(run_id), ignore_errors=True)
        return len(ids)

    # ---------------------------------------------------------------- commands

    async def command(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run an operator command inside the main loop and return its reply.

        `args["user"]`, which the audit records, is set by the control server from the socket's
        peer credentials (engine/ha/node.py): a request cannot choose it.
        """
        if op in self.extra_handlers:
            return await self.extra_handlers[op](args)
        if op == Op.PRUNE:
            user = str(args.get("user", "?"))
            cutoff = self.clock.now() - timedelta(seconds=prune_age(args.get("older_than_s")))
            if self.store.health.failing:
                raise VigilError(f"{self.store.health.fault}; try again when it is writable")
            try:
                count = await self.prune(cutoff)
                audit = i.Audit(self.clock.now(), user, "prune", f"<{iso(cutoff)}", f"deleted {count} runs")
                await self.store.commit([audit])
            except StoreRetryableError as exc:
                raise VigilError(f"{exc}; try again when it is writable") from exc
            return {"ok": True, "deleted": count}
        if op == Op.RERUN:
            repeated = await self.store.run(run_id_of(args))
            if repeated is None:
                missing = NotFoundError(f"no run with id {args.get('run_id')}")
                user, target = str(args.get("user", "?")), str(args.get("run_id"))
                self.store.defer(i.Audit(self.clock.now(), user, Op.RERUN, target, f"refused: {missing}"))
                return refusal(missing)
            args = {**args, "job": repeated.job, "flow_id": None}  # set here only, never by a client
            if repeated.flow_id is not None and repeated.flow_id != repeated.id:
                args["flow_id"] = repeated.flow_id  # a step's rerun stays in its flow
        if op == Op.RERUN_FLOW:
            flow_id = as_row_id(args.get("flow_id"))
            runs = await self.store.flow_runs(flow_id) if flow_id is not None else []
            if not runs:
                missing = NotFoundError(f"no flow with id {args.get('flow_id')}")
                user, target = str(args.get("user", "?")), f"flow {args.get('flow_id')}"
                self.store.defer(i.Audit(self.clock.now(), user, Op.RERUN_FLOW, target, f"refused: {missing}"))
                return refusal(missing)
            args = {**args, "flow_runs": runs}
        if self._stop.is_set():
            # The loop has stopped or is about to: nothing would ever answer this command.
            return refusal(SchedulerStoppingError("scheduler is stopping"))
        if self.store.health.failing and op != Op.KILL:
            # Refused now: the loop may be waiting a whole busy timeout on its next write attempt,
            # and the client would give up first. A kill needs no write; the loop carries it out.
            return refusal(UnwritableError(f"{self.store.health.fault}; try again when it is writable"))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._commands.append(Command(op, args, future))
        self._wake.set()
        return await future

    def status(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "jobs": len(self.planner.jobs),
            "open_runs": len(self.table),
            "paused": sorted(self.planner.paused),
            "held": sorted(self.planner.held),
            "config_errors": len(self.catalog.errors),
            "max_running": self.settings.max_running,
            "resources": [to_json(use) for use in self.planner.resource_use()],
            "waiting_runs": len(self.table.waiting),
        }


def _every(interval: float, *, first: float) -> Callable[[], Awaitable[None]]:
    """A wait of `first` seconds, then of `interval` seconds each time."""
    delays = itertools.chain([first], itertools.repeat(interval))
    return lambda: asyncio.sleep(next(delays))
