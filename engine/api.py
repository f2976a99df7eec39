"""The engine's public read API: what the CLI and the dashboard know about a state directory.

The reads are the store's (`engine.store.sqlite.reader`, typed records of `engine.model`); this
module adds the run logs, the cluster view and the job files as they are now, and re-exports what
the dashboard imports so that `tui/` depends on this one module. Commands go to the active
scheduler through ``ControlClient``.

Layer: api. May import everything below it (store, control, config, base modules), never `tui`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.control import ControlClient
from engine.errors import ConfigError, ControlError
from engine.model import AgentRow, AuditRow, FailoverRow, FlowRow, JobRow, ResourceUse, Run, RunsWindow, to_json
from engine.paths import StatePaths
from engine.store.abc import ChannelHealth
from engine.store.sqlite.reader import SqliteReader
from engine.text import escape  # for readers that show user text (names, reasons) in a terminal

if TYPE_CHECKING:  # engine.config imports croniter: only readers of job files pay for it
    from engine.config import JobFolder
    from engine.model import JobSpec

__all__ = [
    "RUN_FIELDS",
    "AgentRow",
    "AuditRow",
    "ChannelHealth",
    "ClusterStatus",
    "ControlClient",
    "FailoverRow",
    "FlowRow",
    "JobFilesReader",
    "JobFilesView",
    "JobRow",
    "LogChunk",
    "ResourceUse",
    "Run",
    "RunsWindow",
    "StateReader",
    "broken_job_files",
    "catalog_folder",
    "catalog_without_active",
    "cluster_status",
    "escape",
    "run_json",
]

#: A run's fields in `vigil runs --json`, in their order there.
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
    "flow_id",
    "warnings",
)


def run_json(run: Run) -> dict[str, Any]:
    """A run as `vigil runs --json` prints it; `warnings` a list of words (late, longer, shorter)."""
    doc = to_json(run, RUN_FIELDS)
    doc["warnings"] = list(run.warnings)
    doc["outputs"] = dict(run.outputs)
    return doc


@dataclass(frozen=True)
class LogChunk:
    text: str
    offset: int  #: where the next read should start
    size: int  #: file size when read


class StateReader(SqliteReader):
    """The store's reads plus each run's captured log (a file in its run directory)."""

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


@dataclass(frozen=True)
class ClusterStatus:
    """The active and the standbys as the active reports them, and the last failovers."""

    active: dict[str, Any] | None  #: the active's own `status` reply (None: none answers)
    standbys: list[dict[str, Any]]
    failovers: list[FailoverRow]
    scheduler: dict[str, Any] | None = None  #: the active scheduler's counts (`Scheduler.status`)

    def resources(self) -> list[ResourceUse]:
        """Each `[resources.NAME]`'s use, then `max_running`'s, as the active holds them (none: no active)."""
        uses = (self.scheduler or {}).get("resources") or []
        return [
            ResourceUse(
                name=str(use["name"]),
                limit=int(use["limit"]),
                used=int(use["used"]),
                holders=tuple(int(run_id) for run_id in use["holders"]),
                waiting=int(use["waiting"]),
            )
            for use in uses
        ]

    @property
    def max_running(self) -> int | None:
        value = (self.scheduler or {}).get("max_running")
        return int(value) if value is not None else None

    @property
    def held(self) -> list[str]:
        return [str(name) for name in (self.scheduler or {}).get("held") or []]


def cluster_status(paths: StatePaths, timeout: float = 2.0) -> ClusterStatus:
    active = None
    scheduler = None
    standbys: list[dict[str, Any]] = []
    try:
        reply = ControlClient(paths, timeout=timeout).request("status")
        active = reply.get("active")
        standbys = reply.get("standbys", [])
        scheduler = reply.get("scheduler")
    except ControlError:
        pass
    failovers: list[FailoverRow] = []
    if paths.db.exists():
        reader = StateReader(paths)
        try:
            failovers = reader.failovers()
        finally:
            reader.close()
    return ClusterStatus(active, standbys, failovers, scheduler)


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


def flawed_job_files(root: Path, valid: Collection[str], errors: Iterable[ConfigError]) -> dict[str, str]:
    """Job files that load but have an error of their own (a `notify` naming a channel that is not
    valid: alerting config never stops a job), each with its first error."""
    from engine.config import job_name_of

    flawed: dict[str, str] = {}
    for err in errors:
        name = job_name_of(err.path, root)
        if name in valid:
            flawed.setdefault(name, err.format())
    return flawed


@dataclass(frozen=True)
class JobFilesView:
    """One job folder as the next scheduler would load it."""

    folder: Path
    jobs: dict[str, JobSpec]  #: the job files valid now
    broken: dict[str, str]  #: job files invalid now: their first error
    problem: str | None = None  #: (part of) the folder could not be listed: a job missing above may still exist
    flawed: dict[str, str] = field(default_factory=dict)  #: valid job files with an error: their first error


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
        flawed = flawed_job_files(self.folder, result.jobs, result.errors)
        problem = f"{escape(unlisted[0].path)}: {escape(unlisted[0].reason)}" if unlisted else None
        return JobFilesView(self.folder, dict(result.jobs), broken, problem, flawed)


def catalog_folder(rows: Iterable[JobRow]) -> Path | None:
    """The job folder the catalog was loaded from, read off its files' paths (None: no loaded job)."""
    found: Counter[str] = Counter()
    for row in rows:
        suffix = f"/{row.name}.toml"
        if row.path.endswith(suffix):
            found[row.path[: -len(suffix)] or "/"] += 1
    return Path(found.most_common(1)[0][0]) if found else None


def catalog_without_active(
    rows: Iterable[JobRow], files: JobFilesView | None, paused: Collection[str], now: datetime
) -> list[JobRow]:
    """The catalog rows (as `StateReader.jobs()` gives them) as they stand while no scheduler is active.

    Nothing fires without a scheduler, so a next fire already past is dropped (None). With `files`,
    each job is as its file is now: a valid file gives its schedule and settings (the recorded next
    fire kept only for an unchanged schedule) and its error if it loads with one; an invalid one
    gives `error`, schedule "invalid" and `loaded` False, since no last valid version is running; a
    job whose file is gone is left out and a new file is added. Rows come back sorted by name.
    """
    catalog = {row.name: row for row in rows}

    def upcoming(when: datetime | None) -> datetime | None:
        return when if when is not None and when > now else None

    def as_recorded(row: JobRow) -> JobRow:
        return dataclasses.replace(row, next_fire=upcoming(row.next_fire))

    if files is None:
        return [as_recorded(row) for _, row in sorted(catalog.items())]
    out: dict[str, JobRow] = {}
    for name, spec in files.jobs.items():
        row = catalog.get(name)
        schedule = spec.schedule_text
        same = row is not None and row.loaded and row.schedule == schedule
        out[name] = JobRow(
            name=name,
            path=spec.path,
            schedule=schedule,
            enabled=spec.enabled,
            agent=spec.agent,
            description=spec.description,
            tags=",".join(spec.tags),
            next_fire=upcoming(row.next_fire) if same and row is not None else None,
            error=files.flawed.get(name),
            paused=name in paused,
            loaded=True,
            held=row.held if row is not None else False,
            priority=spec.priority,
            locks=",".join(f"{lock}={count}" for lock, count in spec.locks),
        )
    for name, error in files.broken.items():
        row = catalog.get(name)
        out[name] = JobRow(
            name=name,
            path=row.path if row is not None else "",
            schedule="invalid",
            enabled=False,
            agent=None,
            description=row.description if row is not None else "",
            tags=row.tags if row is not None else "",
            next_fire=None,
            error=error,
            paused=name in paused,
            loaded=False,
        )
    if files.problem is not None:  # a folder that could not be listed: its jobs are not known to be gone
        for name, row in catalog.items():
            out.setdefault(name, as_recorded(row))
    return [out[name] for name in sorted(out)]
