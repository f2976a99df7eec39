"""Local execution: each run under its own supervisor in its own session, watched through a pidfd.

A run's supervisor is forked by the launcher (engine/exec/launcher.py, one per LocalExecutor,
started at the first launch), or, while no launcher is ready and under a systemd scope, is a /bin/sh
shim (shim.sh). The scheduler never owns a job's process: the supervisor does, and it records the
job's end in the run's directory. Whoever is active (this process, a restarted one, or a standby
after a failover) learns the outcome from that directory, so a run is never launched twice and
never loses its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from engine.clock import Clock, SystemClock
from engine.errors import LaunchError
from engine.exec.launcher import RESET_SIGNALS, candidates
from engine.exec.link import LauncherLink, Message
from engine.exec.port import ShimExit
from engine.exec.procs import GroupState, group_state, signal_group, starttime
from engine.exec.reconcile import ShimEvidence
from engine.exec.rundirs import claim_run_dir, run_identity
from engine.model import RunState
from engine.paths import StatePaths, job_umask
from engine.users import Account, switch_to

SHIM = str(Path(__file__).resolve().with_name("shim.sh"))
SHELL = "/bin/sh"
#: The shim's whole environment is fixed; its tools are found once, on this path, never the job's.
SHIM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: Kept for `systemd-run --user` (the scope prefix); nothing of the job's `env` reaches the shim.
_SHIM_ENV_KEPT = ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")
ENV_FD = 8  #: the job's environment, as shell text, on this fd of the shim (see shim.sh --job)
LOCK_FD = 9
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ADOPT_POLL = 0.05  #: seconds between looks at a shim that is still starting when adopted
_ENDING_POLL = 0.05  #: seconds between looks at a job group being ended after its shim died
_KILLED_WAIT = 5.0  #: seconds to wait for a group to vanish after SIGKILL before recording anyway
TRUNCATION_MARK = "\n[vigil] log truncated: output beyond {cap} bytes was dropped\n"
#: Seconds without any answer from the launcher, while it has requests, before it counts as hung.
_REPLY_WAIT = 1.0
_READY_WAIT = 5.0  #: seconds a new launcher may take to say it is ready
#: Runs queued for a launcher that is gone, started through the sh shim this many per loop turn.
_SHIM_SLICE = 16
#: Seconds a run whose supervisor ended without a record waits to learn from the launcher how it ended.
_STATUS_WAIT = 0.5
_STATUS_POLL = 0.02
_RESTART_DELAY = (1.0, 60.0)  #: before starting again a launcher that died before it was ready: first, most
log = logging.getLogger("vigil.exec")


@dataclass
class _Watched:
    run_id: int
    shim_pid: int
    pidfd: int
    own_child: bool
    job_pid: int | None = None
    job_starttime: int | None = None
    identity_recorded: bool = False  #: job_starttime comes from the job's own record (jobstart)
    via_launcher: bool = False  #: its supervisor is the launcher's child: the launcher learns how it ended
    status_deadline: float | None = None  #: ended without a record: until when to wait for that news
    peak_rss: int | None = None
    kill_timer: asyncio.TimerHandle | None = field(default=None, repr=False)


def scope_prefix(run_id: int, environ: dict[str, str] | None = None) -> list[str]:
    """Under systemd, start each shim in its own transient scope.

    Otherwise the shim would live in the scheduler's service cgroup, and systemd's default
    KillMode=control-group would kill every running job when the service stops or restarts.
    `VIGIL_SYSTEMD_SCOPE=0|1` overrides the detection. A non-root process needs its user manager
    (`systemd-run --user`): a system unit with `User=` has none unless XDG_RUNTIME_DIR says so, and
    every run would fail to start, so it gets no scope (contrib/systemd sets KillMode=process).
    """
    env = os.environ if environ is None else environ
    forced = env.get("VIGIL_SYSTEMD_SCOPE")
    wanted = (
        forced == "1"
        if forced in ("0", "1")
        else bool(env.get("INVOCATION_ID"))
        and os.path.isdir("/run/systemd/system")
        and (os.getuid() == 0 or bool(env.get("XDG_RUNTIME_DIR")))
    )
    exe = shutil.which("systemd-run") if wanted else None
    if exe is None:
        return []
    prefix = [exe, "--scope", "--quiet", "--collect", f"--unit=vigil-run-{os.getpid()}-{run_id}"]
    if os.getuid() != 0:
        prefix.insert(1, "--user")
    return [*prefix, "--"]


_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./,:@%+=-]+\Z")
#: First words that are not a program for sh: its keywords, and its builtins (POSIX's and dash's),
#: which act otherwise than a program of the same name would (echo, kill, pwd, test, ...).
_SHELL_WORDS = frozenset(
    "! { } [[ ]] case do done elif else esac fi for function if in select then time until while "
    ". : [ alias bg break cd command continue echo eval exec exit export false fc fg getopts hash jobs "
    "kill let local printf pwd read readonly return set shift test times trap true type ulimit umask "
    "unalias unset wait".split()
)


def simple_command(command: str) -> list[str] | None:
    """The words of `command` if sh would run it as one program with these words as its argv.

    Only blanks between words of plain characters (no quotes, expansions, globs, redirections,
    operators, comments, tildes), no assignment before the program, and a first word that is not a
    keyword or builtin of sh. Anything else is None: it goes to /bin/sh -c.
    """
    words = command.replace("\t", " ").split(" ")
    words = [word for word in words if word]
    if not words or any(_PLAIN_WORD.match(word) is None for word in words):
        return None
    if "=" in words[0] or words[0] in _SHELL_WORDS:
        return None
    return words


def program_found(name: str, path: str | None) -> bool:
    """Whether sh would find `name` as an executable file on `path` (the job's PATH; None: sh's
    default), judged without the job's working directory: a relative name or PATH entry says no."""
    tried = candidates(name, path)  # the supervisor's own order (engine/exec/launcher.py)
    if not all(os.path.isabs(file) for file in tried):
        return False
    return any(os.path.isfile(file) and os.access(file, os.X_OK) for file in tried)


def job_argv(command: str | tuple[str, ...] | list[str], path: str | None = None) -> list[str]:
    """The job's argv: an array as it is; a simple command (`sleep 3`) whose program is on the
    job's `path` as its words (one sh exec less); any other string through /bin/sh -c."""
    if isinstance(command, str):
        words = simple_command(command)
        if words is not None and program_found(words[0], path):
            return words
        return [SHELL, "-c", command]
    return list(command)


def shell_pwd(pwd: str, cwd: str) -> str:
    """The PWD that /bin/sh -c would hand its program in `cwd`: the inherited one if it names that
    directory, else the physical path (dash's rule), so a direct exec keeps what sh gave."""
    try:
        if os.path.isabs(pwd) and os.path.samefile(pwd, cwd):
            return pwd
    except OSError:
        pass
    return os.path.realpath(cwd)


def check_environment(env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise LaunchError(f"could not start: environment variable {name!r}: not a valid name")
        if "\0" in value:
            raise LaunchError(f"could not start: environment variable {name}: the value contains a NUL byte")


def switch_user_argv(account: Account, path: str = SHIM_PATH) -> list[str]:
    """The words before a job's argv that run it as `account`: setpriv(1) with its groups.

    setpriv execs in place (the job keeps the pid, start time and process group the shim recorded,
    so kills still reach its group) and sets the real and effective ids and initgroups(3)'s
    supplementary groups; a /bin/sh shim cannot drop privileges itself (docs/decisions.md).
    """
    exe = shutil.which("setpriv", path=path)
    if exe is None:
        raise LaunchError(f"could not start: user {account.name}: setpriv (util-linux) not found in {path}")
    return [exe, f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups", "--"]


@dataclass(frozen=True)
class ShimTools:
    """Absolute paths of the programs the shim runs, found once on SHIM_PATH."""

    setsid: str
    env: str


def find_tools(path: str = SHIM_PATH) -> ShimTools:
    found: dict[str, str] = {}
    for name in ("setsid", "env"):
        exe = shutil.which(name, path=path)
        if exe is None:
            raise LaunchError(f"could not start: {name}: not found in {path}")
        found[name] = exe
    if not os.access(SHELL, os.X_OK):
        raise LaunchError(f"could not start: {SHELL}: not executable")
    return ShimTools(**found)


def shim_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {"PATH": SHIM_PATH, **{k: env[k] for k in _SHIM_ENV_KEPT if k in env}}


def job_environment_script(env: Mapping[str, str], run_dir: Path) -> tuple[str, list[str]]:
    """The job's environment as shell text for shim.sh --job, plus words for env(1).

    Each variable is one `export NAME='value'` line (single quotes, so newlines, quotes, `$` and
    backquotes arrive exactly). Names a shell cannot export (`MY-VAR`) come back as `NAME=value`
    words for env(1) instead. The last line traps a failed exec of the job, so the run says "could
    not start" rather than the job's own exit code.
    """
    check_environment(env)
    lines: list[str] = []
    words: list[str] = []
    for name, value in env.items():
        if _SHELL_NAME.match(name):
            lines.append(f"export {name}={shlex.quote(value)}\n")
        else:
            words.append(f"{name}={value}")
    report = f'printf "exec %s %s" "$?" "$1" >{shlex.quote(str(run_dir / "start-error"))}'
    lines.append(f"trap {shlex.quote(report)} EXIT\n")
    return "".join(lines), words


def workdir_problem(workdir: str) -> str | None:
    """Why the job could not enter `workdir` (as the system says it), or None if it can."""
    try:
        info = os.stat(workdir)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISDIR(info.st_mode):
        return os.strerror(20)  # ENOTDIR
    if not os.access(workdir, os.X_OK):
        return os.strerror(13)  # EACCES
    return None


def read_start_failure(run_dir: Path) -> str | None:
    """Why the shim could not start the job, from its complete `notstarted` record; else None."""
    record, _ = _read_exit_file(run_dir)
    return _start_failure(record, run_dir)


def _start_failure(record: str | None, run_dir: Path) -> str | None:
    """`read_start_failure` for the exit record already read (None: there is none)."""
    if record is None or record.strip() != "notstarted end":
        return None
    try:
        detail = (run_dir / "start-error").read_text()
    except OSError:
        detail = ""
    kind, _, rest = detail.partition(" ")
    if kind == "exec":
        code, _, name = rest.partition(" ")
        if code == "127":
            return f"could not start: {name}: command not found"
        return f"could not start: {name}: cannot be executed (exec status {code})"
    if kind == "workdir":
        return f"could not start: workdir {rest}: {workdir_problem(rest) or 'cannot enter it'}"
    if kind.strip() == "environment":
        return "could not start: the shim could not pass the job its environment"
    return "could not start: the shim could not start the job"


def shim_end_cause(shim_pid: int, wait_status: int | None) -> str:
    """How a shim ended without recording its job's exit, as far as its wait status tells."""
    if wait_status is None:
        how = "ended"
    elif os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        how = f"was killed (signal {sig}, {name})"
    else:
        how = f"exited with status {os.waitstatus_to_exitcode(wait_status)}"
    return f"the run's shim (pid {shim_pid}) {how} without recording the job's exit"


def ending_outcome(killed: bool, grace: float) -> str:
    """How a job group that outlived its shim ended, once it is gone."""
    if killed:
        return f"killed with SIGKILL after {grace:g}s (it outlived SIGTERM)"
    return "terminated (SIGTERM)"


def ending_reason(cause: str, job_pid: int, outcome: str, *, leader_alive: bool) -> tuple[RunState, str]:
    """The run's state and reason after the scheduler ended the group of a job whose shim died.

    The job was still running: it was ended by the scheduler, not on its own, so the run failed (and
    is retried if the job says so). If the job's own process had already ended, its exit status is
    lost with the shim: unknown, as every run whose outcome cannot be learned.
    """
    if leader_alive:
        return RunState.FAILED, f"{cause}; job process group {job_pid} {outcome}"
    return RunState.UNKNOWN, (
        f"{cause}; job pid {job_pid} had already ended (its exit status is lost); the rest of its "
        f"process group {outcome}"
    )


def _read_bytes(path: str | Path) -> bytes | None:
    """A run file's bytes, or None if it cannot be read. Plain os calls: pathlib's read_text costs
    several times more, and every finished run reads three of these files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_all(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    data = os.read(fd, 4096)
    if len(data) < 4096:  # a regular file: a short read is its end (every record the shim writes)
        return data
    chunks = [data]
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_int_file(path: str | Path) -> int | None:
    data = _read_bytes(path)
    if data is None:
        return None
    try:
        text = data.decode().strip()
        return int(text) if text else None
    except ValueError:  # UnicodeDecodeError included
        return None


#: Written before the shim starts; the shim overwrites it in place (`1<>`), so recording a run's end
#: needs no new space on the disk: a job that ends while the disk is full keeps its exit code.
EXIT_RESERVED = b" " * 64


def _reserve_exit_record(run_dir: Path) -> None:
    fd = os.open(run_dir / "exit", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, EXIT_RESERVED)
    finally:
        os.close(fd)


def _give_log(run_dir: Path, uid: int) -> None:
    """Make the run's log the job user's: it is the job's stdout and stderr, and a job that opens
    /dev/stdout or /dev/stderr opens this file again, as its own user. The run directory stays the
    scheduler's (0700), so no one reaches the log by its path."""
    fd = os.open(run_dir / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchown(fd, uid, -1)
    finally:
        os.close(fd)


def read_exit_record(run_dir: Path) -> int | None:
    """The exit code from a complete record; a partial or missing record reads as None."""
    record, _ = _read_exit_file(run_dir)
    return _exit_code(record) if record is not None and _complete(record) else None


def read_exit(run_dir: Path) -> tuple[int | None, float | None]:
    """The exit code (as `read_exit_record`) and, from a complete record, when it was written (its
    mtime, a POSIX time): the shim writes it as soon as the job is reaped, so it dates the run's end
    however late a scheduler reads it. One open, one fstat."""
    return _exit_of(*_read_exit_file(run_dir))


def _read_exit_file(run_dir: Path) -> tuple[str | None, float | None]:
    """The exit record's text (undecodable bytes replaced) and mtime; (None, None) if unreadable."""
    try:
        fd = os.open(os.path.join(run_dir, "exit"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None, None
    try:
        written = os.fstat(fd).st_mtime
        data = _read_all(fd)
    except OSError:
        return None, None
    finally:
        os.close(fd)
    return data.decode(errors="replace"), written


def _exit_of(record: str | None, written: float | None) -> tuple[int | None, float | None]:
    if record is None or not _complete(record):
        return None, None  # the reserved blanks, or a torn write: no end recorded yet
    return _exit_code(record), written  # no code ("notstarted end"): the job could not start, then


def _complete(record: str) -> bool:
    return record.rstrip().endswith(" end")


def _exit_code(record: str) -> int | None:
    if not record.startswith("exit="):
        return None
    try:
        return int(record[5:].split()[0])
    except (ValueError, IndexError):
        return None


def read_cpu_seconds(run_dir: Path) -> float | None:
    """Children's user+system time from the shim's `times` output (second line)."""
    data = _read_bytes(os.path.join(run_dir, "times"))
    if data is None:
        return None
    lines = data.decode().splitlines()
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


def left_traces(run_dir: Path) -> bool:
    """Whether a run's supervisor got as far as its job: a `started` or `start-error` file, or a
    complete exit record. One that could not write its `shim` file (a full disk) still runs the job,
    so a missing pid file alone does not mean that nothing ran."""
    if (run_dir / "started").exists() or (run_dir / "start-error").exists():
        return True
    return read_exit(run_dir)[1] is not None


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


def read_job_identity(run_dir: Path) -> tuple[int | None, int | None]:
    """The job's pid (recorded by the shim) and start time (recorded by the job's own process before
    its exec, in clock ticks since boot)."""
    return read_int_file(run_dir / "started"), read_int_file(run_dir / "jobstart")


def gather_evidence(run_dir: Path) -> ShimEvidence:
    exists = run_dir.is_dir()
    if not exists:
        return ShimEvidence(False, False, None, None, None)
    lock_held = lock_is_held(run_dir)
    exit_code = read_exit_record(run_dir)
    job_pid, job_start = read_job_identity(run_dir)
    alive = (
        not lock_held
        and exit_code is None
        and job_pid is not None
        and group_state(job_pid, job_start) in (GroupState.LEADER, GroupState.LEADERLESS)
    )
    return ShimEvidence(
        run_dir_exists=True,
        lock_held=lock_held,
        shim_pid=read_int_file(run_dir / "shim"),
        job_pid=job_pid,
        exit_code=exit_code,
        start_failure=read_start_failure(run_dir),
        job_group_alive=alive,
    )


@dataclass
class _Ending:
    """A job's process group left running by a dead shim: SIGTERM sent, SIGKILL after the grace."""

    run_id: int
    job_pid: int
    job_starttime: int | None
    cause: str
    leader_alive: bool  #: the job's own process was alive when its shim was found dead
    kill_at: float  #: monotonic time of the SIGKILL
    peak_rss: int | None
    killed: bool = False
    give_up_at: float = 0.0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


def _above_shim_fds(fd: int) -> int:
    """A close-on-exec copy of `fd` numbered above the shim's fixed fds (8 and 9), so that
    posix_spawn's dup2 onto them always clears close-on-exec; the original is closed."""
    if fd > LOCK_FD:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, LOCK_FD + 1)
    finally:
        os.close(fd)


@dataclass
class _Launch:
    """A run ready to start, by the launcher or by the sh shim: its files are in place."""

    run_id: int
    run_dir: Path  #: absolute: the supervisor enters the workdir before it writes the run's files
    workdir: str
    umask: int  #: the job's; everything of the run's stays owner-only
    user_argv: list[str]  #: setpriv's words before the job's argv, when it runs as another user
    argv: list[str]
    env: dict[str, str]


class LocalExecutor:
    """Starts supervisors (through the launcher, else sh shims), watches them with pidfds, kills
    process groups, caps logs, samples RSS."""

    def __init__(
        self,
        paths: StatePaths,
        on_exit: Callable[[ShimExit], None],
        *,
        log_cap: int,
        kill_grace: float,
        clock: Clock | None = None,
    ) -> None:
        self.paths = paths
        self.on_exit = on_exit
        self.clock: Clock = clock or SystemClock()  #: the ends it reports are dated on this clock
        self.log_cap = log_cap
        self.kill_grace = kill_grace
        self._watched: dict[int, _Watched] = {}
        self._starting: dict[int, asyncio.TimerHandle] = {}  #: adopted shims that have not written their pid
        self._ending: dict[int, _Ending] = {}  #: job groups being ended after their shim died
        self._kill_retries: dict[int, asyncio.TimerHandle] = {}  #: kills waiting for the job's pid
        self._loop = asyncio.get_running_loop()
        self._shim_env = shim_environment()
        self._tools: ShimTools | LaunchError
        try:
            self._tools = find_tools()
        except LaunchError as exc:  # every launch says so; adopting and ingesting still work
            self._tools = exc
        #: VIGIL_LAUNCHER=0: every run through the sh shim (docs/operations.md)
        self.use_launcher = os.environ.get("VIGIL_LAUNCHER", "1") != "0"
        self._link: LauncherLink | None = None
        self._pending: dict[int, _Launch] = {}  #: sent to the launcher, no answer yet
        #: for the launcher, not sent yet (its socket is full), oldest first; nothing of them started
        self._queued: dict[int, _Launch] = {}
        self._waiting_for_room = False  #: a writer callback is on the launcher's socket
        self._shim_turn: asyncio.Handle | None = None  #: queued runs of a dropped launcher going to the sh shim
        self._unstarted: dict[int, _Launch] = {}  #: lost with a launcher: for the sh shim, if nothing of it ran
        self._statuses: dict[int, int] = {}  #: wait statuses of supervisors that did not exit 0
        self._last_answer = 0.0  #: monotonic time of the launcher's last answer (or of the first pending)
        self._progress_timer: asyncio.TimerHandle | None = None
        self._restart_at = 0.0
        self._restart_delay = _RESTART_DELAY[0]

    @property
    def running(self) -> set[int]:
        return set(self._watched) | set(self._starting) | set(self._ending) | set(self._pending) | set(self._queued)

    @property
    def launcher_pid(self) -> int | None:
        """The launcher's pid, once it has said it is ready."""
        link = self._link
        return link.pid if link is not None and link.ready else None

    def launch(
        self,
        run_id: int,
        command: str | tuple[str, ...] | list[str],
        env: dict[str, str],
        workdir: str | None,
        account: Account | None = None,
    ) -> int | None:
        """Start the run's supervisor: the shim's pid, or None when the launcher starts it (its pid
        comes with the launcher's answer). The run row must already be committed.

        `env` is the job's whole environment; the supervisor itself runs with a fixed one. With
        `account` (another uid than this process's) the job, not the supervisor, runs as that user.
        Raises LaunchError (the run's reason) if the job cannot be started.
        """
        if isinstance(self._tools, LaunchError):
            raise self._tools
        if workdir:
            problem = workdir_problem(workdir)
            if problem is not None:
                raise LaunchError(f"could not start: workdir {workdir}: {problem}")
        check_environment(env)
        argv_job = job_argv(command, env.get("PATH"))
        if isinstance(command, str) and argv_job[0] != SHELL and "PWD" in env:
            env = {**env, "PWD": shell_pwd(env["PWD"], workdir or os.getcwd())}
        switch = switch_to(account)
        launch = _Launch(
            run_id=run_id,
            run_dir=self.paths.run_dir(run_id).absolute(),
            workdir=workdir or "",
            umask=job_umask(),
            user_argv=switch_user_argv(switch) if switch is not None else [],
            argv=argv_job,
            env=env,
        )
        if any("\0" in arg for arg in (str(launch.run_dir), launch.workdir, *launch.user_argv, *argv_job)):
            raise LaunchError("could not start: the command contains a NUL byte")
        prefix = scope_prefix(run_id)
        claim_run_dir(launch.run_dir, run_identity(env))  # never another run's directory (engine/exec/rundirs.py)
        _reserve_exit_record(launch.run_dir)
        if switch is not None:
            _give_log(launch.run_dir, switch.uid)
        if not prefix and self._request(launch):
            return None
        return self._spawn_shim(launch, prefix)

    def _spawn_shim(self, launch: _Launch, prefix: list[str]) -> int:
        if isinstance(self._tools, LaunchError):
            raise self._tools
        tools = self._tools
        script, env_words = job_environment_script(launch.env, launch.run_dir)
        argv_job = launch.argv
        if env_words:
            argv_job = [tools.env, "--", *env_words, *argv_job]
        argv = [
            *prefix,
            SHELL,
            SHIM,
            str(launch.run_dir),
            launch.workdir,
            f"{launch.umask:04o}",
            tools.setsid,
            tools.env,
            *launch.user_argv,
            *argv_job,
        ]
        # In memory, not on disk or in any argv: other users can read a process's argv, never its
        # environment or fds.
        env_fd = _above_shim_fds(os.memfd_create("vigil-job-env", os.MFD_CLOEXEC))
        try:
            data = script.encode("utf-8", "surrogateescape")
            while data:
                data = data[os.write(env_fd, data) :]
            os.lseek(env_fd, 0, os.SEEK_SET)
            lock_fd = _above_shim_fds(os.open(launch.run_dir / "lock", os.O_CREAT | os.O_RDWR, 0o600))
            try:
                # Held without a gap from before the spawn until the shim exits (fd 9 in the shim).
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                pid = os.posix_spawn(
                    argv[0],
                    argv,
                    self._shim_env,
                    file_actions=[(os.POSIX_SPAWN_DUP2, lock_fd, LOCK_FD), (os.POSIX_SPAWN_DUP2, env_fd, ENV_FD)],
                    setsid=True,
                    setsigmask=(),
                    setsigdef=RESET_SIGNALS,
                )
            finally:
                os.close(lock_fd)
        finally:
            os.close(env_fd)
        self._watch(launch.run_id, pid, own_child=True)
        return pid

    # ------------------------------------------------------------------------------ the launcher

    def _request(self, launch: _Launch) -> bool:
        """Hand the run to the launcher: sent now, or queued until its socket has room (the loop never
        waits for it). False (nothing sent, the lock released) when there is no ready launcher or the
        request cannot be sent at all: the sh shim starts it then."""
        link = self._ready_link()
        if link is None:
            return False
        if not self._queued:
            try:
                if self._send(link, launch):
                    return True
            except OSError:
                return False
        self._queued[launch.run_id] = launch
        if not self._waiting_for_room:
            self._waiting_for_room = True
            self._loop.add_writer(link.fileno(), self._on_room)
        return True

    def _send(self, link: LauncherLink, launch: _Launch) -> bool:
        """Send the run's request with its locked `lock` fd: False if the socket is full (nothing of
        the run changed); OSError if it cannot be sent."""
        body = json.dumps(
            {
                "run": launch.run_id,
                "dir": str(launch.run_dir),
                "workdir": launch.workdir,
                "umask": launch.umask,
                "argv": [*launch.user_argv, *launch.argv],
                "env": launch.env,
            }
        ).encode()  # ASCII: surrogate-escaped bytes travel as \udcXX and come back the same
        lock_fd = os.open(launch.run_dir / "lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            # Held without a gap from here until the supervisor exits: the message carries the fd.
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not link.send(body, lock_fd):
                return False
        finally:
            os.close(lock_fd)
        if not self._pending:
            self._last_answer = time.monotonic()  # no answer is owed before now
        self._pending[launch.run_id] = launch
        if self._progress_timer is None:
            self._progress_timer = self._loop.call_later(_REPLY_WAIT, self._check_progress)
        return True

    def _on_room(self) -> None:
        """The launcher's socket has room: send the queued runs, oldest first, until it is full again."""
        link = self._link
        if link is None:
            return
        while self._queued:
            run_id, launch = next(iter(self._queued.items()))
            try:
                sent = self._send(link, launch)
            except OSError as exc:
                del self._queued[run_id]
                log.warning("could not send run %d to the launcher (%s); using the sh shim", run_id, exc)
                self._relaunch(launch)
                continue
            if not sent:
                return
            del self._queued[run_id]
        self._stop_waiting_for_room(link)

    def _stop_waiting_for_room(self, link: LauncherLink) -> None:
        if self._waiting_for_room:
            self._waiting_for_room = False
            self._loop.remove_writer(link.fileno())

    def _shim_queued(self) -> None:
        """Start through the sh shim the runs queued for a launcher that is gone, a slice per loop turn."""
        self._shim_turn = None
        for _ in range(min(_SHIM_SLICE, len(self._queued))):
            run_id = next(iter(self._queued))
            self._relaunch(self._queued.pop(run_id))
        if self._queued:
            self._shim_turn = self._loop.call_soon(self._shim_queued)

    def _ready_link(self) -> LauncherLink | None:
        """The launcher if it is ready; started (for the next launches) if there is none."""
        if not self.use_launcher:
            return None
        link = self._link
        now = time.monotonic()
        if link is None:
            if now < self._restart_at:
                return None
            try:
                link = LauncherLink(self._shim_env)
            except OSError as exc:
                log.warning("could not start the launcher (%s); runs start under the sh shim", exc)
                self._restart_later()
                return None
            self._link = link
            self._loop.add_reader(link.fileno(), self._on_link_readable)
            return None
        if not link.ready and now - link.started > _READY_WAIT:
            self._drop_link(f"did not start within {_READY_WAIT:g}s")
            return None
        return link if link.ready else None

    def _restart_later(self) -> None:
        self._restart_at = time.monotonic() + self._restart_delay
        self._restart_delay = min(self._restart_delay * 2, _RESTART_DELAY[1])

    def _on_link_readable(self) -> None:
        link = self._link
        if link is None:
            return
        messages, closed = link.receive()
        for message in messages:
            self._on_message(link, message)
        if closed and self._link is link:
            self._drop_link("ended")

    def _on_message(self, link: LauncherLink, message: Message) -> None:
        body = message.body
        run_id = body.get("run")
        if body.get("ready") is True:
            link.ready = True
            self._restart_delay = _RESTART_DELAY[0]
        elif isinstance(run_id, int) and isinstance(body.get("pid"), int) and message.fd is not None:
            self._last_answer = time.monotonic()
            if self._pending.pop(run_id, None) is not None:
                self._watch(run_id, int(body["pid"]), own_child=False, pidfd=message.fd)
                return
        elif isinstance(run_id, int) and isinstance(body.get("status"), int):
            watched = self._watched.get(run_id)
            if watched is not None and watched.via_launcher:
                self._statuses[run_id] = int(body["status"])
                if watched.status_deadline is not None:
                    self._finish(run_id)  # it was waiting for this
        elif isinstance(run_id, int) and "error" in body:
            self._last_answer = time.monotonic()
            launch = self._pending.pop(run_id, None)
            if launch is not None:  # it could not fork: nothing of the run started
                log.warning("the launcher could not start run %d (%s); using the sh shim", run_id, body["error"])
                self._relaunch(launch)
        if message.fd is not None:
            os.close(message.fd)

    def _check_progress(self) -> None:
        self._progress_timer = None
        if self._link is None or not self._pending:
            return
        self._on_link_readable()  # answers the loop has not read yet count
        if self._link is None or not self._pending:
            return
        left = self._last_answer + _REPLY_WAIT - time.monotonic()
        if left > 0:
            self._progress_timer = self._loop.call_later(left, self._check_progress)
            return
        self._drop_link(f"has not answered for {_REPLY_WAIT:g}s")

    def _drop_link(self, why: str) -> None:
        """Kill and forget the launcher. Its unanswered runs are judged from their files once it is
        gone (its socket holds their locks until then), as a run adopted while still starting is: a
        supervisor that was forked is adopted; a run nothing started goes to the sh shim."""
        link = self._link
        if link is None:
            return
        self._link = None
        log.warning("the launcher (pid %d) %s; replacing it", link.pid, why)
        self._loop.remove_reader(link.fileno())
        self._stop_waiting_for_room(link)
        if self._queued and self._shim_turn is None:
            self._shim_turn = self._loop.call_soon(self._shim_queued)
        link.close_socket()
        link.kill()
        self._loop.add_reader(link.pidfd, _reap, self._loop, link.pidfd)  # never a zombie of ours
        if not link.ready:
            self._restart_later()
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None
        for run_id, launch in self._pending.items():
            self._unstarted[run_id] = launch
            self._starting[run_id] = self._loop.call_later(_ADOPT_POLL, self._adopt_when_started, run_id)
        self._pending.clear()

    def _relaunch(self, launch: _Launch) -> None:
        """Start through the sh shim a run that the launcher lost before any of it started."""
        try:
            self._spawn_shim(launch, [])
        except (LaunchError, OSError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, LaunchError) else f"could not start the run's shim: {exc}"
            result = self.collect(launch.run_id)
            self.on_exit(dataclasses.replace(result, state=RunState.FAILED, reason=reason))

    # ------------------------------------------------------------------------------ watching

    def adopt(self, run_id: int) -> bool:
        """Watch a shim this process did not start. False if it has already ended (its files tell how).

        A shim whose lock is held but whose pid file is not written yet is still starting (spawned an
        instant before the previous active died, slow under load): it is watched for its pid file or
        the release of its lock, however long that takes, never judged on a timer.
        """
        run_dir = self.paths.run_dir(run_id)
        shim_pid = read_int_file(run_dir / "shim")
        if shim_pid is None:
            if not lock_is_held(run_dir):
                return False
            self._starting[run_id] = self._loop.call_later(_ADOPT_POLL, self._adopt_when_started, run_id)
            return True
        return self._adopt_pid(run_id, shim_pid)

    def _adopt_pid(self, run_id: int, shim_pid: int) -> bool:
        if not self._watch(run_id, shim_pid, own_child=False):
            return False
        # The shim may have ended between the evidence and the pidfd (or its pid been reused since):
        # the lock tells.
        if not lock_is_held(self.paths.run_dir(run_id)):
            self._finish(run_id)
        return True

    def _adopt_when_started(self, run_id: int) -> None:
        if self._starting.pop(run_id, None) is None:
            return
        unstarted = self._unstarted.pop(run_id, None)
        run_dir = self.paths.run_dir(run_id)
        held = lock_is_held(run_dir)  # before the pid file: a shim whose lock is free has ended
        shim_pid = read_int_file(run_dir / "shim")
        if shim_pid is not None:
            if not self._adopt_pid(run_id, shim_pid):
                self._settle_dead_shim(run_id, shim_pid, None, None)
        elif held:
            if unstarted is not None:
                self._unstarted[run_id] = unstarted
            self._starting[run_id] = self._loop.call_later(_ADOPT_POLL, self._adopt_when_started, run_id)
        elif unstarted is not None and not left_traces(run_dir):
            self._relaunch(unstarted)  # its lock is free and nothing of it was written: nothing ran
        else:
            self._settle_dead_shim(run_id, None, None, None)

    def _watch(self, run_id: int, shim_pid: int, *, own_child: bool, pidfd: int | None = None) -> bool:
        """Watch a supervisor by its pidfd (`pidfd`: the launcher's, for a supervisor it forked)."""
        via_launcher = pidfd is not None
        if pidfd is None:
            try:
                pidfd = os.pidfd_open(shim_pid)
            except ProcessLookupError:
                if own_child:
                    pidfd = -1
                else:
                    return False
        watched = _Watched(
            run_id=run_id, shim_pid=shim_pid, pidfd=pidfd, own_child=own_child, via_launcher=via_launcher
        )
        self._watched[run_id] = watched
        if pidfd >= 0:
            self._loop.add_reader(pidfd, self._finish, run_id)
        else:
            self._loop.call_soon(self._finish, run_id)
        return True

    def _finish(self, run_id: int) -> None:
        watched = self._watched.get(run_id)
        if watched is None:
            return
        if watched.pidfd >= 0:
            self._loop.remove_reader(watched.pidfd)
            os.close(watched.pidfd)
            watched.pidfd = -1
        wait_status: int | None = None
        if watched.own_child:
            with contextlib.suppress(ChildProcessError):
                _, wait_status = os.waitpid(watched.shim_pid, 0)
        elif watched.via_launcher:
            wait_status = self._statuses.pop(run_id, None)
            if wait_status is None and self._link is not None and read_exit(self.paths.run_dir(run_id))[1] is None:
                # It ended without a record: only its parent, the launcher, knows how. It says so
                # right after reaping it.
                now = time.monotonic()
                if watched.status_deadline is None:
                    watched.status_deadline = now + _STATUS_WAIT
                if now < watched.status_deadline:
                    self._loop.call_later(_STATUS_POLL, self._finish, run_id)
                    return
        del self._watched[run_id]
        if watched.kill_timer is not None:
            self._learn_job(watched)  # only a kill or a missing exit record needs the job's identity
            watched.kill_timer.cancel()
            if watched.job_pid is not None:
                # The job's leader is gone; whatever of its group ignored SIGTERM goes now (if the
                # group is still the job's: its pid may have been reused since the shim reaped it).
                signal_group(watched.job_pid, watched.job_starttime, signal.SIGKILL)
        self._settle_dead_shim(run_id, watched.shim_pid, wait_status, watched)

    def _settle_dead_shim(
        self, run_id: int, shim_pid: int | None, wait_status: int | None, watched: _Watched | None
    ) -> None:
        """Report the end of a run whose shim has exited, from what it left behind."""
        peak_rss = watched.peak_rss if watched else None
        result = self.collect(run_id, peak_rss=peak_rss)
        if result.exit_code is not None or result.state is not None:
            self.on_exit(result)
            return
        if shim_pid is None:
            # It holds its lock from before it starts and writes its pid before the job: nothing ran.
            self.on_exit(
                dataclasses.replace(
                    result,
                    state=RunState.FAILED,
                    reason="could not start: the run's shim ended before starting the job",
                )
            )
            return
        cause = shim_end_cause(shim_pid, wait_status)
        job_pid: int | None
        job_start: int | None
        if watched is not None:
            self._learn_job(watched)
        if watched is not None and watched.job_pid is not None:
            job_pid, job_start = watched.job_pid, watched.job_starttime
        else:
            job_pid, job_start = read_job_identity(self.paths.run_dir(run_id))
        if job_pid is None:
            reason = cause.replace("without recording the job's exit", "before confirming the job's start")
            self.on_exit(dataclasses.replace(result, state=RunState.UNKNOWN, reason=reason))
            return
        self._end_group(run_id, job_pid, job_start, cause, peak_rss)

    def end_orphan(self, run_id: int, cause: str) -> None:
        """End the job group of a run whose shim is gone (found at reconciliation), then report it."""
        job_pid, job_start = read_job_identity(self.paths.run_dir(run_id))
        if job_pid is None:
            self.on_exit(dataclasses.replace(self.collect(run_id), state=RunState.UNKNOWN, reason=cause))
            return
        self._end_group(run_id, job_pid, job_start, cause, None)

    def _end_group(self, run_id: int, job_pid: int, job_start: int | None, cause: str, peak_rss: int | None) -> None:
        """The scheduler still owns the group it launched: SIGTERM it, SIGKILL after the grace."""
        found = group_state(job_pid, job_start)
        if found in (GroupState.LEADER, GroupState.LEADERLESS) and signal_group(job_pid, job_start, signal.SIGTERM):
            ending = _Ending(
                run_id=run_id,
                job_pid=job_pid,
                job_starttime=job_start,
                cause=cause,
                leader_alive=found is GroupState.LEADER,
                kill_at=time.monotonic() + self.kill_grace,
                peak_rss=peak_rss,
            )
            self._ending[run_id] = ending
            ending.timer = self._loop.call_later(_ENDING_POLL, self._check_ending, run_id)
            return
        if found is GroupState.REUSED:
            detail = f"job pid {job_pid} had ended (the pid now belongs to another process, left alone)"
        elif found is GroupState.UNVERIFIED:
            detail = f"job pid {job_pid} is alive but its start time was never recorded, so it was left alone"
        else:
            detail = f"job pid {job_pid} had already ended; its exit status is lost"
        result = self.collect(run_id, peak_rss=peak_rss)
        self.on_exit(dataclasses.replace(result, job_pid=job_pid, state=RunState.UNKNOWN, reason=f"{cause}; {detail}"))

    def _check_ending(self, run_id: int) -> None:
        ending = self._ending.get(run_id)
        if ending is None:
            return
        now = time.monotonic()
        found = group_state(ending.job_pid, ending.job_starttime)
        if found not in (GroupState.LEADER, GroupState.LEADERLESS):
            self._report_ending(ending, ending_outcome(ending.killed, self.kill_grace))
            return
        if not ending.killed and now >= ending.kill_at:
            signal_group(ending.job_pid, ending.job_starttime, signal.SIGKILL)
            ending.killed = True
            ending.give_up_at = now + _KILLED_WAIT
        elif ending.killed and now >= ending.give_up_at:
            # e.g. a member stuck in uninterruptible sleep: record what was done rather than wait on.
            self._report_ending(ending, f"was sent SIGKILL after {self.kill_grace:g}s but has not ended yet")
            return
        ending.timer = self._loop.call_later(_ENDING_POLL, self._check_ending, run_id)

    def _report_ending(self, ending: _Ending, outcome: str) -> None:
        self._ending.pop(ending.run_id, None)
        state, reason = ending_reason(ending.cause, ending.job_pid, outcome, leader_alive=ending.leader_alive)
        result = self.collect(ending.run_id, peak_rss=ending.peak_rss)
        self.on_exit(dataclasses.replace(result, job_pid=ending.job_pid, state=state, reason=reason))

    def collect(self, run_id: int, *, peak_rss: int | None = None) -> ShimExit:
        """Read a finished run's record and apply the log cap for good."""
        run_dir = self.paths.run_dir(run_id)
        self._cap_log(run_dir, final=True)
        record, mtime = _read_exit_file(run_dir)  # read once for the start failure and the code
        start_failure = _start_failure(record, run_dir)
        exit_code, written = _exit_of(record, mtime)
        return ShimExit(
            run_id=run_id,
            exit_code=exit_code,
            job_pid=read_int_file(os.path.join(run_dir, "started")),
            cpu_s=read_cpu_seconds(run_dir),
            peak_rss=peak_rss,
            reason=start_failure,
            state=RunState.FAILED if start_failure else None,
            ended_at=None if written is None else self._dated(written),
        )

    def _dated(self, posix: float) -> datetime:
        """A file time on this executor's clock: as long ago as it is on the system's wall clock."""
        return self.clock.now() - timedelta(seconds=max(0.0, time.time() - posix))

    def job_identity(self, run_id: int) -> tuple[int | None, int | None]:
        watched = self._watched.get(run_id)
        if watched is None:
            return None, None
        self._learn_job(watched)
        return watched.job_pid, watched.job_starttime

    def _learn_job(self, watched: _Watched) -> None:
        if watched.identity_recorded:
            return
        job_pid, job_start = read_job_identity(self.paths.run_dir(watched.run_id))
        if job_pid is None:
            return
        watched.job_pid = job_pid
        if job_start is not None:
            # Recorded by the job's own process before its exec: it cannot belong to a reused pid.
            watched.job_starttime = job_start
            watched.identity_recorded = True
        elif watched.job_starttime is None:
            # Until that record appears (or from an older shim): what /proc says now.
            watched.job_starttime = starttime(job_pid)

    def kill(self, run_id: int) -> bool:
        """SIGTERM the run's whole process group, SIGKILL after the grace period."""
        if run_id in self._ending:
            return True  # already being ended
        launch = self._queued.pop(run_id, None)
        if launch is not None:  # nothing of it has started: it never will
            result = self.collect(run_id)
            reason = "killed before it started (it was queued for the launcher)"
            self._loop.call_soon(self.on_exit, dataclasses.replace(result, state=RunState.KILLED, reason=reason))
            return True
        if run_id in self._starting or run_id in self._pending:
            self._retry_kill(run_id, _ADOPT_POLL)  # its pid is not known yet
            return True
        watched = self._watched.get(run_id)
        if watched is None:
            return False
        self._learn_job(watched)
        if watched.job_pid is None:
            # The shim has not started the job yet: try again shortly.
            self._retry_kill(run_id, 0.02)
            return True
        signal_group(watched.job_pid, watched.job_starttime, signal.SIGTERM)
        if watched.kill_timer is None:
            watched.kill_timer = self._loop.call_later(self.kill_grace, self._kill_hard, run_id)
        return True

    def _retry_kill(self, run_id: int, delay: float) -> None:
        # Tracked so that close() cancels it: a closed executor signals nothing.
        pending = self._kill_retries.pop(run_id, None)
        if pending is not None:
            pending.cancel()
        self._kill_retries[run_id] = self._loop.call_later(delay, self._kill_again, run_id)

    def _kill_again(self, run_id: int) -> None:
        self._kill_retries.pop(run_id, None)
        self.kill(run_id)

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
        log = os.path.join(run_dir, "log")
        marker = os.path.join(run_dir, "truncated")
        try:
            size = os.stat(log).st_size
        except OSError:
            return
        if size > self.log_cap:
            # The job appends (O_APPEND), so after this it writes at the new end: the first
            # `log_cap` bytes stay exactly the job's first output.
            os.truncate(log, self.log_cap)
            Path(marker).touch()
        if final and os.path.exists(marker):
            with open(log, "a") as fh:
                fh.write(TRUNCATION_MARK.format(cap=self.log_cap))
            os.unlink(marker)

    def close(self) -> None:
        """Stop watching (the shims and jobs live on for the next active to adopt).

        A job group being ended after its shim died is left as it is: the next active finds the
        shim gone and the group alive at reconciliation, and ends it.
        """
        for handle in self._starting.values():
            handle.cancel()
        self._starting.clear()
        for handle in self._kill_retries.values():
            handle.cancel()
        self._kill_retries.clear()
        for ending in self._ending.values():
            if ending.timer is not None:
                ending.timer.cancel()
        self._ending.clear()
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
        # The launcher starts what it was sent, then ends as it reads the end of the socket; the
        # next active adopts those runs from their directories (their locks are held).
        self._pending.clear()
        self._unstarted.clear()
        self._statuses.clear()
        # Queued runs were never sent: nothing of them started, and the next active starts them.
        self._queued.clear()
        if self._shim_turn is not None:
            self._shim_turn.cancel()
            self._shim_turn = None
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None
        link, self._link = self._link, None
        if link is not None:
            self._loop.remove_reader(link.fileno())
            self._stop_waiting_for_room(link)
            link.close_socket()
            self._loop.add_reader(link.pidfd, _reap, self._loop, link.pidfd)


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
