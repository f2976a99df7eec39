"""Stored rows as the engine's typed records.

A run row this version cannot fully read (a state written by a newer Vigil, a time someone edited)
still reads as a Run: one damaged row must never blank a whole listing (`vigil runs`, the
dashboard) or stop the active. What could not be read is said in the run's reason.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

from engine.clock import parse_iso
from engine.errors import StoreError
from engine.model import LeaderRow, Notification, NotificationState, Run, RunState

#: What an unreadable run time reads as when no other time of the row is readable either.
UNREADABLE_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def required_time(row: sqlite3.Row, column: str) -> datetime:
    """A NOT NULL time column (written by `clock.iso`); unreadable text is a damaged row."""
    when = parse_iso(row[column])
    if when is None:
        raise StoreError(f"state database: {column} {row[column]!r} is not a time (a damaged row)")
    return when


def state_of(stored: object) -> RunState:
    """A stored run state; one this version does not know (a newer Vigil wrote it) reads as UNKNOWN."""
    try:
        return RunState(str(stored))
    except ValueError:
        return RunState.UNKNOWN


def _time(value: object) -> datetime | None:
    """A stored run time, or None when it is not one `clock.iso` writes (not text, no zone)."""
    when = parse_iso(value) if isinstance(value, str) else None
    return when if when is not None and when.tzinfo is not None else None


def run_of(row: sqlite3.Row) -> Run:
    """A `runs` row (all columns) as a Run, whatever its state and times say.

    - A state this version does not know reads as `RunState.UNKNOWN` (its outcome cannot be told:
      never re-run, never listed as open), and the reason says what was stored.
    - An unreadable `scheduled_for` or `created_at` reads as the row's other one (a fire's row is
      created at about its scheduled time), or as 1970-01-01 UTC (`UNREADABLE_TIME`) when neither
      is readable, so the row sorts last by time; the reason says what was stored.
    """
    notes: list[str] = []
    state = state_of(row["state"])
    if state.value != row["state"]:
        notes.append(f"stored state {row['state']!r} is not one this version of Vigil knows")
    scheduled_for = _time(row["scheduled_for"])
    created_at = _time(row["created_at"])
    for column, when in (("scheduled_for", scheduled_for), ("created_at", created_at)):
        if when is None:
            notes.append(f"stored {column} {row[column]!r} is not a time")
    reason = row["reason"]
    if notes:
        reason = "; ".join(notes + ([reason] if reason else []))
    return Run(
        id=int(row["id"]),
        job=row["job"],
        scheduled_for=scheduled_for or created_at or UNREADABLE_TIME,
        attempt=int(row["attempt"]),
        state=state,
        trigger=row["trigger"],
        epoch=int(row["epoch"]),
        created_at=created_at or scheduled_for or UNREADABLE_TIME,
        reason=reason,
        not_before=parse_iso(row["not_before"]),
        started_at=parse_iso(row["started_at"]),
        ended_at=parse_iso(row["ended_at"]),
        exit_code=row["exit_code"],
        pid=row["pid"],
        pid_starttime=row["pid_starttime"],
        deadline=parse_iso(row["deadline"]),
        kill_requested=row["kill_requested"],
        agent=row["agent"],
        peak_rss=row["peak_rss"],
        cpu_s=row["cpu_s"],
        command=row["command"],
        flow_id=_flow_id(row),
        outputs=_outputs(row),
    )


def _flow_id(row: sqlite3.Row) -> int:
    """The run's flow: its own id when it is in none (or the database predates flows)."""
    try:
        flow_id = row["flow_id"]
    except IndexError:  # a database no active of this version has opened yet
        return int(row["id"])
    return int(flow_id) if flow_id is not None else int(row["id"])


def _outputs(row: sqlite3.Row) -> tuple[tuple[str, str], ...]:
    """A flow step's outputs; an unreadable value reads as none."""
    try:
        text = row["outputs"]
    except IndexError:
        return ()
    if not text:
        return ()
    try:
        pairs = json.loads(text)
        return tuple((str(name), str(value)) for name, value in pairs)
    except (ValueError, TypeError):
        return ()


def leader_of(row: sqlite3.Row) -> LeaderRow:
    return LeaderRow(
        epoch=int(row["epoch"]),
        pid=row["pid"],
        starttime=row["starttime"],
        since=parse_iso(row["since"]),
        clean_stop=bool(row["clean_stop"]),
    )


def notification_of(row: sqlite3.Row) -> Notification:
    """An outbox row; a state this version does not know reads as pending (it is then retried)."""
    try:
        state = NotificationState(row["state"])
    except ValueError:
        state = NotificationState.PENDING
    return Notification(
        event_id=row["event_id"],
        channel=row["channel"],
        event=row["event"],
        job=row["job"],
        run_id=row["run_id"],
        created_at=_time(row["created_at"]) or UNREADABLE_TIME,
        state=state,
        attempts=int(row["attempts"]),
        next_attempt_at=parse_iso(row["next_attempt_at"]),
        last_error=row["last_error"],
        last_attempt_at=parse_iso(row["last_attempt_at"]),
        sent_at=parse_iso(row["sent_at"]),
        summary_id=row["summary_id"],
        epoch=int(row["epoch"]),
        document=row["document"],
    )


def duration_of(started_at: object, ended_at: object) -> float | None:
    start, end = _time(started_at), _time(ended_at)
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())
