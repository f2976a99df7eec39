"""The title and body a person reads (an Apprise channel: mail, chat, push), made from an event's
document (pure).

`FAILED etl/load (run 42, exit 3, attempt 3 of 3, final)`, then the reason, the message, the other
fields that say something, the event id (so a receiver can drop a duplicate) and the log tail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.model import format_duration

#: How Apprise colours an event: "failure", "warning", "success" or "info" (its NotifyType values).
_SEVERITY = {
    "failed": "failure",
    "timed_out": "failure",
    "killed": "failure",
    "unknown": "failure",
    "agent_down": "failure",
    "standby_lost": "failure",
    "store_error": "failure",
    "missed": "warning",
    "late": "warning",
    "longer": "warning",
    "shorter": "warning",
    "failover": "warning",
    "switchover": "info",
    "summary": "warning",
    "recovered": "success",
    "agent_up": "success",
}


def severity(doc: Mapping[str, Any]) -> str:
    return _SEVERITY.get(str(doc.get("event")), "info")


def title(doc: Mapping[str, Any]) -> str:
    kind = str(doc.get("event", "event"))
    if kind == "summary":
        return f"SUMMARY: {doc.get('message') or 'events held back by the rate limit'}"
    subject = doc.get("job") or (f"agent {doc['agent']}" if doc.get("agent") else "scheduler")
    details = _details(doc)
    return f"{kind.replace('_', ' ').upper()} {subject}" + (f" ({', '.join(details)})" if details else "")


def _details(doc: Mapping[str, Any]) -> list[str]:
    details: list[str] = []
    if doc.get("run_id") is not None:
        details.append(f"run {doc['run_id']}")
    if doc.get("exit_code") is not None:
        details.append(f"exit {doc['exit_code']}")
    elif doc.get("state") and doc.get("state") != doc.get("event"):
        details.append(str(doc["state"]))
    attempt = doc.get("attempt")
    if attempt is not None:
        if doc.get("final") is True:
            details.append(f"attempt {attempt} of {attempt}, final")
        elif doc.get("final") is False:
            details.append(f"attempt {attempt}, will retry")
        else:
            details.append(f"attempt {attempt}")
    if doc.get("count") is not None and doc.get("event") == "missed":
        details.append(f"{doc['count']} fires")
    return details


def body(doc: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for key in ("reason", "message"):
        if doc.get(key):
            lines.append(str(doc[key]))
    if doc.get("duration_s") is not None:
        lines.append(f"ran {format_duration(float(doc['duration_s']))}")
    if doc.get("threshold_s") is not None:
        lines.append(f"limit {format_duration(float(doc['threshold_s']))}")
    if doc.get("first_at") and doc.get("last_at"):
        lines.append(f"from {doc['first_at']} to {doc['last_at']}")
    if doc.get("agent") and doc.get("job"):
        lines.append(f"agent {doc['agent']}")
    lines.append(f"at {doc.get('at')} · epoch {doc.get('epoch')} · id {doc.get('id')}")
    tail = doc.get("log_tail") or []
    if tail:
        lines.append("")
        lines.append("Last line of the log:" if len(tail) == 1 else f"Last {len(tail)} lines of the log:")
        lines.extend(str(line) for line in tail)
    return "\n".join(lines)
