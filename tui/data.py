"""The dashboard's data facade: typed snapshots of a state directory, with no widget code.

Every read goes through ``engine.api.StateReader`` on a small private thread pool, so the event loop
never blocks on SQLite and no read holds a transaction open (each statement is its own autocommit
read). Per-job history for the jobs view is kept incrementally: one bulk read of each job's newest
run at start, then only runs newer than the last one seen plus re-reads of runs still open. A tick
therefore costs O(changes), not O(history), even with a million runs. Older runs for the trend
column are fetched lazily, the jobs on screen first.

Commands go to the active scheduler through ``engine.control.ControlClient`` on a separate thread,
so a slow reply never delays a refresh.

While no scheduler is active the job catalog is only the last active's view: jobs are then shown
as their files are now (``engine.api.catalog_without_active``), the folder being re-read on its
own thread at most every FILES_EVERY seconds, and a next fire already past is not shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from engine.api import (
    AgentRow,
    AuditRow,
    ChannelHealth,
    ClusterStatus,
    FailoverRow,
    FlowRow,
    JobFilesReader,
    JobFilesView,
    JobRow,
    LogChunk,
    ResourceUse,
    Run,
    StateReader,
    catalog_folder,
    catalog_without_active,
)
from engine.control import COMMAND_TIMEOUT_S, ControlClient
from engine.errors import ControlError, NoActiveSchedulerError, VigilError
from engine.model import ACTIVE_STATES, OPEN_STATES, flow_summary
from engine.paths import StatePaths

__all__ = [
    "ActiveInfo",
    "AgentRow",
    "AuditRow",
    "ChannelHealth",
    "ClusterInfo",
    "FailoverRow",
    "JobRecord",
    "LogChunk",
    "Run",
    "Snapshot",
    "StateSource",
    "utc_now",
]

T = TypeVar("T")
Clock = Callable[[], datetime]


#: The flow view reads at most this many of a flow's runs (the newest).
FLOW_VIEW_MAX_RUNS = 5000


def after_edges(schedule: str) -> tuple[tuple[str, str], ...]:
    """The `after` edges of a job from its schedule text (`JobSpec.schedule_text`: "after a,b(failure)"),
    as (upstream job, condition) pairs; a job read from the catalog has no other record of them."""
    for part in schedule.split("; "):
        if part.startswith("after "):
            edges = []
            for item in part[len("after ") :].split(","):
                name, _, on = item.partition("(")
                edges.append((name, on.rstrip(")") or "success"))
            return tuple(edges)
    return ()


def utc_now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class JobRecord:
    name: str
    schedule: str
    enabled: bool = True
    paused: bool = False
    held: bool = False  #: `vigil hold`: its new runs wait pending
    priority: int = 0
    locks: str = ""  #: "gpu=1,db=1"
    error: str | None = None
    next_fire: datetime | None = None
    agent: str | None = None
    tags: str = ""
    description: str = ""
    last: Run | None = None  #: newest finished run
    current: Run | None = None  #: an open run (running preferred over pending)
    trend: tuple[Run, ...] | None = None  #: finished runs oldest first; None until loaded

    @property
    def status(self) -> str:
        """One word for the job's state now: a config error, off, paused, a live run, or idle."""
        if self.error:
            return "error"
        if self.current is not None:
            return self.current.state
        if not self.enabled:
            return "disabled"
        if self.paused:
            return "paused"
        if self.held:
            return "held"
        return "idle"


@dataclass(frozen=True, slots=True)
class ActiveInfo:
    pid: int
    epoch: int | None
    since: str | None
    heartbeat_age_s: float | None
    loop_lag_ms: float | None


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    active: ActiveInfo | None
    standbys: tuple[tuple[int, str | None], ...] = ()
    problem: str | None = None  #: why no active is shown (e.g. "no active scheduler")
    #: each `[resources.NAME]`'s use, then `max_running`'s (as `vigil status` reads them: ClusterStatus)
    resources: tuple[ResourceUse, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """Everything one refresh tick knows. `changed`/`removed` say which jobs differ from the last."""

    taken_at: datetime
    state_exists: bool
    cluster: ClusterInfo
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    changed: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    agents: tuple[AgentRow, ...] = ()
    failovers: tuple[FailoverRow, ...] = ()
    audit: tuple[AuditRow, ...] = ()
    channels: tuple[ChannelHealth, ...] = ()  #: the notification outbox per channel
    read_ms: float = 0.0
    error: str | None = None  #: a read failed; the rest of the snapshot is the last good data
    ever_read: bool = True  #: False until one read of the state has succeeded: there is no good data
    #: No active: the job folder the jobs were checked against (None: not read, the catalog as recorded)
    job_files: str | None = None
    job_files_problem: str | None = None  #: that folder (or part of it) could not be read


# ---------------------------------------------------------------- per-job history cache


class _History:
    """Newest runs per job, kept up to date from `runs_after` and re-reads of open runs."""

    def __init__(self, trend_len: int) -> None:
        self.trend_len = trend_len
        self.cursor = 0  #: newest run id seen
        self.recent: dict[str, list[Run]] = {}  #: newest first, at most trend_len
        self.complete: set[str] = set()  #: jobs whose `recent` holds their full trend
        self.open: dict[int, Run] = {}
        self.ready = False

    def reset(self, reader: StateReader) -> set[str]:
        self.cursor = reader.max_run_id()
        self.recent = {job: [run] for job, run in reader.latest_run_per_job().items()}
        self.complete = set()
        self.open = {}
        for state in OPEN_STATES:
            for run in reader.runs(state=state, limit=10_000):
                self.open[run.id] = run
        self.ready = True
        return set(self.recent)

    def update(self, reader: StateReader, names: list[str], wanted: list[str], fill: int) -> set[str]:
        """Apply what changed since the last call; return the jobs whose history changed.

        `names` are the catalogued jobs (in display order), `wanted` those on screen: trends of up
        to `fill` jobs are loaded per call, the wanted ones first.
        """
        if not self.ready:
            dirty = self.reset(reader)
        else:
            dirty = set()
            new = reader.runs_after(self.cursor, limit=5000)
            if len(new) >= 5000:  # far behind (or ids reused): start over rather than page
                return self.reset(reader) | self._fill(reader, names, wanted, fill)
            new_ids = {r.id for r in new}
            reread = [run_id for run_id in self.open if run_id not in new_ids]
            for run in new:
                self._put(run, dirty)
                self.cursor = max(self.cursor, run.id)
            if reread:
                seen = set()
                for run in reader.runs_by_ids(reread):
                    seen.add(run.id)
                    self._put(run, dirty)
                for gone in set(reread) - seen:  # pruned or never committed
                    run = self.open.pop(gone)
                    dirty.add(run.job)
        return dirty | self._fill(reader, names, wanted, fill)

    def _put(self, run: Run, dirty: set[str]) -> None:
        if run.is_open:
            if self.open.get(run.id) != run:
                self.open[run.id] = run
                dirty.add(run.job)
        elif self.open.pop(run.id, None) is not None:
            dirty.add(run.job)
        runs = self.recent.setdefault(run.job, [])
        for i, old in enumerate(runs):
            if old.id == run.id:
                if old != run:
                    runs[i] = run
                    dirty.add(run.job)
                return
        runs.append(run)
        runs.sort(key=lambda r: r.id, reverse=True)
        del runs[self.trend_len :]
        dirty.add(run.job)

    def _fill(self, reader: StateReader, names: list[str], wanted: list[str], budget: int) -> set[str]:
        """Load full trends for up to `budget` jobs, the wanted (on-screen) ones first."""
        todo = [n for n in wanted if n not in self.complete][:budget]
        if len(todo) < budget:
            chosen = set(todo)
            extra = (n for n in names if n not in self.complete and n not in chosen)
            for name in extra:
                todo.append(name)
                if len(todo) >= budget:
                    break
        if not todo:
            return set()
        found = reader.recent_runs_of(todo, self.trend_len)
        dirty: set[str] = set()
        for name in todo:
            merged = {r.id: r for r in self.recent.get(name, [])}
            for run in found.get(name, []):
                merged.setdefault(run.id, run)
            self.recent[name] = sorted(merged.values(), key=lambda r: r.id, reverse=True)[: self.trend_len]
            self.complete.add(name)
            dirty.add(name)
        return dirty

    def job_view(self, name: str) -> tuple[Run | None, tuple[Run, ...] | None]:
        """(newest finished run, trend oldest-first or None while not loaded)."""
        runs = self.recent.get(name, [])
        finished = [r for r in runs if not r.is_open]
        last = finished[0] if finished else None
        trend = tuple(reversed(finished)) if name in self.complete else None
        return last, trend


def _current_runs(open_runs: Iterable[Run]) -> dict[str, Run]:
    """Per job, the open run that best says what it is doing: running beats pending; newest wins."""
    best: dict[str, Run] = {}
    for run in open_runs:
        old = best.get(run.job)
        rank = (run.state in ACTIVE_STATES, run.id)
        if old is None or rank > (old.state in ACTIVE_STATES, old.id):
            best[run.job] = run
    return best


# ---------------------------------------------------------------- the facade


class StateSource:
    """Async reads and commands for one state directory."""

    #: Jobs whose trend is fetched per tick (≈ 7 ms per 40 jobs at a million runs).
    FILL_PER_TICK = 100
    #: Catalogs up to this size are re-read every tick (≈ 10 ms per 2,000 jobs).
    CATALOG_EVERY_TICK = 2000
    #: With no active, the job folder is re-read at most this often (seconds), off the read thread.
    FILES_EVERY = 3.0
    #: How long the first read of the job folder may hold up a snapshot, so the first screen is right.
    FILES_FIRST_WAIT = 2.0

    def __init__(
        self,
        paths: StatePaths,
        *,
        jobs_dir: Path | None = None,
        clock: Clock = utc_now,
        trend_len: int = 8,
        control_timeout: float = 2.0,
        action_timeout: float = COMMAND_TIMEOUT_S,
        files_every: float | None = None,
    ) -> None:
        self.paths = paths
        #: Where job files are looked for with no active when the catalog does not name its folder.
        self.jobs_dir = jobs_dir
        self.files_every = self.FILES_EVERY if files_every is None else files_every
        self.clock = clock
        self.trend_len = trend_len
        self.control_timeout = control_timeout
        self.action_timeout = action_timeout
        self._reads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vigil-tui-read")
        self._commands = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-tui-cmd")
        self._files_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-tui-files")
        self._files_reader: JobFilesReader | None = None
        self._files_view: JobFilesView | None = None
        self._files_future: Future[JobFilesView] | None = None
        self._files_read_at = 0.0
        self._without_active: bool | None = None  #: the catalog last shown was adjusted for no active
        self._raw_rows: list[JobRow] | None = None  #: the catalog as recorded (no active only)
        self._raw_folder: Path | None = None  #: the folder those rows' files are in
        self._local = threading.local()
        self._readers: list[StateReader] = []
        self._snapshot_lock = threading.Lock()
        self._history = _History(trend_len)
        self._rows: dict[str, JobRow] = {}
        self._records: dict[str, JobRecord] = {}
        self._wanted: list[str] = []
        self._last: Snapshot | None = None
        self._current_jobs: set[str] = set()
        self._tick = 0

    # -- plumbing

    def _reader(self) -> StateReader:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = StateReader(self.paths)
            self._local.reader = reader
            self._readers.append(reader)
        return reader

    async def _in_pool(self, fn: Callable[[], T], pool: ThreadPoolExecutor | None = None) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool or self._reads, fn)

    def close(self) -> None:
        self._reads.shutdown(wait=False, cancel_futures=True)
        self._commands.shutdown(wait=False, cancel_futures=True)
        self._files_pool.shutdown(wait=False, cancel_futures=True)
        for reader in self._readers:
            try:
                reader.close()
            except Exception:
                pass

    def want_trends(self, names: Iterable[str]) -> None:
        """The jobs on screen: their trends are fetched first."""
        self._wanted = list(names)

    @property
    def last(self) -> Snapshot | None:
        return self._last

    # -- snapshots

    async def snapshot(self) -> Snapshot:
        return await self._in_pool(self.snapshot_sync)

    def snapshot_sync(self) -> Snapshot:
        with self._snapshot_lock:
            started = time.perf_counter()
            cluster = self.read_cluster()
            if not self.paths.db.exists():
                snap = Snapshot(taken_at=self.clock(), state_exists=False, cluster=cluster)
                self._last = snap
                return snap
            try:
                snap = self._read_state(cluster)
            except Exception as exc:  # any failed read: keep the last data, flag it stale
                previous = self._last
                # What this read found changed is lost with it: next time, re-read the catalog and
                # compare every job with the records on screen (the last good snapshot's).
                self._records = dict(previous.jobs) if previous else {}
                self._rows = {}
                self._raw_rows = None
                snap = Snapshot(
                    taken_at=previous.taken_at if previous else self.clock(),
                    state_exists=True,
                    cluster=cluster,
                    jobs=previous.jobs if previous else {},
                    agents=previous.agents if previous else (),
                    failovers=previous.failovers if previous else (),
                    audit=previous.audit if previous else (),
                    channels=previous.channels if previous else (),
                    error=f"read failed: {exc}",
                    ever_read=previous.ever_read if previous else False,
                    job_files=previous.job_files if previous else None,
                    job_files_problem=previous.job_files_problem if previous else None,
                )
                self._last = snap
                return snap
            snap = Snapshot(**{**snap.__dict__, "read_ms": (time.perf_counter() - started) * 1000})
            self._last = snap
            return snap

    def read_cluster(self) -> ClusterInfo:
        """The active's own answer over the control socket; no answer means no active scheduler."""
        try:
            reply = ControlClient(self.paths, timeout=self.control_timeout).request("status")
        except NoActiveSchedulerError:
            return ClusterInfo(active=None, problem="no active scheduler")
        except ControlError as exc:
            return ClusterInfo(active=None, problem=str(exc))
        except (OSError, ValueError) as exc:  # a timeout or a garbled reply: the active is not answering
            return ClusterInfo(active=None, problem=f"the active scheduler is not answering ({exc})")
        active = reply.get("active") or None
        info = None
        if active:
            info = ActiveInfo(
                pid=int(active["pid"]),
                epoch=active.get("epoch"),
                since=active.get("since"),
                heartbeat_age_s=active.get("heartbeat_age_s"),
                loop_lag_ms=active.get("loop_lag_ms"),
            )
        standbys = tuple((int(s["pid"]), s.get("since")) for s in reply.get("standbys", []))
        resources = tuple(ClusterStatus(active, [], [], reply.get("scheduler")).resources()) if info else ()
        problem = None if info else "no active scheduler"
        return ClusterInfo(active=info, standbys=standbys, problem=problem, resources=resources)

    def _catalog_due(self) -> bool:
        """Re-read the job catalog every tick for up to CATALOG_EVERY_TICK jobs, proportionally less
        often beyond (10,000 jobs: every 5th tick). Run states still refresh on every tick."""
        self._tick += 1
        if not self._rows:
            return True
        every = max(1, -(-len(self._rows) // self.CATALOG_EVERY_TICK))
        return self._tick % every == 0

    def _job_files(self, rows: list[JobRow]) -> tuple[JobFilesView | None, bool]:
        """(the newest read of the job folder, whether it is newer than the last call's).

        The folder is the one the catalog's files are in, else `jobs_dir`. A read runs on its own
        thread, at most every `files_every` seconds; only the very first is waited for (a little).
        """
        folder = self._raw_folder or self.jobs_dir
        if folder is None:
            return None, False
        if self._files_reader is None or self._files_reader.folder != Path(folder):
            self._files_reader = JobFilesReader(Path(folder))
            self._files_view, self._files_future = None, None
        fresh = False
        if self._files_future is None and (
            self._files_view is None or time.monotonic() - self._files_read_at >= self.files_every
        ):
            self._files_read_at = time.monotonic()
            self._files_future = self._files_pool.submit(self._files_reader.read, [row.name for row in rows])
            if self._files_view is None:
                with contextlib.suppress(Exception):  # a timeout or a failed read: taken up below
                    self._files_future.result(timeout=self.FILES_FIRST_WAIT)
        future = self._files_future
        if future is not None and future.done():
            self._files_future = None
            try:
                view = future.result()
            except Exception as exc:  # e.g. an unreadable folder: say so, show the catalog as recorded
                view = JobFilesView(self._files_reader.folder, {}, {}, f"{self._files_reader.folder}: {exc}")
            fresh = view != self._files_view
            self._files_view = view
        return self._files_view, fresh

    def _read_state(self, cluster: ClusterInfo) -> Snapshot:
        reader = self._reader()
        without_active = cluster.active is None
        files: JobFilesView | None = None
        catalog = self._catalog_due() or without_active != self._without_active
        self._without_active = without_active
        if without_active:
            if catalog or self._raw_rows is None:
                self._raw_rows = reader.jobs()
                self._raw_folder = catalog_folder(self._raw_rows)
            files, fresh = self._job_files(self._raw_rows)
            if catalog or fresh:  # a new read of the files changes what the catalog rows show
                catalog = True
                adjusted = catalog_without_active(self._raw_rows, files, reader.paused_jobs(), self.clock())
                rows = {row.name: row for row in adjusted}
            else:
                rows = self._rows
        else:
            self._raw_rows = None
            rows = {row.name: row for row in reader.jobs()} if catalog else self._rows
        dirty = self._history.update(reader, list(rows), self._wanted, self.FILL_PER_TICK)
        current = _current_runs(self._history.open.values())
        dirty |= set(current) ^ self._current_jobs
        self._current_jobs = set(current)
        if catalog:
            dirty |= {name for name, row in rows.items() if self._rows.get(name) != row}
        records = dict(self._records) if not catalog else {}
        changed: set[str] = set()
        for name in rows if catalog else dirty:
            row = rows.get(name)
            if row is None:
                continue
            old = self._records.get(name)
            if old is not None and name not in dirty:
                records[name] = old
                continue
            last, trend = self._history.job_view(name)
            record = JobRecord(
                name=name,
                schedule=row.schedule,
                enabled=row.enabled,
                paused=row.paused,
                held=row.held,
                priority=row.priority,
                locks=row.locks,
                error=row.error,
                next_fire=row.next_fire,
                agent=row.agent,
                tags=row.tags,
                description=row.description,
                last=last,
                current=current.get(name),
                trend=trend,
            )
            if record != old:
                changed.add(name)
            records[name] = record
        removed = frozenset(set(self._records) - set(records))
        self._rows = rows
        self._records = records
        agents = tuple(reader.agents())
        failovers = tuple(reader.failovers(limit=20))
        audit = tuple(reader.audit(limit=30))
        channels = tuple(reader.channel_health())
        return Snapshot(
            taken_at=self.clock(),
            state_exists=True,
            cluster=cluster,
            jobs=records,
            changed=frozenset(changed),
            removed=removed,
            agents=agents,
            failovers=failovers,
            audit=audit,
            channels=channels,
            job_files=str(files.folder) if files is not None else None,
            job_files_problem=files.problem if files is not None else None,
        )

    # -- history, runs, logs

    async def runs_window(
        self,
        *,
        job: str | None = None,
        state: str | None = None,
        before_id: int | None = None,
        limit: int = 100,
        count_base: tuple[int, int] | None = None,
    ) -> tuple[list[Run], int, int, tuple[int, int] | None]:
        """(page, runs newer than it, total, count base): page and numbers from one instant."""

        def read() -> tuple[list[Run], int, int, tuple[int, int] | None]:
            if not self.paths.db.exists():
                return [], 0, 0, None
            window = self._reader().runs_window(
                job=job, state=state, limit=limit, before_id=before_id, count_base=count_base
            )
            return window.runs, window.newer, window.total, window.count_base

        return await self._in_pool(read)

    async def run(self, run_id: int) -> Run | None:
        def read() -> Run | None:
            try:
                return self._reader().run(run_id)
            except VigilError:
                return None

        return await self._in_pool(read)

    async def flow(self, flow_id: int) -> tuple[FlowRow, list[Run]] | None:
        """A flow's summary and its runs, oldest first; None when no run has that flow id."""

        def read() -> tuple[FlowRow, list[Run]] | None:
            try:
                runs = self._reader().flow_runs(flow_id, limit=FLOW_VIEW_MAX_RUNS)[::-1]
            except VigilError:
                return None
            return (flow_summary(flow_id, runs), runs) if runs else None

        return await self._in_pool(read)

    async def read_log(self, run_id: int, offset: int, max_bytes: int) -> LogChunk:
        return await self._in_pool(lambda: self._reader().read_log(run_id, offset, max_bytes))

    async def tail_log(self, run_id: int, max_bytes: int) -> LogChunk:
        return await self._in_pool(lambda: self._reader().tail_log(run_id, max_bytes))

    # -- commands

    async def command(self, op: str, **args: Any) -> dict[str, Any]:
        """Ask the active scheduler to act; it audits the request itself. Raises ControlError."""
        client = ControlClient(self.paths, timeout=self.action_timeout)
        return await self._in_pool(lambda: client.request(op, **args), self._commands)
