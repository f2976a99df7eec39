"""Injectable clocks so schedule logic is testable without sleeping.

A clock has two faces: `now()`, the wall clock that fire times are written in, and `monotonic()`,
which only ever moves forward at the rate of real time. The scheduler measures durations (timeouts,
retry delays, how long a run took) on the monotonic face and compares the two faces between loop
iterations to notice the wall clock being stepped.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current wall time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (its origin is arbitrary)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to.

    `advance` lets time pass (both faces move); `jump` and `set` step the wall clock alone, as an
    operator, NTP or a VM restore would.
    """

    def __init__(self, start: datetime, monotonic: float = 1000.0) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._mono = monotonic

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> datetime:
        if seconds < 0:
            raise ValueError("time does not pass backwards; use jump() to step the wall clock back")
        self._now += timedelta(seconds=seconds)
        self._mono += seconds
        return self._now

    def jump(self, seconds: float) -> datetime:
        """Step the wall clock by `seconds` (negative: back) without any time passing."""
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> None:
        """Step the wall clock to `when` without any time passing."""
        self._now = when.astimezone(UTC)


def monotonic() -> float:
    return time.monotonic()


def iso(dt: datetime | None) -> str | None:
    """The one text form of a time in the database: UTC, microseconds, '+00:00'."""
    if dt is None:
        return None
    if dt.tzinfo is not UTC:  # most times are UTC already: no conversion (this runs ~10 times a run)
        dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="microseconds")


def parse_iso(text: str | None) -> datetime | None:
    """A stored ISO-8601 time; None for a missing or unreadable one."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
