"""Active/standby on one host: a flock'd lock file elects, heartbeats detect hangs, epochs fence.

Every `vigil up` on a state directory runs a Node. The node holding the exclusive flock on
`leader.lock` is active; the others block on it in a thread, so a crash is replaced as soon as
the kernel releases the dead process's lock. A hung active keeps its lock; the standby notices
its heartbeats stop, checks that the process holds the lock and is the one the leader row and the
heartbeats name (pid + start time), kills it, and the lock follows. Only a lock on the file the
path names counts: a removed or replaced `leader.lock` is locked again by the active, and waiters
follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.clock import Clock, SystemClock, iso, parse_iso
from engine.config import load_settings
from engine.control import MAX_REQUEST, RefusalAudit, encode, socket_address
from engine.errors import StoreRetryableError, VigilError
from engine.exec.procs import flock_holders, holds_flock, kill_verified, starttime
from engine.paths import StatePaths, user_name
from engine.run.scheduler import Scheduler
from engine.store.intents import Audit
from engine.store.sqlite.db import connect
from engine.text import escape

log = logging.getLogger("vigil.ha")

#: Pauses between attempts to become active while the store refuses writes (disk full, locked).
START_RETRY_FIRST_S = 0.5
START_RETRY_MAX_S = 10.0

#: A heartbeat subscriber with more unsent bytes than this has stopped reading: it is dropped.
SUBSCRIBER_BUFFER_LIMIT = 64 * 1024


@dataclass
class Takeover:
    cause: str  #: crash | hang | switchover | start
    from_pid: int | None
    gap_started: float | None  #: time.time() when the previous active was last known alive


FileKey = tuple[int, int]  #: (st_dev, st_ino): which file a path or an fd is


class LeaderLock:
    """The exclusive flock on the dedicated lock file (never a database file).

    Only a lock on the file the path names *now* counts: if `leader.lock` is removed or replaced,
    a lock on the old file is worthless, since a node opening the path locks another file. So an
    acquired lock is checked against the path and dropped if stale; a waiting node moves to the new
    file (after `relock_grace`, which gives the active the first chance); and the active re-locks
    the new file (`keep`) or, if another node holds it, stops.
    """

    poll = 0.2  #: how often a waiting node looks at the path
    relock_grace = 1.0  #: a waiting node moves to a replaced file only after this (the active polls faster)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None  #: the open file holding the lock, when we hold it
        self.waiting_on: FileKey | None = None  #: the file a blocked acquire() waits on

    def _open(self) -> int:
        try:
            # O_CLOEXEC (Python's default) keeps the lock out of every child we spawn.
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise VigilError(f"cannot open lock file {self.path}: {exc.strerror or exc}") from exc

    def path_key(self) -> FileKey | None:
        try:
            st = os.stat(self.path)
        except OSError:  # missing, or the directory became unreadable: the path names no file we can lock
            return None
        return st.st_dev, st.st_ino

    def key(self) -> FileKey | None:
        """The file the election is about: the path's, or while the path is missing, the one we wait on."""
        return self.path_key() or self.waiting_on

    def _names(self, fd: int) -> bool:
        st = os.fstat(fd)
        return self.path_key() == (st.st_dev, st.st_ino)

    def _try_lock_path(self) -> int | None:
        """Open the path and take its lock without blocking; the fd if it is the current file's lock."""
        for _ in range(3):  # the path changing between open and flock: retry, but never spin
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if self._names(fd):
                return fd
            os.close(fd)  # we locked a removed or replaced file: worthless
        return None

    def try_acquire(self) -> bool:
        if self.fd is None:
            self.fd = self._try_lock_path()
        return self.fd is not None

    def keep(self) -> bool:
        """For the holder: make sure we hold the lock on the file the path names now.

        True if we still do, or re-locked a replaced (or re-created a removed) file; False when
        another process holds the current file: then that process is the active, not us.
        """
        if self.fd is None:
            return False
        if self._names(self.fd):
            return True
        fd = self._try_lock_path()
        if fd is None:
            return False
        # Hand the old file's lock to whoever waits on it: they will find it stale and move here.
        old, self.fd = self.fd, fd
        os.close(old)
        return True

    async def acquire(self) -> None:
        """Block (in a thread) until we hold the lock on the file the path names."""
        loop = asyncio.get_running_loop()
        first = True
        while self.fd is None:
            if not first:
                await asyncio.sleep(0.02)  # a path replaced over and over is no reason to spin
            first = False
            attempt = _LockAttempt(self._open(), loop)
            self.waiting_on = attempt.key
            try:
                await self._wait(attempt)
            except BaseException:
                fd = attempt.settle()
                if fd is not None:
                    os.close(fd)
                raise
            fd = attempt.settle()
            if attempt.error is not None:
                raise VigilError(f"cannot lock {self.path}: {attempt.error.strerror or attempt.error}")
            if fd is not None and self._names(fd):
                self.fd = fd
            elif fd is not None:
                os.close(fd)  # the previous holder's file, removed or replaced: move to the new one
            # else: abandoned for a replaced file; its thread closes the fd if the flock ever returns
        self.waiting_on = None

    async def _wait(self, attempt: _LockAttempt) -> None:
        """Until the attempt's flock returns, or the path has named another file for `relock_grace`."""
        changed_at: float | None = None
        while True:
            done, _ = await asyncio.wait({attempt.future}, timeout=self.poll)
            if done:
                return
            now_key = self.path_key()
            if now_key is None or now_key == attempt.key:
                # Removed: keep waiting on the old file; its holder re-creates the path or dies.
                changed_at = None
                continue
            if changed_at is None:
                changed_at = time.monotonic()
            elif time.monotonic() - changed_at >= self.relock_grace:
                return

    def still_ours(self) -> bool:
        """False when the path no longer names the file we hold the lock on."""
        if self.fd is None:
            return False
        return self._names(self.fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _LockAttempt:
    """One blocking flock on one open file, in a daemon thread, that can be abandoned."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.key: FileKey = (st.st_dev, st.st_ino)
        self.future: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._mutex = threading.Lock()
        self._abandoned = False
        self._acquired = False
        self.error: OSError | None = None
        threading.Thread(target=self._run, name="vigil-lock-wait", daemon=True).start()

    def _run(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            error: OSError | None = exc
        else:
            error = None
        with self._mutex:
            self.error = error
            if self._abandoned or error is not None:
                os.close(self.fd)  # nobody wants this lock any more (or the flock failed)
            else:
                self._acquired = True
        with contextlib.suppress(RuntimeError):  # the loop is gone: the process is exiting
            self._loop.call_soon_threadsafe(_set_result, self.future, None)

    def settle(self) -> int | None:
        """The fd holding the lock if the flock has returned with it; otherwise abandon the attempt."""
        with self._mutex:
            if self._acquired:
                return self.fd
            self._abandoned = True
            return None


def _set_result(fut: asyncio.Future[None], value: None) -> None:
    if not fut.done():
        fut.set_result(value)


class Node:
    def __init__(
        self,
        paths: StatePaths,
        jobs_dir: Path,
        *,
        clock: Clock | None = None,
        rescan_interval: float = 1.0,
    ) -> None:
        self.paths = paths
        self.jobs_dir = jobs_dir
        self.clock = clock or SystemClock()
        self.rescan_interval = rescan_interval
        self.pid = os.getpid()
        self.starttime = starttime(self.pid)
        self.lock = LeaderLock(paths.lock)
        settings, _ = load_settings(jobs_dir)
        self.hb_interval = settings.heartbeat_interval
        self.hb_timeout = settings.heartbeat_timeout
        self.role = "starting"
        self.scheduler: Scheduler | None = None
        self._stop = asyncio.Event()
        self._subscribers: dict[asyncio.StreamWriter, dict[str, Any]] = {}
        self._clients: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}  #: every connection's handler
        self._refusals = RefusalAudit()
        self._refusal_timer: asyncio.TimerHandle | None = None
        self.active_since: str | None = None
        self.last_heartbeat_sent: float | None = None
        self._epoch_floor = 0  #: an epoch an agent has seen, for the next take_leadership
        self._retakes: list[float] = []  #: monotonic times of re-takes above an agent's epoch

    def request_stop(self) -> None:
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.request_stop("stop")

    async def run(self) -> None:
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
                takeover = unfinished or Takeover("start", None, None)
            else:
                takeover = await self._standby()
                if takeover is None:
                    return
            try:
                reason = await self._active(takeover)
                while reason == "epoch" and not self._stop.is_set() and self.lock.still_ours():
                    # An agent has seen a higher epoch (restored database): take the leadership again,
                    # under the lock we still hold, above it. At most 3 re-takes in any 60 s (see _active).
                    reason = await self._active(Takeover("epoch", self.pid, None))
            except StoreRetryableError as exc:
                # Becoming active needs writes (the epoch first). A full disk or another writer's
                # lock may pass: _active let go of the lock, so a standby may try meanwhile; we try
                # again after a growing pause instead of leaving no scheduler at all.
                unfinished = takeover
                if not await self._back_off(exc):
                    return
                continue
            if reason != "switchover":
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        return not self._stop.is_set()

    # ---------------------------------------------------------------- standby

    async def _standby(self) -> Takeover | None:
        self.role = "standby"
        log.info("standby (pid %d): waiting for the leader lock", self.pid)
        lock_task = asyncio.create_task(self.lock.acquire())
        stop_task = asyncio.create_task(self._stop.wait())
        watcher = _HeartbeatWatcher(self)
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
        self.lock.release()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not self._stop.is_set():
            if await _someone_active(self.paths):
                return
            await asyncio.sleep(0.02)

    # ---------------------------------------------------------------- active

    async def _active(self, takeover: Takeover) -> str:
        self.role = "active"
        cause = {"start": "downtime"}.get(takeover.cause, "failover")
        scheduler = Scheduler(self.paths, self.jobs_dir, clock=self.clock, rescan_interval=self.rescan_interval)
        scheduler.epoch_floor = self._epoch_floor
        now_mono = time.monotonic()
        self._retakes = [t for t in self._retakes if now_mono - t < 60.0]
        if takeover.cause == "epoch":
            self._retakes.append(now_mono)
        # A few re-takes may be needed (agents answer one by one): one more is allowed while fewer
        # than 3 were made in the last 60 s. More means someone else keeps raising an agent's
        # epoch, which re-taking cannot settle.
        scheduler.epoch_retake_allowed = len(self._retakes) < 3
        self.scheduler = scheduler
        if self._stop.is_set():
            return "stop"
        try:
            previous = await scheduler.take_leadership(pid=self.pid, starttime=self.starttime, cause=cause)
        except BaseException:
            # Nothing serves yet; the ledger's thread would keep the process (and the lock) alive.
            await scheduler.ledger.close()
            self.lock.release()
            raise
        now = self.clock.now()
        self.active_since = iso(now)
        # Serve heartbeats before the slow part (loading the folder, reconciling) so that standbys
        # never mistake a starting active for a hung one.
        scheduler.extra_handlers["status"] = self._status_command
        scheduler.extra_handlers["switchover"] = self._switchover_command
        server = await self._serve()
        tasks = [
            asyncio.create_task(self._heartbeats(), name="heartbeat"),
            asyncio.create_task(self._watch_lock_file(scheduler), name="lockwatch"),
        ]
        started = False
        try:
            # Inside the try: a failed start must not leave the socket and heartbeats serving.
            await scheduler.prepare()
            if takeover.cause != "start":
                gap_ms = None if takeover.gap_started is None else (time.time() - takeover.gap_started) * 1000
                await scheduler.ledger.write(
                    [
                        (
                            "INSERT INTO failovers (at, from_pid, to_pid, cause, gap_ms, epoch, writer_epoch) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (
                                iso(now),
                                takeover.from_pid or previous.pid,
                                self.pid,
                                takeover.cause,
                                gap_ms,
                                scheduler.epoch,
                                scheduler.epoch,
                            ),
                        )
                    ]
                )
                log.warning("took over from pid %s (%s)", takeover.from_pid, takeover.cause)
            reason = await scheduler.run()
            started = True
        finally:
            for task in tasks:
                task.cancel()
            await scheduler.ledger.close()  # run() closed it, unless the start failed (its thread would block exit)
            scheduler.high_water.close()
            if self.stop_reason_is_handover(scheduler):
                await self._broadcast({"handover": {"pid": self.pid, "epoch": scheduler.epoch, "at": time.time()}})
            server.close()
            self._write_refusal_summary()  # only logged now: the ledger is closed
            await self._close_clients()
            self._subscribers.clear()
            with contextlib.suppress(Exception):
                await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                if self.lock.still_ours():
                    os.unlink(self.paths.control)
            self._epoch_floor = scheduler.epoch_floor
            self.scheduler = None
            self.role = "stopped"
            # A lost database's connection is left open (Ledger.close): SQLite keeps its locks on
            # the -shm file at that path until the process exits, which it does now; a standby that
            # opened the path before would trust a stale wal-index. So the leader lock is kept too:
            # exit releases both.
            if not scheduler.ledger.abandoned and (not started or scheduler.fatal is not None):
                self.lock.release()  # the process ends (exit != 0): it holds nothing meanwhile
        if scheduler.fatal is not None:
            raise scheduler.fatal
        lost = scheduler.ledger.lost_error() if scheduler.ledger.abandoned else None
        if lost is not None:
            raise lost  # found while stopping: this process still ends, it cannot serve again
        if reason in ("fenced", "lock_lost"):
            # Never keep running after being fenced: the process exits and holds nothing.
            self.lock.release()
        return reason

    @staticmethod
    def stop_reason_is_handover(scheduler: Scheduler) -> bool:
        return scheduler.stop_reason == "switchover"

    async def _serve(self) -> asyncio.AbstractServer:
        # Only the lock holder binds, so removing a stale socket file here is safe.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.paths.control)
        server = await asyncio.start_unix_server(
            self._client, path=socket_address(self.paths.control), limit=MAX_REQUEST
        )
        # bind() applied the umask; the state directory is 0700 already, this is the second wall.
        os.chmod(self.paths.control, 0o600)
        return server

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Who is calling comes from the kernel (SO_PEERCRED), never from the request.
        user, refusal = _peer_identity(writer)
        task = asyncio.current_task()
        if task is not None:
            self._clients[task] = writer
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    # More than the stream limit without a newline: no request, and no way to find
                    # where the next one starts. Answer and hang up.
                    if refusal is not None:
                        self._audit_refusal(user, refusal, b"")
                    error = refusal or f"request too long: at most {MAX_REQUEST // 1024} KiB per line"
                    writer.write(encode({"ok": False, "error": error}))
                    await writer.drain()
                    break
                if not line:
                    break
                if refusal is not None:
                    self._audit_refusal(user, refusal, line)
                    writer.write(encode({"ok": False, "error": refusal}))
                    await writer.drain()
                    break
                try:
                    request = json.loads(line)
                    op = str(request.pop("op"))
                except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                    writer.write(encode({"ok": False, "error": "malformed request"}))
                    continue
                request["user"] = user
                if op == "subscribe":
                    self._subscribers[writer] = {
                        "role": request.get("role", "monitor"),
                        "pid": request.get("pid"),
                        "since": iso(self.clock.now()),
                    }
                    writer.write(encode(self._heartbeat()))
                    await writer.drain()
                    continue
                scheduler = self.scheduler
                if scheduler is None:
                    reply: dict[str, Any] = {"ok": False, "error": "scheduler is stopping"}
                else:
                    try:
                        reply = await scheduler.command(op, request)
                    except VigilError as exc:
                        reply = {"ok": False, "error": str(exc)}
                writer.write(encode(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The node is stopping with this client still connected. Python 3.11's stream server
            # logs a cancelled handler as an error with a traceback: end like a hung-up client.
            pass
        finally:
            self._subscribers.pop(writer, None)
            if task is not None:
                self._clients.pop(task, None)
            writer.close()

    async def _close_clients(self) -> None:
        """Hang up on every client (standbys, monitors, CLI requests) and let their handlers end."""
        for writer in list(self._clients.values()):
            writer.close()
        tasks = set(self._clients)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=0.5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=0.5)

    def _audit_refusal(self, user: str, refusal: str, line: bytes) -> None:
        """Record a caller refused for who they are, within RefusalAudit's bound."""
        scheduler = self.scheduler
        if scheduler is None or not scheduler.ledger.is_open or scheduler.ledger.file_lost() is not None:
            return
        now = time.monotonic()
        if self._refusals.started is not None and self._refusals.due(now) == 0:
            self._write_refusal_summary()
        if not self._refusals.note(now, user):
            if self._refusal_timer is None:
                # The summary row is written when the window ends, even if the caller gives up.
                delay = self._refusals.due(now) or 0.0
                self._refusal_timer = asyncio.get_running_loop().call_later(delay, self._write_refusal_summary)
            return
        op, target = _request_summary(line)
        log.warning("refused %s from %s: %s", op, user, refusal)
        scheduler.ledger.defer(Audit(self.clock.now(), user, op, target, f"refused: {refusal}"))

    def _write_refusal_summary(self) -> None:
        if self._refusal_timer is not None:
            self._refusal_timer.cancel()
            self._refusal_timer = None
        summary = self._refusals.summary()
        scheduler = self.scheduler
        if summary is None:
            return
        user, text = summary
        log.warning("%s", text)
        if scheduler is not None and scheduler.ledger.is_open and scheduler.ledger.file_lost() is None:
            scheduler.ledger.defer(Audit(self.clock.now(), user, "?", "", text))

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
        # Sent from the event loop itself: if the loop hangs, the heartbeats stop.
        while True:
            expected = time.monotonic() + self.hb_interval
            await asyncio.sleep(self.hb_interval)
            self._lag = max(0.0, time.monotonic() - expected)
            await self._broadcast(self._heartbeat())

    async def _broadcast(self, message: dict[str, Any]) -> None:
        data = encode(message)
        self.last_heartbeat_sent = time.time()
        for writer in list(self._subscribers):
            # Never drain() here: one subscriber that stops reading must not delay the others.
            try:
                writer.write(data)
            except (ConnectionError, RuntimeError):
                self._subscribers.pop(writer, None)
                continue
            buffered = writer.transport.get_write_buffer_size()
            if buffered > SUBSCRIBER_BUFFER_LIMIT:
                info = self._subscribers.pop(writer, None) or {}
                log.warning(
                    "dropping %s subscriber (pid %s): it has not read its last %d bytes",
                    info.get("role", "?"),
                    info.get("pid", "?"),
                    buffered,
                )
                writer.transport.abort()  # close() would keep the unsent bytes until they are read

    async def _watch_lock_file(self, scheduler: Scheduler) -> None:
        """Keep holding the lock on the file `leader.lock` names; stop if another node holds it."""
        while True:
            await asyncio.sleep(self.lock.poll / 2)  # faster than a waiting node moves to a new file
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
            scheduler.request_stop("lock_lost")
            return

    async def _status_command(self, args: dict[str, Any]) -> dict[str, Any]:
        standbys = [
            {"pid": info["pid"], "since": info["since"]}
            for info in self._subscribers.values()
            if info["role"] == "standby"
        ]
        age = None if self.last_heartbeat_sent is None else max(0.0, time.time() - self.last_heartbeat_sent)
        scheduler = self.scheduler
        return {
            "ok": True,
            "active": {
                "pid": self.pid,
                "epoch": scheduler.epoch if scheduler else None,
                "since": self.active_since,
                "heartbeat_age_s": round(age, 3) if age is not None else 0.0,
                "loop_lag_ms": round(self._lag * 1000, 3),
            },
            "standbys": standbys,
            "scheduler": scheduler.status() if scheduler else None,
        }

    async def _switchover_command(self, args: dict[str, Any]) -> dict[str, Any]:
        standbys = [info for info in self._subscribers.values() if info["role"] == "standby"]
        if not standbys:
            return {"ok": False, "error": "switch-over refused: no standby is connected to take over"}
        if self.scheduler is not None and self.scheduler.ledger.health.failing:
            fault = self.scheduler.ledger.health.fault
            return {"ok": False, "error": f"{fault}; try again when it is writable"}
        if self.scheduler is not None:
            await self.scheduler.ledger.write(
                [
                    (
                        "INSERT INTO audit (at, os_user, action, target, result, writer_epoch) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            iso(self.clock.now()),
                            str(args.get("user", "?")),
                            "switchover",
                            str(self.pid),
                            "ok",
                            self.scheduler.epoch,
                        ),
                    )
                ]
            )
            asyncio.get_running_loop().call_soon(self.scheduler.request_stop, "switchover")
        return {"ok": True, "from_pid": self.pid, "standbys": [s["pid"] for s in standbys]}


Identity = tuple[int, int]  #: (pid, /proc start time): one process, whatever pid reuse does


@dataclass(frozen=True)
class HolderEvidence:
    """What a standby checks, at one moment, before it may kill a silent active."""

    row: Identity | None  #: pid and start time the leader row names
    row_since: float | None  #: when that leader took over (wall clock seconds), from the row
    row_starttime_now: int | None  #: start time of the row's pid now; None: no such process
    row_holds_lock: bool  #: the row's pid has the lock file open and holds its flock
    lock_holders: frozenset[int]  #: pids /proc/locks shows holding the lock (for messages)
    heartbeat_alive: bool  #: the process that sent the last heartbeat still runs


def hang_target(evidence: HolderEvidence, heartbeat: Identity | None, own_pid: int) -> tuple[Identity | None, str]:
    """The process a standby may kill for silence, or why none: every identity check must agree.

    The target must hold the lock, be the process the leader row names (pid and start time), and
    agree with the last heartbeat if its sender still runs. On any doubt nothing is killed.
    """
    holders = sorted(evidence.lock_holders)
    held_by = f"held by pid {', '.join(map(str, holders))}" if holders else "not held by any process we can see"
    if evidence.row is None:
        return None, f"the leader row names no process; leader.lock is {held_by}"
    pid, start = evidence.row
    if pid == own_pid:
        return None, "the leader row names this process"
    if evidence.row_starttime_now is None:
        return None, f"pid {pid}, named by the leader row, has exited; leader.lock is {held_by}"
    if evidence.row_starttime_now != start:
        return None, f"pid {pid}, named by the leader row, is now another process; leader.lock is {held_by}"
    if not evidence.row_holds_lock:
        return None, f"pid {pid}, named by the leader row, does not hold leader.lock ({held_by})"
    if heartbeat is not None and heartbeat != evidence.row and evidence.heartbeat_alive:
        return None, f"heartbeats came from pid {heartbeat[0]}, still running, but the leader row names pid {pid}"
    return evidence.row, ""


def gather_evidence(paths: StatePaths, lock_file: FileKey, heartbeat: Identity | None) -> HolderEvidence:
    """Read the leader row and /proc (blocking: run it in a thread)."""
    conn = connect(paths, create=False)
    try:
        row = conn.execute("SELECT pid, starttime, since FROM leader WHERE id = 1").fetchone()
    finally:
        conn.close()
    identity: Identity | None = None
    since: float | None = None
    if row is not None and row["pid"] is not None and row["starttime"] is not None:
        identity = (int(row["pid"]), int(row["starttime"]))
        parsed = parse_iso(row["since"])
        since = parsed.timestamp() if parsed is not None else None
    return HolderEvidence(
        row=identity,
        row_since=since,
        row_starttime_now=starttime(identity[0]) if identity else None,
        row_holds_lock=holds_flock(identity[0], lock_file) if identity else False,
        lock_holders=frozenset(flock_holders(lock_file)),
        heartbeat_alive=heartbeat is not None and starttime(heartbeat[0]) == heartbeat[1],
    )


class _HeartbeatWatcher:
    """A standby's view of the active: heartbeats over the control socket, and the hang verdict.

    Silence is counted from the last heartbeat, or from the watcher's own start (so a standby that
    never got to subscribe still judges from its first second), or from when the holder took over.
    Every loop here is paced (at most one check per `check_interval`), and each reason not to kill
    is logged once.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.check_interval = max(0.05, min(node.hb_interval, 0.5))
        self.last_hb: dict[str, Any] | None = None
        self.started = time.monotonic()
        self.last_seen = self.started  #: monotonic time of the last heartbeat (or of our start)
        self.last_seen_wall: float | None = None
        self.eof_wall: float | None = None
        self.handover_wall: float | None = None
        self.handover_from: int | None = None
        self.killed_pid: int | None = None
        self.killed_wall: float | None = None
        self.judged: Identity | None = None  #: the holder whose silence we count
        self.judged_from = self.started  #: monotonic: its silence counts from here at the earliest
        self.signalled: set[Identity] = set()  #: a process is signalled once, never per tick
        self.said: set[str] = set()
        self.next_check = 0.0
        self.last_tick = self.started
        # A longer gap between two of our own checks means this standby was stopped or starved.
        self.pause_limit = max(node.hb_timeout / 2, 2 * node.hb_interval, 2 * self.check_interval)
        self.stopped = False

    def takeover(self) -> Takeover:
        from_pid = self.last_hb.get("pid") if self.last_hb else None
        if self.handover_wall is not None:
            return Takeover("switchover", from_pid, self.handover_wall)
        if self.killed_pid is not None:
            return Takeover("hang", self.killed_pid, self.last_seen_wall)
        if self.last_hb is None:
            return Takeover("crash", None, None)
        return Takeover("crash", from_pid, self.eof_wall or self.last_seen_wall)

    def _heartbeat_identity(self) -> Identity | None:
        if self.last_hb is None or self.handover_wall is not None:
            return None  # a sender that handed over says nothing about who holds the lock next
        pid, start = self.last_hb.get("pid"), self.last_hb.get("starttime")
        return (pid, start) if isinstance(pid, int) and isinstance(start, int) else None

    def _say(self, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            log.warning("%s", message)

    async def run(self) -> None:
        node = self.node
        retry = 0.05
        while not self.stopped:
            heard = False
            try:
                reader, writer = await asyncio.open_unix_connection(socket_address(node.paths.control))
            except OSError:
                await self._check_hang()
            else:
                try:
                    writer.write(encode({"op": "subscribe", "role": "standby", "pid": node.pid}))
                    await writer.drain()
                    while not self.stopped:
                        try:
                            async with asyncio.timeout(node.hb_interval):
                                line = await reader.readline()
                        except TimeoutError:
                            await self._check_hang()
                            continue
                        self._tick()
                        if not line:
                            self.eof_wall = time.time()
                            break
                        message = json.loads(line)
                        if not isinstance(message, dict):
                            continue
                        if isinstance(message.get("hb"), dict):
                            heard = True
                            self._on_heartbeat(message["hb"])
                        elif "handover" in message:
                            self.handover_wall = time.time()
                            handover = message["handover"]
                            self.handover_from = handover.get("pid") if isinstance(handover, dict) else None
                except (OSError, ValueError):
                    self.eof_wall = self.eof_wall or time.time()
                finally:
                    writer.close()
            # Paced: an active that accepts and hangs up at once, or no socket at all, is no reason to spin.
            retry = 0.05 if heard else min(retry * 2, self.check_interval)
            await asyncio.sleep(retry)

    def _on_heartbeat(self, hb: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.handover_wall is not None and hb.get("pid") != self.handover_from:
            # Another active took over after the hand-over we heard of; we have not taken over.
            self.handover_wall = self.handover_from = None
        self.last_hb = hb
        self.last_seen = now
        self.last_seen_wall = time.time()
        self.eof_wall = None
        identity = self._heartbeat_identity()
        if identity != self.judged:
            self.judged = identity
            self.judged_from = now
            self.killed_pid = None  # a new active: an earlier kill is not how we will take over

    def _tick(self) -> None:
        """Note that the watcher ran. After a pause of our own, the active's silence is unknown:
        count it afresh (a standby resumed from SIGSTOP must not kill a healthy active before it
        has read the heartbeats that arrived meanwhile)."""
        now = time.monotonic()
        if now - self.last_tick > self.pause_limit:
            self.last_seen = max(self.last_seen, now)
        self.last_tick = now

    async def _check_hang(self) -> None:
        self._tick()
        try:
            await self._judge()
        finally:
            self.last_tick = time.monotonic()  # reading the evidence is not a pause of ours

    async def _judge(self) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + self.check_interval
        timeout = self.node.hb_timeout
        if now - max(self.last_seen, self.judged_from) < timeout:
            return
        lock_file = self.node.lock.key()
        if lock_file is None:
            return  # no lock file: whoever creates it first gets its lock
        heartbeat = self._heartbeat_identity()
        try:
            evidence = await asyncio.to_thread(gather_evidence, self.node.paths, lock_file, heartbeat)
        except (VigilError, sqlite3.Error, OSError) as exc:
            self._say(f"cannot read the leader row ({exc}); a silent active is not killed")
            return
        target, why = hang_target(evidence, heartbeat, self.node.pid)
        if target is None:
            self._say(f"the active is silent but nothing is killed: {why}")
            return
        now = time.monotonic()
        if target != self.judged:
            if self.judged is None and evidence.row_since is not None:
                # Never heard from: silent since it took over (as the leader row says) or our start.
                taken_over = now - max(0.0, time.time() - evidence.row_since)
                self.judged_from = max(self.started, taken_over)
            elif self.judged is not None:
                self.judged_from = now  # a new holder since the one we knew: a full timeout for it
            self.judged = target
        silent = now - max(self.last_seen, self.judged_from)
        if silent < timeout:
            return
        pid, start = target
        if target in self.signalled:
            self._say(f"pid {pid} still holds leader.lock after SIGKILL (stuck in the kernel?); waiting")
            return
        self.signalled.add(target)
        if kill_verified(pid, start, still_valid=lambda p: holds_flock(p, lock_file)):
            log.warning("active pid %d silent for %.1fs while holding the lock: killed it", pid, silent)
            self.killed_pid = pid
            self.killed_wall = time.time()
        else:
            log.warning("active pid %d silent for %.1fs: not killed, it exited or let go of the lock", pid, silent)


def _peer_identity(writer: asyncio.StreamWriter) -> tuple[str, str | None]:
    """(the caller's user name, why it is refused or None) from the socket's peer credentials.

    Only the scheduler's own user and root may use the socket, read-only requests included:
    status and the heartbeat stream show pids and runs, and a subscriber the active has to feed.
    """
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError, struct.error):
        return "?", "permission denied: cannot tell who is calling (no peer credentials)"
    name = user_name(uid)
    own = os.geteuid()
    if uid not in (own, 0):
        allowed = "root" if own == 0 else f"{user_name(own)} and root"
        return name, f"permission denied: user {name} (uid {uid}) may not control this scheduler; only {allowed} may"
    return name, None


def _request_summary(line: bytes) -> tuple[str, str]:
    """(action, target) of a refused request for its audit row: short, escaped, never trusted."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: a line of 60,000 nested brackets
        request = None
    if not isinstance(request, dict):
        return "?", ""
    target = request.get("job", request.get("run_id", ""))
    return _short(request.get("op", "?"), 40), _short(target, 80)


def _short(value: object, limit: int) -> str:
    text = escape(value if isinstance(value, str) else json.dumps(value, default=str)[:limit])
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _someone_active(paths: StatePaths) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(socket_address(paths.control))
    except OSError:
        return False
    writer.close()
    return True
