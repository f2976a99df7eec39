"""One run row this version cannot read (a newer Vigil's state, an edited time) never blanks a listing.

The row is listed, as `unknown` for a state this version does not know and with its other time (or
1970) for an unreadable one, the reason saying what was stored; the other rows show as they are.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from engine.clock import iso
from engine.model import RunState
from engine.paths import StatePaths
from engine.store.sqlite.db import connect
from tui.data import StateSource

NOW = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def _damaged_state(root: Path, jobs: Path) -> StatePaths:
    """Jobs a, b, c with one run each: a's is sound, b's state is a newer version's, c's times are not times."""
    paths = StatePaths(root)
    conn = connect(paths)
    conn.execute("UPDATE leader SET epoch = 1 WHERE id = 1")
    for name in "abc":
        (jobs / f"{name}.toml").write_text('every = "1h"\ncommand = "true"\n')
        conn.execute(
            "INSERT INTO jobs (name, path, schedule, enabled, description, tags, writer_epoch) "
            "VALUES (?, ?, 'every 1h', 1, '', '', 1)",
            (name, str(jobs / f"{name}.toml")),
        )
        conn.execute(
            "INSERT INTO runs (id, job, scheduled_for, state, trigger, epoch, writer_epoch, created_at, ended_at) "
            "VALUES (?, ?, ?, 'succeeded', 'schedule', 1, 1, ?, ?)",
            (ord(name) - ord("a") + 1, name, iso(NOW), iso(NOW), iso(NOW)),
        )
    conn.close()
    # The damage, as an operator's sqlite3 shell (or a newer Vigil) leaves it.
    damage = sqlite3.connect(paths.db)
    damage.execute("UPDATE runs SET state = 'deferred-by-v9', reason = 'kept for v9' WHERE id = 2")
    damage.execute("UPDATE runs SET scheduled_for = 'yesterday', created_at = 42 WHERE id = 3")
    damage.commit()
    damage.close()
    return paths


def _jobs(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    return jobs


def test_runs_json_lists_every_row_of_a_damaged_database(tmp_path: Path) -> None:
    paths = _damaged_state(tmp_path / "state", _jobs(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "runs", "--json", "--state", str(paths.root)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    runs = {run["id"]: run for run in json.loads(done.stdout)}
    assert sorted(runs) == [1, 2, 3]
    assert (runs[1]["state"], runs[1]["reason"], runs[1]["scheduled_for"]) == ("succeeded", None, iso(NOW))
    assert runs[2]["state"] == "unknown"
    assert runs[2]["reason"] == "stored state 'deferred-by-v9' is not one this version of Vigil knows; kept for v9"
    assert runs[3]["state"] == "succeeded"
    assert runs[3]["scheduled_for"] == runs[3]["created_at"] == "1970-01-01T00:00:00.000000+00:00"
    assert runs[3]["reason"] == "stored scheduled_for 'yesterday' is not a time; stored created_at '42' is not a time"


def test_the_dashboard_shows_every_job_of_a_damaged_database(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path)
    paths = _damaged_state(tmp_path / "state", jobs)
    source = StateSource(paths, jobs_dir=jobs, clock=lambda: NOW, control_timeout=0.2, files_every=0.0)
    try:
        snap = source.snapshot_sync()
    finally:
        source.close()
    assert snap.error is None
    assert sorted(snap.jobs) == ["a", "b", "c"]
    last = {name: record.last or record.current for name, record in snap.jobs.items()}
    assert last["a"] is not None and last["a"].state == RunState.SUCCEEDED and last["a"].reason is None
    assert last["b"] is not None and last["b"].state == RunState.UNKNOWN
    assert last["b"].reason is not None and "'deferred-by-v9'" in last["b"].reason
    assert last["c"] is not None and last["c"].state == RunState.SUCCEEDED
    assert last["c"].reason is not None and "'yesterday' is not a time" in last["c"].reason
