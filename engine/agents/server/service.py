"""AgentService: what the agent does, independent of HTTP.

It accepts runs (journaled before their shim starts), starts, times out and kills them under the
local shim model, settles the runs a previous agent process left open, keeps each result until a
scheduler acknowledges it, and refuses a command from an epoch lower than the highest it has seen.
May import engine.exec (the shim executor and reconcile), engine.paths, engine.users (a run's
`user`, checked against this agent's privileges at launch), engine.agents.protocol and the server's
journal and refusals; never the routes or the serving code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import shutil
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from engine import __version__
from engine.agents.protocol import END_FAILED, FINISHED, RUNNING, UNKNOWN
from engine.agents.server.journal import SPEC_FIELDS, Journal, utc_now
from engine.agents.server.refusals import Malformed, NoSuchRun, RunIdInUse, body_id
from engine.clock import iso
from engine.errors import LaunchError, StaleEpochError
from engine.exec.local import LocalExecutor, gather_evidence
from engine.exec.port import ShimExit
from engine.exec.reconcile import Action, decide
from engine.ids import MAX_ROW_ID
from engine.paths import StatePaths, ensure_private_dir
from engine.users import job_environment, run_as

log = logging.getLogger("vigil.agent")

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
INLINE_LOG_MAX = 64 << 10  #: a result carries its log inline up to this size (saves a request per run)
RESULTS_COALESCE = 0.01  #: seconds a woken long-poll waits for more results to share one answer
ACKED_RETENTION = 24 * 3600.0  #: seconds an acknowledged run (and its log) stays on the agent
DEFAULT_LOG_CAP = 1 << 20
DEFAULT_KILL_GRACE = 5.0
MAX_SECONDS = 10**9  #: ~31 years: the longest timeout or kill grace a dispatch may carry


def status_doc(row: sqlite3.Row) -> dict[str, Any]:
    return {k: row[k] for k in STATUS_FIELDS}


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
        for run_id in self.journal.prune(utc_now() - timedelta(seconds=ACKED_RETENTION)):
            shutil.rmtree(self.paths.run_dir(run_id), ignore_errors=True)

    # ---------------------------------------------------------------- epochs

    def check_epoch(self, epoch: int | None, *, mutating: bool) -> None:
        """Remember the highest epoch seen; refuse a mutating command from a lower one."""
        if epoch is None:
            if mutating:
                raise Malformed("this command needs the scheduler's epoch")
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
                raise RunIdInUse(
                    f"run id {run_id} is already used here by job {row['job']} scheduled for "
                    f"{row['scheduled_for']} (attempt {row['attempt']})"
                )
            return 200, status_doc(row)
        started_at = iso(utc_now()) or ""
        # The journal row is committed before the shim exists: a crash in between leaves a row
        # without a shim, which recover() launches once.
        self.journal.insert(req, started_at)
        spec = {k: req.get(k) for k in SPEC_FIELDS}
        self._specs[run_id] = spec
        row = self.journal.get(run_id)
        assert row is not None
        self._start(run_id, row, spec)
        log.info("run %d (%s, epoch %d) started", run_id, req["job"], req["epoch"])
        return 201, status_doc(self.journal.get(run_id) or row)

    def _start(self, run_id: int, row: sqlite3.Row, spec: dict[str, Any]) -> None:
        try:
            account = run_as(spec.get("user"), who="the agent")  # this agent's privileges decide
        except LaunchError as exc:
            self._finish(run_id, UNKNOWN, None, str(exc), END_FAILED)
            return
        env = job_environment(os.environ, account, spec.get("env") or {}, euid=os.geteuid())
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
                run_id, command if isinstance(command, str) else tuple(command), env, spec.get("workdir"), account
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
        start = datetime.fromisoformat(started_at) if started_at else utc_now()
        remaining = (start + timedelta(seconds=float(timeout)) - utc_now()).total_seconds()
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
            raise NoSuchRun(f"no run {run_id} on this agent")
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
            raise NoSuchRun(f"no run {run_id} on this agent (instance {self.instance})")
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
        ids = [body_id(i, "run_ids[]") for i in run_ids]  # all checked before anything changes
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
            "time": iso(utc_now()),
        }

    def read_log(self, run_id: int, offset: int, max_bytes: int) -> tuple[bytes, int, int, str]:
        row = self.journal.get(run_id)
        if row is None:
            raise NoSuchRun(f"no run {run_id} on this agent")
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


def _validate_dispatch(req: Any) -> dict[str, Any]:
    if not isinstance(req, dict):
        raise Malformed("expected a JSON object")
    out: dict[str, Any] = {}
    missing = [key for key in ("run_id", "epoch", "job", "scheduled_for") if req.get(key) is None]
    if missing:
        raise Malformed(f"dispatch needs run_id, epoch, job, scheduled_for; missing {', '.join(missing)}")
    out["run_id"] = body_id(req["run_id"], "run_id")
    out["epoch"] = body_id(req["epoch"], "epoch")
    out["attempt"] = body_id(req.get("attempt", 1), "attempt")
    for key in ("job", "scheduled_for"):
        if not isinstance(req[key], str):
            raise Malformed(f"{key} must be a string")
        out[key] = req[key]
    command = req.get("command")
    if isinstance(command, str) and command:
        out["command"] = command
    elif isinstance(command, list) and command and all(isinstance(c, str) for c in command):
        out["command"] = command
    else:
        raise Malformed("command must be a non-empty string or a list of strings")
    env = req.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise Malformed("env must map strings to strings")
    out["env"] = env
    workdir = req.get("workdir")
    if workdir is not None and not isinstance(workdir, str):
        raise Malformed("workdir must be a string")
    out["workdir"] = workdir
    user = req.get("user")
    if user is not None and (not isinstance(user, str) or not user):
        raise Malformed("user must be a non-empty string")
    out["user"] = user
    for key in ("timeout", "kill_grace"):
        value = req.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= MAX_SECONDS
        ):
            raise Malformed(f"{key} must be a number of seconds from 0 to {MAX_SECONDS}")
        out[key] = value
    log_cap = req.get("log_cap")
    if log_cap is not None and (
        isinstance(log_cap, bool) or not isinstance(log_cap, int) or not 0 < log_cap <= MAX_ROW_ID
    ):
        raise Malformed("log_cap must be a positive number of bytes")
    out["log_cap"] = log_cap
    return out
