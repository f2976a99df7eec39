"""`GET /metrics` and `GET /healthz` of a node: what they read of the node, and when.

Two reads per scrape. On the event loop, what only this process knows (`NodeSnapshot`: active or
not, its open runs, its jobs' last successes, its store's health): cheap dictionary walks. In a
worker thread, what the ledger knows (`StoredView`: the leader's epoch and pid, the failovers, the
agents), through a reader connection of its own, so a slow disk never stalls the scheduler; the
text is rendered in that thread too.

Every node, active or standby, answers both. /healthz is 200 while the node can do its part (the
active's store takes writes; a standby can read the leader row it would take over from) and 503
with the same document otherwise: a node that cannot reach its store can neither schedule nor take
over, while a standby that is fine must never look unhealthy for being a standby.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from engine import __version__
from engine.errors import VigilError
from engine.http.app import HttpApp, Request, Response, json_response
from engine.http.metrics import RunMetrics
from engine.model import ACTIVE_STATES, QUEUED_STATES
from engine.paths import StatePaths
from engine.store.sqlite.reader import SqliteReader

if TYPE_CHECKING:
    from engine.ha.node import Node

#: The classic text format, which every Prometheus version reads (what generate_latest writes;
#: prometheus_client's CONTENT_TYPE_LATEST now names version 1.0.0, which Prometheus 2 does not know).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """What this process knows of itself, read on the event loop."""

    active: bool
    pid: int
    epoch: int | None  #: the active's own epoch; None on a standby (the ledger's is in StoredView)
    since: str | None  #: when it became active
    running: int = 0  #: launching or running
    pending: int = 0  #: pending or waiting (a retry, a queued run, a run waiting for an agent)
    last_success: dict[str, datetime] = field(default_factory=dict)
    store_fault: str | None = None  #: the active's store refuses writes: why


@dataclass(frozen=True, slots=True)
class StoredView:
    """What the ledger says, read in a worker thread; `error` when it could not be read."""

    epoch: int | None = None
    leader_pid: int | None = None
    failovers: dict[str, int] | None = None  #: by cause (crash, hang, switchover, epoch)
    agents: tuple[tuple[str, bool], ...] = ()
    error: str | None = None


def snapshot(node: Node) -> NodeSnapshot:
    scheduler = node.scheduler
    if node.server is None or scheduler is None:  # the control server serves from leadership to stop
        return NodeSnapshot(active=False, pid=node.pid, epoch=None, since=None)
    running = pending = 0
    for info in scheduler.table.runs.values():
        if info.state in ACTIVE_STATES:
            running += 1
        elif info.state in QUEUED_STATES:
            pending += 1
    health = scheduler.store.health
    return NodeSnapshot(
        active=True,
        pid=node.pid,
        epoch=scheduler.epoch,
        since=node.active_since,
        running=running,
        pending=pending,
        last_success=dict(scheduler.planner.last_success),
        store_fault=str(health.fault) if health.failing else None,
    )


def read_store(paths: StatePaths, *, full: bool = True) -> StoredView:
    """The ledger's view; `full=False` reads only the leader row (a standby's health check)."""
    reader = SqliteReader(paths)
    try:
        leader = reader.leader()
        if not full:
            return StoredView(epoch=leader.epoch, leader_pid=leader.pid)
        agents = tuple((agent.name, agent.up) for agent in reader.agents())
        return StoredView(leader.epoch, leader.pid, reader.failover_counts(), agents)
    except VigilError as exc:
        return StoredView(error=str(exc))
    finally:
        reader.close()


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, text)
    gauge.add_metric([], value)
    return gauge


def node_families(snap: NodeSnapshot, stored: StoredView) -> list[Metric]:
    """The gauges read at scrape time (the counters are RunMetrics')."""
    role = _gauge("vigil_is_active", "1 on the active node, 0 on a standby", 1 if snap.active else 0)
    families: list[Metric] = [role]
    epoch = snap.epoch if snap.epoch is not None else stored.epoch
    if epoch is not None:
        families.append(_gauge("vigil_epoch", "The leadership epoch (a standby: the ledger's)", epoch))
    if snap.active:
        families.append(_gauge("vigil_runs_running", "Runs launching or running now", snap.running))
        queued = "Runs pending or waiting now (retries, queued runs, runs waiting for an agent)"
        families.append(_gauge("vigil_runs_pending", queued, snap.pending))
        last = GaugeMetricFamily(
            "vigil_job_last_success_timestamp_seconds",
            "When each job's latest successful run ended (Unix time)",
            labels=["job"],
        )
        for job, at in sorted(snap.last_success.items()):
            last.add_metric([job], at.timestamp())
        families.append(last)
    if stored.failovers is not None:
        failovers = CounterMetricFamily(
            "vigil_failovers", "Takeovers the ledger has recorded, by cause (all nodes, all time)", labels=["cause"]
        )
        for cause, count in sorted(stored.failovers.items()):
            failovers.add_metric([cause], count)
        families.append(failovers)
    if stored.error is None:
        agents = GaugeMetricFamily(
            "vigil_agent_up", "0 once the active recorded the agent down (2 failed polls), else 1", labels=["agent"]
        )
        for name, up in stored.agents:
            agents.add_metric([name], 1 if up else 0)
        families.append(agents)
    read = "1 if this node could read its state database for this scrape"
    families.append(_gauge("vigil_store_up", read, 0 if stored.error is not None else 1))
    return families


class _Families:
    """A collector of families read once (one per scrape)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def render(metrics: RunMetrics, snap: NodeSnapshot, stored: StoredView) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(node_families(snap, stored)))
    return metrics.exposition() + generate_latest(registry)


def health_document(snap: NodeSnapshot, stored: StoredView | None) -> tuple[int, dict[str, object]]:
    """/healthz: its status and document."""
    epoch: int | None
    active_pid: int | None
    if snap.active:
        store = snap.store_fault or "ok"
        epoch, active_pid = snap.epoch, snap.pid
    else:
        assert stored is not None
        store = stored.error or "ok"
        epoch, active_pid = stored.epoch, stored.leader_pid
    doc: dict[str, object] = {
        "role": "active" if snap.active else "standby",
        "pid": snap.pid,
        "epoch": epoch,
        "active_pid": active_pid,  #: as the ledger last recorded it (a crashed active's until the takeover)
        "since": snap.since,
        "store": store,
        "version": __version__,
    }
    return (200 if store == "ok" else 503), doc


def node_app(node: Node, metrics: RunMetrics) -> HttpApp:
    """The listener's routes for `node`."""
    app = HttpApp()
    paths = node.paths

    async def get_metrics(request: Request) -> Response:
        snap = snapshot(node)

        def work() -> bytes:
            return render(metrics, snap, read_store(paths))

        return Response(200, await asyncio.to_thread(work), TEXT_FORMAT)

    async def get_healthz(request: Request) -> Response:
        snap = snapshot(node)
        stored = None if snap.active else await asyncio.to_thread(read_store, paths, full=False)
        status, doc = health_document(snap, stored)
        return json_response(status, doc)

    app.route("GET", "/metrics", get_metrics)
    app.route("GET", "/healthz", get_healthz)
    return app
