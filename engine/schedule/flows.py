"""Flows: the pure rules of a flow's steps (`after` conditions within one flow) and their outputs.

A fire of a job that others depend on starts a flow; the runs its downstream jobs get because of it
are steps of that flow. A step's edges to upstream jobs of the same flow are judged on those jobs'
final ends *in this flow* (`judge`); an edge to a job outside the flow (one with its own schedule, or
not reachable from the flow's root) keeps the rule of jobs without flows: it succeeded since the
step's job last ran (the planner checks that one with `policy.upstream_satisfied`).

Outputs: each `NAME=value` line a step writes to `$VIGIL_OUTPUT` (`parse_outputs`, bounded) is given
to the later steps downstream of it in the flow (`flow_env`).

No I/O. Imports only `engine.model` and the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from engine.model import AfterEdge, Condition, JobSpec, RunState

#: Bounds of one step's outputs: bytes of the file read, and names kept.
MAX_OUTPUT_BYTES = 64 * 1024
MAX_OUTPUT_NAMES = 100

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class StepEnd:
    """A step's final end in its flow (no retry followed it)."""

    run_id: int
    state: RunState
    ended_at: datetime
    outputs: tuple[tuple[str, str], ...] = ()


@dataclass
class Flow:
    """One flow as the active tracks it while a step of it is open."""

    id: int  #: the id of the run that started it
    root: str  #: the job whose fire started it
    members: frozenset[str]  #: the jobs that can be steps: the root and the jobs after it, transitively
    ends: dict[str, StepEnd] = field(default_factory=dict)  #: job → its final end in this flow
    started: set[str] = field(default_factory=set)  #: jobs with a row in this flow (the current round)
    open: set[int] = field(default_factory=set)  #: its runs still open
    #: job → (scheduled_for, attempt) of its latest row in this flow: a rerun's new attempt follows it
    attempts: dict[str, tuple[datetime, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a step can start now: `ready`, still `waiting` (for `waiting_for`), or never (`skip`)."""

    ready: bool
    skip: bool
    reason: str  #: ready: what let it start; skip: why it never can; waiting: what it waits for
    waiting_for: tuple[AfterEdge, ...] = ()


def members_of(root: str, downstream: Mapping[str, Iterable[str]], scheduled: Iterable[str]) -> frozenset[str]:
    """The jobs a flow started by `root` can have as steps: the root and every job after it,
    transitively, except jobs with their own schedule (they keep their own rule, at their fires)."""
    own_schedule = set(scheduled)
    seen = {root}
    todo = [root]
    while todo:
        for name in downstream.get(todo.pop(), ()):
            if name not in seen and name not in own_schedule:
                seen.add(name)
                todo.append(name)
    return frozenset(seen)


def describe_end(job: str, end: StepEnd) -> str:
    """An upstream's end as reasons name it: `etl/extract failed (run 41)`."""
    return f"{job} {end.state} (run {end.run_id})"


def judge(job: JobSpec, flow: Flow) -> Verdict:
    """A step's edges to jobs of its flow, judged on their ends in that flow.

    An edge whose upstream ended in a way its condition does not take can never be met in this flow:
    the step is skipped, saying which. One whose upstream has not ended yet is waited for. (A join
    after 1,000 steps is judged at each of their ends: no record is made per edge until one is named.)
    """
    met: list[tuple[str, StepEnd]] = []
    waiting: list[AfterEdge] = []
    conditions = job.after_on or (Condition.SUCCESS,) * len(job.after)
    for name, on in zip(job.after, conditions, strict=True):
        if name not in flow.members:
            continue  # judged by the planner with the rule of jobs outside flows
        end = flow.ends.get(name)
        if end is None:
            waiting.append(AfterEdge(name, on))
        elif on.met_by(end.state):
            met.append((name, end))
        else:
            needs = "success" if on is Condition.SUCCESS else f"on = {on}"
            return Verdict(False, True, f"after: {describe_end(name, end)}; this step needs {needs}")
    if waiting:
        return Verdict(False, False, waiting_text(waiting), tuple(waiting))
    return Verdict(True, False, "after: " + ", ".join(describe_end(name, end) for name, end in met))


def waiting_text(edges: Iterable[AfterEdge]) -> str:
    """ "waiting for etl/extract (success), etl/load (failure) in this flow"."""
    return "waiting for " + ", ".join(f"{edge.job} ({edge.on})" for edge in edges) + " in this flow"


def waiting_for(job: JobSpec, flow: Flow) -> list[tuple[str, Condition]]:
    """What a step of `flow` still waits for: (upstream job, condition) of each edge whose upstream
    has not ended in the flow (for `vigil why`). Empty once it can start or be skipped."""
    return [(edge.job, edge.on) for edge in judge(job, flow).waiting_for]


def ancestors(job: str, jobs: Mapping[str, JobSpec], members: frozenset[str]) -> set[str]:
    """The flow's jobs upstream of `job`, transitively (the steps whose outputs it gets)."""
    seen: set[str] = set()
    todo = [job]
    while todo:
        spec = jobs.get(todo.pop())
        for up in spec.after if spec is not None else ():
            if up in members and up not in seen:
                seen.add(up)
                todo.append(up)
    return seen


def flow_env(job: str, jobs: Mapping[str, JobSpec], flow: Flow) -> dict[str, str]:
    """The variables a step of `flow` gets from the outputs of the steps upstream of it.

    When two upstream steps set one name, the one that ended later wins (ties: the higher run id),
    whatever the order of `after`; the step's own `env` wins over all of them (applied by the caller).
    """
    upstream = [flow.ends[name] for name in ancestors(job, jobs, flow.members) if name in flow.ends]
    env: dict[str, str] = {}
    for end in sorted(upstream, key=lambda end: (end.ended_at, end.run_id)):
        env.update(end.outputs)
    return env


@dataclass(frozen=True, slots=True)
class Outputs:
    """What a step wrote to `$VIGIL_OUTPUT`, as kept, and what was not kept and why."""

    pairs: tuple[tuple[str, str], ...] = ()
    problems: tuple[str, ...] = ()

    def note(self) -> str | None:
        """The problems as one reason text ("outputs: ..."), or None."""
        return "outputs: " + "; ".join(self.problems) if self.problems else None


def parse_outputs(data: bytes | None, *, truncated: bool = False) -> Outputs:
    """`NAME=value` lines (blank lines and `#` comments skipped); a name set twice keeps its last value.

    At most MAX_OUTPUT_NAMES names; a file larger than MAX_OUTPUT_BYTES is read up to it (`truncated`:
    the caller read only that much) and its cut last line dropped. Every line not kept is reported.
    """
    if not data:
        return Outputs()
    problems: list[str] = []
    if truncated or len(data) > MAX_OUTPUT_BYTES:
        data = data[:MAX_OUTPUT_BYTES]
        data = data[: data.rfind(b"\n") + 1]
        problems.append(f"the file is larger than {MAX_OUTPUT_BYTES // 1024} KiB; the rest was not read")
    values: dict[str, str] = {}
    bad: list[int] = []
    over: list[str] = []
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = raw.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name) or "\0" in value:
            bad.append(number)
        elif name in values or len(values) < MAX_OUTPUT_NAMES:
            values.pop(name, None)  # set again: it moves to its last place
            values[name] = value
        else:
            over.append(name)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        problems.append(f"{'line' if len(bad) == 1 else 'lines'} {shown} not NAME=value (ignored)")
    if over:
        shown = ", ".join(over[:5]) + (f" and {len(over) - 5} more" if len(over) > 5 else "")
        problems.append(f"more than {MAX_OUTPUT_NAMES} names; not passed on: {shown}")
    return Outputs(tuple(values.items()), tuple(problems))
