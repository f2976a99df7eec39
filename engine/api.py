"""The engine's public read API: what the CLI and the dashboard know about a state directory.

Reads are short autocommit queries on a fresh or cached connection; nothing here holds a
transaction open, so readers never pin the WAL or slow the scheduler. Commands go to the active
scheduler through ``ControlClient``.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.clock import parse_iso
from engine.control import ControlClient
from engine.errors import ConfigError, ControlError, NotFoundError, StoreError
from engine.ids import as_row_id
from engine.model import OPEN_STATES
from engine.paths import StatePaths
from engine.store.sqlite.db import connect, store_error
from engine.text import escape  # for readers that show user text (names, reasons) in a terminal

if TYPE_CHECKING:  # engine.config imports croniter: only readers of job files pay for it
    from engine.config import JobFolder
    from engine.model import JobSpec

__all__ = [
    "RUN_FIELDS",
    "ControlClient",
    "JobFilesReader",
    "JobFilesView",
    "LogChunk",
    "RunsWindow",
    "StateReader",
    "broken_job_files",
    "catalog_folder",
    "catalog_without_active",
    "cluster_status",
    "escape",
]

RUN_FIELDS = (
    "id",
    "job",
    "state",
    "exit_code",
    "scheduled_for",
    "started_at",
    "ended_at",
    "attempt",
    "epoch",
    "reason",
    "trigger",
    "created_at",
    "not_before",
    "pid",
    "peak_rss",
    "cpu_s",
    "agent",
)


@dataclass(frozen=True)
class LogChunk:
    text: str
    offset: int  #: where the next read should start
    size: int  #: file size when read


@dataclass(frozen=True)
class RunsWindow:
    """One page of runs and where it sits among all matching runs, read at one instant."""

    runs: list[dict[str, Any]]  #: newest first
    newer: int  #: matching runs newer than the page: its first row is number `newer + 1`
    total: int  #: matching runs in all (never fewer than the page and those before it)
    count_base: tuple[int, int]  #: (anchor id, matching runs up to it): pass back to skip a full count


class StateReader:
    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self.paths, create=False)  # a reader never makes state
            try:
                conn.execute("PRAGMA query_only=ON")
            except sqlite3.Error as exc:
                conn.close()
                raise store_error(exc, self.paths.db) from exc
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        # Every read goes through here: a broken database is a StoreError naming it, never a traceback.
        try:
            return [dict(row) for row in self.conn.execute(sql, params).fetchall()]
        except sqlite3.Error as exc:
            raise store_error(exc, self.paths.db) from exc

    def _execute(self, sql: str) -> None:
        try:
            self.conn.execute(sql)
        except sqlite3.Error as exc:
            raise store_error(exc, self.paths.db) from exc

    def _scalar(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        rows = self._all(sql, params)
        return next(iter(rows[0].values())) if rows else None

    def runs(
        self,
        *,
        job: str | None = None,
        state: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first, keyset-paged by id so a page costs the same at any depth."""
        where: list[str] = []
        params: list[str | int] = []
        if job:
            where.append("job = ?")
            params.append(job)
        if state:
            where.append("state = ?")
            params.append(state)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self._all(
            f"SELECT {', '.join(RUN_FIELDS)} FROM runs {clause} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )

    def run(self, run_id: int) -> dict[str, Any]:
        if as_row_id(run_id) is None:  # beyond SQLite's integers: no such run, not an OverflowError
            raise NotFoundError(f"no run with id {run_id}")
        rows = self._all(f"SELECT {', '.join(RUN_FIELDS)}, kill_requested, deadline FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise NotFoundError(f"no run with id {run_id}")
        return rows[0]

    def runs_window(
        self,
        *,
        job: str | None = None,
        state: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        count_base: tuple[int, int] | None = None,
    ) -> RunsWindow:
        """A keyset page with its position and the total, all from one read transaction.

        Counting every matching run costs up to ~50 ms per million rows, too much for every refresh.
        A full count is taken only without `count_base`: up to an anchor id below every open run, so
        the rows it counted are finished and stay as they are; later calls recount only above it
        (new runs and runs still open: a short index range). Position and total thus always agree
        with the page shown (a "1–22 of 21" cannot happen), even while runs arrive and change state.
        """
        where, params = [], []
        if job:
            where.append("job = ?")
            params.append(job)
        if state:
            where.append("state = ?")
            params.append(state)

        def count(extra: str, value: int) -> int:
            clause = " AND ".join([*where, extra])
            return int(self._scalar(f"SELECT COUNT(*) FROM runs WHERE {clause}", (*params, value)))

        self._execute("BEGIN")
        try:
            page_where = [*where, "id < ?"] if before_id is not None else where
            page_params = [*params, before_id] if before_id is not None else params
            clause = f"WHERE {' AND '.join(page_where)}" if page_where else ""
            rows = self._all(
                f"SELECT {', '.join(RUN_FIELDS)} FROM runs {clause} ORDER BY id DESC LIMIT ?", (*page_params, limit)
            )
            newer = count("id >= ?", before_id) if before_id is not None else 0
            if count_base is None:
                marks = ",".join("?" * len(OPEN_STATES))
                anchor = int(
                    self._scalar(
                        f"SELECT COALESCE((SELECT MIN(id) - 1 FROM runs WHERE state IN ({marks})), "
                        "(SELECT MAX(id) FROM runs), 0)",
                        OPEN_STATES,
                    )
                )
                count_base = (anchor, count("id <= ?", anchor))
            total = count_base[1] + count("id > ?", count_base[0])
        finally:
            self._execute("COMMIT")
        # Runs pruned since the full count leave `total` a little high until the next one, never low.
        return RunsWindow(rows, newer, max(total, newer + len(rows)), count_base)

    def counts_by_state(self) -> dict[str, int]:
        return {row["state"]: row["n"] for row in self._all("SELECT state, COUNT(*) AS n FROM runs GROUP BY state")}

    def jobs(self) -> list[dict[str, Any]]:
        """The active's catalog of loaded jobs with pause flag and latest run.

        A row with an `error` is either a file that never loaded (`loaded` 0: no schedule) or a file
        that broke while its last valid version stays scheduled (`loaded` 1: schedule, next fire).
        """
        return self._all(
            "SELECT j.name, j.path, j.schedule, j.enabled, j.agent, j.description, j.tags, j.next_fire, "
            "j.error, COALESCE(s.paused, 0) AS paused, (j.path != '') AS loaded "
            "FROM jobs j LEFT JOIN job_state s ON s.job = j.name ORDER BY j.name"
        )

    def paused_jobs(self) -> set[str]:
        return {row["job"] for row in self._all("SELECT job FROM job_state WHERE paused = 1")}

    # ------------------------------------------------ incremental reads (added for the dashboard)

    def max_run_id(self) -> int:
        """The newest run id (0 when there are none): where an incremental reader starts."""
        return int(self._scalar("SELECT COALESCE(MAX(id), 0) FROM runs"))

    def runs_after(self, after_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Runs with id > `after_id`, oldest first: what is new since a reader last looked."""
        return self._all(
            f"SELECT {', '.join(RUN_FIELDS)} FROM runs WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        )

    def runs_by_ids(self, ids: list[int]) -> list[dict[str, Any]]:
        """Current rows of the given runs (missing ids are left out): re-reads runs still open."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out += self._all(f"SELECT {', '.join(RUN_FIELDS)} FROM runs WHERE id IN ({marks})", tuple(chunk))
        return out

    def latest_run_per_job(self) -> dict[str, dict[str, Any]]:
        """The newest run of every catalogued job, one index seek per job (O(jobs), not O(runs))."""
        sql = (
            f"SELECT {', '.join(RUN_FIELDS)} FROM runs WHERE id IN (SELECT "
            "(SELECT id FROM runs x WHERE x.job = j.name ORDER BY id DESC LIMIT 1) FROM jobs j)"
        )
        return {row["job"]: row for row in self._all(sql)}

    def recent_runs_of(self, names: list[str], per_job: int) -> dict[str, list[dict[str, Any]]]:
        """The newest `per_job` runs of each named job, newest first (index range per job)."""
        sql = f"SELECT {', '.join(RUN_FIELDS)} FROM runs WHERE job = ? ORDER BY id DESC LIMIT ?"
        return {name: self._all(sql, (name, per_job)) for name in names}

    def leader(self) -> dict[str, Any]:
        rows = self._all("SELECT epoch, pid, starttime, since, clean_stop FROM leader WHERE id = 1")
        if not rows:
            raise StoreError(f"state database {self.paths.db} has no leader row: not a Vigil database")
        return rows[0]

    def failovers(self, limit: int = 10) -> list[dict[str, Any]]:
        return self._all(
            "SELECT at, from_pid, to_pid, cause, gap_ms, epoch FROM failovers ORDER BY id DESC LIMIT ?",
            (limit,),
        )

    def agents(self) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT name, url, up, last_contact, version, cpu_percent, memory_percent, load1, running, error "
            "FROM agents ORDER BY name"
        )
        for row in rows:
            row["up"] = bool(row["up"])
        return rows

    def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._all("SELECT at, os_user, action, target, result FROM audit ORDER BY id DESC LIMIT ?", (limit,))

    def log_path(self, run_id: int) -> Path:
        return self.paths.run_dir(run_id) / "log"

    def read_log(self, run_id: int, offset: int = 0, max_bytes: int = 1 << 20) -> LogChunk:
        path = self.log_path(run_id)
        try:
            with open(path, "rb") as fh:
                size = fh.seek(0, 2)
                if offset > size:
                    offset = 0  # the file was truncated by the log cap
                fh.seek(offset)
                data = fh.read(max_bytes)
        except FileNotFoundError:
            return LogChunk("", offset, 0)
        return LogChunk(data.decode("utf-8", "replace"), offset + len(data), size)

    def tail_log(self, run_id: int, max_bytes: int = 256 * 1024) -> LogChunk:
        """The last `max_bytes` of a log: what a dashboard shows without loading a huge file."""
        path = self.log_path(run_id)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return LogChunk("", 0, 0)
        start = max(0, size - max_bytes)
        chunk = self.read_log(run_id, start, max_bytes)
        text = chunk.text
        if start > 0:
            text = text.split("\n", 1)[-1]  # drop the partial first line
        return LogChunk(text, chunk.offset, chunk.size)


def cluster_status(paths: StatePaths, timeout: float = 2.0) -> dict[str, Any]:
    """`active` (or None), `standbys`, and the last failovers."""
    active = None
    standbys: list[dict[str, Any]] = []
    try:
        reply = ControlClient(paths, timeout=timeout).request("status")
        active = reply.get("active")
        standbys = reply.get("standbys", [])
    except ControlError:
        pass
    failovers: list[dict[str, Any]] = []
    if paths.db.exists():
        reader = StateReader(paths)
        try:
            failovers = reader.failovers()
        finally:
            reader.close()
    return {"active": active, "standbys": standbys, "failovers": failovers}


# ---------------------------------------------------------------- the job files as they are now
#
# The `jobs` catalog is what the last active scheduler loaded. While one is active it is the truth
# (the active keeps a broken file's last valid version scheduled and says so in `error`). With no
# active nothing keeps that version running: what counts is what the job files say now, which is
# what `vigil jobs` shows then and what the next `vigil up` would load.


def broken_job_files(
    root: Path, valid: Collection[str], errors: Iterable[ConfigError], catalogued: Iterable[str] = ()
) -> dict[str, str]:
    """Job files that are invalid now, each with its first error (`PATH:LINE: KEY: reason`).

    An error counts for the job whose own file it names, not for vigil.toml or a _folder.toml. A
    `catalogued` job whose file exists but did not load although it has no error of its own (it
    sits below a broken _folder.toml, say) gets the first error of those files.
    """
    from engine.config import FOLDER_FILE, SETTINGS_FILE, job_name_of

    broken: dict[str, str] = {}
    shared: str | None = None
    for err in errors:
        name = job_name_of(err.path, root)
        if name == SETTINGS_FILE[:-5] or name.rpartition("/")[2] == FOLDER_FILE[:-5] or not err.path.endswith(".toml"):
            shared = shared or err.format()
        elif name not in valid:
            broken.setdefault(name, err.format())
    for name in catalogued:
        if name not in valid and name not in broken and (root / f"{name}.toml").is_file():
            broken[name] = f"not valid now: {shared}" if shared else "not valid now"
    return broken


@dataclass(frozen=True)
class JobFilesView:
    """One job folder as the next scheduler would load it."""

    folder: Path
    jobs: dict[str, JobSpec]  #: the job files valid now
    broken: dict[str, str]  #: job files invalid now: their first error
    problem: str | None = None  #: (part of) the folder could not be listed: a job missing above may still exist


class JobFilesReader:
    """Re-reads one job folder; a re-read parses only the files that changed since the last one."""

    def __init__(self, folder: Path) -> None:
        from engine.config import JobFolder

        self.folder = Path(folder)
        self._loader: JobFolder = JobFolder(self.folder, keep_last_valid=False)

    def read(self, catalogued: Iterable[str] = ()) -> JobFilesView:
        result = self._loader.scan()
        unlisted = [e for e in result.errors if e.key == "folder" and not e.path.endswith(".toml")]
        broken = broken_job_files(self.folder, result.jobs, result.errors, catalogued)
        problem = f"{escape(unlisted[0].path)}: {escape(unlisted[0].reason)}" if unlisted else None
        return JobFilesView(self.folder, dict(result.jobs), broken, problem)


def catalog_folder(rows: Iterable[dict[str, Any]]) -> Path | None:
    """The job folder the catalog was loaded from, read off its files' paths (None: no loaded job)."""
    found: Counter[str] = Counter()
    for row in rows:
        suffix = f"/{row['name']}.toml"
        path = row.get("path") or ""
        if path.endswith(suffix):
            found[path[: -len(suffix)] or "/"] += 1
    return Path(found.most_common(1)[0][0]) if found else None


def catalog_without_active(
    rows: Iterable[dict[str, Any]], files: JobFilesView | None, paused: Collection[str], now: datetime
) -> list[dict[str, Any]]:
    """The catalog rows (as `StateReader.jobs()` gives them) as they stand while no scheduler is active.

    Nothing fires without a scheduler, so a next fire already past is dropped (None). With `files`,
    each job is as its file is now: a valid file gives its schedule and settings (the recorded next
    fire kept only for an unchanged schedule); an invalid one gives `error`, schedule "invalid" and
    `loaded` 0, since no last valid version is running; a job whose file is gone is left out and a
    new file is added. Rows come back sorted by name.
    """
    catalog = {row["name"]: row for row in rows}

    def upcoming(text: str | None) -> str | None:
        when = parse_iso(text)
        return text if when is not None and when > now else None

    if files is None:
        return [{**row, "next_fire": upcoming(row["next_fire"])} for _, row in sorted(catalog.items())]
    out: dict[str, dict[str, Any]] = {}
    for name, spec in files.jobs.items():
        row = catalog.get(name)
        schedule = spec.schedule_text
        same = row is not None and row["loaded"] and row["schedule"] == schedule
        out[name] = {
            "name": name,
            "path": spec.path,
            "schedule": schedule,
            "enabled": int(spec.enabled),
            "agent": spec.agent,
            "description": spec.description,
            "tags": ",".join(spec.tags),
            "next_fire": upcoming(row["next_fire"]) if same and row is not None else None,
            "error": None,
            "paused": int(name in paused),
            "loaded": 1,
        }
    for name, error in files.broken.items():
        row = catalog.get(name) or {}
        out[name] = {
            "name": name,
            "path": row.get("path") or "",
            "schedule": "invalid",
            "enabled": 0,
            "agent": None,
            "description": row.get("description") or "",
            "tags": row.get("tags") or "",
            "next_fire": None,
            "error": error,
            "paused": int(name in paused),
            "loaded": 0,
        }
    if files.problem is not None:  # a folder that could not be listed: its jobs are not known to be gone
        for name, row in catalog.items():
            out.setdefault(name, {**row, "next_fire": upcoming(row["next_fire"])})
    return [out[name] for name in sorted(out)]
