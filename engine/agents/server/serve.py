"""`vigil agent`: check the options, find or make the token, bind the socket (TLS when asked) and
serve AgentApp with uvicorn until SIGTERM/SIGINT.

Authentication is a bearer token compared in constant time; the token is never logged. Every request
needs it: without --token-file the agent makes one in its state directory (agent.token, 0600) and
reuses it. TLS and mutual TLS come from uvicorn's ssl options. uvicorn is imported only here, when
the agent starts. Under a `Type=notify` systemd unit it says READY=1 once it listens, pings the
watchdog from its event loop and says STOPPING=1 on SIGTERM (engine.sdnotify). May import the rest
of this package, engine.agents.protocol, engine.paths, engine.errors, engine.ids and engine.sdnotify.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
import stat
import sys
import time
from pathlib import Path
from typing import Any

from engine import __version__
from engine.agents.protocol import is_loopback_host, read_token, split_host_port
from engine.agents.server.refusals import short
from engine.agents.server.routes import AgentApp
from engine.agents.server.service import AgentService
from engine.errors import VigilError
from engine.ids import MAX_ROW_ID, as_row_id
from engine.paths import ensure_private_dir, restrict_umask
from engine.sdnotify import Notifier

log = logging.getLogger("vigil.agent")

TOKEN_FILE = "agent.token"  #: the token an agent started without --token-file makes for itself


def serve_agent(args: Any) -> int:
    """`vigil agent`: validate the options, then serve until SIGTERM/SIGINT."""
    notifier = Notifier.from_environ()  # first: the jobs must not inherit systemd's notify variables
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s vigil-agent[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        host, port = split_host_port(args.listen)
    except ValueError as exc:
        raise VigilError(f"--listen: {exc}") from None
    if (args.tls_key or args.tls_client_ca) and not args.tls_cert:
        raise VigilError("--tls-key and --tls-client-ca need --tls-cert")
    if not args.token_file and not is_loopback_host(host):
        raise VigilError(f"refusing to listen on non-loopback address {host} without a token: pass --token-file FILE")
    reset_epoch: int | None = None
    if getattr(args, "reset_epoch", None) is not None:
        reset_epoch = as_row_id(args.reset_epoch)
        if reset_epoch is None:
            raise VigilError(f"--reset-epoch {short(args.reset_epoch)}: expected a whole number from 0 to {MAX_ROW_ID}")
    state_dir = Path(args.state).resolve()
    if (state_dir / "vigil.db").exists() or (state_dir / "leader.lock").exists():
        # Run directories are named by run id: sharing them with a scheduler would mix two runs.
        raise VigilError(f"{state_dir} is a scheduler's state directory; give the agent its own --state DIR")
    restrict_umask()  # journal, run directories and logs are owner-only; jobs get the umask back
    ensure_private_dir(state_dir)
    if args.token_file:
        token = read_token(args.token_file)
        mode = os.stat(args.token_file).st_mode
        if mode & 0o077:
            log.warning("token file %s is readable by group or others (mode %o)", args.token_file, mode & 0o777)
    else:
        token = _own_token(state_dir / TOKEN_FILE)
    return asyncio.run(_serve(host, port, state_dir, token, args, reset_epoch, notifier))


def _own_token(path: Path) -> str:
    """The token of an agent started without --token-file: made once (0600), then reused.

    Without it, any local user could run commands as the agent's user through the loopback port.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise VigilError(
                f"token file {path} must be a regular file only its owner can read "
                f"(fix: chmod 600 {path}, or delete it to get a new token)"
            ) from None
        token = read_token(path)
        log.warning("no --token-file: requests need the bearer token in %s (the scheduler's token_file)", path)
        return token
    except OSError as exc:
        raise VigilError(f"cannot create token file {path}: {exc.strerror or exc}") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    log.warning("no --token-file: made a token in %s; requests need it (the scheduler's token_file)", path)
    return token


async def _serve(
    host: str,
    port: int,
    state_dir: Path,
    token: str | None,
    args: Any,
    reset_epoch: int | None = None,
    notifier: Notifier | None = None,
) -> int:
    import uvicorn

    notify = notifier or Notifier()
    service = AgentService(state_dir, reset_epoch=reset_epoch)
    service.recover()
    service.start_background()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not _is_ip(host):
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when their protocol
    # says TCP, and without it Nagle + delayed ACKs add ~40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        service.close()
        raise VigilError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    bound_port = sock.getsockname()[1]
    ssl_options: dict[str, Any] = {}
    if args.tls_cert:
        ssl_options = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
        if args.tls_client_ca:
            ssl_options.update(ssl_ca_certs=args.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(
        AgentApp(service, token),
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=2,
        **ssl_options,
    )
    loop = asyncio.get_running_loop()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            loop.call_soon_threadsafe(service.closing)
            loop.call_soon_threadsafe(notify.stopping)
            super().handle_exit(sig, frame)

    server = Server(config)
    scheme = "https" if args.tls_cert else "http"

    async def announce() -> None:
        # uvicorn offers no startup event when the app has no lifespan: poll its flag.
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        address = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{bound_port}"
        tmp = state_dir / "agent.addr.tmp"
        tmp.write_text(address + "\n")
        os.replace(tmp, state_dir / "agent.addr")
        mtls = " (mutual TLS)" if args.tls_client_ca else ""
        log.info("agent %s listening on %s%s, instance %s", __version__, address, mtls, service.instance)
        notify.ready(f"listening on {address}{mtls}")

    announcer = asyncio.create_task(announce())
    pings = asyncio.create_task(notify.watchdog_pings(), name="watchdog")
    started = time.monotonic()
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        pings.cancel()
        notify.stopping()
        service.close()
        sock.close()
    if not server.started and time.monotonic() - started < 5:
        return 1
    return 0


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
