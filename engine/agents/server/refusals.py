"""What the agent refuses, private to `engine.agents.server`: each refusal picks an HTTP status.

They never leave the server: the routes answer them with their status and `{"error": message}`, and
the scheduler's client sees `AgentRefused`/`AgentNotFound` (engine/errors.py). Also here: the one
check of an id (run id, epoch, attempt) a request carries, with the message the client gets.
May import engine.errors and engine.ids only.
"""

from __future__ import annotations

from typing import ClassVar

from engine.errors import AgentError
from engine.ids import MAX_ROW_ID, as_row_id, valid_id


class Refusal(AgentError):
    """A request the agent will not carry out; answered with `status`."""

    status: ClassVar[int]


class Malformed(Refusal):
    """The request is not one a scheduler would send (bad JSON, field, id or epoch): 400."""

    status = 400


class NoSuchRun(Refusal):
    """The agent has no record of the run the request names: 404."""

    status = 404


class RunIdInUse(Refusal):
    """A dispatch reuses a run id this agent already runs for another fire: 409."""

    status = 409


def body_id(value: object, what: str) -> int:
    """A run id, epoch or attempt from a JSON body: an integer in the id range, nothing else."""
    if not valid_id(value):  # not "5", 5.0 or true
        raise _bad_id(what, value)
    return value


def text_id(value: bytes | str | None, what: str) -> int | None:
    """A run id or epoch from a path, header or query string; None when absent."""
    if value is None:
        return None
    number = as_row_id(value)
    if number is None:
        raise _bad_id(what, value)
    return number


def _bad_id(what: str, value: object) -> Malformed:
    return Malformed(f"{what} must be a whole number from 0 to {MAX_ROW_ID}, got {short(value)}")


def short(value: object) -> str:
    """`value` as the client sees it in a refusal: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
