"""HttpListener: the node's HTTP socket, bound before the node starts, served by uvicorn in the
node's own event loop.

Binding first makes a port in use a `vigil:` error at start, not a node that schedules without the
metrics its operator expects. The node owns the signals: uvicorn's own handlers are left out, and
the listener stops when the node has stopped. uvicorn is imported only when serving starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

from engine.config.listen import format_listen
from engine.errors import VigilError
from engine.http.app import HttpApp

log = logging.getLogger("vigil.http")


class HttpListener:
    def __init__(self, app: HttpApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.sock: socket.socket | None = None
        self._server: Any = None  #: the uvicorn.Server, while serving
        self._stopped = False
        self._stopping = asyncio.Event()

    @property
    def address(self) -> str:
        """`HOST:PORT` as bound (the port the system chose for port 0)."""
        port = self.sock.getsockname()[1] if self.sock is not None else self.port
        return format_listen(self.host, port)

    def bind(self) -> None:
        """Take the port now; VigilError naming it and why if it cannot be had."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            where = format_listen(self.host, self.port)
            raise VigilError(f"cannot listen for HTTP on {where}: cannot resolve {self.host}: {exc}") from None
        family, _, proto, _, address = infos[0]
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when their
        # protocol says TCP (see engine/agents/server/serve.py).
        sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            where = format_listen(self.host, self.port)
            raise VigilError(f"cannot listen for HTTP on {where}: {exc.strerror or exc}") from None
        sock.set_inheritable(False)  # jobs never inherit it
        self.sock = sock

    async def serve(self) -> None:
        """Serve until `stop()` (a failure while serving is logged, not raised)."""
        import uvicorn

        # Its start and stop lines say nothing ours do not; its warnings and errors still show.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        assert self.sock is not None, "bind() first"
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=1,
        )

        stopping = self._stopping

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # the node's handlers stay: SIGTERM stops the node, which then stops this

            async def main_loop(self) -> None:
                # uvicorn's own ticks ten times a second to notice a stop; once a second keeps its
                # Date header (of 1 s resolution) and stop() wakes it at once.
                while not await self.on_tick(0):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), 1.0)

        server = Server(config)
        self._server = server
        if self._stopped:
            server.should_exit = True
        announced = asyncio.create_task(self._announce(server))
        try:
            await server.serve(sockets=[self.sock])
        except Exception:
            # The scheduler matters more than its metrics: it goes on, and the log says why they stopped.
            log.exception("http: the listener on %s failed; the node goes on without it", self.address)
        finally:
            announced.cancel()
            self.sock.close()

    async def _announce(self, server: Any) -> None:
        # uvicorn offers no startup event when the app has no lifespan: poll its flag.
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        log.info("http: listening on http://%s (/metrics, /healthz)", self.address)

    def stop(self) -> None:
        self._stopped = True
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
