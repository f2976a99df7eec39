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
from tests.helpers import runs, vigil, vigil_json, wait_for, write_job
from tests.integration.test_agents import Agent, query, write_settings

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


# ---------------------------------------------------------------- system events

FAST_HA = '\nheartbeat_interval = "100ms"\nheartbeat_timeout = "1s"\n'


def fast_ha_with_channels(jobs: Path) -> None:
    (jobs / "vigil.toml").write_text(
        CHANNELS.replace('notify = ["ops", "pager"]\n', 'notify = ["ops", "pager"]' + FAST_HA)
    )


def epoch_of(state: Path) -> int:
    return int(vigil_json(state, "status")["active"]["epoch"])


def test_sigkill_of_the_active_is_one_failover_event_with_the_new_epoch(
    start_up, state_dir: Path, jobs_dir: Path
) -> None:
    fast_ha_with_channels(jobs_dir)
    first = start_up()
    first.wait_active()
    second = start_up()
    wait_for(lambda: second.pid in [s["pid"] for s in vigil_json(state_dir, "status")["standbys"]], 10)
    old_epoch = epoch_of(state_dir)
    first.kill9()
    second.wait_active()
    rows = wait_for(lambda: outbox(state_dir, EventKind.FAILOVER), 5, what="the failover event")
    assert sorted(row.channel for row in rows) == ["ops", "pager"]
    assert {row.event_id for row in rows} == {f"failover:epoch:{old_epoch + 1}"}
    assert rows[0].epoch == old_epoch + 1  # queued by the new active, in its takeover's commit
    event = Event.from_json(rows[0].document)
    assert event.reason == "crash"
    assert event.message is not None and f"after pid {first.pid}" in event.message
    assert f"epoch {old_epoch + 1}" in event.message


def test_a_switchover_is_a_switchover_event_and_a_standby_killed_is_standby_lost(
    start_up, state_dir: Path, jobs_dir: Path
) -> None:
    fast_ha_with_channels(jobs_dir)
    first = start_up()
    first.wait_active()
    second = start_up()
    wait_for(lambda: second.pid in [s["pid"] for s in vigil_json(state_dir, "status")["standbys"]], 10)
    vigil(state_dir, "switchover")
    second.wait_active()
    wait_for(lambda: first.pid in [s["pid"] for s in vigil_json(state_dir, "status")["standbys"]], 10)
    (switch,) = wait_for(lambda: outbox(state_dir, EventKind.SWITCHOVER), 5, what="the switchover event")
    assert switch.channel == "ops"  # pager's filter takes failover, not switchover
    assert switch.event_id == f"switchover:epoch:{epoch_of(state_dir)}"
    assert outbox(state_dir, EventKind.FAILOVER) == []
    first.kill9()  # the old active, now a standby
    (lost,) = wait_for(lambda: outbox(state_dir, EventKind.STANDBY_LOST), 5, what="the standby_lost event")
    event = Event.from_json(lost.document)
    assert lost.channel == "ops" and event.message is not None and f"pid {first.pid}" in event.message


def test_an_agent_killed_is_one_agent_down_across_a_restart_and_one_agent_up_when_back(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    agent = Agent(tmp_path, "a1").start()
    try:
        tables = CHANNELS.split("\n[notify.ops]", 1)[1]
        write_settings(
            jobs_dir, {"a1": {"url": agent.url}}, scheduler='notify = ["ops", "pager"]', pools="[notify.ops]" + tables
        )

        def recorded(up: int, epoch: int | None = None) -> bool:
            rows = query(state_dir, "SELECT up, writer_epoch FROM agents WHERE name = 'a1'")
            return bool(rows) and rows[0]["up"] == up and (epoch is None or rows[0]["writer_epoch"] == epoch)

        up = start_up()
        up.wait_active()
        wait_for(lambda: recorded(1), 10, what="the agent to be seen up")
        assert outbox(state_dir) == []  # the first look at an agent that is up is no news
        agent.kill9()
        down = wait_for(lambda: outbox(state_dir, EventKind.AGENT_DOWN), 5, what="agent_down")
        assert sorted(row.channel for row in down) == ["ops", "pager"]
        (down_id,) = {row.event_id for row in down}
        event = Event.from_json(down[0].document)
        assert event.agent == "a1" and event.reason and down_id.startswith("agent_down:a1:")
        # A new active finds the agent down, as the ledger says it was: not announced again.
        up.stop()
        again = start_up()
        again.wait_active()
        wait_for(lambda: recorded(0, epoch_of(state_dir)), 10, what="the new active to look at the agent")
        assert {row.event_id for row in outbox(state_dir, EventKind.AGENT_DOWN)} == {down_id}
        agent.start()  # the same port
        (back,) = wait_for(lambda: outbox(state_dir, EventKind.AGENT_UP), 10, what="agent_up")
        assert back.channel == "ops" and Event.from_json(back.document).agent == "a1"
    finally:
        agent.stop()
        agent.kill_jobs()
