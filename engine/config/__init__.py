"""The job folder: TOML job files, `_folder.toml` defaults, `vigil.toml` settings, and live reload.

Loading is strict and complete: every problem in every file becomes a ConfigError located by path,
line and key, and a bad file never stops the good ones. `JobFolder.scan()` is called about once a
second by the scheduler, so an unchanged folder costs one `stat()` per file and nothing else, and an
edit that breaks a job leaves its last valid version active.
"""

from __future__ import annotations

import difflib
import errno
import math
import os
import re
import stat
import time
import tomllib
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.durations import MAX_DURATION_S, MAX_DURATION_TEXT, parse_duration
from engine.errors import ConfigError
from engine.model import AgentSpec, Catchup, JobSpec, Overlap, PoolSpec, Settings
from engine.schedule import validate_cron
from engine.text import describe, quote, show

__all__ = [
    "FOLDER_FILE",
    "JOB_KEYS",
    "SETTINGS_FILE",
    "JobFolder",
    "LoadResult",
    "ScanResult",
    "format_errors",
    "job_name_problem",
    "load_folder",
    "load_settings",
]

FOLDER_FILE = "_folder.toml"
MAX_QUEUED_LIMIT = 1000  #: each queued run is an open row the scheduler keeps in memory
SETTINGS_FILE = "vigil.toml"
JOB_KEYS = (
    "command",
    "cron",
    "every",
    "at",
    "timezone",
    "after",
    "timeout",
    "retries",
    "retry_delay",
    "overlap",
    "max_queued",
    "catchup",
    "catchup_window",
    "agent",
    "env",
    "workdir",
    "enabled",
    "description",
    "tags",
)
SCHEDULER_KEYS = (
    "retention",
    "log_cap",
    "kill_grace",
    "heartbeat_interval",
    "heartbeat_timeout",
    "max_missed_rows",
    "agent_poll_interval",
    "agent_wait_limit",
)
AGENT_KEYS = ("url", "token_file", "tls_ca", "tls_cert", "tls_key")
POOL_KEYS = ("agents", "mode")
POOL_MODES = ("fixed-priority", "round-robin")

#: A file whose mtime is this close to the moment it was read may be rewritten within the same
#: timestamp tick with the same size; its content is compared again on the next scan (as git does).
_RACY_WINDOW_NS = 1_000_000_000
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_NAME_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]*")
_NAME_RULE = "may use only ASCII letters, digits and _ . @ + -, and must start with a letter, digit or _"
_CRON_FIELDS_5 = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_FIELDS_6 = ("second", *_CRON_FIELDS_5)
_CRON_RANGES = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT",
}
#: `at` is kept in a range where adding any duration (at most 100 years) stays a valid datetime
_AT_FIRST_YEAR, _AT_LAST_YEAR = 1970, 9899
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


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass
class LoadResult:
    """Every valid job of a folder, every error found, and the settings in force."""

    jobs: dict[str, JobSpec]
    errors: list[ConfigError]
    settings: Settings


@dataclass
class ScanResult:
    """One live-reload step: the effective jobs, what moved since the last scan, all current errors."""

    jobs: dict[str, JobSpec]
    changed: set[str]  #: added, or effective spec differs from the previous scan
    removed: set[str]  #: no longer in `jobs` (file deleted)
    errors: list[ConfigError]
    settings: Settings


def job_name_of(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """The job name a file under `root` gives (its relative path without `.toml`)."""
    rel = os.path.relpath(path, root)
    return rel[:-5] if rel.endswith(".toml") else rel


def format_errors(errors: Iterable[ConfigError]) -> str:
    """One `PATH:LINE: KEY: reason` line per error, for the CLI and logs."""
    return "\n".join(error.format() for error in errors)


# ---------------------------------------------------------------------------------------------------
# Locating keys in TOML text (tomllib gives no positions)


class _LineIndex:
    """The line where each key path (table path + key) first appears in a TOML text."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        self._scan(text)

    def line_of(self, path: tuple[str, ...]) -> int | None:
        """The line of `path`, or of its nearest enclosing table or key that is written down."""
        for size in range(len(path), 0, -1):
            line = self._lines.get(path[:size])
            if line is not None:
                return line
        return None

    def _record(self, path: tuple[str, ...], line: int) -> None:
        for size in range(1, len(path) + 1):
            self._lines.setdefault(path[:size], line)

    def _scan(self, text: str) -> None:
        table: tuple[str, ...] = ()
        depth = 0  # open brackets/braces of a value spanning lines
        open_string: str | None = None  # delimiter of a multi-line string spanning lines
        for number, line in enumerate(text.splitlines(), start=1):
            pos = 0
            if open_string is not None:
                end = line.find(open_string)
                if end < 0:
                    continue
                pos, open_string = end + 3, None
            elif depth == 0:
                stripped = line.lstrip()
                pos = len(line) - len(stripped)
                if not stripped or stripped.startswith("#"):
                    continue
                if stripped.startswith("["):
                    pos += 2 if stripped.startswith("[[") else 1
                    parsed = _parse_key(line, pos)
                    if parsed is not None:
                        table = tuple(parsed[0])
                        self._record(table, number)
                    continue
                parsed = _parse_key(line, pos)
                if parsed is None or not line.startswith("=", parsed[1]):
                    continue
                self._record(table + tuple(parsed[0]), number)
                pos = parsed[1] + 1
            depth, open_string = _scan_value(line, pos, depth)


def _parse_key(line: str, pos: int) -> tuple[list[str], int] | None:
    """A dotted TOML key starting at `pos`: its parts and the position after it."""
    parts: list[str] = []
    size = len(line)
    while True:
        while pos < size and line[pos] in " \t":
            pos += 1
        if pos >= size:
            return None
        char = line[pos]
        if char in "\"'":
            end = pos + 1
            while end < size and line[end] != char:
                end += 2 if char == '"' and line[end] == "\\" else 1
            if end >= size:
                return None
            raw = line[pos : end + 1]
            try:
                parts.append(tomllib.loads(f"k = {raw}")["k"])
            except tomllib.TOMLDecodeError:
                parts.append(raw[1:-1])
            pos = end + 1
        else:
            match = _BARE_KEY.match(line, pos)
            if match is None:
                return None
            parts.append(match.group())
            pos = match.end()
        while pos < size and line[pos] in " \t":
            pos += 1
        if pos < size and line[pos] == ".":
            pos += 1
            continue
        return parts, pos


def _scan_value(line: str, pos: int, depth: int) -> tuple[int, str | None]:
    """Bracket depth after a value fragment, and the delimiter of a multi-line string left open."""
    size = len(line)
    while pos < size:
        char = line[pos]
        if char == "#":
            break
        if char in "\"'":
            triple = char * 3
            if line.startswith(triple, pos):
                end = line.find(triple, pos + 3)
                if end < 0:
                    return depth, triple
                pos = end + 3
                continue
            pos += 1
            while pos < size and line[pos] != char:
                pos += 2 if char == '"' and line[pos] == "\\" else 1
            pos += 1
            continue
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        pos += 1
    return depth, None


# ---------------------------------------------------------------------------------------------------
# Source files


class _SourceFile:
    """One TOML file as last read: bytes, parsed table or syntax error, and its own key validation."""

    __slots__ = (
        "_index",
        "abs_dir",
        "data",
        "path",
        "racy",
        "raw",
        "rel_dir",
        "stat_key",
        "syntax_error",
        "unreadable",
        "value_errors",
        "values",
        "version",
    )

    def __init__(
        self,
        path: Path,
        rel_dir: str,
        abs_dir: str,
        stat_key: tuple[int, int, int],
        raw: bytes,
        version: int,
        read_error: str | None = None,
    ) -> None:
        self.path = path  #: as shown to operators: the folder root as given, joined with the relative path
        self.rel_dir = rel_dir  #: folder of the file under the root, "" for the root itself
        self.abs_dir = abs_dir  #: absolute folder of the file, for resolving relative paths
        self.stat_key = stat_key
        self.raw = raw
        self.version = version
        self.racy = False
        self.data: dict[str, Any] | None = None
        self.syntax_error: ConfigError | None = None
        self.values: dict[str, _Value] | None = None
        self.value_errors: list[ConfigError] = []
        self._index: _LineIndex | None = None
        self.unreadable = read_error is not None
        if read_error is not None:
            self.syntax_error = ConfigError(path, "file", f"cannot read: {read_error}")
        else:
            self._parse()

    def _parse(self) -> None:
        try:
            text = self.raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = self.raw[: exc.start].count(b"\n") + 1
            self.syntax_error = ConfigError(self.path, "file", f"not UTF-8 text (byte {exc.start})", line)
            return
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            self.syntax_error = _syntax_error(self.path, text, str(exc))
        except ValueError:  # tomllib's int() of a number with thousands of digits
            self.syntax_error = ConfigError(self.path, "syntax", "invalid TOML: a number has too many digits")
        except RecursionError:
            self.syntax_error = ConfigError(self.path, "syntax", "invalid TOML: arrays or tables nested too deeply")

    def line(self, path: tuple[str, ...]) -> int | None:
        """Line of a key path in this file; the index is built only when an error needs it."""
        if self._index is None:
            self._index = _LineIndex(self.raw.decode("utf-8", errors="replace"))
        return self._index.line_of(path)

    def error(self, path: tuple[str, ...], reason: str) -> ConfigError:
        return ConfigError(self.path, ".".join(path), reason, self.line(path))


def _syntax_error(path: Path, text: str, message: str) -> ConfigError:
    """Turn tomllib's message into a located error; its position is only in the text."""
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match:
        reason = f"invalid TOML: {message[: match.start()]} (column {match.group(2)})"
        return ConfigError(path, "syntax", reason, int(match.group(1)))
    match = re.search(r"\s*\(at end of document\)$", message)
    if match:
        reason = f"invalid TOML: {message[: match.start()]} (at end of file)"
        return ConfigError(path, "syntax", reason, max(1, len(text.splitlines())))
    return ConfigError(path, "syntax", f"invalid TOML: {message}")


#: A job file or vigil.toml larger than this is refused (bigger than any real one, by far; it also
#: bounds what is read from a file that never ends, such as one under /proc).
MAX_FILE_BYTES = 1024 * 1024
_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe, FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symlink",
}


def _not_regular(mode: int) -> str | None:
    """Why a file of this mode is not read (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return f"not a regular file ({_FILE_KINDS.get(stat.S_IFMT(mode), 'unknown type')}): only regular files are read"


@lru_cache(maxsize=1)
def _pseudo_devices() -> frozenset[int]:
    devices = set()
    for mount in ("/proc", "/sys"):
        try:
            devices.add(os.stat(mount).st_dev)
        except OSError:
            pass
    return frozenset(devices)


def _pseudo_file(device: int) -> str | None:
    """Kernel files look regular but may block, never end, or be consumed by a read (/proc/kmsg)."""
    if device in _pseudo_devices():
        return "a kernel pseudo-file (under /proc or /sys): only ordinary files are read"
    return None


def _link_problem(path: str, exc: OSError) -> str:
    """Why a `*.toml` symlink cannot be read, for its error line."""
    if exc.errno == errno.ELOOP:
        return "symlink loop: following the link leads back to a link (too many levels)"
    if isinstance(exc, FileNotFoundError):
        try:
            target = quote(os.readlink(path), whole=True)
        except OSError:
            target = "its target"
        return f"dangling symlink: {target} does not exist"
    return f"cannot follow symlink: {exc.strerror or exc}"


def _read(abs_path: str, *, follow: bool = True) -> bytes | OSError:
    """A file's bytes, refusing anything but a regular file before a single byte is read.

    It is stat()ed before it is opened (opening a device can have effects, a FIFO can block forever),
    opened non-blocking (a procfs file such as /proc/kmsg is "regular" but would block a read) and,
    unless it is a symlink the folder walk already resolved, without following symlinks, then
    checked again on the open descriptor in case it was replaced in between.
    """
    try:
        st = os.stat(abs_path, follow_symlinks=follow)
        problem = _not_regular(st.st_mode) or _pseudo_file(st.st_dev)
        if problem:
            return OSError(errno.EINVAL, problem)
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        fd = os.open(abs_path, flags)
        try:
            problem = _not_regular(os.fstat(fd).st_mode)
            if problem:
                return OSError(errno.EINVAL, problem)
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_FILE_BYTES:
                chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except BlockingIOError:
        return OSError(errno.EAGAIN, "the file blocks when read (not an ordinary file)")
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            return OSError(errno.ELOOP, "it became a symlink while being read")
        return exc
    if size > MAX_FILE_BYTES:
        return OSError(
            errno.EFBIG, f"larger than {MAX_FILE_BYTES} bytes ({MAX_FILE_BYTES // 1024**2} MiB): not a job file"
        )
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------------
# Value validation (pure)


class _Bad(Exception):
    """A key's value is invalid; `problems` holds (sub-path, reason) pairs so tables report every entry."""

    def __init__(self, reason: str, subpath: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.problems: list[tuple[tuple[str, ...], str]] = [(subpath, reason)]

    @classmethod
    def many(cls, problems: list[tuple[tuple[str, ...], str]]) -> _Bad:
        bad = cls(problems[0][1], problems[0][0])
        bad.problems = problems
        return bad


@dataclass(frozen=True, slots=True)
class _Value:
    """A validated value and the file that set it (errors about it point there)."""

    value: Any
    source: _SourceFile


def _expected(what: str, value: object) -> _Bad:
    return _Bad(f"expected {what}, got {describe(value)}")


def _as_string(value: object, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    if not allow_empty and not value.strip():
        raise _Bad("must not be empty")
    return value


def _as_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expected("a boolean (true or false)", value)
    return value


def _as_int(value: object, minimum: int, maximum: int = _SQLITE_INT_MAX) -> int:
    """An integer within bounds; by default it must at least fit the database (a 64-bit integer)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expected("an integer", value)
    if value < minimum:
        raise _Bad(f"must be at least {minimum}, got {show(value)}")
    if value > maximum:
        raise _Bad(f"must be at most {maximum}, got {show(value)}")
    return value


def _as_duration(value: object, *, positive: bool, floor: tuple[float, str, str] | None = None) -> float:
    """Seconds; `positive` rejects zero where a zero would make no sense (intervals, timeouts);
    `floor` is (seconds, as written, why) for keys where a tiny value would spin a loop."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _expected('a duration such as "30s" or "5m" (or a number of seconds)', value)
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    if not math.isfinite(seconds):
        raise _Bad(f"duration must be finite, got {show(value)}")
    if positive and seconds <= 0:
        raise _Bad(f"must be greater than zero, got {show(value)}")
    if floor is not None and seconds < floor[0]:
        raise _Bad(f"must be at least {floor[1]} ({floor[2]}), got {show(value)}")
    if positive and seconds < 1e-6:  # fire times and deadlines are whole microseconds
        raise _Bad(f"must be at least 1 microsecond, got {show(value)}")
    if seconds > MAX_DURATION_S:  # past this, fire times and deadlines overflow datetime
        raise _Bad(f"must be at most 100 years ({MAX_DURATION_TEXT}), got {show(value)}")
    return seconds


def _as_choice(value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise _expected("a string, one of " + ", ".join(choices), value)
    if value not in choices:
        raise _Bad(f"expected one of {', '.join(choices)}, got {show(value)}")
    return value


def _as_string_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list):
        raise _expected(f"an array of {what}", value)
    problems: list[tuple[tuple[str, ...], str]] = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, str):
            problems.append(((), f"item {number}: expected a string, got {describe(item)}"))
        elif not item.strip():
            problems.append(((), f"item {number}: must not be empty"))
    if problems:
        raise _Bad.many(problems)
    return list(dict.fromkeys(value))


@lru_cache(maxsize=4096)
def _cron_problem(expr: str) -> str | None:
    """Why a cron expression is invalid (naming the field at fault and its range), or None."""
    fields = expr.split()
    if len(fields) not in (5, 6):
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


def _as_cron(value: object) -> str:
    expr = " ".join(_as_string(value, allow_empty=False).split())
    problem = _cron_problem(expr)
    if problem:
        raise _Bad(problem)
    return expr


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _as_timezone(value: object) -> str:
    name = _as_string(value, allow_empty=False).strip()
    if _zone(name) is None:
        raise _Bad(f'unknown time zone {quote(name)}: use an IANA name such as "Europe/Berlin" or "UTC"')
    return name


def _as_at(value: object) -> datetime:
    """An aware or naive datetime; a naive one is made aware later with the job's time zone."""
    hint = 'a date and time such as 2025-06-01T09:30:00 or "2025-06-01T09:30:00+02:00"'
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        text = value.strip()
        if "T" not in text.upper() and " " not in text:
            raise _Bad(f"expected {hint}, got {show(value)} (a time of day is required)")
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise _Bad(f"expected {hint}, got {show(value)}") from None
    raise _expected(hint, value)


_NUL = "must not contain a NUL character (\\u0000): a process cannot be started with one"


def _byte_limit(size: int, limit: int, what: str = "") -> str:
    """`is 65537 bytes; at most 65536 bytes (64 KiB) are allowed`: both numbers exact, never rounded."""
    return f"is {size} bytes{what}; at most {limit} bytes ({limit // 1024} KiB) are allowed"


def _command_bytes(command: str | list[str]) -> int:
    """Bytes the command takes in the argument list: /bin/sh -c's one string, or each item + NUL."""
    if isinstance(command, str):
        return len(command.encode("utf-8", "surrogatepass"))
    return sum(len(item.encode("utf-8", "surrogatepass")) + 1 for item in command)


def _too_long_command(size: int) -> _Bad:
    return _Bad(f"{_byte_limit(size, MAX_COMMAND_BYTES)} (put a long script in a file and run that)")


def _as_command(value: object) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise _Bad("must not be empty")
        if "\0" in value:
            raise _Bad(_NUL)
        if (size := _command_bytes(value)) > MAX_COMMAND_BYTES:
            raise _too_long_command(size)
        return value
    if isinstance(value, list):
        if not value:
            raise _Bad("must not be an empty array")
        problems: list[tuple[tuple[str, ...], str]] = []
        for number, item in enumerate(value, start=1):
            if not isinstance(item, str):
                problems.append(((), f"item {number}: expected a string, got {describe(item)}"))
            elif "\0" in item:
                problems.append(((), f"item {number}: {_NUL}"))
        if problems:
            raise _Bad.many(problems)
        if not value[0].strip():
            raise _Bad("item 1 (the program to run) must not be empty")
        if (size := _command_bytes(value)) > MAX_COMMAND_BYTES:
            raise _too_long_command(size)
        return tuple(value)
    raise _expected("a string (run by /bin/sh -c) or an array of strings (exec'd directly)", value)


def _as_after(value: object) -> tuple[str, ...]:
    names = _as_string_list(value, "job names")
    problems: list[tuple[tuple[str, ...], str]] = []
    for name in names:
        if name.startswith(("/", "./", "../")) or name.endswith(".toml"):
            problems.append(((), f'{quote(name)}: use the job\'s full name under the folder, e.g. "etl/extract"'))
    if problems:
        raise _Bad.many(problems)
    return tuple(names)


def _as_env(value: object) -> dict[str, str]:
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
        raise _Bad.many(problems)
    if (size := _env_bytes(value)) > MAX_ENV_BYTES:
        raise _too_large_env(size)
    return dict(value)


def _env_bytes(env: Mapping[str, str]) -> int:
    """Bytes the variables take in the environment block: `NAME=value` and a NUL each."""
    return sum(len(f"{name}={item}".encode("utf-8", "surrogatepass")) + 1 for name, item in env.items())


def _too_large_env(size: int, where: str = "") -> _Bad:
    return _Bad(_byte_limit(size, MAX_ENV_BYTES, f" in total{where}"))


def _resolve_path(value: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _validate_keys(source: _SourceFile, data: Mapping[str, Any]) -> tuple[dict[str, _Value], list[ConfigError]]:
    """Check each key of a job or `_folder.toml` on its own; combinations are checked after merging."""
    values: dict[str, _Value] = {}
    errors: list[ConfigError] = []
    for key, raw in data.items():
        try:
            if key == "command":
                value: Any = _as_command(raw)
            elif key == "cron":
                value = _as_cron(raw)
            elif key == "every":
                value = _as_duration(raw, positive=True, floor=EVERY_FLOOR)
            elif key == "timeout":
                value = _as_duration(raw, positive=True)
            elif key in ("retry_delay", "catchup_window"):
                value = _as_duration(raw, positive=False)
            elif key == "at":
                value = _as_at(raw)
            elif key == "timezone":
                value = _as_timezone(raw)
            elif key == "after":
                value = _as_after(raw)
            elif key == "retries":
                value = _as_int(raw, 0, MAX_RETRIES)
            elif key == "overlap":
                value = Overlap(_as_choice(raw, tuple(Overlap)))
            elif key == "max_queued":
                value = _as_int(raw, 1, MAX_QUEUED_LIMIT)
            elif key == "catchup":
                value = Catchup(_as_choice(raw, tuple(Catchup)))
            elif key == "agent":
                value = _as_string(raw, allow_empty=False)
            elif key == "env":
                value = _as_env(raw)
            elif key == "workdir":
                if isinstance(raw, str) and "\0" in raw:
                    raise _Bad(_NUL)
                value = _resolve_path(_as_string(raw, allow_empty=False), source.abs_dir)
            elif key == "enabled":
                value = _as_bool(raw)
            elif key == "description":
                value = _as_string(raw)
            elif key == "tags":
                value = tuple(_as_string_list(raw, "strings"))
            else:
                errors.append(source.error((key,), _unknown_key_reason(key, JOB_KEYS)))
                continue
        except _Bad as bad:
            errors.extend(source.error((key, *sub), reason) for sub, reason in bad.problems)
            continue
        values[key] = _Value(value, source)
    return values, errors


def job_name_problem(name: str) -> str | None:
    """Why no job can have this name (e.g. for `vigil runs --job`), or None: a job's name is its
    file's path under the folder, and every part of it follows the naming rule."""
    if all(_NAME_SEGMENT.fullmatch(part) for part in name.split("/")):
        return None
    return f"job file and folder names {_NAME_RULE}"


def _unknown_key_reason(key: str, known: Iterable[str], *, where: str = "job") -> str:
    """`unknown key`, with where the key does belong when it is another file's or table's setting
    (`where` is the place it was found: "job", "top" of vigil.toml, "scheduler", "agent", "pool"),
    else the closest known key."""
    home = _key_home(key, where)
    if home:
        return f"unknown key; {home}"
    close = difflib.get_close_matches(key, list(known), n=1)
    return "unknown key" + (f" (did you mean {quote(close[0])}?)" if close else "")


def _key_home(key: str, where: str) -> str | None:
    """Where a key belongs, said from the file it was found in; None when it is nobody's key."""
    in_settings = where != "job"  # found in vigil.toml: the place is a table of the same file
    if key in JOB_KEYS and where != "job":
        return f"`{key}` is a job setting (a job file or _folder.toml)"
    if key in SCHEDULER_KEYS and where != "scheduler":
        return f"`{key}` is a [scheduler] setting" + (": put it under [scheduler]" if in_settings else " in vigil.toml")
    if key in AGENT_KEYS and where != "agent":
        return f"`{key}` is an [agents.NAME] setting" + ("" if in_settings else " in vigil.toml")
    if key == "mode" and where != "pool":
        return f"`{key}` is a [pools.NAME] setting" + ("" if in_settings else " in vigil.toml")
    if key in ("scheduler", "pools") and where == "job":
        return f"[{key}{'' if key == 'scheduler' else '.NAME'}] is a table of vigil.toml"
    return None


def _merge(layers: Iterable[dict[str, _Value]]) -> dict[str, _Value]:
    """Folder defaults, outermost first, then the job: `env` merges by name, every other key replaces."""
    merged: dict[str, _Value] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "env" and "env" in merged:
                merged["env"] = _Value({**merged["env"].value, **value.value}, value.source)
            else:
                merged[key] = value
    return merged


def _build_spec(
    name: str, source: _SourceFile, merged: dict[str, _Value], targets: _AgentTargets
) -> tuple[JobSpec | None, list[ConfigError]]:
    """The JobSpec of one job from its merged keys, with the checks that need the whole job."""
    errors: list[ConfigError] = []
    if "command" not in merged:
        errors.append(ConfigError(source.path, "command", "required: set it here or in a _folder.toml above"))
    agent = merged.get("agent")
    if agent is not None and agent.source is source:
        problem = targets.problem(agent.value)
        if problem:
            errors.append(source.error(("agent",), problem))
    env = merged.get("env")
    if env is not None and (size := _env_bytes(env.value)) > MAX_ENV_BYTES:
        # Each file's own table is within the cap; only their merge is too large.
        reason = str(_too_large_env(size, " with the env of the _folder.toml files above"))
        errors.append(
            source.error(("env",), reason) if "env" in (source.data or {}) else ConfigError(source.path, "env", reason)
        )
    if errors:
        return None, errors
    values = {key: value.value for key, value in merged.items()}
    zone_name = values.get("timezone", "UTC")
    at = values.get("at")
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=_zone(zone_name))
    if at is not None:
        try:
            year = at.astimezone(UTC).year
        except OverflowError:  # 9999-12-31T23:00 in New York is past datetime's last year in UTC
            year = 0
        if not _AT_FIRST_YEAR <= year <= _AT_LAST_YEAR:
            where = merged["at"].source
            error = where.error(("at",), f"must be between the years {_AT_FIRST_YEAR} and {_AT_LAST_YEAR} (UTC)")
            return None, [error]
    spec = JobSpec(
        name=name,
        path=str(source.path),
        command=values["command"],
        cron=values.get("cron"),
        every=values.get("every"),
        at=at,
        timezone=zone_name,
        after=values.get("after", ()),
        timeout=values.get("timeout"),
        retries=values.get("retries", 0),
        retry_delay=values.get("retry_delay", 10.0),
        overlap=values.get("overlap", Overlap.SKIP),
        max_queued=values.get("max_queued", JobSpec.max_queued),  # the class attribute is the default
        catchup=values.get("catchup", Catchup.LATEST),
        catchup_window=values.get("catchup_window", 3600.0),
        agent=values.get("agent"),
        env=tuple(sorted(values.get("env", {}).items())),
        workdir=values.get("workdir"),
        enabled=values.get("enabled", True),
        description=values.get("description", ""),
        tags=values.get("tags", ()),
    )
    return spec, []


# ---------------------------------------------------------------------------------------------------
# vigil.toml


@dataclass(frozen=True)
class _AgentTargets:
    """What an `agent =` key may name: declared agents and pools, and those declared but invalid."""

    valid: frozenset[str] = frozenset()
    invalid: frozenset[str] = frozenset()

    def problem(self, name: str) -> str | None:
        if name in self.valid:
            return None
        if name in self.invalid:
            return f"agent or pool {quote(name)} is declared in {SETTINGS_FILE} but its definition is invalid"
        known = ", ".join(sorted(self.valid)) or "none declared"
        return (
            f"unknown agent or pool {quote(name)} (declare [agents.{name}] or [pools.{name}] in {SETTINGS_FILE};"
            f" known: {known})"
        )


_Report = Callable[[tuple[str, ...], str], None]


def _as_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _expected('a number of bytes or a size such as "512KB" or "1MB"', value)
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise _Bad(f'bad size {show(value)}: use bytes or a number with KB, MB or GB, e.g. "512KB" or "1MB"')
        unit = (match.group(2) or "b").lower()[0]
        scaled = float(match.group(1)) * _SIZE_UNITS[unit]
        size = int(scaled) if scaled <= _MAX_LOG_CAP else _MAX_LOG_CAP + 1  # also inf, from many digits
    if size < 1:
        raise _Bad(f"must be at least 1 byte, got {show(value)}")
    if size > _MAX_LOG_CAP:
        raise _Bad(f"must be at most 1024GB, got {show(value)}")
    return size


def _parse_settings(source: _SourceFile | None, root_abs: str) -> tuple[Settings, list[ConfigError], _AgentTargets]:
    """Settings from vigil.toml; invalid entries are left out (defaults used) and reported."""
    if source is None:
        return Settings(), [], _AgentTargets()
    if source.syntax_error is not None:
        return Settings(), [source.syntax_error], _AgentTargets()
    data = source.data or {}
    errors: list[ConfigError] = []
    scheduler: dict[str, Any] = {}
    agents: dict[str, AgentSpec] = {}
    pools: dict[str, PoolSpec] = {}
    invalid: set[str] = set()

    def bad(path: tuple[str, ...], reason: str) -> None:
        errors.append(source.error(path, reason))

    for key, raw in data.items():
        if key not in ("scheduler", "agents", "pools"):
            bad((key,), _unknown_key_reason(key, ("scheduler", "agents", "pools"), where="top"))
        elif not isinstance(raw, dict):
            bad(
                (key,),
                f"expected a table [{key}{'' if key == 'scheduler' else '.NAME'}], got {describe(raw)}",
            )

    section = data.get("scheduler")
    if isinstance(section, dict):
        for key, raw in section.items():
            try:
                if key in ("retention", "heartbeat_timeout"):
                    scheduler[key] = _as_duration(raw, positive=True)
                elif key == "heartbeat_interval":
                    scheduler[key] = _as_duration(raw, positive=True, floor=_HEARTBEAT_FLOOR)
                elif key == "agent_poll_interval":
                    scheduler[key] = _as_duration(raw, positive=True, floor=_AGENT_POLL_FLOOR)
                elif key in ("kill_grace", "agent_wait_limit"):
                    scheduler[key] = _as_duration(raw, positive=False)
                elif key == "log_cap":
                    scheduler[key] = _as_size(raw)
                elif key == "max_missed_rows":
                    scheduler[key] = _as_int(raw, 1, 1_000_000)
                else:
                    bad(("scheduler", key), _unknown_key_reason(key, SCHEDULER_KEYS, where="scheduler"))
            except _Bad as problem:
                for sub, reason in problem.problems:
                    bad(("scheduler", key, *sub), reason)
        interval = scheduler.get("heartbeat_interval", Settings.heartbeat_interval)
        timeout = scheduler.get("heartbeat_timeout", Settings.heartbeat_timeout)
        if timeout <= interval:
            bad(("scheduler", "heartbeat_timeout"), f"must be longer than heartbeat_interval ({interval:g}s)")
            scheduler.pop("heartbeat_timeout", None)
            scheduler.pop("heartbeat_interval", None)

    section = data.get("agents")
    if isinstance(section, dict):
        for name, table in section.items():
            spec = _parse_agent(name, table, root_abs, bad)
            if spec is None:
                invalid.add(name)
            else:
                agents[name] = spec

    section = data.get("pools")
    if isinstance(section, dict):
        agent_tables = data.get("agents")
        declared = set(agent_tables) if isinstance(agent_tables, dict) else set()
        for name, table in section.items():
            pool = _parse_pool(name, table, declared, agents, bad)
            if pool is None:
                invalid.add(name)
            else:
                pools[name] = pool

    for name in sorted(set(pools) & set(agents)):
        bad(
            ("pools", name),
            f"a pool cannot have the same name as agent {quote(name)} (`agent =` would be ambiguous)",
        )
        del pools[name]
        invalid.add(name)

    settings = Settings(**scheduler, agents=agents, pools=pools)
    targets = _AgentTargets(frozenset(agents) | frozenset(pools), frozenset(invalid - set(agents) - set(pools)))
    errors.sort(key=lambda error: error.line or 0)
    return settings, errors, targets


def _parse_agent(name: str, table: object, root_abs: str, bad: _Report) -> AgentSpec | None:
    where = ("agents", name)
    if not isinstance(table, dict):
        bad(where, f"expected a table [agents.{name}] with a url, got {describe(table)}")
        return None
    ok = True
    if not _NAME_SEGMENT.fullmatch(name):
        bad(where, f"agent names {_NAME_RULE}")
        ok = False
    fields: dict[str, str] = {}
    for key, raw in table.items():
        if key not in AGENT_KEYS:
            bad((*where, key), _unknown_key_reason(key, AGENT_KEYS, where="agent"))
            ok = False
        elif not isinstance(raw, str) or not raw.strip():
            bad((*where, key), f"expected a non-empty string, got {describe(raw)}")
            ok = False
        else:
            fields[key] = raw.strip()
    url = fields.get("url")
    if "url" not in table:
        bad(where, 'required key url is missing (e.g. url = "https://host:8700")')
        ok = False
    elif url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            bad((*where, "url"), f"expected an http:// or https:// URL with a host, got {quote(url)}")
            ok = False
        elif parts.scheme == "http":
            for key in ("tls_ca", "tls_cert", "tls_key"):
                if key in fields:
                    bad((*where, key), "TLS settings need an https:// url")
                    ok = False
    if "tls_key" in fields and "tls_cert" not in fields:
        bad((*where, "tls_key"), "tls_key needs tls_cert (the client certificate)")
        ok = False
    if not ok or url is None:
        return None
    paths = {key: _resolve_path(fields[key], root_abs) for key in AGENT_KEYS[1:] if key in fields}
    return AgentSpec(name=name, url=url, **paths)


def _parse_pool(
    name: str, table: object, declared: set[str], agents: dict[str, AgentSpec], bad: _Report
) -> PoolSpec | None:
    where = ("pools", name)
    if not isinstance(table, dict):
        bad(where, f"expected a table [pools.{name}] with agents = [...], got {describe(table)}")
        return None
    ok = True
    for key in table:
        if key not in POOL_KEYS:
            bad((*where, key), _unknown_key_reason(key, POOL_KEYS, where="pool"))
            ok = False
    mode = "fixed-priority"
    if "mode" in table:
        try:
            mode = _as_choice(table["mode"], POOL_MODES)
        except _Bad as problem:
            bad((*where, "mode"), str(problem))
            ok = False
    members: list[str] = []
    if "agents" not in table:
        bad(where, 'required key agents is missing (e.g. agents = ["a1", "a2"])')
        ok = False
    else:
        try:
            members = _as_string_list(table["agents"], "agent names")
            if not members:
                raise _Bad("must name at least one agent")
        except _Bad as problem:
            for _sub, reason in problem.problems:
                bad((*where, "agents"), reason)
            return None
        for member in members:
            if member not in declared:
                bad((*where, "agents"), f"unknown agent {quote(member)} (declare it as [agents.{member}])")
                ok = False
            elif member not in agents:
                ok = False  # declared but invalid: already reported there
    if not ok:
        return None
    return PoolSpec(name=name, agents=tuple(members), mode=mode)


def load_settings(root: Path) -> tuple[Settings, list[ConfigError]]:
    """Settings from `root/vigil.toml` (optional: defaults when absent) and every error in it."""
    root = Path(root)
    path = root / SETTINGS_FILE
    raw = _read(str(path))
    if isinstance(raw, FileNotFoundError):
        return Settings(), []
    if isinstance(raw, OSError):
        return Settings(), [ConfigError(path, "file", f"cannot read: {raw.strerror or raw}")]
    source = _SourceFile(path, "", os.path.abspath(root), (0, 0, 0), raw, 0)
    settings, errors, _targets = _parse_settings(source, os.path.abspath(root))
    return settings, errors


# ---------------------------------------------------------------------------------------------------
# The folder and live reload


@lru_cache(maxsize=65536)
def _chain(rel_dir: str) -> tuple[str, ...]:
    """The folders whose `_folder.toml` apply to a job in `rel_dir`, outermost first."""
    if not rel_dir:
        return ("",)
    parts = rel_dir.split("/")
    return ("", *("/".join(parts[: index + 1]) for index in range(len(parts))))


@dataclass
class _JobState:
    """The cached evaluation of one job file against its folder defaults and the declared agents."""

    signature: tuple[Any, ...]
    spec: JobSpec | None
    errors: list[ConfigError]
    after_source: _SourceFile  #: the file whose `after` applies (errors about `after` point there)


@dataclass
class _Walk:
    seen: list[str] = field(default_factory=list)  #: every job-folder file, relative to the root
    stale: list[tuple[str, str, tuple[int, int, int]]] = field(default_factory=list)  #: (rel, abs, stat)
    errors: list[ConfigError] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  #: symlinked files (rel, abs)
    watched: bool = False  #: every folder walked is under an inotify watch


# inotify(7) event bits: anything that can add, remove, rename or rewrite a file or folder
# (MODIFY ATTRIB CLOSE_WRITE MOVED_FROM MOVED_TO CREATE DELETE DELETE_SELF MOVE_SELF).
_IN_EVENTS = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
_IN_ONLYDIR, _IN_DONT_FOLLOW = 0x01000000, 0x02000000
#: Even with inotify, the whole folder is walked this often (a safety net for changes it cannot see).
_FULL_WALK_EVERY = 30.0


class _DirWatch:
    """Linux inotify on every folder of the tree (through libc, with ctypes).

    With 10,000 job files, walking the folder costs about 10,000 stat() calls; done every second
    that alone was about 4 % of a core while nothing changed. With a watch on every folder, `scan()`
    walks only after the kernel reported an event (or every `_FULL_WALK_EVERY` seconds).
    """

    def __init__(self, fd: int, add_watch: Any) -> None:
        self.fd = fd
        self._add_watch = add_watch
        weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls) -> _DirWatch | None:
        """A watch, or None where inotify is unavailable (not Linux, or the per-user limit is reached)."""
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            init1, add_watch = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError):
            return None
        add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        fd = init1(os.O_NONBLOCK | os.O_CLOEXEC)
        return cls(fd, add_watch) if fd >= 0 else None

    def add(self, abs_dir: str) -> bool:
        """Watch one folder (again: adding a watched folder is a no-op). False if it cannot be watched."""
        return self._add_watch(self.fd, os.fsencode(abs_dir), _IN_EVENTS | _IN_ONLYDIR | _IN_DONT_FOLLOW) >= 0

    def changed(self) -> bool:
        """Whether any event arrived since the last call (reads and drops them all)."""
        changed = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            except OSError:
                return True
            if not data:
                return changed
            changed = True


class JobFolder:
    """A job folder kept loaded: `scan()` re-reads only what changed and keeps last valid versions."""

    def __init__(self, root: Path, *, keep_last_valid: bool = True) -> None:
        self.root = Path(root)
        #: The scheduler keeps running a broken file's last valid version; a reader that wants the
        #: folder as the next scheduler would load it (`keep_last_valid=False`) gets only valid files.
        self.keep_last_valid = keep_last_valid
        self._root_abs = os.path.abspath(self.root)
        self._files: dict[str, _SourceFile] = {}  #: by path relative to the root, `/`-separated
        self._version = 0
        self._settings = Settings()
        self._settings_errors: list[ConfigError] = []
        self._targets = _AgentTargets()
        self._targets_version = 0
        self._have_valid_settings = False
        self._settings_version: int | None = None
        self._states: dict[str, _JobState] = {}
        self._last_valid: dict[str, JobSpec] = {}
        self._jobs: dict[str, JobSpec] = {}
        self._errors: list[ConfigError] = []
        self._walk_errors: list[ConfigError] = []
        self._loaded = False
        self._watch: _DirWatch | None = None
        self._watch_tried = False
        self._watched = False  #: the last walk put every folder under the watch
        self._walked_at = 0.0
        self._links: list[tuple[str, str]] = []

    # -- public --------------------------------------------------------------------------------------

    def scan(self) -> ScanResult:
        """Re-read changed files and re-evaluate what depends on them; cheap when nothing changed."""
        if self._loaded and self._unchanged():
            return ScanResult(dict(self._jobs), set(), set(), list(self._errors), self._settings)
        if self._loaded and not self._watch_tried:
            # Only a folder scanned more than once (the scheduler's) gets a watch: a one-off load
            # (the CLI) must not hold an inotify instance, of which a user has only 128.
            self._watch_tried = True
            self._watch = _DirWatch.open()
        walk = self._walk()
        self._watched, self._links, self._walked_at = walk.watched, walk.links, time.monotonic()
        dirty = self._refresh(walk)
        if [e.format() for e in walk.errors] != [e.format() for e in self._walk_errors]:
            self._walk_errors = walk.errors
            dirty = True
        if not dirty and self._loaded:
            return ScanResult(dict(self._jobs), set(), set(), list(self._errors), self._settings)
        self._loaded = True
        previous = self._jobs
        self._evaluate()
        changed = {name for name, spec in self._jobs.items() if previous.get(name) != spec}
        removed = set(previous) - set(self._jobs)
        return ScanResult(dict(self._jobs), changed, removed, list(self._errors), self._settings)

    def _unchanged(self) -> bool:
        """True when no file can have changed since the last walk, so the walk can be skipped."""
        watch = self._watch
        if watch is None or not self._watched:
            return False
        if watch.changed() or time.monotonic() - self._walked_at >= _FULL_WALK_EVERY:
            return False
        for rel, abs_path in self._links:  # a symlink's target may live outside every watched folder
            source = self._files.get(rel)
            try:
                st = os.stat(abs_path)
            except OSError:
                return False
            if source is None or source.racy or source.stat_key != (st.st_mtime_ns, st.st_size, st.st_ino):
                return False
        return True

    # -- reading -------------------------------------------------------------------------------------

    def _walk(self) -> _Walk:
        """Stat every non-hidden `*.toml` below the root (symlinked folders are not followed).

        Comparing with the cache happens here, in the loop, because this is all an unchanged scan does:
        one stat() per file and no other work per file.
        """
        walk = _Walk()
        if not os.path.isdir(self._root_abs):
            walk.errors.append(ConfigError(self.root, "folder", "job folder does not exist or is not a folder"))
            return walk
        known = self._files
        seen = walk.seen
        stale = walk.stale
        watch = self._watch
        walk.watched = watch is not None
        stack: list[tuple[str, str]] = [(self._root_abs, "")]
        while stack:
            abs_dir, prefix = stack.pop()
            if watch is not None and not watch.add(abs_dir):  # before listing: no change slips between
                walk.watched = False
            try:
                entries = os.scandir(abs_dir)
            except OSError as exc:
                walk.errors.append(ConfigError(self.root / prefix, "folder", f"cannot list: {exc.strerror}"))
                continue
            with entries:
                for entry in entries:
                    name = entry.name
                    if name[0] == ".":
                        continue
                    try:
                        if name.endswith(".toml"):
                            rel = prefix + name
                            link = entry.is_symlink()
                            if link:
                                try:
                                    st = os.stat(entry.path)
                                except OSError as exc:
                                    walk.errors.append(
                                        ConfigError(self.root / rel, "file", _link_problem(entry.path, exc))
                                    )
                                    continue
                            else:
                                st = entry.stat(follow_symlinks=False)
                            if stat.S_ISDIR(st.st_mode):
                                if not link:  # a folder named *.toml is a folder; symlinked ones are not followed
                                    stack.append((entry.path, rel + "/"))
                                continue
                            problem = _not_regular(st.st_mode)
                            if problem:  # a FIFO or a device is never opened: it could block or have effects
                                walk.errors.append(ConfigError(self.root / rel, "file", problem))
                                continue
                            seen.append(rel)
                            if link:
                                walk.links.append((rel, entry.path))
                            stat_key = (st.st_mtime_ns, st.st_size, st.st_ino)
                            old = known.get(rel)
                            if old is None or old.stat_key != stat_key or old.racy:
                                stale.append((rel, entry.path, stat_key))
                        elif entry.is_dir(follow_symlinks=False):
                            stack.append((entry.path, prefix + name + "/"))
                    except OSError:
                        continue  # vanished between listing and stat: the next scan sees the truth
        return walk

    def _refresh(self, walk: _Walk) -> bool:
        """Bring `_files` up to date with the walk; True when any file's content came, went or changed."""
        dirty = False
        files = self._files
        if len(walk.seen) != len(files) or walk.stale:
            present = set(walk.seen)
            for rel in [rel for rel in files if rel not in present]:
                del files[rel]
                dirty = True
        now = time.time_ns()
        linked = {rel for rel, _path in walk.links}
        for rel, abs_path, stat_key in walk.stale:
            old = files.get(rel)
            raw = _read(abs_path, follow=rel in linked)
            read_error = None
            if isinstance(raw, FileNotFoundError):
                if files.pop(rel, None) is not None:
                    dirty = True
                continue  # deleted since the walk: the next scan agrees
            if isinstance(raw, OSError):
                read_error = str(raw.strerror or raw)
                raw = b""
            if old is not None and read_error is None and not old.unreadable and old.raw == raw:
                old.stat_key = stat_key
                old.racy = now - stat_key[0] < _RACY_WINDOW_NS
                continue
            self._version += 1
            rel_dir = rel.rpartition("/")[0]
            source = _SourceFile(
                self.root / rel,
                rel_dir,
                os.path.join(self._root_abs, rel_dir),
                stat_key,
                raw,
                self._version,
                read_error,
            )
            source.racy = now - stat_key[0] < _RACY_WINDOW_NS
            files[rel] = source
            dirty = True
        return dirty

    # -- evaluation ----------------------------------------------------------------------------------

    def _evaluate(self) -> None:
        """Recompute effective jobs and errors; per-job work is cached on the versions it depends on."""
        errors: dict[tuple[str, int | None, str, str], ConfigError] = {}

        def report(error: ConfigError) -> None:
            errors.setdefault((error.path, error.line, error.key, error.reason), error)

        for error in self._walk_errors:
            report(error)

        folders: dict[str, _SourceFile] = {}
        job_sources: dict[str, _SourceFile] = {}
        settings_source: _SourceFile | None = None
        for rel, source in sorted(self._files.items()):
            if rel == SETTINGS_FILE:
                settings_source = source
            elif rel == FOLDER_FILE or rel.endswith("/" + FOLDER_FILE):
                folders[source.rel_dir] = source
            else:
                job_sources[rel[:-5]] = source

        self._update_settings(settings_source)
        for error in self._settings_errors:
            report(error)

        # _folder.toml files: their own keys, their agent, their `after` names
        blocked: set[str] = set()
        for rel_dir, source in folders.items():
            problems = self._folder_problems(source, job_sources)
            for error in problems:
                report(error)
            if problems:
                blocked.add(rel_dir)

        # each job on its own, cached on (its version, its folders' versions, declared agents)
        candidates: dict[str, JobSpec] = {}
        after_sources: dict[str, _SourceFile] = {}
        states: dict[str, _JobState] = {}
        for name, source in job_sources.items():
            state = self._job_state(name, source, folders)
            states[name] = state
            after_sources[name] = state.after_source
            for error in state.errors:
                report(error)
            if state.spec is not None and not any(d in blocked for d in _chain(source.rel_dir)):
                candidates[name] = state.spec
        self._states = states

        # `after` names must exist as job files (a file that is itself invalid still counts)
        for name in list(candidates):
            spec = candidates[name]
            after_source = after_sources[name]
            missing = [up for up in spec.after if up not in job_sources]
            if missing and after_source is job_sources[name]:
                for up in missing:
                    report(after_source.error(("after",), f"job {quote(up)} does not exist"))
                del candidates[name]

        # cycles, on the graph the scheduler would actually use (candidates, else last valid versions)
        last_valid = {name: spec for name, spec in self._last_valid.items() if name in job_sources}
        if not self.keep_last_valid:
            last_valid = {}
        effective: dict[str, JobSpec] = {}
        for name in job_sources:
            chosen = candidates.get(name) or last_valid.get(name)
            if chosen is not None:
                effective[name] = chosen
        while True:
            cycles = _cycles(effective)
            if not cycles:
                break
            for name, path in cycles.items():
                source = after_sources.get(name) or job_sources[name]
                report(source.error(("after",), "cycle: " + " → ".join(path) + " (each waits for the next)"))
                if name in candidates and effective.get(name) is candidates[name]:
                    del candidates[name]
                    fallback = last_valid.get(name)
                    if fallback is not None:
                        effective[name] = fallback
                    else:
                        effective.pop(name, None)
                else:
                    effective.pop(name, None)

        for name, spec in candidates.items():
            last_valid[name] = spec
        self._last_valid = last_valid
        self._jobs = effective
        self._errors = sorted(errors.values(), key=lambda e: (e.path, e.line or 0, e.key, e.reason))

    def _update_settings(self, source: _SourceFile | None) -> None:
        """Re-read settings when vigil.toml changed; a broken one keeps the last valid settings."""
        version = source.version if source is not None else 0
        if self._settings_version == version:
            return
        self._settings_version = version
        settings, errors, targets = _parse_settings(source, self._root_abs)
        self._settings_errors = errors
        if errors and self._have_valid_settings:
            return
        self._have_valid_settings = not errors
        self._settings = settings
        if targets != self._targets:
            self._targets = targets
            self._targets_version += 1

    def _folder_problems(self, source: _SourceFile, jobs: Mapping[str, _SourceFile]) -> list[ConfigError]:
        if source.syntax_error is not None:
            return [source.syntax_error]
        values, errors = self._own_values(source)
        errors = list(errors)
        agent = values.get("agent")
        if agent is not None:
            problem = self._targets.problem(agent.value)
            if problem:
                errors.append(source.error(("agent",), problem))
        after = values.get("after")
        if after is not None:
            errors.extend(
                source.error(("after",), f"job {quote(up)} does not exist") for up in after.value if up not in jobs
            )
        return errors

    @staticmethod
    def _own_values(source: _SourceFile) -> tuple[dict[str, _Value], list[ConfigError]]:
        if source.values is None:
            source.values, source.value_errors = _validate_keys(source, source.data or {})
        return source.values, source.value_errors

    def _job_state(self, name: str, source: _SourceFile, folders: Mapping[str, _SourceFile]) -> _JobState:
        chain = [folders[d] for d in _chain(source.rel_dir) if d in folders]
        own_agent = source.data is not None and "agent" in source.data
        signature = (
            source.version,
            tuple(folder.version for folder in chain),
            self._targets_version if own_agent else 0,
        )
        state = self._states.get(name)
        if state is not None and state.signature == signature:
            return state
        if source.syntax_error is not None:
            return _JobState(signature, None, [source.syntax_error], source)
        values, errors = self._own_values(source)
        errors = list(errors)
        if job_name_problem(name):
            errors.append(
                ConfigError(
                    source.path,
                    "name",
                    f"{quote(name)}: file and folder names {_NAME_RULE}",
                )
            )
        layers = [self._own_values(folder)[0] for folder in chain if folder.syntax_error is None]
        merged = _merge([*layers, values])
        after = merged.get("after")
        after_source = after.source if after is not None else source
        if errors:
            return _JobState(signature, None, errors, after_source)
        spec, build_errors = _build_spec(name, source, merged, self._targets)
        return _JobState(signature, spec, build_errors, after_source)


def _cycles(graph: Mapping[str, JobSpec]) -> dict[str, list[str]]:
    """Each job on a cycle of `after` edges, with one cycle through it (start and end repeated)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: dict[str, list[str]] = {}
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, edge = work.pop()
            if edge == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            upstream = [up for up in graph[node].after if up in graph]
            if edge < len(upstream):
                work.append((node, edge + 1))
                nxt = upstream[edge]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node].after:
                    members = set(component)
                    for member in component:
                        found[member] = _cycle_through(member, members, graph)
    return found


def _cycle_through(start: str, members: set[str], graph: Mapping[str, JobSpec]) -> list[str]:
    """The shortest `after` path from `start` back to itself inside one strongly connected set."""
    reached_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for up in graph[node].after:
                if up == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(reached_from[path[-1]])
                    return [*reversed(path), start]
                if up in members and up not in reached_from:
                    reached_from[up] = node
                    following.append(up)
        frontier = following
    return [start, start]


def load_folder(root: Path) -> LoadResult:
    """Load every job of a folder once (the CLI's view; the scheduler keeps a JobFolder instead)."""
    result = JobFolder(root).scan()
    return LoadResult(jobs=result.jobs, errors=result.errors, settings=result.settings)
