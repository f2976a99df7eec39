"""The deliverer on the in-memory store with an injected clock; channels replaced at the project's
own seam (`channel_factory`) by one that records or refuses what it is sent. Real channels are
tested in tests/integration/test_notify_delivery.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.clock import FakeClock
from engine.errors import DeliveryError, FencedError, StoreRetryableError
from engine.model import ChannelSpec, NotificationState, Settings
from engine.notify.events import Event, EventKind, run_event_id
from engine.outbox.deliverer import Deliverer, RetryPolicy
from engine.store import intents as i
from engine.store.abc import LeaderClaim
from engine.store.memory import MemoryDatabase, MemoryStore

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


class Recorder:
    """A channel that takes events while `up`, and refuses them otherwise."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.permanent = False
        self.refused: set[str] = set()  #: event ids it refuses for good
        self.got: list[dict[str, Any]] = []

    async def send(self, doc: Mapping[str, Any]) -> None:
        if not self.up:
            raise DeliveryError("connection refused", permanent=self.permanent)
        if doc["id"] in self.refused:
            raise DeliveryError("550 no such user", permanent=True)
        self.got.append(dict(doc))


def failed(run_id: int, job: str = "etl/load") -> Event:
    at = NOW + timedelta(milliseconds=run_id)  # queued in run order
    return Event(id=run_event_id(EventKind.FAILED, run_id), event=EventKind.FAILED, at=at, job=job, run_id=run_id)


async def setup(*names: str, rate_limit: int = 20, database: MemoryDatabase | None = None):
    store = MemoryStore(database or MemoryDatabase())
    await store.open()
    await store.take_leadership(LeaderClaim(1, 1, NOW))
    clock = FakeClock(NOW)
    settings = Settings(channels={n: ChannelSpec(name=n, command="cat", rate_limit=rate_limit) for n in names})
    channels = {n: Recorder(n) for n in names}
    seen: list[Sequence[i.Intent]] = []
    store.observe(seen.append)
    deliverer = Deliverer(store, lambda: settings, clock, channel_factory=lambda spec: channels[spec.name])
    return store, clock, channels, deliverer, seen


async def round_(deliverer: Deliverer) -> None:
    await deliverer.deliver_due()
    await deliverer.wait_idle()


async def states(store: MemoryStore) -> dict[tuple[str, str], NotificationState]:
    return {key: row.state for key, row in store.database.tables.outbox.items()}


async def test_each_event_is_delivered_once_per_channel_with_its_document_and_recorded() -> None:
    store, _clock, channels, deliverer, seen = await setup("ops", "pager")
    await store.commit([i.NotificationQueued(failed(1), ("ops", "pager")), i.NotificationQueued(failed(2), ("ops",))])
    await round_(deliverer)
    await round_(deliverer)  # nothing is due any more: nothing is sent twice
    assert [d["id"] for d in channels["ops"].got] == ["failed:run:1", "failed:run:2"]
    assert [d["id"] for d in channels["pager"].got] == ["failed:run:1"]
    doc = channels["ops"].got[0]
    assert (doc["event"], doc["job"], doc["run_id"], doc["epoch"], doc["log_tail"]) == ("failed", "etl/load", 1, 1, [])
    assert set((await states(store)).values()) == {NotificationState.SENT}
    sent = [x for batch in seen for x in batch if isinstance(x, i.NotificationSent)]
    assert sorted((x.event_id, x.channel, x.attempts) for x in sent) == [
        ("failed:run:1", "ops", 1),
        ("failed:run:1", "pager", 1),
        ("failed:run:2", "ops", 1),
    ]


async def test_a_channel_that_is_down_keeps_its_events_in_order_with_backoff_and_delivers_them_later() -> None:
    store, clock, channels, deliverer, _seen = await setup("ops", "pager")
    channels["ops"].up = False
    await store.commit([i.NotificationQueued(failed(n), ("ops", "pager")) for n in (1, 2, 3)])
    await round_(deliverer)
    assert len(channels["pager"].got) == 3  # another channel's failure does not hold it up
    rows = {row.event_id: row for (_e, ch), row in store.database.tables.outbox.items() if ch == "ops"}
    assert rows["failed:run:1"].attempts == 1 and rows["failed:run:1"].last_error == "connection refused"
    assert rows["failed:run:2"].attempts == 0 and rows["failed:run:2"].last_error == "waiting: connection refused"
    assert {r.next_attempt_at for r in rows.values()} == {NOW + timedelta(seconds=5)}
    await round_(deliverer)  # not due yet: nothing is tried
    assert store.database.tables.outbox[("failed:run:1", "ops")].attempts == 1
    clock.advance(5)
    await round_(deliverer)  # due, still down: the wait doubles
    assert store.database.tables.outbox[("failed:run:1", "ops")].next_attempt_at == NOW + timedelta(seconds=5 + 10)
    channels["ops"].up = True
    clock.advance(10)
    await round_(deliverer)
    assert [d["id"] for d in channels["ops"].got] == ["failed:run:1", "failed:run:2", "failed:run:3"]
    assert store.database.tables.outbox[("failed:run:1", "ops")].attempts == 3
    assert store.database.tables.outbox[("failed:run:3", "ops")].state is NotificationState.SENT


def test_the_backoff_doubles_from_5s_to_at_most_5_minutes() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n) for n in (1, 2, 3, 4, 7, 8, 50)] == [5, 10, 20, 40, 300, 300, 300]


async def test_a_permanent_refusal_and_a_day_of_failures_give_up() -> None:
    store, clock, channels, deliverer, _seen = await setup("ops", "pager")
    channels["ops"].up, channels["ops"].permanent = False, True
    channels["pager"].up = False
    await store.commit([i.NotificationQueued(failed(1), ("ops", "pager"))])
    await round_(deliverer)
    assert store.database.tables.outbox[("failed:run:1", "ops")].state is NotificationState.FAILED
    assert store.database.tables.outbox[("failed:run:1", "pager")].state is NotificationState.PENDING
    clock.advance(86400 - 5)
    await round_(deliverer)  # the next attempt would be past a day after the event: give up
    pager = store.database.tables.outbox[("failed:run:1", "pager")]
    assert (pager.state, pager.attempts, pager.last_error) == (NotificationState.FAILED, 2, "connection refused")


async def test_a_storm_is_summarised_in_one_summary_sent_at_the_windows_end() -> None:
    store, clock, channels, deliverer, _seen = await setup("ops", rate_limit=3)
    await store.commit([i.NotificationQueued(failed(n, f"etl/j{n}"), ("ops",)) for n in range(1, 21)])
    await round_(deliverer)
    await store.commit([i.NotificationQueued(failed(n, f"etl/j{n}"), ("ops",)) for n in range(21, 38)])
    await round_(deliverer)
    assert [d["run_id"] for d in channels["ops"].got] == [1, 2, 3]
    states_now = await states(store)
    assert sum(s is NotificationState.SUPPRESSED for s in states_now.values()) == 34
    clock.advance(300)
    await round_(deliverer)
    summary = channels["ops"].got[-1]
    assert summary["event"] == "summary" and summary["count"] == 34
    assert summary["message"] == "34 more failures of etl/* in the last 5m"
    assert len(channels["ops"].got) == 4


async def test_a_fenced_deliverer_sends_nothing_more_and_marks_nothing() -> None:
    database = MemoryDatabase()
    store, _clock, channels, deliverer, _seen = await setup("ops", database=database)
    await store.commit([i.NotificationQueued(failed(1), ("ops",))])
    newer = MemoryStore(database)
    await newer.open()
    await newer.take_leadership(LeaderClaim(2, 2, NOW))  # another node took over
    await deliverer.deliver_due()
    with pytest.raises(FencedError):
        await deliverer.wait_idle()
    assert (
        store.database.tables.outbox[("failed:run:1", "ops")].state is NotificationState.PENDING
    )  # for the new active
    with pytest.raises(FencedError):
        await deliverer.deliver_due()
    assert len(channels["ops"].got) == 1  # the one send under way when it was deposed


def sent_ids(channel: Recorder) -> list[int]:
    return [d.get("run_id") for d in channel.got]


async def test_a_storm_whose_suppression_could_not_be_committed_is_summarised_by_the_next_round() -> None:
    store, clock, channels, deliverer, _seen = await setup("ops", rate_limit=3)
    await store.commit([i.NotificationQueued(failed(n, f"etl/j{n}"), ("ops",)) for n in range(1, 6)])
    with store.database.hold_write_lock(), pytest.raises(StoreRetryableError):  # another writer, the disk full
        await deliverer.deliver_due()
    assert channels["ops"].got == []
    await round_(deliverer)  # the same round again, as if the failed one never happened
    assert sent_ids(channels["ops"]) == [1, 2, 3]
    await store.commit([i.NotificationQueued(failed(n, f"etl/j{n}"), ("ops",)) for n in (6, 7)])
    await round_(deliverer)
    outbox = store.database.tables.outbox
    suppressed = [row for row in outbox.values() if row.state is NotificationState.SUPPRESSED]
    assert sorted(row.run_id or 0 for row in suppressed) == [4, 5, 6, 7]
    assert {(row.summary_id, row.channel) in outbox for row in suppressed} == {True}  # their summary exists
    clock.advance(300)
    await round_(deliverer)
    summary = channels["ops"].got[-1]
    assert (summary["event"], summary["count"]) == ("summary", 4)
    assert sent_ids(channels["ops"]) == [1, 2, 3, None]


async def test_the_slots_of_events_never_sent_are_given_back() -> None:
    """The sender stops when it cannot record a delivery; what it had not sent yet did not use the limit."""
    store, _clock, channels, deliverer, _seen = await setup("ops", rate_limit=5)
    lock = contextlib.ExitStack()
    record = channels["ops"].send

    async def send_then_lock(doc: Mapping[str, Any]) -> None:
        await record(doc)
        lock.enter_context(store.database.hold_write_lock())  # so its mark fails

    channels["ops"].send = send_then_lock  # type: ignore[method-assign]
    await store.commit([i.NotificationQueued(failed(n), ("ops",)) for n in (1, 2, 3)])
    await round_(deliverer)
    assert sent_ids(channels["ops"]) == [1]
    lock.close()
    channels["ops"].send = record  # type: ignore[method-assign]
    await round_(deliverer)  # 1 again (at least once), then 2 and 3: 4 of the 5 slots, nothing held back
    assert sent_ids(channels["ops"]) == [1, 1, 2, 3]
    assert set((await states(store)).values()) == {NotificationState.SENT}


async def test_a_deposed_deliverer_stops_at_its_first_mark_even_on_a_row_the_new_active_sent() -> None:
    database = MemoryDatabase()
    old_store, _clock, old_channels, old, _seen = await setup("ops", database=database)
    gate = asyncio.Event()
    record = old_channels["ops"].send

    async def slow_send(doc: Mapping[str, Any]) -> None:
        await record(doc)
        await gate.wait()  # the old active's send is slow: meanwhile another node takes over

    old_channels["ops"].send = slow_send  # type: ignore[method-assign]
    await old_store.commit([i.NotificationQueued(failed(n), ("ops",)) for n in (1, 2, 3, 4)])
    running = asyncio.create_task(old.run())
    for _ in range(100):
        if old_channels["ops"].got:
            break
        await asyncio.sleep(0)
    assert sent_ids(old_channels["ops"]) == [1]
    _new_store, _clock2, new_channels, new, _seen2 = await setup("ops", database=database)  # takes leadership
    await round_(new)
    assert sent_ids(new_channels["ops"]) == [1, 2, 3, 4]
    gate.set()
    with pytest.raises(FencedError):  # and the scheduler stops on it
        await asyncio.wait_for(running, 5)
    assert sent_ids(old_channels["ops"]) == [1]  # only the send under way: not its whole queue again
    assert {row.attempts for row in database.tables.outbox.values()} == {1}


async def test_an_event_refused_for_good_lets_the_events_behind_it_go_on() -> None:
    store, _clock, channels, deliverer, _seen = await setup("mail")
    channels["mail"].refused.add("failed:run:1")
    await store.commit([i.NotificationQueued(failed(n), ("mail",)) for n in (1, 2, 3)])
    await round_(deliverer)
    assert sent_ids(channels["mail"]) == [2, 3]
    rows = store.database.tables.outbox
    assert (rows[("failed:run:1", "mail")].state, rows[("failed:run:1", "mail")].last_error) == (
        NotificationState.FAILED,
        "550 no such user",
    )
    assert rows[("failed:run:3", "mail")].state is NotificationState.SENT


async def test_an_event_that_cannot_be_read_gives_up_and_the_rest_are_delivered() -> None:
    store, _clock, channels, deliverer, _seen = await setup("ops")
    await store.commit([i.NotificationQueued(failed(n), ("ops",)) for n in (1, 2)])
    outbox = store.database.tables.outbox
    outbox[("failed:run:1", "ops")] = dataclasses.replace(outbox[("failed:run:1", "ops")], document="{damaged")
    await round_(deliverer)
    assert sent_ids(channels["ops"]) == [2]
    bad = store.database.tables.outbox[("failed:run:1", "ops")]
    assert bad.state is NotificationState.FAILED
    assert (bad.last_error or "").startswith("internal error: JSONDecodeError")
    await store.commit([i.NotificationQueued(failed(3), ("ops",))])
    await round_(deliverer)  # the deliverer goes on
    assert sent_ids(channels["ops"]) == [2, 3]


async def test_events_of_a_channel_declared_but_invalid_wait_for_it_and_an_undeclared_one_with_nowhere_to_go_gives_up() -> (
    None
):
    store = MemoryStore(MemoryDatabase())
    await store.open()
    await store.take_leadership(LeaderClaim(1, 1, NOW))
    clock = FakeClock(NOW)
    ops = Recorder("ops")
    typo = Settings(channels={}, invalid_channels=frozenset({"ops"}))  # [notify.ops] with a typo in it
    current = [typo]
    deliverer = Deliverer(store, lambda: current[0], clock, channel_factory=lambda _spec: ops)
    await store.commit([i.NotificationQueued(failed(1), ("ops", "gone"))])
    await round_(deliverer)
    rows = store.database.tables.outbox
    waiting = rows[("failed:run:1", "ops")]
    assert (waiting.state, waiting.attempts, waiting.next_attempt_at) == (
        NotificationState.PENDING,
        0,
        NOW + timedelta(seconds=60),
    )
    assert waiting.last_error == "waiting: channel 'ops' is declared in vigil.toml but its definition is invalid"
    gone = rows[("failed:run:1", "gone")]
    assert (gone.state, gone.last_error) == (
        NotificationState.FAILED,
        "channel 'gone' is no longer declared in vigil.toml",
    )
    current[0] = Settings(channels={"ops": ChannelSpec(name="ops", command="cat")})  # the typo fixed
    clock.advance(60)
    await round_(deliverer)
    assert sent_ids(ops) == [1]
    # Left broken, its events give up after the same 24 h as a channel that is down.
    current[0] = typo
    await store.commit([i.NotificationQueued(failed(2), ("ops",))])
    clock.advance(86400 - 120)
    await round_(deliverer)
    assert store.database.tables.outbox[("failed:run:2", "ops")].state is NotificationState.PENDING
    clock.advance(60)
    await round_(deliverer)
    assert store.database.tables.outbox[("failed:run:2", "ops")].state is NotificationState.FAILED
    # A vigil.toml that cannot be parsed at start-up hides every channel: their events wait too.
    current[0] = Settings(channels_unknown=True)
    await store.commit([i.NotificationQueued(dataclasses.replace(failed(3), at=clock.now()), ("ops",))])
    await round_(deliverer)
    unknown = store.database.tables.outbox[("failed:run:3", "ops")]
    assert (unknown.state, unknown.last_error) == (
        NotificationState.PENDING,
        "waiting: vigil.toml cannot be read, so channel 'ops' is unknown",
    )


async def test_a_renamed_channels_events_and_those_queued_while_vigil_toml_was_unreadable_are_handed_on() -> None:
    from engine.notify.routing import SCHEDULER_CHANNELS

    store = MemoryStore(MemoryDatabase())
    await store.open()
    await store.take_leadership(LeaderClaim(1, 1, NOW))
    clock = FakeClock(NOW)
    ops = Recorder("ops")
    unreadable = Settings(channels_unknown=True)
    current = [unreadable]
    deliverer = Deliverer(store, lambda: current[0], clock, channel_factory=lambda _spec: ops)
    # Queued while vigil.toml could not be parsed (routing gives the placeholder), and for `mail`,
    # a channel the fixed file calls `ops` now.
    await store.commit(
        [i.NotificationQueued(failed(1), (SCHEDULER_CHANNELS,)), i.NotificationQueued(failed(2), ("mail",))]
    )
    await round_(deliverer)
    assert ops.got == [] and {r.state for r in store.database.tables.outbox.values()} == {NotificationState.PENDING}
    current[0] = Settings(notify=("ops",), channels={"ops": ChannelSpec(name="ops", command="cat")})
    clock.advance(60)
    await round_(deliverer)
    await round_(deliverer)  # the rows handed on are delivered
    assert sorted(d["id"] for d in ops.got) == ["failed:run:1", "failed:run:2"]  # same ids
    rows = store.database.tables.outbox
    assert rows[("failed:run:2", "mail")].state is NotificationState.FAILED
    assert rows[("failed:run:2", "mail")].last_error == (
        "channel 'mail' is no longer declared in vigil.toml: handed on to [scheduler] notify: ops"
    )
    assert rows[("failed:run:1", SCHEDULER_CHANNELS)].last_error == "handed on to [scheduler] notify: ops"
    assert rows[("failed:run:1", "ops")].state is NotificationState.SENT
