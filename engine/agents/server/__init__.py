"""`vigil agent`: runs jobs for a remote scheduler under the same shim model, behind an HTTP API.

The agent is a plain ASGI application served by uvicorn. It keeps a small SQLite journal in its
state directory, written *before* a job is launched, so that a run it accepted is never lost and
never started twice:

- a repeated dispatch of a run id it already has returns that run's status (idempotent);
- after a restart it settles its open runs from the shim's files exactly as the scheduler does
  (engine/exec/reconcile.py): adopt live shims, ingest finished ones, launch never-started ones, and
  call the rest `unknown`;
- a finished run's result stays in the journal until a scheduler acknowledges it *after*
  recording it (at-least-once delivery; the ledger makes recording exactly-once);
- it persists the highest epoch any scheduler has shown it and refuses (409) commands from a
  lower one, so a deposed scheduler cannot start, kill or acknowledge anything.

Authentication is a bearer token compared in constant time (hmac.compare_digest); the token is
never logged. Every request needs it: without --token-file the agent makes one in its state
directory (agent.token, 0600) and reuses it. TLS and mutual TLS come from uvicorn's ssl options.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import socket
import sqlite3
import ssl
import stat
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import psutil

from engine import __version__
from engine.agents.protocol import (
    END_FAILED,
    EPOCH_HEADER,
    FINISHED,
    LOG_OFFSET_HEADER,
    LOG_SIZE_HEADER,
    LOG_STATE_HEADER,
    RUNNING,
    UNKNOWN,
    is_loopback_host,
    read_token,
    split_host_port,
)
from engine.clock import iso
from engine.errors import AgentError, LaunchError, StaleEpochError, VigilError
from engine.exec.local import LocalExecutor, ShimExit, gather_evidence
from engine.exec.reconcile import Action, decide
from engine.ids import MAX_ROW_ID, as_row_id
from engine.paths import StatePaths, ensure_private_dir, restrict_umask

log = logging.getLogger("vigil.agent")

JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    job TEXT NOT NULL,
    scheduled_for TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    exit_code INTEGER,
    job_pid INTEGER,
    cpu_s REAL,
    peak_rss INTEGER,
    killed TEXT,
    reason TEXT,
    end_state TEXT,
    seq INTEGER,
    acked_at TEXT
);
CREATE INDEX IF NOT EXISTS runs_unacked ON runs (seq) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS runs_state ON runs (state);
"""
STATUS_FIELDS = (
    "run_id",
    "job",
    "scheduled_for",
    "attempt",
    "state",
    "exit_code",
    "job_pid",
    "cpu_s",
    "peak_rss",
    "started_at",
    "ended_at",
    "killed",
    "reason",
    "end_state",
    "seq",
)
MAX_BODY = 4 << 20
INLINE_LOG_MAX = 64 << 10  #: a result carries its log inline up to this size (saves a request per run)
RESULTS_COALESCE = 0.01  #: seconds a woken long-poll waits for more results to share one answer
ACKED_RETENTION = 24 * 3600.0  #: seconds an acknowledged run (and its log) stays on the agent
DEFAULT_LOG_CAP = 1 << 20
DEFAULT_KILL_GRACE = 5.0
MAX_SECONDS = 10**9  #: ~31 years: the longest timeout or kill grace a dispatch may carry
TOKEN_FILE = "agent.token"  #: the token an agent started without --token-file makes for itself


def _now() -> datetime:
    return datetime.now(UTC)


class Journal:
    """The agent's own small ledger of runs (SQLite in WAL mode, one connection, one process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(JOURNAL_SCHEMA)
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(runs)")}
        if "end_state" not in columns:  # a journal from an agent before end_state
            self.conn.execute("ALTER TABLE runs ADD COLUMN end_state TEXT")
        self.instance = self._meta("instance") or self._set_meta("instance", uuid.uuid4().hex)
        self.max_epoch = self._load_max_epoch()
        # The highest run id ever dispatched here, kept after the run is pruned: a scheduler whose
        # database was restored numbers its runs above it (engine/exec/rundirs.py).
        newest = self.conn.execute("SELECT COALESCE(MAX(run_id), 0) FROM runs").fetchone()[0]
        self.max_run_id = max(int(self._meta("max_run_id") or 0), int(newest))

    def close(self) -> None:
        self.conn.close()

    def _load_max_epoch(self) -> int:
        stored = self._meta("max_epoch")
        epoch = as_row_id(stored or "0")
        if epoch is None:
            # Written by an agent that took any number (10**30 would refuse every scheduler forever):
            # fall back to the highest epoch a run was actually accepted with.
            row = self.conn.execute("SELECT MAX(epoch) FROM runs").fetchone()
            epoch = int(row[0] or 0)
            log.warning("stored max epoch %.40r is not a valid epoch; using %d from the journal's runs", stored, epoch)
            self._set_meta("max_epoch", str(epoch))
        return epoch

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> str:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
        return value

    def reset_max_epoch(self, epoch: int) -> None:
        """`vigil agent --reset-epoch`: forget a bogus highest epoch (one no scheduler really has)."""
        if as_row_id(epoch) is None:
            raise VigilError(f"--reset-epoch {epoch!r}: expected a whole number from 0 to {MAX_ROW_ID}")
        log.warning(
            "highest epoch seen reset from %d to %d (--reset-epoch); the first scheduler request raises it again",
            self.max_epoch,
            epoch,
        )
        self._set_meta("max_epoch", str(epoch))
        self.max_epoch = epoch

    def raise_epoch(self, epoch: int) -> None:
        if as_row_id(epoch) is None:
            raise BadRequest(f"epoch {epoch!r} is not a whole number from 0 to {MAX_ROW_ID}")
        if epoch > self.max_epoch:
            self._set_meta("max_epoch", str(epoch))
            self.max_epoch = epoch

    def get(self, run_id: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()

    def insert(self, req: dict[str, Any], started_at: str) -> None:
        spec = {k: req.get(k) for k in ("command", "env", "workdir", "timeout", "kill_grace", "log_cap")}
        self.conn.execute(
            "INSERT INTO runs (run_id, job, scheduled_for, attempt, epoch, spec, state, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                req["run_id"],
                req["job"],
                req["scheduled_for"],
                req["attempt"],
                req["epoch"],
                json.dumps(spec),
                RUNNING,
                started_at,
            ),
        )
        if req["run_id"] > self.max_run_id:
            self._set_meta("max_run_id", str(req["run_id"]))
            self.max_run_id = req["run_id"]

    def finish(
        self, run_id: int, state: str, result: ShimExit | None, reason: str | None, end_state: str | None = None
    ) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            seq = int(self._meta("next_seq") or 1)
            self._set_meta("next_seq", str(seq + 1))
            self.conn.execute(
                "UPDATE runs SET state = ?, ended_at = ?, exit_code = ?, job_pid = COALESCE(?, job_pid), "
                "cpu_s = ?, peak_rss = ?, reason = COALESCE(?, reason), end_state = ?, seq = ? "
                "WHERE run_id = ? AND state = ?",
                (
                    state,
                    iso(_now()),
                    result.exit_code if result else None,
                    result.job_pid if result else None,
                    result.cpu_s if result else None,
                    result.peak_rss if result else None,
                    reason,
                    end_state,
                    seq,
                    run_id,
                    RUNNING,
                ),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def set_killed(self, run_id: int, why: str) -> None:
        self.conn.execute(
            "UPDATE runs SET killed = ? WHERE run_id = ? AND killed IS NULL AND state = ?",
            (why, run_id, RUNNING),
        )

    def running(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM runs WHERE state = ? ORDER BY run_id", (RUNNING,)).fetchall()

    def count_running(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM runs WHERE state = ?", (RUNNING,)).fetchone()[0])

    def open_ids(self) -> list[int]:
        """Runs a scheduler still has to learn about: running, or finished but not acknowledged."""
        return [r[0] for r in self.conn.execute("SELECT run_id FROM runs WHERE acked_at IS NULL ORDER BY run_id")]

    def results_after(self, seq: int, limit: int) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT * FROM runs WHERE acked_at IS NULL AND seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()

    def ack(self, run_ids: list[int]) -> int:
        now = iso(_now())
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            count = 0
            for run_id in run_ids:
                count += self.conn.execute(
                    "UPDATE runs SET acked_at = ? WHERE run_id = ? AND acked_at IS NULL AND state != ?",
                    (now, run_id, RUNNING),
                ).rowcount
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return count

    def prune(self, before: datetime) -> list[int]:
        ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT run_id FROM runs WHERE acked_at IS NOT NULL AND acked_at < ?", (iso(before),)
            )
        ]
        self.conn.executemany("DELETE FROM runs WHERE run_id = ?", [(i,) for i in ids])
        return ids


def status_doc(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in STATUS_FIELDS}


class BadRequest(AgentError):
    pass


class AgentService:
    """The agent's behaviour, independent of HTTP: journal, shims, timeouts, kills, results."""

    def __init__(self, state_dir: Path, *, reset_epoch: int | None = None) -> None:
        self.state_dir = state_dir
        self.paths = StatePaths(state_dir)
        ensure_private_dir(state_dir)
        ensure_private_dir(self.paths.runs)
        self.journal = Journal(state_dir / "journal.db")
        if reset_epoch is not None:
            self.journal.reset_max_epoch(reset_epoch)
        self.executor = LocalExecutor(self.paths, self._on_exit, log_cap=DEFAULT_LOG_CAP, kill_grace=DEFAULT_KILL_GRACE)
        self._loop = asyncio.get_running_loop()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._specs: dict[int, dict[str, Any]] = {}
        self._changed = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    @property
    def instance(self) -> str:
        return self.journal.instance

    # ---------------------------------------------------------------- lifecycle

    def recover(self) -> None:
        """Settle the runs the previous agent process left open, from the shims' evidence."""
        for row in self.journal.running():
            run_id = int(row["run_id"])
            spec = json.loads(row["spec"])
            self._specs[run_id] = spec
            decision = decide(gather_evidence(self.paths.run_dir(run_id)))
            if decision.action is Action.LAUNCH:
                log.info("run %d was journaled but never started; starting it now", run_id)
                self._start(run_id, row, spec)
            elif decision.action is Action.ADOPT and self.executor.adopt(run_id):
                log.info("adopted run %d", run_id)
                if run_id in self._specs:  # adopt() may have finished it already
                    self._arm_timeout(run_id, row["started_at"], spec.get("timeout"))
                    if row["killed"]:
                        self._kill_now(run_id)
            elif decision.action in (Action.INGEST, Action.ADOPT):
                self._on_exit(self.executor.collect(run_id))
            elif decision.action is Action.TERMINATE:
                log.warning("run %d: %s; ending its job process group", run_id, decision.reason)
                self.executor.end_orphan(run_id, decision.reason or "the run's shim is gone")
            else:
                self._finish(run_id, UNKNOWN, None, decision.reason)

    def start_background(self) -> None:
        self._tasks = [
            asyncio.create_task(self._periodic(0.5, self.executor.sample)),
            asyncio.create_task(self._periodic(600.0, self.prune)),
        ]

    async def _periodic(self, interval: float, fn: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                fn()
            except Exception:
                log.exception("periodic task failed")

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for timer in self._timers.values():
            timer.cancel()
        self.executor.close()  # the shims and jobs live on; the next agent process adopts them
        self.journal.close()

    def prune(self) -> None:
        for run_id in self.journal.prune(_now() - timedelta(seconds=ACKED_RETENTION)):
            _remove_tree(self.paths.run_dir(run_id))

    # ---------------------------------------------------------------- epochs

    def check_epoch(self, epoch: int | None, *, mutating: bool) -> None:
        """Remember the highest epoch seen; refuse a mutating command from a lower one."""
        if epoch is None:
            if mutating:
                raise BadRequest("this command needs the scheduler's epoch")
            return
        if epoch < self.journal.max_epoch:
            if mutating:
                raise StaleEpochError(f"stale epoch {epoch}: this agent has seen epoch {self.journal.max_epoch}")
            return
        self.journal.raise_epoch(epoch)

    # ---------------------------------------------------------------- commands

    def dispatch(self, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Accept a run (idempotent by run id). Returns (HTTP status, run status)."""
        req = _validate_dispatch(req)
        self.check_epoch(req["epoch"], mutating=True)
        run_id = req["run_id"]
        row = self.journal.get(run_id)
        if row is not None:
            same = (row["job"], row["scheduled_for"], row["attempt"]) == (
                req["job"],
                req["scheduled_for"],
                req["attempt"],
            )
            if not same:
                raise Conflict(
                    f"run id {run_id} is already used here by job {row['job']} scheduled for "
                    f"{row['scheduled_for']} (attempt {row['attempt']})"
                )
            return 200, status_doc(row)
        started_at = iso(_now()) or ""
        # The journal row is committed before the shim exists: a crash in between leaves a row
        # without a shim, which recover() launches once.
        self.journal.insert(req, started_at)
        spec = {k: req.get(k) for k in ("command", "env", "workdir", "timeout", "kill_grace", "log_cap")}
        self._specs[run_id] = spec
        row = self.journal.get(run_id)
        assert row is not None
        self._start(run_id, row, spec)
        log.info("run %d (%s, epoch %d) started", run_id, req["job"], req["epoch"])
        return 201, status_doc(self.journal.get(run_id) or row)

    def _start(self, run_id: int, row: sqlite3.Row, spec: dict[str, Any]) -> None:
        env = dict(os.environ)
        env.update(spec.get("env") or {})
        env.update(
            VIGIL_RUN_ID=str(run_id),
            VIGIL_JOB=str(row["job"]),
            VIGIL_SCHEDULED_FOR=str(row["scheduled_for"]),
            VIGIL_ATTEMPT=str(row["attempt"]),
            VIGIL_EPOCH=str(row["epoch"]),
        )
        if spec.get("log_cap"):
            self.executor.log_cap = int(spec["log_cap"])
        command = spec["command"]
        try:
            self.executor.launch(
                run_id, command if isinstance(command, str) else tuple(command), env, spec.get("workdir")
            )
        except LaunchError as exc:  # the message is the reason, "could not start: ..."
            self._finish(run_id, UNKNOWN, None, str(exc), END_FAILED)
            return
        except (OSError, ValueError) as exc:  # as the scheduler words it for a local run
            self._finish(run_id, UNKNOWN, None, f"could not start the run's shim: {exc}", END_FAILED)
            return
        self._arm_timeout(run_id, row["started_at"], spec.get("timeout"))

    def _arm_timeout(self, run_id: int, started_at: str | None, timeout: float | None) -> None:
        if not timeout:
            return
        start = datetime.fromisoformat(started_at) if started_at else _now()
        remaining = (start + timedelta(seconds=float(timeout)) - _now()).total_seconds()
        self._timers[run_id] = self._loop.call_later(max(0.0, remaining), self._on_timeout, run_id)

    def _on_timeout(self, run_id: int) -> None:
        self._timers.pop(run_id, None)
        self.journal.set_killed(run_id, "timeout")
        log.info("run %d exceeded its timeout; killing its process group", run_id)
        self._kill_now(run_id)

    def _kill_now(self, run_id: int) -> None:
        spec = self._specs.get(run_id, {})
        self.executor.kill_grace = float(spec.get("kill_grace") or DEFAULT_KILL_GRACE)
        self.executor.kill(run_id)

    def kill(self, run_id: int, reason: str, epoch: int | None) -> dict[str, Any]:
        self.check_epoch(epoch, mutating=True)
        row = self.journal.get(run_id)
        if row is None:
            raise NotFound(f"no run {run_id} on this agent")
        if row["state"] == RUNNING:
            self.journal.set_killed(run_id, "timeout" if reason == "timeout" else "kill")
            self._kill_now(run_id)
            row = self.journal.get(run_id) or row
        return status_doc(row)

    def _on_exit(self, result: ShimExit) -> None:
        if result.exit_code is None:
            # No exit code: `unknown` on the wire (what older schedulers understand), with end_state
            # `failed` when the executor knows the run failed (it could not start the job, ...).
            end_state = END_FAILED if result.state == END_FAILED else None
            self._finish(result.run_id, UNKNOWN, result, result.reason or "the shim left no exit record", end_state)
        else:
            self._finish(result.run_id, FINISHED, result, None)

    def _finish(
        self, run_id: int, state: str, result: ShimExit | None, reason: str | None, end_state: str | None = None
    ) -> None:
        timer = self._timers.pop(run_id, None)
        if timer is not None:
            timer.cancel()
        self._specs.pop(run_id, None)
        self.journal.finish(run_id, state, result, reason, end_state)
        log.info(
            "run %d %s%s", run_id, state, f" exit {result.exit_code}" if result and result.exit_code is not None else ""
        )
        self._changed.set()
        self._changed = asyncio.Event()

    def run_status(self, run_id: int) -> dict[str, Any]:
        row = self.journal.get(run_id)
        if row is None:
            raise NotFound(f"no run {run_id} on this agent (instance {self.instance})")
        return status_doc(row)

    def closing(self) -> None:
        """The server is shutting down: answer long-polls now so the shutdown is not held up."""
        self._closing = True
        self._changed.set()

    async def results(self, after: int, wait: float, limit: int = 500) -> dict[str, Any]:
        """Finished, unacknowledged runs after `after`; each carries its log when it is small."""
        rows = self.journal.results_after(after, limit)
        if not rows and wait > 0 and not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, 60.0)):
                    await self._changed.wait()
            await asyncio.sleep(RESULTS_COALESCE)  # under load, one answer carries several results
            rows = self.journal.results_after(after, limit)
        docs = []
        for row in rows:
            doc = status_doc(row)
            log_file = self.paths.run_dir(int(row["run_id"])) / "log"
            with contextlib.suppress(OSError):
                if log_file.stat().st_size <= INLINE_LOG_MAX:
                    doc["log_b64"] = base64.b64encode(log_file.read_bytes()).decode()
            docs.append(doc)
        return {"instance": self.instance, "results": docs}

    def ack(self, run_ids: list[Any], epoch: int | None) -> dict[str, Any]:
        ids = [_body_id(i, "run_ids[]") for i in run_ids]  # all checked before anything changes
        self.check_epoch(epoch, mutating=True)
        return {"acked": self.journal.ack(ids)}

    def status(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        return {
            "version": __version__,
            "instance": self.instance,
            "max_epoch": self.journal.max_epoch,
            "max_run_id": self.journal.max_run_id,
            "cpu_percent": psutil.cpu_percent(interval=None),
            "memory_percent": memory.percent,
            "load1": round(os.getloadavg()[0], 2),
            "running": self.journal.count_running(),
            "open": self.journal.open_ids(),
            "time": iso(_now()),
        }

    def read_log(self, run_id: int, offset: int, max_bytes: int) -> tuple[bytes, int, int, str]:
        row = self.journal.get(run_id)
        if row is None:
            raise NotFound(f"no run {run_id} on this agent")
        path = self.paths.run_dir(run_id) / "log"
        try:
            with open(path, "rb") as fh:
                size = fh.seek(0, 2)
                if offset > size:
                    offset = 0  # truncated by the log cap
                fh.seek(offset)
                data = fh.read(max_bytes)
        except FileNotFoundError:
            return b"", offset, 0, str(row["state"])
        return data, offset + len(data), size, str(row["state"])


class NotFound(AgentError):
    pass


class Conflict(AgentError):
    pass


def _validate_dispatch(req: Any) -> dict[str, Any]:
    if not isinstance(req, dict):
        raise BadRequest("expected a JSON object")
    out: dict[str, Any] = {}
    missing = [key for key in ("run_id", "epoch", "job", "scheduled_for") if req.get(key) is None]
    if missing:
        raise BadRequest(f"dispatch needs run_id, epoch, job, scheduled_for; missing {', '.join(missing)}")
    out["run_id"] = _body_id(req["run_id"], "run_id")
    out["epoch"] = _body_id(req["epoch"], "epoch")
    out["attempt"] = _body_id(req.get("attempt", 1), "attempt")
    for key in ("job", "scheduled_for"):
        if not isinstance(req[key], str):
            raise BadRequest(f"{key} must be a string")
        out[key] = req[key]
    command = req.get("command")
    if isinstance(command, str) and command:
        out["command"] = command
    elif isinstance(command, list) and command and all(isinstance(c, str) for c in command):
        out["command"] = command
    else:
        raise BadRequest("command must be a non-empty string or a list of strings")
    env = req.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise BadRequest("env must map strings to strings")
    out["env"] = env
    workdir = req.get("workdir")
    if workdir is not None and not isinstance(workdir, str):
        raise BadRequest("workdir must be a string")
    out["workdir"] = workdir
    for key in ("timeout", "kill_grace"):
        value = req.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= MAX_SECONDS
        ):
            raise BadRequest(f"{key} must be a number of seconds from 0 to {MAX_SECONDS}")
        out[key] = value
    log_cap = req.get("log_cap")
    if log_cap is not None and (
        isinstance(log_cap, bool) or not isinstance(log_cap, int) or not 0 < log_cap <= MAX_ROW_ID
    ):
        raise BadRequest("log_cap must be a positive number of bytes")
    out["log_cap"] = log_cap
    return out


def _body_id(value: Any, what: str) -> int:
    """A run id, epoch or attempt from a JSON body: an integer SQLite can store, nothing else."""
    number = as_row_id(value) if isinstance(value, int) else None  # not "5", 5.0 or true
    if number is None:
        raise BadRequest(f"{what} must be a whole number from 0 to {MAX_ROW_ID}, got {_short(value)}")
    return number


def _text_id(value: bytes | str | None, what: str) -> int | None:
    """A run id, epoch or offset from a path, header or query string; None when absent."""
    if value is None:
        return None
    number = as_row_id(value)
    if number is None:
        raise BadRequest(f"{what} must be a whole number from 0 to {MAX_ROW_ID}, got {_short(value)}")
    return number


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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------- HTTP


Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/status$"), "status"),
    ("POST", re.compile(r"^/runs$"), "dispatch"),
    ("GET", re.compile(r"^/runs/(\d+)$"), "run"),
    ("POST", re.compile(r"^/runs/(\d+)/kill$"), "kill"),
    ("GET", re.compile(r"^/runs/(\d+)/log$"), "log"),
    ("GET", re.compile(r"^/results$"), "results"),
    ("POST", re.compile(r"^/ack$"), "ack"),
]


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
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            if method != route_method:
                await _send_json(send, 405, {"error": f"{method} not allowed on {path}"})
                return
            try:
                await self._handle(name, match, scope, headers, receive, send)
            except StaleEpochError as exc:
                await _send_json(send, 409, {"error": str(exc), "max_epoch": self.service.journal.max_epoch})
            except Conflict as exc:
                await _send_json(send, 409, {"error": str(exc)})
            except NotFound as exc:
                await _send_json(send, 404, {"error": str(exc)})
            except BadRequest as exc:
                await _send_json(send, 400, {"error": str(exc)})
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

    async def _handle(
        self,
        name: str,
        match: re.Match[str],
        scope: dict[str, Any],
        headers: dict[str, bytes],
        receive: Receive,
        send: Send,
    ) -> None:
        service = self.service
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("utf-8", "replace")).items()}
        # Everything is checked before anything changes: a bad id or epoch moves no stored maximum.
        run_id = _text_id(match.group(1), "run id") if match.groups() else None
        header_epoch = _text_id(headers.get(EPOCH_HEADER.lower()), EPOCH_HEADER)
        if name in ("dispatch", "kill", "ack"):
            body = await _read_json(receive)
            body_epoch = body.get("epoch") if isinstance(body, dict) else None
            epoch = _body_id(body_epoch, "epoch") if body_epoch is not None else header_epoch
        else:
            body, epoch = None, header_epoch
            if name == "results":
                after = _text_id(query.get("after"), "after") or 0
                try:
                    wait = float(query.get("wait", "0") or 0)
                except ValueError:
                    raise BadRequest(f"wait must be a number of seconds, got {_short(query.get('wait'))}") from None
                wait = wait if math.isfinite(wait) else 0.0
            elif name == "log":
                # Sizes, not ids: anything unreadable or out of range means "from the start", "default".
                offset = _clamped(query.get("offset"))
                asked = _clamped(query.get("max"))
            service.check_epoch(epoch, mutating=False)
        if name == "status":
            await _send_json(send, 200, service.status())
        elif name == "dispatch":
            if isinstance(body, dict) and body.get("epoch") is None and epoch is not None:
                body["epoch"] = epoch
            code, doc = service.dispatch(body)
            await _send_json(send, code, doc)
        elif name == "run":
            await _send_json(send, 200, service.run_status(_captured(run_id)))
        elif name == "kill":
            reason = str(body.get("reason", "kill")) if isinstance(body, dict) else "kill"
            await _send_json(send, 200, service.kill(_captured(run_id), reason, epoch))
        elif name == "ack":
            ids = body.get("run_ids") if isinstance(body, dict) else None
            if not isinstance(ids, list):
                raise BadRequest("ack needs run_ids: [...]")
            await _send_json(send, 200, service.ack(ids, epoch))
        elif name == "results":
            await _send_json(send, 200, await service.results(after, max(0.0, wait)))
        elif name == "log":
            max_bytes = min(asked if asked > 0 else 1 << 20, 8 << 20)  # read(-1) would read it all
            data, nxt, size, state = service.read_log(_captured(run_id), offset, max_bytes)
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


async def _read_json(receive: Receive) -> Any:
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client went away")
        body = message.get("body", b"")
        total += len(body)
        if total > MAX_BODY:
            raise BadRequest(f"request body larger than {MAX_BODY} bytes")
        chunks.append(body)
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply") from None


async def _send_json(send: Send, status: int, doc: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": data})


def _remove_tree(path: os.PathLike[str]) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------- server


def serve_agent(args: Any) -> int:
    """`vigil agent`: validate the options, then serve until SIGTERM/SIGINT."""
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
            raise VigilError(
                f"--reset-epoch {_short(args.reset_epoch)}: expected a whole number from 0 to {MAX_ROW_ID}"
            )
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
    return asyncio.run(_serve(host, port, state_dir, token, args, reset_epoch))


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
    host: str, port: int, state_dir: Path, token: str | None, args: Any, reset_epoch: int | None = None
) -> int:
    import uvicorn

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

    announcer = asyncio.create_task(announce())
    started = time.monotonic()
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
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
