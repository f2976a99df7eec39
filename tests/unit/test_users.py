"""The job key `user`, without root: who may run a job as whom (pure), and the words that switch."""

from __future__ import annotations

import pytest

from engine.agents.server.refusals import Malformed
from engine.agents.server.service import _validate_dispatch
from engine.errors import LaunchError
from engine.exec.local import switch_user_argv
from engine.paths import user_name
from engine.users import Account, find_account, job_environment, run_as, run_as_problem

ALICE = Account("alice", 1000, 1000, "/home/alice", "/bin/bash")


def test_root_may_run_a_job_as_anyone_and_anyone_as_themselves() -> None:
    assert run_as_problem("alice", ALICE, euid=0) is None
    assert run_as_problem("alice", ALICE, euid=1000) is None


def test_a_scheduler_that_is_not_root_cannot_run_jobs_as_another_user() -> None:
    nobody = user_name(65534)  # the login name of that uid here, or the number
    assert run_as_problem("alice", ALICE, euid=65534) == (
        f"the scheduler runs as {nobody}, not root: it cannot run jobs as alice"
    )
    assert run_as_problem("alice", ALICE, euid=65534, who="the agent") == (
        f"the agent runs as {nobody}, not root: it cannot run jobs as alice"
    )


def test_an_unknown_user_is_named() -> None:
    assert run_as_problem("ghost", None, euid=0) == "no user 'ghost' on this host"
    assert find_account("vigil-surely-no-such-user") is None
    assert find_account("bad\0name") is None
    with pytest.raises(LaunchError, match=r"^could not start: user: no user 'vigil-surely-no-such-user'"):
        run_as("vigil-surely-no-such-user")


def test_the_job_gets_the_login_environment_of_its_user_with_crons_shell() -> None:
    assert ALICE.login_env() == {"HOME": "/home/alice", "USER": "alice", "LOGNAME": "alice", "SHELL": "/bin/sh"}
    # A service account's passwd shell refuses logins: `$SHELL -c ...` in a job would fail with it.
    assert Account("www-data", 33, 33, "/var/www", "/usr/sbin/nologin").login_env()["SHELL"] == "/bin/sh"


SCHEDULERS = {
    "PATH": "/usr/local/bin:/usr/bin",
    "LANG": "C.UTF-8",
    "LC_TIME": "de_DE.UTF-8",
    "TZ": "Europe/Berlin",
    "DB_PASSWORD": "s3cret",  # from the unit's EnvironmentFile=
    "INVOCATION_ID": "0123abcd",
    "JOURNAL_STREAM": "8:1234",
    "HOME": "/root",
    "USER": "root",
}


def test_a_job_run_as_another_user_gets_none_of_the_schedulers_other_variables() -> None:
    env = job_environment(SCHEDULERS, ALICE, {"DATASET": "orders"}, euid=0)
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin",
        "LANG": "C.UTF-8",
        "LC_TIME": "de_DE.UTF-8",
        "TZ": "Europe/Berlin",
        "HOME": "/home/alice",
        "USER": "alice",
        "LOGNAME": "alice",
        "SHELL": "/bin/sh",
        "DATASET": "orders",
    }


def test_the_jobs_env_comes_last_and_a_missing_path_is_crons() -> None:
    env = job_environment({}, ALICE, {"SHELL": "/bin/bash", "HOME": "/srv/alice"}, euid=0)
    assert env["PATH"] == "/usr/bin:/bin"
    assert (env["SHELL"], env["HOME"], env["USER"]) == ("/bin/bash", "/srv/alice", "alice")


def test_a_job_run_as_the_schedulers_own_user_keeps_its_environment() -> None:
    assert job_environment(SCHEDULERS, None, {"X": "1"}, euid=0) == {**SCHEDULERS, "X": "1"}
    own = job_environment(SCHEDULERS, ALICE, {}, euid=1000)  # `user` naming itself: no switch
    assert own["DB_PASSWORD"] == "s3cret" and own["USER"] == "alice"


def test_the_switch_is_setpriv_with_ids_and_initgroups(tmp_path) -> None:
    words = switch_user_argv(ALICE)
    assert words[0].endswith("/setpriv")
    assert words[1:] == ["--reuid=1000", "--regid=1000", "--init-groups", "--"]
    with pytest.raises(LaunchError, match="setpriv \\(util-linux\\) not found"):
        switch_user_argv(ALICE, path=str(tmp_path))


def test_an_agent_refuses_a_dispatch_with_a_malformed_user() -> None:
    body = {"run_id": 1, "epoch": 1, "job": "j", "scheduled_for": "2030-01-01T00:00:00+00:00", "command": "true"}
    assert _validate_dispatch(body)["user"] is None
    assert _validate_dispatch({**body, "user": "alice"})["user"] == "alice"
    for bad in ("", 5, ["alice"]):
        with pytest.raises(Malformed, match="user must be a non-empty string"):
            _validate_dispatch({**body, "user": bad})
