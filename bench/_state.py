"""A generated state directory of any size (jobs catalogued, runs of every outcome) for the read benchmarks."""

from __future__ import annotations

import random
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.clock import iso
from engine.paths import StatePaths
from engine.store.sqlite.db import connect, init_schema

EPOCH = 1
SECONDARY_INDEXES = ("runs_open", "runs_job_id", "runs_state_id", "runs_ended")


def job_name(i: int) -> str:
    return f"group{i % 100:02d}/job{i:05d}"


def generate(root: Path, jobs: int, runs: int) -> StatePaths:
    """A state with `jobs` catalogued jobs and `runs` runs, cached by size (bench/out/ is ignored by git)."""
    paths = StatePaths(root)
    marker = root / f"generated-{jobs}-{runs}"
    if marker.exists():
        return paths
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    conn = connect(paths)
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for index in SECONDARY_INDEXES:  # rebuilt after the bulk insert: much faster than maintaining them
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE leader SET epoch = ?, pid = 1, since = ? WHERE id = 1", (EPOCH, iso(base)))
    conn.executemany(
        "INSERT INTO jobs (name, path, schedule, enabled, agent, description, tags, next_fire, error, writer_epoch) "
        "VALUES (?, ?, 'every 1m', 1, NULL, '', 'bench', ?, NULL, ?)",
        [
            (job_name(i), f"/bench/{job_name(i)}.toml", iso(base + timedelta(seconds=i % 60)), EPOCH)
            for i in range(jobs)
        ],
    )
    rnd = random.Random(4)
    states = ["succeeded"] * 17 + ["failed", "timed_out", "skipped"]

    def rows():
        for run_id in range(1, runs + 1):
            when = base + timedelta(seconds=run_id)
            state = states[rnd.randrange(len(states))]
            took = rnd.random() * 5
            start = iso(when)
            end = None if state == "skipped" else iso(when + timedelta(seconds=took))
            yield (
                run_id,
                job_name(run_id % jobs),
                start,
                state,
                "schedule",
                EPOCH,
                EPOCH,
                start,
                None if state == "skipped" else start,
                end,
                {"succeeded": 0, "skipped": None}.get(state, 1),
                None if state == "skipped" else 2_000_000 + run_id % 1000,
                None if state == "skipped" else 0.01,
            )

    conn.executemany(
        "INSERT INTO runs (id, job, scheduled_for, state, trigger, epoch, writer_epoch, created_at, started_at, "
        "ended_at, exit_code, peak_rss, cpu_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    conn.execute("COMMIT")
    init_schema(conn)  # recreates the secondary indexes
    conn.execute("ANALYZE")
    conn.close()
    marker.write_text("")
    print(f"generated {jobs:,} jobs and {runs:,} runs in {time.perf_counter() - started:.1f} s at {root}")
    return paths
