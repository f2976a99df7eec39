"""Duration strings such as ``"10s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``, ``"2d"``, and the longest one accepted.

Imports only `engine.text`.
"""

from __future__ import annotations

import re

from engine.text import describe, quote, show

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
#: The longest duration anywhere in Vigil (job files, vigil.toml, `db prune --older-than`): 100 years
#: of 365 days, inclusive. Past it, fire times, deadlines and cut-offs overflow a datetime. This is the
#: one definition: everything that bounds a duration calls `within_max_duration`.
MAX_DURATION_YEARS = 100
MAX_DURATION_S = MAX_DURATION_YEARS * 365 * 86400.0
MAX_DURATION_TEXT = f"{MAX_DURATION_YEARS * 365}d"
#: the bound as messages say it: `100 years (36500d)`
MAX_DURATION_LABEL = f"{MAX_DURATION_YEARS} years ({MAX_DURATION_TEXT})"
OUT_OF_RANGE = f"at most {MAX_DURATION_LABEL} is accepted"


def within_max_duration(seconds: float) -> bool:
    """Whether `seconds` is a duration Vigil accepts: from 0 to `MAX_DURATION_S` inclusive (never NaN)."""
    return 0 <= seconds <= MAX_DURATION_S


def parse_duration(value: object) -> float:
    """Seconds in a duration; a bare number means seconds.

    Raises ValueError with a reason fit for an operator.
    """
    if isinstance(value, bool):
        raise ValueError(f'expected a duration such as "30s" or "5m", got {describe(value)}')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f'expected a duration such as "30s" or "5m", got {describe(value)}')
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(
            f'bad duration {quote(value)}: use a number with a unit ms, s, m, h, d or w, e.g. "90s" or "1h30m"'
        )
    return total


def parse_bounded_duration(value: object) -> float:
    """`parse_duration`, also refusing a duration over `MAX_DURATION_S` (e.g. `1000000d`)."""
    seconds = parse_duration(value)
    if not within_max_duration(seconds):
        raise ValueError(f"duration {show(value)} is out of range: {OUT_OF_RANGE}")
    return seconds
