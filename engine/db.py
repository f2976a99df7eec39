"""State directory layout, SQLite connections and time formatting.

All SQL text the engine runs lives here and in ``schema.sql``; readers use short autocommit
queries so they never pin the WAL.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from .errors import StoreError

BUSY_TIMEOUT_MS = 5000
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA journal_size_limit=67108864",
)


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
        self.runs.mkdir(parents=True, exist_ok=True)


def schema_sql() -> str:
    return resources.files("engine").joinpath("schema.sql").read_text()


def connect(paths: StatePaths, *, create: bool = True) -> sqlite3.Connection:
    """A synchronous connection in autocommit mode (we issue BEGIN IMMEDIATE ourselves)."""
    if not create and not paths.db.exists():
        raise StoreError(f"no Vigil state at {paths.root} (no {paths.db.name}); has `vigil up` run here?")
    if create:
        paths.ensure()
    try:
        conn = sqlite3.connect(paths.db, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        for pragma in PRAGMAS:
            conn.execute(pragma)
        conn.row_factory = sqlite3.Row
        if create:
            init_schema(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state database {paths.db}: {exc}") from exc
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in split_sql(schema_sql()):
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())
