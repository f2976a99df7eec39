"""The cluster view: the active and its standbys, heartbeat age, failovers, the notification
channels (undelivered events per channel and the latest error), and the audit trail."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import Static

from engine.model import NotificationState
from tui.data import AuditRow, ChannelHealth, FailoverRow, Snapshot
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
CHANNEL_COLUMNS = (
    Column("channel", "CHANNEL", 12),
    Column("pending", "PENDING", 7, justify="right"),
    Column("failed", "FAILED", 6, justify="right"),
    Column("held", "HELD", 5, justify="right"),
    Column("sent", "LAST SENT", 14),
    Column("error", "LAST ERROR", 0, min_width=10, weight=3),
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
    for use in cluster.resources:
        tone = "$warning" if use.used >= use.limit else "$text"
        holders = f" · held by runs {', '.join(map(str, use.holders[:8]))}" if use.holders else ""
        more = "…" if len(use.holders) > 8 else ""
        waiting = f" · [$warning]{use.waiting} waiting[/]" if use.waiting else ""
        lines.append(f"[{tone}]▣ {escape(use.name)} {use.used}/{use.limit}[/]{holders}{more}{waiting}")
    return "\n".join(lines)


class ClusterScreen(ViewScreen):
    VIEW = "cluster"
    FILTERABLE = False

    def __init__(self) -> None:
        super().__init__()
        self.failovers: tuple[FailoverRow, ...] = ()
        self.audit: tuple[AuditRow, ...] = ()
        self.channels: tuple[ChannelHealth, ...] = ()

    def compose_body(self) -> ComposeResult:
        yield Static("", id="cluster-panel")
        with Vertical(id="cluster-tables"):
            yield Static("Recent failovers", classes="section-title")
            yield VirtualTable(
                FAILOVER_COLUMNS, self.render_failover, empty_text="No failovers recorded.", id="failovers"
            )
            yield Static(
                "Notification channels (undelivered: pending, failed; held: rate-limited)", classes="section-title"
            )
            yield VirtualTable(
                CHANNEL_COLUMNS, self.render_channel, empty_text="No notifications queued.", id="channels"
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
        if snap.channels != self.channels:
            self.channels = snap.channels
            self.query_one("#channels", VirtualTable).set_rows([str(i) for i in range(len(snap.channels))])
        if snap.audit != self.audit:
            self.audit = snap.audit
            self.query_one("#audit", VirtualTable).set_rows([str(i) for i in range(len(snap.audit))])
        undelivered = sum(
            c.counts.get(NotificationState.PENDING, 0) + c.counts.get(NotificationState.FAILED, 0)
            for c in snap.channels
        )
        self.set_summary(
            f"{len(snap.cluster.standbys)} standby · {len(snap.failovers)} failovers · {undelivered} undelivered"
        )

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

    def render_channel(self, key: str) -> Sequence[Cell]:
        channel = self.channels[int(key)]
        pending = channel.counts.get(NotificationState.PENDING, 0)
        failed = channel.counts.get(NotificationState.FAILED, 0)
        held = channel.counts.get(NotificationState.SUPPRESSED, 0)
        name: Cell = (channel.channel, "fail") if channel.failing else channel.channel
        error: Cell = (channel.last_error, "fail") if channel.last_error else NONE_TEXT
        return [
            name,
            (str(pending), "warn") if pending else "0",
            (str(failed), "fail") if failed else "0",
            str(held),
            fmt_time(channel.last_sent_at, self.vigil.now()) if channel.last_sent_at else NONE_TEXT,
            error,
        ]

    def render_audit(self, key: str) -> Sequence[Cell]:
        entry = self.audit[int(key)]
        now = self.vigil.now()
        tone = "fail" if entry.result.startswith("refused") else "ok"
        return [fmt_time(entry.at, now), entry.user, entry.action, entry.target, (entry.result, tone)]
