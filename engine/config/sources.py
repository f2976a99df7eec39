"""A TOML file of the job folder as read: its bytes, its table or syntax error, and the file a value came from.

Owns the careful read (only regular files, bounded, never blocking), turning tomllib's syntax errors into
located `ConfigError`s, and `Value` (a validated value and the file that set it, so an error about a key
set in a `_folder.toml` points there). Imports `positions` and `engine.errors`/`engine.text` only.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.config.positions import LineIndex
from engine.errors import ConfigError
from engine.text import quote

__all__ = ["MAX_FILE_BYTES", "SourceFile", "Value", "link_problem", "not_regular", "read_file"]


@dataclass(frozen=True, slots=True)
class Value:
    """A validated value and the file that set it (errors about it point there)."""

    value: Any
    source: SourceFile


class SourceFile:
    """One TOML file as last read: bytes, parsed table or syntax error, and its own key validation.

    It is parsed when its keys, table or syntax error are first asked for, not when read: a folder
    evaluates each file in turn, so one file's parse is dropped before the next one's is made (parsing
    every file of a 10,000-job folder first held all their tables at once, and left the heap they
    took fragmented under the values kept)."""

    __slots__ = (
        "_index",
        "_keys",
        "_syntax_error",
        "abs_dir",
        "data",
        "path",
        "racy",
        "raw",
        "rel_dir",
        "stat_key",
        "unreadable",
        "value_errors",
        "values",
        "version",
    )

    def __init__(
        self,
        path: str | Path,
        rel_dir: str,
        abs_dir: str,
        stat_key: int,
        raw: bytes,
        version: int,
        read_error: str | None = None,
    ) -> None:
        #: as shown to operators: the folder root as given, joined with the relative path (a str: a Path
        #: per file costs ~300 bytes at 10,000 jobs, and every use wants the text)
        self.path = str(path)
        self.rel_dir = rel_dir  #: folder of the file under the root, "" for the root itself
        self.abs_dir = abs_dir  #: absolute folder of the file, for resolving relative paths
        self.stat_key = stat_key  #: what its stat() said when read (the folder's stamp of it)
        self.raw = raw
        #: which reading of vigil.toml or a `_folder.toml` this is; 0 for a job file, whose evaluation
        #: compares the SourceFile itself
        self.version = version
        self.racy = False
        #: the parsed table; a job folder drops it once its keys are validated (`values` keep what is used)
        self.data: dict[str, Any] | None = None
        self._keys: tuple[str, ...] | None = None  #: None until parsed
        self._syntax_error: ConfigError | None = None
        self.values: dict[str, Value] | None = None
        self.value_errors: tuple[ConfigError, ...] = ()
        self._index: LineIndex | None = None
        self.unreadable = read_error is not None
        if read_error is not None:
            self._keys = ()
            self._syntax_error = ConfigError(path, "file", f"cannot read: {read_error}")

    @property
    def keys(self) -> tuple[str, ...]:
        """The table's top-level keys (kept after `data` is dropped); () when it does not parse."""
        if self._keys is None:
            self._parse()
        return self._keys or ()

    @property
    def syntax_error(self) -> ConfigError | None:
        """Why the file does not parse (or cannot be read); None when it parses."""
        if self._keys is None:
            self._parse()
        return self._syntax_error

    def _parse(self) -> None:
        self._keys = ()
        try:
            text = self.raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = self.raw[: exc.start].count(b"\n") + 1
            self._syntax_error = ConfigError(self.path, "file", f"not UTF-8 text (byte {exc.start})", line)
            return
        try:
            # Interned keys: one "command", "cron", ... for every file, not one per file.
            self.data = {sys.intern(key): value for key, value in tomllib.loads(text).items()}
            self._keys = _one_key_list(tuple(self.data))
        except tomllib.TOMLDecodeError as exc:
            self._syntax_error = _syntax_error(self.path, text, str(exc))
        except ValueError:  # tomllib's int() of a number with thousands of digits
            self._syntax_error = ConfigError(self.path, "syntax", "invalid TOML: a number has too many digits")
        except RecursionError:
            self._syntax_error = ConfigError(self.path, "syntax", "invalid TOML: arrays or tables nested too deeply")

    def table(self) -> dict[str, Any]:
        """The parsed table ({} when it does not parse), parsed again from `raw` if it was dropped."""
        if self.data is None and self.syntax_error is None:
            self._parse()
        return self.data or {}

    def line(self, path: tuple[str, ...]) -> int | None:
        """Line of a key path in this file; the index is built only when an error needs it."""
        if self._index is None:
            self._index = LineIndex(self.raw.decode("utf-8", errors="replace"))
        return self._index.line_of(path)

    def error(self, path: tuple[str, ...], reason: str) -> ConfigError:
        return ConfigError(self.path, ".".join(path), reason, self.line(path))


@lru_cache(maxsize=1024)
def _one_key_list(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The first equal tuple seen: files that set the same keys share one (the cache is the table)."""
    return keys


def _syntax_error(path: str, text: str, message: str) -> ConfigError:
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
_READ_STEP = 16 * 1024  #: the least a read asks for (a file may grow while it is read)
_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe, FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symlink",
}


def not_regular(mode: int) -> str | None:
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


def link_problem(path: str, exc: OSError) -> str:
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


def read_file(abs_path: str, *, follow: bool = True) -> bytes | OSError:
    """A file's bytes, refusing anything but a regular file before a single byte is read.

    It is stat()ed before it is opened (opening a device can have effects, a FIFO can block forever),
    opened non-blocking (a procfs file such as /proc/kmsg is "regular" but would block a read) and,
    unless it is a symlink the folder walk already resolved, without following symlinks, then
    checked again on the open descriptor in case it was replaced in between.
    """
    try:
        st = os.stat(abs_path, follow_symlinks=follow)
        problem = not_regular(st.st_mode) or _pseudo_file(st.st_dev)
        if problem:
            return OSError(errno.EINVAL, problem)
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        fd = os.open(abs_path, flags)
        try:
            opened = os.fstat(fd)
            problem = not_regular(opened.st_mode)
            if problem:
                return OSError(errno.EINVAL, problem)
            # Reads of about the file's size: a read of MAX_FILE_BYTES allocates that much first (a
            # separate mapping where malloc maps big blocks) before it shrinks to the bytes read.
            step = max(opened.st_size + 1, _READ_STEP)
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_FILE_BYTES:
                chunk = os.read(fd, min(step, MAX_FILE_BYTES + 1 - size))
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
