"""StateReader turns every SQLite failure into a StoreError naming the database, never a traceback."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine.api import StateReader
from engine.errors import StoreError
from engine.paths import StatePaths
from engine.store.sqlite.db import connect


class _FailingCounts:
    """The reader's connection, with counting failing the way a damaged page makes it fail."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if "COUNT(" in sql or "MIN(id)" in sql:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return self.conn.execute(sql, params)


@pytest.mark.parametrize("count_base", [None, (0, 0)])
def test_a_failing_count_in_runs_window_is_a_store_error(tmp_path: Path, count_base: Any) -> None:
    paths = StatePaths(tmp_path / "state")
    paths.ensure()
    connect(paths).close()
    reader = StateReader(paths)
    reader._conn = _FailingCounts(reader.conn)  # type: ignore[assignment]
    with pytest.raises(StoreError, match=str(paths.db)):
        reader.runs_window(count_base=count_base)
    reader._conn.conn.close()  # type: ignore[attr-defined]
