"""Named SQL statements loaded from a `.sql` file (the state store's `queries.sql`, the agent journal's own).

A file is a sequence of blocks: a `-- name --` line, a `-- description` line, then the statement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_HEADER = re.compile(r"^-- ([a-z0-9_]+) --$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    description: str
    sql: str


def parse_queries(text: str) -> dict[str, Query]:
    """The named statements of `text`; a malformed block is a programming error, so it raises."""
    queries: dict[str, Query] = {}
    parts = _HEADER.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip().splitlines()
        if not lines or not lines[0].startswith("-- "):
            raise ValueError(f"query {name}: the line after its name must be a `-- description`")
        sql = "\n".join(lines[1:]).strip().rstrip(";").strip()
        if not sql or name in queries:
            raise ValueError(f"query {name}: empty or defined twice")
        queries[name] = Query(name, lines[0][3:].strip(), sql)
    return queries


def load_queries(path: Path) -> dict[str, str]:
    """name → SQL text of the statements in the file at `path`."""
    return {name: q.sql for name, q in parse_queries(path.read_text()).items()}
