"""Every key a job file, a `_folder.toml` or `vigil.toml` may hold, and how each value is checked.

`JOB_FIELDS` is the one table of job keys: key → check. A job's defaults are `model.JobSpec`'s field
defaults, read into the table (`JobField.default`); a key no file sets is simply not passed to
`JobSpec`. `SCHEDULER_FIELDS` is the same for `[scheduler]` in `vigil.toml` (defaults: `model.Settings`).
The checks are hand-written on purpose (file:line errors across layered files, every error reported,
"did you mean", the bad cron field named); each raises `BadValue` with the operator's message.

Imports `sources`, `engine.durations`, `engine.schedule` (the scheduler's own cron parser decides what is
valid), `engine.model`, `engine.notify.events` (the event kinds a channel may filter on), `engine.errors`
and `engine.text`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache, partial
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.config.sources import SourceFile, Value
from engine.durations import MAX_DURATION_LABEL, parse_duration, within_max_duration
from engine.errors import ConfigError
from engine.model import AfterEdge, Catchup, Condition, JobSpec, NonWorking, OutsideWindow, Overlap, Threshold
from engine.notify.events import EventKind
from engine.schedule import parse_window, validate_cron
from engine.schedule.calendars import MAX_WORKDAY, parse_at_time
from engine.text import describe, quote, show

__all__ = [
    "AGENT_KEYS",
    "JOB_FIELDS",
    "JOB_KEYS",
    "MAX_ENV_BYTES",
    "MAX_LOCK_COUNT",
    "POOL_KEYS",
    "POOL_MODES",
    "REQUIRED_JOB_KEYS",
    "RESOURCE_KEYS",
    "SCHEDULER_FIELDS",
    "BadValue",
    "JobField",
    "as_choice",
    "as_string_list",
    "env_bytes",
    "resolve_path",
    "too_large_env",
    "unknown_key_reason",
    "validate_job_keys",
    "zone",
]

MAX_QUEUED_LIMIT = 1000  #: each queued run is an open row the scheduler keeps in memory
_SQLITE_INT_MAX = 2**63 - 1  #: the largest integer a SQLite column holds
#: `every` below this starts a process many times a second: far more than a scheduler with a ledger
#: row and a shim per run is for (a cron field has a resolution of 1 s, too).
EVERY_FLOOR = (1.0, "1s", "an interval shorter than a second is not supported")
MAX_RETRIES = 100
#: A command and a job's environment are each capped well below the kernel's limits (a single
#: argument or variable may be at most 128 KiB, all of them together about 2 MiB: beyond, exec fails
#: with E2BIG at run time); these caps make the failure a validation error instead.
MAX_COMMAND_BYTES = 64 * 1024
MAX_ENV_BYTES = 64 * 1024
_MAX_LOG_CAP = 1024**4  #: 1 TB
_HEARTBEAT_FLOOR = (0.01, "10ms", "a shorter interval would keep a core busy with heartbeats")
_AGENT_POLL_FLOOR = (0.1, "100ms", "a shorter interval would flood the agents with polls")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_Choice = TypeVar("_Choice", bound=StrEnum)


# ---------------------------------------------------------------------------------------------------
# Checks (pure): each returns the value as the spec holds it, or raises BadValue


class BadValue(Exception):
    """A key's value is invalid; `problems` holds (sub-path, reason) pairs so tables report every entry."""

    def __init__(self, reason: str, subpath: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.problems: list[tuple[tuple[str, ...], str]] = [(subpath, reason)]

    @classmethod
    def many(cls, problems: list[tuple[tuple[str, ...], str]]) -> BadValue:
        bad = cls(problems[0][1], problems[0][0])
        bad.problems = problems
        return bad


def _expected(what: str, value: object) -> BadValue:
    return BadValue(f"expected {what}, got {describe(value)}")


def as_string(value: object, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    if not allow_empty and not value.strip():
        raise BadValue("must not be empty")
    return value


def as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expected("a boolean (true or false)", value)
    return value


def as_int(value: object, minimum: int, maximum: int = _SQLITE_INT_MAX) -> int:
    """An integer within bounds; by default it must at least fit the database (a 64-bit integer)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expected("an integer", value)
    if value < minimum:
        raise BadValue(f"must be at least {minimum}, got {show(value)}")
    if value > maximum:
        raise BadValue(f"must be at most {maximum}, got {show(value)}")
    return value


def as_duration(value: object, *, positive: bool, floor: tuple[float, str, str] | None = None) -> float:
    """Seconds; `positive` rejects zero where a zero would make no sense (intervals, timeouts);
    `floor` is (seconds, as written, why) for keys where a tiny value would spin a loop."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _expected('a duration such as "30s" or "5m" (or a number of seconds)', value)
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise BadValue(str(exc)) from None
    if not math.isfinite(seconds):
        raise BadValue(f"duration must be finite, got {show(value)}")
    if positive and seconds <= 0:
        raise BadValue(f"must be greater than zero, got {show(value)}")
    if floor is not None and seconds < floor[0]:
        raise BadValue(f"must be at least {floor[1]} ({floor[2]}), got {show(value)}")
    if positive and seconds < 1e-6:  # fire times and deadlines are whole microseconds
        raise BadValue(f"must be at least 1 microsecond, got {show(value)}")
    if not within_max_duration(seconds):  # past this, fire times and deadlines overflow datetime
        raise BadValue(f"must be at most {MAX_DURATION_LABEL}, got {show(value)}")
    return seconds


def as_choice(value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise _expected("a string, one of " + ", ".join(choices), value)
    if value not in choices:
        raise BadValue(f"expected one of {', '.join(choices)}, got {show(value)}")
    return value


def as_string_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list):
        raise _expected(f"an array of {what}", value)
    problems: list[tuple[tuple[str, ...], str]] = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str):
            problems.append(((), f"item {number}: expected a string, got {describe(item)}"))
        elif not item.strip():
            problems.append(((), f"item {number}: must not be empty"))
    if problems:
        raise BadValue.many(problems)
    return list(dict.fromkeys(value))


@lru_cache(maxsize=4096)
def _cron_problem(expr: str) -> str | None:
    """Why a cron expression is invalid (naming the field at fault and its range), or None."""
    fields = expr.split()
    if len(fields) not in (5, 6) and not expr.startswith("@"):  # a macro is one word: the parser says
        return (
            f"expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, "
            f"got {len(fields)} in {quote(expr)}"
        )
    try:
        # The scheduler's own parser decides (it is what fires the job) and says what is wrong in
        # Vigil's words: the field, what is wrong with it and the values it takes.
        validate_cron(expr)
    except ValueError as exc:
        return str(exc).removeprefix(f"cron {quote(expr)}: ")
    return None


def as_cron(value: object) -> str:
    expr = " ".join(as_string(value, allow_empty=False).split())
    problem = _cron_problem(expr)
    if problem:
        raise BadValue(problem)
    return expr


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def as_timezone(value: object) -> str:
    name = as_string(value, allow_empty=False).strip()
    if zone(name) is None:
        raise BadValue(f'unknown time zone {quote(name)}: use an IANA name such as "Europe/Berlin" or "UTC"')
    return name


def as_at(value: object) -> datetime:
    """An aware or naive datetime; a naive one is made aware later with the job's time zone."""
    hint = 'a date and time such as 2025-06-01T09:30:00 or "2025-06-01T09:30:00+02:00"'
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        text = value.strip()
        if "T" not in text.upper() and " " not in text:
            raise BadValue(f"expected {hint}, got {show(value)} (a time of day is required)")
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise BadValue(f"expected {hint}, got {show(value)}") from None
    raise _expected(hint, value)


_NUL = "must not contain a NUL character (\\u0000): a process cannot be started with one"


def _byte_limit(size: int, limit: int, what: str = "") -> str:
    """`is 65537 bytes; at most 65536 bytes (64 KiB) are allowed`: both numbers exact, never rounded."""
    return f"is {size} bytes{what}; at most {limit} bytes ({limit // 1024} KiB) are allowed"


def _command_bytes(command: str | tuple[str, ...]) -> int:
    """Bytes the command takes in the argument list: /bin/sh -c's one string, or each item + NUL."""
    if isinstance(command, str):
        return len(command.encode("utf-8", "surrogatepass"))
    return sum(len(item.encode("utf-8", "surrogatepass")) + 1 for item in command)


def as_command(value: object) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise BadValue("must not be empty")
        if "\0" in value:
            raise BadValue(_NUL)
        command: str | tuple[str, ...] = value
    elif isinstance(value, list):
        command = _command_array(value)
    else:
        raise _expected("a string (run by /bin/sh -c) or an array of strings (exec'd directly)", value)
    if (size := _command_bytes(command)) > MAX_COMMAND_BYTES:
        raise BadValue(f"{_byte_limit(size, MAX_COMMAND_BYTES)} (put a long script in a file and run that)")
    return command


def _command_array(value: list[object]) -> tuple[str, ...]:
    if not value:
        raise BadValue("must not be an empty array")
    problems: list[tuple[tuple[str, ...], str]] = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str):
            problems.append(((), f"item {number}: expected a string, got {describe(item)}"))
        elif "\0" in item:
            problems.append(((), f"item {number}: {_NUL}"))
    if problems:
        raise BadValue.many(problems)
    items = cast(tuple[str, ...], tuple(value))  # every item was checked to be a string
    if not items[0].strip():
        raise BadValue("item 1 (the program to run) must not be empty")
    return items


_CONDITIONS = frozenset(c.value for c in Condition)


def as_after(value: object) -> tuple[AfterEdge, ...]:
    """`after`: job names (each meaning `on = "success"`) or `{ job = NAME, on = CONDITION }` tables."""
    if not isinstance(value, list):
        raise _expected("an array of job names", value)  # (or of { job, on } tables: docs/jobs.md)
    problems: list[tuple[tuple[str, ...], str]] = []
    edges: dict[str, AfterEdge] = {}
    conditions = ", ".join(quote(c.value) for c in Condition)
    for number, item in enumerate(value, start=1):
        where = f"item {number}"
        name: object
        on: object = Condition.SUCCESS.value
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"job", "on"})
            if unknown:
                problems.append(((), f"{where}: unknown key {quote(unknown[0])} (a table takes `job` and `on`)"))
                continue
            if "job" not in item:
                problems.append(((), f"{where}: missing `job` (the upstream job's name)"))
                continue
            name, on = item["job"], item.get("on", on)
        else:
            name = item
        if not isinstance(name, str):
            problems.append(((), f"{where}: expected a string, got {describe(name)} (or a {{ job, on }} table)"))
        elif not name.strip():
            problems.append(((), f"{where}: must not be empty"))
        elif name.startswith(("/", "./", "../")) or name.endswith(".toml"):
            problems.append(((), f'{quote(name)}: use the job\'s full name under the folder, e.g. "etl/extract"'))
        elif not isinstance(on, str) or on not in _CONDITIONS:
            problems.append(((), f"{where} ({quote(name)}): `on` must be one of {conditions}, got {describe(on)}"))
        elif name in edges and edges[name].on != on:
            problems.append(((), f"{where}: {quote(name)} is listed twice with different conditions"))
        else:
            edges.setdefault(name, AfterEdge(name, Condition(on)))
    if problems:
        raise BadValue.many(problems)
    return tuple(edges.values())


def as_env(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _expected('a table of NAME = "value" strings', value)
    problems: list[tuple[tuple[str, ...], str]] = []
    for name, item in value.items():
        if not name or "=" in name or "\0" in name:
            problems.append(((name,), "not a valid environment variable name"))
        elif not isinstance(item, str):
            problems.append(((name,), f"expected a string, got {describe(item)}"))
        elif "\0" in item:
            problems.append(((name,), _NUL))
    if problems:
        raise BadValue.many(problems)
    if (size := env_bytes(value)) > MAX_ENV_BYTES:
        raise too_large_env(size)
    return dict(value)


def env_bytes(env: Mapping[str, str]) -> int:
    """Bytes the variables take in the environment block: `NAME=value` and a NUL each."""
    return sum(len(f"{name}={item}".encode("utf-8", "surrogatepass")) + 1 for name, item in env.items())


def too_large_env(size: int, where: str = "") -> BadValue:
    return BadValue(_byte_limit(size, MAX_ENV_BYTES, f" in total{where}"))


def resolve_path(value: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def as_path(value: object) -> str:
    """A path as written (made absolute against the folder of the file that sets it, by the caller)."""
    if isinstance(value, str) and "\0" in value:
        raise BadValue(_NUL)
    return as_string(value, allow_empty=False)


def as_enum(value: object, kind: type[_Choice]) -> _Choice:
    return kind(as_choice(value, tuple(kind)))


def as_tags(value: object) -> tuple[str, ...]:
    return tuple(as_string_list(value, "strings"))


def as_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _expected('a number of bytes or a size such as "512KB" or "1MB"', value)
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise BadValue(f'bad size {show(value)}: use bytes or a number with KB, MB or GB, e.g. "512KB" or "1MB"')
        unit = (match.group(2) or "b").lower()[0]
        scaled = float(match.group(1)) * _SIZE_UNITS[unit]
        size = int(scaled) if scaled <= _MAX_LOG_CAP else _MAX_LOG_CAP + 1  # also inf, from many digits
    if size < 1:
        raise BadValue(f"must be at least 1 byte, got {show(value)}")
    if size > _MAX_LOG_CAP:
        raise BadValue(f"must be at most 1024GB, got {show(value)}")
    return size


_PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


def as_threshold(value: object) -> Threshold:
    """`warn_if_longer` / `warn_if_shorter`: a duration ("30m", seconds) or a percentage ("200%") of the
    median of the job's recent successful durations."""
    if isinstance(value, str) and "%" in value:
        match = _PERCENT.fullmatch(value)
        if match is None:
            raise BadValue(f'expected a percentage such as "200%", got {show(value)}')
        percent = float(match.group(1))
        if not 0 < percent <= 100_000:
            raise BadValue(f"a percentage must be above 0% and at most 100000%, got {show(value)}")
        return Threshold(percent=percent)
    return Threshold(seconds=as_duration(value, positive=True))


def as_channel_names(value: object) -> tuple[str, ...]:
    """`notify`: names of `[notify.NAME]` channels (whether each is declared is checked with vigil.toml)."""
    names = as_string_list(value, "channel names")
    if any(not name.strip() for name in names):
        raise BadValue("a channel name must not be empty")
    return tuple(dict.fromkeys(names))


def as_event_kinds(value: object) -> frozenset[str]:
    """A channel's `events` filter: EventKind values (a close miss gets a "did you mean")."""
    names = as_string_list(value, "event names")
    known = [str(kind) for kind in EventKind]
    problems: list[tuple[tuple[str, ...], str]] = []
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {quote(close[0])}? " if close else ""
            problems.append(((), f"unknown event {quote(name)} ({hint}known: {', '.join(known)})"))
    if problems:
        raise BadValue.many(problems)
    if not names:
        raise BadValue("must name at least one event (leave events out to take them all)")
    return frozenset(names)


MAX_LOCK_COUNT = 1_000_000  #: a `[resources.NAME] limit`, and so a lock's count, is at most this
MAX_PRIORITY = 1_000_000


def as_locks(value: object) -> tuple[tuple[str, int], ...]:
    """`locks`: a table of resource names and counts (`{ gpu = 1, db = 1 }`), or a list of names (1 each).

    Whether each name is declared in vigil.toml, and its count within the limit, is checked with it."""
    if isinstance(value, list):
        names = as_string_list(value, "resource names")
        return tuple((name.strip(), 1) for name in names)
    if not isinstance(value, dict):
        raise _expected('a table of resource counts such as { gpu = 1, db = 1 } or a list of names ["db"]', value)
    problems: list[tuple[tuple[str, ...], str]] = []
    locks: list[tuple[str, int]] = []
    for name, count in value.items():
        if not name.strip():
            problems.append(((name,), "a resource name must not be empty"))
            continue
        try:
            locks.append((name.strip(), as_int(count, minimum=1, maximum=MAX_LOCK_COUNT)))
        except BadValue as bad:
            problems.append(((name,), str(bad)))
    if problems:
        raise BadValue.many(problems)
    return tuple(locks)


def as_workday(value: object) -> int:
    """`workday`: 1…23 (the Nth working day of the month) or -1…-23 (the Nth from the end)."""
    number = as_int(value, minimum=-MAX_WORKDAY, maximum=MAX_WORKDAY)
    if number == 0:
        raise BadValue("0 is no working day: use 1 for the first, -1 for the last of the month")
    return number


def as_at_time(value: object) -> str:
    """`at_time = "18:00"`: a wall time of day in the job's zone, as "HH:MM" (or "HH:MM:SS")."""
    try:
        wall = parse_at_time(as_string(value, allow_empty=False))
    except ValueError as exc:
        raise BadValue(str(exc)) from None
    return wall.isoformat(timespec="seconds" if wall.second else "minutes")


def as_windows(value: object) -> tuple[str, ...]:
    """`window`: one admission window "mon-fri 08:00-18:00" or a list of them (each checked)."""
    texts = [value] if isinstance(value, str) else as_string_list(value, 'windows such as "mon-fri 08:00-18:00"')
    if not texts:
        raise BadValue("must name at least one window (leave window out to admit every time)")
    problems: list[tuple[tuple[str, ...], str]] = []
    normalised: list[str] = []
    for number, text in enumerate(texts, start=1):
        try:
            normalised.append(parse_window(" ".join(text.split())).text)
        except ValueError as exc:
            problems.append(((), str(exc) if len(texts) == 1 else f"item {number}: {exc}"))
    if problems:
        raise BadValue.many(problems)
    return tuple(dict.fromkeys(normalised))


# ---------------------------------------------------------------------------------------------------
# The key tables

Check = Callable[[object], Any]


@dataclass(frozen=True, slots=True)
class JobField:
    """One job key: how its value is checked, and its default (JobSpec's; `MISSING` when required)."""

    check: Check
    default: object
    relative_path: bool = False  #: resolved against the folder of the file that sets it

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def _job_fields(checks: Mapping[str, Check], *, relative_paths: Iterable[str]) -> dict[str, JobField]:
    """The table, in `checks`' order, each key's default read from the `JobSpec` field of that name."""
    defaults = {
        spec_field.name: spec_field.default
        if spec_field.default_factory is dataclasses.MISSING
        else spec_field.default_factory()
        for spec_field in dataclasses.fields(JobSpec)
    }
    return {key: JobField(check, defaults[key], key in relative_paths) for key, check in checks.items()}


_duration = partial(as_duration, positive=False)
_positive_duration = partial(as_duration, positive=True)

#: Every key of a job file or `_folder.toml`, in `JobSpec`'s order.
JOB_FIELDS: Mapping[str, JobField] = _job_fields(
    {
        "command": as_command,
        "cron": as_cron,
        "every": partial(as_duration, positive=True, floor=EVERY_FLOOR),
        "at": as_at,
        "timezone": as_timezone,
        "after": as_after,
        "timeout": _positive_duration,
        "retries": partial(as_int, minimum=0, maximum=MAX_RETRIES),
        "retry_delay": _duration,
        "overlap": partial(as_enum, kind=Overlap),
        "max_queued": partial(as_int, minimum=1, maximum=MAX_QUEUED_LIMIT),
        "catchup": partial(as_enum, kind=Catchup),
        "catchup_window": _duration,
        "agent": partial(as_string, allow_empty=False),
        "env": as_env,
        "workdir": as_path,
        "enabled": as_bool,
        "description": as_string,
        "tags": as_tags,
        "notify": as_channel_names,
        "late_after": _positive_duration,
        "warn_if_longer": as_threshold,
        "warn_if_shorter": as_threshold,
        "user": partial(as_string, allow_empty=False),
        "locks": as_locks,
        "priority": partial(as_int, minimum=-MAX_PRIORITY, maximum=MAX_PRIORITY),
        "calendar": partial(as_string, allow_empty=False),
        "on_nonworking": partial(as_enum, kind=NonWorking),
        "workday": as_workday,
        "at_time": as_at_time,
        "window": as_windows,
        "outside_window": partial(as_enum, kind=OutsideWindow),
        "kill_at_window_end": as_bool,
    },
    relative_paths=("workdir",),
)
JOB_KEYS = tuple(JOB_FIELDS)
#: keys without a default: a job must get them from its file or a `_folder.toml` above
REQUIRED_JOB_KEYS = tuple(key for key, job_field in JOB_FIELDS.items() if job_field.required)

#: Every key of `[scheduler]` in vigil.toml, in `Settings`' order (whose field defaults apply).
SCHEDULER_FIELDS: Mapping[str, Check] = {
    "retention": _positive_duration,
    "log_cap": as_size,
    "kill_grace": _duration,
    "heartbeat_interval": partial(as_duration, positive=True, floor=_HEARTBEAT_FLOOR),
    "heartbeat_timeout": _positive_duration,
    "max_missed_rows": partial(as_int, minimum=1, maximum=1_000_000),
    "agent_poll_interval": partial(as_duration, positive=True, floor=_AGENT_POLL_FLOOR),
    "agent_wait_limit": _duration,
    "notify": as_channel_names,
    "max_running": partial(as_int, minimum=1, maximum=1_000_000),
}
RESOURCE_KEYS = ("limit",)
AGENT_KEYS = ("url", "token_file", "tls_ca", "tls_cert", "tls_key")
POOL_KEYS = ("agents", "mode")
CHANNEL_KEYS = ("url", "command", "events", "timeout", "rate_limit", "rate_window")
_CHANNEL_ONLY_KEYS = ("events", "rate_limit", "rate_window")  #: the others are also job or agent keys
POOL_MODES = ("fixed-priority", "round-robin")


def validate_job_keys(source: SourceFile, data: Mapping[str, Any]) -> tuple[dict[str, Value], list[ConfigError]]:
    """Check each key of a job or `_folder.toml` on its own; combinations are checked after merging."""
    values: dict[str, Value] = {}
    errors: list[ConfigError] = []
    for key, raw in data.items():
        job_field = JOB_FIELDS.get(key)
        if job_field is None:
            errors.append(source.error((key,), unknown_key_reason(key, JOB_KEYS)))
            continue
        try:
            value = job_field.check(raw)
        except BadValue as bad:
            errors.extend(source.error((key, *sub), reason) for sub, reason in bad.problems)
            continue
        if job_field.relative_path:
            value = resolve_path(value, source.abs_dir)
        values[key] = Value(value, source)
    return values, errors


# ---------------------------------------------------------------------------------------------------
# Names, and keys found in the wrong place


def unknown_key_reason(key: str, known: Iterable[str], *, where: str = "job") -> str:
    """`unknown key`, with where the key does belong when it is another file's or table's setting
    (`where` is the place it was found: "job", "top" of vigil.toml, "scheduler", "agent",
    "pool", "channel"),
    else the closest known key."""
    home = _key_home(key, where)
    if home:
        return f"unknown key; {home}"
    close = difflib.get_close_matches(key, list(known), n=1)
    return "unknown key" + (f" (did you mean {quote(close[0])}?)" if close else "")


def _key_home(key: str, where: str) -> str | None:
    """Where a key belongs, said from the file it was found in; None when it is nobody's key."""
    in_settings = where != "job"  # found in vigil.toml: the place is a table of the same file
    if key in JOB_FIELDS and where != "job":
        return f"`{key}` is a job setting (a job file or _folder.toml)"
    if key in SCHEDULER_FIELDS and where != "scheduler":
        return f"`{key}` is a [scheduler] setting" + (": put it under [scheduler]" if in_settings else " in vigil.toml")
    if key in AGENT_KEYS and where != "agent":
        return f"`{key}` is an [agents.NAME] setting" + ("" if in_settings else " in vigil.toml")
    if key in _CHANNEL_ONLY_KEYS and where != "channel":
        return f"`{key}` is a [notify.NAME] setting" + ("" if in_settings else " in vigil.toml")
    if key == "limit" and where != "resource":
        return f"`{key}` is a [resources.NAME] setting" + ("" if in_settings else " in vigil.toml")
    if key == "mode" and where != "pool":
        return f"`{key}` is a [pools.NAME] setting" + ("" if in_settings else " in vigil.toml")
    if key in ("scheduler", "pools", "resources", "calendars") and where == "job":
        return f"[{key}{'' if key == 'scheduler' else '.NAME'}] is a table of vigil.toml"
    return None
