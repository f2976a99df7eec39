"""A fixed Vigil state for snapshot and pilot tests: the engine's own schema, fixed rows, fixed clock.

Running the engine gives real but nondeterministic data, so screenshots are taken against rows
inserted here with `writer_epoch` equal to the leader's epoch (the schema's fencing triggers insist).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.clock import iso
from engine.paths import StatePaths
from engine.store.sqlite.db import connect
from tui.data import ActiveInfo, ClusterInfo, StateSource

FIXED_NOW = datetime(2030, 1, 2, 12, 0, 0, tzinfo=UTC)
EPOCH = 3
ACTIVE_PID = 4242


def fixed_clock() -> datetime:
    return FIXED_NOW


def _t(seconds_before: float) -> str:
    return iso(FIXED_NOW - timedelta(seconds=seconds_before))  # type: ignore[return-value]


JOBS = [
    # name, schedule, enabled, next_fire (s from now), error, tags
    ("demo/always_fails", "every 3m", 1, 95, None, "demo,failure"),
    ("demo/chatty", "every 2m", 1, 40, None, "demo,logs"),
    ("demo/flaky", "every 1m", 1, 20, None, "demo,retries"),
    ("demo/overlap_skip", "every 5s", 1, 3, None, "demo,overlap"),
    ("demo/slow_timeout", "every 2m", 1, 70, None, "demo,timeout"),
    ("etl/extract", "cron 0 * * * *", 1, 3600, None, "etl"),
    ("etl/load", "after etl/transform", 1, None, None, "etl"),
    ("etl/transform", "after etl/extract", 1, None, None, "etl"),
    ("health/ping", "every 30s", 1, 12, None, "health"),
    ("ops/disk_report", "cron 0 6 * * *", 0, None, None, "ops"),
    ("reports/broken", "manual", 1, None, "reports/broken.toml:3: cron: bad minute field '61'", "reports"),
]
PAUSED = ["etl/load"]


def _runs() -> list[dict[str, object]]:
    runs: list[dict[str, object]] = []

    def add(job: str, ago: float, state: str, took: float | None, exit_code: int | None = None, **kw: object) -> None:
        run_id = len(runs) + 1
        start = _t(ago) if took is not None or state in ("running", "launching") else None
        end = _t(ago - took) if took is not None and state not in ("running", "launching") else None
        runs.append(
            {
                "id": run_id,
                "job": job,
                "scheduled_for": _t(ago),
                "attempt": kw.get("attempt", 1),
                "state": state,
                "reason": kw.get("reason"),
                "trigger": kw.get("trigger", "schedule"),
                "epoch": EPOCH,
                "writer_epoch": EPOCH,
                "created_at": _t(ago),
                "started_at": start,
                "ended_at": end,
                "exit_code": exit_code,
                "pid": kw.get("pid"),
                "peak_rss": kw.get("peak_rss", 3_145_728 if start else None),
                "cpu_s": kw.get("cpu_s", 0.02 if end else None),
            }
        )

    for i in range(6):
        add("health/ping", 30 * (6 - i) + 18, "succeeded", 0.05 + 0.01 * i, 0)
    for i in range(5):
        add("demo/always_fails", 180 * (5 - i) + 85, "failed", 0.01, 3, reason="exit code 3")
    add("demo/chatty", 80, "succeeded", 1.4, 0, peak_rss=9_437_184, cpu_s=0.61)
    add("demo/flaky", 100, "failed", 0.02, 1, reason="exit code 1; retry in 3s")
    add("demo/flaky", 97, "succeeded", 0.02, 0, attempt=2, trigger="retry")
    add("demo/flaky", 40, "failed", 0.02, 1, reason="exit code 1; retry in 3s")
    add("demo/flaky", 37, "succeeded", 0.02, 0, attempt=2, trigger="retry")
    add("demo/slow_timeout", 50, "timed_out", 5.0, None, reason="timeout after 5s; process group killed")
    add("etl/extract", 3000, "succeeded", 2.5, 0)
    add("etl/transform", 2990, "succeeded", 4.0, 0, trigger="after")
    add("etl/load", 2980, "killed", 1.0, None, reason="killed by operator", trigger="after")
    add("demo/overlap_skip", 9, "running", None, None, pid=31337)
    for i in range(3):
        add("demo/overlap_skip", 7 - 2 * i, "skipped", None, None, reason="overlap=skip: run 24 still running")
    add("health/ping", 1, "pending", None, None)
    return runs


def build_fixed_state(root: Path) -> StatePaths:
    """Create the schema with the engine's own code, then insert fixed rows; returns its paths."""
    paths = StatePaths(root)
    conn = connect(paths)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "UPDATE leader SET epoch = ?, pid = ?, starttime = 1, since = ?, clean_stop = 0 WHERE id = 1",
        (EPOCH, ACTIVE_PID, _t(7200)),
    )
    for name, schedule, enabled, next_in, error, tags in JOBS:
        next_fire = None if next_in is None else iso(FIXED_NOW + timedelta(seconds=next_in))
        conn.execute(
            "INSERT INTO jobs (name, path, schedule, enabled, agent, description, tags, next_fire, error, "
            "writer_epoch) VALUES (?, ?, ?, ?, NULL, '', ?, ?, ?, ?)",
            (name, f"/srv/jobs/{name}.toml", schedule, enabled, tags, next_fire, error, EPOCH),
        )
    for name in PAUSED:
        conn.execute("INSERT INTO job_state (job, paused, writer_epoch) VALUES (?, 1, ?)", (name, EPOCH))
    for run in _runs():
        cols = ", ".join(run)
        conn.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' for _ in run)})", tuple(run.values()))
    # Warnings on runs the snapshots show: the run detail (12), a timed-out run, a running one with two.
    for run_id, warning in (
        (12, "longer"),
        (17, "longer"),
        (18, "shorter"),
        (21, "late"),
        (21, "longer"),
        (25, "late"),
    ):
        conn.execute(
            "INSERT INTO run_warnings (run_id, warning, at, writer_epoch) VALUES (?, ?, ?, ?)",
            (run_id, warning, _t(5), EPOCH),
        )
    conn.execute(
        "INSERT INTO failovers (at, from_pid, to_pid, cause, gap_ms, epoch, writer_epoch) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (_t(7200), 4100, ACTIVE_PID, "crash", 1840.0, EPOCH, EPOCH),
    )
    for ago, action, target, result in (
        (3000, "pause", "etl/load", "ok"),
        (2985, "kill", "23", "ok"),
        (600, "run", "demo/chatty", "run 12"),
        (30, "resume", "nope/missing", "refused: no job named 'nope/missing'"),
    ):
        conn.execute(
            "INSERT INTO audit (at, os_user, action, target, result, writer_epoch) VALUES (?, 'ops', ?, ?, ?, ?)",
            (_t(ago), action, target, result, EPOCH),
        )
    for name, up, contact, cpu, mem, load, running, error in (
        ("lab1", 1, 2, 12.0, 41.0, 0.35, 1, None),
        ("lab2", 0, 340, None, None, None, None, "connect timeout after 5s"),
    ):
        conn.execute(
            "INSERT INTO agents (name, url, up, last_contact, version, cpu_percent, memory_percent, load1, running, "
            "error, writer_epoch) VALUES (?, ?, ?, ?, '0.1.0', ?, ?, ?, ?, ?, ?)",
            (name, f"https://{name}.lab:8700", up, _t(contact), cpu, mem, load, running, error, EPOCH),
        )
    conn.execute("COMMIT")
    conn.close()
    chatty = next(r for r in _runs() if r["job"] == "demo/chatty")
    log_dir = paths.run_dir(int(chatty["id"]))  # type: ignore[arg-type]
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "log").write_text("".join(f"demo/chatty line {i:05d}: processed record {i * 7}\n" for i in range(1, 41)))
    return paths


class FixedActiveSource(StateSource):
    """A source that reports a fixed active scheduler and standby, so screenshots show a healthy cluster."""

    def read_cluster(self) -> ClusterInfo:
        return ClusterInfo(
            active=ActiveInfo(pid=ACTIVE_PID, epoch=EPOCH, since=_t(7200), heartbeat_age_s=0.12, loop_lag_ms=0.4),
            standbys=((4243, _t(7100)),),
        )
