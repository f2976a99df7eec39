"""The launcher (engine/exec/launcher.py) with real processes: a run it starts keeps every promise
of the sh shim's, and its own death or hang costs no run and starts none twice."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from engine.exec import launcher
from engine.exec import local as executor_mod
from engine.exec.local import LocalExecutor, ShimExit
from engine.exec.rundirs import RUN_IDENTITY_FILE, run_identity
from engine.paths import StatePaths
from tests.helpers import runs, vigil, wait_for, write_job
from tests.integration.test_shim_faults import async_wait, group_exists, read_pid, run_file, terminal

WARM_UP = 1000  #: the run id of the run that starts the launcher (it goes through the sh shim)


def stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def zombie_children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] == "Z":
            found.append(int(stat.parent.name))
    return found


def is_launcher_process(pid: int) -> bool:
    try:
        return "launcher.py" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


def gone(pid: int) -> bool:
    try:
        return stat_fields(pid)[0] == "Z"
    except OSError:
        return True


class Runs:
    """A LocalExecutor in this process whose launcher is ready, and the ends it reported by run id."""

    def __init__(self, state_dir: Path, kill_grace: float = 1.0) -> None:
        self.ended: dict[int, ShimExit] = {}
        self.ex = LocalExecutor(StatePaths(state_dir), self._ended, log_cap=1 << 20, kill_grace=kill_grace)
        self.state_dir = state_dir

    def _ended(self, result: ShimExit) -> None:
        assert result.run_id not in self.ended, f"run {result.run_id} reported twice"
        self.ended[result.run_id] = result

    async def ready(self) -> int:
        self.ex.launch(WARM_UP, ["true"], dict(os.environ), None)
        pid = await async_wait(lambda: self.ex.launcher_pid, 10)
        assert isinstance(pid, int)
        return pid

    def launch(self, run_id: int, command: str | list[str], **env: str) -> int | None:
        return self.ex.launch(run_id, command, {**os.environ, **env}, None)

    async def end_of(self, run_id: int, within: float = 10) -> ShimExit:
        await async_wait(lambda: run_id in self.ended, within)
        return self.ended[run_id]

    def supervisor(self, run_id: int) -> int | None:
        return read_pid(run_file(self.state_dir, run_id, "shim"))


@pytest.fixture
async def local(state_dir: Path):
    runs = Runs(state_dir)
    yield runs
    runs.ex.close()


async def test_a_launched_job_leads_its_own_group_outside_the_schedulers_session(local: Runs, tmp_path: Path) -> None:
    earlier = set(zombie_children(os.getpid()))  # of other tests in this process
    launcher = await local.ready()
    gate = tmp_path / "gate"
    assert local.launch(1, f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 4") is None  # the launcher's
    job = await async_wait(lambda: read_pid(run_file(local.state_dir, 1, "started")), 5)
    supervisor = local.supervisor(1)
    assert isinstance(job, int) and isinstance(supervisor, int)
    assert int(stat_fields(supervisor)[1]) == launcher and is_launcher_process(supervisor)
    assert os.getpgid(job) == job  # its own process group: a kill reaches all of it, never the supervisor
    assert os.getsid(job) == os.getsid(supervisor) == supervisor != os.getsid(0)
    os.kill(launcher, signal.SIGINT)  # a Ctrl-C to the scheduler's terminal
    assert local.launch(2, ["true"]) is None and (await local.end_of(2)).exit_code == 0
    gate.touch()
    assert (await local.end_of(1)).exit_code == 4
    assert local.ex.launcher_pid == launcher
    assert set(zombie_children(os.getpid())) <= earlier
    local.ex.close()  # the launcher ends with its executor, and is reaped
    await async_wait(lambda: not Path(f"/proc/{launcher}").exists(), 5)


async def test_a_sigkilled_launcher_costs_no_exit_and_is_replaced(local: Runs, tmp_path: Path) -> None:
    earlier = set(zombie_children(os.getpid()))  # of other tests in this process
    launcher = await local.ready()
    gate = tmp_path / "gate"
    local.launch(1, f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 7")
    await async_wait(lambda: run_file(local.state_dir, 1, "started").exists(), 5)
    supervisor = local.supervisor(1)
    assert isinstance(supervisor, int)
    os.kill(launcher, signal.SIGKILL)
    await async_wait(lambda: local.ex.launcher_pid is None, 5)
    assert int(stat_fields(supervisor)[1]) != os.getpid()  # orphaned to init, never our zombie
    gate.touch()
    assert (await local.end_of(1)).exit_code == 7
    # The next launches go through the sh shim until a new launcher is ready.
    local.launch(2, ["true"])
    replacement = await async_wait(lambda: local.ex.launcher_pid, 10)
    assert replacement != launcher
    assert local.launch(3, "exit 3") is None
    assert (await local.end_of(3)).exit_code == 3
    assert set(zombie_children(os.getpid())) <= earlier


async def test_a_stopped_launcher_is_replaced_and_no_run_starts_twice(local: Runs, tmp_path: Path) -> None:
    launcher = await local.ready()
    starts = tmp_path / "starts"
    os.kill(launcher, signal.SIGSTOP)
    try:
        for run_id in range(1, 6):
            local.launch(run_id, ["/bin/sh", "-c", f"echo {run_id} >> {starts}"])
        # No answer within a second: killed, its runs judged from their files and started once.
        for run_id in range(1, 6):
            assert (await local.end_of(run_id)).exit_code == 0
    finally:
        if not gone(launcher):
            os.kill(launcher, signal.SIGCONT)
    assert sorted(starts.read_text().split()) == [str(n) for n in range(1, 6)]
    await async_wait(lambda: gone(launcher), 5)
    local.launch(6, ["true"])
    assert await async_wait(lambda: local.ex.launcher_pid not in (None, launcher), 10)
    assert sorted(starts.read_text().split()) == [str(n) for n in range(1, 6)]


BIG = "x" * 60_000  #: an environment this large fills the launcher's socket with a few dozen requests


async def test_launches_beyond_a_full_socket_are_queued_without_waiting_and_each_starts_once(
    local: Runs, tmp_path: Path
) -> None:
    launcher = await local.ready()
    starts = tmp_path / "starts"
    os.kill(launcher, signal.SIGSTOP)
    try:
        began = time.monotonic()
        # Far more than the socket holds: the loop must not wait for room (nor fall back to the sh shim).
        answers = [
            local.launch(run_id, ["/bin/sh", "-c", f"echo {run_id} >> {starts}"], BIG=BIG) for run_id in range(1, 201)
        ]
        assert time.monotonic() - began < 2.0
        assert answers == [None] * 200  # each one the launcher's
        # It never answers: dropped after a second, its runs judged from their files, the queued
        # ones started through the sh shim, each exactly once.
        for run_id in range(1, 201):
            assert (await local.end_of(run_id, within=30)).exit_code == 0
    finally:
        if not gone(launcher):
            os.kill(launcher, signal.SIGCONT)
    assert sorted(map(int, starts.read_text().split())) == list(range(1, 201))


async def test_a_queued_run_killed_before_it_was_sent_never_starts(local: Runs, tmp_path: Path) -> None:
    launcher = await local.ready()
    starts = tmp_path / "starts"
    os.kill(launcher, signal.SIGSTOP)
    try:
        for run_id in range(1, 101):
            local.launch(run_id, ["/bin/sh", "-c", f"echo {run_id} >> {starts}"], BIG=BIG)
        assert local.ex.kill(100)
    finally:
        os.kill(launcher, signal.SIGCONT)
    killed = await local.end_of(100)
    assert killed.state == "killed" and killed.exit_code is None and "before it started" in (killed.reason or "")
    for run_id in range(1, 100):
        assert (await local.end_of(run_id, within=30)).exit_code == 0
    assert local.ex.launcher_pid == launcher  # it kept up: nothing was dropped
    assert sorted(map(int, starts.read_text().split())) == list(range(1, 100))


async def test_a_kill_reaches_the_jobs_grandchildren_and_never_its_supervisor(local: Runs, tmp_path: Path) -> None:
    await local.ready()
    grandchild = tmp_path / "grandchild"
    assert local.launch(1, ["/bin/sh", "-c", f"sh -c 'sleep 60' & echo $! > {grandchild}; wait"]) is None
    member = await async_wait(lambda: read_pid(grandchild), 5)
    job = read_pid(run_file(local.state_dir, 1, "started"))
    assert isinstance(member, int) and isinstance(job, int)
    assert local.ex.kill(1)
    end = await local.end_of(1)
    assert end.exit_code == 128 + signal.SIGTERM  # recorded by the supervisor, which the kill spared
    await async_wait(lambda: gone(member) and not group_exists(job), 5)


async def test_start_failures_read_as_the_shims(local: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await local.ready()
    plain = tmp_path / "plain"
    plain.write_text("exit 5\n")  # no #!: run by /bin/sh, as sh's exec does
    plain.chmod(0o755)
    unreadable = tmp_path / "unreadable"
    unreadable.write_text("#!/bin/sh\n")
    local.launch(1, ["vigil-no-such-program"])
    local.launch(2, ["true"], PATH="/nonexistent")
    local.launch(3, [str(unreadable)])
    local.launch(4, [str(plain)])
    monkeypatch.setattr(executor_mod, "workdir_problem", lambda path: None)  # it vanishes after the check
    local.ex.launch(5, ["true"], dict(os.environ), str(tmp_path / "gone"))
    monkeypatch.undo()
    ends = [await local.end_of(n) for n in range(1, 6)]
    assert [(e.exit_code, e.state, e.reason) for e in ends] == [
        (None, "failed", "could not start: vigil-no-such-program: command not found"),
        (None, "failed", "could not start: true: command not found"),
        (None, "failed", f"could not start: {unreadable}: cannot be executed (exec status 126)"),
        (5, None, None),
        (None, "failed", f"could not start: workdir {tmp_path / 'gone'}: No such file or directory"),
    ]
    assert "cannot enter workdir" in run_file(local.state_dir, 5, "log").read_text()


async def test_the_jobs_environment_arrives_exactly(local: Runs) -> None:
    await local.ready()
    env = {
        "PATH": os.environ["PATH"],
        "NEWLINES": "a\nb\n",
        "QUOTES": 'it\'s "quoted" $HOME `id` \\',
        "BYTES": os.fsdecode(b"\xff\xfe-latin1-\xe9"),
        "MY-VAR": "dash",
        "a.b": "dot",
        "caf\u00e9": "utf-8 name",
        "EMPTY": "",
    }
    local.ex.launch(1, ["env", "-0"], env, None)
    assert (await local.end_of(1)).exit_code == 0
    raw = run_file(local.state_dir, 1, "log").read_bytes()
    received = dict(item.split(b"=", 1) for item in raw.split(b"\0") if item)
    assert received == {os.fsencode(k): os.fsencode(v) for k, v in env.items()}


def test_every_vigil_process_sigkilled_mid_run_still_records_the_exit(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    write_job(jobs_dir, "warm", 'command = ["true"]\n')
    write_job(jobs_dir, "long", f'command = "while [ ! -e {gate} ]; do sleep 0.05; done; exit 5"\n')
    first = start_up()
    first.wait_active()
    launcher = None
    for _ in range(40):  # the first runs go through the sh shim while the launcher starts
        vigil(state_dir, "run", "long")
        run = wait_for(lambda: [r for r in runs(state_dir, "--job", "long") if r["state"] == "running"], 5)[0]
        supervisor = wait_for(lambda r=run: read_pid(run_file(state_dir, r["id"], "shim")), 5)
        wait_for(lambda r=run: run_file(state_dir, r["id"], "started").exists(), 5)
        if is_launcher_process(supervisor):
            launcher = int(stat_fields(supervisor)[1])
            break
        vigil(state_dir, "kill", str(run["id"]))
        wait_for(
            lambda r=run: (
                terminal(state_dir, "long") and not run_file(state_dir, r["id"], "exit").read_text().isspace()
            ),
            10,
        )
    assert launcher is not None and is_launcher_process(launcher)
    first.kill9()
    os.kill(launcher, signal.SIGKILL)
    gate.touch()
    wait_for(lambda: run_file(state_dir, run["id"], "exit").read_text().strip() == "exit=5 end", 5)
    second = start_up()
    second.wait_active()
    done = wait_for(lambda: [r for r in terminal(state_dir, "long") if r["id"] == run["id"]], 10)[0]
    assert (done["state"], done["exit_code"]) == ("failed", 5), done


if sys.platform != "linux":  # pidfds, /proc
    pytestmark = pytest.mark.skip("Linux only")


def test_a_supervisor_that_cannot_write_a_record_still_runs_the_job_and_records_its_exit(tmp_path: Path) -> None:
    # As on a full disk: `shim` and `started` cannot be written, the reserved exit record can.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "exit").write_bytes(executor_mod.EXIT_RESERVED)
    (run_dir / "shim").mkdir()
    (run_dir / "started").mkdir()
    out = tmp_path / "out"
    request = {
        "dir": str(run_dir),
        "workdir": "",
        "umask": 0o022,
        "argv": ["/bin/sh", "-c", f"echo ran > {out}; exit 6"],
        "env": {"PATH": "/usr/bin:/bin"},
    }
    pid = os.fork()
    if pid == 0:
        try:
            launcher.supervise(request)
        finally:
            os._exit(70)
    _, status = os.waitpid(pid, 0)
    assert status == 0 and out.read_text() == "ran\n"
    assert executor_mod.read_exit_record(run_dir) == 6


async def test_a_run_whose_supervisor_could_not_write_its_pid_is_not_started_again_when_the_launcher_is_dropped(
    local: Runs, state_dir: Path, tmp_path: Path
) -> None:
    # Found by review: with no `shim` file (a full disk, here a directory in its way) and the launcher
    # dropped before its answer was read, a run that had started was relaunched once its lock was free.
    await local.ready()
    out = tmp_path / "out"
    run_dir = StatePaths(state_dir).run_dir(5)
    run_dir.mkdir(parents=True)
    env = dict(os.environ)
    (run_dir / RUN_IDENTITY_FILE).write_text(json.dumps(run_identity(env)))  # this run's directory
    (run_dir / "shim").mkdir()
    local.ex.launch(5, ["/bin/sh", "-c", f"echo ran >> {out}; sleep 0.5; exit 3"], env, None)
    wait_for(lambda: (run_dir / "started").exists(), 5)  # the loop has not read the launcher's answer
    local.ex._drop_link("dropped by the test")
    end = await local.end_of(5)
    assert end.exit_code == 3
    assert out.read_text().split() == ["ran"]


async def test_a_job_inherits_no_descriptor_the_scheduler_was_handed(state_dir: Path, tmp_path: Path) -> None:
    # Found by review: an inheritable fd of the scheduler's (left by whoever started it) reached the
    # launcher, every supervisor and every job.
    stray = os.open(tmp_path, os.O_RDONLY)
    os.set_inheritable(stray, True)
    runs = Runs(state_dir)
    try:
        await runs.ready()
        fds = tmp_path / "fds"
        runs.launch(1, ["/bin/sh", "-c", f"ls /proc/self/fd > {fds}"])
        assert (await runs.end_of(1)).exit_code == 0
        # ls's own directory fd aside, only stdin, stdout and stderr.
        assert len(fds.read_text().split()) <= 4, fds.read_text()
    finally:
        runs.ex.close()
        os.close(stray)
