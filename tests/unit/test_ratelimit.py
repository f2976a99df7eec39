"""A channel's rate limit and the readable title/body (pure)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from engine.model import ChannelSpec, Notification, NotificationState
from engine.notify import message
from engine.notify.events import Event, EventKind, document
from engine.notify.ratelimit import ChannelWindow, admit, scope, summary_message

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
SPEC = ChannelSpec(name="ops", command="cat", rate_limit=3, rate_window=300.0)


def row(n: int, *, job: str | None = "etl/load", event: str = "failed", at: datetime = NOW) -> Notification:
    return Notification(
        event_id=f"{event}:run:{n}",
        channel="ops",
        event=event,
        job=job,
        run_id=n,
        created_at=at,
        state=NotificationState.PENDING,
        attempts=0,
        next_attempt_at=None,
        last_error=None,
        last_attempt_at=None,
        sent_at=None,
        summary_id=None,
        epoch=1,
        document="{}",
    )


def test_beyond_the_limit_events_are_held_back_and_counted_in_one_summary_at_the_windows_end() -> None:
    window = ChannelWindow()
    first = admit(SPEC, window, [row(n, job=f"etl/j{n}") for n in range(1, 6)], NOW)
    assert [r.run_id for r in first.deliver] == [1, 2, 3]
    assert [r.run_id for r in first.suppress] == [4, 5]
    assert first.summary is not None and first.summary_is_new
    assert first.summary.count == 2 and first.summary.event is EventKind.SUMMARY
    assert first.summary.message == "2 more failures of etl/* in the last 5m"
    assert first.summary_at == NOW + timedelta(minutes=5)
    # Later in the same window: counted into the same summary, which is rewritten, not a second one.
    later = admit(SPEC, window, [row(6, job="etl/x", at=NOW + timedelta(minutes=1))], NOW + timedelta(minutes=1))
    assert later.deliver == [] and later.summary is not None and not later.summary_is_new
    assert (later.summary.id, later.summary.count) == (first.summary.id, 3)
    assert later.summary.last_at == NOW + timedelta(minutes=1)
    # The window ends: a new one admits `rate_limit` again.
    fresh = admit(SPEC, window, [row(n) for n in range(7, 11)], NOW + timedelta(minutes=5))
    assert [r.run_id for r in fresh.deliver] == [7, 8, 9] and fresh.summary is not None and fresh.summary_is_new


def test_summaries_and_test_events_are_never_limited() -> None:
    window = ChannelWindow()
    admit(SPEC, window, [row(n) for n in range(1, 4)], NOW)
    out = admit(SPEC, window, [row(9, event="summary", job=None), row(10, event="test", job=None)], NOW)
    assert [r.event for r in out.deliver] == ["summary", "test"] and out.suppress == []


def test_system_events_are_never_hidden_in_a_storm_of_job_failures() -> None:
    window = ChannelWindow()
    storm = [row(n) for n in range(1, 8)]
    system = [row(90, event=kind, job=None) for kind in ("failover", "standby_lost", "agent_down", "store_error")]
    out = admit(SPEC, window, [*storm[:4], *system, *storm[4:]], NOW)
    assert [r.event for r in out.deliver].count("failed") == 3
    assert [r.event for r in out.deliver if r.event != "failed"] == [
        "failover",
        "standby_lost",
        "agent_down",
        "store_error",
    ]
    assert all(r.event == "failed" for r in out.suppress) and len(out.suppress) == 4
    assert out.summary is not None and out.summary.message == "4 more failures of etl/load in the last 5m"


def test_normal_traffic_is_untouched() -> None:
    window = ChannelWindow()
    for minute in range(0, 60, 5):  # one failure every 5 minutes for an hour
        out = admit(SPEC, window, [row(minute)], NOW + timedelta(minutes=minute))
        assert len(out.deliver) == 1 and out.suppress == []


def test_summary_messages_name_kinds_and_the_common_folder() -> None:
    assert summary_message(Counter({"failed": 37}), ["etl/a", "etl/b"], False, 300) == (
        "37 more failures of etl/* in the last 5m"
    )
    assert summary_message(Counter({"failed": 30, "late": 7}), ["etl/a/x"], False, 60) == (
        "37 more events (30 failed, 7 late) of etl/a/x in the last 1m"
    )
    assert scope(["etl/a", "etl2/b"], False) == "all jobs"
    assert scope(["etl/a/x", "etl/a/y"], False) == "etl/a/*"
    assert scope(["etl/a", "etl/a/x"], False) == "etl/*"  # the folder both are in, not the job "etl/a"
    assert scope(["etl/ab", "etl/ac"], False) == "etl/*"  # whole segments only
    assert scope([], True) == "the scheduler"


def test_a_readable_title_and_body_with_the_log_tail() -> None:
    event = Event(
        id="failed:run:42",
        event=EventKind.FAILED,
        at=NOW,
        job="etl/load",
        run_id=42,
        state="failed",
        exit_code=3,
        attempt=3,
        final=True,
        reason="exit status 3",
    )
    doc = document(event.to_json(), epoch=7, log_tail=["loading...", "ERROR: no such table"])
    assert message.title(doc) == "FAILED etl/load (run 42, exit 3, attempt 3 of 3, final)"
    body = message.body(doc)
    assert body.startswith("exit status 3\n")
    assert "epoch 7" in body and "id failed:run:42" in body
    assert body.endswith("Last 2 lines of the log:\nloading...\nERROR: no such table")
    assert message.severity(doc) == "failure"
    assert message.title({"event": "failover", "at": "x"}) == "FAILOVER scheduler"
