"""The state database's statements, by name (`queries.sql` beside this file)."""

from __future__ import annotations

from pathlib import Path

from engine.sqlfile import load_queries

QUERIES = load_queries(Path(__file__).with_name("queries.sql"))
