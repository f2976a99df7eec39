"""The scheduler's local executor: the Executor port over LocalExecutor's shims on this host.

LocalExecutor (engine/exec/local.py) knows processes and run directories by run id; this adds what
the scheduler's port needs: a job's environment for its shim, and the takeover of a run found open
from the evidence its shim left (engine/exec/reconcile.py).

Layer: exec. May import the base modules and `engine.store`, never run/, agents/ or ha/.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from engine.clock import iso
from engine.exec.local import LocalExecutor, gather_evidence
from engine.exec.port import Adopted, Adoption, RunContext, RunInfo
from engine.exec.reconcile import Action, decide
from engine.exec.rundirs import OUTPUT_FILE
from engine.model import JobSpec, Settings
from engine.users import Account, job_environment, run_as


class ShimExecutor:
    """Runs each run's job under a /bin/sh shim on this host (implements engine.exec.port.Executor)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        settings = ctx.settings()
        self.local = LocalExecutor(
            ctx.paths, ctx.finished, log_cap=settings.log_cap, kill_grace=settings.kill_grace, clock=ctx.clock
        )
        # The scheduler's environment as jobs inherit it, and the base of a job's environment per
        # account: copying and decoding os.environ for every launch was a tenth of a launch's cost.
        self._inherited = dict(os.environ)
        self._bases: dict[Account | None, dict[str, str]] = {}

    def _base_environment(self, account: Account | None) -> dict[str, str]:
        base = self._bases.get(account)
        if base is None:
            base = self._bases[account] = job_environment(self._inherited, account, {}, euid=os.geteuid())
        return base

    def launch(self, run: RunInfo, job: JobSpec) -> None:
        account = run_as(job.user)  # checked again here: accounts change after validation
        env = {**self._base_environment(account), **dict(job.env)}
        env.update(
            VIGIL_RUN_ID=str(run.id),
            VIGIL_JOB=run.job,
            VIGIL_SCHEDULED_FOR=iso(run.scheduled_for) or "",
            VIGIL_ATTEMPT=str(run.attempt),
            VIGIL_EPOCH=str(self.ctx.store.epoch),
            VIGIL_OUTPUT=str(self.ctx.paths.run_dir(run.id) / OUTPUT_FILE),
        )
        self.local.launch(run.id, job.command, env, job.workdir, account)

    def kill(self, run: RunInfo) -> None:
        self.local.kill(run.id)

    def adopt(self, run: RunInfo) -> Adoption:
        run_dir = self.ctx.paths.run_dir(run.id)
        decision = decide(gather_evidence(run_dir))
        adopted = decision.action is Action.ADOPT and self.local.adopt(run.id)
        if decision.action is Action.ADOPT and not adopted:
            # The shim ended between the evidence and the pidfd: decide again on what it left.
            decision = decide(gather_evidence(run_dir))
        if decision.action is Action.LAUNCH:
            return Adoption(Adopted.NEVER_STARTED)
        if decision.action is Action.TERMINATE:
            reason = decision.reason or "the run's shim is gone"
            self.local.end_orphan(run.id, reason)
            return Adoption(Adopted.ENDING, decision.reason)
        if adopted:
            # The shim's pid file dates the start (for a run whose start was never recorded).
            return Adoption(Adopted.WATCHED, started_at=file_time(run_dir / "shim"))
        if decision.action in (Action.INGEST, Action.ADOPT):
            self.ctx.finished(self.local.collect(run.id))
            return Adoption(Adopted.ENDED)
        return Adoption(Adopted.LOST, decision.reason)

    def configure(self, settings: Settings) -> None:
        self.local.log_cap = settings.log_cap
        self.local.kill_grace = settings.kill_grace
        inherited = dict(os.environ)  # at each rescan: a change of this process's own reaches jobs
        if inherited != self._inherited:
            self._inherited = inherited
            self._bases.clear()

    def sample(self) -> None:
        self.local.sample()

    async def aclose(self) -> None:
        self.local.close()


def file_time(path: Path) -> datetime | None:
    """A file's modification time, or None if it cannot be read."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None
