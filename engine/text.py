"""User text inside messages: escaped so it cannot drive a terminal, and shown the way it was written.

Job files, key names, values and file names come from users. A key named with an ESC byte, printed
raw, can repaint an operator's terminal or forge log lines; so every message that carries such text
passes it through `escape` (ConfigError.format does it for all validation errors). Values are shown
as TOML spells them (`2024-01-01`, `true`), never as Python reprs (`datetime.date(2024, 1, 1)`).
"""

from __future__ import annotations

from datetime import date, datetime
from datetime import time as dt_time

__all__ = ["describe", "escape", "quote", "show"]

_MAX_SHOWN = 60  #: characters of a value shown in a message; the rest is elided


def _escape_char(char: str) -> str:
    code = ord(char)
    if char == "\n":
        return "\\n"
    if char == "\t":
        return "\\t"
    if char == "\r":
        return "\\r"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` with every non-printable character (C0/C1 controls, DEL, line and bidi-override
    characters, …) written as a visible escape such as `\\x1b`; printable text is unchanged."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape_char(char) for char in text)


def quote(text: str, *, whole: bool = False) -> str:
    """A user string in single quotes, escaped, and elided past `_MAX_SHOWN` characters unless
    `whole` (file paths, which are useless cut short)."""
    shown = escape(text)
    if len(shown) > _MAX_SHOWN and not whole:
        shown = shown[: _MAX_SHOWN - 1] + "…"
    return f"'{shown}'"


def show(value: object) -> str:
    """A value as it would be written in TOML (strings quoted), for messages."""
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 192:  # str() of a huge int is slow, or refused
        return f"{'-' if value < 0 else ''}{int(value.bit_length() * 0.30103) + 1}-digit number"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, datetime | date | dt_time):
        return value.isoformat()
    if isinstance(value, list):
        return f"{len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        keys = ", ".join(escape(str(key)) for key in list(value)[:5]) + (", …" if len(value) > 5 else "")
        return f"keys {keys}" if value else "no keys"
    return escape(str(value))


def describe(value: object) -> str:
    """What a value is and what it holds: `a string ('3')`, `a date (2024-01-01)`, `an array (2 items)`."""
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a float"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list):
        kind = "an array"
    elif isinstance(value, dict):
        kind = "a table"
    elif isinstance(value, datetime):
        kind = "a date-time"
    elif isinstance(value, date):
        kind = "a date"
    elif isinstance(value, dt_time):
        kind = "a time"
    else:
        kind = "a value"
    return f"{kind} ({show(value)})"
