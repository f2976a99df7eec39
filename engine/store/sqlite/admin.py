"""Maintenance of a state database with or without a scheduler: `vigil db check` and offline prune.

Layer: store. Imports only `sqlite3` and the store's own modules.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from engine.clock import iso
from engine.paths import StatePaths
from engine.store.sqlite.db import connect, rollback_quietly, store_error, tables_of
from engine.store.sqlite.queries import QUERIES


@dataclass(frozen=True)
class DatabaseCheck:
    problems: list[str]  #: what SQLite's integrity check found; ["ok"] when sound
    tables: set[str]
    has_leader: bool


def check_database(paths: StatePaths) -> DatabaseCheck:
    """Run SQLite's integrity check on an existing Vigil database (refuses a missing, empty or foreign file)."""
    conn = connect(paths, create=False)
    try:
        problems = [row[0] for row in conn.execute(QUERIES["integrity_check"]).fetchall()]
        tables = tables_of(conn)
        leader = conn.execute(QUERIES["leader"]).fetchone()
    except sqlite3.Error as exc:
        raise store_error(exc, paths.db) from exc
    finally:
        conn.close()
    return DatabaseCheck(problems, tables, leader is not None)


def prune_offline(paths: StatePaths, cutoff: datetime) -> list[int]:
    """Delete the runs that ended before `cutoff` while no scheduler runs; returns their ids.

    Their ids stay used: the run id mark rises to the highest (engine/exec/rundirs.py says why).
    """
    conn = connect(paths, create=False)
    try:
        ids = [int(row[0]) for row in conn.execute(QUERIES["prunable_runs"], {"cutoff": iso(cutoff)})]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(QUERIES["prune_offline"], [{"run_id": run_id} for run_id in ids])
            if ids and "run_id_mark" in tables_of(conn):  # a database made by an older version lacks it
                conn.execute(QUERIES["run_id_mark_offline"], {"run_id": max(ids)})
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
    except sqlite3.Error as exc:
        raise store_error(exc, paths.db) from exc
    finally:
        conn.close()
    return ids
