"""Top-of-screen status: who is active, how fresh the data is, and banners that must not be missed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from textual.markup import escape
from textual.widgets import Input, Static

from engine.model import NotificationState
from tui.data import Snapshot
from tui.format import fmt_age

#: Views in tab order: (mode name, label). Digits 1..n jump to them.
VIEWS: tuple[tuple[str, str], ...] = (("jobs", "Jobs"), ("runs", "Runs"), ("cluster", "Cluster"), ("agents", "Agents"))


@dataclass(frozen=True)
class HeaderState:
    """What the header needs, gathered by the app each tick (kept pure for tests)."""

    snapshot: Snapshot | None
    now: datetime
    read_only: bool
    interval: float
    state_dir: str


def stale_after(interval: float) -> float:
    """Data older than this is flagged stale: three missed refreshes, and never under 3 s."""
    return max(3.0 * interval, 3.0)


def data_age(state: HeaderState) -> float | None:
    """Seconds since the last good read; None when there has been none."""
    if state.snapshot is None or not state.snapshot.ever_read:
        return None
    return (state.now - state.snapshot.taken_at).total_seconds()


def is_stale(state: HeaderState) -> bool:
    age = data_age(state)
    snap = state.snapshot
    return age is None or age > stale_after(state.interval) or (snap is not None and snap.error is not None)


def header_markup(state: HeaderState) -> str:
    snap = state.snapshot
    parts = ["[b]VIGIL[/b]"]
    if snap is None:
        parts.append("[$text-muted]connecting…[/]")
        return " │ ".join(parts)
    active = snap.cluster.active
    if active is not None:
        hb = active.heartbeat_age_s
        hb_warn = hb is not None and hb > stale_after(state.interval)
        parts.append(
            f"[$success]● ACTIVE[/] pid {active.pid} epoch {active.epoch if active.epoch is not None else '?'}"
            + (f" [$warning]hb {fmt_age(hb)}[/]" if hb_warn else "")
        )
    else:
        parts.append("[$error b]○ NO ACTIVE SCHEDULER[/]")
    parts.append(f"{len(snap.cluster.standbys)} standby")
    if snap.agents:  # none declared: no part (the line must fit 80 columns)
        up = sum(1 for a in snap.agents if a.up)
        parts.append(f"agents {up}/{len(snap.agents)}")
    failing = [c.channel for c in snap.channels if c.failing]
    if failing:  # a mark only, so the freshness after it still shows at 80 columns: the banner names them
        parts.append("[$error b]✉✗[/]")
    age = data_age(state)
    if age is None:
        parts.append("[$warning b]⚠ NO DATA yet[/]")
        return " │ ".join(parts)
    tone = "$warning b" if is_stale(state) else "$text-muted"
    word = "⚠ STALE" if is_stale(state) else "updated"
    parts.append(f"[{tone}]{word} {fmt_age(age)} ago[/]")
    return " │ ".join(parts)


def banner(state: HeaderState) -> tuple[str, str] | None:
    """(text, level) of the banner to show, if any; level is error, warning or info."""
    snap = state.snapshot
    if snap is None:
        return None
    if not snap.state_exists:
        return (
            f"No Vigil state in {escape(state.state_dir)} yet — waiting for `vigil up` to create it.",
            "info",
        )
    messages: list[str] = []
    level = "warning"
    if snap.cluster.active is None:
        level = "error"
        why = snap.cluster.problem or "no active scheduler"
        detail = "" if why == "no active scheduler" else f" ({escape(why)})"
        messages.append(f"⚠ No scheduler is active{detail}: showing the last recorded state, read-only.")
        if snap.job_files_problem:
            messages.append(f"⚠ Jobs as last recorded: {escape(snap.job_files_problem)}.")
        elif snap.job_files:
            messages.append(f"Jobs as their files in {escape(snap.job_files)} are now; nothing fires.")
    elif state.read_only:
        messages.append("READ-ONLY (--read-only): run, pause, kill and rerun are disabled.")
    if snap.error:
        level = "error"
        messages.append(f"⚠ {escape(snap.error)}")
    failing = [c for c in snap.channels if c.failing]
    if failing:
        first = failing[0]
        pending = sum(c.counts.get(NotificationState.PENDING, 0) for c in failing)
        others = f" (and {', '.join(c.channel for c in failing[1:])})" if len(failing) > 1 else ""
        error = f": {escape(first.last_error)}" if first.last_error else ""
        messages.append(
            f"✉ Notifications failing on {escape(first.channel)}{escape(others)}{error}; {pending} pending (view 3)."
        )
    age = data_age(state)
    if age is None:
        messages.append("⚠ No successful read of the state yet: nothing shown is current.")
    elif is_stale(state):
        messages.append(f"⚠ Data is stale: last good read {fmt_age(age)} ago.")
    if not messages:
        return None
    return " ".join(messages), level


class StatusHeader(Static):
    """One line: active pid/epoch (or none), standbys, agents up/total, data freshness."""

    _shown = ""

    def show(self, state: HeaderState) -> None:
        markup = header_markup(state)
        if markup != self._shown:
            self._shown = markup
            self.update(markup)


class Banner(Static):
    """A full-width coloured line for what an operator must not miss (no active, stale, read-only)."""

    _shown: tuple[str, str] | bool | None = False

    def show(self, state: HeaderState) -> None:
        found = banner(state)
        if found == self._shown:
            return
        self._shown = found
        self.set_class(found is not None, "-shown")
        for level in ("error", "warning", "info"):
            self.set_class(found is not None and found[1] == level, f"-{level}")
        if found is not None:
            self.update(found[0])


class ViewBar(Static):
    """The view tabs (with their digit keys) and the current view's summary on the right."""

    def __init__(self, view: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.view = view
        self.summary = ""
        self._rendered = False

    def on_mount(self) -> None:
        self.set_summary("")

    def set_summary(self, summary: str) -> None:
        if summary == self.summary and self.is_mounted and self._rendered:
            return
        self._rendered = True
        self.summary = summary
        tabs = []
        for i, (mode, label) in enumerate(VIEWS, start=1):
            if mode == self.view:
                tabs.append(f"[reverse b] {i} {label} [/]")
            else:
                tabs.append(f" {i} {label} ")
        self.update("".join(tabs) + ("  [$foreground]" + summary + "[/]" if summary else ""))


class FilterBar(Input):
    """The `/` filter line: live while typing, Enter keeps it, Esc clears it."""
