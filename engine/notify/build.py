"""The events of each cause, built from what the scheduler knows at the state change (pure).

Each function returns the `Event` to queue in the transaction of that change; its `id` is made from
the cause alone (a run id, an epoch, an agent and the time it was seen changing), so building it
again for the same cause — a retried commit, a new active looking at the same facts — gives the same
id, and the outbox keeps one row per channel.
"""

from __future__ import annotations

from datetime import datetime

from engine.clock import iso
from engine.model import FAILURE_STATES, RunState
from engine.notify.events import Event, EventKind, run_event_id

#: A run's end that is announced when no retry follows it, by the state it ended in.
END_EVENTS: dict[RunState, EventKind] = {
    RunState.FAILED: EventKind.FAILED,
    RunState.TIMED_OUT: EventKind.TIMED_OUT,
    RunState.KILLED: EventKind.KILLED,
    RunState.UNKNOWN: EventKind.UNKNOWN,
}


def run_ended(
    *,
    job: str,
    run_id: int,
    state: RunState,
    exit_code: int | None,
    reason: str | None,
    attempt: int,
    retries: int,
    retryable: bool,
    at: datetime,
) -> Event | None:
    """The event of a run's final end (no retry follows it), or None for a state that is not announced.

    `retryable`: the retry policy retries runs that end this way (the planner says, it decides retries),
    so this end has spent the job's `retries`; otherwise it was never going to be retried.
    """
    kind = END_EVENTS.get(state)
    if kind is None:
        return None
    words = str(state).replace("_", " ")  # "timed out", for people (the `state` field keeps the word)
    if retryable:
        attempts = f"after the last of {attempt} attempts" if attempt > 1 else "no retries"
    elif retries > 0:
        attempts = f"attempt {attempt}; a {words} run is not retried"
    else:
        attempts = "no retries"
    why = f": {reason}" if reason else ""
    return Event(
        id=run_event_id(kind, run_id),
        event=kind,
        at=at,
        job=job,
        run_id=run_id,
        state=str(state),
        exit_code=exit_code,
        reason=reason,
        attempt=attempt,
        final=True,
        message=f"job {job} run {run_id} {words}{why} ({attempts})",
    )


def recovered(*, job: str, run_id: int, attempt: int, previous: RunState, at: datetime) -> Event | None:
    """The event of a success, if the job's previous final outcome was a failure (else None)."""
    if previous not in FAILURE_STATES:
        return None
    return Event(
        id=run_event_id(EventKind.RECOVERED, run_id),
        event=EventKind.RECOVERED,
        at=at,
        job=job,
        run_id=run_id,
        state=str(RunState.SUCCEEDED),
        exit_code=0,
        attempt=attempt,
        final=True,
        message=f"job {job} run {run_id} succeeded; its previous outcome was {previous}",
    )


def missed_gap(
    *, job: str, first_row_id: int, count: int, first_at: datetime, last_at: datetime, cause: str, at: datetime
) -> Event:
    """One event for the fires of one job missed in one gap (rows and the summary row's dropped count)."""
    fires = "fire" if count == 1 else "fires"
    span = iso(first_at) if count == 1 else f"{iso(first_at)} to {iso(last_at)}"
    return Event(
        id=run_event_id(EventKind.MISSED, first_row_id),
        event=EventKind.MISSED,
        at=at,
        job=job,
        run_id=first_row_id,
        state=str(RunState.MISSED),
        reason=cause,
        count=count,
        first_at=first_at,
        last_at=last_at,
        message=f"job {job}: {count} {fires} missed ({span}): {cause}",
    )


def agent_changed(*, agent: str, up: bool, error: str | None, at: datetime) -> Event:
    """An agent went down (`error` says why) or came back."""
    kind = EventKind.AGENT_UP if up else EventKind.AGENT_DOWN
    message = f"agent {agent} is up again" if up else f"agent {agent} is down: {error or 'no answer'}"
    return Event(
        id=f"{kind}:{agent}:{iso(at)}",
        event=kind,
        at=at,
        agent=agent,
        reason=None if up else error,
        message=message,
    )


def takeover(
    *, epoch: int, switchover: bool, from_pid: int | None, to_pid: int, cause: str, gap_ms: float | None, at: datetime
) -> Event:
    """A new active took over (`failover`), or was handed the role by `vigil switchover`."""
    kind = EventKind.SWITCHOVER if switchover else EventKind.FAILOVER
    previous = f"pid {from_pid}" if from_pid is not None else "an unknown process"
    gap = f", {gap_ms / 1000:.2f}s without an active" if gap_ms is not None else ""
    return Event(
        id=f"{kind}:epoch:{epoch}",
        event=kind,
        at=at,
        reason=cause,
        duration_s=None if gap_ms is None else gap_ms / 1000,
        message=f"pid {to_pid} is active with epoch {epoch}, after {previous} ({cause}{gap})",
    )


def standby_lost(*, pid: int | None, since: datetime, epoch: int, at: datetime) -> Event:
    """A standby that was connected to this active is gone."""
    who = f"pid {pid}" if pid is not None else "a standby"
    return Event(
        id=f"{EventKind.STANDBY_LOST}:{pid}:{iso(since)}",
        event=EventKind.STANDBY_LOST,
        at=at,
        first_at=since,
        message=f"standby {who}, connected to the active (epoch {epoch}) since {iso(since)}, is gone",
    )


def store_recovered(*, since: datetime, until: datetime, error: str, failures: int) -> Event:
    """The store refused writes from `since` to `until` (a retryable fault) and takes them again."""
    lasted = (until - since).total_seconds()
    return Event(
        id=f"{EventKind.STORE_ERROR}:{iso(since)}",
        event=EventKind.STORE_ERROR,
        at=until,
        reason=error,
        first_at=since,
        last_at=until,
        count=failures,
        duration_s=round(lasted, 3),
        message=f"the state database refused writes for {lasted:.1f}s ({failures} failed attempts): {error}; "
        "writable again",
    )
