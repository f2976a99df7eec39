"""Stored rows as the engine's typed records."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from engine.clock import parse_iso
from engine.errors import StoreError
from engine.model import LeaderRow, Run, RunState


def required_time(row: sqlite3.Row, column: str) -> datetime:
    """A NOT NULL time column (written by `clock.iso`); unreadable text is a damaged row."""
    when = parse_iso(row[column])
    if when is None:
        raise StoreError(f"state database: {column} {row[column]!r} is not a time (a damaged row)")
    return when


def run_of(row: sqlite3.Row) -> Run:
    """A `runs` row (all columns) as a Run."""
    return Run(
        id=int(row["id"]),
        job=row["job"],
        scheduled_for=required_time(row, "scheduled_for"),
        attempt=int(row["attempt"]),
        state=RunState(row["state"]),
        trigger=row["trigger"],
        epoch=int(row["epoch"]),
        created_at=required_time(row, "created_at"),
        reason=row["reason"],
        not_before=parse_iso(row["not_before"]),
        started_at=parse_iso(row["started_at"]),
        ended_at=parse_iso(row["ended_at"]),
        exit_code=row["exit_code"],
        pid=row["pid"],
        pid_starttime=row["pid_starttime"],
        deadline=parse_iso(row["deadline"]),
        kill_requested=row["kill_requested"],
        agent=row["agent"],
        peak_rss=row["peak_rss"],
        cpu_s=row["cpu_s"],
        command=row["command"],
    )


def leader_of(row: sqlite3.Row) -> LeaderRow:
    return LeaderRow(
        epoch=int(row["epoch"]),
        pid=row["pid"],
        starttime=row["starttime"],
        since=parse_iso(row["since"]),
        clean_stop=bool(row["clean_stop"]),
    )
