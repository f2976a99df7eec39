"""Events queued by a real `vigil up` (real shims, a real SQLite file): the outbox rows and documents.

Only the queuing is tested here: each event is in the outbox, once per channel, with its fields.
Delivery is engine/outbox/ (its own tests).
"""

from __future__ import annotations

import time
from pathlib import Path

from engine.model import Notification
from engine.notify.events import Event, EventKind
from engine.paths import StatePaths
from engine.store.sqlite.reader import SqliteReader
from tests.helpers import runs, vigil, wait_for, write_job

CHANNELS = """
[scheduler]
notify = ["ops", "pager"]

[notify.ops]
command = "cat"

[notify.pager]
command = "cat"
events = ["failed", "failover", "agent_down"]
"""


def outbox(state: Path, kind: EventKind | None = None) -> list[Notification]:
    reader = SqliteReader(StatePaths(state))
    try:
        rows = reader.notifications(limit=10_000)
    finally:
        reader.close()
    return [row for row in rows if kind is None or row.event == kind]


def with_channels(jobs: Path) -> None:
    (jobs / "vigil.toml").write_text(CHANNELS)


def test_a_job_failing_after_its_last_retry_is_one_failed_row_per_channel(
    start_up, state_dir: Path, jobs_dir: Path
) -> None:
    with_channels(jobs_dir)
    write_job(jobs_dir, "flaky", 'every = "1h"\nretries = 1\nretry_delay = "0.2s"\ncommand = "echo no; exit 3"\n')
    up = start_up()
    up.wait_active()
    vigil(state_dir, "run", "flaky")
    ended = wait_for(
        lambda: [r for r in runs(state_dir, "--job", "flaky") if r["state"] == "failed" and r["attempt"] == 2],
        10,
        what="the second attempt to fail",
    )
    last = ended[0]
    rows = wait_for(lambda: outbox(state_dir, EventKind.FAILED), 5, what="the failed event")
    assert sorted(row.channel for row in rows) == ["ops", "pager"]  # one row per channel, not per attempt
    assert {row.event_id for row in rows} == {f"failed:run:{last['id']}"}
    event = Event.from_json(rows[0].document)
    assert (event.job, event.run_id, event.state, event.exit_code, event.attempt, event.final) == (
        "flaky",
        last["id"],
        "failed",
        3,
        2,
        True,
    )
    assert event.reason == "exit code 3"
    assert event.message is not None and "after the last of 2 attempts" in event.message
    assert rows[0].epoch == last["epoch"]
    assert {row.event for row in outbox(state_dir)} == {EventKind.FAILED}  # the retried attempt queued nothing


def test_a_downtime_is_one_missed_event_per_job(start_up, state_dir: Path, jobs_dir: Path) -> None:
    with_channels(jobs_dir)
    write_job(jobs_dir, "tick", 'every = "1s"\ncatchup = "none"\ncommand = "true"\n')
    up = start_up()
    wait_for(lambda: [r for r in runs(state_dir, "--job", "tick") if r["state"] == "succeeded"], 10)
    up.stop()
    time.sleep(3.5)  # the downtime: three or four fires of a 1 s job (the newest may run on time)
    start_up().wait_active()

    def downtime_rows() -> list[dict]:
        return [
            r for r in runs(state_dir, "--job", "tick") if r["state"] == "missed" and r["reason"].startswith("downtime")
        ]

    missed_rows = wait_for(downtime_rows, 10, what="missed rows")
    events = [Event.from_json(row.document) for row in outbox(state_dir, EventKind.MISSED)]
    (event,) = [e for e in events if e.reason == "downtime"]  # one for the gap, not one per row
    assert event.count == len(missed_rows) >= 2
    assert event.id == f"missed:run:{min(r['id'] for r in missed_rows)}"
    channels = [row.channel for row in outbox(state_dir, EventKind.MISSED) if row.event_id == event.id]
    assert channels == ["ops"]  # pager's filter does not take `missed`
