"""Maintenance of a state database with or without a scheduler: `vigil db check`, `backup`, offline prune.

Layer: store. Imports only `sqlite3` and the store's own modules.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from engine.clock import iso
from engine.errors import VigilError
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
            tables = tables_of(conn)
            if ids and "run_id_mark" in tables:  # a database made by an older version lacks it
                conn.execute(QUERIES["run_id_mark_offline"], {"run_id": max(ids)})
            if "notifications" in tables:
                conn.execute(QUERIES["notifications_pruned_offline"], {"cutoff": iso(cutoff)})
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
    except sqlite3.Error as exc:
        raise store_error(exc, paths.db) from exc
    finally:
        conn.close()
    return ids


def backup(paths: StatePaths, target: Path) -> None:
    """Copy the database to a new owner-only file at `target` with SQLite's online backup API
    (consistent while the scheduler writes); never through a link, never over an existing file."""
    if target.is_symlink():
        raise VigilError(f"backup target {target} is a symbolic link; refusing to write through it")
    if target.exists():
        raise VigilError(f"backup target {target} already exists; refusing to overwrite it")
    source = connect(paths, create=False)
    try:
        # Created here, owner-only whatever the umask; O_EXCL|O_NOFOLLOW refuse a file or link
        # that appeared since the checks above.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        source.close()
        raise VigilError(f"cannot create backup target {target}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        created = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        dest = sqlite3.connect(target)
        try:
            with dest:
                source.backup(dest)
        finally:
            dest.close()
        now = os.lstat(target)
        if (now.st_dev, now.st_ino) != (created.st_dev, created.st_ino):
            raise VigilError(f"backup target {target} was replaced while the backup was written")
    except sqlite3.Error as exc:
        _remove_quietly(target)  # the error may be the source's or the target's: name both
        raise VigilError(f"backup of {paths.db} to {target} failed: {exc}") from exc
    except BaseException:
        _remove_quietly(target)
        raise
    finally:
        source.close()


def _remove_quietly(path: Path) -> None:
    try:
        if not path.is_symlink():
            path.unlink()
    except OSError:
        pass
