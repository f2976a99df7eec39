"""Reconciliation: the runs a previous active left open, settled once by the new one before it plans.

Each open run goes back to the table: pending ones to their retry time or their job's queue, agent
runs to the dispatcher, local ones to the shim executor, which adopts, ends or collects each from
the evidence its shim left. Runs still going in `runs/` with no row at all (a restored database)
are adopted into new rows. The result is one batch the loop commits before its first iteration.

Layer: run. May import the base modules, `engine.exec`, `engine.store` and the planner.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine import schedule
from engine.exec.local import LocalExecutor, gather_evidence
from engine.exec.port import Adopted, Executor, RunInfo, ShimExit
from engine.exec.reconcile import Action, decide
from engine.exec.rundirs import recorded_run, run_dir_ids
from engine.exec.runner import file_time
from engine.model import QUEUED_STATES, RunState
from engine.paths import StatePaths
from engine.run.planner import Batch, Planner, Trigger
from engine.store import intents as i
from engine.store.abc import Store

log = logging.getLogger("vigil.scheduler")


@dataclass
class Reconciler:
    planner: Planner
    store: Store
    paths: StatePaths
    local: Executor
    agents: Executor | None
    shims: LocalExecutor | None  #: the local executor's shims by run id, if it runs shims
    restored: bool  #: the database is older than this state directory
    finished: Callable[[ShimExit], None]

    async def settle(self, now: datetime) -> Batch:
        """Every run the previous active left open, back in the table or ended; what to commit."""
        p, table = self.planner, self.planner.table
        batch = Batch()
        for run in await self.store.open_runs():
            info = RunInfo(
                id=run.id,
                job=run.job,
                scheduled_for=run.scheduled_for,
                attempt=run.attempt,
                trigger=run.trigger,
                state=run.state,
                kill_requested=run.kill_requested,
                deadline=run.deadline,
                not_before=run.not_before,
                agent=run.agent,
                started_at=run.started_at,
                flow_id=run.flow_id,
            )
            info.flow_env = tuple(p.launch_env(info).items())  # a dispatch still to come takes them
            if run.agent and self.agents is not None and info.state is not RunState.PENDING:
                table.track(info, active=True)
                self.agents.adopt(info)  # its end, whatever it is, comes as a finished run
                continue
            restored_queued = self.restored and info.state in QUEUED_STATES
            if restored_queued and not self.paths.run_dir(info.id).exists():
                # Queued when the backup was taken; what became of it is not known here, and the
                # schedule restarts from now (docs/ha.md, "Restoring a backup").
                table.track(info)
                reason = "queued when the backup was taken; not started after the restore"
                p.finish(info, RunState.SKIPPED, reason, None, now, batch)
                continue
            if info.state in QUEUED_STATES and not restored_queued:
                table.track(info)
                if info.not_before is not None:
                    wait = (info.not_before - now).total_seconds()
                    job = p.jobs.get(info.job)
                    if job is not None and info.attempt > 1:
                        # Never longer than its delay: a clock that went back must not postpone it.
                        wait = min(wait, schedule.retry_delay(job.retry_delay, info.attempt - 1))
                    if info.attempt == 1:  # a first attempt with a start time waits for its window
                        table.wait_for_window(p.clock.monotonic() + wait, info)
                    else:
                        table.retry_at(p.clock.monotonic() + wait, info.id)
                else:
                    table.queued[info.job].append(info.id)
                continue
            self._adopt_local(info, now, batch)
        await self._settle_unrecorded_runs(now, batch)
        # Every holder is tracked by now: the locks they hold are derived from them, not stored.
        p.restore_waiting()
        for name in p.queue_order(list(table.queued)):
            # A queued run whose predecessor ended while no scheduler was active.
            p.start_queued(name, batch)
        p.admit_waiting(batch)
        return batch

    def _adopt_local(self, info: RunInfo, now: datetime, batch: Batch) -> None:
        p = self.planner
        adoption = self.local.adopt(info)
        p.table.track(info)
        if adoption.outcome is Adopted.NEVER_STARTED and self.restored:
            # Open in the backup, so a later scheduler handled it; its directory is gone
            # (pruned?), so whether it ran is unknown. Never run it a second time.
            reason = "open in the restored database but its run directory is gone; not re-run"
            p.finish(info, RunState.UNKNOWN, reason, None, now, batch)
        elif adoption.outcome is Adopted.NEVER_STARTED:
            log.info("run %d never started; launching it now", info.id)
            batch.launches.append(info.id)
        elif adoption.outcome is Adopted.ENDING:
            log.warning("run %d: %s; ending its job process group", info.id, adoption.reason)
        elif adoption.outcome is Adopted.WATCHED:
            log.info("adopted run %d", info.id)
            if info.state is RunState.LAUNCHING:
                # Its start (and deadline) were never recorded: the deferred write died with the
                # previous active.
                self._record_start(info, adoption.started_at or now, batch)
                info.state = RunState.RUNNING
            p.table.arm_deadline(info)
            if info.kill_requested:
                self.local.kill(info)
        elif adoption.outcome is Adopted.LOST:
            p.finish(info, RunState.UNKNOWN, adoption.reason, None, now, batch)

    def _record_start(self, info: RunInfo, started: datetime, batch: Batch) -> None:
        """An adopted run's start, as its shim dates it, and the deadline its job's timeout sets from it.

        Its `started_mono` stays unset (it was not started by this process), so a later clock step
        does not re-date it (`Scheduler._restate_starts`).
        """
        job = self.planner.jobs.get(info.job)
        info.started_at = started
        if info.deadline is None and job is not None and job.timeout is not None:
            info.deadline = started + timedelta(seconds=job.timeout)
        if info.state is RunState.RUNNING:  # a row made running (an unrecorded run adopted)
            batch.intents.append(i.StartRestated(info.id, started, info.deadline))
        else:
            batch.intents.append(i.RunStarted(info.id, started, info.deadline))

    async def _settle_unrecorded_runs(self, now: datetime, batch: Batch) -> None:
        """Runs still going in `runs/` that the database has no row for: never left unmanaged.

        The database was restored, emptied or replaced while they ran. A live shim is adopted into
        a row from its `run.json` (its job's timeout counts from the shim's start); a job whose
        shim died is ended like any orphan. Finished ones are left as they are (docs/ha.md).
        """
        shims = self.shims
        if shims is None:
            return  # only a shim executor leaves run directories
        dirs = run_dir_ids(self.paths)
        known = set(await self.store.run_states(dirs))
        for run_id in (d for d in dirs if d not in known):
            run_dir = self.paths.run_dir(run_id)
            decision = decide(gather_evidence(run_dir))
            if decision.action not in (Action.ADOPT, Action.TERMINATE):
                continue
            found = recorded_run(run_dir)
            why = "found running after the state database was restored or replaced (it had no row for it)"
            if found is None:
                log.warning(
                    "run directory %s: %s, and its run.json names no job; ending its job process group", run_dir, why
                )
                if decision.action is Action.TERMINATE:
                    shims.end_orphan(run_id, why)
                elif shims.adopt(run_id):
                    shims.kill(run_id)
                continue
            self.planner.next_id = max(self.planner.next_id, run_id + 1)
            info = self.planner.new_row(
                batch,
                found.job,
                found.scheduled_for,
                RunState.RUNNING,
                Trigger.ADOPTED,
                now,
                attempt=found.attempt,
                reason=why,
                run_id=run_id,
            )
            self._record_start(info, file_time(run_dir / "shim") or now, batch)
            if decision.action is Action.TERMINATE:
                cause = f"{why}; {decision.reason}"
                log.warning("run %d (job %s): %s; ending its job process group", run_id, found.job, cause)
                batch.after_commit.append(functools.partial(_end_unrecorded, shims, run_id, cause))
            else:
                log.warning("run %d (job %s): %s; adopted it", run_id, found.job, why)
                batch.after_commit.append(functools.partial(self._adopt_unrecorded, shims, run_id))

    def _adopt_unrecorded(self, shims: LocalExecutor, run_id: int, new_ids: set[int]) -> None:
        info = self.planner.table.get(run_id)
        if not shims.adopt(run_id):
            self.finished(shims.collect(run_id))  # it ended meanwhile: its record tells
        elif run_id not in new_ids or info is None:
            # Its fire already has another row: it must not run on unrecorded.
            log.warning("run %d: its fire is already recorded under another id; ending its job process group", run_id)
            shims.kill(run_id)
        else:
            self.planner.table.arm_deadline(info)


def _end_unrecorded(shims: LocalExecutor, run_id: int, cause: str, new_ids: set[int]) -> None:
    shims.end_orphan(run_id, cause)
