"""Each write intent as the named statement that records it, with its parameters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from engine.clock import iso
from engine.store import intents as i
from engine.store.sqlite.queries import QUERIES

Params = dict[str, Any]
Bound = tuple[str, Params]


def bind(intent: i.Intent, epoch: int) -> Bound:
    """The SQL text and named parameters that record `intent` under `epoch`."""
    try:
        binder = _BINDERS[type(intent)]  # a dict, not a match: this runs for every write of every run
    except KeyError:
        raise TypeError(f"not a store intent: {intent!r}") from None
    return binder(intent, epoch)


def _new_run(intent: i.NewRun, epoch: int) -> Bound:
    return QUERIES["new_run"], {
        "id": intent.id,
        "job": intent.job,
        "scheduled_for": iso(intent.scheduled_for),
        "attempt": intent.attempt,
        "state": str(intent.state),
        "reason": intent.reason,
        "trigger": intent.trigger,
        "epoch": epoch,
        "created_at": iso(intent.created_at),
        "not_before": iso(intent.not_before),
        "ended_at": iso(intent.ended_at),
        "command": intent.command,
        "agent": intent.agent,
        "flow_id": intent.flow_id,
    }


def _run_launching(intent: i.RunLaunching, epoch: int) -> Bound:
    if intent.reason is None:
        return QUERIES["run_launching"], {"run_id": intent.run_id, "epoch": epoch}
    return QUERIES["run_launching_with_reason"], {
        "run_id": intent.run_id,
        "reason": intent.reason,
        "epoch": epoch,
    }


def _run_started(intent: i.RunStarted, epoch: int) -> Bound:
    name = "run_started_clear_reason" if intent.clear_reason else "run_started"
    return QUERIES[name], {
        "run_id": intent.run_id,
        "started_at": iso(intent.started_at),
        "deadline": iso(intent.deadline),
        "epoch": epoch,
    }


def _start_restated(intent: i.StartRestated, epoch: int) -> Bound:
    return QUERIES["start_restated"], {
        "run_id": intent.run_id,
        "started_at": iso(intent.started_at),
        "deadline": iso(intent.deadline),
        "epoch": epoch,
    }


def _run_finished(intent: i.RunFinished, epoch: int) -> Bound:
    return QUERIES["run_finished"], {
        "run_id": intent.run_id,
        "state": str(intent.state),
        "reason": intent.reason,
        "exit_code": intent.exit_code,
        "ended_at": iso(intent.ended_at),
        "pid": intent.pid,
        "outputs": json.dumps(intent.outputs) if intent.outputs else None,
        "cpu_s": intent.cpu_s,
        "peak_rss": intent.peak_rss,
        "epoch": epoch,
    }


def _kill_requested(intent: i.KillRequested, epoch: int) -> Bound:
    return QUERIES["kill_requested"], {"run_id": intent.run_id, "cause": intent.cause, "epoch": epoch}


def _agent_chosen(intent: i.AgentChosen, epoch: int) -> Bound:
    return QUERIES["agent_chosen"], {"run_id": intent.run_id, "agent": intent.agent, "epoch": epoch}


def _run_waiting(intent: i.RunWaiting, epoch: int) -> Bound:
    return QUERIES["run_waiting"], {"run_id": intent.run_id, "reason": intent.reason, "epoch": epoch}


def _run_blocked(intent: i.RunBlocked, epoch: int) -> Bound:
    return QUERIES["run_blocked"], {"run_id": intent.run_id, "reason": intent.reason, "epoch": epoch}


def _runs_pruned(intent: i.RunsPruned, epoch: int) -> Bound:
    return QUERIES["runs_pruned"], {"run_ids": json.dumps(list(intent.run_ids)), "epoch": epoch}


def _notifications_pruned(intent: i.NotificationsPruned, epoch: int) -> Bound:
    return QUERIES["notifications_pruned"], {"cutoff": iso(intent.cutoff), "epoch": epoch}


def _run_id_mark(intent: i.RunIdMark, epoch: int) -> Bound:
    return QUERIES["run_id_mark"], {"run_id": intent.run_id, "epoch": epoch}


def _last_fire(intent: i.LastFire, epoch: int) -> Bound:
    if intent.at is None:
        return QUERIES["last_fire_forgotten"], {"job": intent.job, "epoch": epoch}
    return QUERIES["last_fire"], {"job": intent.job, "at": iso(intent.at), "epoch": epoch}


def _paused(intent: i.Paused, epoch: int) -> Bound:
    return QUERIES["paused"], {"job": intent.job, "paused": int(intent.paused), "epoch": epoch}


def _held(intent: i.Held, epoch: int) -> Bound:
    return QUERIES["held"], {"job": intent.job, "held": int(intent.held), "epoch": epoch}


def _catalog_upsert(intent: i.CatalogUpsert, epoch: int) -> Bound:
    return QUERIES["catalog_upsert"], {
        "name": intent.name,
        "path": intent.path,
        "schedule": intent.schedule,
        "enabled": int(intent.enabled),
        "agent": intent.agent,
        "description": intent.description,
        "tags": intent.tags,
        "next_fire": iso(intent.next_fire),
        "error": intent.error,
        "priority": intent.priority,
        "locks": intent.locks,
        "epoch": epoch,
    }


def _catalog_drop(intent: i.CatalogDrop, epoch: int) -> Bound:
    return QUERIES["catalog_drop"], {"name": intent.name, "epoch": epoch}


def _catalog_cleared(intent: i.CatalogCleared, epoch: int) -> Bound:
    return QUERIES["catalog_cleared"], {"epoch": epoch}


def _next_fire(intent: i.NextFire, epoch: int) -> Bound:
    return QUERIES["next_fire"], {"job": intent.job, "at": iso(intent.at), "epoch": epoch}


def _agent_seen(intent: i.AgentSeen, epoch: int) -> Bound:
    return QUERIES["agent_seen"], {
        "name": intent.name,
        "url": intent.url,
        "up": int(intent.up),
        "last_contact": iso(intent.last_contact),
        "version": intent.version,
        "cpu_percent": intent.cpu_percent,
        "memory_percent": intent.memory_percent,
        "load1": intent.load1,
        "running": intent.running,
        "error": intent.error,
        "epoch": epoch,
    }


def _agent_dropped(intent: i.AgentDropped, epoch: int) -> Bound:
    return QUERIES["agent_dropped"], {"name": intent.name, "epoch": epoch}


def _audit(intent: i.Audit, epoch: int) -> Bound:
    return QUERIES["audit"], {
        "at": iso(intent.at),
        "user": intent.user,
        "action": intent.action,
        "target": intent.target,
        "result": intent.result,
        "epoch": epoch,
    }


def _failover(intent: i.Failover, epoch: int) -> Bound:
    return QUERIES["failover"], {
        "at": iso(intent.at),
        "from_pid": intent.from_pid,
        "to_pid": intent.to_pid,
        "cause": intent.cause,
        "gap_ms": intent.gap_ms,
        "epoch": epoch,
    }


def _clean_stop(intent: i.CleanStop, epoch: int) -> Bound:
    return QUERIES["clean_stop"], {"epoch": epoch}


def _run_warned(intent: i.RunWarned, epoch: int) -> Bound:
    return QUERIES["run_warned"], {
        "run_id": intent.run_id,
        "warning": str(intent.warning),
        "at": iso(intent.at),
        "epoch": epoch,
    }


def _notification_queued(intent: i.NotificationQueued, epoch: int) -> Bound:
    event = intent.event
    return QUERIES["notification_queued"], {
        "event_id": event.id,
        "channels": json.dumps(list(intent.channels)),
        "event": str(event.event),
        "job": event.job,
        "run_id": event.run_id,
        "created_at": iso(event.at),
        "not_before": iso(intent.not_before),
        "document": event.to_json(),
        "epoch": epoch,
    }


def _notification_sent(intent: i.NotificationSent, epoch: int) -> Bound:
    return QUERIES["notification_sent"], {
        "event_id": intent.event_id,
        "channel": intent.channel,
        "at": iso(intent.at),
        "attempts": intent.attempts,
        "epoch": epoch,
    }


def _notification_retry(intent: i.NotificationRetry, epoch: int) -> Bound:
    return QUERIES["notification_retry"], {
        "event_id": intent.event_id,
        "channel": intent.channel,
        "at": iso(intent.at),
        "attempts": intent.attempts,
        "next_attempt_at": iso(intent.next_attempt_at),
        "error": intent.error,
        "epoch": epoch,
    }


def _notification_failed(intent: i.NotificationFailed, epoch: int) -> Bound:
    return QUERIES["notification_failed"], {
        "event_id": intent.event_id,
        "channel": intent.channel,
        "at": iso(intent.at),
        "attempts": intent.attempts,
        "error": intent.error,
        "epoch": epoch,
    }


def _notification_suppressed(intent: i.NotificationSuppressed, epoch: int) -> Bound:
    return QUERIES["notification_suppressed"], {
        "event_ids": json.dumps(list(intent.event_ids)),
        "channel": intent.channel,
        "summary_id": intent.summary_id,
        "epoch": epoch,
    }


def _summary_recounted(intent: i.SummaryRecounted, epoch: int) -> Bound:
    event = intent.event
    return QUERIES["summary_recounted"], {
        "event_id": event.id,
        "channel": intent.channel,
        "event": str(event.event),
        "job": event.job,
        "run_id": event.run_id,
        "created_at": iso(event.at),
        "not_before": iso(intent.not_before),
        "document": event.to_json(),
        "epoch": epoch,
    }


_BINDERS: dict[type, Callable[[Any, int], Bound]] = {
    i.NewRun: _new_run,
    i.RunLaunching: _run_launching,
    i.RunStarted: _run_started,
    i.StartRestated: _start_restated,
    i.RunFinished: _run_finished,
    i.KillRequested: _kill_requested,
    i.AgentChosen: _agent_chosen,
    i.RunWaiting: _run_waiting,
    i.RunBlocked: _run_blocked,
    i.RunsPruned: _runs_pruned,
    i.NotificationsPruned: _notifications_pruned,
    i.RunIdMark: _run_id_mark,
    i.LastFire: _last_fire,
    i.Paused: _paused,
    i.Held: _held,
    i.CatalogUpsert: _catalog_upsert,
    i.CatalogDrop: _catalog_drop,
    i.CatalogCleared: _catalog_cleared,
    i.NextFire: _next_fire,
    i.AgentSeen: _agent_seen,
    i.AgentDropped: _agent_dropped,
    i.Audit: _audit,
    i.Failover: _failover,
    i.CleanStop: _clean_stop,
    i.RunWarned: _run_warned,
    i.NotificationQueued: _notification_queued,
    i.NotificationSent: _notification_sent,
    i.NotificationRetry: _notification_retry,
    i.NotificationFailed: _notification_failed,
    i.NotificationSuppressed: _notification_suppressed,
    i.SummaryRecounted: _summary_recounted,
}
