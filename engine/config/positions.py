"""Where each key of a TOML text is written: tomllib gives values but no positions.

Owns `LineIndex` (key path → line) and the small tokenizer it needs. Imports only the standard library.
"""

from __future__ import annotations

import re
import tomllib

__all__ = ["LineIndex"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class LineIndex:
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
