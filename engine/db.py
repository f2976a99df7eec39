"""State directory layout, SQLite connections and time formatting.

All SQL text the engine runs lives here and in ``schema.sql``; readers use short autocommit
queries so they never pin the WAL.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import stat
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

from .errors import FencedError, StoreError, StoreFatalError, StoreRetryableError

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
#: Run ids and epochs are whole numbers below ID_LIMIT, on every side: the scheduler, its agents, the
#: run directories and the CLI all check them with `as_row_id` (engine/ids.py `valid_id` too). The
#: limit sits well below SQLite's largest integer (2**63-1) so that the next epoch or run id above any
#: valid one still fits: a value the agent accepts is always one the scheduler can follow.
ID_LIMIT = 1 << 62
MAX_ROW_ID = ID_LIMIT - 1  #: the largest valid run id or epoch
#: Files only an agent's state directory holds: a scheduler refuses such a directory.
AGENT_STATE_MARKERS = ("journal.db", "agent.token", "agent.addr")
_DECIMAL = re.compile(r"[0-9]{1,19}")
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


@dataclass(frozen=True)
class StatePaths:
    """Where everything of one Vigil installation lives."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "vigil.db"

    @property
    def lock(self) -> Path:
        # The leadership lock: never the database files, never deleted.
        return self.root / "leader.lock"

    @property
    def control(self) -> Path:
        return self.root / "control.sock"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: int) -> Path:
        return self.runs / str(run_id)

    def ensure(self) -> None:
        """Create (owner-only) or check the state directory of a scheduler."""
        for marker in AGENT_STATE_MARKERS:
            if (self.root / marker).exists():
                # Run directories are named by run id: sharing them with an agent would mix two runs.
                raise StoreError(
                    f"{self.root} is an agent's state directory (it holds {marker}); "
                    "give the scheduler its own --state DIR"
                )
        ensure_private_dir(self.root)
        ensure_private_dir(self.runs)


def ensure_private_dir(path: Path) -> None:
    """Make `path` (0700, whatever the umask) or check that no other local user can write into it.

    Another user who can write into a state directory can plant run directories, pid files or a
    database, and so make the scheduler kill or report whatever they like.
    """
    missing = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            # Missing leading directories too: nobody else needs to reach into them.
            directory.mkdir(mode=0o700)
            if directory == path:
                os.chmod(directory, 0o700)  # exactly, whatever the umask
        except FileExistsError:
            pass  # made by a concurrent `vigil up`; checked below like any existing directory
        except OSError as exc:
            raise StoreError(f"cannot create state directory {directory}: {exc.strerror or exc}") from exc
    try:
        info = path.stat()
    except OSError as exc:
        raise StoreError(f"cannot use state directory {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(f"state directory {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise StoreError(
            f"state directory {path} belongs to {user_name(info.st_uid)}, not to {user_name(os.geteuid())} "
            f"who runs Vigil; run Vigil as its owner or give it a directory of its own"
        )
    if info.st_mode & 0o022:
        raise StoreError(
            f"state directory {path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"make it owner-only with `chmod 700 {path}`"
        )
    if info.st_mode & 0o077 and path not in _warned_readable:
        # Made by an older Vigil or by hand: not dangerous to run on, but others may read job output.
        _warned_readable.add(path)
        log.warning(
            "state directory %s is readable by other users (mode %04o); make it owner-only with `chmod 700 %s`",
            path,
            stat.S_IMODE(info.st_mode),
            path,
        )


_warned_readable: set[Path] = set()


def restrict_umask() -> None:
    """Make every file this process creates owner-only; the shim gives jobs the operator's umask back."""
    global _job_umask
    previous = os.umask(0o077)
    if _job_umask is None:
        _job_umask = previous


def job_umask() -> int:
    """The umask jobs run with: the operator's, as it was before restrict_umask()."""
    return _current_umask() if _job_umask is None else _job_umask


_job_umask: int | None = None


def _current_umask() -> int:
    # /proc tells without the set-and-restore dance, which would race with other threads.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o077)
    os.umask(current)
    return current


def as_row_id(value: object) -> int | None:
    """`value` as a valid run id or epoch (0..MAX_ROW_ID, i.e. 0..2**62-1), or None.

    Takes a JSON integer (never a bool or a float) or plain decimal digits (a path, a header,
    a command-line argument).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_ROW_ID else None
    if isinstance(value, str | bytes):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        text = text.strip()
        if _DECIMAL.fullmatch(text):
            number = int(text)
            return number if number <= MAX_ROW_ID else None
    return None


def schema_sql() -> str:
    return resources.files("engine").joinpath("schema.sql").read_text()


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
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


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
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise


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


def iso(dt: datetime | None) -> str | None:
    """The one text form of a time in the database: UTC, microseconds, '+00:00'."""
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(text: str | None) -> datetime | None:
    """A stored ISO-8601 time; None for a missing or unreadable one."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def os_user() -> str:
    return user_name(os.getuid())


def user_name(uid: int) -> str:
    """The login name of a uid, or the number when it has none."""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)
