"""The Executor port: what the active scheduler asks of whatever runs its jobs, and what it gives it.

Two executors implement it: the local one (`engine.exec.runner.ShimExecutor`, a /bin/sh shim per run
on this host) and the remote one (`engine.agents.dispatcher.AgentDispatcher`). Tests use
`engine.exec.fake.FakeExecutor`. An executor never holds the scheduler: it gets a `RunContext` of
the few things it may use, and hands every run's end to `RunContext.finished`.

Layer: exec. May import the base modules and `engine.store` (the Store protocol), never run/, agents/ or ha/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from engine.clock import Clock
from engine.errors import StoreError
from engine.model import JobSpec, RunState, Settings
from engine.paths import StatePaths
from engine.store.abc import Store


@dataclass
class RunInfo:
    """An open run, as the scheduler tracks it and its executor drives it (one shared record)."""

    id: int
    job: str
    scheduled_for: datetime
    attempt: int
    trigger: str
    state: RunState
    kill_requested: str | None = None
    deadline: datetime | None = None
    not_before: datetime | None = None
    agent: str | None = None  #: where it was sent (agent or pool); None runs locally
    started_at: datetime | None = None  #: when it started (as recorded), once it is running
    started_mono: float | None = None  #: when this process started it, on the monotonic clock
    deadline_mono: float | None = None  #: `deadline` on the monotonic clock, once armed
    flow_id: int | None = None  #: the flow it is a step of (the planner tracks the flow while it is open)
    #: the outputs of its flow's earlier steps, set at its launch (its job's `env` goes over them)
    flow_env: tuple[tuple[str, str], ...] = ()


@dataclass
class ShimExit:
    """How a run ended, as its executor reports it (for a local run: what its shim left behind)."""

    run_id: int
    exit_code: int | None
    job_pid: int | None
    cpu_s: float | None
    peak_rss: int | None
    reason: str | None = None  #: why the outcome is what it is, when there is no exit code
    state: RunState | None = None  #: the run's end without an exit code (e.g. failed, killed); default unknown
    #: when the run really ended, on the scheduler's clock, if the executor knows (a local run: its
    #: exit record's time; an agent's: the duration the agent measured); None: when it is reported.
    #: A run that ended while no scheduler was active is reported only at the takeover. The planner
    #: bounds it by the run's start and now.
    ended_at: datetime | None = None
    #: what the run wrote to `$VIGIL_OUTPUT` (read only for a flow's steps; None: nothing or not read)
    output: bytes | None = None
    output_truncated: bool = False  #: the file was larger than what was read


class Adopted(StrEnum):
    """What became of a run found open at start-up when its executor took it over."""

    WATCHED = "watched"  #: still going; its end comes through `finished`
    ENDING = "ending"  #: its job is being ended (`reason` says why); its end comes through `finished`
    NEVER_STARTED = "never_started"  #: no trace that it ever started
    ENDED = "ended"  #: it had ended; its end has been handed to `finished`
    LOST = "lost"  #: its outcome cannot be known (`reason` says why)


@dataclass(frozen=True, slots=True)
class Adoption:
    outcome: Adopted
    reason: str | None = None
    started_at: datetime | None = None  #: WATCHED: when it started, if the executor can tell


@dataclass(frozen=True, slots=True)
class RunContext:
    """What an executor may use of the scheduler that runs it."""

    paths: StatePaths
    store: Store  #: for the executor's own records (an agent chosen, a run waiting); fenced like all
    clock: Clock
    settings: Callable[[], Settings]  #: `vigil.toml` as loaded now (it changes at a rescan)
    job: Callable[[str], JobSpec | None]  #: a job as loaded now, by name
    is_open: Callable[[RunInfo], bool]  #: the run is still open in the scheduler's table
    finished: Callable[[ShimExit], None]  #: a run's end, handed in once (it wakes the loop)
    store_fault: Callable[[StoreError], None]  #: a store fault in a side task (fenced: the scheduler stops)


class Executor(Protocol):
    """Runs the jobs of committed runs. Every method returns at once; ends come through `finished`."""

    def launch(self, run: RunInfo, job: JobSpec) -> None:
        """Start a committed `launching` run. Raises LaunchError (the run's reason) if it cannot start;
        OSError or ValueError for a failure of the executor itself."""
        ...

    def kill(self, run: RunInfo) -> None:
        """An operator kill or a timeout (`run.kill_requested` says which)."""
        ...

    def adopt(self, run: RunInfo) -> Adoption:
        """Take over a run a previous active left open (launching, waiting or running)."""
        ...

    def configure(self, settings: Settings) -> None:
        """`vigil.toml` was read again (log cap, kill grace)."""
        ...

    def sample(self) -> None:
        """Called twice a second: resource sampling, log caps."""
        ...

    async def aclose(self) -> None: ...
