"""A channel's rate limit (pure): at most `rate_limit` events per `rate_window`; the rest are held
back and counted in one summary event per window, sent when the window ends.

Windows are fixed, not sliding: one opens at the first delivery after the last one ended, so a
continuous storm gives each channel `rate_limit` events and one summary per window, never a
trickle of one event per freed slot. A summary and a test event are never limited (they exist
because of other events), nor is a system event (a failover, a lost agent or standby, a store
error): one of those is never hidden in a storm of job failures.

The deliverer keeps one `ChannelWindow` per channel (in memory: a new active starts with fresh
windows, so a failover can let one more `rate_limit` events through). It admits a round's rows on a
copy of the window and keeps the copy only once the round's marks (the suppressed rows and their
summary) are committed, and gives back the slots of admitted rows that were never sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from posixpath import commonprefix, dirname

from engine.model import ChannelSpec, Notification, format_duration
from engine.notify.events import SYSTEM_EVENTS, Event, EventKind

_UNLIMITED = frozenset({str(EventKind.SUMMARY), str(EventKind.TEST), *map(str, SYSTEM_EVENTS)})

#: How a summary names many events of one kind ("37 more failures of etl/*").
_PLURALS = {
    "failed": "failures",
    "timed_out": "time-outs",
    "killed": "killed runs",
    "unknown": "runs of unknown outcome",
    "missed": "missed-fire alerts",
    "late": "late runs",
    "longer": "long runs",
    "shorter": "short runs",
    "recovered": "recoveries",
    "agent_down": "agent-down alerts",
    "agent_up": "agent-up alerts",
    "failover": "failovers",
    "switchover": "switch-overs",
    "standby_lost": "standby-lost alerts",
    "store_error": "store errors",
}


@dataclass
class ChannelWindow:
    """One channel's current window and the summary that counts what it held back."""

    start: datetime | None = None
    delivered: int = 0
    summary: Event | None = None  #: queued, not yet due: later held-back events are counted into it
    kinds: Counter[str] = field(default_factory=Counter)
    jobs: set[str] = field(default_factory=set)
    system: bool = False  #: it counts events of no job

    def copy(self) -> ChannelWindow:
        """A copy to admit a round's rows on: the deliverer keeps it once their marks are committed."""
        return replace(self, kinds=Counter(self.kinds), jobs=set(self.jobs))


@dataclass(frozen=True)
class Admission:
    """What to do with a channel's due rows this round."""

    deliver: list[Notification]
    suppress: list[Notification]
    summary: Event | None = None  #: to queue (or recount) for the channel when `suppress` is not empty
    summary_is_new: bool = True  #: False: rewrite the one already queued
    summary_at: datetime | None = None  #: when it is due: the window's end


def takes_slot(row: Notification) -> bool:
    """Whether delivering the row uses one of its window's `rate_limit` slots."""
    return row.event not in _UNLIMITED


def window_end(window: ChannelWindow, spec: ChannelSpec) -> datetime | None:
    return None if window.start is None else window.start + timedelta(seconds=spec.rate_window)


def admit(spec: ChannelSpec, window: ChannelWindow, due: Sequence[Notification], now: datetime) -> Admission:
    """Split a channel's due rows (oldest first) into those it may deliver now and those held back.

    Updates `window` as if every admitted row will be delivered (a failed one still used its slot:
    a channel that is down must not turn its retries into a storm)."""
    end = window_end(window, spec)
    if end is not None and now >= end:
        window.start, window.delivered = None, 0
        window.summary, window.kinds, window.jobs, window.system = None, Counter(), set(), False
    deliver: list[Notification] = []
    held: list[Notification] = []
    for row in due:
        if not takes_slot(row):
            deliver.append(row)
        elif window.delivered < spec.rate_limit:
            if window.start is None:
                window.start = now
            window.delivered += 1
            deliver.append(row)
        else:
            held.append(row)
    if not held:
        return Admission(deliver, [])
    summary, is_new = _count(spec, window, held, now)
    return Admission(deliver, held, summary, is_new, window_end(window, spec))


def _count(spec: ChannelSpec, window: ChannelWindow, held: Sequence[Notification], now: datetime) -> tuple[Event, bool]:
    """The window's summary with `held` counted in, and whether it is new."""
    for row in held:
        window.kinds[row.event] += 1
        if row.job is None:
            window.system = True
        else:
            window.jobs.add(row.job)
    previous = window.summary
    first = previous.first_at if previous is not None and previous.first_at is not None else held[0].created_at
    last = max(row.created_at for row in held)
    if previous is not None and previous.last_at is not None:
        last = max(last, previous.last_at)
    summary = Event(
        id=previous.id if previous is not None else f"summary:{spec.name}:{held[0].event_id}",
        event=EventKind.SUMMARY,
        at=previous.at if previous is not None else now,
        count=sum(window.kinds.values()),
        first_at=first,
        last_at=last,
        message=summary_message(window.kinds, window.jobs, window.system, spec.rate_window),
    )
    window.summary = summary
    return summary, previous is None


def summary_message(kinds: Counter[str], jobs: Iterable[str], system: bool, window_s: float) -> str:
    """ "37 more failures of etl/* in the last 5m", or with several kinds
    "40 more events (37 failed, 3 late) of etl/* in the last 5m"."""
    total = sum(kinds.values())
    if len(kinds) == 1:
        (kind,) = kinds
        what = _PLURALS.get(kind, "events") if total > 1 else kind.replace("_", " ") + " event"
    else:
        what = "events (" + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()) + ")"
    return f"{total} more {what} of {scope(sorted(jobs), system)} in the last {format_duration(window_s)}"


def scope(jobs: Sequence[str], system: bool) -> str:
    """What the events are about: one job, the folder they share (`etl/*`), or all of them."""
    if not jobs:
        return "the scheduler"
    if system:
        return "the scheduler and jobs"
    if len(jobs) == 1:
        return jobs[0]
    common = dirname(commonprefix(list(jobs)) + "x")  # the folder of the shared prefix, whole segments only
    return f"{common}/*" if common else "all jobs"
