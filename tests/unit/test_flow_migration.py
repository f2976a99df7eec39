"""A state database written before flows: readers read it as it is, the next active adds the columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.api import StateReader
from engine.paths import StatePaths
from engine.store.sqlite.db import connect, schema_sql, split_sql


def old_database(paths: StatePaths) -> None:
    """The schema as it was before `flow_id` and `outputs`, with one finished run."""
    paths.ensure()
    old = "\n".join(line for line in schema_sql().splitlines() if not line.lstrip().startswith(("flow_id", "outputs")))
    db = sqlite3.connect(paths.db, isolation_level=None)
    for statement in split_sql(old):
        db.execute(statement)
    db.execute("INSERT OR REPLACE INTO leader (id, epoch, clean_stop) VALUES (1, 1, 1)")
    db.execute(
        "INSERT INTO runs (id, job, scheduled_for, attempt, state, trigger, epoch, writer_epoch, created_at, ended_at)"
        " VALUES (7, 'old', '2026-11-29T03:00:00.000000+00:00', 1, 'succeeded', 'schedule', 1, 1,"
        " '2026-11-29T03:00:00.000000+00:00', '2026-11-29T03:00:01.000000+00:00')"
    )
    db.close()


def columns(paths: StatePaths) -> set[str]:
    db = sqlite3.connect(paths.db)
    try:
        return {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    finally:
        db.close()


def test_an_old_database_reads_before_and_after_the_migration(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    old_database(paths)
    assert "flow_id" not in columns(paths)
    reader = StateReader(paths)
    (run,) = reader.runs()
    assert (run.id, run.flow_id, run.outputs) == (7, 7, ())  # in no flow: its own
    assert reader.flows() == [] and [r.id for r in reader.flow_runs(7)] == [7]
    reader.close()
    connect(paths).close()  # what the active does when it opens the database
    assert {"flow_id", "outputs"} <= columns(paths)
    reader = StateReader(paths)
    (run,) = reader.runs()
    assert (run.id, run.flow_id) == (7, 7)
    assert reader.flows() == []
    reader.close()
