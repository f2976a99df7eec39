"""Process identity and signalling that survive pid reuse."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from enum import StrEnum


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, pgrp, ...), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return data[data.rfind(b")") + 2 :].split()


def starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: start time in clock ticks since boot (immune to clock changes)."""
    rest = _stat_fields(pid)
    try:
        return int(rest[19]) if rest is not None else None
    except (IndexError, ValueError):
        return None


def has_live_member(pgid: int) -> bool:
    """Whether any process that is not a zombie belongs to process group `pgid` (one pass over /proc)."""
    key = str(pgid).encode()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            rest = _stat_fields(entry.name)
            if rest is not None and len(rest) > 2 and rest[2] == key and rest[0] != b"Z":
                return True
    return False


class GroupState(StrEnum):
    """What became of a job's process group (pgid = the job's pid), judged by pid + start time."""

    LEADER = "leader"  #: the job's own process is alive, with the recorded start time
    LEADERLESS = "leaderless"  #: the job's process is gone but members of its group live on
    GONE = "gone"  #: nothing of the group is left
    REUSED = "reused"  #: the pid now belongs to another process: the job's group is gone
    UNVERIFIED = "unverified"  #: a process has the pid but no start time was recorded to compare


def group_state(pgid: int, expected_starttime: int | None) -> GroupState:
    if pgid <= 1:
        return GroupState.GONE
    rest = _stat_fields(pgid)
    try:
        actual = int(rest[19]) if rest is not None else None
    except (IndexError, ValueError):
        actual = None
    if actual is not None:
        if expected_starttime is None:
            return GroupState.UNVERIFIED
        if actual != expected_starttime:
            return GroupState.REUSED
        if rest is not None and rest[0] != b"Z":
            return GroupState.LEADER
        # The job has exited and waits to be reaped (its shim is gone): only its group may live on.
    else:
        # No process has the pid. A pid still in use as a process group id is never handed to a
        # new process, so a group that exists under it is still the job's own.
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return GroupState.GONE
        except PermissionError:
            pass  # it exists, though it is not ours to signal
    # Zombies count as members for kill(2); a group of zombies only is gone for us.
    return GroupState.LEADERLESS if has_live_member(pgid) else GroupState.GONE


def signal_group(pgid: int, expected_starttime: int | None, sig: int) -> bool:
    """Signal a job's process group only if it is still the group we launched (pid + start time).

    A group whose leader has exited is still ours while any member lives (its id cannot be reused
    meanwhile); a live process under the pid with another start time, or with none recorded to
    compare, is never signalled: after pid reuse it may lead a stranger's group.
    """
    if group_state(pgid, expected_starttime) not in (GroupState.LEADER, GroupState.LEADERLESS):
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_verified(
    pid: int,
    expected_starttime: int,
    sig: int = signal.SIGKILL,
    *,
    still_valid: Callable[[int], bool] | None = None,
) -> bool:
    """Kill a process only after checking it is still the one we mean (pid + start time).

    `still_valid(pid)` is a further check (e.g. "it still holds the leader lock") made after the
    pidfd is open: the pidfd pins the process, so a pid reused in between is never signalled.
    """
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if starttime(pid) != expected_starttime:
            return False
        if still_valid is not None and not still_valid(pid):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def fdinfo_holds_exclusive_flock(fdinfo: str) -> bool:
    """Whether a /proc/PID/fdinfo/FD text shows that open file holding an exclusive flock.

    The kernel lists there only the locks this open file holds ("lock:\t1: FLOCK  ADVISORY  WRITE
    ..."); a request still waiting for the lock is not listed.
    """
    for line in fdinfo.splitlines():
        if not line.startswith("lock:"):
            continue
        fields = line[len("lock:") :].split()
        if len(fields) >= 4 and fields[1] == "FLOCK" and fields[3] == "WRITE":
            return True
    return False


def holds_flock(pid: int, file_key: tuple[int, int]) -> bool:
    """True when process `pid` has the file `file_key` (st_dev, st_ino) open with an exclusive flock.

    Read from /proc/PID/fd and /proc/PID/fdinfo: a process we may not inspect counts as not holding.
    """
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for name in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) != file_key:
            continue
        try:
            with open(f"/proc/{pid}/fdinfo/{name}") as fh:
                info = fh.read()
        except OSError:
            continue
        if fdinfo_holds_exclusive_flock(info):
            return True
    return False


def parse_flock_holders(proc_locks: str, major: int, minor: int, inode: int) -> set[int]:
    """Pids shown in a /proc/locks text as holding an exclusive flock on one file (waiters excluded)."""
    holders: set[int] = set()
    for line in proc_locks.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 8481 fe:00:2146335 0 EOF"; a waiter has "->" after the number.
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[3] != "WRITE":
            continue
        try:
            maj, mnr, ino = fields[5].split(":")
            if (int(maj, 16), int(mnr, 16), int(ino)) == (major, minor, inode):
                holders.add(int(fields[4]))
        except ValueError:
            continue
    return holders


def flock_holders(file_key: tuple[int, int]) -> set[int]:
    """Pids holding an exclusive flock on the file `file_key` (st_dev, st_ino), from /proc/locks."""
    try:
        with open("/proc/locks") as fh:
            text = fh.read()
    except OSError:
        return set()
    dev, ino = file_key
    return parse_flock_holders(text, os.major(dev), os.minor(dev), ino)
