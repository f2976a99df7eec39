"""Pure rules of the launch path: which commands are exec'd without a shell, and what the launcher's
supervisor writes for the readers that already exist (engine/exec/local.py)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
from pathlib import Path

import pytest

from engine.exec import launcher
from engine.exec.local import job_argv, read_cpu_seconds, shell_pwd, simple_command


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("sleep 3", ["sleep", "3"]),
        ("  python3 x.py --flag=1\t-v ", ["python3", "x.py", "--flag=1", "-v"]),
        ("/usr/bin/env", ["/usr/bin/env"]),
        ("rsync -a src/ host:dst/ user@host:%d", ["rsync", "-a", "src/", "host:dst/", "user@host:%d"]),
    ],
)
def test_a_simple_command_is_its_words(command: str, words: list[str]) -> None:
    assert simple_command(command) == words


@pytest.mark.parametrize(
    "command",
    [
        "",
        "   ",
        "echo hi",  # a builtin that differs from /bin/echo
        "true",
        "cd /tmp",
        "exec sleep 1",
        "if true",
        "FOO=1 env",  # an assignment
        "sleep $N",
        "sleep 1; sleep 2",
        "sleep 1 && sleep 2",
        "sleep 1 | cat",
        "sleep 1 > out",
        "sleep 1 &",
        "ls *.py",
        "ls ~/x",
        "ls 'a b'",
        'ls "a"',
        "ls a\\ b",
        "ls `x`",
        "ls a#b",
        "ls {a,b}",
        "sleep 1\nsleep 2",
        "caf\u00e9 1",
    ],
)
def test_anything_with_shell_syntax_is_not_simple(command: str) -> None:
    assert simple_command(command) is None


def test_a_simple_command_is_execd_only_when_its_program_is_on_the_jobs_path(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "tool"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    path = f"/nonexistent:{program.parent}"
    assert job_argv("tool -x", path) == ["tool", "-x"]
    assert job_argv("tool -x", "/nonexistent") == ["/bin/sh", "-c", "tool -x"]  # sh says "not found"
    assert job_argv(f"{program} -x", "/nonexistent") == [str(program), "-x"]
    assert job_argv("tool", f".:{program.parent}") == ["/bin/sh", "-c", "tool"]  # relative entry: sh decides
    program.chmod(0o644)
    assert job_argv("tool", path) == ["/bin/sh", "-c", "tool"]
    assert job_argv("echo $HOME", path) == ["/bin/sh", "-c", "echo $HOME"]
    assert job_argv(("tool", "$X"), path) == ["tool", "$X"]


def test_a_direct_exec_gets_the_pwd_sh_would_give(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert shell_pwd(str(link), str(real)) == str(link)  # names the directory: kept, as sh keeps it
    assert shell_pwd("/", str(link)) == str(real)  # stale: the physical path
    assert shell_pwd("relative", str(real)) == str(real)


def test_exec_candidates_and_statuses_follow_sh() -> None:
    assert launcher.candidates("/bin/x", "/a:/b") == ["/bin/x"]
    assert launcher.candidates("x", "/a::/b") == ["/a/x", "x", "/b/x"]
    assert launcher.candidates("x", None) == [f"{d}/x" for d in launcher.DEFAULT_PATH.split(":")]
    assert launcher.exec_status(errno.ENOENT) == 127
    assert launcher.exec_status(errno.EACCES) == 126
    assert launcher.exec_status(errno.ENOTDIR) == 2


def test_exit_codes_are_as_sh_reports_them() -> None:
    assert launcher.exit_code(3 << 8) == 3
    assert launcher.exit_code(signal.SIGKILL) == 128 + 9


def test_times_are_read_back_as_the_jobs_cpu(tmp_path: Path) -> None:
    own = resource.struct_rusage((0.5, 0.25) + (0,) * 14)
    job = resource.struct_rusage((61.5, 0.125) + (0,) * 14)
    (tmp_path / "times").write_bytes(launcher.times_text(own, job))
    assert read_cpu_seconds(tmp_path) == 61.625


def test_spawn_job_reports_exec_failures_as_sh(tmp_path: Path) -> None:
    log_fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    plain = tmp_path / "plain"
    plain.write_text("echo from-a-script-without-shebang\n")
    try:
        with pytest.raises(launcher.ExecFailed) as missing:
            launcher.spawn_job(["vigil-no-such-program"], {"PATH": str(tmp_path)}, log_fd, 0o022)
        assert missing.value.status == 127
        with pytest.raises(launcher.ExecFailed) as unexecutable:
            launcher.spawn_job([str(plain)], {}, log_fd, 0o022)
        assert unexecutable.value.status == 126
        plain.chmod(stat.S_IRWXU)
        pid = launcher.spawn_job(["plain"], {"PATH": f"/nonexistent:{tmp_path}"}, log_fd, 0o022)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(log_fd)
    assert status == 0
    assert (tmp_path / "log").read_text() == "from-a-script-without-shebang\n"  # ENOEXEC: run by /bin/sh


def test_a_fork_failure_is_answered_with_the_runs_lock_already_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by review: answered first, the executor's sh shim could find the lock still held (EAGAIN)
    # and fail a run that the fallback would have started.
    import fcntl
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lock_path = tmp_path / "lock"
    lock_fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    free_when_answered: list[bool] = []

    def fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    def send(message: dict[str, object], fd: int | None = None) -> None:
        probe = os.open(lock_path, os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free_when_answered.append(True)
        except BlockingIOError:
            free_when_answered.append(False)
        finally:
            os.close(probe)

    monkeypatch.setattr(launcher.os, "fork", fork)
    served = launcher.Launcher(theirs)
    monkeypatch.setattr(served, "send", send)
    served.launch({"run": 7}, lock_fd)
    assert free_when_answered == [True]
    ours.close()
    theirs.close()


def test_a_launcher_whose_pidfd_cannot_be_opened_is_not_left_a_zombie(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by review: the spawned launcher was never reaped, one zombie per retry.
    from engine.exec import link

    spawned: list[int] = []
    real_spawn = link.os.posix_spawn

    def spawn(*args: object, **kwargs: object) -> int:
        pid = real_spawn(*args, **kwargs)  # type: ignore[arg-type]
        spawned.append(pid)
        return pid

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(link.os, "posix_spawn", spawn)
    monkeypatch.setattr(link.os, "pidfd_open", no_pidfd)
    with pytest.raises(OSError):
        link.LauncherLink(dict(os.environ))
    assert len(spawned) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(spawned[0], os.WNOHANG)  # already reaped
