"""AgentApp: the agent's HTTP API as a plain ASGI 3 application (no framework).

Bearer-token auth, routing by a table (method, path pattern → handler), the epoch header, JSON
bodies, and the answer to each refusal: its status and `{"error": message}`. The wire format (paths,
headers) is engine/agents/protocol.py's. May import the service and the refusals of this package,
engine.agents.protocol, engine.errors and engine.ids; never the serving code (serve.py).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from engine.agents.protocol import EPOCH_HEADER, LOG_OFFSET_HEADER, LOG_SIZE_HEADER, LOG_STATE_HEADER
from engine.agents.server.refusals import Malformed, Refusal, body_id, short, text_id
from engine.agents.server.service import AgentService
from engine.errors import StaleEpochError, VigilError
from engine.ids import MAX_ROW_ID

log = logging.getLogger("vigil.agent")

MAX_BODY = 4 << 20

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Request:
    """What the app has checked of a request before its handler runs."""

    run_id: int | None  #: from the path, on the routes that name a run
    epoch: int | None  #: a command's body epoch, else the X-Vigil-Epoch header
    body: Any  #: a command's JSON body; None on the other routes
    query: dict[str, str]  #: the query string, the last value of each name


Handler = Callable[[AgentService, Request, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of the agent's API (engine/agents/protocol.py lists them)."""

    method: str
    path: re.Pattern[str]  #: a group, when there is one, captures the run id
    handler: Handler
    command: bool  #: carries a JSON body whose epoch the service checks as a mutating one


# Everything a handler reads is checked before anything changes: a bad id, epoch or parameter
# moves no stored maximum. So a handler that only reads shows the service its epoch last.


async def _status(service: AgentService, request: Request, send: Send) -> None:
    service.check_epoch(request.epoch, mutating=False)
    await _send_json(send, 200, service.status())


async def _dispatch(service: AgentService, request: Request, send: Send) -> None:
    body = request.body
    if isinstance(body, dict) and body.get("epoch") is None and request.epoch is not None:
        body["epoch"] = request.epoch
    code, doc = service.dispatch(body)
    await _send_json(send, code, doc)


async def _run(service: AgentService, request: Request, send: Send) -> None:
    service.check_epoch(request.epoch, mutating=False)
    await _send_json(send, 200, service.run_status(_captured(request.run_id)))


async def _kill(service: AgentService, request: Request, send: Send) -> None:
    body = request.body
    reason = str(body.get("reason", "kill")) if isinstance(body, dict) else "kill"
    await _send_json(send, 200, service.kill(_captured(request.run_id), reason, request.epoch))


async def _log(service: AgentService, request: Request, send: Send) -> None:
    # Sizes, not ids: anything unreadable or out of range means "from the start", "default".
    offset = _clamped(request.query.get("offset"))
    asked = _clamped(request.query.get("max"))
    service.check_epoch(request.epoch, mutating=False)
    max_bytes = min(asked if asked > 0 else 1 << 20, 8 << 20)  # read(-1) would read it all
    data, nxt, size, state = service.read_log(_captured(request.run_id), offset, max_bytes)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(data)).encode()),
                (LOG_OFFSET_HEADER.lower().encode(), str(nxt).encode()),
                (LOG_SIZE_HEADER.lower().encode(), str(size).encode()),
                (LOG_STATE_HEADER.lower().encode(), state.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _results(service: AgentService, request: Request, send: Send) -> None:
    after = text_id(request.query.get("after"), "after") or 0
    try:
        wait = float(request.query.get("wait", "0") or 0)
    except ValueError:
        raise Malformed(f"wait must be a number of seconds, got {short(request.query.get('wait'))}") from None
    wait = wait if math.isfinite(wait) else 0.0
    service.check_epoch(request.epoch, mutating=False)
    await _send_json(send, 200, await service.results(after, max(0.0, wait)))


async def _ack(service: AgentService, request: Request, send: Send) -> None:
    ids = request.body.get("run_ids") if isinstance(request.body, dict) else None
    if not isinstance(ids, list):
        raise Malformed("ack needs run_ids: [...]")
    await _send_json(send, 200, service.ack(ids, request.epoch))


#: name → route; the paths are disjoint, so a path matches at most one route.
ROUTES: dict[str, Route] = {
    "status": Route("GET", re.compile(r"^/status$"), _status, command=False),
    "dispatch": Route("POST", re.compile(r"^/runs$"), _dispatch, command=True),
    "run": Route("GET", re.compile(r"^/runs/(\d+)$"), _run, command=False),
    "kill": Route("POST", re.compile(r"^/runs/(\d+)/kill$"), _kill, command=True),
    "log": Route("GET", re.compile(r"^/runs/(\d+)/log$"), _log, command=False),
    "results": Route("GET", re.compile(r"^/results$"), _results, command=False),
    "ack": Route("POST", re.compile(r"^/ack$"), _ack, command=True),
}


class AgentApp:
    """A plain ASGI 3 application: routing, bearer-token auth, epoch header, JSON bodies."""

    def __init__(self, service: AgentService, token: str | None) -> None:
        self.service = service
        self._token = token.encode() if token else None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if not self._authorized(headers.get("authorization")):
            await _send_json(send, 401, {"error": "unauthorized"}, extra=[(b"www-authenticate", b"Bearer")])
            return
        method, path = scope["method"], scope["path"]
        for route in ROUTES.values():
            match = route.path.match(path)
            if match is None:
                continue
            if method != route.method:
                await _send_json(send, 405, {"error": f"{method} not allowed on {path}"})
                return
            try:
                request = await self._request(route, match, scope, headers, receive)
                await route.handler(self.service, request, send)
            except StaleEpochError as exc:
                await _send_json(send, 409, {"error": str(exc), "max_epoch": self.service.journal.max_epoch})
            except Refusal as exc:
                await _send_json(send, exc.status, {"error": str(exc)})
            except (VigilError, sqlite3.Error, OSError) as exc:
                log.exception("request %s %s failed", method, path)
                await _send_json(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
            return
        await _send_json(send, 404, {"error": f"no such endpoint {path}"})

    def _authorized(self, header: bytes | None) -> bool:
        if self._token is None:
            return False  # fail closed: serve_agent always has a token (given or made)
        if header is None or not header.startswith(b"Bearer "):
            # Compare anyway so a missing header costs the same as a wrong one.
            hmac.compare_digest(b"", self._token)
            return False
        return hmac.compare_digest(header[7:].strip(), self._token)

    @staticmethod
    async def _request(
        route: Route, match: re.Match[str], scope: dict[str, Any], headers: dict[str, bytes], receive: Receive
    ) -> Request:
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("utf-8", "replace")).items()}
        run_id = text_id(match.group(1), "run id") if match.groups() else None
        epoch = text_id(headers.get(EPOCH_HEADER.lower()), EPOCH_HEADER)
        body = None
        if route.command:
            body = await _read_json(receive)
            body_epoch = body.get("epoch") if isinstance(body, dict) else None
            if body_epoch is not None:
                epoch = body_id(body_epoch, "epoch")
        return Request(run_id, epoch, body, query)


async def _read_json(receive: Receive) -> Any:
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Malformed("client went away")
        body = message.get("body", b"")
        total += len(body)
        if total > MAX_BODY:
            raise Malformed(f"request body larger than {MAX_BODY} bytes")
        chunks.append(body)
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise Malformed(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise Malformed("invalid JSON: nested too deeply") from None


async def _send_json(send: Send, status: int, doc: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": data})


def _captured(run_id: int | None) -> int:
    """The run id of a route whose pattern captures one (run, kill, log), where it is never None."""
    if run_id is None:
        raise VigilError("this route has no run id")  # a routing bug, answered with a 500
    return run_id


def _clamped(text: str | None) -> int:
    try:
        return min(max(0, int(text or 0)), MAX_ROW_ID)
    except ValueError:
        return 0
