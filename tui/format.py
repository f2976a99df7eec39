"""Pure text formatting for the dashboard: state looks, times, durations, trend glyphs.

No Textual imports here, so every rule about how a value reads on screen is unit-testable.
Every state pairs a glyph and a word with its colour ("tone"), so the dashboard still reads on a
256-colour SSH link or for a colour-blind operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from engine.clock import parse_iso
from engine.model import RunState

#: Tones name colours in the stylesheet (`$primary`, `$success`, `$error`, `$warning`, ...).
TONES = ("run", "ok", "fail", "warn", "muted", "pending")


@dataclass(frozen=True)
class Look:
    glyph: str
    word: str
    tone: str

    @property
    def label(self) -> str:
        return f"{self.glyph} {self.word}"


RUN_LOOKS: dict[str, Look] = {
    RunState.PENDING: Look("◌", "PEND", "pending"),
    RunState.WAITING: Look("◌", "WAIT", "pending"),
    RunState.LAUNCHING: Look("●", "START", "run"),
    RunState.RUNNING: Look("●", "RUN", "run"),
    RunState.SUCCEEDED: Look("✓", "OK", "ok"),
    RunState.FAILED: Look("✗", "FAIL", "fail"),
    RunState.TIMED_OUT: Look("⏱", "TIMEOUT", "fail"),
    RunState.KILLED: Look("✖", "KILLED", "warn"),
    RunState.SKIPPED: Look("↷", "SKIP", "muted"),
    RunState.MISSED: Look("⊘", "MISSED", "warn"),
    RunState.UNKNOWN: Look("?", "UNKNOWN", "warn"),
}

#: Job-level states that are not a run's state.
JOB_LOOKS: dict[str, Look] = {
    "error": Look("⚠", "ERROR", "fail"),
    "disabled": Look("○", "OFF", "muted"),
    "paused": Look("⏸", "PAUSED", "warn"),
    "held": Look("✋", "HELD", "warn"),
    "idle": Look("·", "IDLE", "muted"),
}

#: Warnings a run can carry (engine.model.RunWarning): a glyph and a word each, in the warning tone.
WARNING_LOOKS: dict[str, Look] = {
    "late": Look("⚠", "late", "warn"),
    "longer": Look("⏱", "longer", "warn"),
    "shorter": Look("↓", "shorter", "warn"),
}

NONE_TEXT = "—"


def look(state: str | None) -> Look:
    """The look of a run state or job state; unknown strings still get a word."""
    if state is None:
        return Look(" ", NONE_TEXT, "muted")
    return RUN_LOOKS.get(state) or JOB_LOOKS.get(state) or Look("?", state.upper()[:8], "warn")


def warning_look(word: str) -> Look:
    """The look of a run warning; a word this version does not know still shows."""
    return WARNING_LOOKS.get(word) or Look("⚠", word[:8], "warn")


def fmt_warnings(words: Sequence[str], *, short: bool = False) -> str:
    """A run's warnings: "⚠ late · ⏱ longer"; `short` (a table cell, 9 columns at most): "⚠⏱ late+1"."""
    if not words:
        return ""
    looks = [warning_look(word) for word in words]
    if not short:
        return " · ".join(item.label for item in looks)
    more = f"+{len(looks) - 1}" if len(looks) > 1 else ""
    return "".join(item.glyph for item in looks) + f" {looks[0].word}{more}"


def fmt_duration(seconds: float | None) -> str:
    """Compact and monotone in width: 850ms, 1.2s, 12s, 3m04s, 2h05m, 3d04h."""
    if seconds is None:
        return NONE_TEXT
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def fmt_age(seconds: float | None) -> str:
    """How long ago, for freshness and last contact: 0.4s, 12s, 3m, 2h, 5d."""
    if seconds is None:
        return NONE_TEXT
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h"
    return f"{seconds // 86400:.0f}d"


def fmt_time(at: datetime | str | None, now: datetime, *, precise: bool = False) -> str:
    """A time (a record's, or a stored text one) as the dashboard shows it (UTC): time of day if
    today, else the date too."""
    when = parse_iso(at) if isinstance(at, str) else at
    if when is None:
        return NONE_TEXT
    when = when.astimezone(now.tzinfo) if now.tzinfo else when
    if when.date() == now.date():
        return when.strftime("%H:%M:%S.%f")[:12] if precise else when.strftime("%H:%M:%S")
    if when.year == now.year:
        return when.strftime("%m-%d %H:%M:%S") if precise else when.strftime("%m-%d %H:%M")
    return when.strftime("%Y-%m-%d %H:%M")


def fmt_bytes(count: int | None) -> str:
    if count is None:
        return NONE_TEXT
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - loop always returns


def fmt_percent(value: float | None) -> str:
    return NONE_TEXT if value is None else f"{value:.0f}%"


BARS = "▁▂▃▄▅▆▇█"


def trend_cells(points: Sequence[tuple[str, float | None]], width: int) -> list[tuple[str, str]]:
    """A sparkline of (state, duration) points, oldest first: bar height is the duration relative
    to the slowest shown, colour is the result. Runs without a duration (skipped, missed) show as a
    low dot so the row still tells how many fires there were.
    """
    shown = list(points)[-width:]
    longest = max((d for _, d in shown if d is not None), default=0.0)
    cells: list[tuple[str, str]] = []
    for state, duration in shown:
        tone = look(state).tone
        if duration is None:
            cells.append(("·", tone))
            continue
        level = 0 if longest <= 0 else min(len(BARS) - 1, int(duration / longest * (len(BARS) - 1) + 0.5))
        cells.append((BARS[level], tone))
    return [(" ", "muted")] * (width - len(cells)) + cells
