"""`vigil plan` (the projected fires of every job for the next days, JS7's Daily Plan) and the calendar
notes of `vigil next`. Both read the job folder, not the ledger: they work without a scheduler.

Layer: cli. Imports the base modules, config and schedule.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.clock import iso
from engine.config import load_folder
from engine.errors import VigilError
from engine.model import CalendarSpec, JobSpec
from engine.schedule.cron import load_zone
from engine.schedule.projection import PlannedFire, PlanStatus, empty_working_days, project
from engine.text import escape

__all__ = ["MAX_PLAN_DAYS", "cmd_plan", "next_lines"]

MAX_PLAN_DAYS = 366
#: `vigil next`: fires looked at to find N that run (a calendar may leave many out in between)
_NEXT_LOOK_DAYS = 400
_MAX_NEXT_LINES = 5000  #: fires left out are shown too: at most this many lines in all


def _fire_doc(planned: PlannedFire) -> dict[str, Any]:
    return {
        "job": planned.job,
        "at": planned.at.isoformat(),
        "at_utc": iso(planned.at),
        "status": planned.status.value,
        "reason": planned.reason,
        "starts_at": planned.starts_at.isoformat() if planned.starts_at else None,
    }


def _line(planned: PlannedFire, *, job_column: int | None = None) -> str:
    who = f"{planned.job:<{job_column}}  " if job_column is not None else ""
    status = "" if planned.status is PlanStatus.PLANNED else planned.status.value
    note = planned.reason or ""
    if planned.status is PlanStatus.WAITS and planned.starts_at is not None:
        note = f"starts {planned.starts_at.isoformat()}: {note}"
    tail = f"  {status}: {note}" if status else ""
    return escape(f"{planned.at.isoformat()}  {who}{tail.lstrip() if not who else tail}".rstrip())


def next_lines(job: JobSpec, calendars: dict[str, CalendarSpec], now: datetime, n: int) -> tuple[list[str], list[str]]:
    """`vigil next`: the next `n` fires that run (as times) and the lines to print, with the fires the
    calendar or windows leave out in between and why."""
    times: list[str] = []
    lines: list[str] = []
    start, end_of_look = now, now + timedelta(days=_NEXT_LOOK_DAYS)
    while len(times) < n and start < end_of_look and len(lines) < _MAX_NEXT_LINES:
        end = min(start + timedelta(days=7), end_of_look)
        limit = n - len(times) + 100
        batch = project(job, calendars, start, end, limit=limit)
        for planned in batch:
            lines.append(_line(planned))
            if planned.status.runs:
                times.append(planned.at.isoformat())
                if len(times) == n:
                    break
        start = batch[-1].at if len(batch) == limit else end
    return times, lines


def cmd_plan(args: argparse.Namespace) -> int:
    if not 1 <= args.days <= MAX_PLAN_DAYS:
        raise VigilError(f"--days {args.days}: expected a whole number from 1 to {MAX_PLAN_DAYS}")
    folder = Path(args.jobs).resolve()
    if not folder.is_dir():
        raise VigilError(f"job folder {folder} does not exist or is not a directory")
    result = load_folder(folder)
    calendars = result.settings.calendars
    jobs = [
        job
        for name, job in sorted(result.jobs.items())
        if job.enabled and (args.job is None or fnmatch.fnmatchcase(name, args.job))
    ]
    now = datetime.now(UTC)
    end = now + timedelta(days=args.days)
    fires: list[PlannedFire] = []
    for job in jobs:
        fires.extend(project(job, calendars, now, end))
    fires.sort(key=lambda planned: (planned.at.timestamp(), planned.job))
    empty: list[tuple[str, str]] = []
    if args.empty:
        for name, spec in sorted(calendars.items()):
            on_it = [job for job in jobs if job.calendar == name]
            if not on_it:
                continue
            zones = {job.name: job.timezone for job in on_it}
            mine = [planned for planned in fires if planned.job in zones]
            first = now.astimezone(load_zone(on_it[0].timezone)).date()
            last = end.astimezone(load_zone(on_it[0].timezone)).date()
            empty.extend((name, day.isoformat()) for day in empty_working_days(spec, mine, zones, first, last))
    if args.json:
        doc: Any = {
            "from": iso(now),
            "to": iso(end),
            "fires": [_fire_doc(planned) for planned in fires],
        }
        if args.empty:
            doc["empty_working_days"] = [{"calendar": name, "date": day} for name, day in empty]
        # One line: a month of 10,000 jobs is hundreds of thousands of fires (json's indenting is 3x slower)
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    if args.empty:
        if not empty:
            print("no working day without a planned run")
        for name, day in empty:
            weekday = datetime.fromisoformat(day).strftime("%a")
            print(escape(f"{day} {weekday}  {name}: nothing planned"))
        return 0
    if not fires:
        print(f"no fires planned in the next {args.days} day(s)")
        return 0
    width = max(len(planned.job) for planned in fires)
    for planned in fires:
        print(_line(planned, job_column=width))
    counts = {status: sum(planned.status is status for planned in fires) for status in PlanStatus}
    summary = ", ".join(f"{count} {status.value}" for status, count in counts.items() if count)
    print(f"{len(fires)} fire(s) in the next {args.days} day(s): {summary}")
    return 0
