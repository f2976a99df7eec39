"""The shim under faults, with real shims, jobs and process groups.

The shim runs with a fixed environment; only the job gets the job's `env`. A shim that cannot start
its job says so. A shim that dies leaves no job running unmanaged: the scheduler ends the job's
process group (also after a restart), and never signals a group whose leader is not the job it
recorded (pid + start time).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.clock import SystemClock
from engine.exec import local as executor_mod
from engine.exec.local import LocalExecutor, ShimExit
from engine.exec.port import RunContext, RunInfo
from engine.exec.procs import signal_group, starttime
from engine.exec.runner import ShimExecutor
from engine.model import JobSpec, RunState, Settings
from engine.paths import StatePaths
from tests.helpers import async_wait, runs, vigil, wait_for, write_job

OPEN = ("pending", "waiting", "launching", "running")


def terminal(state: Path, job: str) -> list[dict]:
    return [r for r in runs(state, "--job", job) if r["state"] not in OPEN]


def running(state: Path, job: str) -> list[dict]:
    return [r for r in runs(state, "--job", job) if r["state"] == "running"]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def group_exists(pgid: int) -> bool:
    """Whether a live (non-zombie) process is in group `pgid`: an orphaned zombie waits for init."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def run_file(state: Path, run_id: int, name: str) -> Path:
    return state / "runs" / str(run_id) / name


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- item 13: the job's env


def test_the_jobs_env_reaches_the_job_and_never_the_shim(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    write_job(
        jobs_dir,
        "env",
        # A PATH that breaks every lookup, and a preload that would load into every dynamic program.
        f'command = "echo started; while [ ! -e {gate} ]; do /bin/sleep 0.05; done; echo PATH=$PATH"\n'
        '[env]\nPATH = "/nonexistent"\nLD_PRELOAD = "/nonexistent/preload.so"\nAPP_SECRET = "s3cret"\n',
    )
    start_up().wait_active()
    vigil(state_dir, "run", "env")
    run = wait_for(lambda: running(state_dir, "env"), 5, what="env to run")[0]
    job_pid = wait_for(lambda: read_pid(run_file(state_dir, run["id"], "started")), 5)
    # Past the job's exec (before it, the job's process is still setsid / env -i)
    wait_for(lambda: "started" in run_file(state_dir, run["id"], "log").read_text(), 5)
    shim_pid = read_pid(run_file(state_dir, run["id"], "shim"))
    assert shim_pid is not None
    shim_env = environ_of(shim_pid)
    assert "LD_PRELOAD" not in shim_env and "APP_SECRET" not in shim_env, shim_env
    assert shim_env.get("PATH") != "/nonexistent"
    job_env = environ_of(job_pid)
    assert job_env["PATH"] == "/nonexistent" and job_env["APP_SECRET"] == "s3cret"
    assert job_env["LD_PRELOAD"] == "/nonexistent/preload.so" and job_env["VIGIL_RUN_ID"] == str(run["id"])
    # The job's identity for signalling its group, recorded by the job's own process.
    assert read_pid(run_file(state_dir, run["id"], "jobstart")) == starttime(job_pid)
    gate.touch()
    done = wait_for(lambda: terminal(state_dir, "env"), 10, what="env to end")[0]
    assert (done["state"], done["exit_code"]) == ("succeeded", 0), done
    log = vigil(state_dir, "logs", str(done["id"])).stdout
    assert "PATH=/nonexistent" in log and "setsid" not in log


def test_env_values_arrive_byte_for_byte(start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    tricky = 'it\'s "quoted"\n$HOME `id` $(id) \\ ; end'
    toml_value = tricky.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    write_job(
        jobs_dir,
        "tricky",
        f'command = ["/bin/sh", "-c", "printf %s \\"$V\\" > {out}"]\n[env]\nV = "{toml_value}"\n',
    )
    # A name no shell can export still reaches the job (through env(1)).
    write_job(jobs_dir, "names", 'command = ["env"]\n[env]\n"MY-VAR" = "dash ok"\n')
    start_up().wait_active()
    vigil(state_dir, "run", "tricky")
    vigil(state_dir, "run", "names")
    done = wait_for(lambda: terminal(state_dir, "tricky"), 10, what="tricky to end")[0]
    assert done["state"] == "succeeded", done
    assert out.read_text() == tricky
    names = wait_for(lambda: terminal(state_dir, "names"), 10, what="names to end")[0]
    assert names["state"] == "succeeded", names
    assert "MY-VAR=dash ok" in vigil(state_dir, "logs", str(names["id"])).stdout.splitlines()


def test_could_not_start_is_told_apart_from_the_jobs_own_exit_127(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir"
    write_job(jobs_dir, "lost", f'workdir = "{missing}"\ncommand = "true"\n')
    write_job(jobs_dir, "noprog", 'command = ["vigil-no-such-program"]\n')
    write_job(jobs_dir, "own127", 'command = "exit 127"\n')
    write_job(jobs_dir, "badpath", 'command = ["true"]\nenv = { PATH = "/nonexistent" }\n')
    start_up().wait_active()
    for job in ("lost", "noprog", "own127", "badpath"):
        vigil(state_dir, "run", job)
    ended = {
        job: wait_for(lambda j=job: terminal(state_dir, j), 10, what=f"{job} to end")[0]
        for job in ("lost", "noprog", "own127", "badpath")
    }
    lost = ended["lost"]
    assert (lost["state"], lost["exit_code"]) == ("failed", None), lost
    assert lost["reason"] == f"could not start: workdir {missing}: No such file or directory"
    noprog = ended["noprog"]
    assert (noprog["state"], noprog["exit_code"]) == ("failed", None), noprog
    assert noprog["reason"] == "could not start: vigil-no-such-program: command not found"
    # The job's PATH is the job's: `true` is not found on it, and the shim itself is unharmed.
    assert ended["badpath"]["reason"] == "could not start: true: command not found", ended["badpath"]
    own = ended["own127"]
    assert (own["state"], own["exit_code"], own["reason"]) == ("failed", 127, "exit code 127"), own


async def test_the_shim_itself_reports_a_workdir_it_cannot_enter(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workdir vanishes between the scheduler's check and the shim's `cd`.
    ended: list[ShimExit] = []
    ex = LocalExecutor(StatePaths(state_dir), ended.append, log_cap=1 << 20, kill_grace=1.0)
    monkeypatch.setattr(executor_mod, "workdir_problem", lambda path: None)
    ex.launch(1, "true", dict(os.environ), str(tmp_path / "gone"))
    monkeypatch.undo()
    try:
        await async_wait(lambda: ended, 5)
    finally:
        ex.close()
    assert ended[0].exit_code is None and ended[0].state == "failed"
    assert ended[0].reason == f"could not start: workdir {tmp_path / 'gone'}: No such file or directory"


# ---------------------------------------------------------------- item 8: a dead shim


def test_a_killed_shim_has_its_job_group_ended_and_says_so(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    (jobs_dir / "vigil.toml").write_text('[scheduler]\nkill_grace = "1s"\n')
    stubborn = tmp_path / "stubborn"
    # The job's group: the leader, and a member that ignores SIGTERM.
    write_job(
        jobs_dir,
        "long",
        f'timeout = "1h"\ncommand = "sh -c \'trap \\"\\" TERM; echo $$ > {stubborn}; sleep 60\' & sleep 60"\n',
    )
    start_up().wait_active()
    vigil(state_dir, "run", "long")
    run = wait_for(lambda: running(state_dir, "long"), 5, what="long to run")[0]
    job_pid = wait_for(lambda: read_pid(run_file(state_dir, run["id"], "started")), 5)
    member = wait_for(lambda: read_pid(stubborn), 5, what="the TERM-ignoring member")
    shim_pid = read_pid(run_file(state_dir, run["id"], "shim"))
    assert shim_pid is not None
    os.kill(shim_pid, signal.SIGKILL)
    done = wait_for(lambda: terminal(state_dir, "long"), 10, what="the run to end")[0]
    assert done["state"] == "failed", done
    assert done["reason"] == (
        f"the run's shim (pid {shim_pid}) was killed (signal 9, SIGKILL) without recording the job's exit; "
        f"job process group {job_pid} killed with SIGKILL after 1s (it outlived SIGTERM)"
    ), done
    assert not group_exists(job_pid)
    wait_for(lambda: not Path(f"/proc/{member}").exists() or zombie(member), 3, what="the member to be gone")


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_a_shim_that_died_while_no_scheduler_ran_has_its_job_ended_at_restart(
    start_up, state_dir: Path, jobs_dir: Path
) -> None:
    write_job(jobs_dir, "long", 'command = "sleep 60"\n')
    first = start_up()
    first.wait_active()
    vigil(state_dir, "run", "long")
    run = wait_for(lambda: running(state_dir, "long"), 5, what="long to run")[0]
    job_pid = wait_for(lambda: read_pid(run_file(state_dir, run["id"], "started")), 5)
    shim_pid = read_pid(run_file(state_dir, run["id"], "shim"))
    assert shim_pid is not None
    first.kill9()
    os.kill(shim_pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{shim_pid}").exists() or zombie(shim_pid), 3)
    assert group_exists(job_pid)  # the job outlived both
    second = start_up()
    second.wait_active()
    done = wait_for(lambda: terminal(state_dir, "long"), 10, what="the run to end")[0]
    assert done["state"] == "failed", done
    assert done["reason"] == (
        f"the run's shim (pid {shim_pid}) ended without recording the exit of job pid {job_pid}; "
        f"job process group {job_pid} terminated (SIGTERM)"
    ), done
    assert not group_exists(job_pid)
    assert len(runs(state_dir, "--job", "long")) == 1  # ended, never re-run


# ---------------------------------------------------------------- item 17: adopt, pid reuse


def fake_shim(run_dir: Path, script: str) -> subprocess.Popen[bytes]:
    """A stand-in shim: holds the run's lock on fd 9 for its whole life, as the real one does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        return subprocess.Popen(
            ["/bin/sh", "-c", script, "shim", str(run_dir)],
            pass_fds=(fd,),
            start_new_session=True,
            preexec_fn=lambda: os.dup2(fd, 9),
        )
    finally:
        os.close(fd)


def stranger_process() -> subprocess.Popen[bytes]:
    """An unrelated process leading its own process group."""
    return subprocess.Popen(["sleep", "30"], start_new_session=True)


async def test_a_slow_starting_shim_is_adopted_not_marked_unknown(state_dir: Path) -> None:
    paths = StatePaths(state_dir)
    run_dir = paths.run_dir(5)
    # Spawned an instant before the previous active died, under load: its pid file comes late.
    shim = fake_shim(run_dir, 'sleep 1.2; echo $$ > "$1/shim"; echo "exit=3 end" > "$1/exit"')
    ended: list[ShimExit] = []
    ex = LocalExecutor(paths, ended.append, log_cap=1 << 20, kill_grace=1.0)
    try:
        assert ex.adopt(5) is True
        assert 5 in ex.running
        await async_wait(lambda: ended, 5)
    finally:
        ex.close()
        shim.wait()
    assert [(e.run_id, e.exit_code, e.state) for e in ended] == [(5, 3, None)]


async def test_no_group_is_signalled_whose_leader_is_not_the_recorded_job(state_dir: Path, tmp_path: Path) -> None:
    # A stranger now holds the job's pid (its own process group): simulated by recording, for the
    # run, the stranger's pid with a start time that is not the stranger's.
    stranger = stranger_process()
    try:
        real_start = starttime(stranger.pid)
        assert real_start is not None
        paths = StatePaths(state_dir)
        run_dir = paths.run_dir(6)
        gate = tmp_path / "gate"
        shim = fake_shim(
            run_dir,
            f'echo $$ > "$1/shim"; echo {real_start - 7} > "$1/jobstart"; echo {stranger.pid} > "$1/started"; '
            f'while [ ! -e {gate} ]; do sleep 0.02; done; echo "exit=0 end" > "$1/exit"',
        )
        ended: list[ShimExit] = []
        ex = LocalExecutor(paths, ended.append, log_cap=1 << 20, kill_grace=0.2)
        try:
            await async_wait(lambda: (run_dir / "started").exists(), 5)
            assert ex.adopt(6)
            assert ex.kill(6)  # SIGTERM to the group: refused, the leader is not the job
            await asyncio.sleep(0.4)  # past the grace: SIGKILL refused too
            gate.touch()  # the shim ends: its group kill after the leader's exit is refused as well
            await async_wait(lambda: ended, 5)
        finally:
            ex.close()
            shim.wait()
        assert stranger.poll() is None, "a process that merely reused the job's pid was signalled"
    finally:
        stranger.kill()
        stranger.wait()


async def test_a_dead_shim_whose_job_pid_was_reused_leaves_the_stranger_alone(state_dir: Path) -> None:
    stranger = stranger_process()
    try:
        real_start = starttime(stranger.pid)
        assert real_start is not None
        paths = StatePaths(state_dir)
        run_dir = paths.run_dir(7)
        # The shim dies without an exit record; the job's recorded pid now belongs to a stranger.
        shim = fake_shim(
            run_dir,
            f'echo $$ > "$1/shim"; echo {real_start - 7} > "$1/jobstart"; echo {stranger.pid} > "$1/started"; '
            "sleep 0.3; kill -9 $$",
        )
        ended: list[ShimExit] = []
        ex = LocalExecutor(paths, ended.append, log_cap=1 << 20, kill_grace=0.2)
        try:
            await async_wait(lambda: (run_dir / "started").exists(), 5)
            assert ex.adopt(7)
            await async_wait(lambda: ended, 5)
        finally:
            ex.close()
            shim.wait()
        assert stranger.poll() is None
        assert ended[0].state == "unknown"
        assert f"job pid {stranger.pid} had ended (the pid now belongs to another process, left alone)" in (
            ended[0].reason or ""
        )
    finally:
        stranger.kill()
        stranger.wait()


def test_a_group_is_signalled_only_while_its_leader_is_the_recorded_process() -> None:
    stranger = stranger_process()
    try:
        start = starttime(stranger.pid)
        assert start is not None
        assert not signal_group(stranger.pid, start + 1, signal.SIGKILL)  # the pid was reused
        assert not signal_group(stranger.pid, None, signal.SIGKILL)  # nothing recorded to compare
        assert stranger.poll() is None
        assert signal_group(stranger.pid, start, signal.SIGTERM)
        assert stranger.wait(5) == -signal.SIGTERM
    finally:
        stranger.kill()
        stranger.wait()
    # A leader that has exited leaves its group to its members: still the job's, still signalled.
    leader = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & echo $!"], stdout=subprocess.PIPE, start_new_session=True)
    leader_start = starttime(leader.pid)
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    leader.wait()
    assert group_exists(leader.pid)
    assert signal_group(leader.pid, leader_start, signal.SIGTERM)
    wait_for(lambda: not group_exists(leader.pid), 3, what="the leaderless group to end")
    assert zombie(member)


if sys.platform != "linux":  # pidfds, /proc
    pytestmark = pytest.mark.skip("Linux only")


# ---------------------------------------------------------------- the job's environment per launch


def shim_executor(state_dir: Path, ended: list[ShimExit]) -> ShimExecutor:
    ctx = RunContext(
        paths=StatePaths(state_dir),
        store=SimpleNamespace(epoch=4),  # type: ignore[arg-type]  # only the epoch is read at launch
        clock=SystemClock(),
        settings=Settings,
        job=lambda name: None,
        is_open=lambda run: True,
        finished=ended.append,
        store_fault=lambda exc: None,
    )
    return ShimExecutor(ctx)


def launched(run_id: int, job: JobSpec) -> tuple[RunInfo, JobSpec]:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return RunInfo(run_id, job.name, at, 1, "manual", RunState.LAUNCHING), job


async def test_each_launch_gets_its_own_jobs_env_and_the_schedulers_environment_as_it_is_now(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scheduler's part of a job's environment is built once, not per launch: one job's `env`
    # must never reach another's, and a change of the scheduler's own environment reaches the
    # launches after the next rescan.
    monkeypatch.delenv("VIGIL_TEST_LATER", raising=False)
    ended: list[ShimExit] = []
    ex = shim_executor(state_dir, ended)
    a = JobSpec(name="a", path="a.toml", command="env", env=(("ONLY_A", "it's a"), ("SHARED", "from a")))
    b = JobSpec(name="b", path="b.toml", command="env", env=(("ONLY_B", "b"),))
    try:
        ex.launch(*launched(1, a))
        ex.launch(*launched(2, b))
        monkeypatch.setenv("VIGIL_TEST_LATER", "yes")
        ex.configure(Settings())  # what a rescan does
        ex.launch(*launched(3, a))
        await async_wait(lambda: len(ended) == 3, 10)
    finally:
        await ex.aclose()
    assert all(end.exit_code == 0 for end in ended), ended
    env = {n: environ_text(run_file(state_dir, n, "log").read_text()) for n in (1, 2, 3)}
    assert env[1]["ONLY_A"] == "it's a" and env[1]["SHARED"] == "from a" and "ONLY_B" not in env[1]
    assert env[2]["ONLY_B"] == "b" and "ONLY_A" not in env[2] and "SHARED" not in env[2]
    assert [env[n]["VIGIL_RUN_ID"] for n in (1, 2, 3)] == ["1", "2", "3"]
    assert env[1]["PATH"] == os.environ["PATH"]  # the scheduler's own variables are inherited
    assert "VIGIL_TEST_LATER" not in env[1] and "VIGIL_TEST_LATER" not in env[2]
    assert env[3]["VIGIL_TEST_LATER"] == "yes" and env[3]["ONLY_A"] == "it's a"


def environ_text(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
