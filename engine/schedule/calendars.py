"""Working-day calendars: which days are working days and why not, moves to the next or previous
working day, the Nth / last working day of a month, and the calendar-aware triggers built on them.

Pure: no I/O, no clock. Public holidays come from the `holidays` package, imported on first use
only (it takes tens of milliseconds; listing commands never need it). Imports `cron`, `triggers`,
`engine.model` and `engine.text`.

A day is a working day when it is in the calendar's `include`, or its weekday is a working weekday
and it is not a public holiday; a day in `exclude` never is (exclude wins, as JS7's non-working-day
calendars do). A fire moved to another day keeps its wall time in the job's zone; a wall time that
does not exist on the new day (a spring-forward gap) fires when the gap ends, as cron fires do.
"""

from __future__ import annotations

import calendar as _gregorian
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from engine.model import CalendarSpec, JobSpec, NonWorking
from engine.schedule.cron import load_zone, require_aware
from engine.schedule.triggers import SharedTriggers, Trigger, trigger_for
from engine.text import quote

__all__ = [
    "MAX_WORKDAY",
    "WEEKDAYS",
    "MovedTrigger",
    "WorkdayTrigger",
    "WorkingCalendar",
    "at_wall",
    "calendar_of",
    "fire_excluded",
    "holiday_problem",
    "job_trigger",
    "parse_at_time",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: no month has more than 23 weekdays, so `workday` beyond ±23 could never fire
MAX_WORKDAY = 23
#: a calendar with no working day within this many days has none at all (a year, and a leap day)
_SEARCH_DAYS = 367
_HOLIDAY_LANGUAGE = "en_US"  #: holiday names in English where the country's data has them


# ------------------------------------------------------------------------------------------ holidays


def _holidays_module() -> Any:
    import holidays  # lazy: ~45 ms, needed only by calendars with `holidays`

    return holidays


@lru_cache(maxsize=256)
def _country(country: str, subdivision: str | None) -> Any:
    """The `holidays` object of a country (and subdivision), filled year by year as asked."""
    module = _holidays_module()
    probe = module.country_holidays(country, subdiv=subdivision, years=())
    language = _HOLIDAY_LANGUAGE if _HOLIDAY_LANGUAGE in (probe.supported_languages or ()) else None
    return module.country_holidays(country, subdiv=subdivision, language=language, years=())


def holiday_problem(country: str, subdivision: str | None) -> str | None:
    """Why `holidays = { country, subdivision }` cannot be used (naming the valid choices), or None."""
    module = _holidays_module()
    try:
        entity = module.country_holidays(country, years=())
    except NotImplementedError:
        close = sorted(code for code in module.list_supported_countries() if code[:1] == country[:1].upper())
        hint = f"; codes starting with {country[:1].upper()}: {', '.join(close)}" if close else ""
        return f"unknown country {quote(country)} (an ISO 3166 code such as DE, US or GB{hint})"
    if subdivision is None:
        return None
    codes = tuple(entity.subdivisions)
    aliases = dict(getattr(entity, "subdivisions_aliases", {}) or {})
    if subdivision in codes or subdivision in aliases:
        return None
    choices = ", ".join(codes) if codes else f"none: {country} has no subdivisions"
    return f"unknown subdivision {quote(subdivision)} of {country} (valid: {choices})"


# ------------------------------------------------------------------------------------------ calendars


@dataclass(frozen=True)
class WorkingCalendar:
    """A `CalendarSpec` put to use: its holidays looked up year by year, and each day's verdict kept."""

    spec: CalendarSpec
    _verdicts: dict[date, str | None] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def label(self) -> str:
        """How reasons name the holidays' origin: "DE-BE", "US"; else the calendar's name."""
        if self.spec.country is None:
            return self.spec.name
        return self.spec.country + (f"-{self.spec.subdivision}" if self.spec.subdivision else "")

    def holiday(self, day: date) -> str | None:
        """The name of the public holiday on `day`, if the calendar has holidays and it is one."""
        if self.spec.country is None:
            return None
        table = _country(self.spec.country, self.spec.subdivision)
        name = table.get(day)
        return None if name is None else str(name)

    def why_not_working(self, day: date) -> str | None:
        """None for a working day; else why not: "non-working day: Christmas Day (DE-BE)"."""
        try:
            return self._verdicts[day]
        except KeyError:
            pass
        if len(self._verdicts) > 20_000:
            self._verdicts.clear()
        verdict = self._verdicts[day] = self._verdict(day)
        return verdict

    def _verdict(self, day: date) -> str | None:
        spec = self.spec
        if day in spec.exclude:
            return f"non-working day: {day.isoformat()} is excluded in calendar {spec.name}"
        if day in spec.include:
            return None
        holiday = self.holiday(day)
        if holiday is not None:
            return f"non-working day: {holiday} ({self.label})"
        if day.weekday() not in spec.weekdays:
            return f"non-working day: {_DAY_NAMES[day.weekday()]} (calendar {spec.name})"
        return None

    def is_working(self, day: date) -> bool:
        return self.why_not_working(day) is None

    def next_working(self, day: date) -> date | None:
        """The first working day after `day`; None when the calendar has none within a year."""
        for step in range(1, _SEARCH_DAYS + 1):
            candidate = day + timedelta(days=step)
            if self.is_working(candidate):
                return candidate
        return None

    def previous_working(self, day: date) -> date | None:
        """The last working day before `day`; None when the calendar has none within a year."""
        for step in range(1, _SEARCH_DAYS + 1):
            candidate = day - timedelta(days=step)
            if self.is_working(candidate):
                return candidate
        return None

    def working_days(self, year: int, month: int) -> list[date]:
        """The month's working days, in order."""
        days = _gregorian.monthrange(year, month)[1]
        return [d for n in range(1, days + 1) if self.is_working(d := date(year, month, n))]

    def nth_working_day(self, year: int, month: int, n: int) -> date | None:
        """The Nth (n ≥ 1) or Nth-last (n ≤ -1) working day of the month; None when it has fewer."""
        days = self.working_days(year, month)
        index = n - 1 if n > 0 else n
        return days[index] if -len(days) <= index < len(days) else None


@lru_cache(maxsize=1024)
def calendar_of(spec: CalendarSpec) -> WorkingCalendar:
    """One `WorkingCalendar` per spec (the jobs that name it share its holiday tables)."""
    return WorkingCalendar(spec)


# ------------------------------------------------------------------------------------------ wall time


def at_wall(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """`wall` on `day` in `zone`, in UTC: an ambiguous time is its first occurrence, a time in a gap the
    instant the gap ends (cron's rule for fixed times)."""
    local = datetime.combine(day, wall, tzinfo=zone)
    instant = local.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != local.replace(tzinfo=None):
        # In a gap: fold=0 read it with the offset before the gap, i.e. as a time after it. The gap
        # ends at the transition: the first instant whose wall time is past `wall`.
        before = datetime.combine(day, wall, tzinfo=zone).replace(fold=1).astimezone(UTC)
        low, high = min(before, instant), max(before, instant)
        while high - low > timedelta(seconds=1):
            mid = low + (high - low) / 2
            if mid.astimezone(zone).replace(tzinfo=None) >= local.replace(tzinfo=None):
                high = mid
            else:
                low = mid
        return high.replace(microsecond=0)
    return instant


def parse_at_time(text: str) -> time:
    """`at_time = "18:00"` (or "18:00:30"): a wall time; ValueError saying what is wrong."""
    try:
        parsed = time.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f'expected a time of day "HH:MM" such as "18:00", got {quote(text)}') from None
    if parsed.tzinfo is not None:
        raise ValueError(f"{quote(text)}: give the time without an offset (the job's timezone applies)")
    return parsed.replace(microsecond=0)


# ------------------------------------------------------------------------------------------ triggers


class MovedTrigger:
    """A trigger whose fires on non-working days move to the next (or previous) working day, at the
    same wall time in `zone`. Fires that land on one instant are one fire."""

    __slots__ = ("calendar", "inner", "policy", "zone")

    def __init__(self, inner: Trigger, calendar: WorkingCalendar, policy: NonWorking, zone: ZoneInfo) -> None:
        self.inner, self.calendar, self.policy, self.zone = inner, calendar, policy, zone

    def __repr__(self) -> str:
        return f"MovedTrigger({self.inner!r}, {self.calendar.spec.name!r}, {self.policy.value!r})"

    def moved(self, fire: datetime) -> datetime | None:
        """Where an inner fire lands: itself on a working day, else the same wall time on the next /
        previous working day (None when the calendar has none)."""
        local = fire.astimezone(self.zone)
        day = local.date()
        if self.calendar.is_working(day):
            return fire
        target = (
            self.calendar.next_working(day) if self.policy is NonWorking.NEXT else self.calendar.previous_working(day)
        )
        return None if target is None else at_wall(target, local.time().replace(tzinfo=None), self.zone)

    def next_fire(self, after: datetime) -> datetime | None:
        require_aware(after, "time")
        if self.policy is NonWorking.NEXT:
            # An inner fire moved forward can come from before `after`: start at the first day of the
            # non-working stretch that ends at `after`'s day.
            start_day = after.astimezone(self.zone).date()
            for _ in range(_SEARCH_DAYS):
                if self.calendar.is_working(start_day - timedelta(days=1)):
                    break
                start_day -= timedelta(days=1)
            cursor = at_wall(start_day, time(0), self.zone) - timedelta(seconds=1)
        else:
            cursor = after
        best: datetime | None = None
        best_day: date | None = None
        # No fire moves further than a year: past this, nothing found means nothing will be.
        horizon = after + timedelta(days=2 * _SEARCH_DAYS)
        for _ in range(1_000_000):  # a bound on a pathological inner trigger, never reached in practice
            fire = self.inner.next_fire(cursor)
            if fire is None or fire > horizon:
                break
            if self.policy is NonWorking.NEXT and best is not None and fire >= best:
                break  # a fire moved forward lands at or after itself
            if self.policy is NonWorking.PREVIOUS and best_day is not None:
                day = fire.astimezone(self.zone).date()
                if day > best_day and self.calendar.is_working(day):
                    break  # this and every later fire land on a later day
            cursor = fire
            landed = self.moved(fire)
            if landed is not None and landed > after and (best is None or landed < best):
                best = landed
                best_day = landed.astimezone(self.zone).date()
        return best


class WorkdayTrigger:
    """`workday = N` at `at_time`: the Nth (or Nth-last) working day of each month, in `zone`.

    A month with fewer working days still fires once, on its last calendar day at `at_time`, so the
    ledger shows it as a `skipped` row saying so (`why_skipped`) instead of nothing."""

    __slots__ = ("at_time", "calendar", "n", "zone")

    def __init__(self, calendar: WorkingCalendar, n: int, at_time: time, zone: ZoneInfo) -> None:
        self.calendar, self.n, self.at_time, self.zone = calendar, n, at_time, zone

    def __repr__(self) -> str:
        return f"WorkdayTrigger({self.calendar.spec.name!r}, {self.n}, {self.at_time.isoformat()!r})"

    def day_in(self, year: int, month: int) -> tuple[date, bool]:
        """The month's fire day, and whether it is the Nth working day (False: the month has too few)."""
        day = self.calendar.nth_working_day(year, month, self.n)
        if day is not None:
            return day, True
        return date(year, month, _gregorian.monthrange(year, month)[1]), False

    def next_fire(self, after: datetime) -> datetime | None:
        require_aware(after, "time")
        local = after.astimezone(self.zone)
        year, month = local.year, local.month
        for _ in range(1200):  # 100 years of months
            day, _ok = self.day_in(year, month)
            fire = at_wall(day, self.at_time, self.zone)
            if fire > after:
                return fire
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return None

    def why_skipped(self, fire: datetime) -> str | None:
        """Why a fire of this trigger does not run: its month has fewer working days than `n`."""
        local = fire.astimezone(self.zone)
        _day, ok = self.day_in(local.year, local.month)
        if ok:
            return None
        count = len(self.calendar.working_days(local.year, local.month))
        which = f"working day {self.n}" if self.n > 0 else f"working day {self.n} (counted from the end)"
        return (
            f"workday = {self.n}: {local.year}-{local.month:02d} has only {count} working days in calendar "
            f"{self.calendar.spec.name}, no {which}"
        )


def job_trigger(
    job: JobSpec, calendars: Mapping[str, CalendarSpec], shared: SharedTriggers | None = None
) -> Trigger | None:
    """The job's trigger with its calendar applied: `workday`, or its cron/every/at fires moved by
    `on_nonworking = "next" | "previous"`. With `skip` (the default) fires are left where they are and
    the planner records those on non-working days as skipped (`fire_excluded`).

    A calendar the settings do not declare (a vigil.toml edited since) leaves the plain trigger."""
    spec = calendars.get(job.calendar) if job.calendar else None
    if job.workday is not None and job.at_time is not None:
        if spec is None:
            return None  # validated against: a workday job needs its calendar
        return WorkdayTrigger(calendar_of(spec), job.workday, parse_at_time(job.at_time), load_zone(job.timezone))
    base = trigger_for(job, shared)
    if base is None or spec is None or job.on_nonworking is NonWorking.SKIP:
        return base
    return MovedTrigger(base, calendar_of(spec), job.on_nonworking, load_zone(job.timezone))


def fire_excluded(job: JobSpec, calendars: Mapping[str, CalendarSpec], fire: datetime) -> str | None:
    """Why a scheduled fire of `job` at `fire` is not run because of its calendar, or None.

    A fire on a non-working day (policy `skip`; `next`/`previous` moved it already); a `workday` fire
    in a month with too few working days."""
    spec = calendars.get(job.calendar) if job.calendar else None
    if spec is None:
        return None
    cal = calendar_of(spec)
    zone = load_zone(job.timezone)
    if job.workday is not None and job.at_time is not None:
        trigger = WorkdayTrigger(cal, job.workday, parse_at_time(job.at_time), zone)
        return trigger.why_skipped(fire)
    return cal.why_not_working(fire.astimezone(zone).date())
