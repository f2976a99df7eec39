"""The cluster view: the active and its standbys, heartbeat age, failovers, and the audit trail."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import Static

from tui.data import AuditRow, FailoverRow, Snapshot
from tui.format import NONE_TEXT, fmt_age, fmt_time
from tui.screens.base import ViewScreen
from tui.widgets.vtable import Cell, Column, VirtualTable

FAILOVER_COLUMNS = (
    Column("at", "AT", 14),
    Column("cause", "CAUSE", 0, min_width=8),
    Column("pids", "FROM → TO", 15),
    Column("gap", "GAP", 9, justify="right"),
    Column("epoch", "EPOCH", 5, justify="right"),
)
AUDIT_COLUMNS = (
    Column("at", "AT", 14),
    Column("user", "USER", 10),
    Column("action", "ACTION", 9),
    Column("target", "TARGET", 0, min_width=8, weight=2),
    Column("result", "RESULT", 0, min_width=8, weight=3),
)


def cluster_markup(snap: Snapshot, now_text: str) -> str:
    cluster = snap.cluster
    lines = []
    active = cluster.active
    if active is None:
        why = cluster.problem or "no active scheduler"
        detail = "" if why == "no active scheduler" else f" ({escape(why)})"
        lines.append(f"[$error b]○ No active scheduler[/]{detail} · at {now_text}")
    else:
        since = fmt_time(active.since, snap.taken_at)
        lag = NONE_TEXT if active.loop_lag_ms is None else f"{active.loop_lag_ms:.1f} ms"
        lines.append(
            f"[$success b]● Active[/] pid {active.pid} · epoch {active.epoch} · since {since} · "
            f"heartbeat {fmt_age(active.heartbeat_age_s)} · lag {lag}"
        )
    if cluster.standbys:
        for pid, waiting_since in cluster.standbys:
            lines.append(f"[$accent]◌ Standby[/] pid {pid} · waiting since {fmt_time(waiting_since, snap.taken_at)}")
    else:
        lines.append("[$text-muted]No standby connected (start another `vigil up` on this state for failover).[/]")
    return "\n".join(lines)


class ClusterScreen(ViewScreen):
    VIEW = "cluster"
    FILTERABLE = False

    def __init__(self) -> None:
        super().__init__()
        self.failovers: tuple[FailoverRow, ...] = ()
        self.audit: tuple[AuditRow, ...] = ()

    def compose_body(self) -> ComposeResult:
        yield Static("", id="cluster-panel")
        with Vertical(id="cluster-tables"):
            yield Static("Recent failovers", classes="section-title")
            yield VirtualTable(
                FAILOVER_COLUMNS, self.render_failover, empty_text="No failovers recorded.", id="failovers"
            )
            yield Static("Recent actions (audit)", classes="section-title")
            yield VirtualTable(AUDIT_COLUMNS, self.render_audit, empty_text="No actions recorded.", id="audit")

    def on_mount(self) -> None:
        self.query_one("#failovers", VirtualTable).focus()

    def focus_main(self) -> None:
        self.query_one("#failovers", VirtualTable).focus()

    def on_snapshot(self, snap: Snapshot) -> None:
        now = self.vigil.now()
        self.query_one("#cluster-panel", Static).update(cluster_markup(snap, fmt_time(now.isoformat(), now)))
        if snap.failovers != self.failovers:
            self.failovers = snap.failovers
            self.query_one("#failovers", VirtualTable).set_rows([str(i) for i in range(len(snap.failovers))])
        if snap.audit != self.audit:
            self.audit = snap.audit
            self.query_one("#audit", VirtualTable).set_rows([str(i) for i in range(len(snap.audit))])
        self.set_summary(f"{len(snap.cluster.standbys)} standby · {len(snap.failovers)} failovers")

    def render_failover(self, key: str) -> Sequence[Cell]:
        fo = self.failovers[int(key)]
        now = self.vigil.now()
        gap = NONE_TEXT if fo.gap_ms is None else f"{fo.gap_ms:,.0f} ms"
        tone = "warn" if fo.cause not in ("switchover",) else "muted"
        return [
            fmt_time(fo.at, now),
            (fo.cause, tone),
            f"{fo.from_pid or '?'} → {fo.to_pid}",
            gap,
            str(fo.epoch),
        ]

    def render_audit(self, key: str) -> Sequence[Cell]:
        entry = self.audit[int(key)]
        now = self.vigil.now()
        tone = "fail" if entry.result.startswith("refused") else "ok"
        return [fmt_time(entry.at, now), entry.user, entry.action, entry.target, (entry.result, tone)]
