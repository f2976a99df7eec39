"""The job key `user`, without root: who may run a job as whom (pure), and the words that switch."""

from __future__ import annotations

import pytest

from engine.agents.server.refusals import Malformed
from engine.agents.server.service import _validate_dispatch
from engine.errors import LaunchError
from engine.exec.local import switch_user_argv
from engine.paths import user_name
from engine.users import Account, find_account, run_as, run_as_problem

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


def test_the_job_gets_the_login_environment_of_its_user() -> None:
    assert ALICE.login_env() == {"HOME": "/home/alice", "USER": "alice", "LOGNAME": "alice", "SHELL": "/bin/bash"}
    assert Account("svc", 5, 5, "/", "").login_env()["SHELL"] == "/bin/sh"


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
