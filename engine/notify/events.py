"""Events and their documents.

An event's `id` is made from what caused it (`failed:run:42`, `failover:epoch:7`), so the same cause
queued twice (a new active looking at the same agent, a retried transaction) is one outbox row, and a
receiver can drop the rare duplicate delivery by id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from engine.clock import iso, parse_iso


class EventKind(StrEnum):
    FAILED = "failed"  #: failed after its last attempt (`final`)
    TIMED_OUT = "timed_out"
    KILLED = "killed"
    UNKNOWN = "unknown"
    MISSED = "missed"  #: one event per gap, with `count`
    LATE = "late"
    LONGER = "longer"
    SHORTER = "shorter"
    RECOVERED = "recovered"  #: the first success after a failure
    AGENT_DOWN = "agent_down"
    AGENT_UP = "agent_up"
    FAILOVER = "failover"
    SWITCHOVER = "switchover"
    STANDBY_LOST = "standby_lost"
    STORE_ERROR = "store_error"
    SUMMARY = "summary"  #: events a channel's rate limit held back, counted
    TEST = "test"  #: `vigil notify test`


#: Events about the scheduler, not one job: routed to `[scheduler] notify`.
SYSTEM_EVENTS = frozenset(
    {
        EventKind.AGENT_DOWN,
        EventKind.AGENT_UP,
        EventKind.FAILOVER,
        EventKind.SWITCHOVER,
        EventKind.STANDBY_LOST,
        EventKind.STORE_ERROR,
    }
)
#: How many lines of a run's log a document carries at most, and how many bytes of them.
LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Event:
    """One event, as queued. `epoch` (of the active that queued it) and `log_tail` (read at delivery,
    from the run's log) are added to the document when it is delivered."""

    id: str
    event: EventKind
    at: datetime
    job: str | None = None
    run_id: int | None = None
    state: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    attempt: int | None = None
    final: bool | None = None  #: a run's end: no retry follows it
    count: int | None = None  #: missed fires in the gap; events a summary stands for
    first_at: datetime | None = None  #: the first missed fire; the first event a summary counts
    last_at: datetime | None = None
    agent: str | None = None
    duration_s: float | None = None  #: how long the run took (so far, for `longer`)
    threshold_s: float | None = None  #: the `late_after` / `warn_if_*` limit it crossed
    message: str | None = None  #: one sentence for people, when the fields do not say it all

    def to_json(self) -> str:
        """The stored document: every field, times as text, None left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = iso(value) if isinstance(value, datetime) else str(value) if f.name == "event" else value
        return json.dumps(out, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Event:
        data: dict[str, Any] = json.loads(text)
        for name in ("at", "first_at", "last_at"):
            if data.get(name) is not None:
                data[name] = parse_iso(data[name])
        data["event"] = EventKind(data["event"])
        return cls(**data)


def run_event_id(kind: EventKind, run_id: int) -> str:
    return f"{kind}:run:{run_id}"


#: Keys every document has (null when they do not apply), so a receiver can rely on them.
CORE_KEYS = ("id", "event", "at", "job", "run_id", "state", "exit_code", "reason", "attempt")


def document(stored: str, *, epoch: int, log_tail: list[str] | None = None) -> dict[str, Any]:
    """What a channel receives: the stored event with the epoch and the last lines of the run's log."""
    doc: dict[str, Any] = dict.fromkeys(CORE_KEYS)
    doc.update(json.loads(stored))
    doc["epoch"] = epoch
    doc["log_tail"] = bounded_tail(log_tail or [])
    return doc


def bounded_tail(lines: list[str]) -> list[str]:
    """At most LOG_TAIL_LINES lines and LOG_TAIL_BYTES bytes, the newest kept."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines[-LOG_TAIL_LINES:]):
        size += len(line.encode()) + 1
        if size > LOG_TAIL_BYTES:
            break
        kept.append(line)
    return kept[::-1]
