"""The job key `user`: which account a job runs as, and whether this process may switch to it.

A process running as root may run a job as any account of this host; any other process only as
itself. The job's config is checked with `run_as_problem` (pure: the euid and the account are
given), and again at launch with `run_as`, since accounts change and an agent decides with its own
privileges. The switch itself is setpriv(1)'s, in the job's own process (engine/exec/local.py).

Layer: base. Imports only errors and paths.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import LaunchError
from engine.paths import user_name

PASSWD = "/etc/passwd"

#: What a job run as another user keeps of the scheduler's environment (with every LC_* variable):
#: the rest may be the operator's (an `EnvironmentFile=`'s secrets, systemd's INVOCATION_ID, ...).
KEPT_FOR_ANOTHER_USER = ("PATH", "LANG", "TZ")
#: cron's PATH, for a scheduler started without one.
DEFAULT_PATH = "/usr/bin:/bin"


@dataclass(frozen=True, slots=True)
class Account:
    """An account from the passwd database, as a job runs under it."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str

    def login_env(self) -> dict[str, str]:
        """The login variables of the job's environment, from the passwd entry.

        SHELL is /bin/sh, as cron sets it, not the passwd shell: a service account's is often
        /usr/sbin/nologin, which would break every job that runs `$SHELL -c ...`.
        """
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "SHELL": "/bin/sh"}


def job_environment(
    inherited: Mapping[str, str], account: Account | None, job_env: Mapping[str, str], *, euid: int
) -> dict[str, str]:
    """A job's environment before the VIGIL_* variables: the base, the login variables, then `env`.

    The base is the scheduler's whole environment (`inherited`) when the job runs as this process's
    user, and only PATH, LANG, LC_* and TZ from it when the job runs as another user.
    """
    if account is None or account.uid == euid:
        env = dict(inherited)
    else:
        env = {k: v for k, v in inherited.items() if k in KEPT_FOR_ANOTHER_USER or k.startswith("LC_")}
        env.setdefault("PATH", DEFAULT_PATH)
    if account is not None:
        env.update(account.login_env())
    env.update(job_env)
    return env


def find_account(name: str) -> Account | None:
    """The passwd entry named `name`, or None if there is none."""
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, UnicodeEncodeError, ValueError):  # ValueError: a NUL in the name
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)


def run_as_problem(name: str, account: Account | None, *, euid: int, who: str = "the scheduler") -> str | None:
    """Why a process with `euid` cannot run a job as `name` (`account`: its entry, None if unknown)."""
    if account is None:
        return f"no user {name!r} on this host"
    if account.uid == euid or euid == 0:
        return None
    return f"{who} runs as {user_name(euid)}, not root: it cannot run jobs as {name}"


def run_as(name: str | None, *, who: str = "the scheduler") -> Account | None:
    """The account of a job with `user = name` (None without one), checked against this process.

    Raises LaunchError ("could not start: user: ...") when this process cannot run it as `name`.
    """
    if name is None:
        return None
    account = find_account(name)
    problem = run_as_problem(name, account, euid=os.geteuid(), who=who)
    if problem is not None or account is None:
        raise LaunchError(f"could not start: user: {problem}")
    return account


def switch_to(account: Account | None) -> Account | None:
    """The account the job's own process must change to: `account` when its uid is not this process's."""
    return account if account is not None and account.uid != os.geteuid() else None


def accounts_stamp() -> tuple[int, int]:
    """Changes when the local passwd file does: a job's `user` is checked again after it."""
    try:
        info = os.stat(PASSWD)
    except OSError:
        return (0, 0)
    return (info.st_mtime_ns, info.st_size)
