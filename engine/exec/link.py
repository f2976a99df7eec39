"""The executor's end of the launcher (engine/exec/launcher.py): start it, send it requests, read its
answers. What to do with them (pending runs, a launcher that dies or hangs) is LocalExecutor's.

Layer: exec. Imports the standard library and engine.exec.launcher only.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.exec.launcher import MAX_MESSAGE, RESET_SIGNALS, SOCKET_FD

LAUNCHER = str(Path(__file__).resolve().with_name("launcher.py"))
#: Room for bursts of requests (the kernel doubles it, up to net.core.wmem_max).
SOCKET_BUFFER = 1 << 20
_FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)


@dataclass
class Message:
    """One message from the launcher, with the fd it carried (a pidfd), if any."""

    body: dict[str, Any]
    fd: int | None


class LauncherLink:
    """A started launcher process and the socket to it (non-blocking on this side)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            for sock in (ours, theirs):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            # Above SOCKET_FD, so that the spawn's dup2 onto it clears close-on-exec.
            child_fd = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, SOCKET_FD + 1)
            try:
                self.pid = os.posix_spawn(
                    sys.executable,
                    [sys.executable, "-I", "-S", LAUNCHER],
                    dict(environ),
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_DUP2, child_fd, SOCKET_FD),
                    ],
                    setpgroup=0,  # out of the terminal's foreground group: a Ctrl-C is not for it
                    setsigmask=(),
                    setsigdef=RESET_SIGNALS,
                )
            finally:
                os.close(child_fd)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:
            ours.close()
            os.kill(self.pid, signal.SIGKILL)  # our child, not reaped yet: the pid is still its own
            os.waitpid(self.pid, 0)  # never a zombie of ours, at each retry
            raise
        self.ready = False  #: it said so: requests sent now are answered at once
        self.started = time.monotonic()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, body: bytes, fd: int) -> bool:
        """Send one request with `fd` attached, without waiting: False if the socket is full.
        OSError if it cannot be sent at all (too large, the launcher gone, ...)."""
        if len(body) > MAX_MESSAGE:
            raise OSError(errno.EMSGSIZE, "request larger than the launcher reads")
        try:
            self.sock.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        except BlockingIOError:
            return False
        return True

    def receive(self) -> tuple[list[Message], bool]:
        """Every message waiting now, and whether the launcher's end has closed (after the last one)."""
        messages: list[Message] = []
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return messages, False
            except OSError:
                return messages, True
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            if not data and not fds:
                return messages, True
            try:
                body = json.loads(data)
            except ValueError:
                body = None
            for stray in fds[1:]:
                os.close(stray)
            messages.append(Message(body if isinstance(body, dict) else {}, fds[0] if fds else None))

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close_socket(self) -> None:
        """Hang up: a live launcher ends once it has read what was sent."""
        self.sock.close()

    def reap(self) -> bool:
        """Collect the ended launcher's status; False while it still runs."""
        try:
            info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            info = None
            ended = True
        else:
            ended = info is not None
        if ended:
            os.close(self.pidfd)
            self.pidfd = -1
        return ended
