"""Epochs and run ids are never reused, even when the state database is restored or replaced.

The database is not the only witness of what ids an installation has used: run directories,
agents' journals and the jobs' own environments carry them too. So a restored backup (its epoch
and run ids go back) or an emptied `vigil.db` (they restart at 1) must not hand out an epoch an agent
has already seen, or a run id that names another run's directory or another run on an agent.

- `STATE/high-water` records the highest epoch and run id this state directory has used. It lives
  beside the database, not in it, so restoring `vigil.db` does not roll it back. It is one
  fixed-size record rewritten in place (a few microseconds per launch batch).
- If it is missing or unreadable, the run directories are the evidence: every run directory is
  named by its run id and records the epoch that created it (`run.json`).
- The database keeps its own mark (`run_id_mark`: the highest run id it has handed out, kept
  when those runs are pruned). `high-water` above it means the database is older than the state
  directory — restored or replaced — even when its epoch is the same (a backup taken during the
  last leadership). `high-water` is raised only after the rows are committed, so a failed write
  never looks like a restore.
- Run directories the database has no row for whose shim (or job) still runs are adopted at
  start-up (engine/run/reconcile.py, `_settle_unrecorded_runs`): never left running unmanaged.
- Agents report the highest epoch and run id they have seen (`max_epoch`, `max_run_id` in
  `GET /status`); the scheduler moves above them (engine/agents/dispatcher.py).
- A run directory that already exists when a run is launched, with another run's files in it, is
  moved aside to `runs/.stale/ID.TIME` (logged) — never appended to or overwritten.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from engine.ids import ID_LIMIT, valid_id
from engine.paths import StatePaths

log = logging.getLogger("vigil.ids")

HIGH_WATER_FILE = "high-water"
RUN_IDENTITY_FILE = "run.json"
STALE_DIR = ".stale"
_RECORD = "vigil high-water epoch={epoch:020d} run_id={run_id:020d}\n"
_PATTERN = re.compile(r"^vigil high-water epoch=(\d{20}) run_id=(\d{20})\n$")
_STALE_NAME = re.compile(r"^(\d+)\.")


@dataclass
class HighWater:
    """The highest epoch and run id known to have been used (0: none)."""

    epoch: int = 0
    run_id: int = 0
    from_run_dirs: bool = False  #: the file was missing: these come from scanning `runs/`


class HighWaterFile:
    """`STATE/high-water`, kept open by the active scheduler and rewritten in place."""

    def __init__(self, paths: StatePaths) -> None:
        self.path = paths.root / HIGH_WATER_FILE
        self.paths = paths
        self.mark = HighWater()
        self._fd: int | None = None
        self._warned = False

    def load(self) -> HighWater:
        """What the file says, or (missing or unreadable) what the run directories show."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            text = None
        except OSError as exc:
            log.warning("cannot read %s (%s); scanning the run directories instead", self.path, exc)
            text = None
        match = _PATTERN.match(text) if text is not None else None
        if match is not None:
            self.mark = HighWater(int(match.group(1)), int(match.group(2)))
        else:
            if text is not None:
                log.warning("%s is not a high-water record; scanning the run directories instead", self.path)
            self.mark = scan_run_dirs(self.paths)
        return HighWater(self.mark.epoch, self.mark.run_id, self.mark.from_run_dirs)

    def raise_to(self, *, epoch: int = 0, run_id: int = 0) -> None:
        """Record a higher epoch or run id (before it is used outside this process)."""
        if epoch <= self.mark.epoch and run_id <= self.mark.run_id and self._fd is not None:
            return
        self.mark.epoch = max(self.mark.epoch, epoch)
        self.mark.run_id = max(self.mark.run_id, run_id)
        record = _RECORD.format(epoch=self.mark.epoch, run_id=self.mark.run_id).encode()
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            # Same length every time, one write: a reader never sees a half-updated record.
            os.pwrite(self._fd, record, 0)
            self._warned = False
        except OSError as exc:
            # Not fatal: the database and the run directories still hold the ids; only a later
            # restore of an older database would have less to go on.
            if not self._warned:
                log.warning("cannot update %s: %s", self.path, exc)
                self._warned = True

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def scan_run_dirs(paths: StatePaths) -> HighWater:
    """The highest run id named in `runs/` (and `runs/.stale/`) and the highest epoch they record."""
    mark = HighWater(from_run_dirs=True)
    for folder, stale in ((paths.runs, False), (paths.runs / STALE_DIR, True)):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if stale:
                match = _STALE_NAME.match(name)
                name = match.group(1) if match else ""
            if not name.isdigit():
                continue
            mark.run_id = max(mark.run_id, min(int(name), ID_LIMIT - 1))
            epoch = _recorded_epoch(Path(entry.path))
            if epoch is not None:
                mark.epoch = max(mark.epoch, epoch)
    return mark


def run_dir_ids(paths: StatePaths) -> list[int]:
    """The run ids that have a directory in `runs/` (not `.stale/`), ascending."""
    try:
        names = os.listdir(paths.runs)
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit() and valid_id(int(name)))


@dataclass(frozen=True)
class RecordedRun:
    """Which run a run directory belongs to, from its `run.json` (written before its shim starts)."""

    job: str
    scheduled_for: datetime
    attempt: int


def recorded_run(run_dir: Path) -> RecordedRun | None:
    """The run a directory's `run.json` names, or None if it is missing or incomplete."""
    try:
        data = json.loads((run_dir / RUN_IDENTITY_FILE).read_text())
        job, when, attempt = data["job"], data["scheduled_for"], int(data["attempt"])
        if not isinstance(job, str) or not job or not isinstance(when, str) or attempt < 1:
            return None
        return RecordedRun(job, datetime.fromisoformat(when), attempt)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _recorded_epoch(run_dir: Path) -> int | None:
    try:
        epoch = json.loads((run_dir / RUN_IDENTITY_FILE).read_text()).get("epoch")
    except (OSError, ValueError, AttributeError):
        return None
    try:
        value = int(epoch)
    except (TypeError, ValueError):
        return None
    return value if valid_id(value) else None


def run_identity(env: dict[str, str]) -> dict[str, str | None]:
    """Which run a directory belongs to, from the VIGIL_* variables the run is launched with."""
    return {
        "job": env.get("VIGIL_JOB"),
        "scheduled_for": env.get("VIGIL_SCHEDULED_FOR"),
        "attempt": env.get("VIGIL_ATTEMPT"),
        "epoch": env.get("VIGIL_EPOCH"),
    }


def claim_run_dir(run_dir: Path, identity: dict[str, str | None]) -> None:
    """Create the run's directory; an existing one holding another run's files is moved aside first.

    Launching again under the same id (a run that never started before a takeover) keeps its
    directory: it names the same run, or holds nothing but the run lock.
    """
    try:
        _make_run_dir(run_dir)
    except FileExistsError:
        if _same_run(run_dir, identity):
            return
        stale = run_dir.parent / STALE_DIR
        stale.mkdir(mode=0o700, exist_ok=True)
        target = stale / f"{run_dir.name}.{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"
        os.rename(run_dir, target)
        log.warning(
            "run directory %s already held another run's files (was the state database restored or "
            "replaced?); moved it to %s",
            run_dir,
            target,
        )
        os.mkdir(run_dir, 0o700)
    # Written straight into the new directory, no rename: a reader takes a torn or empty run.json
    # for no run.json (`recorded_run`, `_same_run`), as it would a leftover run.json.part.
    fd = os.open(
        os.path.join(run_dir, RUN_IDENTITY_FILE),
        os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )
    try:
        os.write(fd, (json.dumps(identity) + "\n").encode())
    finally:
        os.close(fd)


def _make_run_dir(run_dir: Path) -> None:
    try:
        os.mkdir(run_dir, 0o700)
    except FileNotFoundError:  # no runs/ yet (or it was removed): made once, not per launch
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(run_dir, 0o700)


def _same_run(run_dir: Path, identity: dict[str, str | None]) -> bool:
    try:
        recorded = json.loads((run_dir / RUN_IDENTITY_FILE).read_text())
    except FileNotFoundError:
        try:
            entries = set(os.listdir(run_dir))
        except OSError:
            return False
        return entries <= {"lock"}  # a launch that died before its shim started
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict):
        return False
    keys = ("job", "scheduled_for", "attempt")
    return all(recorded.get(k) == identity.get(k) for k in keys)


#: The file a run may write `NAME=value` lines to (`$VIGIL_OUTPUT`): a flow step's outputs.
OUTPUT_FILE = "output"


def read_output_file(path: Path, limit: int = 64 * 1024) -> tuple[bytes | None, bool]:
    """A run's output file, up to `limit` bytes, and whether there was more; (None, False) if absent."""
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError:
        return None, False
    return data[:limit], len(data) > limit
