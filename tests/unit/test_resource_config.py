"""`[resources.NAME] limit`, `[scheduler] max_running` and the job keys `locks` and `priority`: what
loads, and the error (file, line, key, reason) for what does not; an old database gains `held`."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

from engine.config import JobFolder, format_errors, load_folder
from engine.paths import StatePaths
from engine.store.sqlite.db import connect


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_locks_as_a_table_or_a_list_and_priority_load_with_the_declared_limits(tmp_path: Path) -> None:
    write(
        tmp_path, "vigil.toml", "[scheduler]\nmax_running = 8\n[resources.gpu]\nlimit = 2\n[resources.db]\nlimit = 1\n"
    )
    write(tmp_path, "train.toml", 'command = "true"\nlocks = { gpu = 2, db = 1 }\npriority = 5\n')
    write(tmp_path, "dump.toml", 'command = "true"\nlocks = ["db"]\n')
    result = load_folder(tmp_path)
    assert result.errors == []
    assert (result.jobs["train"].locks, result.jobs["train"].priority) == ((("gpu", 2), ("db", 1)), 5)
    assert (result.jobs["dump"].locks, result.jobs["dump"].priority) == ((("db", 1),), 0)
    assert result.settings.resources == {"gpu": 2, "db": 1} and result.settings.max_running == 8


def test_a_bad_lock_stops_only_its_job_and_says_file_line_key_and_why(tmp_path: Path) -> None:
    write(tmp_path, "vigil.toml", "[resources.gpu]\nlimit = 2\n")
    write(tmp_path, "greedy.toml", 'command = "true"\nlocks = { gpu = 3 }\n')
    write(tmp_path, "typo.toml", 'command = "true"\nlocks = ["gpus"]\n')
    write(tmp_path, "zero.toml", 'command = "true"\nlocks = { gpu = 0 }\npriority = "high"\n')
    write(tmp_path, "good.toml", 'command = "true"\nlocks = ["gpu"]\n')
    result = load_folder(tmp_path)
    assert list(result.jobs) == ["good"]
    assert format_errors(result.errors).replace(str(tmp_path), "F").splitlines() == [
        "F/greedy.toml:2: locks: asks for 3 of 'gpu' but its limit is 2 ([resources.gpu] limit in vigil.toml): "
        "the run could never start",
        "F/typo.toml:2: locks: unknown resource 'gpus' (did you mean 'gpu'? declare [resources.gpus] in "
        "vigil.toml; known: gpu)",
        "F/zero.toml:2: locks.gpu: must be at least 1, got 0",
        "F/zero.toml:3: priority: expected an integer, got a string ('high')",
    ]


def test_bad_resource_tables_and_max_running_are_errors_of_vigil_toml(tmp_path: Path) -> None:
    write(
        tmp_path,
        "vigil.toml",
        """
        [scheduler]
        max_running = 0
        [resources.gpu]
        limit = -1
        [resources.db]
        limti = 1
        [resources.lic]
        limit = 1.5
        """,
    )
    write(tmp_path, "a.toml", 'command = "true"\nlocks = ["db"]\n')
    result = load_folder(tmp_path)
    text = format_errors(result.errors).replace(str(tmp_path), "F")
    assert "F/vigil.toml:2: scheduler.max_running: must be at least 1, got 0" in text
    assert "F/vigil.toml:4: resources.gpu.limit: expected a positive integer: must be at least 1, got -1" in text
    assert "F/vigil.toml:6: resources.db.limti: unknown key (did you mean 'limit'?)" in text
    assert "resources.lic.limit: expected a positive integer: expected an integer, got a float (1.5)" in text
    # a job naming a resource declared but invalid says so, not "unknown"
    assert "F/a.toml:2: locks: resource 'db' is declared in vigil.toml but its definition is invalid" in text


def test_declaring_the_resource_later_lets_the_job_load_at_the_next_scan(tmp_path: Path) -> None:
    write(tmp_path, "_folder.toml", 'locks = ["gpu"]\n')
    write(tmp_path, "a.toml", 'command = "true"\n')
    folder = JobFolder(tmp_path)
    assert folder.scan().jobs == {}
    write(tmp_path, "vigil.toml", "[resources.gpu]\nlimit = 1\n")
    assert folder.scan().jobs["a"].locks == (("gpu", 1),)


def test_a_database_made_before_hold_existed_gains_the_held_column_at_open(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    connect(paths).close()
    conn = sqlite3.connect(paths.db)
    conn.executescript(
        "DROP TRIGGER IF EXISTS fence_job_state_insert; DROP TRIGGER IF EXISTS fence_job_state_update;"
        "DROP TABLE job_state;"
        "CREATE TABLE job_state (job TEXT PRIMARY KEY, paused INTEGER NOT NULL DEFAULT 0, last_fire TEXT,"
        " writer_epoch INTEGER NOT NULL);"
        "INSERT INTO job_state VALUES ('old', 1, NULL, 0);"
    )
    conn.close()
    connect(paths).close()  # as `vigil up` opens it
    conn = sqlite3.connect(paths.db)
    assert conn.execute("SELECT job, paused, held FROM job_state").fetchall() == [("old", 1, 0)]
    conn.close()
