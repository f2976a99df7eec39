"""The job folder kept loaded: the incremental cache, `_folder.toml` layering, `after` names and cycles.

`JobFolder.scan()` is called about once a second by the scheduler, so an unchanged folder costs one
`stat()` per file (or nothing, under an inotify watch) and an edit that breaks a job leaves its last
valid version active. Each key's value remembers the file that set it, so an error about a key a
`_folder.toml` set points there. Imports the other modules of this package, `engine.durations`,
`engine.model`, `engine.errors` and `engine.text`.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, cast

from engine.config.fields import (
    JOB_FIELDS,
    MAX_ENV_BYTES,
    REQUIRED_JOB_KEYS,
    env_bytes,
    too_large_env,
    validate_job_keys,
    zone,
)
from engine.config.names import NAME_RULE, job_name_problem
from engine.config.settings import SETTINGS_FILE, Targets, parse_settings
from engine.config.sources import SourceFile, Value, link_problem, not_regular, read_file
from engine.config.watch import FULL_WALK_EVERY, FULL_WALK_SHARE, DirWatch
from engine.durations import MAX_DURATION_YEARS
from engine.errors import ConfigError
from engine.model import AfterEdge, Condition, JobSpec, Settings
from engine.text import quote
from engine.users import accounts_stamp, find_account, run_as_problem

__all__ = ["FOLDER_FILE", "JobFolder", "LoadResult", "ScanResult", "format_errors", "job_name_of", "load_folder"]

FOLDER_FILE = "_folder.toml"
_FOLDER_KEY, _SETTINGS_KEY = FOLDER_FILE[:-5], SETTINGS_FILE[:-5]  #: their keys in `JobFolder._files`
_T = TypeVar("_T")
_Report = Callable[[ConfigError], None]
#: A file whose mtime is this close to the moment it was read may be rewritten within the same
#: timestamp tick with the same size; its content is compared again on the next scan (as git does).
_RACY_WINDOW_NS = 1_000_000_000
#: `at` is kept in a range where adding any duration (at most 100 years) stays a valid datetime
_AT_FIRST_YEAR, _AT_LAST_YEAR = 1970, datetime.max.year - MAX_DURATION_YEARS


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass
class LoadResult:
    """Every valid job of a folder, every error found, and the settings in force."""

    jobs: dict[str, JobSpec]
    errors: list[ConfigError]
    settings: Settings


@dataclass
class ScanResult:
    """One live-reload step: the effective jobs, what moved since the last scan, all current errors."""

    #: the folder's own mapping, not a copy (a scan that finds nothing changed allocates nothing big):
    #: a new one is made when the jobs change, and none is ever changed in place; do not change it
    jobs: Mapping[str, JobSpec]
    changed: set[str]  #: added, or effective spec differs from the previous scan
    removed: set[str]  #: no longer in `jobs` (file deleted)
    errors: list[ConfigError]
    settings: Settings


def job_name_of(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """The job name a file under `root` gives (its relative path without `.toml`)."""
    rel = os.path.relpath(path, root)
    return rel[:-5] if rel.endswith(".toml") else rel


def _agent_errors(source: SourceFile, values: Mapping[str, Value], targets: Targets) -> list[ConfigError]:
    """`agent` naming no valid agent or pool: the job cannot run."""
    agent = values.get("agent")
    if agent is not None and (problem := targets.agents.problem(agent.value)):
        return [source.error(("agent",), problem)]
    return []


def _lock_errors(merged: Mapping[str, Value], targets: Targets) -> list[ConfigError]:
    """`locks` naming a resource vigil.toml does not declare validly, or more of one than its limit: the
    job cannot load (its runs could never start). Said in the file that sets `locks`."""
    locks = merged.get("locks")
    if locks is None:
        return []
    return [
        locks.source.error(("locks",), problem)
        for name, count in locks.value
        if (problem := targets.lock_problem(name, count))
    ]


def _notify_errors(source: SourceFile, values: Mapping[str, Value], targets: Targets) -> list[ConfigError]:
    """`notify` naming a channel that is not valid: reported, but the job still loads.

    Alerting config must not stop scheduling: the job's events go to its valid channels, or to
    `[scheduler] notify` when it names none (engine/notify/routing.py).
    """
    notify = values.get("notify")
    if notify is None:
        return []
    return [source.error(("notify",), problem) for name in notify.value if (problem := targets.channels.problem(name))]


def format_errors(errors: Iterable[ConfigError]) -> str:
    """One `PATH:LINE: KEY: reason` line per error, for the CLI and logs."""
    return "\n".join(error.format() for error in errors)


def _merge(layers: Iterable[dict[str, Value]]) -> dict[str, Value]:
    """Folder defaults, outermost first, then the job: `env` merges by name, every other key replaces."""
    merged: dict[str, Value] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "env" and "env" in merged:
                merged["env"] = Value({**merged["env"].value, **value.value}, value.source)
            else:
                merged[key] = value
    return merged


_SHARED_TYPES = (str, tuple)  #: job values kept once for all jobs where equal (a tuple's items are strings)


class _Shared(dict[Any, Any]):
    """Equal values built for many jobs in one evaluation (the `env` a folder gives its jobs), kept once."""

    def one(self, value: _T) -> _T:
        """The first value built equal to `value` (itself if none was)."""
        return cast(_T, self.setdefault(value, value))


def _build_spec(
    name: str, source: SourceFile, merged: dict[str, Value], targets: Targets, shared: _Shared
) -> tuple[JobSpec | None, list[ConfigError]]:
    """The JobSpec of one job from its merged keys, with the checks that need the whole job.

    Only the keys some file sets are passed: every other one takes its `JobSpec` default."""
    errors = _whole_job_errors(source, merged, targets)
    if errors:
        return None, errors
    own = {key: value for key, value in merged.items() if value.source is source}
    errors = _notify_errors(source, own, targets)  # a `_folder.toml`'s own are its errors
    # Equal strings and string lists of many jobs (a command, a cron expression) kept once: each file's
    # parse made its own.
    share = shared.setdefault  # per value of every job: no method of our own in between
    values: dict[str, Any] = {
        key: share(v, v) if type(v := value.value) in _SHARED_TYPES else v for key, value in merged.items()
    }
    if "env" in values:
        values["env"] = shared.one(tuple(shared.one(pair) for pair in sorted(values["env"].items())))
    if "after" in values:
        edges: tuple[AfterEdge, ...] = values["after"]
        values["after"] = shared.one(tuple(edge.job for edge in edges))
        if any(edge.on is not Condition.SUCCESS for edge in edges):
            values["after_on"] = shared.one(tuple(edge.on for edge in edges))
    if "at" in values:
        at = _aware_at(values["at"], values.get("timezone", JOB_FIELDS["timezone"].default))
        if at is None:
            where = merged["at"].source
            error = where.error(("at",), f"must be between the years {_AT_FIRST_YEAR} and {_AT_LAST_YEAR} (UTC)")
            return None, [error, *errors]
        values["at"] = at
    return JobSpec(name=name, path=source.path, **values), errors


def _whole_job_errors(source: SourceFile, merged: Mapping[str, Value], targets: Targets) -> list[ConfigError]:
    """What keeps the job from loading: a required key no file sets, the job's own `agent` naming what
    vigil.toml does not declare (a `_folder.toml`'s own are its errors), an `env` too large merged, a
    `user` this host's scheduler cannot run the job as."""
    errors = [
        ConfigError(source.path, key, "required: set it here or in a _folder.toml above")
        for key in REQUIRED_JOB_KEYS
        if key not in merged
    ]
    errors.extend(_agent_errors(source, {k: v for k, v in merged.items() if v.source is source}, targets))
    user = merged.get("user")
    if user is not None and "agent" not in merged:
        # On an agent, the agent's privileges decide, when it launches the run.
        problem = run_as_problem(user.value, find_account(user.value), euid=os.geteuid())
        if problem:
            errors.append(user.source.error(("user",), problem))  # where it is set (maybe a _folder.toml)
    errors += _threshold_errors(source, merged)
    errors += _lock_errors(merged, targets)
    errors += _calendar_errors(source, merged, targets)
    env = merged.get("env")
    if env is not None and (size := env_bytes(env.value)) > MAX_ENV_BYTES:
        # Each file's own table is within the cap; only their merge is too large.
        reason = str(too_large_env(size, " with the env of the _folder.toml files above"))
        errors.append(
            source.error(("env",), reason) if "env" in source.keys else ConfigError(source.path, "env", reason)
        )
    return errors


def _threshold_errors(source: SourceFile, merged: Mapping[str, Value]) -> list[ConfigError]:
    """`warn_if_shorter` must be below `warn_if_longer` when both are durations, or both percentages:
    otherwise every run would be one or the other (or both)."""
    shorter, longer = merged.get("warn_if_shorter"), merged.get("warn_if_longer")
    if shorter is None or longer is None:
        return []
    low, high = shorter.value, longer.value
    if low.seconds is not None and high.seconds is not None:
        crossed = low.seconds >= high.seconds
    elif low.percent is not None and high.percent is not None:
        crossed = low.percent >= high.percent
    else:
        return []  # a duration and a percentage: which is larger depends on the history
    if not crossed:
        return []
    # Said in the file to change: the job's own if it sets either key, else where warn_if_shorter is set.
    key, where = "warn_if_shorter", shorter
    if longer.source is source and shorter.source is not source:
        key, where = "warn_if_longer", longer
    return [where.source.error((key,), f"warn_if_shorter ({low}) must be below warn_if_longer ({high})")]


def _calendar_errors(source: SourceFile, merged: Mapping[str, Value], targets: Targets) -> list[ConfigError]:
    """`calendar` naming a declared calendar, and the calendar and window keys that only work together:
    `workday` needs `calendar` and `at_time` and replaces cron/every/at; `at_time` and `on_nonworking`
    mean nothing alone; `outside_window` and `kill_at_window_end` need `window`."""
    errors: list[ConfigError] = []

    def error(key: str, reason: str) -> None:
        where = merged[key].source
        errors.append(where.error((key,), reason))

    calendar = merged.get("calendar")
    if calendar is not None and (problem := targets.calendars.problem(calendar.value)):
        error("calendar", problem)
    if "workday" in merged:
        if calendar is None:
            error("workday", 'needs calendar = "NAME" (working days are those of a [calendars.NAME] in vigil.toml)')
        if "at_time" not in merged:
            error("workday", 'needs at_time = "HH:MM" (when, on that working day, the job fires)')
        for key in ("cron", "every", "at"):
            if key in merged:
                error(key, "cannot be combined with workday (workday and at_time are the schedule)")
        if "on_nonworking" in merged:
            error("on_nonworking", "has no effect with workday (a workday fire is always on a working day)")
    elif "at_time" in merged:
        error("at_time", "needs workday = N (at_time is the time of day of a workday schedule)")
    if "on_nonworking" in merged and calendar is None:
        error("on_nonworking", 'needs calendar = "NAME" (a calendar says which days are non-working)')
    if "window" not in merged:
        for key in ("outside_window", "kill_at_window_end"):
            if key in merged:
                error(key, 'needs window = "DAYS HH:MM-HH:MM" (e.g. "mon-fri 08:00-18:00")')
    return errors


def _aware_at(at: datetime, zone_name: str) -> datetime | None:
    """`at` made aware in the job's zone when written without an offset; None outside the years allowed."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone(zone_name))
    try:
        year = at.astimezone(UTC).year
    except OverflowError:  # 9999-12-31T23:00 in New York is past datetime's last year in UTC
        return None
    return at if _AT_FIRST_YEAR <= year <= _AT_LAST_YEAR else None


# ---------------------------------------------------------------------------------------------------
# The folder and live reload


def _stamp(st: os.stat_result) -> int:
    """A file's (mtime, size, inode) as one int: each field in its own bits, so equal stamps are equal
    stats (a tuple of three ints took 128 bytes a file, this about 56)."""
    return (st.st_mtime_ns << 128) | (st.st_size << 64) | st.st_ino


def _is_job_key(key: str) -> bool:
    """A job file's key, not vigil.toml's or a `_folder.toml`'s."""
    return key != _SETTINGS_KEY and key != _FOLDER_KEY and not key.endswith("/" + _FOLDER_KEY)


def _by_file_name(item: tuple[str, SourceFile]) -> str:
    """Files in the order of their paths (a key is a path without `.toml`, which sorts otherwise)."""
    return item[0] + ".toml"


@lru_cache(maxsize=65536)
def _chain(rel_dir: str) -> tuple[str, ...]:
    """The folders whose `_folder.toml` apply to a job in `rel_dir`, outermost first."""
    if not rel_dir:
        return ("",)
    parts = rel_dir.split("/")
    return ("", *("/".join(parts[: index + 1]) for index in range(len(parts))))


@dataclass(slots=True)
class _JobState:
    """The cached evaluation of one job file against its folder defaults and the declared agents."""

    source: SourceFile  #: the version of the job file it is of (a changed file is a new SourceFile)
    #: what else it depends on: one tuple for the jobs of a folder that depend on the same
    signature: tuple[Any, ...]
    spec: JobSpec | None
    errors: tuple[ConfigError, ...]  #: a tuple: most are empty, and every empty tuple is the same one
    after_source: SourceFile  #: the file whose `after` applies (errors about `after` point there)


@dataclass
class _Walk:
    seen: list[str] = field(default_factory=list)  #: every job-folder file, by its key (`_files`)
    #: (key, absolute path, stamp, mtime in ns) of each file read again
    stale: list[tuple[str, str, int, int]] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  #: symlinked files (key, abs)
    watched: bool = False  #: every folder walked is under an inotify watch


class JobFolder:
    """A job folder kept loaded: `scan()` re-reads only what changed and keeps last valid versions."""

    def __init__(self, root: Path, *, keep_last_valid: bool = True, check_holidays: bool = True) -> None:
        self.root = Path(root)
        self.check_holidays = check_holidays  #: see `parse_settings`
        #: The scheduler keeps running a broken file's last valid version; a reader that wants the
        #: folder as the next scheduler would load it (`keep_last_valid=False`) gets only valid files.
        self.keep_last_valid = keep_last_valid
        self._root_abs = os.path.abspath(self.root)
        #: file paths shown to operators start with it (none for ".", as pathlib's join gives)
        self._root_prefix = "" if str(self.root) == "." else os.path.join(str(self.root), "")
        #: by path relative to the root, `/`-separated, without `.toml`: a job file's key is its job
        #: name, the one string the folder, the scheduler and the JobSpec hold for it
        self._files: dict[str, SourceFile] = {}
        self._version = 0
        self._settings = Settings()
        self._settings_errors: list[ConfigError] = []
        self._targets = Targets()
        self._targets_version = 0
        self._have_valid_settings = False
        self._settings_version: int | None = None
        self._states: dict[str, _JobState] = {}
        self._last_valid: dict[str, JobSpec] = {}
        self._jobs: dict[str, JobSpec] = {}
        self._errors: list[ConfigError] = []
        self._walk_errors: list[ConfigError] = []
        self._loaded = False
        self._watch: DirWatch | None = None
        self._watch_tried = False
        self._watched = False  #: the last walk put every folder under the watch
        self._walked_at = 0.0
        self._walk_every = FULL_WALK_EVERY  #: the safety walk's period under the watch (longer for slow walks)
        self._links: list[tuple[str, str]] = []
        self._accounts = (0, 0)  #: the passwd file's stamp at the last evaluation

    # -- public --------------------------------------------------------------------------------------

    def scan(self) -> ScanResult:
        """Re-read changed files and re-evaluate what depends on them; cheap when nothing changed."""
        accounts_changed = self._loaded and accounts_stamp() != self._accounts
        if self._loaded and not accounts_changed and self._unchanged():
            return ScanResult(self._jobs, set(), set(), list(self._errors), self._settings)
        if self._loaded and not self._watch_tried:
            # Only a folder scanned more than once (the scheduler's) gets a watch: a one-off load
            # (the CLI) must not hold an inotify instance, of which a user has only 128.
            self._watch_tried = True
            self._watch = DirWatch.open()
        started = time.thread_time()
        walk = self._walk()
        self._walk_every = max(FULL_WALK_EVERY, (time.thread_time() - started) / FULL_WALK_SHARE)
        self._watched, self._links, self._walked_at = walk.watched, walk.links, time.monotonic()
        dirty = self._refresh(walk) or accounts_changed
        if [e.format() for e in walk.errors] != [e.format() for e in self._walk_errors]:
            self._walk_errors = walk.errors
            dirty = True
        if not dirty and self._loaded:
            return ScanResult(self._jobs, set(), set(), list(self._errors), self._settings)
        self._loaded = True
        previous = self._jobs
        self._evaluate()
        changed = {name for name, spec in self._jobs.items() if previous.get(name) != spec}
        removed = set(previous) - set(self._jobs)
        return ScanResult(self._jobs, changed, removed, list(self._errors), self._settings)

    def change_fd(self) -> int | None:
        """A descriptor that becomes readable when the folder (or /etc/passwd) changes, when waiting on
        it is enough until `walk_due_in()`; None when the folder must be scanned every so often to see
        changes: no inotify, a folder it could not watch, or symlinked files (their targets may be
        anywhere)."""
        if self._watch is None or not self._watched or self._links:
            return None
        return self._watch.fd

    def walk_due_in(self) -> float:
        """Seconds until the next scan walks the whole folder even if no change was reported."""
        return max(0.0, self._walk_every - (time.monotonic() - self._walked_at))

    def _unchanged(self) -> bool:
        """True when no file can have changed since the last walk, so the walk can be skipped."""
        watch = self._watch
        if watch is None or not self._watched:
            return False
        if watch.changed() or time.monotonic() - self._walked_at >= self._walk_every:
            return False
        for key, abs_path in self._links:  # a symlink's target may live outside every watched folder
            source = self._files.get(key)
            try:
                st = os.stat(abs_path)
            except OSError:
                return False
            if source is None or source.racy or source.stat_key != _stamp(st):
                return False
        return True

    # -- reading -------------------------------------------------------------------------------------

    def _walk(self) -> _Walk:
        """Stat every non-hidden `*.toml` below the root (symlinked folders are not followed).

        Comparing with the cache happens here, in the loop, because this is all an unchanged scan does:
        one stat() per file and no other work per file.
        """
        walk = _Walk()
        if not os.path.isdir(self._root_abs):
            walk.errors.append(ConfigError(self.root, "folder", "job folder does not exist or is not a folder"))
            return walk
        known = self._files
        seen = walk.seen
        stale = walk.stale
        watch = self._watch
        walk.watched = watch is not None
        stack: list[tuple[str, str]] = [(self._root_abs, "")]
        while stack:
            abs_dir, prefix = stack.pop()
            if watch is not None and not watch.add(abs_dir):  # before listing: no change slips between
                walk.watched = False
            try:
                entries = os.scandir(abs_dir)
            except OSError as exc:
                walk.errors.append(ConfigError(self.root / prefix, "folder", f"cannot list: {exc.strerror}"))
                continue
            with entries:
                for entry in entries:
                    name = entry.name
                    if name[0] == ".":
                        continue
                    try:
                        if name.endswith(".toml"):
                            key = prefix + name[:-5]
                            link = entry.is_symlink()
                            if link:
                                try:
                                    st = os.stat(entry.path)
                                except OSError as exc:
                                    walk.errors.append(
                                        ConfigError(self.root / (prefix + name), "file", link_problem(entry.path, exc))
                                    )
                                    continue
                            else:
                                st = entry.stat(follow_symlinks=False)
                            if stat.S_ISDIR(st.st_mode):
                                if not link:  # a folder named *.toml is a folder; symlinked ones are not followed
                                    stack.append((entry.path, prefix + name + "/"))
                                continue
                            problem = not_regular(st.st_mode)
                            if problem:  # a FIFO or a device is never opened: it could block or have effects
                                walk.errors.append(ConfigError(self.root / (prefix + name), "file", problem))
                                continue
                            seen.append(key)
                            if link:
                                walk.links.append((key, entry.path))
                            stamp = _stamp(st)
                            old = known.get(key)
                            if old is None or old.stat_key != stamp or old.racy:
                                stale.append((key, entry.path, stamp, st.st_mtime_ns))
                        elif entry.is_dir(follow_symlinks=False):
                            stack.append((entry.path, prefix + name + "/"))
                    except OSError:
                        continue  # vanished between listing and stat: the next scan sees the truth
        return walk

    def _refresh(self, walk: _Walk) -> bool:
        """Bring `_files` up to date with the walk; True when any file's content came, went or changed."""
        dirty = False
        files = self._files
        if len(walk.seen) != len(files) or walk.stale:
            present = set(walk.seen)
            for key in [key for key in files if key not in present]:
                del files[key]
                dirty = True
        now = time.time_ns()
        linked = {key for key, _path in walk.links}
        folder_dirs: dict[str, tuple[str, str]] = {}  #: rel_dir -> (rel_dir, abs_dir), one copy per folder
        for key, abs_path, stamp, mtime_ns in walk.stale:
            old = files.get(key)
            raw = read_file(abs_path, follow=key in linked)
            read_error = None
            if isinstance(raw, FileNotFoundError):
                if files.pop(key, None) is not None:
                    dirty = True
                continue  # deleted since the walk: the next scan agrees
            if isinstance(raw, OSError):
                read_error = str(raw.strerror or raw)
                raw = b""
            if old is not None and read_error is None and not old.unreadable and old.raw == raw:
                old.stat_key = stamp
                old.racy = now - mtime_ns < _RACY_WINDOW_NS
                continue
            # Versions are what the evaluation of jobs compares of settings and `_folder.toml` files;
            # a job's own file is compared as itself (`_JobState.source`), so it needs none.
            version = 0
            if not _is_job_key(key):
                self._version += 1
                version = self._version
            rel_dir = key.rpartition("/")[0]
            dirs = folder_dirs.get(rel_dir)
            if dirs is None:
                dirs = folder_dirs[rel_dir] = (rel_dir, os.path.join(self._root_abs, rel_dir))
            source = SourceFile(
                f"{self._root_prefix}{key}.toml",
                *dirs,
                stamp,
                raw,
                version,
                read_error,
            )
            source.racy = now - mtime_ns < _RACY_WINDOW_NS
            files[key] = source
            dirty = True
        return dirty

    # -- evaluation ----------------------------------------------------------------------------------

    def _evaluate(self) -> None:
        """Recompute effective jobs and errors; per-job work is cached on the versions it depends on."""
        errors: dict[tuple[str, int | None, str, str], ConfigError] = {}

        def report(error: ConfigError) -> None:
            errors.setdefault((error.path, error.line, error.key, error.reason), error)

        for error in self._walk_errors:
            report(error)
        folders, job_sources, settings_source = self._sorted_files()
        self._accounts = accounts_stamp()
        self._update_settings(settings_source)
        for error in self._settings_errors:
            report(error)

        # _folder.toml files: their own keys, their agent and notify, their `after` names
        blocked: set[str] = set()
        for rel_dir, source in folders.items():
            problems, notify_errors = self._folder_problems(source, job_sources)
            for error in [*problems, *notify_errors]:
                report(error)
            if problems:
                blocked.add(rel_dir)

        # each job on its own, cached on (its version, its folders' versions, declared agents)
        candidates: dict[str, JobSpec] = {}
        shared = _Shared()
        self._states = {name: self._job_state(name, source, folders, shared) for name, source in job_sources.items()}
        after_sources = {name: state.after_source for name, state in self._states.items()}
        for name, state in self._states.items():
            for error in state.errors:
                report(error)
            if state.spec is not None and not any(d in blocked for d in _chain(job_sources[name].rel_dir)):
                candidates[name] = state.spec

        _drop_missing_after(candidates, after_sources, job_sources, report)
        last_valid = {name: spec for name, spec in self._last_valid.items() if name in job_sources}
        if not self.keep_last_valid:
            last_valid = {}
        self._jobs = _without_cycles(candidates, last_valid, job_sources, after_sources, report)
        for name, spec in candidates.items():
            last_valid[name] = spec
        self._last_valid = last_valid
        self._errors = sorted(errors.values(), key=lambda e: (e.path, e.line or 0, e.key, e.reason))

    def _sorted_files(self) -> tuple[dict[str, SourceFile], dict[str, SourceFile], SourceFile | None]:
        """The files by role, in path order: `_folder.toml`s by folder, job files by job name, vigil.toml."""
        folders: dict[str, SourceFile] = {}
        job_sources: dict[str, SourceFile] = {}
        settings_source: SourceFile | None = None
        for key, source in sorted(self._files.items(), key=_by_file_name):
            if _is_job_key(key):
                job_sources[key] = source
            elif key == _SETTINGS_KEY:
                settings_source = source
            else:
                folders[source.rel_dir] = source
        return folders, job_sources, settings_source

    def _update_settings(self, source: SourceFile | None) -> None:
        """Re-read settings when vigil.toml changed; a broken one keeps the last valid settings."""
        version = source.version if source is not None else 0
        if self._settings_version == version:
            return
        self._settings_version = version
        settings, errors, targets = parse_settings(source, self._root_abs, check_holidays=self.check_holidays)
        self._settings_errors = errors
        if errors and self._have_valid_settings:
            return
        self._have_valid_settings = not errors
        self._settings = settings
        if targets != self._targets:
            self._targets = targets
            self._targets_version += 1

    def _folder_problems(
        self, source: SourceFile, jobs: Mapping[str, SourceFile]
    ) -> tuple[list[ConfigError], list[ConfigError]]:
        """A `_folder.toml`'s errors that keep its jobs from loading, and its `notify` errors, which do not."""
        if source.syntax_error is not None:
            return [source.syntax_error], []
        values, own_errors = self._own_values(source)
        errors = [*own_errors, *_agent_errors(source, values, self._targets)]
        after = values.get("after")
        if after is not None:
            errors.extend(
                source.error(("after",), f"job {quote(edge.job)} does not exist")
                for edge in after.value
                if edge.job not in jobs
            )
        return errors, _notify_errors(source, values, self._targets)

    @staticmethod
    def _own_values(source: SourceFile) -> tuple[dict[str, Value], tuple[ConfigError, ...]]:
        """The file's keys, each checked on its own. The table is dropped once they are: the values hold
        what is used. A job file's values are dropped too once its state is built (`_job_state`)."""
        if source.values is None:
            values, errors = validate_job_keys(source, source.table())
            source.values, source.value_errors = values, tuple(errors)
            source.data = None
        return source.values, source.value_errors

    def _job_state(
        self, name: str, source: SourceFile, folders: Mapping[str, SourceFile], shared: _Shared
    ) -> _JobState:
        chain = [folders[d] for d in _chain(source.rel_dir) if d in folders]
        own_targets = (
            "agent" in source.keys
            or "notify" in source.keys
            or any("locks" in layer.keys for layer in (source, *chain))  # checked against [resources]
            or any("calendar" in layer.keys for layer in (source, *chain))
        )
        sets_user = "user" in source.keys or any("user" in folder.keys for folder in chain)
        signature = shared.one(
            (
                self._targets_version if own_targets else 0,
                self._accounts if sets_user else None,  # a `user` created or removed since is checked again
                *(folder.version for folder in chain),
            )
        )
        state = self._states.get(name)
        if state is not None and state.source is source and state.signature == signature:
            return state
        if source.syntax_error is not None:
            return _JobState(source, signature, None, (source.syntax_error,), source)
        state = self._evaluate_job(name, source, chain, shared)
        state.signature = signature
        # Checked again from its bytes only when this signature changes (a folder above edited):
        # kept, the values would cost about as much as the JobSpec they built, for every job.
        source.values, source.value_errors = None, ()
        return state

    def _evaluate_job(self, name: str, source: SourceFile, chain: list[SourceFile], shared: _Shared) -> _JobState:
        """A job file's state from its own values and its folders'; the caller sets the signature."""
        values, own_errors = self._own_values(source)
        errors = list(own_errors)
        if job_name_problem(name):
            errors.append(
                ConfigError(
                    source.path,
                    "name",
                    f"{quote(name)}: file and folder names {NAME_RULE}",
                )
            )
        layers = [self._own_values(folder)[0] for folder in chain if folder.syntax_error is None]
        merged = _merge([*layers, values])
        after = merged.get("after")
        after_source = after.source if after is not None else source
        if errors:
            return _JobState(source, (), None, tuple(errors), after_source)
        spec, build_errors = _build_spec(name, source, merged, self._targets, shared)
        return _JobState(source, (), spec, tuple(build_errors), after_source)


def _drop_missing_after(
    candidates: dict[str, JobSpec],
    after_sources: Mapping[str, SourceFile],
    job_sources: Mapping[str, SourceFile],
    report: _Report,
) -> None:
    """Drop each job whose own `after` names a job file that does not exist (an invalid one still counts)."""
    for name in list(candidates):
        after_source = after_sources[name]
        missing = [up for up in candidates[name].after if up not in job_sources]
        if missing and after_source is job_sources[name]:
            for up in missing:
                report(after_source.error(("after",), f"job {quote(up)} does not exist"))
            del candidates[name]


def _without_cycles(
    candidates: dict[str, JobSpec],
    last_valid: Mapping[str, JobSpec],
    job_sources: Mapping[str, SourceFile],
    after_sources: Mapping[str, SourceFile],
    report: _Report,
) -> dict[str, JobSpec]:
    """The jobs in force: each candidate, else its last valid version, with every job on an `after` cycle
    reported and put back to its last valid version (or left out); such a candidate is dropped."""
    effective: dict[str, JobSpec] = {}
    for name in job_sources:
        chosen = candidates.get(name) or last_valid.get(name)
        if chosen is not None:
            effective[name] = chosen
    while cycles := _cycles(effective):
        for name, path in cycles.items():
            source = after_sources.get(name) or job_sources[name]
            report(source.error(("after",), "cycle: " + " → ".join(path) + " (each waits for the next)"))
            fallback = None
            if name in candidates and effective.get(name) is candidates[name]:
                del candidates[name]
                fallback = last_valid.get(name)
            if fallback is not None:
                effective[name] = fallback
            else:
                effective.pop(name, None)
    return effective


def _cycles(graph: Mapping[str, JobSpec]) -> dict[str, list[str]]:
    """Each job on a cycle of `after` edges, with one cycle through it (start and end repeated)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: dict[str, list[str]] = {}
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, edge = work.pop()
            if edge == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            upstream = [up for up in graph[node].after if up in graph]
            if edge < len(upstream):
                work.append((node, edge + 1))
                nxt = upstream[edge]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node].after:
                    members = set(component)
                    for member in component:
                        found[member] = _cycle_through(member, members, graph)
    return found


def _cycle_through(start: str, members: set[str], graph: Mapping[str, JobSpec]) -> list[str]:
    """The shortest `after` path from `start` back to itself inside one strongly connected set."""
    reached_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for up in graph[node].after:
                if up == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(reached_from[path[-1]])
                    return [*reversed(path), start]
                if up in members and up not in reached_from:
                    reached_from[up] = node
                    following.append(up)
        frontier = following
    return [start, start]


def load_folder(root: Path, *, check_holidays: bool = True) -> LoadResult:
    """Load every job of a folder once (the CLI's view; the scheduler keeps a JobFolder instead)."""
    result = JobFolder(root, check_holidays=check_holidays).scan()
    return LoadResult(jobs=dict(result.jobs), errors=result.errors, settings=result.settings)
