"""Which channels an event goes to (pure).

A job's event goes to the job's `notify` channels, or to `[scheduler] notify` when the job sets none;
a system event (failover, agent down, ...) goes to `[scheduler] notify`. A name no valid
`[notify.NAME]` declares is dropped (validation reports it, and the job still runs); a job whose
`notify` names channels of which none is valid falls back to `[scheduler] notify`, so a typo in the
alerting config does not lose the alert. Each channel's `events` filter then applies.
"""

from __future__ import annotations

from engine.model import JobSpec, Settings
from engine.notify.events import SYSTEM_EVENTS, Event, EventKind

#: Always delivered whatever a channel's `events` filter says: they exist because of other events.
_UNFILTERED = frozenset({EventKind.SUMMARY, EventKind.TEST})


def channels_for(event: Event, job: JobSpec | None, settings: Settings) -> tuple[str, ...]:
    if event.event in SYSTEM_EVENTS or job is None or job.notify is None:
        names = settings.notify
    else:
        names = tuple(name for name in job.notify if name in settings.channels)
        if job.notify and not names:
            names = settings.notify  # every channel it names is undeclared or invalid: the fallback
    chosen = []
    for name in names:
        channel = settings.channels.get(name)
        if channel is None:
            continue
        if channel.events is not None and event.event not in _UNFILTERED and str(event.event) not in channel.events:
            continue
        chosen.append(name)
    return tuple(chosen)
