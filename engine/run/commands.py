"""Operator commands inside the loop: run, pause, resume, hold, release, kill, rerun, status; each audited.

A command is handled in the loop iteration that picks it up, its effects and its audit row in that
iteration's batch. A refusal is a VigilError (NotFoundError for an unknown run or job), and its
reply says which (`refusal`). `prune` runs outside the loop (engine/run/loop.py); its argument is
checked here.

Layer: run. May import the base modules, `engine.control` (replies) and the planner.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from engine.durations import MAX_DURATION_S, MAX_DURATION_TEXT
from engine.errors import NotFoundError, VigilError
from engine.exec.port import RunInfo
from engine.ids import as_row_id
from engine.model import QUEUED_STATES, Overlap, RunState
from engine.run.planner import Batch, Planner, Trigger
from engine.store import intents as i
from engine.text import show


class Op(StrEnum):
    """The commands the scheduler itself answers (the HA node adds its own: status, switchover)."""

    RUN = "run"
    PAUSE = "pause"
    RESUME = "resume"
    HOLD = "hold"  #: new runs wait pending ("job held") until released (JAMS hold, JS7 suspend)
    RELEASE = "release"
    KILL = "kill"
    RERUN = "rerun"
    RERUN_FLOW = "rerun_flow"  #: `vigil rerun --flow ID --from-failed`
    PRUNE = "prune"
    STATUS = "status"


@dataclass
class Command:
    op: str  #: as asked: an unknown one is refused (and audited) in the loop
    args: dict[str, Any]
    reply: asyncio.Future[dict[str, Any]] = field(repr=False)


class Commands:
    """Carries out commands on the planner's state; `kill_running` reaches the run's executor."""

    def __init__(
        self,
        planner: Planner,
        kill_running: Callable[[RunInfo], None],
        status: Callable[[], dict[str, Any]],
        load_errors: Callable[[], dict[str, str]],
    ) -> None:
        self.planner = planner
        self.kill_running = kill_running
        self.status = status
        self.load_errors = load_errors  #: job name → why its file does not load

    def handle(self, cmd: Command, now: datetime, batch: Batch) -> dict[str, Any]:
        """The command's reply (without "ok"); raises VigilError to refuse it. Audited either way."""
        user = str(cmd.args.get("user", "?"))
        # A rerun names the run it repeats (its job is in the result and in the new row).
        key = "run_id" if cmd.op in (Op.KILL, Op.RERUN) else "flow_id" if cmd.op == Op.RERUN_FLOW else "job"
        target = str(cmd.args.get(key) or "")
        if cmd.op == Op.RERUN_FLOW:
            target = f"flow {target}"

        def audit(result: str) -> None:
            batch.intents.append(i.Audit(now, user, cmd.op, target, result))

        try:
            reply = self._dispatch(cmd.op, cmd.args, now, batch)
        except VigilError as exc:
            audit(f"refused: {exc}")
            raise
        audit(reply.pop("audit", "ok"))
        return reply

    def _dispatch(self, op: str, args: dict[str, Any], now: datetime, batch: Batch) -> dict[str, Any]:
        p = self.planner
        if op in (Op.RUN, Op.PAUSE, Op.RESUME, Op.HOLD, Op.RELEASE):
            name = str(args.get("job"))
            job = p.jobs.get(name)
            if job is None:
                # A job whose file is there but does not load is refused (exit 1), not missing (exit 3).
                missing = VigilError if name in self.load_errors() else NotFoundError
                raise missing(f"no job named {show(name)}")
            if op == Op.RUN:
                fired = p.fire(
                    batch,
                    job,
                    now,
                    Trigger.MANUAL,
                    now,
                    overlap=Overlap.ALLOW,
                    reason=f"run now by {args.get('user', '?')}",
                )
                return {"run_id": fired.id, "audit": f"run {fired.id}"}
            if op in (Op.HOLD, Op.RELEASE):
                return self._hold(name, op == Op.HOLD, batch)
            paused = op == Op.PAUSE
            batch.paused_before.setdefault(name, name in p.paused)
            if paused:
                p.paused.add(name)
            else:
                p.paused.discard(name)
            batch.intents.append(i.Paused(name, paused))
            return {"job": name, "paused": paused}
        if op == Op.RERUN:
            return self._rerun(run_id_of(args), args, now, batch)
        if op == Op.RERUN_FLOW:
            flow_id = flow_id_of(args)
            runs = args.get("flow_runs") or []  # read from the ledger by the loop (Scheduler.command)
            ids = p.rerun_flow(flow_id, runs, str(args.get("user", "?")), now, batch)
            return {"flow_id": flow_id, "run_ids": ids, "audit": "reran as " + ", ".join(map(str, ids))}
        if op == Op.KILL:
            run_id = run_id_of(args)
            info = p.table.get(run_id)
            if info is None:
                raise NotFoundError(f"run {run_id} is not running (it may have ended already)")
            info.kill_requested = "kill"
            batch.intents.append(i.KillRequested(run_id, "kill"))
            if info.state in QUEUED_STATES:
                p.finish(info, RunState.KILLED, "cancelled by operator before it started", None, now, batch)
            else:
                self.kill_running(info)
            return {"run_id": run_id}
        if op == Op.STATUS:
            return {"status": self.status()}
        raise VigilError(f"unknown command {show(op)}")

    def _hold(self, name: str, held: bool, batch: Batch) -> dict[str, Any]:
        """Hold or release a job; a release lets its waiting runs start (subject to locks and overlap)."""
        p = self.planner
        batch.held_before.setdefault(name, name in p.held)
        waiting = len(p.table.waiting_by_job.get(name, ()))
        if held:
            p.held.add(name)
        else:
            p.held.discard(name)
            p.table.admission_changed = True  # its waiting runs are looked at in this iteration
        batch.intents.append(i.Held(name, held))
        return {"job": name, "held": held, "waiting": waiting, "audit": f"{'held' if held else 'released'}"}

    def _rerun(self, run_id: int, args: dict[str, Any], now: datetime, batch: Batch) -> dict[str, Any]:
        job_name = args.get("job")
        job = self.planner.jobs.get(str(job_name)) if job_name else None
        if job is None:
            raise VigilError(f"run {run_id}'s job {show(job_name)} is not loaded")
        info = self.planner.fire(
            batch,
            job,
            now,
            Trigger.RERUN,
            now,
            overlap=Overlap.ALLOW,
            reason=f"rerun of run {run_id} by {args.get('user', '?')}",
            flow_id=args.get("flow_id"),  # a flow's step stays in its flow (set by the loop)
        )
        return {"run_id": info.id, "audit": f"rerun as {info.id}"}


def run_id_of(args: dict[str, Any]) -> int:
    """The command's `run_id`, checked."""
    # A malformed id from a hand-made client is refused; raised in the loop, it would stop it, and
    # one beyond SQLite's integers would fail in the ledger.
    run_id = as_row_id(args.get("run_id"))
    if run_id is None:
        raise NotFoundError(f"no run with id {show(args.get('run_id'))}")
    return run_id


def flow_id_of(args: dict[str, Any]) -> int:
    """The command's `flow_id`, checked (a flow id is the id of the run that started it)."""
    flow_id = as_row_id(args.get("flow_id"))
    if flow_id is None:
        raise NotFoundError(f"no flow with id {show(args.get('flow_id'))}")
    return flow_id


def prune_age(given: object) -> float:
    """`older_than_s` of a prune request, checked: raised later, a bad one would end the connection
    without an answer (`vigil db prune` checks it first; this is for hand-made clients)."""
    if isinstance(given, bool) or not isinstance(given, int | float | str):
        raise VigilError(f"prune needs older_than_s, a number of seconds, got {json.dumps(given, default=str)[:60]}")
    try:
        seconds = float(given)
    except (ValueError, OverflowError):
        raise VigilError(f"prune needs older_than_s, a number of seconds, got {json.dumps(given)[:60]}") from None
    if not 0 <= seconds <= MAX_DURATION_S:  # also NaN; past the bound the cut-off is no datetime
        raise VigilError(
            f"prune: older_than_s {seconds:g} is out of range: from 0 to {MAX_DURATION_S:.0f} seconds "
            f"({MAX_DURATION_TEXT}) is accepted"
        )
    return seconds
