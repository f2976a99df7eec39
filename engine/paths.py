"""The state directory's layout and who may use it (owner-only files, the operator's umask for jobs)."""

from __future__ import annotations

import functools
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from engine.errors import StoreError

log = logging.getLogger("vigil.paths")


#: Files only an agent's state directory holds: a scheduler refuses such a directory.
AGENT_STATE_MARKERS = ("journal.db", "agent.token", "agent.addr")


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

    @functools.cached_property
    def runs(self) -> Path:
        return self.root / "runs"  # made once: run_dir() is asked for at every launch and end

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


def os_user() -> str:
    return user_name(os.getuid())


def user_name(uid: int) -> str:
    """The login name of a uid, or the number when it has none."""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)
