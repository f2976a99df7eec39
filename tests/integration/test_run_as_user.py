"""The job key `user`: a root scheduler (and a root agent) runs the job, not its shim, as that user.

These tests create a real user and group (useradd/groupadd) and remove them afterwards, so they
need root; elsewhere they are skipped. The non-root refusal is tested for real too: `vigil
validate` run as the created user, and as a pure function in tests/unit/test_users.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.helpers import VIGIL, vigil, wait_for, write_job
from tests.integration.test_agents import agents as agents  # the fixture
from tests.integration.test_agents import wait_state, write_settings

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setpriv") is None,
    reason="running jobs as another user needs root (and useradd, setpriv): this test run is not root",
)


@dataclass(frozen=True)
class JobUser:
    name: str
    group: str  #: a supplementary group the user is a member of
    home: Path
    uid: int


@pytest.fixture
def test_user() -> Iterator[JobUser]:
    suffix = f"{os.getpid() % 100000}{os.urandom(2).hex()}"
    name, group = f"vgu{suffix}", f"vgg{suffix}"
    home = Path(tempfile.mkdtemp(prefix="vigil-home-"))
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        # A service account's shell: the job still gets SHELL=/bin/sh, as under cron.
        nologin = shutil.which("nologin") or "/usr/sbin/nologin"
        useradd = ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", nologin, "--user-group"]
        subprocess.run([*useradd, "--groups", group, name], check=True, capture_output=True)
        try:
            shutil.chown(home, name, name)
            yield JobUser(name, group, home, int(subprocess.check_output(["id", "-u", name])))
        finally:
            subprocess.run(["userdel", name], capture_output=True)
    finally:
        subprocess.run(["groupdel", group], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_the_job_runs_as_the_user_with_its_groups_and_login_environment(
    start_up, state_dir: Path, jobs_dir: Path, test_user: JobUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_job(
        jobs_dir,
        "who",
        f'user = "{test_user.name}"\n'
        'env = { FROM_JOB = "yes" }\n'
        'command = "echo name=$(id -un) ruid=$(id -ru); echo groups=$(id -Gn); '
        "echo home=$HOME user=$USER logname=$LOGNAME shell=$SHELL; "
        "echo secret=${DB_PASSWORD-unset} lang=$LANG from_job=$FROM_JOB; "
        'echo reopened >>/dev/stderr; touch $HOME/made"\n',
    )
    write_job(jobs_dir, "mine", 'command = "echo name=$(id -un) secret=${DB_PASSWORD-unset}"\n')
    # The scheduler's own variables (e.g. an EnvironmentFile='s secret) are not the other user's.
    monkeypatch.setenv("DB_PASSWORD", "s3cret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "who")
    vigil(state_dir, "run", "mine")
    run = wait_state(state_dir, "who", {"succeeded", "failed"})
    log = vigil(state_dir, "logs", str(run["id"]), jobs=jobs_dir).stdout
    assert run["state"] == "succeeded", log
    assert f"name={test_user.name} ruid={test_user.uid}" in log
    groups = log.split("groups=", 1)[1].split("\n", 1)[0].split()
    assert sorted(groups) == sorted({test_user.name, test_user.group})  # initgroups: not root's groups
    assert f"home={test_user.home} user={test_user.name} logname={test_user.name} shell=/bin/sh" in log
    assert "secret=unset lang=C.UTF-8 from_job=yes" in log
    assert "reopened" in log  # /dev/stderr opened again as the user: the log is the job's to write
    assert (test_user.home / "made").stat().st_uid == test_user.uid
    mine = wait_state(state_dir, "mine", {"succeeded"})
    # No user: no switch, and the scheduler's whole environment.
    assert "name=root secret=s3cret" in vigil(state_dir, "logs", str(mine["id"]), jobs=jobs_dir).stdout
    # The shim itself stayed the scheduler's: its files are root's, owner-only.
    run_dir = state_dir / "runs" / str(run["id"])
    assert (run_dir / "exit").stat().st_uid == 0 and (run_dir / "exit").read_text().startswith("exit=0 ")


def test_a_timeout_kills_the_users_whole_process_group(
    start_up, state_dir: Path, jobs_dir: Path, test_user: JobUser
) -> None:
    write_job(
        jobs_dir,
        "hang",
        f'user = "{test_user.name}"\ntimeout = "1s"\ncommand = "sleep 60 & sleep 60 & wait"\n',
    )
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "hang")
    run_dir = wait_for(lambda: next((state_dir / "runs").glob("*/started"), None), 10, what="the job to start").parent
    job_pid = int((run_dir / "started").read_text())
    wait_for(lambda: len(psutil.Process(job_pid).children()) == 2, 5, what="the job's two sleeps")
    sleeps = psutil.Process(job_pid).children()
    assert {p.uids().real for p in [psutil.Process(job_pid), *sleeps]} == {test_user.uid}
    assert os.getpgid(job_pid) == job_pid  # the job leads its own group, as without `user`
    run = wait_state(state_dir, "hang", {"timed_out"}, timeout=15)
    assert run["state"] == "timed_out"
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in sleeps), 5)


def test_validate_names_file_and_key_for_an_unknown_user_and_a_non_root_scheduler(
    test_user: JobUser,
) -> None:
    # A folder the test user can read (pytest's tmp_path is root's, 0700).
    folder = Path(tempfile.mkdtemp(prefix="vigil-jobs-"))
    try:
        folder.chmod(0o755)
        write_job(folder, "ghost", 'command = "true"\nuser = "vigil-no-such-user"\n')
        write_job(folder, "asroot", 'command = "true"\nuser = "root"\n')
        write_job(folder, "self", f'command = "true"\nuser = "{test_user.name}"\n')
        for path in folder.iterdir():
            path.chmod(0o644)
        as_root = subprocess.run([*VIGIL, "validate", str(folder)], capture_output=True, text=True, timeout=30)
        assert as_root.returncode == 1
        assert f"{folder}/ghost.toml:2: user: no user 'vigil-no-such-user' on this host" in as_root.stdout
        assert "asroot" not in as_root.stdout and "self.toml" not in as_root.stderr  # root may run as anyone

        setpriv = ["setpriv", f"--reuid={test_user.name}", f"--regid={test_user.name}", "--init-groups", "--"]
        if subprocess.run([*setpriv, *VIGIL, "--help"], capture_output=True, timeout=30, cwd="/").returncode != 0:
            pytest.skip(f"this checkout is not readable by {test_user.name} (the root half above ran)")
        as_user = subprocess.run(
            [*setpriv, *VIGIL, "validate", str(folder)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
        assert as_user.returncode == 1, as_user.stdout + as_user.stderr
        assert (
            f"{folder}/asroot.toml:2: user: the scheduler runs as {test_user.name}, not root: "
            "it cannot run jobs as root"
        ) in as_user.stdout
        assert "self.toml" not in as_user.stdout  # its own name is fine
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_on_an_agent_the_agents_privileges_decide(
    start_up, agents, state_dir: Path, jobs_dir: Path, test_user: JobUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_SECRET", "s3cret")  # the agent's own variable, not the job user's
    agent = agents("a1").start()
    write_settings(jobs_dir, {"a1": {"url": agent.url}})
    remote = 'command = "echo name=$(id -un) secret=${AGENT_SECRET-unset} shell=$SHELL"\n'
    write_job(jobs_dir, "remote", f'agent = "a1"\nuser = "{test_user.name}"\n{remote}')
    # Not checked on the scheduler's host (the account may exist only where the agent runs) ...
    write_job(jobs_dir, "ghost", 'agent = "a1"\nuser = "vigil-no-such-user"\ncommand = "true"\n')
    assert vigil(state_dir, "validate", jobs=jobs_dir, check=False).returncode == 0
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "remote")
    vigil(state_dir, "run", "ghost")
    run = wait_state(state_dir, "remote", {"succeeded", "failed", "unknown"})
    assert run["state"] == "succeeded"
    log = vigil(state_dir, "logs", str(run["id"]), jobs=jobs_dir).stdout
    assert f"name={test_user.name} secret=unset shell=/bin/sh" in log
    # ... but the agent refuses to start what it cannot run, with the reason.
    ghost = wait_state(state_dir, "ghost", {"succeeded", "failed", "unknown"})
    assert ghost["state"] == "failed"
    assert ghost["reason"] == "agent a1: could not start: user: no user 'vigil-no-such-user' on this host"


def test_a_running_scheduler_sees_a_user_created_after_it_loaded_the_job(jobs_dir: Path) -> None:
    from engine.config.folder import JobFolder

    name = f"vgl{os.getpid() % 100000}{os.urandom(2).hex()}"
    write_job(jobs_dir, "later", f'command = "true"\nuser = "{name}"\n')
    folder = JobFolder(jobs_dir)
    first = folder.scan()
    assert "later" not in first.jobs and [e.reason for e in first.errors] == [f"no user '{name}' on this host"]
    subprocess.run(["useradd", "--no-create-home", name], check=True, capture_output=True)
    try:
        assert "later" in folder.scan().jobs  # the job file did not change; the accounts did
    finally:
        subprocess.run(["userdel", name], capture_output=True)
    # Removed again: reported again (the scheduler keeps the last valid version; its launch fails with the reason).
    assert [e.reason for e in folder.scan().errors] == [f"no user '{name}' on this host"]


def test_a_user_crontab_imported_with_user_runs_as_that_user_with_crons_environment(
    start_up, state_dir: Path, jobs_dir: Path, test_user: JobUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `crontab -l -u NAME | vigil import-crontab - --user NAME` does it, run by root.
    crontab = "0 4 * * * echo name=$(id -un) path=$PATH shell=$SHELL secret=${DB_PASSWORD-unset}\n"
    imported = subprocess.run(
        [*VIGIL, "import-crontab", "-", "--user", test_user.name, "--jobs", str(jobs_dir), "--timezone", "UTC"],
        input=crontab,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert imported.returncode == 0, imported.stderr
    monkeypatch.setenv("DB_PASSWORD", "s3cret")
    start_up().wait_active()
    job = f"crontab-{test_user.name}/echo"  # its own folder: `crontab/` is /etc/crontab's
    vigil(state_dir, "run", job)
    run = wait_state(state_dir, job, {"succeeded", "failed"})
    log = vigil(state_dir, "logs", str(run["id"]), jobs=jobs_dir).stdout
    assert f"name={test_user.name} path=/usr/bin:/bin shell=/bin/sh secret=unset" in log
