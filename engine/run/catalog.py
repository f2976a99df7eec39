"""Job catalog sync: a scan of the job folder turned into triggers, next fires and catalog intents.

The planner holds the jobs and their fire times; this applies each scan to it (jobs added,
changed, removed or broken) and writes the `jobs` table readers use (`vigil jobs`, the dashboard)
without parsing job files themselves. No I/O: the loop commits what this returns.

Layer: run. May import the base modules, `engine.config`, `engine.schedule`, `engine.store.intents` and the planner.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from engine import schedule
from engine.clock import iso
from engine.config import ScanResult, job_name_of
from engine.model import JobSpec
from engine.run.planner import Planner, format_jump
from engine.store import intents as i

log = logging.getLogger("vigil.scheduler")


class Catalog:
    """The jobs' load errors and which catalog rows are due to be written again."""

    def __init__(self, planner: Planner, root: Path) -> None:
        self.planner = planner
        self.root = root  #: the job folder (job names are paths below it)
        self.errors: dict[str, str] = {}  #: job name -> why its file does not load
        self.dirty: set[str] = set()

    def settle_stored_fires(self, result: ScanResult, now: datetime) -> list[i.Intent]:
        """Stored last fires that must not be trusted at start: of absent jobs, or ahead of the clock."""
        last_fire = self.planner.last_fire
        intents: list[i.Intent] = []
        for name in sorted(set(last_fire) - set(result.jobs)):
            # Not loaded now: if its file comes back, the time it was away is not missed.
            del last_fire[name]
            intents.append(i.LastFire(name, None))
        ahead = {name: last for name, last in last_fire.items() if last > now}
        if ahead:
            worst = max((last - now).total_seconds() for last in ahead.values())
            log.warning(
                "the wall clock is up to %s behind the last recorded fire of %d job(s): it went back; "
                "schedules continue from %s and fire times that already ran are not run again",
                format_jump(worst),
                len(ahead),
                iso(now),
            )
            for name in ahead:
                last_fire[name] = now
                intents.append(i.LastFire(name, now))
        return intents

    def apply_scan(self, result: ScanResult, now: datetime, *, initial: bool = False) -> list[i.Intent]:
        """The jobs as this scan found them: their triggers and next fires; the intents to record."""
        p = self.planner
        previous_settings = p.settings if not initial else None
        p.settings = result.settings
        errors: dict[str, str] = {}
        for err in result.errors:
            errors.setdefault(job_name_of(err.path, self.root), err.format())
        new_messages = set(errors.values()) - set(self.errors.values())
        for message in sorted(new_messages):
            log.warning("job file error: %s", message)
        # A job whose error appears, clears or changes its text: its catalog row shows the message.
        touched = set(result.changed) | set(result.removed)
        touched |= {name for name in set(errors) | set(self.errors) if errors.get(name) != self.errors.get(name)}
        self.errors = errors
        previous_jobs = p.jobs
        if initial or result.jobs is not previous_jobs:
            # The folder makes a new mapping only when its jobs change: an unchanged scan (every
            # second) copies and rebuilds nothing.
            p.jobs = result.jobs
            p.downstream = defaultdict(list)
            for job in p.jobs.values():
                for up in job.after:
                    p.downstream[up].append(job.name)
        if initial:
            touched |= set(p.jobs)
        intents: list[i.Intent] = []
        for name in result.removed:
            p.triggers.pop(name, None)
            p.next_fire.pop(name, None)
            # Forgotten in the ledger too, so a re-added file (even after a restart) starts from then.
            if p.last_fire.pop(name, None) is not None:
                intents.append(i.LastFire(name, None))
        shared_triggers: schedule.SharedTriggers = {}
        rebuild = result.changed & p.jobs.keys()
        if previous_settings is not None and previous_settings.calendars != p.settings.calendars:
            # A calendar edited in vigil.toml moves the fires of the jobs on it (their files did not change).
            rebuild |= {name for name, job in p.jobs.items() if job.calendar}
        for name in p.jobs if initial else sorted(rebuild):
            job = p.jobs[name]
            trigger = schedule.job_trigger(job, p.settings.calendars, shared_triggers)
            if trigger is None:
                p.triggers.pop(name, None)
                p.next_fire[name] = None
                continue
            p.triggers[name] = trigger
            before = previous_jobs.get(name)
            new_schedule = before is not None and not initial and _schedule_of(before) != _schedule_of(job)
            if name not in p.last_fire or (new_schedule and p.last_fire[name] < now):
                # A job seen for the first time, or with a new schedule, is watched from now: fires
                # before it existed are not missed (nor fires its new schedule would have had).
                p.last_fire[name] = now
                intents.append(i.LastFire(name, now))
            p.push_fire(name, trigger.next_fire(max(p.last_fire[name], now) if not initial else p.last_fire[name]))
        self.dirty |= touched
        return intents

    def take_dirty(self, *, full: bool = False) -> set[str]:
        """The names whose catalog rows are to be written now (every one for a full rewrite)."""
        names = set(self.planner.jobs) | set(self.errors) if full else set(self.dirty)
        self.dirty = set()
        return names

    def rows(self, names: set[str], *, full: bool) -> list[i.Intent]:
        """The catalog rows of these jobs as intents (after clearing the table, for a full rewrite)."""
        intents: list[i.Intent] = [i.CatalogCleared()] if full else []
        # One string for equal texts: a folder's jobs mostly share their tags and many their schedule,
        # and a full rewrite holds 10,000 rows at once.
        texts: dict[str, str] = {}
        for name in sorted(names):
            job = self.planner.jobs.get(name)
            error = self.errors.get(name)
            if job is None:
                intents.append(i.CatalogDrop(name))
                if error:
                    intents.append(i.CatalogUpsert(name, "", "invalid", False, None, "", "", None, error))
                continue
            intents.append(
                i.CatalogUpsert(
                    name=name,
                    path=job.path,
                    schedule=texts.setdefault(schedule := job.schedule_text, schedule),
                    enabled=job.enabled,
                    agent=job.agent,
                    description=job.description,
                    tags=texts.setdefault(tags := ",".join(job.tags), tags),
                    next_fire=self.planner.next_fire.get(name),
                    error=error,
                    priority=job.priority,
                    locks=",".join(f"{lock}={count}" for lock, count in job.locks),
                )
            )
        return intents


def _schedule_of(job: JobSpec) -> tuple[Any, ...]:
    return (job.cron, job.every, job.at, job.timezone, job.calendar, job.on_nonworking, job.workday, job.at_time)
