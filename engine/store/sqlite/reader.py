"""The SQLite readers' side of the store: what the CLI and the dashboard read, as typed records.

Reads are short autocommit statements on one cached, query-only connection: nothing here holds a
transaction open across calls, so readers never pin the WAL or slow the scheduler. Every failure is
a StoreError naming the database, never a traceback.

Imports only `sqlite3` and the store's own modules: `vigil runs --json` comes through here, so this
stays light (no writer thread, no config parser). `SqliteReader` implements `engine.store.StoreReader`.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import datetime
from typing import Any

from engine.clock import parse_iso
from engine.errors import NotFoundError, StoreError
from engine.ids import as_row_id
from engine.model import (
    AgentRow,
    AuditRow,
    FailoverRow,
    FlowRow,
    JobRow,
    LeaderRow,
    Notification,
    NotificationState,
    Run,
    RunsWindow,
    flow_summary,
)
from engine.paths import StatePaths
from engine.store.abc import ChannelHealth
from engine.store.sqlite.db import connect, store_error, tables_of
from engine.store.sqlite.queries import QUERIES
from engine.store.sqlite.rows import leader_of, notification_of, required_time, run_of

#: SQLite's integer range: a count or page bound that excludes nothing.
_LOWEST, _HIGHEST = -(1 << 63), (1 << 63) - 1


def _filtered(base: str, job: str | None, state: str | None) -> str:
    """The variant of a runs statement for these filters (each variant has its own index path)."""
    return base + ("_of_job" if job else "") + ("_in_state" if state else "")


class SqliteReader:
    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self._conn: sqlite3.Connection | None = None
        self._outbox = False  #: the database has the outbox tables (a database older than them has not)
        self._flows: bool | None = None  #: the database has the flow columns; None: not yet asked

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self.paths, create=False)  # a reader never makes state
            try:
                conn.execute(QUERIES["query_only"])
                self._outbox = {"notifications", "run_warnings"} <= tables_of(conn)
            except sqlite3.Error as exc:
                conn.close()
                raise store_error(exc, self.paths.db) from exc
            self._conn = conn
        return self._conn

    @property
    def has_outbox(self) -> bool:
        """The database has the outbox tables (one made by a Vigil before them has not)."""
        _ = self.conn  # opening the connection learns it
        return self._outbox

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[sqlite3.Row]:
        # Every read goes through here: a broken database is a StoreError naming it, never a traceback.
        try:
            return self.conn.execute(QUERIES[name], params or {}).fetchall()
        except sqlite3.Error as exc:
            raise store_error(exc, self.paths.db) from exc

    def _scalar(self, name: str, params: dict[str, Any] | None = None) -> int:
        rows = self._rows(name, params)
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def _plain(self, name: str) -> None:
        """A statement with no rows (transaction control)."""
        try:
            self.conn.execute(QUERIES[name])
        except sqlite3.Error as exc:
            raise store_error(exc, self.paths.db) from exc

    def _runs(self, name: str, params: dict[str, Any] | None = None) -> list[Run]:
        """Runs read by a statement, each with its warnings."""
        runs = [run_of(row) for row in self._rows(name, params)]
        if not runs or not self._outbox:
            return runs
        warned: dict[int, list[str]] = {}
        for row in self._rows("warnings_of_runs", {"run_ids": json.dumps([run.id for run in runs])}):
            warned.setdefault(int(row["run_id"]), []).append(row["warning"])
        if not warned:
            return runs
        return [dataclasses.replace(run, warnings=tuple(warned[run.id])) if run.id in warned else run for run in runs]

    # ------------------------------------------------------------ runs

    def runs(
        self, *, job: str | None = None, state: str | None = None, limit: int = 50, before_id: int | None = None
    ) -> list[Run]:
        """Newest first, keyset-paged by id so a page costs the same at any depth."""
        last = _HIGHEST if before_id is None else before_id - 1
        params = {"job": job, "state": state, "last": last, "limit": limit}
        return self._runs(_filtered("runs_page", job, state), params)

    def flow_runs(self, flow_id: int, *, limit: int = 1000, before_id: int | None = None) -> list[Run]:
        """The runs of one flow, newest first (`vigil runs --flow`); a run in no flow is its own."""
        if as_row_id(flow_id) is None:
            return []
        last = _HIGHEST if before_id is None else before_id - 1
        if not self._has_flows():
            return self.runs_by_ids([flow_id])
        return self._runs("flow_runs_page", {"flow_id": flow_id, "last": last, "limit": limit})

    def flow(self, flow_id: int) -> FlowRow:
        """One flow's summary; NotFoundError when no run has that flow id."""
        runs = self.flow_runs(flow_id, limit=_HIGHEST)
        if not runs:
            raise NotFoundError(f"no flow with id {flow_id}")
        return flow_summary(flow_id, runs)

    def flows(self, *, job: str | None = None, limit: int = 50, before_id: int | None = None) -> list[FlowRow]:
        """The newest flows (runs that started steps of others), newest first; `job`: with a step of it."""
        if not self._has_flows():
            return []
        last = _HIGHEST if before_id is None else before_id - 1
        name = "flows_page_of_job" if job else "flows_page"
        ids = [int(row[0]) for row in self._rows(name, {"job": job, "last": last, "limit": limit})]
        if not ids:
            return []
        by_flow: dict[int, list[Run]] = {flow_id: [] for flow_id in ids}
        for run in self._runs("runs_of_flows", {"flow_ids": json.dumps(ids)}):
            if run.flow_id is not None and run.flow_id in by_flow:
                by_flow[run.flow_id].append(run)
        return [flow_summary(flow_id, runs) for flow_id, runs in by_flow.items() if runs]

    def _has_flows(self) -> bool:
        """The database has the flow columns (an older one gets them when an active opens it)."""
        if self._flows is None:
            try:
                columns = {row[1] for row in self.conn.execute("PRAGMA table_info(runs)")}
            except sqlite3.Error as exc:
                raise store_error(exc, self.paths.db) from exc
            self._flows = "flow_id" in columns
        return self._flows

    def run(self, run_id: int) -> Run:
        if as_row_id(run_id) is None:  # beyond SQLite's integers: no such run, not an OverflowError
            raise NotFoundError(f"no run with id {run_id}")
        runs = self._runs("run", {"run_id": run_id})
        if not runs:
            raise NotFoundError(f"no run with id {run_id}")
        return runs[0]

    def runs_window(
        self,
        *,
        job: str | None = None,
        state: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        count_base: tuple[int, int] | None = None,
    ) -> RunsWindow:
        """A keyset page with its position and the total, all from one read transaction.

        Counting every matching run costs up to ~50 ms per million rows, too much for every refresh.
        A full count is taken only without `count_base`: up to an anchor id below every open run, so
        the rows it counted are finished and stay as they are; later calls recount only above it
        (new runs and runs still open: a short index range). Position and total thus always agree
        with the page shown (a "1–22 of 21" cannot happen), even while runs arrive and change state.
        """
        counted = _filtered("count_runs", job, state)

        def count(low: int, high: int) -> int:
            return self._scalar(counted, {"job": job, "state": state, "low": low, "high": high})

        self._plain("begin_read")
        try:
            rows = self.runs(job=job, state=state, limit=limit, before_id=before_id)
            newer = count(before_id, _HIGHEST) if before_id is not None else 0
            if count_base is None:
                anchor = self._scalar("count_anchor")
                count_base = (anchor, count(_LOWEST, anchor))
            total = count_base[1] + count(count_base[0] + 1, _HIGHEST)
        finally:
            self._plain("end_read")
        # Runs pruned since the full count leave `total` a little high until the next one, never low.
        return RunsWindow(rows, newer, max(total, newer + len(rows)), count_base)

    def counts_by_state(self) -> dict[str, int]:
        return {row["state"]: int(row["n"]) for row in self._rows("counts_by_state")}

    def max_run_id(self) -> int:
        """The newest run id (0 when there are none): where an incremental reader starts."""
        return self._scalar("max_run_id")

    def runs_after(self, after_id: int, limit: int = 1000) -> list[Run]:
        """Runs with id > `after_id`, oldest first: what is new since a reader last looked."""
        return self._runs("runs_after", {"after": after_id, "limit": limit})

    def runs_by_ids(self, ids: list[int]) -> list[Run]:
        """Current rows of the given runs (missing ids are left out): re-reads runs still open."""
        return self._runs("runs_by_ids", {"run_ids": json.dumps(ids)})

    def latest_run_per_job(self) -> dict[str, Run]:
        """The newest run of every catalogued job, one index seek per job (O(jobs), not O(runs))."""
        return {run.job: run for run in self._runs("latest_run_per_job")}

    def recent_runs_of(self, names: list[str], per_job: int) -> dict[str, list[Run]]:
        """The newest `per_job` runs of each named job, newest first (index range per job)."""
        return {name: self._runs("recent_runs_of_job", {"job": name, "limit": per_job}) for name in names}

    # ------------------------------------------------------------ jobs, leader, agents, history

    def jobs(self) -> list[JobRow]:
        """The active's catalog of loaded jobs with their pause flag, by name."""
        return [
            JobRow(
                name=row["name"],
                path=row["path"],
                schedule=row["schedule"],
                enabled=bool(row["enabled"]),
                agent=row["agent"],
                description=row["description"],
                tags=row["tags"],
                next_fire=parse_iso(row["next_fire"]),
                error=row["error"],
                paused=bool(row["paused"]),
                loaded=bool(row["loaded"]),
                held=bool(row["held"]),
                priority=int(row["priority"] or 0),
                locks=row["locks"] or "",
            )
            for row in self._rows("catalog")
        ]

    def paused_jobs(self) -> set[str]:
        return {row["job"] for row in self._rows("paused_jobs")}

    def held_jobs(self) -> set[str]:
        """The jobs held by `vigil hold` (their new runs wait pending)."""
        return {row["job"] for row in self._rows("held_jobs")}

    def leader(self) -> LeaderRow:
        rows = self._rows("leader")
        if not rows:
            raise StoreError(f"state database {self.paths.db} has no leader row: not a Vigil database")
        return leader_of(rows[0])

    def failovers(self, limit: int = 10) -> list[FailoverRow]:
        return [
            FailoverRow(
                at=required_time(row, "at"),
                from_pid=row["from_pid"],
                to_pid=int(row["to_pid"]),
                cause=row["cause"],
                gap_ms=row["gap_ms"],
                epoch=int(row["epoch"]),
            )
            for row in self._rows("recent_failovers", {"limit": limit})
        ]

    def failover_counts(self) -> dict[str, int]:
        return {str(row["cause"]): int(row["n"]) for row in self._rows("failover_counts")}

    def agents(self) -> list[AgentRow]:
        return [
            AgentRow(
                name=row["name"],
                url=row["url"],
                up=bool(row["up"]),
                last_contact=parse_iso(row["last_contact"]),
                version=row["version"],
                cpu_percent=row["cpu_percent"],
                memory_percent=row["memory_percent"],
                load1=row["load1"],
                running=row["running"],
                error=row["error"],
            )
            for row in self._rows("agents_by_name")
        ]

    def audit(self, limit: int = 50) -> list[AuditRow]:
        return [
            AuditRow(
                at=required_time(row, "at"),
                user=row["os_user"],
                action=row["action"],
                target=row["target"],
                result=row["result"],
            )
            for row in self._rows("recent_audit", {"limit": limit})
        ]

    # ------------------------------------------------------------ the notification outbox

    def notifications(
        self, *, state: NotificationState | None = None, channel: str | None = None, limit: int = 50
    ) -> list[Notification]:
        if not self.has_outbox:
            return []
        params = {"state": None if state is None else str(state), "channel": channel, "limit": limit}
        return [notification_of(row) for row in self._rows("notifications_page", params)]

    def channel_health(self) -> list[ChannelHealth]:
        if not self.has_outbox:
            return []
        counts: dict[str, dict[NotificationState, int]] = {}
        last_sent: dict[str, datetime] = {}
        last_failed: dict[str, datetime] = {}
        for row in self._rows("channel_counts"):
            channel = row["channel"]
            try:
                counts.setdefault(channel, {})[NotificationState(row["state"])] = int(row["n"])
            except ValueError:
                counts.setdefault(channel, {})
            for column, latest in (("last_sent", last_sent), ("last_failed", last_failed)):
                when = parse_iso(row[column])
                if when is not None and (channel not in latest or when > latest[channel]):
                    latest[channel] = when
        health = []
        for channel, by_state in counts.items():
            failed_at, sent_at = last_failed.get(channel), last_sent.get(channel)
            failing = failed_at is not None and (sent_at is None or failed_at > sent_at)
            error = None
            if failing:
                rows = self._rows("channel_last_error", {"channel": channel})
                error = rows[0]["last_error"] if rows else None
            health.append(ChannelHealth(channel, by_state, failing, error, sent_at))
        return health
