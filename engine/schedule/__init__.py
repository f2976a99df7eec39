"""Pure scheduling maths: when jobs fire, what to do with missed fires, retries, overlap and `after`.

No I/O, no sleeping, no event loop: every function takes the times it needs, so tests use fixed instants.
All returned datetimes are timezone-aware UTC unless a docstring says otherwise. The package:

- `cron`: the cron parser, time zones, and the DST rule (documented there), `validate_cron`;
- `triggers`: the `Trigger` protocol, cron/every/at/combined triggers, `trigger_for`, `fires_between`,
  `preview`;
- `calendars`: working days and holidays, moves to the next/previous working day, `workday`, and
  `job_trigger` (the job's trigger with its calendar applied) and `fire_excluded`;
- `windows`: admission windows (membership, next opening, closing);
- `policy`: missed fires (`plan_missed_fires`), retries, overlap, upstream (`after`) conditions;
- `flows` (imported as `engine.schedule.flows`): a flow's steps, their `after` conditions within
  the flow and their outputs.

Each module imports only those above it, and outside the package only `engine.model`, `engine.errors`
and `engine.text`. Callers use this module's names (`from engine import schedule`, `schedule.X`).
"""

from engine.schedule.calendars import WorkingCalendar, calendar_of, fire_excluded, job_trigger
from engine.schedule.cron import validate_cron, validate_timezone
from engine.schedule.policy import (
    FirePlan,
    OverlapDecision,
    overlap_decision,
    plan_missed_fires,
    retry_delay,
    retryable,
    should_retry,
    upstream_satisfied,
)
from engine.schedule.triggers import (
    AtTrigger,
    CombinedTrigger,
    CronTrigger,
    EveryTrigger,
    SharedTriggers,
    Trigger,
    fires_between,
    preview,
    trigger_for,
)
from engine.schedule.windows import Windows, parse_window, windows_for

__all__ = [
    "AtTrigger",
    "CombinedTrigger",
    "CronTrigger",
    "EveryTrigger",
    "FirePlan",
    "OverlapDecision",
    "SharedTriggers",
    "Trigger",
    "Windows",
    "WorkingCalendar",
    "calendar_of",
    "fire_excluded",
    "fires_between",
    "job_trigger",
    "overlap_decision",
    "parse_window",
    "plan_missed_fires",
    "preview",
    "retry_delay",
    "retryable",
    "should_retry",
    "trigger_for",
    "upstream_satisfied",
    "validate_cron",
    "validate_timezone",
    "windows_for",
]
