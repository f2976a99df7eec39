"""Triggers: when a job fires (cron, every, at, or several at once), and enumerating fires over a span.

Pure: every function takes the times it needs. All returned datetimes are timezone-aware UTC unless a
docstring says otherwise. Imports `cron`, `engine.model`, `engine.errors` and `engine.text`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from engine.errors import ScheduleError
from engine.model import JobSpec
from engine.schedule.cron import EPOCH_UTC, ZonedCron, floor_ts, load_zone, require_aware, utc
from engine.text import quote

__all__ = [
    "AtTrigger",
    "CombinedTrigger",
    "CronTrigger",
    "EveryTrigger",
    "SharedTriggers",
    "Trigger",
    "fires_between",
    "preview",
    "trigger_for",
]

_MICROSECOND = timedelta(microseconds=1)
#: one trigger for each schedule seen, by what it is made of (see `trigger_for`)
SharedTriggers = dict[tuple[object, ...], "Trigger"]


class Trigger(Protocol):
    def next_fire(self, after: datetime) -> datetime | None:
        """First fire strictly after `after` (aware), in UTC; None when the trigger will never fire again."""
        ...


class CronTrigger:
    """A cron expression in a time zone, with `cron`'s DST rule."""

    __slots__ = ("_cron", "expr", "timezone")

    def __init__(self, expr: str, timezone: str = "UTC") -> None:
        self._cron = ZonedCron(expr, timezone)
        self.expr = expr
        self.timezone = timezone

    @property
    def wildcard_hour(self) -> bool:
        """True when the hour field starts with `*`: such jobs follow real time across DST changes."""
        return self._cron.wildcard_hour

    def __repr__(self) -> str:
        return f"CronTrigger({self.expr!r}, {self.timezone!r})"

    def next_fire(self, after: datetime) -> datetime | None:
        ts = self._cron.next_after(floor_ts(after))
        return None if ts is None else utc(ts)


class EveryTrigger:
    """Fires at whole multiples of `seconds` since the Unix epoch, so the phase survives restarts."""

    __slots__ = ("_period_us", "seconds")

    def __init__(self, seconds: float) -> None:
        period_us = round(seconds * 1_000_000) if seconds > 0 else 0
        if period_us < 1:
            raise ValueError(f"every must be a positive duration, got {seconds!r}")
        self.seconds = float(seconds)
        self._period_us = period_us

    def __repr__(self) -> str:
        return f"EveryTrigger({self.seconds!r})"

    def _index_at(self, when: datetime) -> int:
        """Index k of the last fire k*period at or before `when` (exact integer microseconds)."""
        require_aware(when, "time")
        return ((when - EPOCH_UTC) // _MICROSECOND) // self._period_us

    def _at_index(self, k: int) -> datetime:
        return EPOCH_UTC + timedelta(microseconds=k * self._period_us)

    def next_fire(self, after: datetime) -> datetime:
        return self._at_index(self._index_at(after) + 1)


class AtTrigger:
    """Fires once, at `when`."""

    __slots__ = ("when",)

    def __init__(self, when: datetime) -> None:
        require_aware(when, "at")
        self.when = when.astimezone(UTC)

    def __repr__(self) -> str:
        return f"AtTrigger({self.when.isoformat()!r})"

    def next_fire(self, after: datetime) -> datetime | None:
        require_aware(after, "time")
        return self.when if self.when > after else None


class CombinedTrigger:
    """The earliest of several triggers: a job may have cron, every and at at once."""

    __slots__ = ("triggers",)

    def __init__(self, triggers: list[Trigger]) -> None:
        self.triggers = tuple(triggers)

    def __repr__(self) -> str:
        return f"CombinedTrigger({list(self.triggers)!r})"

    def next_fire(self, after: datetime) -> datetime | None:
        fires = [t for t in (trig.next_fire(after) for trig in self.triggers) if t is not None]
        return min(fires) if fires else None


def trigger_for(job: JobSpec, shared: SharedTriggers | None = None) -> Trigger | None:
    """The job's trigger, or None for manual / `after`-only jobs. Ignores `enabled`: callers decide.

    Triggers hold no state: jobs given the same `shared` dict (the jobs of one folder load) share one
    cron trigger per expression and zone, and one `every` trigger per period."""
    triggers: list[Trigger] = []
    try:
        if job.cron:
            cron, zone = job.cron, job.timezone
            triggers.append(_one(shared, ("cron", cron, zone), lambda: CronTrigger(cron, zone)))
        if job.every is not None:
            every = job.every
            triggers.append(_one(shared, ("every", every), lambda: EveryTrigger(every)))
        if job.at is not None:
            triggers.append(AtTrigger(job.at))
    except ValueError as exc:
        # The loader validates job files, so reaching here means a spec was built around it.
        raise ScheduleError(f"job {quote(job.name)}: {exc}") from exc
    if not triggers:
        return None
    return triggers[0] if len(triggers) == 1 else CombinedTrigger(triggers)


def _one(shared: SharedTriggers | None, key: tuple[object, ...], make: Callable[[], Trigger]) -> Trigger:
    if shared is None:
        return make()
    trigger = shared.get(key)
    if trigger is None:
        trigger = shared[key] = make()
    return trigger


# ------------------------------------------------------------------------------------- fire enumeration


def fires_between(trigger: Trigger, start: datetime, end: datetime, limit: int) -> tuple[list[datetime], int]:
    """Fires with start < t <= end: the newest `limit` of them ascending, and how many older were dropped.

    Only the newest are kept because a long outage of a frequent job must not produce unbounded rows.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    require_aware(start, "start")
    require_aware(end, "end")
    if end <= start:
        return [], 0
    if isinstance(trigger, EveryTrigger):
        first, last = trigger._index_at(start) + 1, trigger._index_at(end)
        count = max(0, last - first + 1)
        kept = min(count, limit)
        return [trigger._at_index(k) for k in range(last - kept + 1, last + 1)], count - kept
    newest: deque[datetime] = deque(maxlen=limit)
    count = 0
    if isinstance(trigger, CronTrigger):
        stamps: deque[int] = deque(maxlen=limit)
        for ts in trigger._cron.fires(floor_ts(start), floor_ts(end)):
            count += 1
            stamps.append(ts)
        newest.extend(utc(s) for s in stamps)
    else:
        fire = trigger.next_fire(start)
        while fire is not None and fire <= end:
            count += 1
            newest.append(fire)
            fire = trigger.next_fire(fire)
    return list(newest), count - len(newest)


def preview(job: JobSpec, now: datetime, n: int) -> list[datetime]:
    """The next `n` fires after `now`, in the job's own zone so `.isoformat()` shows the UTC offset."""
    trigger = trigger_for(job)
    if trigger is None or n <= 0:
        return []
    zone = load_zone(job.timezone)
    out: list[datetime] = []
    fire = trigger.next_fire(now)
    while fire is not None and len(out) < n:
        out.append(fire.astimezone(zone))
        fire = trigger.next_fire(fire)
    return out
