"""HttpApp: the listener's ASGI 3 application, routing by a table of (method, path) → handler.

No framework: two read-only routes do not need one, and the API (issue 14) adds its routes to the
same table with `route()` (or mounts this table's handlers in the framework it chooses). A handler
takes a Request and returns a Response; an exception in one is a logged 500, never a dropped
connection. HEAD is answered wherever GET is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

log = logging.getLogger("vigil.http")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]  #: the last value of each name
    client: str | None  #: "host:port" of the peer, when the server knows it
    headers: dict[str, str]  #: lower-case names, the last value of each (an API's bearer token)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


def json_response(status: int, doc: object) -> Response:
    return Response(status, json.dumps(doc, separators=(",", ":")).encode() + b"\n")


class HttpApp:
    def __init__(self) -> None:
        self.routes: dict[str, dict[str, Handler]] = {}  #: path → method → handler

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Serve `method path` with `handler` (a second handler for the same pair is a bug)."""
        methods = self.routes.setdefault(path, {})
        if method in methods:
            raise ValueError(f"{method} {path} is already routed")
        methods[method] = handler

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan, no websockets
        method = scope["method"]
        methods = self.routes.get(scope["path"])
        handler = None if methods is None else methods.get("GET" if method == "HEAD" else method)
        if methods is None:
            response = json_response(404, {"error": f"no such path: {scope['path']}"})
        elif handler is None:
            allowed = ", ".join(sorted({*methods, "HEAD"} if "GET" in methods else methods))
            response = json_response(405, {"error": f"{method} not allowed; allowed: {allowed}"})
            response = Response(405, response.body, JSON, (("allow", allowed),))
        else:
            client = scope.get("client")
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", [])}
            peer = f"{client[0]}:{client[1]}" if client else None
            request = Request(method, scope["path"], query, peer, headers)
            try:
                response = await handler(request)
            except Exception:
                log.exception("%s %s failed", method, scope["path"])
                response = json_response(500, {"error": "internal error; the node's log has it"})
        await _send(send, response, head=method == "HEAD")


async def _send(send: Send, response: Response, *, head: bool) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        (b"cache-control", b"no-store"),
        *((name.encode(), value.encode()) for name, value in response.headers),
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})
