"""Pure reconciliation: what to do with a non-terminal run after a restart or takeover.

The decision depends only on what the run's shim left behind, never on timing, so it is the same
whichever process (the restarted primary or a standby) makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    LAUNCH = "launch"  #: the job never started: safe to launch under the same run id
    ADOPT = "adopt"  #: the shim is alive: watch it and ingest its result when it ends
    INGEST = "ingest"  #: the shim finished and left an exit record (or a record that it could not start the job)
    TERMINATE = "terminate"  #: the shim is gone but the job's process group lives: end it, then record why
    UNKNOWN = "unknown"  #: the outcome cannot be learned; never re-run


@dataclass(frozen=True)
class ShimEvidence:
    run_dir_exists: bool
    lock_held: bool  #: the shim holds the run lock for exactly its lifetime
    shim_pid: int | None
    job_pid: int | None
    exit_code: int | None  #: from a complete exit record
    start_failure: str | None = None  #: from a complete record that the shim could not start the job
    job_group_alive: bool = False  #: the job's process group still runs (identity checked by pid + start time)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str | None = None


def decide(evidence: ShimEvidence) -> Decision:
    if evidence.exit_code is not None or evidence.start_failure is not None:
        return Decision(Action.INGEST)
    if evidence.lock_held:
        return Decision(Action.ADOPT)
    if not evidence.run_dir_exists or evidence.shim_pid is None:
        # The shim writes its pid before it starts the job, so without it nothing ran.
        return Decision(Action.LAUNCH)
    if evidence.job_pid is None:
        return Decision(Action.UNKNOWN, f"shim {evidence.shim_pid} ended before confirming the job's start")
    if evidence.job_group_alive:
        # Nobody would enforce its timeout or learn its exit any more: the scheduler ends the group
        # it launched rather than leave it running unmanaged.
        return Decision(
            Action.TERMINATE,
            f"the run's shim (pid {evidence.shim_pid}) ended without recording the exit of job pid {evidence.job_pid}",
        )
    return Decision(
        Action.UNKNOWN,
        f"shim {evidence.shim_pid} ended without recording the exit of job pid {evidence.job_pid}",
    )
