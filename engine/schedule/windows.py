"""Admission windows: `window = "mon-fri 08:00-18:00"`: whether an instant is inside one, when the next
opens and when the one it is in closes.

Pure: no I/O, no clock. Imports `cron` (zones) and `engine.text`.

A window is an optional set of weekdays and a wall-clock span in the job's zone. The weekdays are
those the window *opens* on: `fri 22:00-06:00` runs from Friday 22:00 to Saturday 06:00. An end at
or before the start is on the next day (overnight); `00:00-24:00` is the whole day. Boundaries are
wall times: on the day DST starts a boundary inside the gap is the instant the gap ends; on the
day it ends an ambiguous boundary is its first occurrence. So `01:00-03:00` lasts one hour of real
time on a spring-forward day in Europe and three on a fall-back day.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from engine.schedule.calendars import WEEKDAYS, at_wall
from engine.schedule.cron import load_zone, require_aware
from engine.text import quote

__all__ = ["Window", "Windows", "parse_window", "windows_for"]

_SPAN = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?\s*-\s*(\d{1,2}):(\d{2})(?::(\d{2}))?")
_DAY = 86400
_ALL_DAYS = frozenset(range(7))


@dataclass(frozen=True, slots=True)
class Window:
    """One admission window: the weekdays it opens on, and its span in seconds of the day."""

    text: str  #: as written (normalised spaces), for reasons
    days: frozenset[int]  #: 0 = Monday
    start: int  #: seconds after midnight
    end: int  #: seconds after midnight, 1…86400; at or before `start`: on the next day

    def span_on(self, day: date, zone: ZoneInfo) -> tuple[datetime, datetime] | None:
        """[open, close) of the window opening on `day` (UTC), or None if it does not open that day."""
        if day.weekday() not in self.days:
            return None
        opens = at_wall(day, _clock(self.start), zone)
        end_day = day if self.end > self.start else day + timedelta(days=1)
        if self.end == _DAY:
            end_day, end = end_day + timedelta(days=1), 0
        else:
            end = self.end
        closes = at_wall(end_day, _clock(end), zone)
        return opens, closes


def _clock(seconds: int) -> time:
    return time(seconds // 3600, seconds // 60 % 60, seconds % 60)


def _days(text: str) -> frozenset[int]:
    """`mon-fri`, `sat,sun`, `mon-wed,fri`, `fri-mon` (wraps); ValueError naming the bad part."""
    days: set[int] = set()
    for part in text.lower().split(","):
        part = part.strip()
        ends = [end.strip() for end in part.split("-")]
        if len(ends) > 2 or any(end not in WEEKDAYS for end in ends):
            raise ValueError(f"unknown weekday {quote(part)} (use {', '.join(WEEKDAYS)}, ranges such as mon-fri)")
        first, last = WEEKDAYS.index(ends[0]), WEEKDAYS.index(ends[-1])
        days.update((first + k) % 7 for k in range((last - first) % 7 + 1))
    return frozenset(days)


@lru_cache(maxsize=4096)
def parse_window(text: str) -> Window:
    """`"mon-fri 08:00-18:00"`, `"22:00-06:00"` (every day), `"sat,sun 00:00-24:00"`, seconds allowed
    (`"08:00:30-08:05"`); ValueError saying what is wrong."""
    words = text.split()
    if not words or len(words) > 2:
        raise ValueError(f'expected "[DAYS] HH:MM-HH:MM" such as "mon-fri 08:00-18:00", got {quote(text)}')
    days = _days(words[0]) if len(words) == 2 else _ALL_DAYS
    match = _SPAN.fullmatch(words[-1])
    if match is None:
        raise ValueError(f'expected a span "HH:MM-HH:MM" such as "08:00-18:00", got {quote(words[-1])}')
    h1, m1, s1, h2, m2, s2 = (int(g or 0) for g in match.groups())
    if h1 > 23 or m1 > 59 or s1 > 59 or h2 > 24 or m2 > 59 or s2 > 59 or (h2 == 24 and (m2 or s2)):
        raise ValueError(f"{quote(words[-1])}: hours are 00…23 (24:00 ends a day), minutes and seconds 00…59")
    start, end = h1 * 3600 + m1 * 60 + s1, h2 * 3600 + m2 * 60 + s2
    if end == 0:
        end = _DAY  # "22:00-00:00" ends at midnight
    if start == end:
        raise ValueError(f"{quote(words[-1])}: the window opens and closes at the same time")
    return Window(" ".join(words), days, start, end)


class Windows:
    """A job's windows in its zone: an instant is admitted when it is inside any of them."""

    __slots__ = ("_opening", "windows", "zone")

    def __init__(self, windows: Iterable[Window], zone: ZoneInfo) -> None:
        self.windows = tuple(windows)
        self.zone = zone
        #: the spans opening on each day asked about (jobs with the same windows share this object)
        self._opening: dict[date, list[tuple[datetime, datetime, Window]]] = {}

    def __bool__(self) -> bool:
        return bool(self.windows)

    @property
    def text(self) -> str:
        return ", ".join(w.text for w in self.windows)

    def _spans_around(self, day: date, before: int, after: int) -> list[tuple[datetime, datetime, Window]]:
        spans: list[tuple[datetime, datetime, Window]] = []
        for offset in range(-before, after + 1):
            spans.extend(self._opening_on(day + timedelta(days=offset)))
        return spans  # each day's in order, and days in order: sorted by opening

    def _opening_on(self, day: date) -> list[tuple[datetime, datetime, Window]]:
        found = self._opening.get(day)
        if found is None:
            if len(self._opening) > 4096:
                self._opening.clear()
            found = []
            for window in self.windows:
                span = window.span_on(day, self.zone)
                if span is not None and span[1] > span[0]:
                    found.append((span[0], span[1], window))
            found.sort(key=lambda s: s[0])
            self._opening[day] = found
        return found

    def containing(self, when: datetime) -> Window | None:
        """The window `when` is inside (the first listed, if several), or None."""
        require_aware(when, "time")
        for opens, closes, window in self._spans_around(when.astimezone(self.zone).date(), 1, 0):
            if opens <= when < closes:
                return window
        return None

    def next_opening(self, when: datetime) -> datetime | None:
        """The first opening after `when` (UTC); None when no window ever opens."""
        require_aware(when, "time")
        for opens, _closes, _window in self._spans_around(when.astimezone(self.zone).date(), 0, 8):
            if opens > when:
                return opens
        return None

    def closing(self, when: datetime) -> datetime | None:
        """When the admission `when` is in ends (UTC): the close of its window, carried on through
        windows that overlap or abut it; None when `when` is outside every window."""
        require_aware(when, "time")
        spans = self._spans_around(when.astimezone(self.zone).date(), 1, 8)
        inside = [s for s in spans if s[0] <= when < s[1]]
        if not inside:
            return None
        end = max(s[1] for s in inside)
        extended = True
        while extended:
            extended = False
            for opens, closes, _window in spans:
                if opens <= end < closes:
                    end, extended = closes, True
        return end

    def why_outside(self, when: datetime) -> str | None:
        """None inside a window; else "outside window mon-fri 08:00-18:00 (opens 2026-12-07T08:00:00+01:00)"."""
        if not self.windows or self.containing(when) is not None:
            return None
        opening = self.next_opening(when)
        plural = "windows" if len(self.windows) > 1 else "window"
        opens = f" (opens {opening.astimezone(self.zone).isoformat()})" if opening else " (it never opens)"
        return f"outside {plural} {self.text}{opens}"


@lru_cache(maxsize=4096)
def windows_for(texts: tuple[str, ...], timezone: str) -> Windows:
    """A job's `window` list in its zone (validated texts), shared by the jobs with the same ones."""
    return Windows((parse_window(text) for text in texts), load_zone(timezone))
