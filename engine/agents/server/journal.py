"""The agent's own journal: a small SQLite ledger of the runs it accepted (journal.db, WAL).

It is written *before* a job is launched, so a run the agent accepted is never lost and never started
twice, and it keeps the highest epoch any scheduler has shown the agent. Its SQL is in journal.sql
beside it, by name. May import engine.clock, engine.errors, engine.ids, engine.sqlfile
(the named-query loader), engine.agents.protocol (run states) and the server's refusals.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.agents.protocol import RUNNING
from engine.agents.server.refusals import Malformed
from engine.clock import iso
from engine.errors import VigilError
from engine.ids import MAX_ROW_ID, as_row_id, valid_id
from engine.sqlfile import load_queries

if TYPE_CHECKING:
    from engine.exec.port import ShimExit

log = logging.getLogger("vigil.agent")

QUERIES = load_queries(Path(__file__).with_name("journal.sql"))
JOURNAL_SCHEMA = QUERIES["schema"]
#: What a dispatch says about running its job; kept as JSON in the run's `spec` column.
SPEC_FIELDS = ("command", "env", "workdir", "user", "timeout", "kill_grace", "log_cap")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Journal:
    """The agent's own small ledger of runs (SQLite in WAL mode, one connection, one process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.executescript(QUERIES["settings"])
        self.conn.executescript(JOURNAL_SCHEMA)
        columns = {row[1] for row in self.conn.execute(QUERIES["run_columns"])}
        if "end_state" not in columns:  # a journal from an agent before end_state
            self.conn.execute(QUERIES["add_end_state"])
        self.instance = self._meta("instance") or self._set_meta("instance", uuid.uuid4().hex)
        self.max_epoch = self._load_max_epoch()
        # The highest run id ever dispatched here, kept after the run is pruned: a scheduler whose
        # database was restored numbers its runs above it (engine/exec/rundirs.py).
        newest = self.conn.execute(QUERIES["newest_run_id"]).fetchone()[0]
        self.max_run_id = max(int(self._meta("max_run_id") or 0), int(newest))

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        self.conn.execute(QUERIES["begin"])
        try:
            yield
            self.conn.execute(QUERIES["commit"])
        except BaseException:
            self.conn.execute(QUERIES["rollback"])
            raise

    def _load_max_epoch(self) -> int:
        stored = self._meta("max_epoch")
        epoch = as_row_id(stored or "0")
        if epoch is None:
            # Written by an agent that took any number (10**30 would refuse every scheduler forever):
            # fall back to the highest epoch a run was actually accepted with.
            row = self.conn.execute(QUERIES["newest_run_epoch"]).fetchone()
            epoch = int(row[0] or 0)
            log.warning("stored max epoch %.40r is not a valid epoch; using %d from the journal's runs", stored, epoch)
            self._set_meta("max_epoch", str(epoch))
        return epoch

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute(QUERIES["meta_get"], {"key": key}).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> str:
        self.conn.execute(QUERIES["meta_set"], {"key": key, "value": value})
        return value

    def reset_max_epoch(self, epoch: int) -> None:
        """`vigil agent --reset-epoch`: forget a bogus highest epoch (one no scheduler really has)."""
        if not valid_id(epoch):
            raise VigilError(f"--reset-epoch {epoch!r}: expected a whole number from 0 to {MAX_ROW_ID}")
        log.warning(
            "highest epoch seen reset from %d to %d (--reset-epoch); the first scheduler request raises it again",
            self.max_epoch,
            epoch,
        )
        self._set_meta("max_epoch", str(epoch))
        self.max_epoch = epoch

    def raise_epoch(self, epoch: int) -> None:
        if not valid_id(epoch):
            raise Malformed(f"epoch {epoch!r} is not a whole number from 0 to {MAX_ROW_ID}")
        if epoch > self.max_epoch:
            self._set_meta("max_epoch", str(epoch))
            self.max_epoch = epoch

    def get(self, run_id: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(QUERIES["run"], {"run_id": run_id}).fetchone()
        return row

    def insert(self, req: dict[str, Any], started_at: str) -> None:
        self.conn.execute(
            QUERIES["run_accepted"],
            {
                "run_id": req["run_id"],
                "job": req["job"],
                "scheduled_for": req["scheduled_for"],
                "attempt": req["attempt"],
                "epoch": req["epoch"],
                "spec": json.dumps({k: req.get(k) for k in SPEC_FIELDS}),
                "running": RUNNING,
                "started_at": started_at,
            },
        )
        if req["run_id"] > self.max_run_id:
            self._set_meta("max_run_id", str(req["run_id"]))
            self.max_run_id = req["run_id"]

    def finish(
        self, run_id: int, state: str, result: ShimExit | None, reason: str | None, end_state: str | None = None
    ) -> None:
        with self._transaction():
            seq = int(self._meta("next_seq") or 1)
            self._set_meta("next_seq", str(seq + 1))
            self.conn.execute(
                QUERIES["run_finished"],
                {
                    "state": state,
                    "ended_at": iso(_ended_at(result)),
                    "exit_code": result.exit_code if result else None,
                    "job_pid": result.job_pid if result else None,
                    "cpu_s": result.cpu_s if result else None,
                    "peak_rss": result.peak_rss if result else None,
                    "reason": reason,
                    "end_state": end_state,
                    "seq": seq,
                    "run_id": run_id,
                    "running": RUNNING,
                },
            )

    def set_killed(self, run_id: int, why: str) -> None:
        self.conn.execute(QUERIES["run_killed"], {"why": why, "run_id": run_id, "running": RUNNING})

    def running(self) -> list[sqlite3.Row]:
        return self.conn.execute(QUERIES["running"], {"running": RUNNING}).fetchall()

    def count_running(self) -> int:
        return int(self.conn.execute(QUERIES["running_count"], {"running": RUNNING}).fetchone()[0])

    def open_ids(self) -> list[int]:
        """Runs a scheduler still has to learn about: running, or finished but not acknowledged."""
        return [r[0] for r in self.conn.execute(QUERIES["open_ids"])]

    def results_after(self, seq: int, limit: int) -> list[sqlite3.Row]:
        return self.conn.execute(QUERIES["results_after"], {"after": seq, "limit": limit}).fetchall()

    def ack(self, run_ids: list[int]) -> int:
        acked_at = iso(utc_now())
        count = 0
        with self._transaction():
            for run_id in run_ids:
                count += self.conn.execute(
                    QUERIES["run_acked"], {"acked_at": acked_at, "run_id": run_id, "running": RUNNING}
                ).rowcount
        return count

    def prune(self, before: datetime) -> list[int]:
        ids = [r[0] for r in self.conn.execute(QUERIES["prunable"], {"before": iso(before)})]
        self.conn.executemany(QUERIES["run_deleted"], [{"run_id": i} for i in ids])
        return ids


def _ended_at(result: ShimExit | None) -> datetime:
    """The run's end as its shim dated it (a run that ended while the agent was down ended then), never
    after now; now when it is not known."""
    now = utc_now()
    return result.ended_at if result is not None and result.ended_at is not None and result.ended_at <= now else now
