"""The agent's journal keeps its SQL in journal.sql, by name: none in the server's Python, none unused."""

from __future__ import annotations

import re
from pathlib import Path

from engine.agents.server import journal

SERVER = Path(journal.__file__).parent
SQL_TEXT = re.compile(r"""["'](\s*)(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|PRAGMA|BEGIN|COMMIT|ROLLBACK)\b""")


def test_no_sql_text_in_the_agent_servers_python() -> None:
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(SERVER.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SQL_TEXT.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_every_journal_statement_is_used_and_every_use_is_defined() -> None:
    source = Path(journal.__file__).read_text()
    used = set(re.findall(r'QUERIES\["([a-z0-9_]+)"\]', source))
    assert used == set(journal.QUERIES)
