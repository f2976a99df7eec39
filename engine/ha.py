"""Active/standby on one host: a flock'd lock file elects, heartbeats detect hangs, epochs fence.

Every `vigil up` on a state directory runs a Node. The node holding the exclusive flock on
`leader.lock` is active; the others block on it in a thread, so a crash is replaced as soon as
the kernel releases the dead process's lock. A hung active keeps its lock; the standby notices
its heartbeats stop, checks it is still the same process (pid + start time), kills it, and the
lock follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .clock import Clock, SystemClock
from .control import encode, socket_address
from .db import StatePaths, connect, iso, user_name
from .errors import VigilError
from .jobfile import load_settings
from .procs import kill_verified, starttime
from .scheduler import Scheduler

log = logging.getLogger("vigil.ha")


@dataclass
class Takeover:
    cause: str  #: crash | hang | switchover | start
    from_pid: int | None
    gap_started: float | None  #: time.time() when the previous active was last known alive


class LeaderLock:
    """The exclusive flock on the dedicated lock file (never a database file, never deleted)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def _open(self) -> int:
        if self.fd is None:
            # O_CLOEXEC (Python's default) keeps the lock out of every child we spawn.
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self.fd

    def try_acquire(self) -> bool:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def acquire(self) -> None:
        """Block (in a thread) until the lock is ours."""
        fd = self._open()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                loop.call_soon_threadsafe(_set_result, done, None)
            except OSError as exc:
                loop.call_soon_threadsafe(_set_exception, done, exc)

        threading.Thread(target=wait, name="vigil-lock-wait", daemon=True).start()
        await done

    def still_ours(self) -> bool:
        """False when someone replaced the lock file: a new file means a second active could exist."""
        if self.fd is None:
            return False
        try:
            return os.fstat(self.fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _set_result(fut: asyncio.Future[None], value: None) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


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
        connect(self.paths).close()
        while not self._stop.is_set():
            if self.lock.try_acquire():
                takeover = Takeover("start", None, None)
            else:
                takeover = await self._standby()
                if takeover is None:
                    return
            reason = await self._active(takeover)
            while reason == "epoch" and not self._stop.is_set() and self.lock.still_ours():
                # An agent has seen a higher epoch (restored database): take the leadership again,
                # under the lock we still hold, above it. At most once per minute (see agents.py).
                reason = await self._active(Takeover("epoch", self.pid, None))
            if reason != "switchover":
                return
            await self._after_handover()

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
            return None  # stopping; the lock thread dies with the process
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
        scheduler = Scheduler(
            self.paths, self.jobs_dir, clock=self.clock, rescan_interval=self.rescan_interval
        )
        scheduler.epoch_floor = self._epoch_floor
        now_mono = time.monotonic()
        if takeover.cause == "epoch":
            self._retakes.append(now_mono)
        # A few re-takes may be needed (agents answer one by one); more within a minute means
        # someone else keeps raising an agent's epoch, which re-taking cannot settle.
        scheduler.epoch_retake_allowed = sum(1 for t in self._retakes if now_mono - t < 60.0) < 3
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
                                takeover.from_pid or previous.get("pid"),
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
                await self._broadcast(
                    {"handover": {"pid": self.pid, "epoch": scheduler.epoch, "at": time.time()}}
                )
            server.close()
            for writer in list(self._subscribers):
                writer.close()
            self._subscribers.clear()
            with contextlib.suppress(Exception):
                await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                if self.lock.still_ours():
                    os.unlink(self.paths.control)
            self._epoch_floor = scheduler.epoch_floor
            self.scheduler = None
            self.role = "stopped"
            if not started or scheduler.fatal is not None:
                self.lock.release()  # the process ends (exit != 0): it holds nothing meanwhile
        if scheduler.fatal is not None:
            raise scheduler.fatal
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
        server = await asyncio.start_unix_server(self._client, path=socket_address(self.paths.control))
        # bind() applied the umask; the state directory is 0700 already, this is the second wall.
        os.chmod(self.paths.control, 0o600)
        return server

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Who is calling comes from the kernel (SO_PEERCRED), never from the request.
        user, refusal = _peer_identity(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if refusal is not None:
                    writer.write(encode({"ok": False, "error": refusal}))
                    await writer.drain()
                    break
                try:
                    request = json.loads(line)
                    op = str(request.pop("op"))
                except (ValueError, KeyError, TypeError, AttributeError):
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
        finally:
            self._subscribers.pop(writer, None)
            writer.close()

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
            try:
                writer.write(data)
            except (ConnectionError, RuntimeError):
                self._subscribers.pop(writer, None)

    async def _watch_lock_file(self, scheduler: Scheduler) -> None:
        while True:
            await asyncio.sleep(1.0)
            if not self.lock.still_ours():
                log.error("lock file %s was replaced or removed; stopping", self.paths.lock)
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


class _HeartbeatWatcher:
    """A standby's view of the active: heartbeats over the control socket, and the hang verdict."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.last_hb: dict[str, Any] | None = None
        self.last_seen = time.monotonic()
        self.last_seen_wall: float | None = None
        self.eof_wall: float | None = None
        self.handover_wall: float | None = None
        self.killed_pid: int | None = None
        self.killed_wall: float | None = None
        self.last_holder: tuple[int, int] | None = None
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

    async def run(self) -> None:
        node = self.node
        while not self.stopped:
            try:
                reader, writer = await asyncio.open_unix_connection(socket_address(node.paths.control))
            except OSError:
                await self._check_hang(None)
                await asyncio.sleep(0.05)
                continue
            try:
                writer.write(encode({"op": "subscribe", "role": "standby", "pid": node.pid}))
                await writer.drain()
                while not self.stopped:
                    try:
                        async with asyncio.timeout(node.hb_interval):
                            line = await reader.readline()
                    except TimeoutError:
                        await self._check_hang(writer)
                        continue
                    if not line:
                        self.eof_wall = time.time()
                        break
                    message = json.loads(line)
                    if "hb" in message:
                        self.last_hb = message["hb"]
                        self.last_holder = (self.last_hb.get("pid"), self.last_hb.get("starttime"))
                        self.last_seen = time.monotonic()
                        self.last_seen_wall = time.time()
                        self.eof_wall = None
                    elif "handover" in message:
                        self.handover_wall = time.time()
            except (OSError, ValueError):
                self.eof_wall = self.eof_wall or time.time()
            finally:
                writer.close()
            await asyncio.sleep(0.01)

    async def _check_hang(self, writer: asyncio.StreamWriter | None) -> None:
        silent = time.monotonic() - self.last_seen
        if silent < self.node.hb_timeout or self.killed_pid is not None:
            return
        holder = self._holder()
        if holder is None:
            return
        if holder != self.last_holder:
            # A new holder (e.g. one that just took over and is starting up) gets a full timeout.
            self.last_holder = holder
            self.last_seen = time.monotonic()
            return
        pid, start = holder
        if pid == self.node.pid:
            return
        log.warning("active pid %d silent for %.1fs while holding the lock: killing it", pid, silent)
        if kill_verified(pid, start):
            self.killed_pid = pid
            self.killed_wall = time.time()

    def _holder(self) -> tuple[int, int] | None:
        """The lock holder's identity: its heartbeat if any, cross-checked with the leader row."""
        try:
            conn = connect(self.node.paths, create=False)
            try:
                row = conn.execute("SELECT pid, starttime FROM leader WHERE id = 1").fetchone()
            finally:
                conn.close()
        except VigilError:
            return None
        if row is None or row["pid"] is None or row["starttime"] is None:
            return None
        pid, start = int(row["pid"]), int(row["starttime"])
        if self.last_hb is not None and (self.last_hb.get("pid"), self.last_hb.get("starttime")) != (
            pid,
            start,
        ):
            return None  # the row and the heartbeats disagree: do not kill on doubt
        return pid, start


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
        return name, (
            f"permission denied: user {name} (uid {uid}) may not control this scheduler; "
            f"only {user_name(own)} and root may"
        )
    return name, None


async def _someone_active(paths: StatePaths) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(socket_address(paths.control))
    except OSError:
        return False
    writer.close()
    return True
