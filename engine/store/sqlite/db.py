"""SQLite connections to the state database, its schema, and the one classification of its errors.

The SQL the engine runs on the state database lives in this package: the schema in ``schema.sql``,
every statement by name in ``queries.sql`` (loaded by ``queries.py``), and here only the
connection set-up (pragmas, the schema script, the table list). Readers use short autocommit
queries so they never pin the WAL.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import suppress
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

from engine.errors import FencedError, StoreError, StoreFatalError, StoreRetryableError
from engine.paths import StatePaths
from engine.store.sqlite.queries import QUERIES

log = logging.getLogger("vigil.db")


def _busy_timeout_ms() -> int:
    # How long one statement waits for another writer's lock before the write is retried later.
    # VIGIL_DB_BUSY_TIMEOUT_MS exists for tests and for hosts whose backup tool holds it longer.
    try:
        return max(1, int(os.environ.get("VIGIL_DB_BUSY_TIMEOUT_MS", "5000")))
    except ValueError:
        return 5000


BUSY_TIMEOUT_MS = _busy_timeout_ms()
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA journal_size_limit=67108864",
)
# The tables `vigil db check` wants in a Vigil state database; a reader refuses a file without the
# core ones. `run_id_mark` is left out on purpose: a database made by an older version lacks it
# until the next `vigil up` creates it (as it creates any missing newer table), and is not foreign.
VIGIL_TABLES = frozenset({"leader", "runs", "job_state", "jobs", "audit", "failovers", "agents"})
CORE_TABLES = frozenset({"leader", "runs"})

# SQLite primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF).
_SQLITE_READONLY, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR = 8, 5, 6, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26
_SQLITE_READONLY_DBMOVED = 1032


def restore_hint(path: Path) -> str:
    return (
        f"restore a backup (`cp BACKUP {path}`, see `vigil db backup`) or move it aside "
        f"(`mv {path} {path}.bad`) and start again"
    )


def _out_of_space(path: Path) -> bool:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 256 * 1024 or (st.f_files > 0 and st.f_favail == 0)


def store_error(exc: sqlite3.Error, path: Path) -> StoreError:
    """The one classification of SQLite errors: fenced, retryable (busy, full) or fatal."""
    text = str(exc)
    if "stale epoch" in text:
        return FencedError("this scheduler has been deposed: the database holds a newer epoch")
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary is None:
        # Errors raised by the sqlite3 module itself carry no code; classify by their text.
        if "database is locked" in text or "database table is locked" in text:
            primary = _SQLITE_BUSY
        elif "disk is full" in text:
            primary = _SQLITE_FULL
    if primary == _SQLITE_IOERR and _out_of_space(path):
        # SQLite reports some writes on a full file system (growing the -shm file) as I/O errors.
        primary = _SQLITE_FULL
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreRetryableError("locked by another writer", f"state database: locked by another writer ({text})")
    if primary == _SQLITE_FULL:
        return StoreRetryableError("disk full", f"state database: disk full ({text}) at {path}")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        what = "corrupt" if primary == _SQLITE_CORRUPT else "not a database"
        return StoreFatalError(f"state database {path}: {what} ({text}); {restore_hint(path)}")
    if code == _SQLITE_READONLY_DBMOVED:
        return StoreFatalError(f"state database {path}: the file was removed or replaced ({text})")
    if primary == _SQLITE_READONLY:
        return StoreFatalError(f"state database {path}: read-only ({text}); check the file's owner and mode")
    if primary == _SQLITE_IOERR:
        return StoreFatalError(f"state database {path}: I/O error ({text}); check the disk, then `vigil db check`")
    if primary == _SQLITE_CANTOPEN:
        return StoreFatalError(f"state database {path}: cannot open ({text})")
    return StoreFatalError(f"state database {path}: {text}")


def schema_sql() -> str:
    return Path(__file__).with_name("schema.sql").read_text()


def connect(paths: StatePaths, *, create: bool = True) -> sqlite3.Connection:
    """A synchronous connection in autocommit mode (we issue BEGIN IMMEDIATE ourselves).

    With create=False (readers, maintenance) nothing is created or changed: the file must exist
    and be a Vigil database, or StoreError says what it is instead.
    """
    if not create:
        return open_existing(paths)
    paths.ensure()
    new = not paths.db.exists()
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(paths.db, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        if new:
            # Before the first write: SQLite gives the -wal and -shm files the database's mode.
            os.chmod(paths.db, 0o600)
        for pragma in PRAGMAS:
            conn.execute(pragma)
        conn.row_factory = sqlite3.Row
        tables = tables_of(conn)
        if tables and "leader" not in tables:
            raise StoreFatalError(foreign_message(paths.db, tables))
        init_schema(conn)
    except (sqlite3.Error, StoreError) as exc:
        _close_failed(conn, exc, paths.db)
    return conn


def open_existing(paths: StatePaths) -> sqlite3.Connection:
    """A connection to an existing Vigil database that never creates or alters the file."""
    try:
        size = paths.db.stat().st_size
    except FileNotFoundError:
        raise StoreError(f"no Vigil state at {paths.root} (no {paths.db.name}); has `vigil up` run here?") from None
    except OSError as exc:
        raise StoreError(f"cannot read state database {paths.db}: {exc.strerror}") from None
    if size == 0:
        raise StoreFatalError(
            f"state database {paths.db} is empty (0 bytes): not a Vigil database; {restore_hint(paths.db)}"
        )
    conn: sqlite3.Connection | None = None
    try:
        # mode=rw: opening never creates the file, even if it vanished since the stat above.
        uri = "file:" + quote(str(paths.db)) + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = sqlite3.Row
        # No journal_mode pragma: WAL is a property of the file, set by its writer; a reader that
        # set it would write to (and so create) a database.
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        tables = tables_of(conn)
        if not CORE_TABLES <= tables:
            raise StoreFatalError(foreign_message(paths.db, tables))
    except (sqlite3.Error, StoreError) as exc:
        _close_failed(conn, exc, paths.db)
    return conn


def _close_failed(conn: sqlite3.Connection | None, exc: Exception, path: Path) -> NoReturn:
    """A connection that failed while being opened: close it and raise the classified error."""
    if conn is not None:
        conn.close()
    if isinstance(exc, sqlite3.Error):
        raise store_error(exc, path) from exc
    raise exc


def tables_of(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute(QUERIES["table_names"])}


def foreign_message(path: Path, tables: set[str]) -> str:
    missing = ", ".join(sorted(VIGIL_TABLES - tables))
    return (
        f"state database {path} is not a Vigil database (missing tables: {missing}); "
        f"point --state at the right directory, or {restore_hint(path)}"
    )


def init_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in split_sql(schema_sql()):
            conn.execute(statement)
        _add_missing_columns(conn)
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise


#: Columns added since a database was made (CREATE TABLE IF NOT EXISTS leaves its tables as they
#: are): table → (column, the named statement that adds it). A database written by an older Vigil
#: gets them when it is opened for writing; its rows read the columns' defaults (NULL: a run in no flow).
ADDED_COLUMNS = {
    "runs": (("flow_id", "add_runs_flow_id"), ("outputs", "add_runs_outputs")),
    "job_state": (("held", "add_job_state_held"),),
    "jobs": (("priority", "add_jobs_priority"), ("locks", "add_jobs_locks")),
}


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Add the columns (and their indexes) an older database lacks, inside init_schema's transaction."""
    for table, added in ADDED_COLUMNS.items():
        present = {row[0] for row in conn.execute(QUERIES[f"{table}_columns"])}
        for column, statement in added:
            if column not in present:
                conn.execute(QUERIES[statement])
    conn.execute(QUERIES["runs_flow_index"])


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """End a failed transaction, keeping the error that failed it.

    SQLite has already rolled back after some errors (SQLITE_FULL, SQLITE_BUSY on COMMIT, an
    I/O error); a ROLLBACK then fails with "no transaction is active" and would hide the cause.
    """
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def split_sql(script: str) -> list[str]:
    """Statements of a script, keeping trigger bodies whole."""
    statements: list[str] = []
    buf: list[str] = []
    for line in script.splitlines():
        if line.strip().startswith("--") and not buf:
            continue
        buf.append(line)
        text = "\n".join(buf)
        if sqlite3.complete_statement(text):
            statements.append(text.strip())
            buf = []
    return [s for s in statements if s]
