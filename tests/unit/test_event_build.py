"""The events of the system causes, built pure: ids from the cause, fields and messages for people."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.model import RunState
from engine.notify import build
from engine.notify.events import Event, EventKind

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def test_a_takeover_is_a_failover_or_a_switchover_identified_by_its_epoch() -> None:
    crash = build.takeover(epoch=7, switchover=False, from_pid=41, to_pid=42, cause="crash", gap_ms=850.0, at=NOW)
    assert (crash.id, crash.event, crash.reason, crash.duration_s) == (
        "failover:epoch:7",
        EventKind.FAILOVER,
        "crash",
        0.85,
    )
    assert crash.message == "pid 42 is active with epoch 7, after pid 41 (crash, 0.85s without an active)"
    handed = build.takeover(epoch=8, switchover=True, from_pid=42, to_pid=41, cause="switchover", gap_ms=None, at=NOW)
    assert (handed.id, handed.event) == ("switchover:epoch:8", EventKind.SWITCHOVER)
    assert Event.from_json(handed.to_json()) == handed


def test_agent_changes_are_identified_by_agent_and_time_and_say_why_it_is_down() -> None:
    down = build.agent_changed(agent="a1", up=False, error="connection refused", at=NOW)
    assert (down.id, down.event, down.agent, down.reason) == (
        "agent_down:a1:2026-11-29T03:00:00.000000+00:00",
        EventKind.AGENT_DOWN,
        "a1",
        "connection refused",
    )
    up = build.agent_changed(agent="a1", up=True, error=None, at=NOW + timedelta(seconds=5))
    assert up.event is EventKind.AGENT_UP and up.id != down.id and up.message == "agent a1 is up again"


def test_a_store_outage_says_how_long_and_why() -> None:
    event = build.store_recovered(since=NOW, until=NOW + timedelta(seconds=12.5), error="disk full", failures=9)
    assert (event.id, event.first_at, event.last_at, event.count, event.duration_s) == (
        "store_error:2026-11-29T03:00:00.000000+00:00",
        NOW,
        NOW + timedelta(seconds=12.5),
        9,
        12.5,
    )
    assert event.message is not None and event.message.startswith("the state database refused writes for 12.5s")


def test_only_the_failure_states_are_announced_as_run_ends() -> None:
    common = {
        "job": "j",
        "run_id": 3,
        "exit_code": None,
        "reason": None,
        "attempt": 1,
        "retries": 0,
        "retryable": False,
        "at": NOW,
    }
    assert build.run_ended(state=RunState.SKIPPED, **common) is None  # type: ignore[arg-type]
    assert build.run_ended(state=RunState.SUCCEEDED, **common) is None  # type: ignore[arg-type]
    assert build.recovered(job="j", run_id=3, attempt=1, previous=RunState.SUCCEEDED, at=NOW) is None


def test_the_planners_retry_decision_words_a_final_failure() -> None:
    """The wording follows what the planner says of the retry policy, not a copy of it here."""
    common = {"job": "j", "run_id": 3, "exit_code": None, "reason": "r", "attempt": 2, "retries": 1, "at": NOW}
    spent = build.run_ended(state=RunState.FAILED, retryable=True, **common)  # type: ignore[arg-type]
    assert spent is not None and spent.message == "job j run 3 failed: r (after the last of 2 attempts)"
    never = build.run_ended(state=RunState.FAILED, retryable=False, **common)  # type: ignore[arg-type]
    assert never is not None and never.message == "job j run 3 failed: r (attempt 2; a failed run is not retried)"


def test_every_document_has_the_core_keys_null_when_they_do_not_apply() -> None:
    from engine.notify.events import CORE_KEYS, Event, EventKind, document

    failover = Event(id="failover:epoch:7", event=EventKind.FAILOVER, at=datetime(2026, 12, 2, tzinfo=UTC))
    doc = document(failover.to_json(), epoch=7)
    assert {key: doc[key] for key in CORE_KEYS} == {
        "id": "failover:epoch:7",
        "event": "failover",
        "at": "2026-12-02T00:00:00.000000+00:00",
        "job": None,
        "run_id": None,
        "state": None,
        "exit_code": None,
        "reason": None,
        "attempt": None,
    }
    assert (doc["epoch"], doc["log_tail"]) == (7, [])
