"""The one valid range of run ids and epochs, checked the same way on every side."""

from __future__ import annotations

import re
from typing import TypeGuard

#: Run ids and epochs are whole numbers below ID_LIMIT, on every side: the scheduler, its agents, the
#: run directories and the CLI all check them with `as_row_id` (or `valid_id`). The
#: limit sits well below SQLite's largest integer (2**63-1) so that the next epoch or run id above any
#: valid one still fits: a value the agent accepts is always one the scheduler can follow.
ID_LIMIT = 1 << 62


MAX_ROW_ID = ID_LIMIT - 1  #: the largest valid run id or epoch


_DECIMAL = re.compile(r"[0-9]{1,19}")


def as_row_id(value: object) -> int | None:
    """`value` as a valid run id or epoch (0..MAX_ROW_ID, i.e. 0..2**62-1), or None.

    Takes a JSON integer (never a bool or a float) or plain decimal digits (a path, a header,
    a command-line argument).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_ROW_ID else None
    if isinstance(value, str | bytes):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        text = text.strip()
        if _DECIMAL.fullmatch(text):
            number = int(text)
            return number if number <= MAX_ROW_ID else None
    return None


def valid_id(value: object) -> TypeGuard[int]:
    """A well-formed epoch or run id reported by someone else (an agent, a file): the range is ID_LIMIT's."""
    return isinstance(value, int) and as_row_id(value) is not None
