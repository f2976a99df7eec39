"""One run: its detail (times, exit code, attempt, epoch, reason, peak RSS, CPU) and its log.

The log starts from the last LOG_TAIL_BYTES of the file and then tails it while the run is open.
Each read is capped and the widget keeps at most LOG_MAX_LINES, so a huge or fast log never
freezes the app. Scrolling up turns follow off; `f`, End or G turn it back on.
"""

from __future__ import annotations

from datetime import datetime

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.markup import escape
from textual.widgets import Log, Static

from tui.data import Run, Snapshot
from tui.format import NONE_TEXT, fmt_bytes, fmt_duration, fmt_time, fmt_warnings, look
from tui.screens.base import ViewScreen

LOG_TAIL_BYTES = 256 * 1024  #: what is shown of an existing log at first
LOG_READ_BYTES = 256 * 1024  #: at most this much is appended per poll
LOG_SKIP_BYTES = 2 * 1024 * 1024  #: if the writer is further ahead than this, jump to its tail
LOG_MAX_LINES = 5000
LOG_POLL_S = 0.5


class LogView(Log):
    """A Log that knows whether it is following the end and has vim-style keys."""

    BINDINGS = [
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
        Binding("g", "scroll_home", "Top", show=False),
        Binding("G,end", "follow_end", "End", show=False),
    ]

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if new_value < old_value and self.auto_scroll and not self.is_vertical_scroll_end:
            self.auto_scroll = False  # the reader scrolled up: stop dragging them to the end
            self.screen.refresh_follow()  # type: ignore[attr-defined]

    def action_follow_end(self) -> None:
        self.auto_scroll = True
        self.scroll_end(animate=False)
        self.screen.refresh_follow()  # type: ignore[attr-defined]


def detail_markup(run: Run, now: datetime) -> str:
    """The run's facts in at most four lines (fits 80 columns for typical values)."""
    state = look(run.state)
    tone = {"ok": "$success", "fail": "$error", "warn": "$warning", "run": "$primary"}.get(state.tone, "$text-muted")
    exit_text = NONE_TEXT if run.exit_code is None else str(run.exit_code)
    line1 = (
        f"[b]Run {run.id}[/b] · {escape(run.job)} · [{tone} b]{state.label}[/] · exit {exit_text} · "
        f"attempt {run.attempt} · epoch {run.epoch if run.epoch is not None else NONE_TEXT} · "
        f"{escape(run.trigger or NONE_TEXT)}" + (f" · agent {escape(run.agent)}" if run.agent else "")
    )
    if run.flow_id is not None and run.flow_id != run.id:
        line1 += f" · flow {run.flow_id} (w)"  # a step of the flow that run started
    line2 = (
        f"scheduled {fmt_time(run.scheduled_for, now, precise=True)} · "
        f"started {fmt_time(run.started_at, now, precise=True)} · "
        f"ended {fmt_time(run.ended_at, now, precise=True)} · took {fmt_duration(run.duration(now))}"
    )
    cpu = NONE_TEXT if run.cpu_s is None else f"{run.cpu_s:.2f}s"
    line3 = f"peak RSS {fmt_bytes(run.peak_rss)} · CPU {cpu}" + (f" · pid {run.pid}" if run.pid else "")
    if run.warnings:
        line3 += f" · [$warning b]{escape(fmt_warnings(run.warnings))}[/]"
    lines = [line1, line2, line3]
    if run.reason:
        lines.append(f"reason: {escape(run.reason)}")
    return "\n".join(lines)


class RunScreen(ViewScreen):
    VIEW = "runs"
    FILTERABLE = False

    BINDINGS = [
        Binding("f", "toggle_follow", "Follow"),
        Binding("r", "run_now", "Run now", show=False),
        Binding("K", "kill", "Kill"),
        Binding("R", "rerun", "Rerun"),
        Binding("w", "open_flow", "Flow", show=False),
    ]

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id
        self.record: Run | None = None
        self.log_offset = 0
        self.log_size = 0
        self.skipped = 0
        self._tailing = False

    def compose_body(self) -> ComposeResult:
        yield Static(f"Run {self.run_id}: loading…", id="run-detail")
        yield Static("", id="log-title")
        yield LogView(max_lines=LOG_MAX_LINES, auto_scroll=True, id="log")

    @property
    def log_view(self) -> LogView:
        return self.query_one(LogView)

    def on_mount(self) -> None:
        self.log_view.focus()
        self.set_summary(f"run {self.run_id}")
        self.load_run()
        self.start_log()
        self._timer = self.set_interval(LOG_POLL_S, self.poll_log)

    def focus_main(self) -> None:
        self.log_view.focus()

    def on_snapshot(self, snap: Snapshot) -> None:
        self.load_run()

    # ------------------------------------------------------------ detail

    @work(exclusive=True, group="run-detail", exit_on_error=False)
    async def load_run(self) -> None:
        run = await self.vigil.source.run(self.run_id)
        if run is None:
            self.query_one("#run-detail", Static).update(f"Run {self.run_id} no longer exists (pruned?).")
            if self.record is not None:  # deleted while open: nothing left to kill or rerun
                self.record = None
                self.refresh_bindings()
                self.refresh_follow()
            return
        self.record = run
        now = self.vigil.now()
        self.query_one("#run-detail", Static).update(detail_markup(run, now))
        self.set_summary(f"run {run.id} · {escape(run.job)}")
        self.refresh_bindings()
        self.refresh_follow()

    # ------------------------------------------------------------ log

    @work(exclusive=True, group="run-log", exit_on_error=False)
    async def start_log(self) -> None:
        chunk = await self.vigil.source.tail_log(self.run_id, LOG_TAIL_BYTES)
        log = self.log_view
        log.clear()
        start = max(0, chunk.size - LOG_TAIL_BYTES)
        if start > 0:
            self.skipped = start
            log.write_line(f"… {fmt_bytes(start)} of earlier output not shown …")
        if chunk.text:
            log.write(chunk.text)
        self.log_offset, self.log_size = chunk.offset, chunk.size
        self._tailing = True
        if log.auto_scroll:  # the first layout may come after the write: scroll once it has
            self.call_after_refresh(log.scroll_end, animate=False)
        self.refresh_follow()

    @work(exclusive=True, group="run-log-poll", exit_on_error=False)
    async def poll_log(self) -> None:
        if not self._tailing:
            return
        source = self.vigil.source
        chunk = await source.read_log(self.run_id, self.log_offset, LOG_READ_BYTES)
        log = self.log_view
        if chunk.size - self.log_offset > LOG_SKIP_BYTES:
            # The writer is far ahead: show its tail rather than replaying megabytes.
            tail = await source.tail_log(self.run_id, LOG_TAIL_BYTES)
            gap = max(0, tail.size - LOG_TAIL_BYTES - self.log_offset)
            self.skipped += gap
            log.write_line(f"\n… {fmt_bytes(gap)} skipped to keep up …")
            log.write(tail.text)
            self.log_offset, self.log_size = tail.offset, tail.size
        elif chunk.text:
            if chunk.offset < self.log_offset:  # the log was truncated by its cap: start over
                log.write_line("\n… log restarted (cap reached) …")
            log.write(chunk.text)
            self.log_offset, self.log_size = chunk.offset, chunk.size
        else:
            self.log_size = chunk.size
        if self.record is not None and not self.record.is_open and self.log_offset >= self.log_size:
            self._timer.pause()  # finished and fully read: nothing more will come
        self.refresh_follow()

    def refresh_follow(self) -> None:
        log = self.log_view
        live = self.record is not None and self.record.is_open
        follow = "[$success]▼ following[/]" if log.auto_scroll else "[$warning b]⏸ paused (f: follow)[/]"
        where = f"{log.line_count:,} lines · {fmt_bytes(self.log_size)}"
        if self.skipped:
            where += f" ({fmt_bytes(self.skipped)} not shown)"
        state = "live" if live else "finished"
        self.query_one("#log-title", Static).update(f"Log · {state} · {follow} · {where}")

    def action_toggle_follow(self) -> None:
        log = self.log_view
        if log.auto_scroll:
            log.auto_scroll = False
        else:
            log.action_follow_end()
        self.refresh_follow()

    # ------------------------------------------------------------ commands

    def command_target(self, action: str) -> object | None:
        run = self.record
        if run is None or action == "toggle_pause":
            return None
        if action == "kill":
            return run if run.is_open else None
        return run

    def action_run_now(self) -> None:
        if self.record is not None:
            self.vigil.command_run_now(self.record.job)

    def action_kill(self) -> None:
        if self.record is not None and self.record.is_open:
            self.vigil.command_kill(self.record)

    def action_rerun(self) -> None:
        if self.record is not None:
            self.vigil.command_rerun(self.record)

    def action_open_flow(self) -> None:
        self.vigil.show_flow(self.record.flow_id or self.run_id if self.record else self.run_id)

    def action_back(self) -> None:
        self.dismiss()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        timer = getattr(self, "_timer", None)  # resume can arrive before mount
        if timer is not None and self.record is not None and self.record.is_open:
            timer.resume()
