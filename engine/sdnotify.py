"""systemd's notify protocol (sd_notify(3)) without libsystemd: datagrams to $NOTIFY_SOCKET.

`vigil up` and `vigil agent` tell a `Type=notify` unit when they are ready (READY=1 with a STATUS=
line), when their role changes (STATUS=), that their event loop is alive (WATCHDOG=1, sent by an
asyncio task, so a hung loop stops the pings and systemd restarts the service) and when they stop
(STOPPING=1). Outside systemd (no $NOTIFY_SOCKET) every call does nothing.

The variables are taken out of the process environment when read, as sd_notify(unset_environment=1)
does, so no job inherits them and pings for a scheduler that is no longer there.

Layer: base. Imports only the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("vigil.sdnotify")

#: What systemd exports to a notify service; read once, then removed from the environment.
NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | None:
    """The address to send to: a path as is, `@name` as the abstract name `\\0name`; None if unusable."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, if the watchdog is this process's."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None  # meant for another process (a parent that exec'd a wrapper, say)
    return int(usec) / 1e6 / 2


class Notifier:
    """Sends notify messages to one socket; every send is best effort and never raises."""

    def __init__(self, address: str | None = None, watchdog: float | None = None) -> None:
        self.address = address  #: None: not under a notify service, every call is a no-op
        self.watchdog = watchdog  #: seconds between WATCHDOG=1; None when no watchdog is asked for
        self._sock: socket.socket | None = None
        self._ready = False
        self._stopping = False
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """The notifier $NOTIFY_SOCKET asks for; takes the notify variables out of `environ`."""
        env = os.environ if environ is None else environ
        address = socket_address(env.get("NOTIFY_SOCKET", ""))
        interval = watchdog_interval(env, os.getpid() if pid is None else pid)
        for name in NOTIFY_VARS:
            env.pop(name, None)
        return cls(address, interval if address is not None else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of `NAME=value` lines; False if it could not be sent (logged once)."""
        if self.address is None:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # never hold up the event loop: a full queue drops the ping
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                shown = self.address.replace("\0", "@")
                log.warning("cannot notify systemd on %s: %s", shown, exc.strerror or exc)
            return False
        return True

    def ready(self, status: str) -> None:
        """READY=1 the first time (with STATUS=); afterwards only the status changes."""
        if self._ready:
            self.status(status)
            return
        self._ready = self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        """STOPPING=1, once."""
        if not self._stopping:
            self._stopping = True
            self.send("STOPPING=1", f"STATUS={status}")

    async def watchdog_pings(self) -> None:
        """WATCHDOG=1 every `watchdog` seconds, from the event loop itself, until cancelled.

        The ping proves only that this loop runs: a coroutine that blocks it (or a stopped
        process) stops the pings, and systemd acts after WatchdogSec.
        """
        if self.address is None or self.watchdog is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
