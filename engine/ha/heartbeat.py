"""A standby's watch on the active: its heartbeats, and the verdict that a silent one is hung.

A hung active keeps its lock; the standby notices its heartbeats stop, checks that the process holds
the lock and is the one the leader row and the heartbeats name (pid + start time), kills it, and the
lock follows. The evidence (`gather_evidence`) is I/O; the verdict (`hang_target`) is pure.

Layer: ha. Imports the base modules, engine.control (framing), engine.exec.procs (/proc, kill) and
the store's leader-row reader; never the scheduler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.control import encode, socket_address
from engine.errors import VigilError
from engine.exec.procs import flock_holders, holds_flock, kill_verified, starttime
from engine.ha.lock import FileKey, LeaderLock
from engine.paths import StatePaths
from engine.store.sqlite.leader import read_leader

log = logging.getLogger("vigil.ha")


class TakeoverCause(StrEnum):
    """How a node came to be active; recorded in the failovers table (`vigil status`)."""

    START = "start"  #: the first active on the state directory, or after downtime
    CRASH = "crash"  #: the previous active died (its lock was released)
    HANG = "hang"  #: the previous active was silent while holding the lock: this standby killed it
    SWITCHOVER = "switchover"  #: the previous active handed over (`vigil switchover`)
    EPOCH = "epoch"  #: the same node again, above an epoch an agent has seen


@dataclass(frozen=True, slots=True)
class Takeover:
    cause: TakeoverCause
    from_pid: int | None
    gap_started: float | None  #: time.time() when the previous active was last known alive


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
    leader = read_leader(paths)
    identity: Identity | None = None
    since: float | None = None
    if leader is not None and leader.pid is not None and leader.starttime is not None:
        identity = (int(leader.pid), int(leader.starttime))
        since = leader.since.timestamp() if leader.since is not None else None
    return HolderEvidence(
        row=identity,
        row_since=since,
        row_starttime_now=starttime(identity[0]) if identity else None,
        row_holds_lock=holds_flock(identity[0], lock_file) if identity else False,
        lock_holders=frozenset(flock_holders(lock_file)),
        heartbeat_alive=heartbeat is not None and starttime(heartbeat[0]) == heartbeat[1],
    )


class HeartbeatWatcher:
    """A standby's view of the active: heartbeats over the control socket, and the hang verdict.

    Silence is counted from the last heartbeat, or from the watcher's own start (so a standby that
    never got to subscribe still judges from its first second), or from when the holder took over.
    Every loop here is paced (at most one check per `check_interval`), and each reason not to kill
    is logged once.
    """

    def __init__(self, paths: StatePaths, lock: LeaderLock, *, pid: int, interval: float, timeout: float) -> None:
        self.paths = paths
        self.lock = lock
        self.pid = pid  #: this standby's own pid (never a kill target)
        self.interval = interval  #: the heartbeat interval (vigil.toml)
        self.timeout = timeout  #: silence longer than this is a hang
        self.check_interval = max(0.05, min(interval, 0.5))
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
        self.pause_limit = max(timeout / 2, 2 * interval, 2 * self.check_interval)
        self.stopped = False

    def takeover(self) -> Takeover:
        from_pid = self.last_hb.get("pid") if self.last_hb else None
        if self.handover_wall is not None:
            return Takeover(TakeoverCause.SWITCHOVER, from_pid, self.handover_wall)
        if self.killed_pid is not None:
            return Takeover(TakeoverCause.HANG, self.killed_pid, self.last_seen_wall)
        if self.last_hb is None:
            return Takeover(TakeoverCause.CRASH, None, None)
        return Takeover(TakeoverCause.CRASH, from_pid, self.eof_wall or self.last_seen_wall)

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
        retry = 0.05
        while not self.stopped:
            heard = False
            try:
                reader, writer = await asyncio.open_unix_connection(socket_address(self.paths.control))
            except OSError:
                await self._check_hang()
            else:
                try:
                    writer.write(encode({"op": "subscribe", "role": "standby", "pid": self.pid}))
                    await writer.drain()
                    while not self.stopped:
                        try:
                            async with asyncio.timeout(self.interval):
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
        timeout = self.timeout
        if now - max(self.last_seen, self.judged_from) < timeout:
            return
        lock_file = self.lock.key()
        if lock_file is None:
            return  # no lock file: whoever creates it first gets its lock
        heartbeat = self._heartbeat_identity()
        try:
            evidence = await asyncio.to_thread(gather_evidence, self.paths, lock_file, heartbeat)
        except (VigilError, OSError) as exc:
            self._say(f"cannot read the leader row ({exc}); a silent active is not killed")
            return
        target, why = hang_target(evidence, heartbeat, self.pid)
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
