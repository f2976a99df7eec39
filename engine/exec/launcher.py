"""The per-node launcher: one small process that forks a supervisor per run.

LocalExecutor (engine/exec/local.py) starts it as `python -I -S launcher.py` with its end of a
SOCK_SEQPACKET socketpair on fd 3, and sends it one message per run: a JSON request (run id, run
directory, workdir, umask, argv, env) with the run's locked `lock` fd attached. The launcher forks a
supervisor, replies with the supervisor's pid and a pidfd for it, and goes back to waiting. A
supervisor does what the /bin/sh shim (shim.sh) does, with the same files in the same order, so a
scheduler of any version adopts it: its own session, `shim`, the workdir, the job spawned in its own
process group, `jobstart` and `started`, the wait, `times`, the exit record.

It imports only the standard library (it runs with no site-packages, and without the package on
sys.path), is single-threaded, and never wakes on its own: it blocks in recvmsg, and reaps its
supervisors from a SIGCHLD handler. It ignores SIGINT and ends when the executor's end of the
socket closes; the supervisors live on.

Layer: exec. Imports nothing of engine (tests/unit/test_launcher.py runs it as a script).
"""

from __future__ import annotations

import array
import errno
import json
import os
import resource
import signal
import socket
from typing import Any, NoReturn

SOCKET_FD = 3  #: the launcher's end of the socketpair
MAX_MESSAGE = 256 << 10  #: the largest request; LocalExecutor uses the sh shim for a larger one
SHELL = "/bin/sh"
#: dash's own search path, used by `exec` when the job's environment has no PATH
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Signals a job starts with at their default action, whatever its starter ignored (Python ignores
#: SIGPIPE and SIGXFSZ, the launcher SIGINT).
RESET_SIGNALS = (
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
_FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)


class ExecFailed(Exception):
    """The job could not be executed; `status` is what sh's `exec` would exit with."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def exec_status(error: int) -> int:
    """sh's exit status for a failed exec (dash's mapping): 126 not executable, 127 not found, else 2."""
    if error == errno.EACCES:
        return 126
    if error == errno.ENOENT:
        return 127
    return 2


def candidates(name: str, path: str | None) -> list[str]:
    """The files sh's `exec NAME` tries, in order: NAME itself if it has a slash, else each entry of
    PATH (an empty entry is the current directory)."""
    if "/" in name:
        return [name]
    entries = (DEFAULT_PATH if path is None else path).split(":")
    return [f"{entry}/{name}" if entry else name for entry in entries]


def spawn_job(argv: list[str], env: dict[str, str], log_fd: int, umask: int) -> int:
    """Spawn the job as sh's `exec "$@"` would start it: found on the job's PATH, a file without #!
    run by /bin/sh, in its own process group, stdin /dev/null, stdout and stderr the log."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, log_fd, 1),
        (os.POSIX_SPAWN_DUP2, log_fd, 2),
    ]
    name = argv[0]
    error = errno.ENOENT
    os.umask(umask)  # the job's own; the run's files stay owner-only
    try:
        for path in candidates(name, env.get("PATH")):
            if "/" not in name:
                try:
                    os.stat(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # what execve would say, without the cost of a spawn
                except OSError:
                    pass  # let execve tell
            try:
                return _spawn(path, argv, env, actions)
            except OSError as exc:
                if exc.errno == errno.ENOEXEC:
                    return _spawn(SHELL, [SHELL, path, *argv[1:]], env, actions)
                if "/" in name or exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    error = exc.errno or errno.ENOENT
    finally:
        os.umask(0o077)
    raise ExecFailed(exec_status(error))


def _spawn(path: str, argv: list[str], env: dict[str, str], actions: list[Any]) -> int:
    return os.posix_spawn(path, argv, env, file_actions=actions, setpgroup=0, setsigmask=(), setsigdef=RESET_SIGNALS)


def stat_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (comm, field 2, may hold spaces and ")")."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return int(data[data.rfind(b")") + 2 :].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def times_text(own: resource.struct_rusage, job: resource.struct_rusage) -> bytes:
    """What sh's `times` prints: its own user and system time, then its children's."""

    def line(usage: resource.struct_rusage) -> str:
        return " ".join(f"{int(t // 60)}m{t % 60:f}s" for t in (usage.ru_utime, usage.ru_stime))

    return f"{line(own)}\n{line(job)}\n".encode()


def exit_code(wait_status: int) -> int:
    """The job's exit status as sh's `wait` reports it: 128 + the signal for a signalled job."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def _write(path: str, data: bytes, flags: int = os.O_TRUNC) -> None:
    """Write a record, going on if it fails as the sh shim's redirections do: on a full disk the job
    still runs and its exit record still fits in the space reserved for it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | flags, 0o600)
    except OSError:
        return
    try:
        os.write(fd, data)
    except OSError:
        pass
    finally:
        os.close(fd)


def _record_end(run_dir: str, record: bytes) -> None:
    # In place over the blanks the executor reserved (no truncation: no new block on a full disk).
    _write(f"{run_dir}/exit", record, 0)


def supervise(request: dict[str, Any]) -> NoReturn:
    """The forked child: the run's supervisor, holding the run's lock fd until it exits."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # before unblocking: no Python handler may reap the job
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    os.setsid()
    os.umask(0o077)
    run_dir: str = request["dir"]
    workdir: str = request["workdir"]
    argv: list[str] = request["argv"]
    _write(f"{run_dir}/shim", b"%d\n" % os.getpid())
    if workdir:
        try:
            os.chdir(workdir)
        except OSError:
            _write(f"{run_dir}/start-error", b"workdir " + os.fsencode(workdir))
            line = b"vigil: could not start: cannot enter workdir %s\n" % os.fsencode(workdir)
            _write(f"{run_dir}/log", line, os.O_APPEND)
            _record_end(run_dir, b"notstarted end\n")
            os._exit(0)
    try:
        log_fd = os.open(f"{run_dir}/log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        _write(f"{run_dir}/start-error", b"log")  # read as "the shim could not start the job"
        _record_end(run_dir, b"notstarted end\n")
        os._exit(0)
    try:
        pid = spawn_job(argv, request["env"], log_fd, int(request["umask"]))
    except ExecFailed as exc:
        _write(f"{run_dir}/start-error", b"exec %d " % exc.status + os.fsencode(argv[0]))
        _write(f"{run_dir}/times", times_text(resource.getrusage(resource.RUSAGE_SELF), _no_usage()))
        _record_end(run_dir, b"notstarted end\n")
        os._exit(0)
    os.close(log_fd)
    # The job cannot be reaped before we wait for it, so the pid is still the job's.
    start = stat_starttime(pid)
    if start is not None:
        _write(f"{run_dir}/jobstart", b"%d\n" % start)
    _write(f"{run_dir}/started", b"%d\n" % pid)
    _, status, usage = os.wait4(pid, 0)
    _write(f"{run_dir}/times", times_text(resource.getrusage(resource.RUSAGE_SELF), usage))
    _record_end(run_dir, b"exit=%d end\n" % exit_code(status))
    os._exit(0)


def _no_usage() -> resource.struct_rusage:
    return resource.struct_rusage((0.0, 0.0) + (0,) * 14)


class Launcher:
    """The launcher's state: its socket and which run each live supervisor belongs to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.runs: dict[int, int] = {}  #: supervisor pid -> run id
        self.buffer = bytearray(MAX_MESSAGE)

    def send(self, message: dict[str, Any], fd: int | None = None) -> None:
        ancillary = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        try:
            self.sock.sendmsg([json.dumps(message).encode()], ancillary)
        except OSError:
            pass  # the executor is gone: its successor adopts the runs from their directories

    def reap(self, signum: int = 0, frame: object = None) -> None:
        """SIGCHLD: reap every ended supervisor; tell the executor how one ended that did not exit 0
        (killed, or failed before recording), as only a parent can learn it."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run_id = self.runs.pop(pid, None)
            if run_id is not None and status != 0:
                self.send({"run": run_id, "status": status})

    def launch(self, request: dict[str, Any], lock_fd: int) -> None:
        run_id = int(request["run"])
        # Blocked from before the fork until the pidfd is open: a supervisor that ends at once stays a
        # zombie until then, so its pid cannot be reused under the pidfd.
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGCHLD,))
        try:
            try:
                pid = os.fork()
            except OSError as exc:
                # Unlocked before the answer: the executor locks the run again to start its sh shim.
                os.close(lock_fd)
                lock_fd = -1
                self.send({"run": run_id, "error": str(exc)})
                return
            if pid == 0:
                try:
                    self.sock.close()
                    supervise(request)
                finally:
                    os._exit(70)
            self.runs[pid] = run_id
            pidfd = os.pidfd_open(pid)
            try:
                self.send({"run": run_id, "pid": pid}, pidfd)
            finally:
                os.close(pidfd)
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)  # the supervisor holds the run's lock now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGCHLD,))

    def serve(self) -> None:
        self.send({"ready": True})
        while True:
            size, ancillary, _, _ = self.sock.recvmsg_into([self.buffer], _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
            fds = _received_fds(ancillary)
            if size == 0 and not fds:
                return  # the executor's end closed
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            try:
                request = json.loads(self.buffer[:size])
            except ValueError:
                os.close(fds[0])
                continue
            self.launch(request, fds[0])


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to `vigil up`'s terminal is not for us
    # Whatever the scheduler's own parent left inheritable would reach every supervisor and job.
    os.closerange(SOCKET_FD + 1, os.sysconf("SC_OPEN_MAX"))
    launcher = Launcher(socket.socket(fileno=SOCKET_FD))
    signal.signal(signal.SIGCHLD, launcher.reap)
    launcher.serve()


if __name__ == "__main__":
    main()
