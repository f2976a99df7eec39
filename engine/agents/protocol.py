"""The scheduler ↔ agent HTTP protocol: paths, headers, payload shapes and the client side of it.

One module for both ends, so the wire format is written down once. The client wraps an
``httpx.AsyncClient`` whose transport is injectable: tests of pure logic pass
``httpx.ASGITransport(app=AgentApp(...))`` and need no sockets; everything else uses real TCP.

Endpoints (JSON unless noted; every request carries ``Authorization: Bearer <token>`` when the
agent has a token, and the scheduler's epoch in ``X-Vigil-Epoch``):

    GET  /status                     version, instance, max_epoch, max_run_id, cpu/memory/load, running, open ids
    POST /runs                       dispatch (idempotent by run_id) → the run's status
    GET  /runs/{id}                  the run's status, 404 if the agent has no record of it
    POST /runs/{id}/kill             {epoch, reason} → status
    GET  /runs/{id}/log?offset=N     raw bytes; headers X-Vigil-Log-Offset (next), -Size, -State
    GET  /results?after=SEQ&wait=S   finished, unacknowledged runs with seq > SEQ (long-poll)
    POST /ack                        {epoch, run_ids} → the agent may forget those results

A request whose epoch is lower than the highest the agent has seen is answered 409.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The client raises the agent family of engine/errors.py; importers of these names here keep working.
from engine.errors import AgentAmbiguous, AgentError, AgentNotFound, AgentRefused, AgentUnreachable, StaleEpochError
from engine.ids import valid_id
from engine.model import AgentSpec

if TYPE_CHECKING:
    import httpx

MAX_CONCURRENT = 4  #: requests in flight to one agent (the results long-poll aside)
EPOCH_HEADER = "X-Vigil-Epoch"
LOG_OFFSET_HEADER = "X-Vigil-Log-Offset"
LOG_SIZE_HEADER = "X-Vigil-Log-Size"
LOG_STATE_HEADER = "X-Vigil-Run-State"

#: Agent-side run states. `finished` carries an exit code; `unknown` a reason.
RUNNING, FINISHED, UNKNOWN = "running", "finished", "unknown"
#: `end_state` of an `unknown` run that did end, without an exit code, in a known way: the job could
#: not start, or the agent ended the group of a job whose shim died (the local run ends `failed` too).
#: Older agents never send the field, and older schedulers ignore it: their runs stay `unknown`.
END_FAILED = "failed"

DISPATCH_FIELDS = (
    "run_id",
    "epoch",
    "job",
    "command",
    "env",
    "workdir",
    "user",
    "timeout",
    "kill_grace",
    "log_cap",
    "scheduled_for",
    "attempt",
)


def load_httpx() -> Any:
    """httpx, imported on first use: it costs ~0.12 s, which a scheduler without agents never pays."""
    import httpx

    return httpx


@dataclass(frozen=True)
class RunStatus:
    """What an agent knows about one run."""

    run_id: int
    job: str
    scheduled_for: str
    attempt: int
    state: str  #: running | finished | unknown
    exit_code: int | None = None
    job_pid: int | None = None
    cpu_s: float | None = None
    peak_rss: int | None = None
    started_at: str | None = None
    ended_at: str | None = None
    killed: str | None = None  #: "timeout" | "kill" when the agent ended it on purpose
    reason: str | None = None
    end_state: str | None = None  #: with state `unknown`: END_FAILED when the run is known to have failed
    seq: int | None = None  #: order of finishing; results are paged by it
    log_b64: str | None = None  #: the whole log, in /results answers, when it is small

    @classmethod
    def from_json(cls, doc: Any) -> RunStatus:
        """The status in an agent's answer; ValueError when it is not one a Vigil agent would send.

        Checked here so a broken or hostile agent's numbers never reach the ledger (SQLite stores
        63-bit integers) or the scheduler's arithmetic.
        """
        if not isinstance(doc, dict):
            raise ValueError("a run status is not a JSON object")
        for key in ("run_id", "attempt", "exit_code", "job_pid", "peak_rss", "seq"):
            _check_whole(key, doc.get(key))
        for key in (
            "job",
            "scheduled_for",
            "state",
            "started_at",
            "ended_at",
            "killed",
            "reason",
            "end_state",
            "log_b64",
        ):
            if doc.get(key) is not None and not isinstance(doc[key], str):
                raise ValueError(f"{key} is not a string")
        cpu = doc.get("cpu_s")
        if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int | float) or not math.isfinite(cpu)):
            raise ValueError("cpu_s is not a number")
        required = ("run_id", "job", "scheduled_for", "attempt", "state")  # NOT NULL in every agent's journal
        for key in required:
            if doc.get(key) is None:
                raise ValueError(f"a run status without {key}")
        optional = {k: doc.get(k) for k in cls.__dataclass_fields__ if k not in required}
        return cls(doc["run_id"], doc["job"], doc["scheduled_for"], doc["attempt"], doc["state"], **optional)

    @property
    def done(self) -> bool:
        return self.state in (FINISHED, UNKNOWN)

    @property
    def failed_without_exit(self) -> bool:
        """The run ended without an exit code and the agent knows it failed (e.g. could not start)."""
        return self.state == UNKNOWN and self.end_state == END_FAILED


def _check_whole(key: str, value: object) -> None:
    """An id, count or size in an agent's answer: absent, or a whole number in the one id range.

    Every one a Vigil agent sends is at least 0 (a shim's exit code is 0-255), and the range keeps
    it storable in SQLite with room for one more.
    """
    if value is not None and not valid_id(value):
        raise ValueError(f"{key} is not a whole number SQLite can store")


def is_loopback_host(host: str) -> bool:
    """True only if every address the host name resolves to is a loopback address."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    # an address that is not a string (typeshed allows an int for families other than IPv4/IPv6) is not loopback
    return bool(addresses) and all(
        isinstance(a, str) and ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses
    )


def split_host_port(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8765', '[::1]:8765', 'localhost:0' → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"expected a numeric port in {listen!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {listen!r}")
    return host.strip("[]"), number


def read_token(path: str | Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise AgentError(f"cannot read token file {path}: {exc.strerror or exc}") from exc
    if not token:
        raise AgentError(f"token file {path} is empty")
    return token


def client_ssl_context(spec: AgentSpec) -> ssl.SSLContext | bool:
    """TLS for an https:// agent: its CA (or the system's), plus our certificate for mutual TLS."""
    if not spec.url.startswith("https://"):
        return True
    ctx = ssl.create_default_context(cafile=spec.tls_ca) if spec.tls_ca else ssl.create_default_context()
    if spec.tls_cert:
        ctx.load_cert_chain(spec.tls_cert, spec.tls_key)
    return ctx


class AgentClient:
    """Typed calls to one agent. Errors come out as the AgentError family, never as httpx's."""

    def __init__(
        self,
        spec: AgentSpec,
        *,
        epoch: int | None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        httpx = load_httpx()
        self.spec = spec
        self.epoch = epoch  #: None for read-only callers (the CLI), which never send commands
        headers = {EPOCH_HEADER: str(epoch)} if epoch is not None else {}
        if spec.token_file:
            headers["Authorization"] = f"Bearer {read_token(spec.token_file)}"
        kwargs: dict[str, Any] = {}
        if transport is not None:
            kwargs["transport"] = transport
        else:
            kwargs["verify"] = client_ssl_context(spec)
        self.http = httpx.AsyncClient(
            base_url=spec.url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
            limits=httpx.Limits(max_connections=MAX_CONCURRENT + 2, max_keepalive_connections=MAX_CONCURRENT + 2),
            **kwargs,
        )

        # httpcore's pool re-scans every queued request against every connection (quadratic): keep
        # its queue short by queueing here instead; the results long-poll does not take a slot.
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, *, read_timeout: float | None = None, **kw: Any) -> httpx.Response:
        hx = load_httpx()
        response: httpx.Response
        if read_timeout is not None:
            kw["timeout"] = hx.Timeout(read_timeout + 5.0, connect=3.0)
        try:
            if read_timeout is not None:
                response = await self.http.request(method, path, **kw)
            else:
                async with self._slots:
                    response = await self.http.request(method, path, **kw)
        except (hx.ConnectError, hx.ConnectTimeout) as exc:
            raise AgentUnreachable(f"agent {self.spec.name} at {self.spec.url} is unreachable: {exc}") from exc
        except hx.HTTPError as exc:
            raise AgentAmbiguous(f"agent {self.spec.name}: connection lost during {method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            doc: Any = None
            try:
                doc = response.json()
                message = str(doc.get("error", response.text))
            except (ValueError, AttributeError):  # not JSON, or JSON but not an object
                message = response.text
            text = f"agent {self.spec.name} refused {method} {path}: {response.status_code} {message}"
            if response.status_code == 409 and "stale epoch" in message:
                seen = doc.get("max_epoch") if isinstance(doc, dict) else None
                raise StaleEpochError(text, seen if isinstance(seen, int) and not isinstance(seen, bool) else None)
            if response.status_code == 404:
                raise AgentNotFound(404, text)
            raise AgentRefused(response.status_code, text)
        return response

    async def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        response = await self._request(method, path, **kw)
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            # Not an agent's answer (another server at that URL, a proxy's page): whether the
            # command arrived is unknown, so it counts as a broken connection.
            raise AgentAmbiguous(
                f"agent {self.spec.name}: {method} {path} got an answer that is not a JSON object "
                f"(is {self.spec.url} a vigil agent?)"
            )
        return doc

    def _not_an_agent(self, what: str, problem: str) -> AgentAmbiguous:
        return AgentAmbiguous(f"agent {self.spec.name}: {what} got an answer a vigil agent would not send ({problem})")

    def _statuses(self, what: str, docs: Any) -> list[RunStatus]:
        try:
            if not isinstance(docs, list):
                raise ValueError("results is not a list")
            return [RunStatus.from_json(doc) for doc in docs]
        except ValueError as exc:
            raise self._not_an_agent(what, str(exc)) from None

    async def status(self) -> dict[str, Any]:
        doc = await self._json("GET", "/status")
        try:
            _check_whole("max_epoch", doc.get("max_epoch"))
            if not isinstance(doc.get("open") or [], list):
                raise ValueError("open is not a list")
            for run_id in doc.get("open") or ():
                _check_whole("open", run_id)
        except ValueError as exc:
            raise self._not_an_agent("GET /status", str(exc)) from None
        return doc

    async def dispatch(self, payload: dict[str, Any]) -> RunStatus:
        doc = await self._json("POST", "/runs", json={**payload, "epoch": self.epoch})
        return self._statuses("POST /runs", [doc])[0]

    async def run(self, run_id: int) -> RunStatus:
        return self._statuses(f"GET /runs/{run_id}", [await self._json("GET", f"/runs/{run_id}")])[0]

    async def kill(self, run_id: int, reason: str) -> RunStatus:
        doc = await self._json("POST", f"/runs/{run_id}/kill", json={"epoch": self.epoch, "reason": reason})
        return self._statuses(f"POST /runs/{run_id}/kill", [doc])[0]

    async def results(self, after: int, wait: float) -> tuple[str, list[RunStatus]]:
        doc = await self._json("GET", "/results", params={"after": after, "wait": wait}, read_timeout=wait)
        return str(doc.get("instance")), self._statuses("GET /results", doc.get("results") or [])

    async def ack(self, run_ids: list[int]) -> None:
        await self._request("POST", "/ack", json={"epoch": self.epoch, "run_ids": run_ids})

    async def log(self, run_id: int, offset: int, max_bytes: int = 1 << 20) -> tuple[bytes, int, int, str]:
        """(data, next offset, size, run state) of the run's log from `offset`."""
        response = await self._request("GET", f"/runs/{run_id}/log", params={"offset": offset, "max": max_bytes})
        return (
            response.content,
            int(response.headers.get(LOG_OFFSET_HEADER, offset + len(response.content))),
            int(response.headers.get(LOG_SIZE_HEADER, 0)),
            response.headers.get(LOG_STATE_HEADER, ""),
        )
