"""The jobs view: every loaded job with its state, schedule, next fire, last result and trend."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from engine.api import escape
from engine.model import ACTIVE_STATES
from tui.data import JobRecord, Run, Snapshot
from tui.format import NONE_TEXT, fmt_duration, fmt_time, look, trend_cells
from tui.screens.base import ViewScreen
from tui.widgets.vtable import Cell, Column, VirtualTable

TREND_WIDTH = 8

COLUMNS = (
    Column("name", "JOB", 0, min_width=12, weight=2),
    Column("status", "STATE", 9),
    Column("schedule", "SCHEDULE", 0, min_width=10, weight=1),
    Column("next", "NEXT", 8),
    Column("last", "LAST", 9),
    Column("took", "TOOK", 6, justify="right"),
    Column("trend", "TREND", TREND_WIDTH),
)

_STATUS_RANK = {
    "error": 0,
    "running": 1,
    "launching": 1,
    "pending": 2,
    "waiting": 2,
    "held": 3,
    "paused": 3,
    "idle": 4,
}
_RESULT_RANK = {"failed": 0, "timed_out": 0, "unknown": 1, "killed": 1, "missed": 2, "succeeded": 4}

#: sort name → (column key, key function); rows are ordered by (key, name), so ties go by name.
SORTS: dict[str, tuple[str, Callable[[JobRecord], Any]]] = {
    "name": ("name", lambda j: ""),
    "state": ("status", lambda j: (_STATUS_RANK.get(j.status, 5), j.name)),
    "next": ("next", lambda j: (j.next_fire or "~", j.name)),
    "last": ("last", lambda j: (_RESULT_RANK.get(j.last.state, 3) if j.last else 9, j.name)),
    "took": ("took", lambda j: (-(j.last.duration() or 0.0) if j.last else 1.0, j.name)),
}


def job_detail(job: JobRecord) -> str:
    """The selected job's line under the table: why its pending run waits, its priority and locks."""
    parts: list[str] = []
    current = job.current
    if current is not None and current.state == "pending" and current.reason:
        parts.append(f"run {current.id} pending: {escape(current.reason)}")
    elif job.held:
        parts.append("held: new runs wait until released (h)")
    if job.locks:
        parts.append("locks " + escape(job.locks.replace(",", ", ")))
    if job.priority:
        parts.append(f"priority {job.priority}")
    return f"{escape(job.name)}: " + " · ".join(parts) if parts else ""


def job_matches(job: JobRecord, words: Sequence[str]) -> bool:
    """Every filter word must appear in the job's name, schedule, state, last result, tags or agent."""
    if not words:
        return True
    hay = " ".join(
        (
            job.name,
            job.schedule,
            job.status,
            look(job.status).word,
            job.last.state if job.last else "",
            look(job.last.state).word if job.last else "",
            job.tags,
            job.agent or "",
        )
    ).lower()
    return all(word in hay for word in words)


class JobsScreen(ViewScreen):
    VIEW = "jobs"
    FILTER_HINT = "filter jobs: words in name, schedule, state, result, tags (Enter keeps, Esc clears)"

    BINDINGS = [
        Binding("r", "run_now", "Run now"),
        Binding("p", "toggle_pause", "Pause/resume"),
        Binding("h", "toggle_hold", "Hold"),
        Binding("K", "kill", "Kill"),
        Binding("R", "rerun", "Rerun"),
        Binding("l", "open_log", "Log"),
        Binding("N", "sort('name')", "Sort name", show=False),
        Binding("S", "sort('state')", "Sort state", show=False),
        Binding("F", "sort('next')", "Sort next fire", show=False),
        Binding("L", "sort('last')", "Sort last result", show=False),
        Binding("D", "sort('took')", "Sort duration", show=False),
    ]

    sort_names: ClassVar[tuple[str, ...]] = tuple(SORTS)

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, JobRecord] = {}
        self.sort_by = "name"
        self.sort_reverse = False
        self._order_dirty = True
        self._sorted: list[tuple[Any, str]] = []
        self._keyof: dict[str, Any] = {}
        self._note: str | None = None  #: the error shown under the table

    def compose_body(self) -> ComposeResult:
        yield VirtualTable(
            COLUMNS,
            self.render_job,
            empty_text="No jobs loaded. A scheduler publishes its job catalog when it starts (`vigil up`).",
            id="jobs-table",
        )
        yield Static(id="job-note")

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#jobs-table", VirtualTable)

    def on_mount(self) -> None:
        self.table.focus()
        self._show_sort()

    def focus_main(self) -> None:
        self.table.focus()

    # ------------------------------------------------------------ data

    def on_snapshot(self, snap: Snapshot) -> None:
        self.jobs = snap.jobs
        self._now = self.vigil.now()
        running = {name for name, job in snap.jobs.items() if job.current is not None}
        touched = set(snap.changed) | set(snap.removed)
        repaint = touched | running  # a running job's TOOK moves on every tick
        if self._order_dirty:
            self._full_order()
            self.table.set_rows(self._ordered_keys(), None)
        elif touched:
            self._patch_order(touched)
            self.table.set_rows(self._ordered_keys(), repaint)
        elif repaint:
            self.table.refresh_rows(repaint)
        if self.table.cursor_key in touched:
            self.refresh_bindings()  # e.g. its run started or ended: K and R follow in the footer
        self._want_trends()
        self._update_summary()
        self._show_note()

    def _show_note(self) -> None:
        """Under the table, the selected job's error (why it shows ERROR: a STATE cell has no room), or
        why its pending run waits, and its priority and locks."""
        job = self.selected
        note = self.query_one("#job-note", Static)
        text = f"⚠ {escape(job.name)}: {escape(job.error)}" if job is not None and job.error else ""
        if job is not None and not text:
            text = job_detail(job)
        if text != self._note:
            self._note = text
            note.update(Text(text))
            note.set_class(bool(text), "-shown")

    # The shown jobs as an ascending list of (sort key, name): a tick re-places only the jobs that
    # changed (bisect), so a re-sorted 10,000-row table costs O(changes), not a full sort.
    def _full_order(self) -> None:
        words = self.filter_text.lower().split()
        key = SORTS[self.sort_by][1]
        self._keyof = {job.name: key(job) for job in self.jobs.values() if job_matches(job, words)}
        self._sorted = sorted((k, name) for name, k in self._keyof.items())
        self._order_dirty = False

    def _patch_order(self, names: set[str]) -> None:
        words = self.filter_text.lower().split()
        key = SORTS[self.sort_by][1]
        for name in names:
            old = self._keyof.pop(name, None)
            if old is not None:
                index = bisect_left(self._sorted, (old, name))
                if index < len(self._sorted) and self._sorted[index][1] == name:
                    del self._sorted[index]
            job = self.jobs.get(name)
            if job is not None and job_matches(job, words):
                new = key(job)
                self._keyof[name] = new
                insort(self._sorted, (new, name))

    def _ordered_keys(self) -> list[str]:
        names = [name for _, name in self._sorted]
        if self.sort_reverse:
            names.reverse()
        return names

    def _reorder(self) -> None:
        self._full_order()
        self.table.set_rows(self._ordered_keys(), None)

    def _want_trends(self) -> None:
        self.vigil.source.want_trends(self.table.visible_keys())

    def _update_summary(self) -> None:
        shown, total = self.table.row_count, len(self.jobs)
        count = f"{total} jobs" if shown == total else f"{shown} of {total} jobs"
        flt = f" · filter: {self.filter_text}" if self.filter_text else ""
        self.set_summary(count + flt)

    def apply_filter(self) -> None:
        self._reorder()
        self._update_summary()

    def on_virtual_table_highlighted(self, event: VirtualTable.Highlighted) -> None:
        self.refresh_bindings()
        self._want_trends()
        self._show_note()

    def on_virtual_table_selected(self, event: VirtualTable.Selected) -> None:
        self.vigil.show_runs(job=event.key)

    # ------------------------------------------------------------ rendering

    _now: datetime | None = None

    def render_job(self, name: str) -> Sequence[Cell]:
        job = self.jobs.get(name)
        if job is None:
            return [name]
        now = self._now or self.vigil.now()
        status = look(job.status)
        last: Run | None = job.last
        last_look = look(last.state) if last else None
        if job.current is not None and job.current.state in ACTIVE_STATES:
            took: Cell = (fmt_duration(job.current.duration(now)), "run")
        else:
            took = fmt_duration(last.duration()) if last else NONE_TEXT
        next_fire = NONE_TEXT if (job.paused or not job.enabled) else fmt_time(job.next_fire, now)
        if job.trend is None:
            trend: Cell = ("…", "muted")
        else:
            trend = trend_cells([(r.state, r.duration()) for r in job.trend], TREND_WIDTH)
        return [
            job.name,
            (status.label, status.tone),
            job.schedule,
            next_fire,
            (last_look.label, last_look.tone) if last_look else (NONE_TEXT, "muted"),
            took,
            trend,
        ]

    # ------------------------------------------------------------ sorting

    def action_sort(self, name: str) -> None:
        if name == self.sort_by:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_by, self.sort_reverse = name, False
        self._reorder()
        self._show_sort()

    def _show_sort(self) -> None:
        column = SORTS[self.sort_by][0]
        label = next(c.label for c in COLUMNS if c.key == column)
        self.table.set_header({column: f"{label}{'▼' if self.sort_reverse else '▲'}"})

    # ------------------------------------------------------------ commands

    @property
    def selected(self) -> JobRecord | None:
        key = self.table.cursor_key
        return self.jobs.get(key) if key else None

    def command_target(self, action: str) -> object | None:
        job = self.selected
        if job is None:
            return None
        if action == "kill":
            return job.current
        if action == "rerun":
            return job.last
        return job

    def action_run_now(self) -> None:
        if (job := self.selected) is not None:
            self.vigil.command_run_now(job.name)

    def action_toggle_hold(self) -> None:
        if (job := self.selected) is not None:
            self.vigil.command_hold(job.name, release=job.held)

    def action_toggle_pause(self) -> None:
        if (job := self.selected) is not None:
            self.vigil.command_pause(job.name, resume=job.paused)

    def action_kill(self) -> None:
        job = self.selected
        if job is not None and job.current is not None:
            self.vigil.command_kill(job.current)

    def action_rerun(self) -> None:
        job = self.selected
        if job is not None and job.last is not None:
            self.vigil.command_rerun(job.last)

    def action_open_log(self) -> None:
        job = self.selected
        if job is None:
            return
        run = job.current or job.last
        if run is None:
            self.notify(f"{job.name} has not run yet", severity="warning", timeout=3)
            return
        self.vigil.show_run(run.id)
