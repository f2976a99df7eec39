"""Which channels an event goes to (pure).

A job's event goes to the job's `notify` channels, or to `[scheduler] notify` when the job sets none;
a system event (failover, agent down, ...) goes to `[scheduler] notify`. Each channel's `events`
filter then applies. A typo in the alerting config must not lose an alert (validation reports it,
and the job still runs):
- a channel declared in vigil.toml but invalid still gets the event: it waits in the outbox until its
  definition is fixed (the deliverer gives it up after a day, like any undeliverable event);
- a name nothing declares is dropped; a job none of whose channels is valid also goes to
  `[scheduler] notify`, so someone hears of it now;
- while vigil.toml cannot be read (at start; a running scheduler keeps its last valid settings), an
  event waits under the names the job gives, or under SCHEDULER_CHANNELS; once the file is read,
  what no channel of it takes is handed on to `[scheduler] notify` (engine/outbox/deliverer.py).
"""

from __future__ import annotations

from engine.model import JobSpec, Settings
from engine.notify.events import SYSTEM_EVENTS, Event, EventKind

#: Where an event goes that would go to `[scheduler] notify` while vigil.toml cannot be read: it waits
#: under this name (no channel can have it) and is handed on to `[scheduler] notify` once the file is
#: read again (engine/outbox/deliverer.py).
SCHEDULER_CHANNELS = "[scheduler]"

#: Always delivered whatever a channel's `events` filter says: they exist because of other events.
_UNFILTERED = frozenset({EventKind.SUMMARY, EventKind.TEST})


def channels_for(event: Event, job: JobSpec | None, settings: Settings) -> tuple[str, ...]:
    if event.event in SYSTEM_EVENTS or job is None or job.notify is None:
        if settings.channels_unknown:  # vigil.toml unreadable: which channels that is, is not known
            return (SCHEDULER_CHANNELS,)
        names = settings.notify
    else:
        if settings.channels_unknown:  # they wait for the file; a name it then lacks is handed on
            return tuple(dict.fromkeys(job.notify))
        names = job.notify
        if job.notify and not any(name in settings.channels for name in job.notify):
            names = (*names, *settings.notify)  # none of its channels can deliver now: the fallback too
    chosen: list[str] = []
    for name in dict.fromkeys(names):
        channel = settings.channels.get(name)
        if channel is None:
            if name in settings.invalid_channels:  # its filter is unknown: it gets everything, later
                chosen.append(name)
            continue
        if channel.events is not None and event.event not in _UNFILTERED and str(event.event) not in channel.events:
            continue
        chosen.append(name)
    return tuple(chosen)
