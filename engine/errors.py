"""The one exception hierarchy of Vigil.

VigilError
├── ConfigError            a job file or vigil.toml is invalid (path, line, key, reason)
├── StoreError             the SQLite state could not be read or written
│   ├── FencedError        a write carried a stale epoch: this process is no longer active
│   ├── StoreRetryableError  another writer holds the lock, or the disk is full: try again later
│   └── StoreFatalError    corrupt, not a database, I/O error, read-only, removed or replaced
├── ControlError           a command could not reach or was refused by the active scheduler
│   ├── NoActiveSchedulerError
│   ├── SchedulerStoppingError  the active is stopping: try again once another one is active
│   └── UnwritableError    the active's database refuses writes for now: try again later
├── NotFoundError          a job or run named by the user does not exist
├── ScheduleError          a schedule expression cannot be evaluated
├── LaunchError            a run's shim could not start its job (reason: "could not start: ...")
├── DeliveryError          a notification channel did not take an event (`permanent`: never will)
└── AgentError             an agent could not be reached or refused a command
    ├── AgentUnreachable   no connection could be made: the request certainly did not arrive
    ├── AgentAmbiguous     the connection broke after sending: the request may have arrived
    ├── AgentRefused       the agent answered with an error status (status)
    │   └── AgentNotFound  the agent has no record of the run (404)
    └── StaleEpochError    the agent has seen a newer epoch than the command carries
"""

from __future__ import annotations

from pathlib import Path

from engine.text import escape


class VigilError(Exception):
    """Root of every error Vigil raises on purpose."""


class ConfigError(VigilError):
    """An invalid job file or setting, located as precisely as TOML allows."""

    def __init__(self, path: str | Path, key: str, reason: str, line: int | None = None) -> None:
        self.path = str(path)
        self.key = key
        self.reason = reason
        self.line = line
        super().__init__(self.format())

    def format(self) -> str:
        """`PATH:LINE: KEY: reason`, every part escaped: each may carry text from a job file."""
        where = f"{escape(self.path)}:{self.line}" if self.line is not None else escape(self.path)
        return f"{where}: {escape(self.key)}: {escape(self.reason)}"


class StoreError(VigilError):
    """The state database could not be read or written."""


class FencedError(StoreError):
    """A write carried an epoch older than the database's: this process has been deposed."""


class StoreRetryableError(StoreError):
    """The write may succeed later: another writer holds the lock, or the disk is full.

    `kind` is a short name of the fault ("disk full", "locked by another writer") for log-once.
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class StoreFatalError(StoreError):
    """The database cannot be used any more (corrupt, not a database, I/O error, read-only,
    removed or replaced): the active scheduler ends instead of running without its ledger."""


class ControlError(VigilError):
    """A command could not be delivered to, or was refused by, the active scheduler."""


class NoActiveSchedulerError(ControlError):
    """No scheduler is active on this state directory."""

    def __init__(self, state_dir: str | Path) -> None:
        super().__init__(f"no active scheduler on state directory {state_dir} (start one with `vigil up`)")


class SchedulerStoppingError(ControlError):
    """The active scheduler is stopping and refused the command: try again once another is active."""


class UnwritableError(ControlError):
    """The active refused a command that needs a write: its state database refuses writes for now
    (disk full, locked by another writer); try again when it is writable."""


class NotFoundError(VigilError):
    """A job or run named by the user does not exist."""


class ScheduleError(VigilError):
    """A schedule expression cannot be evaluated."""


class LaunchError(VigilError):
    """A run could not be started: its message is the run's reason, "could not start: ..."."""


class DeliveryError(VigilError):
    """A notification channel did not take an event. `permanent`: retrying cannot help (the receiver
    refused this event for good); otherwise it is retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        self.permanent = permanent
        super().__init__(message)


class AgentError(VigilError):
    """An agent could not be reached or refused a command."""


class AgentUnreachable(AgentError):
    """No TCP (or TLS) connection could be made: the request certainly did not arrive."""


class AgentAmbiguous(AgentError):
    """The connection broke after the request may have been sent: it may or may not have arrived."""


class AgentRefused(AgentError):
    """The agent answered with an error status (auth, bad request, conflict)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class AgentNotFound(AgentRefused):
    """The agent has no record of the run."""


class StaleEpochError(AgentError):
    """The agent has already seen a newer epoch than the command carries."""

    def __init__(self, message: str, max_epoch: int | None = None) -> None:
        super().__init__(message)
        self.max_epoch = max_epoch  #: the highest epoch the agent has seen, when it said
