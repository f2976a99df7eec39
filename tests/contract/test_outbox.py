"""The Store contract for the notification outbox and run warnings (every backend: the `backend` fixture).

An event is queued in the transaction of the state change that causes it: the same commit holds both
or neither. Its delivery state moves only from pending; a deposed active can neither queue nor mark.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from engine.errors import FencedError
from engine.model import NotificationState, RunState, RunWarning
from engine.notify.events import Event, EventKind, run_event_id
from engine.paths import StatePaths
from engine.store import intents as i
from engine.store.abc import Store
from engine.store.sqlite.ledger import Ledger
from engine.store.sqlite.reader import SqliteReader
from tests.contract.conftest import Backend
from tests.contract.test_store import NOW, deposed, finished, fire, leading


def failed_event(run_id: int, *, at=NOW) -> Event:
    return Event(
        id=run_event_id(EventKind.FAILED, run_id),
        event=EventKind.FAILED,
        at=at,
        job="j",
        run_id=run_id,
        state="failed",
        exit_code=3,
        attempt=1,
        final=True,
    )


async def test_an_event_queued_with_its_state_change_is_due_once_per_channel(store: Store) -> None:
    await leading(store)
    await store.commit([fire(1), i.RunStarted(1, NOW, None)])
    await store.commit([finished(1, RunState.FAILED, 3), i.NotificationQueued(failed_event(1), ("ops", "pager"))])
    due = await store.due_notifications(NOW)
    assert [(n.event_id, n.channel, n.state, n.attempts) for n in due] == [
        ("failed:run:1", "ops", NotificationState.PENDING, 0),
        ("failed:run:1", "pager", NotificationState.PENDING, 0),
    ]
    assert Event.from_json(due[0].document) == failed_event(1)
    assert due[0].epoch == store.epoch
    # Queued again (a retried transaction, a new active looking at the same cause): still one row each.
    await store.commit([i.NotificationQueued(failed_event(1), ("ops",))])
    assert len(await store.due_notifications(NOW)) == 2


async def test_delivery_state_moves_only_from_pending(store: Store) -> None:
    await leading(store)
    await store.commit([i.NotificationQueued(failed_event(1), ("ops", "pager", "mail"))])
    later = NOW + timedelta(seconds=30)
    await store.commit(
        [
            i.NotificationSent("failed:run:1", "ops", NOW, 1),
            i.NotificationRetry("failed:run:1", "pager", NOW, 1, later, "connection refused"),
            i.NotificationFailed("failed:run:1", "mail", NOW, 1, "550 no such user"),
        ]
    )
    # Only the retry is left, and only once its time has come.
    assert await store.due_notifications(NOW) == []
    assert await store.next_notification_at() == later
    (retry,) = await store.due_notifications(later)
    assert (retry.channel, retry.attempts, retry.last_error) == ("pager", 1, "connection refused")
    # A sent row is never moved back (a late duplicate report of a failure changes nothing).
    await store.commit([i.NotificationRetry("failed:run:1", "ops", later, 2, later, "late")])
    await store.commit([i.NotificationSent("failed:run:1", "pager", later, 2)])
    assert await store.due_notifications(later + timedelta(days=1)) == []
    assert await store.next_notification_at() is None


async def test_suppressed_events_leave_the_queue_and_their_summary_waits_for_its_time(store: Store) -> None:
    await leading(store)
    await store.commit([i.NotificationQueued(failed_event(n), ("ops",)) for n in (1, 2, 3)])
    window_end = NOW + timedelta(minutes=5)
    summary = Event(id="summary:ops:1", event=EventKind.SUMMARY, at=NOW, count=2, message="2 more failures of j")
    await store.commit(
        [
            i.NotificationSuppressed(("failed:run:2", "failed:run:3"), "ops", "summary:ops:1"),
            i.NotificationQueued(summary, ("ops",), not_before=window_end),
        ]
    )
    assert [n.event_id for n in await store.due_notifications(NOW)] == ["failed:run:1"]
    assert await store.next_notification_at() == window_end
    assert [n.event_id for n in await store.due_notifications(window_end)] == ["failed:run:1", "summary:ops:1"]


async def test_a_pending_summary_is_recounted_and_a_sent_one_is_not(store: Store) -> None:
    await leading(store)
    summary = Event(id="summary:ops:1", event=EventKind.SUMMARY, at=NOW, count=2, message="2 more")
    await store.commit([i.NotificationQueued(summary, ("ops", "mail"))])
    recounted = Event(id="summary:ops:1", event=EventKind.SUMMARY, at=NOW, count=5, message="5 more")
    await store.commit([i.SummaryRecounted(recounted, "ops")])
    docs = {n.channel: Event.from_json(n.document) for n in await store.due_notifications(NOW)}
    assert (docs["ops"].count, docs["mail"].count) == (5, 2)
    await store.commit([i.NotificationSent("summary:ops:1", "ops", NOW, 1)])
    await store.commit([i.SummaryRecounted(Event(id="summary:ops:1", event=EventKind.SUMMARY, at=NOW, count=9), "ops")])
    assert [n.channel for n in await store.due_notifications(NOW)] == ["mail"]


async def test_a_deposed_active_can_neither_queue_nor_mark(backend: Backend, store: Store) -> None:
    await leading(store)
    await store.commit([i.NotificationQueued(failed_event(1), ("ops",))])
    successor = await deposed(backend, store)
    with pytest.raises(FencedError):
        await store.commit([i.NotificationQueued(failed_event(2), ("ops",))])
    with pytest.raises(FencedError):
        await store.commit([i.NotificationSent("failed:run:1", "ops", NOW, 1)])
    with pytest.raises(FencedError):
        await store.commit([i.RunWarned(1, RunWarning.LATE, NOW)])
    # The new active delivers what the old one did not.
    (pending,) = await successor.due_notifications(NOW)
    assert (pending.event_id, pending.state) == ("failed:run:1", NotificationState.PENDING)


async def test_a_deposed_deliverer_is_fenced_on_a_row_the_new_active_already_marked(
    backend: Backend, store: Store
) -> None:
    """A mark that moves nothing still meets the fence: otherwise the old deliverer, seeing no error,
    would go on sending its whole queue again."""
    await leading(store)
    summary = Event(id="summary:ops:1", event=EventKind.SUMMARY, at=NOW, count=1, message="1 more")
    await store.commit([i.NotificationQueued(failed_event(1), ("ops",)), i.NotificationQueued(summary, ("ops",))])
    successor = await deposed(backend, store)
    await successor.commit(
        [i.NotificationSent("failed:run:1", "ops", NOW, 1), i.NotificationSent("summary:ops:1", "ops", NOW, 1)]
    )
    later = NOW + timedelta(minutes=1)
    for mark in (
        i.NotificationSent("failed:run:1", "ops", later, 1),
        i.NotificationRetry("failed:run:1", "ops", later, 1, later, "HTTP 503"),
        i.NotificationFailed("failed:run:1", "ops", later, 1, "HTTP 410"),
        i.NotificationSuppressed(("failed:run:1",), "ops", "summary:ops:1"),
        i.SummaryRecounted(Event(id="summary:ops:1", event=EventKind.SUMMARY, at=NOW, count=2), "ops"),
    ):
        with pytest.raises(FencedError):
            await store.commit([mark])
    # The new active's own late duplicate report still changes nothing, and is not refused.
    await successor.commit([i.NotificationFailed("failed:run:1", "ops", later, 2, "late")])
    assert [(n.event_id, n.state, n.attempts) for n in await successor.due_notifications(later)] == []


async def test_a_summary_is_queued_by_its_recount_when_its_row_is_missing(store: Store) -> None:
    """The summary's write is an upsert: suppressed rows never name a summary that does not exist."""
    await leading(store)
    await store.commit([i.NotificationQueued(failed_event(n), ("ops",)) for n in (1, 2)])
    window_end = NOW + timedelta(minutes=5)
    summary = Event(id="summary:ops:2", event=EventKind.SUMMARY, at=NOW, count=1, message="1 more failed event of j")
    await store.commit(
        [
            i.NotificationSuppressed(("failed:run:2",), "ops", "summary:ops:2"),
            i.SummaryRecounted(summary, "ops", not_before=window_end),
        ]
    )
    assert await store.next_notification_at() == window_end
    (due,) = [n for n in await store.due_notifications(window_end) if n.event_id == "summary:ops:2"]
    assert (due.event, due.state, Event.from_json(due.document)) == ("summary", NotificationState.PENDING, summary)
    # Recounted again: the same row, rewritten, its time kept.
    recounted = Event(id="summary:ops:2", event=EventKind.SUMMARY, at=NOW, count=3, message="3 more")
    await store.commit([i.SummaryRecounted(recounted, "ops", not_before=window_end + timedelta(minutes=1))])
    (due,) = [n for n in await store.due_notifications(window_end) if n.event_id == "summary:ops:2"]
    assert Event.from_json(due.document).count == 3


async def test_a_failed_commit_queues_no_event(backend: Backend, store: Store) -> None:
    await leading(store)
    await store.commit([fire(1)])
    successor = await deposed(backend, store)
    with pytest.raises(FencedError):
        await store.commit([finished(1, RunState.FAILED, 3), i.NotificationQueued(failed_event(1), ("ops",))])
    assert await successor.due_notifications(NOW) == []


async def test_last_end_and_recent_durations_feed_recovered_and_percent_thresholds(store: Store) -> None:
    await leading(store)
    await store.commit(
        [
            i.CatalogUpsert("j", "j.toml", "every 1m", True, None, "", "", None, None),
            fire(1),
            fire(2, at=NOW + timedelta(minutes=1)),
            fire(3, at=NOW + timedelta(minutes=2)),
            fire(4, at=NOW + timedelta(minutes=3), state=RunState.SKIPPED),
        ]
    )
    for run_id, seconds, state in ((1, 10, RunState.SUCCEEDED), (2, 30, RunState.SUCCEEDED), (3, 5, RunState.FAILED)):
        start = NOW + timedelta(minutes=run_id)
        await store.commit(
            [i.RunStarted(run_id, start, None), finished(run_id, state, 0, start + timedelta(seconds=seconds))]
        )
    await store.commit([finished(4, RunState.SKIPPED, None)])
    start = await store.start_state()
    assert start.last_end == {"j": RunState.FAILED}  # the skipped run did not run
    assert await store.recent_durations("j") == [30.0, 10.0]
    assert await store.recent_durations("j", limit=1) == [30.0]
    assert await store.recent_durations("other") == []


async def test_last_end_passes_over_a_failure_that_was_retried(store: Store) -> None:
    """A retried failure was never announced: the outcome before it stays the last one (no false
    `recovered` when the retry succeeds after a takeover)."""
    await leading(store)
    later = NOW + timedelta(minutes=1)
    await store.commit(
        [
            i.CatalogUpsert("j", "j.toml", "every 1m", True, None, "", "", None, None),
            fire(1),
            fire(2, at=later),
        ]
    )
    await store.commit([finished(1, RunState.SUCCEEDED, 0), finished(2, RunState.FAILED, 1)])
    await store.commit([fire(3, at=later, attempt=2)])  # the retry of run 2, pending
    assert (await store.start_state()).last_end == {"j": RunState.SUCCEEDED}
    await store.commit([finished(3, RunState.FAILED, 1)])  # its last attempt: final
    assert (await store.start_state()).last_end == {"j": RunState.FAILED}


# ---------------------------------------------------------------- the SQLite readers


async def test_the_sqlite_reader_lists_the_outbox_its_channels_health_and_run_warnings(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    ledger = Ledger(paths)
    await ledger.open()
    try:
        await leading(ledger)
        await ledger.commit([fire(1), i.NotificationQueued(failed_event(1), ("ops", "pager"))])
        await ledger.commit(
            [
                i.RunWarned(1, RunWarning.LATE, NOW),
                i.RunWarned(1, RunWarning.LATE, NOW + timedelta(seconds=2)),  # kept once
                i.RunWarned(1, RunWarning.LONGER, NOW + timedelta(seconds=1)),
                i.NotificationSent("failed:run:1", "ops", NOW, 1),
                i.NotificationRetry("failed:run:1", "pager", NOW, 3, NOW + timedelta(minutes=1), "HTTP 503"),
            ]
        )
    finally:
        await ledger.close()
    reader = SqliteReader(paths)
    try:
        assert reader.run(1).warnings == ("late", "longer")
        assert reader.runs()[0].warnings == ("late", "longer")
        rows = reader.notifications()
        assert {(n.channel, n.state) for n in rows} == {
            ("ops", NotificationState.SENT),
            ("pager", NotificationState.PENDING),
        }
        assert [n.channel for n in reader.notifications(state=NotificationState.PENDING)] == ["pager"]
        assert reader.notifications(channel="nope") == []
        health = {h.channel: h for h in reader.channel_health()}
        assert not health["ops"].failing and health["ops"].last_sent_at == NOW
        assert health["pager"].failing and health["pager"].last_error == "HTTP 503"
        assert health["pager"].counts == {NotificationState.PENDING: 1}
    finally:
        reader.close()


def test_a_reader_of_a_database_older_than_the_outbox_sees_none(tmp_path: Path) -> None:
    import sqlite3

    from engine.store.sqlite.db import connect

    paths = StatePaths(tmp_path)
    connect(paths).close()
    with sqlite3.connect(paths.db) as conn:  # as a Vigil before the outbox left it
        conn.execute("DROP TABLE notifications")
        conn.execute("DROP TABLE run_warnings")
    reader = SqliteReader(paths)
    try:
        assert reader.notifications() == []
        assert reader.channel_health() == []
        assert reader.runs() == []
    finally:
        reader.close()


async def test_pruning_deletes_old_rows_done_with_never_a_pending_one(backend: Backend, store: Store) -> None:
    await leading(store)
    old, new = NOW - timedelta(days=40), NOW
    await store.commit(
        [
            i.NotificationQueued(failed_event(1, at=old), ("ops", "pager")),
            i.NotificationQueued(failed_event(2, at=new), ("ops",)),
        ]
    )
    await store.commit(
        [i.NotificationSent("failed:run:1", "ops", old, 1), i.NotificationSent("failed:run:2", "ops", new, 1)]
    )
    cutoff = NOW - timedelta(days=30)
    successor = await deposed(backend, store)
    await store.commit([i.NotificationsPruned(cutoff)])  # a deposed active deletes nothing
    await successor.commit([i.NotificationsPruned(cutoff)])
    # The old sent row is gone; the old row still pending (pager never took it) stays to be delivered.
    (pending,) = await successor.due_notifications(NOW)
    assert (pending.event_id, pending.channel) == ("failed:run:1", "pager")


async def test_the_sqlite_prune_takes_the_pruned_runs_warnings_and_old_outbox_rows(tmp_path: Path) -> None:
    from engine.store.sqlite.admin import prune_offline

    paths = StatePaths(tmp_path)
    ledger = Ledger(paths)
    await ledger.open()
    try:
        await leading(ledger)
        old = NOW - timedelta(days=40)
        await ledger.commit([fire(1, at=old), fire(2), i.NotificationQueued(failed_event(1, at=old), ("ops",))])
        await ledger.commit(
            [
                i.RunStarted(1, old, None),
                finished(1, RunState.FAILED, 3, old),
                i.RunWarned(1, RunWarning.LONGER, old),
                i.RunWarned(2, RunWarning.LATE, NOW),
                i.NotificationSent("failed:run:1", "ops", old, 1),
            ]
        )
        await ledger.close()
        assert prune_offline(paths, NOW - timedelta(days=30)) == [1]
    finally:
        await ledger.close()
    reader = SqliteReader(paths)
    try:
        assert reader.notifications() == []
        assert [(run.id, run.warnings) for run in reader.runs()] == [(2, ("late",))]
        assert [tuple(row) for row in reader.conn.execute("SELECT run_id FROM run_warnings")] == [(2,)]
    finally:
        reader.close()


async def test_a_row_delivered_after_failed_attempts_no_longer_shows_their_error(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    ledger = Ledger(paths)
    await ledger.open()
    try:
        await leading(ledger)
        await ledger.commit([i.NotificationQueued(failed_event(1), ("ops",))])
        await ledger.commit([i.NotificationRetry("failed:run:1", "ops", NOW, 1, NOW, "HTTP 503")])
        await ledger.commit([i.NotificationSent("failed:run:1", "ops", NOW + timedelta(seconds=5), 2)])
    finally:
        await ledger.close()
    reader = SqliteReader(paths)
    try:
        (row,) = reader.notifications()
        assert (row.state, row.attempts, row.last_error) == (NotificationState.SENT, 2, None)
        (health,) = reader.channel_health()
        assert not health.failing
    finally:
        reader.close()
