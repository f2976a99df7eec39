"""The active scheduler's local control socket: newline-delimited JSON over a Unix stream socket.

CLI commands, the dashboard and standbys reach the active through it; standbys also receive the
heartbeat stream on it. Connecting fails fast when nobody is active, which is how clients learn it.
A refusal carries a `kind` (`ErrorKind`): the server picks it from the exception class
(`kind_of`), and `ControlClient` raises the matching class again, so a caller can tell "no such
run" from "try again later" without reading the message.

Layer: control. Imports the base modules and the store's busy timeout; the server side lives in
engine.ha.control_server.
"""

from __future__ import annotations

import json
import socket
from enum import StrEnum
from pathlib import Path
from typing import Any

from engine.errors import (
    ControlError,
    NoActiveSchedulerError,
    NotFoundError,
    SchedulerStoppingError,
    StoreRetryableError,
    UnwritableError,
    VigilError,
)
from engine.paths import StatePaths
from engine.store.sqlite.db import BUSY_TIMEOUT_MS

MAX_LINE = 1 << 20  #: the longest reply a client reads
MAX_REQUEST = 1 << 16  #: the longest request line the scheduler reads (asyncio's stream limit)
#: How long a client waits for an answer by default. A command that needs a write may wait one
#: busy timeout for another writer's lock before the scheduler answers "try again when it is
#: writable" (while such a fault lasts it answers at once), so a client waits longer than that.
COMMAND_TIMEOUT_S = BUSY_TIMEOUT_MS / 1000 + 5.0


class ErrorKind(StrEnum):
    """What a refusal on the control socket is about; ControlClient raises the matching error."""

    REFUSED = "refused"  #: anything else (ControlError); also a reply without a kind
    NOT_FOUND = "not_found"  #: no such job or run (NotFoundError)
    STOPPING = "stopping"  #: the active is stopping (SchedulerStoppingError)
    UNWRITABLE = "unwritable"  #: its database refuses writes for now (UnwritableError)


ERROR_KINDS = tuple(ErrorKind)

#: The class ControlClient raises for a refusal of each kind (like httpx's map_exceptions).
RAISED_AS: dict[ErrorKind, type[VigilError]] = {
    ErrorKind.REFUSED: ControlError,
    ErrorKind.NOT_FOUND: NotFoundError,
    ErrorKind.STOPPING: SchedulerStoppingError,
    ErrorKind.UNWRITABLE: UnwritableError,
}

#: The kind an exception is sent as: that of the first class it is an instance of, else "refused".
_SENT_AS: tuple[tuple[type[VigilError], ErrorKind], ...] = (
    *((cls, kind) for kind, cls in RAISED_AS.items() if kind != ErrorKind.REFUSED),
    (StoreRetryableError, ErrorKind.UNWRITABLE),  # a handler's write met a full disk or a held lock
)


def error_reply(message: str, kind: str = ErrorKind.REFUSED) -> dict[str, Any]:
    """A refusal as the control socket sends it: the message and its kind."""
    return {"ok": False, "error": message, "kind": str(kind)}


def kind_of(exc: VigilError) -> ErrorKind:
    """The kind a refusal raised as `exc` is sent with."""
    return next((kind for cls, kind in _SENT_AS if isinstance(exc, cls)), ErrorKind.REFUSED)


def refusal(exc: VigilError) -> dict[str, Any]:
    """`exc`, raised by a command's handler, as the reply the control socket sends."""
    return error_reply(str(exc), kind_of(exc))


def refused_error(reply: dict[str, Any]) -> VigilError:
    """The exception a refusal stands for; an unknown or missing kind is a plain ControlError."""
    kind = reply.get("kind")
    cls = RAISED_AS[ErrorKind(kind)] if kind in ERROR_KINDS else ControlError
    return cls(str(reply.get("error", "refused")))


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


class ControlClient:
    """Synchronous client used by the CLI and the dashboard's action worker."""

    def __init__(self, paths: StatePaths, timeout: float = COMMAND_TIMEOUT_S) -> None:
        self.paths = paths
        self.timeout = timeout

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """The reply to `op`; a refusal raises its kind's class (RAISED_AS), e.g. NotFoundError."""
        sock = self.connect()
        try:
            # No "user" field: the scheduler takes the caller's identity from the socket itself.
            sock.sendall(encode({"op": op, **args}))
            reply = read_line(sock)
        except TimeoutError as exc:
            raise ControlError(f"the active scheduler did not answer {op!r} within {self.timeout:g}s") from exc
        except OSError as exc:
            raise ControlError(f"lost the connection to the active scheduler during {op!r}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ControlError(f"the active scheduler sent an unreadable reply to {op!r}: {exc}") from exc
        finally:
            sock.close()
        if reply is None:
            raise ControlError("the active scheduler closed the connection without answering")
        if not reply.get("ok"):
            raise refused_error(reply)
        return reply

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(socket_address(self.paths.control))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise NoActiveSchedulerError(self.paths.root) from exc
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot reach the scheduler at {self.paths.control}: {exc}") from exc
        return sock

    def is_active(self) -> bool:
        try:
            self.connect().close()
        except ControlError:
            return False
        return True


def read_line(sock: socket.socket) -> dict[str, Any] | None:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf.extend(chunk)
        if len(buf) > MAX_LINE:
            raise ControlError("reply too long")
    reply = json.loads(buf)
    if not isinstance(reply, dict):
        raise json.JSONDecodeError("not a JSON object", buf.decode("utf-8", "replace"), 0)
    return reply


def socket_address(path: Path) -> str:
    """Unix socket paths are limited to 107 bytes; fall back to Linux's /proc/self/cwd trick."""
    text = str(path)
    if len(text.encode()) < 104:
        return text
    # A short alias through the directory's fd keeps long state paths usable.
    return f"/proc/self/fd/{_dir_fd(path.parent)}/{path.name}"


_DIR_FDS: dict[Path, int] = {}


def _dir_fd(directory: Path) -> int:
    import os

    if directory not in _DIR_FDS:
        _DIR_FDS[directory] = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    return _DIR_FDS[directory]


class RefusalAudit:
    """How many refused control requests the audit records one by one: a bound, so that a local
    user who may not control the scheduler cannot fill its disk by asking again and again.

    At most `limit` rows per `window` seconds; the rest of the window's refusals are counted and
    recorded in one summary row when it ends. Pure policy: callers pass the (monotonic) time.
    """

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self.started: float | None = None  #: when the current window began
        self.recorded = 0
        self.suppressed: dict[str, int] = {}  #: user -> refusals not recorded one by one

    def note(self, now: float, user: str) -> bool:
        """A refusal from `user`: True if it gets its own audit row."""
        if self.started is None or now - self.started >= self.window:
            # A new window; the caller writes summary() of the old one first.
            self.started, self.recorded = now, 0
        if self.recorded < self.limit:
            self.recorded += 1
            return True
        self.suppressed[user] = self.suppressed.get(user, 0) + 1
        return False

    def due(self, now: float) -> float | None:
        """Seconds until the window with suppressed refusals ends (0: now), or None if none."""
        if not self.suppressed or self.started is None:
            return None
        return max(0.0, self.started + self.window - now)

    def summary(self) -> tuple[str, str] | None:
        """(user, result text) of the summary row for the suppressed refusals, then forgotten."""
        if not self.suppressed:
            return None
        total = sum(self.suppressed.values())
        users = ", ".join(f"{user} {count}" for user, count in sorted(self.suppressed.items()))
        user = next(iter(self.suppressed)) if len(self.suppressed) == 1 else "?"
        self.suppressed = {}
        text = (
            f"refused: permission denied: {total} more refused request(s) within {self.window:g}s, "
            f"not recorded one by one (by user: {users})"
        )
        return user, text
