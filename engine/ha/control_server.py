"""The active node's control socket server: who may call, each request answered, the heartbeat stream.

One server per term as active, bound once the node holds the lock and leads. Who is calling comes
from the kernel (SO_PEERCRED), never from the request; a caller who may not control the scheduler
is refused and audited within `RefusalAudit`'s bound. Every refusal goes out through
`engine.control.error_reply`, with the kind its exception class stands for.

Layer: ha. Imports the base modules, engine.control (framing, kinds), the store's intents and the
scheduler it serves requests to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.clock import Clock
from engine.control import MAX_REQUEST, ErrorKind, RefusalAudit, encode, error_reply, refusal, socket_address
from engine.errors import VigilError
from engine.paths import StatePaths, user_name
from engine.run.loop import Scheduler
from engine.store.intents import Audit
from engine.text import escape

log = logging.getLogger("vigil.ha")

#: A heartbeat subscriber with more unsent bytes than this has stopped reading: it is dropped.
SUBSCRIBER_BUFFER_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A connection that asked for the heartbeat stream."""

    role: str  #: "standby", or what a monitor says it is ("monitor" by default)
    pid: int | None  #: as the subscriber says (shown by `vigil status`)
    since: datetime  #: when it subscribed


class ControlServer:
    """The control socket of one term as active, serving `scheduler`."""

    def __init__(
        self,
        paths: StatePaths,
        scheduler: Scheduler,
        *,
        clock: Clock,
        heartbeat: Callable[[], dict[str, Any]],
        refusals: RefusalAudit,
        standby_gone: Callable[[Subscriber], None] | None = None,
    ) -> None:
        self.paths = paths
        self.scheduler = scheduler
        self.clock = clock
        self.heartbeat = heartbeat  #: the heartbeat message now (a subscriber gets one at once)
        self.refusals = refusals
        self.standby_gone = standby_gone  #: a standby hung up while this server serves (not at close)
        self.subscribers: dict[asyncio.StreamWriter, Subscriber] = {}
        self.subscribed = asyncio.Event()  #: set on each new subscriber (the heartbeats start again)
        self.last_sent: float | None = None  #: time.time() of the last broadcast
        self._clients: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}  #: every connection's handler
        self._refusal_timer: asyncio.TimerHandle | None = None
        self._server: asyncio.AbstractServer | None = None
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    def standbys(self) -> list[Subscriber]:
        return [info for info in self.subscribers.values() if info.role == "standby"]

    async def start(self) -> None:
        # Only the lock holder binds, so removing a stale socket file here is safe.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.paths.control)
        self._server = await asyncio.start_unix_server(
            self._client, path=socket_address(self.paths.control), limit=MAX_REQUEST
        )
        # bind() applied the umask; the state directory is 0700 already, this is the second wall.
        os.chmod(self.paths.control, 0o600)

    async def close(self) -> None:
        """Stop accepting, record the refusals not yet summarised, hang up on every client."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        self.write_refusal_summary()  # only logged now: the ledger is closed
        await self._close_clients()
        self.subscribers.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        user, refused = _peer_identity(writer)
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
                    if refused is not None:
                        self._audit_refusal(user, refused, b"")
                    writer.write(
                        encode(error_reply(refused or f"request too long: at most {MAX_REQUEST // 1024} KiB per line"))
                    )
                    await writer.drain()
                    break
                if not line:
                    break
                if refused is not None:
                    self._audit_refusal(user, refused, line)
                    writer.write(encode(error_reply(refused)))
                    await writer.drain()
                    break
                try:
                    request = json.loads(line)
                    op = str(request.pop("op"))
                except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                    writer.write(encode(error_reply("malformed request")))
                    continue
                request["user"] = user
                if op == "subscribe":
                    self.subscribers[writer] = Subscriber(
                        role=request.get("role", "monitor"), pid=request.get("pid"), since=self.clock.now()
                    )
                    self.subscribed.set()
                    writer.write(encode(self.heartbeat()))
                    await writer.drain()
                    continue
                writer.write(encode(await self._answer(op, request)))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The node is stopping with this client still connected. Python 3.11's stream server
            # logs a cancelled handler as an error with a traceback: end like a hung-up client.
            pass
        finally:
            gone = self.subscribers.pop(writer, None)
            if gone is not None and gone.role == "standby" and not self._closing and self.standby_gone is not None:
                self.standby_gone(gone)
            if task is not None:
                self._clients.pop(task, None)
            writer.close()

    async def _answer(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        if self._closing:
            return error_reply("scheduler is stopping", ErrorKind.STOPPING)
        try:
            return await self.scheduler.command(op, request)
        except VigilError as exc:
            return refusal(exc)

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

    def _can_audit(self) -> bool:
        ledger = self.scheduler.store
        return ledger.is_open and ledger.file_lost() is None

    def _audit_refusal(self, user: str, refused: str, line: bytes) -> None:
        """Record a caller refused for who they are, within RefusalAudit's bound."""
        if not self._can_audit():
            return
        now = time.monotonic()
        if self.refusals.started is not None and self.refusals.due(now) == 0:
            self.write_refusal_summary()
        if not self.refusals.note(now, user):
            if self._refusal_timer is None:
                # The summary row is written when the window ends, even if the caller gives up.
                delay = self.refusals.due(now) or 0.0
                self._refusal_timer = asyncio.get_running_loop().call_later(delay, self.write_refusal_summary)
            return
        op, target = _request_summary(line)
        log.warning("refused %s from %s: %s", op, user, refused)
        self.scheduler.store.defer(Audit(self.clock.now(), user, op, target, f"refused: {refused}"))

    def write_refusal_summary(self) -> None:
        if self._refusal_timer is not None:
            self._refusal_timer.cancel()
            self._refusal_timer = None
        summary = self.refusals.summary()
        if summary is None:
            return
        user, text = summary
        log.warning("%s", text)
        if self._can_audit():
            self.scheduler.store.defer(Audit(self.clock.now(), user, "?", "", text))

    async def broadcast(self, message: dict[str, Any]) -> None:
        data = encode(message)
        self.last_sent = time.time()
        for writer in list(self.subscribers):
            # Never drain() here: one subscriber that stops reading must not delay the others.
            try:
                writer.write(data)
            except (ConnectionError, RuntimeError):
                self.subscribers.pop(writer, None)
                continue
            buffered = writer.transport.get_write_buffer_size()
            if buffered > SUBSCRIBER_BUFFER_LIMIT:
                info = self.subscribers.pop(writer, None)
                log.warning(
                    "dropping %s subscriber (pid %s): it has not read its last %d bytes",
                    info.role if info else "?",
                    info.pid if info else "?",
                    buffered,
                )
                writer.transport.abort()  # close() would keep the unsent bytes until they are read


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
