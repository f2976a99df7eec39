"""One flow: its steps as a tree (the root, then the jobs after each), with their states, durations
and the condition of each edge. Reached with `w` from a run (the runs view or a run's detail).

A job after several steps of the flow (a join) is drawn under the first of them and named again,
without its subtree, under the others ("↑ above").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.widgets import Static

from engine.model import FlowRow, latest_steps
from tui.data import Run, Snapshot, after_edges
from tui.format import NONE_TEXT, fmt_duration, fmt_time, look
from tui.screens.base import ViewScreen

_TONES = {"ok": "$success", "fail": "$error", "warn": "$warning", "run": "$primary"}


def flow_header(flow: FlowRow, now: datetime) -> str:
    state = look(flow.state.value)
    tone = _TONES.get(state.tone, "$text-muted")
    steps = ", ".join(f"{count} {name}" for name, count in flow.steps.items())
    return (
        f"[b]Flow {flow.id}[/b] · {escape(flow.root_job)} · [{tone} b]{flow.state.value}[/] · "
        f"started {fmt_time(flow.started_at, now)} · ended {fmt_time(flow.ended_at, now)} · {steps}"
        f" · {flow.runs} run{'s' if flow.runs != 1 else ''}"
    )


def flow_tree(
    flow: FlowRow, runs: Sequence[Run], edges: Mapping[str, Sequence[tuple[str, str]]], now: datetime
) -> list[str]:
    """The tree's lines (markup): each step's latest run, under the steps it is after."""
    latest = latest_steps(runs)
    tries = {job: sum(1 for run in runs if run.job == job) for job in latest}
    children: dict[str, list[tuple[str, str]]] = {}
    for job in latest:
        for upstream, on in edges.get(job, ()):
            if upstream in latest:
                children.setdefault(upstream, []).append((job, on))
    lines: list[str] = []
    shown: set[str] = set()

    def step(job: str, on: str | None, prefix: str, branch: str) -> None:
        run = latest[job]
        state = look(run.state)
        tone = _TONES.get(state.tone, "$text-muted")
        edge = f"[$text-muted]{on}[/] " if on else ""
        again = f" · {tries[job]} runs" if tries[job] > 1 else ""
        if job in shown:
            lines.append(f"{prefix}{branch}{edge}{escape(job)} [$text-muted]↑ above[/]")
            return
        shown.add(job)
        took = fmt_duration(run.duration(now)) if run.started_at else NONE_TEXT
        lines.append(
            f"{prefix}{branch}{edge}[b]{escape(job)}[/b]  [{tone}]{state.label}[/]  "
            f"run {run.id} · attempt {run.attempt} · {took}{again}"
            + (f"  [$text-muted]{escape(run.reason)}[/]" if run.reason else "")
        )
        below = children.get(job, [])
        inner = prefix + ("   " if branch.startswith("└") else "│  " if branch else "")
        for number, (child, child_on) in enumerate(below):
            step(child, child_on, inner, "└─ " if number == len(below) - 1 else "├─ ")

    root = flow.root_job if flow.root_job in latest else next(iter(latest))
    step(root, None, "", "")
    for job in latest:  # steps not reached from the root (its job's `after` changed since)
        if job not in shown:
            step(job, None, "", "")
    return lines


class FlowScreen(ViewScreen):
    VIEW = "runs"
    FILTERABLE = False

    BINDINGS = [Binding("escape", "back", "Back")]

    def __init__(self, flow_id: int) -> None:
        super().__init__()
        self.flow_id = flow_id

    def compose_body(self) -> ComposeResult:
        yield Static(f"Flow {self.flow_id}: loading…", id="flow-header")
        with VerticalScroll(id="flow-box"):
            yield Static("", id="flow-tree")

    def on_mount(self) -> None:
        self.set_summary(f"flow {self.flow_id}")
        self.load_flow()

    def on_snapshot(self, snap: Snapshot) -> None:
        self.load_flow()

    @work(exclusive=True, group="flow", exit_on_error=False)
    async def load_flow(self) -> None:
        found = await self.vigil.source.flow(self.flow_id)
        header = self.query_one("#flow-header", Static)
        tree = self.query_one("#flow-tree", Static)
        if found is None:
            header.update(f"Flow {self.flow_id} has no runs (pruned?).")
            tree.update("")
            return
        flow, runs = found
        now = self.vigil.now()
        snap = self.vigil.snapshot
        jobs = snap.jobs if snap is not None else {}
        edges = {name: after_edges(record.schedule) for name, record in jobs.items()}
        header.update(flow_header(flow, now))
        tree.update("\n".join(flow_tree(flow, runs, edges, now)))

    def action_back(self) -> None:
        self.dismiss()
