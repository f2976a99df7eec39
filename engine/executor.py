"""Local execution: each run under a /bin/sh shim in its own session, watched through a pidfd.

The scheduler never owns a job's process: the shim does, and it records the job's end in the run's
directory. Whoever is active (this process, a restarted one, or a standby after a failover) learns
the outcome from that directory, so a run is never launched twice and never loses its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .db import StatePaths, job_umask
from .ids import claim_run_dir, run_identity
from .procs import signal_group, starttime
from .reconcile import ShimEvidence

SHIM = str(Path(__file__).with_name("shim.sh"))
SHELL = "/bin/sh"
TRUNCATION_MARK = "\n[vigil] log truncated: output beyond {cap} bytes was dropped\n"
_RESET_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGCHLD,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


@dataclass
class ShimExit:
    """What a finished shim left behind."""

    run_id: int
    exit_code: int | None
    job_pid: int | None
    cpu_s: float | None
    peak_rss: int | None
    reason: str | None = None  #: why the outcome is what it is, when there is no exit code
    state: str | None = None  #: the run's end without an exit code (e.g. failed, killed); default unknown


@dataclass
class _Watched:
    run_id: int
    shim_pid: int
    pidfd: int
    own_child: bool
    job_pid: int | None = None
    job_starttime: int | None = None
    peak_rss: int | None = None
    kill_timer: asyncio.TimerHandle | None = field(default=None, repr=False)


def scope_prefix(run_id: int, environ: dict[str, str] | None = None) -> list[str]:
    """Under systemd, start each shim in its own transient scope.

    Otherwise the shim would live in the scheduler's service cgroup, and systemd's default
    KillMode=control-group would kill every running job when the service stops or restarts.
    `VIGIL_SYSTEMD_SCOPE=0|1` overrides the detection.
    """
    env = os.environ if environ is None else environ
    forced = env.get("VIGIL_SYSTEMD_SCOPE")
    wanted = forced == "1" if forced in ("0", "1") else bool(env.get("INVOCATION_ID")) and os.path.isdir(
        "/run/systemd/system"
    )
    exe = shutil.which("systemd-run") if wanted else None
    if exe is None:
        return []
    prefix = [exe, "--scope", "--quiet", "--collect", f"--unit=vigil-run-{os.getpid()}-{run_id}"]
    if os.getuid() != 0:
        prefix.insert(1, "--user")
    return [*prefix, "--"]


def job_argv(command: str | tuple[str, ...] | list[str]) -> list[str]:
    if isinstance(command, str):
        return [SHELL, "-c", command]
    return list(command)


def read_int_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def read_exit_record(run_dir: Path) -> int | None:
    """The exit code from a complete record; a partial or missing record reads as None."""
    try:
        text = (run_dir / "exit").read_text()
    except OSError:
        return None
    if not text.startswith("exit=") or not text.rstrip().endswith(" end"):
        return None
    try:
        return int(text[5:].split()[0])
    except (ValueError, IndexError):
        return None


def read_cpu_seconds(run_dir: Path) -> float | None:
    """Children's user+system time from the shim's `times` output (second line)."""
    try:
        lines = (run_dir / "times").read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 2:
        return None
    total = 0.0
    for part in lines[1].split():
        minutes, _, seconds = part.partition("m")
        try:
            total += int(minutes) * 60 + float(seconds.rstrip("s"))
        except ValueError:
            return None
    return round(total, 6)


def lock_is_held(run_dir: Path) -> bool:
    try:
        fd = os.open(run_dir / "lock", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the flock we may have taken
    return False


def gather_evidence(run_dir: Path) -> ShimEvidence:
    exists = run_dir.is_dir()
    return ShimEvidence(
        run_dir_exists=exists,
        lock_held=exists and lock_is_held(run_dir),
        shim_pid=read_int_file(run_dir / "shim") if exists else None,
        job_pid=read_int_file(run_dir / "started") if exists else None,
        exit_code=read_exit_record(run_dir) if exists else None,
    )


class LocalExecutor:
    """Starts shims, watches them with pidfds, kills process groups, caps logs, samples RSS."""

    def __init__(
        self,
        paths: StatePaths,
        on_exit: Callable[[ShimExit], None],
        *,
        log_cap: int,
        kill_grace: float,
    ) -> None:
        self.paths = paths
        self.on_exit = on_exit
        self.log_cap = log_cap
        self.kill_grace = kill_grace
        self._watched: dict[int, _Watched] = {}
        self._loop = asyncio.get_running_loop()

    @property
    def running(self) -> set[int]:
        return set(self._watched)

    def launch(
        self,
        run_id: int,
        command: str | tuple[str, ...] | list[str],
        env: dict[str, str],
        workdir: str | None,
    ) -> int:
        """Start the run's shim; return its pid. The run row must already be committed."""
        run_dir = self.paths.run_dir(run_id)
        claim_run_dir(run_dir, run_identity(env))  # never another run's directory (engine/ids.py)
        lock_fd = os.open(run_dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            # Held without a gap from before the spawn until the shim exits (fd 9 in the shim).
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            umask = f"{job_umask():04o}"  # the shim's own files stay owner-only; the job gets this one
            argv = [*scope_prefix(run_id), SHELL, SHIM, str(run_dir), workdir or "", umask, *job_argv(command)]
            pid = os.posix_spawn(
                argv[0],
                argv,
                env,
                file_actions=[(os.POSIX_SPAWN_DUP2, lock_fd, 9)],
                setsid=True,
                setsigmask=(),
                setsigdef=_RESET_SIGNALS,
            )
        finally:
            os.close(lock_fd)
        self._watch(run_id, pid, own_child=True)
        return pid

    def adopt(self, run_id: int) -> bool:
        """Watch a shim this process did not start. False if it is already gone."""
        run_dir = self.paths.run_dir(run_id)
        shim_pid = read_int_file(run_dir / "shim")
        deadline = time.monotonic() + 0.5
        while shim_pid is None and lock_is_held(run_dir) and time.monotonic() < deadline:
            # Spawned an instant before the previous active died: the shim is writing its pid.
            time.sleep(0.005)
            shim_pid = read_int_file(run_dir / "shim")
        if shim_pid is None:
            return False
        if not self._watch(run_id, shim_pid, own_child=False):
            return False
        # The shim may have ended between the evidence and the pidfd: the lock tells.
        if not lock_is_held(run_dir):
            self._finish(run_id)
        return True

    def _watch(self, run_id: int, shim_pid: int, *, own_child: bool) -> bool:
        try:
            pidfd = os.pidfd_open(shim_pid)
        except ProcessLookupError:
            if own_child:
                pidfd = -1
            else:
                return False
        watched = _Watched(run_id=run_id, shim_pid=shim_pid, pidfd=pidfd, own_child=own_child)
        self._watched[run_id] = watched
        if pidfd >= 0:
            self._loop.add_reader(pidfd, self._finish, run_id)
        else:
            self._loop.call_soon(self._finish, run_id)
        return True

    def _finish(self, run_id: int) -> None:
        watched = self._watched.pop(run_id, None)
        if watched is None:
            return
        if watched.pidfd >= 0:
            self._loop.remove_reader(watched.pidfd)
            os.close(watched.pidfd)
        if watched.own_child:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(watched.shim_pid, 0)
        if watched.kill_timer is not None:
            watched.kill_timer.cancel()
            if watched.job_pid is not None:
                # The job's leader is gone; whatever of its group ignored SIGTERM goes now.
                with contextlib.suppress(OSError):
                    os.killpg(watched.job_pid, signal.SIGKILL)
        self.on_exit(self.collect(run_id, peak_rss=watched.peak_rss))

    def collect(self, run_id: int, *, peak_rss: int | None = None) -> ShimExit:
        """Read a finished run's record and apply the log cap for good."""
        run_dir = self.paths.run_dir(run_id)
        self._cap_log(run_dir, final=True)
        return ShimExit(
            run_id=run_id,
            exit_code=read_exit_record(run_dir),
            job_pid=read_int_file(run_dir / "started"),
            cpu_s=read_cpu_seconds(run_dir),
            peak_rss=peak_rss,
        )

    def job_identity(self, run_id: int) -> tuple[int | None, int | None]:
        watched = self._watched.get(run_id)
        if watched is None:
            return None, None
        self._learn_job(watched)
        return watched.job_pid, watched.job_starttime

    def _learn_job(self, watched: _Watched) -> None:
        if watched.job_pid is None:
            watched.job_pid = read_int_file(self.paths.run_dir(watched.run_id) / "started")
            if watched.job_pid is not None:
                watched.job_starttime = starttime(watched.job_pid)

    def kill(self, run_id: int) -> bool:
        """SIGTERM the run's whole process group, SIGKILL after the grace period."""
        watched = self._watched.get(run_id)
        if watched is None:
            return False
        self._learn_job(watched)
        if watched.job_pid is None:
            # The shim has not started the job yet: try again shortly.
            self._loop.call_later(0.02, self.kill, run_id)
            return True
        signal_group(watched.job_pid, watched.job_starttime, signal.SIGTERM)
        if watched.kill_timer is None:
            watched.kill_timer = self._loop.call_later(self.kill_grace, self._kill_hard, run_id)
        return True

    def _kill_hard(self, run_id: int) -> None:
        watched = self._watched.get(run_id)
        if watched is not None and watched.job_pid is not None:
            signal_group(watched.job_pid, watched.job_starttime, signal.SIGKILL)

    def sample(self) -> None:
        """Periodic: peak RSS of each running job's process tree, and the log cap."""
        table: ProcTable | None = None  # one pass over /proc for all runs, not one per run
        for watched in list(self._watched.values()):
            self._learn_job(watched)
            if watched.job_pid is not None:
                if table is None:
                    table = proc_table()
                rss = tree_rss(watched.job_pid, table)
                if rss is not None and (watched.peak_rss is None or rss > watched.peak_rss):
                    watched.peak_rss = rss
            self._cap_log(self.paths.run_dir(watched.run_id), final=False)

    def _cap_log(self, run_dir: Path, *, final: bool) -> None:
        log = run_dir / "log"
        marker = run_dir / "truncated"
        try:
            size = log.stat().st_size
        except OSError:
            return
        if size > self.log_cap:
            # The job appends (O_APPEND), so after this it writes at the new end: the first
            # `log_cap` bytes stay exactly the job's first output.
            os.truncate(log, self.log_cap)
            marker.touch()
        if final and marker.exists():
            with open(log, "a") as fh:
                fh.write(TRUNCATION_MARK.format(cap=self.log_cap))
            marker.unlink()

    def close(self) -> None:
        """Stop watching (the shims and jobs live on for the next active to adopt)."""
        for watched in self._watched.values():
            if watched.kill_timer is not None:
                watched.kill_timer.cancel()
            if watched.pidfd < 0:
                continue
            self._loop.remove_reader(watched.pidfd)
            if watched.own_child:
                # This process lives on after a switch-over: reap the shim when it ends, or it
                # stays a zombie of ours whoever records its exit.
                self._loop.add_reader(watched.pidfd, _reap, self._loop, watched.pidfd)
            else:
                os.close(watched.pidfd)
        self._watched.clear()


def _reap(loop: asyncio.AbstractEventLoop, pidfd: int) -> None:
    loop.remove_reader(pidfd)
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    os.close(pidfd)


@dataclass
class ProcTable:
    """Every process's children, from one pass over /proc."""

    children: dict[int, list[int]]
    pids: set[int]


_PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_table() -> ProcTable:
    """Parent of every process, from /proc/PID/stat (field 4), read once per sampling tick.

    psutil's `children(recursive=True)` makes this same pass over /proc for every call: sampling
    30 running jobs that way took about 100 ms of the event loop every half second.
    """
    children: dict[int, list[int]] = {}
    pids: set[int] = set()
    with os.scandir("/proc") as entries:
        for entry in entries:
            name = entry.name
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    data = fh.read()
                ppid = int(data[data.rfind(b")") + 2 :].split()[1])  # comm may hold spaces and ")"
            except (OSError, IndexError, ValueError):
                continue  # gone since the listing, or unreadable
            pid = int(name)
            pids.add(pid)
            children.setdefault(ppid, []).append(pid)
    return ProcTable(children, pids)


def _rss(pid: int) -> int | None:
    """Resident bytes, as psutil reports them (the second field of /proc/PID/statm)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def tree_rss(pid: int, table: ProcTable | None = None) -> int | None:
    """Resident bytes of `pid` and all its descendants; None if `pid` is gone."""
    table = table or proc_table()
    total = _rss(pid) if pid in table.pids else None
    if total is None:
        return None
    stack = list(table.children.get(pid, ()))
    seen = {pid}
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _rss(current) or 0
        stack.extend(table.children.get(current, ()))
    return total
