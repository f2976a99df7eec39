"""The leader row as a process outside the active reads it (a standby judging a silent active).

Layer: store. Imports the base modules and this backend's connection, queries and rows.
"""

from __future__ import annotations

import sqlite3

from engine.model import LeaderRow
from engine.paths import StatePaths
from engine.store.sqlite.db import connect, store_error
from engine.store.sqlite.queries import QUERIES
from engine.store.sqlite.rows import leader_of


def read_leader(paths: StatePaths) -> LeaderRow | None:
    """The leader row on a connection of its own (blocking: run it in a thread); None if it is missing.

    Raises StoreError when the database cannot be read (never creates it).
    """
    conn = connect(paths, create=False)
    try:
        row = conn.execute(QUERIES["leader"]).fetchone()
    except sqlite3.Error as exc:
        raise store_error(exc, paths.db) from exc
    finally:
        conn.close()
    return leader_of(row) if row is not None else None
