"""Projected fires (JS7's Daily Plan, JAMS's projected schedule): what a job's schedule, calendar and
windows make of a span of time, each fire with what becomes of it and why.

Pure: the span is given. Used by `vigil next` and `vigil plan`, and says in the planner's own words
why a fire is left out (the same functions decide: `calendars.fire_excluded`, `Windows.why_outside`).
Imports `calendars`, `windows`, `triggers`, `cron`, `engine.model`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from engine.model import CalendarSpec, JobSpec, NonWorking, OutsideWindow
from engine.schedule.calendars import MovedTrigger, WorkdayTrigger, calendar_of, job_trigger
from engine.schedule.cron import load_zone
from engine.schedule.triggers import Trigger, trigger_for
from engine.schedule.windows import windows_for

__all__ = ["PlanStatus", "PlannedFire", "empty_working_days", "project"]

#: how far a fire may move to reach a working day when projecting a span (the fires it could come
#: from are looked for this much before and after the span)
_MOVE_PAD = timedelta(days=21)


class PlanStatus(StrEnum):
    PLANNED = "planned"  #: runs at its time
    MOVED = "moved"  #: on_nonworking = next/previous moved it here from a non-working day
    WAITS = "waits"  #: outside its windows: pending until `starts_at`
    SKIPPED = "skipped"  #: a skipped row (non-working day, outside_window = "skip", workday past the month)
    MERGED = "merged"  #: moved onto a working day's own fire at the same time: one run for both

    @property
    def runs(self) -> bool:
        return self not in (PlanStatus.SKIPPED, PlanStatus.MERGED)


@dataclass(frozen=True, slots=True)
class PlannedFire:
    job: str
    at: datetime  #: the fire time (the run's `scheduled_for`), in the job's zone
    status: PlanStatus
    reason: str | None = None
    starts_at: datetime | None = None  #: for WAITS: the window's opening, in the job's zone


def _fires(trigger: Trigger, start: datetime, end: datetime) -> Iterator[datetime]:
    fire = trigger.next_fire(start)
    while fire is not None and fire <= end:
        yield fire
        fire = trigger.next_fire(fire)


def _calendar_fires(
    job: JobSpec, calendars: Mapping[str, CalendarSpec], start: datetime, end: datetime
) -> Iterator[PlannedFire]:
    """The fires in (start, end] as the job's calendar leaves them, in time order."""
    zone = load_zone(job.timezone)
    spec = calendars.get(job.calendar) if job.calendar else None
    trigger = job_trigger(job, calendars)
    if trigger is None:
        return
    if isinstance(trigger, WorkdayTrigger):
        for fire in _fires(trigger, start, end):
            reason = trigger.why_skipped(fire)
            status = PlanStatus.SKIPPED if reason else PlanStatus.PLANNED
            yield PlannedFire(job.name, fire.astimezone(zone), status, reason)
        return
    if not isinstance(trigger, MovedTrigger):
        cal = calendar_of(spec) if spec is not None else None
        for fire in _fires(trigger, start, end):
            local = fire.astimezone(zone)
            reason = cal.why_not_working(local.date()) if cal is not None else None
            yield PlannedFire(job.name, local, PlanStatus.SKIPPED if reason else PlanStatus.PLANNED, reason)
        return
    base = trigger_for(job)
    assert base is not None
    landed: dict[datetime, PlannedFire] = {}
    merged: list[PlannedFire] = []
    direction = "next" if job.on_nonworking is NonWorking.NEXT else "previous"

    def merge(origin: datetime, to: datetime, why: str | None) -> None:
        """A fire moved onto a time that has a fire already: shown where it came from."""
        if start < origin <= end:
            at = to.astimezone(zone).isoformat()
            reason = f"{why}: moved to the {direction} working day, {at}, one run with the fire there"
            merged.append(PlannedFire(job.name, origin.astimezone(zone), PlanStatus.MERGED, reason))

    origins: dict[datetime, tuple[datetime, str | None]] = {}  # landing → (origin, why) of a MOVED entry
    for fire in _fires(base, start - _MOVE_PAD, end + _MOVE_PAD):
        local = fire.astimezone(zone)
        to = trigger.moved(fire)
        if to is None:
            if start < fire <= end:
                reason = f"{trigger.calendar.why_not_working(local.date())}; no working day within a year"
                merged.append(PlannedFire(job.name, local, PlanStatus.SKIPPED, reason))
            continue
        if not start < to <= end:
            continue
        why = None if to == fire else trigger.calendar.why_not_working(local.date())
        if to in landed:
            if to == fire and to in origins:  # a working day's own fire: the one moved there joins it
                origin, origin_why = origins.pop(to)
                merge(origin, to, origin_why)
                landed[to] = PlannedFire(job.name, local, PlanStatus.PLANNED)
            else:
                merge(fire, to, why)
            continue
        if to == fire:
            landed[to] = PlannedFire(job.name, local, PlanStatus.PLANNED)
        else:
            origins[to] = (fire, why)
            reason = f"moved to the {direction} working day from {local.isoformat()} ({why})"
            landed[to] = PlannedFire(job.name, to.astimezone(zone), PlanStatus.MOVED, reason)
    yield from sorted([*landed.values(), *merged], key=lambda planned: planned.at)


def project(
    job: JobSpec, calendars: Mapping[str, CalendarSpec], start: datetime, end: datetime, limit: int | None = None
) -> list[PlannedFire]:
    """The job's fires in (start, end] (at most `limit` of them), each with what becomes of it: its
    calendar's verdict first, then its windows' (judged at the fire time, as if handled on time)."""
    out: list[PlannedFire] = []
    windows = windows_for(job.window, job.timezone) if job.window else None
    zone = load_zone(job.timezone)
    for planned in _calendar_fires(job, calendars, start, end):
        if limit is not None and len(out) >= limit:
            break
        if windows is not None and planned.status.runs:
            why = windows.why_outside(planned.at)
            if why is not None:
                opening = windows.next_opening(planned.at)
                if job.outside_window is OutsideWindow.SKIP or opening is None:
                    planned = PlannedFire(job.name, planned.at, PlanStatus.SKIPPED, f"outside_window=skip: {why}")
                else:
                    note = f"{planned.reason}; {why}" if planned.reason else why
                    planned = PlannedFire(job.name, planned.at, PlanStatus.WAITS, note, opening.astimezone(zone))
        out.append(planned)
    return out


def empty_working_days(
    spec: CalendarSpec, fires: Iterable[PlannedFire], zones: Mapping[str, str], first: date, last: date
) -> list[date]:
    """The calendar's working days from `first` to `last` on which none of `fires` (of the jobs on it)
    runs (JS7's inverted plan: a check of holiday handling). A fire counts on its start day in its
    job's zone (`zones`: job → zone name)."""
    cal = calendar_of(spec)
    busy: set[date] = set()
    for planned in fires:
        if planned.status.runs:
            when = planned.starts_at or planned.at
            busy.add(when.astimezone(load_zone(zones.get(planned.job, "UTC"))).date())
    days = []
    day = first
    while day <= last:
        if cal.is_working(day) and day not in busy:
            days.append(day)
        day += timedelta(days=1)
    return days
