"""The runs view: history paged from SQLite (keyset, newest first), filterable by job and state."""

from __future__ import annotations

import time
from collections.abc import Sequence

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding

from engine.model import RunState
from tui.data import Run, Snapshot
from tui.format import NONE_TEXT, fmt_duration, fmt_time, fmt_warnings, look
from tui.screens.base import ViewScreen
from tui.widgets.vtable import Cell, Column, VirtualTable

PAGE_SIZE = 100

COLUMNS = (
    Column("id", "ID", 7, justify="right"),
    Column("job", "JOB", 0, min_width=10, weight=2),
    Column("state", "STATE", 9),
    Column("exit", "EXIT", 4, justify="right"),
    Column("scheduled", "SCHEDULED", 14),
    Column("took", "TOOK", 6, justify="right"),
    Column("attempt", "TRY", 3, justify="right"),
    Column("reason", "REASON", 0, min_width=6, weight=1),
)

#: `s` cycles through these state filters (None = all).
STATE_CYCLE: tuple[str | None, ...] = (
    None,
    "running",
    "failed",
    "timed_out",
    "killed",
    "unknown",
    "missed",
    "skipped",
    "pending",
    "succeeded",
)
_ALIASES = {"ok": "succeeded", "fail": "failed", "timeout": "timed_out", "run": "running", "skip": "skipped"}
STATES = {str(s) for s in RunState}


def parse_run_filter(text: str, job_names: Sequence[str]) -> tuple[str | None, str | None, str | None]:
    """(job, state, problem) from the `/` line: state words (or OK/FAIL…) and a job name or unique part."""
    job: str | None = None
    state: str | None = None
    for word in text.split():
        lowered = _ALIASES.get(word.lower(), word.lower())
        if lowered.startswith("state:"):
            lowered = _ALIASES.get(lowered[6:], lowered[6:])
        if lowered in STATES:
            state = lowered
            continue
        word = word.removeprefix("job:")
        if word in job_names:
            job = word
            continue
        matches = [n for n in job_names if word.lower() in n.lower()]
        if len(matches) == 1:
            job = matches[0]
        elif not matches:
            return job, state, f"no job matches {word!r}"
        else:
            return job, state, f"{word!r} matches {len(matches)} jobs ({', '.join(matches[:3])}…): be more specific"
    return job, state, None


class RunsScreen(ViewScreen):
    VIEW = "runs"
    FILTER_HINT = "filter runs: a job name (or unique part) and/or a state: failed, running, ok… (Esc clears)"

    BINDINGS = [
        Binding("s", "cycle_state", "State filter"),
        Binding("right_square_bracket", "next_page", "Older", key_display="]"),
        Binding("left_square_bracket", "prev_page", "Newer", key_display="["),
        Binding("r", "run_now", "Run now", show=False),
        Binding("K", "kill", "Kill"),
        Binding("R", "rerun", "Rerun"),
        Binding("l", "open_log", "Log", show=False),
        Binding("w", "open_flow", "Flow", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.job: str | None = None
        self.state: str | None = None
        self.pages: list[int | None] = [None]  #: before_id of each page visited (None = newest)
        self.runs: dict[str, Run] = {}
        self.total: int | None = None
        self.newer = 0  #: matching runs newer than the page on screen
        self._count_base: tuple[int, int] | None = None
        self.last_fetch_ms: float | None = None
        self._count_at = 0.0
        self._count_pending = False
        self._reset_pending = False

    def compose_body(self) -> ComposeResult:
        yield VirtualTable(COLUMNS, self.render_run, empty_text="No runs yet.", stick_to_top=True, id="runs-table")

    @property
    def table(self) -> VirtualTable:
        return self.query_one("#runs-table", VirtualTable)

    def on_mount(self) -> None:
        self.table.focus()
        self.load_page(count=True)

    def focus_main(self) -> None:
        self.table.focus()

    def on_snapshot(self, snap: Snapshot) -> None:
        # Re-read the page on screen (a few ms at any depth): new runs and state changes appear.
        self.load_page(count=time.monotonic() - self._count_at > 5.0)

    # ------------------------------------------------------------ paging

    def set_filters(self, *, job: str | None, state: str | None) -> None:
        self.job, self.state = job, state
        self.pages = [None]
        self.total = None
        self._count_base = None
        self.load_page(count=True, reset_cursor=True)

    def load_page(self, count: bool = False, reset_cursor: bool = False) -> None:
        """Re-read the page on screen. A newer load cancels a pending one, so what each asked for
        (a count, the cursor on the first row) is kept until a load completes it."""
        self._count_pending |= count
        self._reset_pending |= reset_cursor
        self._load_page()

    @work(exclusive=True, group="runs-page", exit_on_error=False)
    async def _load_page(self) -> None:
        started = time.perf_counter()
        source = self.vigil.source
        full_count = self._count_pending or self._count_base is None
        filters = (self.job, self.state)
        # The page, its position and the total come from one read, so they always agree; the full
        # count behind the total is redone at most every 5 s (see StateReader.runs_window).
        runs, newer, total, base = await source.runs_window(
            job=self.job,
            state=self.state,
            before_id=self.pages[-1],
            limit=PAGE_SIZE,
            count_base=None if full_count else self._count_base,
        )
        if filters != (self.job, self.state):
            return  # the filters changed while reading: a newer load is on its way
        self.runs = {str(r.id): r for r in runs}
        self.newer, self.total, self._count_base = newer, total, base
        if full_count:
            self._count_at = time.monotonic()
            self._count_pending = False
        keys = [str(r.id) for r in runs]
        self.table.set_rows(keys, None)
        if self._reset_pending and keys:
            self.table.move_cursor_to(keys[0])
        self._reset_pending = False
        self.last_fetch_ms = (time.perf_counter() - started) * 1000
        self._update_summary()
        self.refresh_bindings()

    def _update_summary(self) -> None:
        page = len(self.pages)
        first = self.newer + 1 if self.runs else 0
        last = self.newer + len(self.runs) if self.runs else 0
        total = "?" if self.total is None else f"{self.total:,}"
        parts = [f"{first:,}–{last:,} of {total}"]
        if page > 1:
            parts.append(f"page {page}")
        if self.job:
            parts.append(f"job {self.job}")
        if self.state:
            parts.append(f"state {look(self.state).label}")
        self.set_summary(" · ".join(parts))

    def action_next_page(self) -> None:
        if len(self.runs) < PAGE_SIZE:
            self.notify("No older runs", timeout=2)
            return
        oldest = min(r.id for r in self.runs.values())
        self.pages.append(oldest)
        self.load_page(reset_cursor=True)

    def action_prev_page(self) -> None:
        if len(self.pages) == 1:
            self.load_page(reset_cursor=True)
            return
        self.pages.pop()
        self.load_page(reset_cursor=True)

    def action_cycle_state(self) -> None:
        index = STATE_CYCLE.index(self.state) if self.state in STATE_CYCLE else 0
        self.set_filters(job=self.job, state=STATE_CYCLE[(index + 1) % len(STATE_CYCLE)])

    def apply_filter(self) -> None:
        names = sorted(self.vigil.snapshot.jobs) if self.vigil.snapshot else []
        job, state, problem = parse_run_filter(self.filter_text, names)
        if problem:
            self.set_summary(f"[$warning]{problem}[/]")
            return
        if (job, state) != (self.job, self.state):
            self.set_filters(job=job, state=state)

    def clear_filter(self) -> bool:
        had_filters = self.job is not None or self.state is not None
        had = super().clear_filter()
        if had_filters and not had:
            self.set_filters(job=None, state=None)
            return True
        return had

    # ------------------------------------------------------------ rendering

    def render_run(self, key: str) -> Sequence[Cell]:
        run = self.runs.get(key)
        if run is None:
            return [key]
        now = self.vigil.now()
        state = look(run.state)
        return [
            str(run.id),
            run.job,
            (state.label, state.tone),
            NONE_TEXT if run.exit_code is None else str(run.exit_code),
            fmt_time(run.scheduled_for, now),
            fmt_duration(run.duration(now)),
            str(run.attempt),
            self._reason_cell(run),
        ]

    @staticmethod
    def _reason_cell(run: Run) -> Cell:
        """The reason, after the run's warnings (a glyph and a word, in the warning tone)."""
        reason = (run.reason or "").replace("\n", " ")
        if not run.warnings:
            return reason
        warned = fmt_warnings(run.warnings, short=True)
        return [(warned + " ", "warn"), (reason, "")] if reason else [(warned, "warn")]

    def on_virtual_table_selected(self, event: VirtualTable.Selected) -> None:
        self.vigil.show_run(int(event.key))

    def on_virtual_table_highlighted(self, event: VirtualTable.Highlighted) -> None:
        self.refresh_bindings()

    # ------------------------------------------------------------ commands

    @property
    def selected(self) -> Run | None:
        key = self.table.cursor_key
        return self.runs.get(key) if key else None

    def command_target(self, action: str) -> object | None:
        run = self.selected
        if run is None:
            return None
        if action == "kill":
            return run if run.is_open else None
        if action == "toggle_pause":
            return None
        return run

    def action_run_now(self) -> None:
        if (run := self.selected) is not None:
            self.vigil.command_run_now(run.job)

    def action_kill(self) -> None:
        run = self.selected
        if run is not None and run.is_open:
            self.vigil.command_kill(run)

    def action_rerun(self) -> None:
        if (run := self.selected) is not None:
            self.vigil.command_rerun(run)

    def action_open_log(self) -> None:
        if (run := self.selected) is not None:
            self.vigil.show_run(run.id)

    def action_open_flow(self) -> None:
        if (run := self.selected) is not None:
            self.vigil.show_flow(run.flow_id or run.id)
