"""Active/standby on one host: a flock'd lock file elects, heartbeats detect hangs, epochs fence.

Every `vigil up` on a state directory runs a Node. The node holding the exclusive flock on
`leader.lock` (engine.ha.lock) is active: it leads the scheduler, serves the control socket
(engine.ha.control_server) and sends heartbeats on it. The others are standbys: they block on the
lock and watch the heartbeats (engine.ha.heartbeat), so a crash is replaced as soon as the kernel
releases the dead process's lock, and a hung active is killed once every identity check agrees.

Layer: ha. Imports the base modules, config (settings), control, exec.procs, the store's intents
and the scheduler it runs.

Under a `Type=notify` systemd unit the node says READY=1 once it is active or standby, a STATUS=
line at every role change, STOPPING=1 when it stops, and pings the watchdog from its event loop
(engine.sdnotify).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from engine.clock import Clock, SystemClock, iso
from engine.config import load_settings
from engine.control import ErrorKind, RefusalAudit, error_reply, socket_address
from engine.errors import StoreRetryableError, VigilError
from engine.exec.procs import flock_holders, starttime
from engine.ha.control_server import ControlServer, Subscriber
from engine.ha.heartbeat import HeartbeatWatcher, Takeover, TakeoverCause
from engine.ha.lock import LeaderLock
from engine.linux import FileWatch, wait_readable, watching
from engine.model import StopReason
from engine.notify import build
from engine.paths import StatePaths
from engine.run.loop import Scheduler
from engine.sdnotify import Notifier
from engine.store.intents import Audit, CommitObserver, Failover, Intent
from engine.store.sqlite.db import connect

log = logging.getLogger("vigil.ha")

#: With no subscriber, no heartbeat is sent; the loop's lag is still measured this often.
LAG_CHECK_IDLE_S = 5.0
#: The active looks at `leader.lock` when the kernel reports a change of names in its folder, and
#: this often anyway (a change no event shows: a parent folder renamed); without inotify, as often as
#: LeaderLock.poll / 2, faster than a waiting node moves to a new file.
LOCK_CHECK_EVERY_S = 5.0

#: Pauses between attempts to become active while the store refuses writes (disk full, locked).
START_RETRY_FIRST_S = 0.5
START_RETRY_MAX_S = 10.0


class Node:
    """One `vigil up`: standby until it holds the lock, then active until it stops or hands over."""

    def __init__(
        self,
        paths: StatePaths,
        jobs_dir: Path,
        *,
        clock: Clock | None = None,
        rescan_interval: float = 1.0,
        notifier: Notifier | None = None,
        observer: CommitObserver | None = None,
    ) -> None:
        self.paths = paths
        self.observer = observer  #: told what each active term's store commits (the metrics)
        self.jobs_dir = jobs_dir
        self.clock = clock or SystemClock()
        self.rescan_interval = rescan_interval
        self.notifier = notifier or Notifier()  #: systemd's notify socket; a no-op outside systemd
        self.pid = os.getpid()
        self.starttime = starttime(self.pid)
        self.lock = LeaderLock(paths.lock)
        settings, _ = load_settings(jobs_dir)
        self.hb_interval = settings.heartbeat_interval
        self.hb_timeout = settings.heartbeat_timeout
        self.scheduler: Scheduler | None = None
        self._stop = asyncio.Event()
        self.server: ControlServer | None = None  #: the control socket, while active
        self._refusals = RefusalAudit()  #: kept across terms: the bound holds for the whole process
        self.active_since: str | None = None
        self._epoch_floor = 0  #: an epoch an agent has seen, for the next take_leadership
        self._retakes: list[float] = []  #: monotonic times of re-takes above an agent's epoch

    def request_stop(self) -> None:
        self.notifier.stopping()
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.request_stop(StopReason.STOP)

    async def run(self) -> None:
        # From this loop itself: a hung loop stops the pings and systemd restarts the service.
        pings = asyncio.create_task(self.notifier.watchdog_pings(), name="watchdog")
        try:
            await self._run()
        finally:
            pings.cancel()
            self.notifier.stopping()

    async def _run(self) -> None:
        self.paths.ensure()
        while True:
            try:
                connect(self.paths).close()
                break
            except StoreRetryableError as exc:
                if not await self._back_off(exc):
                    return
        unfinished: Takeover | None = None  #: a takeover whose start failed on a passing store fault
        takeover: Takeover | None
        while not self._stop.is_set():
            if self.lock.try_acquire():
                takeover = unfinished or Takeover(TakeoverCause.START, None, None)
            else:
                takeover = await self._standby()
                if takeover is None:
                    return
            try:
                reason = await self._active(takeover)
                while reason == StopReason.EPOCH and not self._stop.is_set() and self.lock.still_ours():
                    # An agent has seen a higher epoch (restored database): take the leadership again,
                    # under the lock we still hold, above it. At most 3 re-takes in any 60 s (see _active).
                    reason = await self._active(Takeover(TakeoverCause.EPOCH, self.pid, None))
            except StoreRetryableError as exc:
                # Becoming active needs writes (the epoch first). A full disk or another writer's
                # lock may pass: _active let go of the lock, so a standby may try meanwhile; we try
                # again after a growing pause instead of leaving no scheduler at all.
                unfinished = takeover
                if not await self._back_off(exc):
                    return
                continue
            if reason != StopReason.SWITCHOVER:
                return
            self._start_failures = 0
            unfinished = None
            await self._after_handover()

    _start_failures = 0

    async def _back_off(self, exc: StoreRetryableError) -> bool:
        """Wait before trying to become active again; False if asked to stop meanwhile."""
        self._start_failures += 1
        delay = min(START_RETRY_MAX_S, START_RETRY_FIRST_S * 2 ** (self._start_failures - 1))
        level = logging.WARNING if self._start_failures == 1 else logging.DEBUG
        log.log(level, "cannot become active: %s; trying again in up to %gs", exc, START_RETRY_MAX_S)
        self.notifier.status(f"starting: cannot become active: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        return not self._stop.is_set()

    # ---------------------------------------------------------------- standby

    async def _standby(self) -> Takeover | None:
        log.info("standby (pid %d): waiting for the leader lock", self.pid)
        self.notifier.ready(f"standby (pid {self.pid}): waiting for the leader lock")
        lock_task = asyncio.create_task(self.lock.acquire())
        stop_task = asyncio.create_task(self._stop.wait())
        watcher = HeartbeatWatcher(
            self.paths, self.lock, pid=self.pid, interval=self.hb_interval, timeout=self.hb_timeout
        )
        watch_task = asyncio.create_task(watcher.run())
        try:
            done, _ = await asyncio.wait({lock_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.stopped = True
            watch_task.cancel()
            stop_task.cancel()
            # Never wait on the watcher for long: taking over must not depend on it.
            await asyncio.wait({watch_task}, timeout=0.2)
        if lock_task not in done:
            lock_task.cancel()  # stopping: abandon the wait; the lock thread dies with the process
            return None
        lock_task.result()  # a lock file we cannot open or lock ends the node with its reason
        return watcher.takeover()

    async def _after_handover(self) -> None:
        """After a switch-over: let a standby win the lock before we queue for it again."""
        self.notifier.status(f"handed over (pid {self.pid}): a standby takes the active role")
        self.lock.release()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not self._stop.is_set():
            if await _someone_active(self.paths):
                return
            await asyncio.sleep(0.02)

    # ---------------------------------------------------------------- active

    async def _active(self, takeover: Takeover) -> StopReason:
        cause = "downtime" if takeover.cause == TakeoverCause.START else "failover"
        scheduler = Scheduler(self.paths, self.jobs_dir, clock=self.clock, rescan_interval=self.rescan_interval)
        if self.observer is not None:
            scheduler.store.observe(self.observer)
        scheduler.epoch_floor = self._epoch_floor
        now_mono = time.monotonic()
        self._retakes = [t for t in self._retakes if now_mono - t < 60.0]
        if takeover.cause == TakeoverCause.EPOCH:
            self._retakes.append(now_mono)
        # A few re-takes may be needed (agents answer one by one): one more is allowed while fewer
        # than 3 were made in the last 60 s. More means someone else keeps raising an agent's
        # epoch, which re-taking cannot settle.
        scheduler.epoch_retake_allowed = len(self._retakes) < 3
        self.scheduler = scheduler
        if self._stop.is_set():
            return StopReason.STOP
        try:
            previous = await scheduler.take_leadership(pid=self.pid, starttime=self.starttime, cause=cause)
        except BaseException:
            # Nothing serves yet; the ledger's thread would keep the process (and the lock) alive.
            await scheduler.store.close()
            self.lock.release()
            raise
        now = self.clock.now()
        self.active_since = iso(now)
        # Serve heartbeats before the slow part (loading the folder, reconciling) so that standbys
        # never mistake a starting active for a hung one.
        scheduler.extra_handlers["status"] = self._status_command
        scheduler.extra_handlers["switchover"] = self._switchover_command
        server = ControlServer(
            self.paths,
            scheduler,
            clock=self.clock,
            heartbeat=self._heartbeat,
            refusals=self._refusals,
            standby_gone=lambda standby: self._standby_gone(server, scheduler, standby),
        )
        await server.start()
        self.server = server
        tasks = [
            asyncio.create_task(self._heartbeats(), name="heartbeat"),
            asyncio.create_task(self._watch_lock_file(scheduler), name="lockwatch"),
        ]
        started = False
        try:
            # Inside the try: a failed start must not leave the socket and heartbeats serving.
            await scheduler.prepare()
            if takeover.cause != TakeoverCause.START:
                gap_ms = None if takeover.gap_started is None else (time.time() - takeover.gap_started) * 1000
                from_pid = takeover.from_pid or previous.pid
                failover = Failover(now, from_pid, self.pid, takeover.cause, gap_ms)
                intents: list[Intent] = [failover]
                if takeover.cause != TakeoverCause.EPOCH:  # the same active again: not news
                    event = build.takeover(
                        epoch=scheduler.epoch,
                        switchover=takeover.cause == TakeoverCause.SWITCHOVER,
                        from_pid=from_pid,
                        to_pid=self.pid,
                        cause=str(takeover.cause),
                        gap_ms=gap_ms,
                        at=now,
                    )
                    intents += scheduler.planner.notification(event)
                await scheduler.store.commit(intents)  # the takeover and its event: one transaction
                log.warning("took over from pid %s (%s)", takeover.from_pid, takeover.cause)
            self.notifier.ready(f"active (pid {self.pid}, epoch {scheduler.epoch})")
            reason = StopReason(await scheduler.run())
            started = True
        finally:
            for task in tasks:
                task.cancel()
            await scheduler.store.close()  # run() closed it, unless the start failed (its thread would block exit)
            scheduler.high_water.close()
            if scheduler.stop_reason == StopReason.SWITCHOVER:
                await server.broadcast({"handover": {"pid": self.pid, "epoch": scheduler.epoch, "at": time.time()}})
            await server.close()
            self.server = None
            with contextlib.suppress(FileNotFoundError):
                if self.lock.still_ours():
                    os.unlink(self.paths.control)
            self._epoch_floor = scheduler.epoch_floor
            self.scheduler = None
            # A lost database's connection is left open (Ledger.close): SQLite keeps its locks on
            # the -shm file at that path until the process exits, which it does now; a standby that
            # opened the path before would trust a stale wal-index. So the leader lock is kept too:
            # exit releases both.
            if not scheduler.store.abandoned and (not started or scheduler.fatal is not None):
                self.lock.release()  # the process ends (exit != 0): it holds nothing meanwhile
        if scheduler.fatal is not None:
            raise scheduler.fatal
        lost = scheduler.store.lost_error() if scheduler.store.abandoned else None
        if lost is not None:
            raise lost  # found while stopping: this process still ends, it cannot serve again
        if reason in (StopReason.FENCED, StopReason.LOCK_LOST):
            # Never keep running after being fenced: the process exits and holds nothing.
            self.lock.release()
        return reason

    def _standby_gone(self, server: ControlServer, scheduler: Scheduler, standby: Subscriber) -> None:
        """A standby hung up. If it has not subscribed again within the heartbeat timeout (a standby
        reconnects within a second after a read error), it is lost: `standby_lost` is queued."""

        def check() -> None:
            if self.server is not server or server.closing:
                return  # this term is over: its standbys hung up because it closed
            if any(s.pid == standby.pid for s in server.standbys()):
                return
            log.warning("standby pid %s is gone", standby.pid)
            now = self.clock.now()
            scheduler.queue_event(
                build.standby_lost(pid=standby.pid, since=standby.since, epoch=scheduler.epoch, at=now)
            )

        asyncio.get_running_loop().call_later(self.hb_timeout, check)

    def _heartbeat(self) -> dict[str, Any]:
        return {
            "hb": {
                "pid": self.pid,
                "starttime": self.starttime,
                "epoch": self.scheduler.epoch if self.scheduler else None,
                "since": self.active_since,
                "lag_ms": round(self._lag * 1000, 3),
                "at": time.time(),
            }
        }

    _lag = 0.0

    async def _heartbeats(self) -> None:
        # Sent from the event loop itself: if the loop hangs, the heartbeats stop. Only while someone
        # subscribes (a standby, a monitor): each gets one at once when it subscribes, then one every
        # interval; with no one listening the loop sleeps, waking only to measure its lag.
        while True:
            server = self.server
            if server is not None and not server.subscribers:
                server.subscribed.clear()
                expected = time.monotonic() + LAG_CHECK_IDLE_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.subscribed.wait(), LAG_CHECK_IDLE_S)
                    continue  # a subscriber: it has its first heartbeat; the next one is due in an interval
                self._lag = max(0.0, time.monotonic() - expected)
                continue
            expected = time.monotonic() + self.hb_interval
            await asyncio.sleep(self.hb_interval)
            self._lag = max(0.0, time.monotonic() - expected)
            if self.server is not None:
                await self.server.broadcast(self._heartbeat())

    async def _watch_lock_file(self, scheduler: Scheduler) -> None:
        """Keep holding the lock on the file `leader.lock` names; stop if another node holds it."""
        with watching(self.paths.lock) as watch:
            await self._keep_lock_file(scheduler, watch)

    async def _keep_lock_file(self, scheduler: Scheduler, watch: FileWatch | None) -> None:
        while True:
            if watch is None:
                await asyncio.sleep(self.lock.poll / 2)  # faster than a waiting node moves to a new file
            else:
                await wait_readable(watch.fd, LOCK_CHECK_EVERY_S)
                watch.drain()
            if self.lock.still_ours():
                continue
            try:
                kept = self.lock.keep()
            except (VigilError, OSError) as exc:
                log.error("lock file %s was replaced or removed and cannot be locked again (%s); stopping",
                          self.paths.lock, exc)  # fmt: skip
            else:
                if kept:
                    log.warning("lock file %s was replaced or removed: locked the new file", self.paths.lock)
                    continue
                holders = flock_holders(self.lock.path_key() or (0, 0))
                log.error(
                    "lock file %s was replaced or removed and %s holds the new one; stopping",
                    self.paths.lock,
                    f"pid {', '.join(map(str, sorted(holders)))}" if holders else "another process",
                )
            scheduler.request_stop(StopReason.LOCK_LOST)
            return

    async def _status_command(self, args: dict[str, Any]) -> dict[str, Any]:
        server, scheduler = self.server, self.scheduler
        standbys = server.standbys() if server is not None else []
        sent = server.last_sent if server is not None and server.subscribers else None
        # With no subscriber no heartbeat is sent: this answer, from the same loop, is the sign of life.
        age = None if sent is None else max(0.0, time.time() - sent)
        return {
            "ok": True,
            "active": {
                "pid": self.pid,
                "epoch": scheduler.epoch if scheduler else None,
                "since": self.active_since,
                "heartbeat_age_s": round(age, 3) if age is not None else 0.0,
                "loop_lag_ms": round(self._lag * 1000, 3),
            },
            "standbys": [{"pid": info.pid, "since": iso(info.since)} for info in standbys],
            "scheduler": scheduler.status() if scheduler else None,
        }

    async def _switchover_command(self, args: dict[str, Any]) -> dict[str, Any]:
        standbys = self.server.standbys() if self.server is not None else []
        if not standbys:
            return error_reply("switch-over refused: no standby is connected to take over")
        scheduler = self.scheduler
        if scheduler is not None and scheduler.store.health.failing:
            fault = scheduler.store.health.fault
            return error_reply(f"{fault}; try again when it is writable", ErrorKind.UNWRITABLE)
        if scheduler is not None:
            user = str(args.get("user", "?"))
            await scheduler.store.commit([Audit(self.clock.now(), user, "switchover", str(self.pid), "ok")])
            asyncio.get_running_loop().call_soon(scheduler.request_stop, StopReason.SWITCHOVER)
        return {"ok": True, "from_pid": self.pid, "standbys": [info.pid for info in standbys]}


async def _someone_active(paths: StatePaths) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(socket_address(paths.control))
    except OSError:
        return False
    writer.close()
    return True
