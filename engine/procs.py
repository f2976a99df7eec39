"""Process identity and signalling that survive pid reuse."""

from __future__ import annotations

import os
import signal


def starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: start time in clock ticks since boot (immune to clock changes)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def is_same_process(pid: int, expected_starttime: int | None) -> bool:
    if pid <= 0:
        return False
    actual = starttime(pid)
    if actual is None:
        return False
    return expected_starttime is None or actual == expected_starttime


def signal_group(pgid: int, expected_starttime: int | None, sig: int) -> bool:
    """Signal a job's process group if its leader is still the process we launched."""
    if not is_same_process(pgid, expected_starttime):
        # The leader may have exited while descendants live on in its group; signal the group
        # only if something still belongs to it.
        try:
            os.killpg(pgid, 0)
        except OSError:
            return False
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def kill_verified(pid: int, expected_starttime: int, sig: int = signal.SIGKILL) -> bool:
    """Kill a process only after checking it is still the one we mean (pid + start time)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if starttime(pid) != expected_starttime:
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
