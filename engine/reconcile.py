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
    INGEST = "ingest"  #: the shim finished and left an exit record
    UNKNOWN = "unknown"  #: the outcome cannot be learned; never re-run


@dataclass(frozen=True)
class ShimEvidence:
    run_dir_exists: bool
    lock_held: bool  #: the shim holds the run lock for exactly its lifetime
    shim_pid: int | None
    job_pid: int | None
    exit_code: int | None  #: from a complete exit record


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str | None = None


def decide(evidence: ShimEvidence) -> Decision:
    if evidence.exit_code is not None:
        return Decision(Action.INGEST)
    if evidence.lock_held:
        return Decision(Action.ADOPT)
    if not evidence.run_dir_exists or evidence.shim_pid is None:
        # The shim writes its pid before it starts the job, so without it nothing ran.
        return Decision(Action.LAUNCH)
    if evidence.job_pid is None:
        return Decision(Action.UNKNOWN, f"shim {evidence.shim_pid} ended before confirming the job's start")
    return Decision(
        Action.UNKNOWN,
        f"shim {evidence.shim_pid} ended without recording the exit of job pid {evidence.job_pid}",
    )
