"""Each write intent as the named statement that records it, with its parameters."""

from __future__ import annotations

import json
from typing import Any

from engine.clock import iso
from engine.store import intents as i
from engine.store.sqlite.queries import QUERIES

Params = dict[str, Any]


def bind(intent: i.Intent, epoch: int) -> tuple[str, Params]:
    """The SQL text and named parameters that record `intent` under `epoch`."""
    match intent:
        case i.NewRun():
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
            }
        case i.RunLaunching(run_id=run_id, reason=None):
            return QUERIES["run_launching"], {"run_id": run_id, "epoch": epoch}
        case i.RunLaunching():
            return QUERIES["run_launching_with_reason"], {
                "run_id": intent.run_id,
                "reason": intent.reason,
                "epoch": epoch,
            }
        case i.RunStarted():
            name = "run_started_clear_reason" if intent.clear_reason else "run_started"
            return QUERIES[name], {
                "run_id": intent.run_id,
                "started_at": iso(intent.started_at),
                "deadline": iso(intent.deadline),
                "epoch": epoch,
            }
        case i.StartRestated():
            return QUERIES["start_restated"], {
                "run_id": intent.run_id,
                "started_at": iso(intent.started_at),
                "deadline": iso(intent.deadline),
                "epoch": epoch,
            }
        case i.RunFinished():
            return QUERIES["run_finished"], {
                "run_id": intent.run_id,
                "state": str(intent.state),
                "reason": intent.reason,
                "exit_code": intent.exit_code,
                "ended_at": iso(intent.ended_at),
                "pid": intent.pid,
                "cpu_s": intent.cpu_s,
                "peak_rss": intent.peak_rss,
                "epoch": epoch,
            }
        case i.KillRequested():
            return QUERIES["kill_requested"], {"run_id": intent.run_id, "cause": intent.cause, "epoch": epoch}
        case i.AgentChosen():
            return QUERIES["agent_chosen"], {"run_id": intent.run_id, "agent": intent.agent, "epoch": epoch}
        case i.RunWaiting():
            return QUERIES["run_waiting"], {"run_id": intent.run_id, "reason": intent.reason, "epoch": epoch}
        case i.RunsPruned():
            return QUERIES["runs_pruned"], {"run_ids": json.dumps(list(intent.run_ids)), "epoch": epoch}
        case i.RunIdMark():
            return QUERIES["run_id_mark"], {"run_id": intent.run_id, "epoch": epoch}
        case i.LastFire(job=job, at=None):
            return QUERIES["last_fire_forgotten"], {"job": job, "epoch": epoch}
        case i.LastFire():
            return QUERIES["last_fire"], {"job": intent.job, "at": iso(intent.at), "epoch": epoch}
        case i.Paused():
            return QUERIES["paused"], {"job": intent.job, "paused": int(intent.paused), "epoch": epoch}
        case i.CatalogUpsert():
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
                "epoch": epoch,
            }
        case i.CatalogDrop():
            return QUERIES["catalog_drop"], {"name": intent.name, "epoch": epoch}
        case i.CatalogCleared():
            return QUERIES["catalog_cleared"], {"epoch": epoch}
        case i.NextFire():
            return QUERIES["next_fire"], {"job": intent.job, "at": iso(intent.at), "epoch": epoch}
        case i.AgentSeen():
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
        case i.AgentDropped():
            return QUERIES["agent_dropped"], {"name": intent.name, "epoch": epoch}
        case i.Audit():
            return QUERIES["audit"], {
                "at": iso(intent.at),
                "user": intent.user,
                "action": intent.action,
                "target": intent.target,
                "result": intent.result,
                "epoch": epoch,
            }
        case i.Failover():
            return QUERIES["failover"], {
                "at": iso(intent.at),
                "from_pid": intent.from_pid,
                "to_pid": intent.to_pid,
                "cause": intent.cause,
                "gap_ms": intent.gap_ms,
                "epoch": epoch,
            }
        case i.CleanStop():
            return QUERIES["clean_stop"], {"epoch": epoch}
    raise TypeError(f"not a store intent: {intent!r}")
