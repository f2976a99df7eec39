"""The Store contract for commit observers (every backend): what they are told is what was written.

The metrics count runs and deliveries from these calls, so a deferred intent must be seen with the
commit that wrote it, a repeated fire's row not at all, and a commit that failed never.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from engine.errors import FencedError, StoreRetryableError
from engine.model import RunState
from engine.store import intents as i
from engine.store.abc import Store
from tests.contract.conftest import Backend
from tests.contract.test_store import NOW, deposed, finished, fire, leading


class Seen:
    def __init__(self) -> None:
        self.calls: list[list[i.Intent]] = []

    def __call__(self, intents: Sequence[i.Intent]) -> None:
        self.calls.append(list(intents))


async def test_an_observer_sees_each_commit_deferred_intents_first_and_only_new_rows(store: Store) -> None:
    seen = Seen()
    store.observe(seen)
    await leading(store)
    await store.commit([fire(1)])
    store.defer(i.RunStarted(1, NOW, None))
    await store.flush()
    store.defer(i.KillRequested(1, "kill"))
    # A repeated fire (same job, time and attempt) is ignored by the store: not a new run to count.
    await store.commit([finished(1, RunState.KILLED, None), fire(2), fire(3, job="k")])
    assert seen.calls == [
        [fire(1)],
        [i.RunStarted(1, NOW, None)],
        [i.KillRequested(1, "kill"), fire(3, job="k"), finished(1, RunState.KILLED, None)],
    ]
    await store.flush()  # nothing to write: nothing to tell
    assert len(seen.calls) == 3


async def test_a_failed_commit_is_not_observed_and_its_deferred_intents_come_with_the_next(
    backend: Backend, store: Store
) -> None:
    seen = Seen()
    store.observe(seen)
    await leading(store)
    await store.commit([fire(1)])
    store.defer(i.RunStarted(1, NOW, None))
    with backend.hold_write_lock(), pytest.raises(StoreRetryableError):
        await store.commit([finished(1, RunState.SUCCEEDED, 0)])
    assert seen.calls == [[fire(1)]]
    await store.commit([finished(1, RunState.SUCCEEDED, 0)])
    assert seen.calls[1] == [i.RunStarted(1, NOW, None), finished(1, RunState.SUCCEEDED, 0)]


async def test_a_fenced_commit_is_not_observed(backend: Backend, store: Store) -> None:
    seen = Seen()
    store.observe(seen)
    await leading(store)
    await deposed(backend, store)
    with pytest.raises(FencedError):
        await store.commit([fire(1)])
    assert seen.calls == []


async def test_a_failing_observer_neither_fails_the_commit_nor_stops_the_others(store: Store) -> None:
    def broken(intents: Sequence[i.Intent]) -> None:
        raise RuntimeError("observer bug")

    seen = Seen()
    store.observe(broken)
    store.observe(seen)
    await leading(store)
    assert await store.commit([fire(1)]) == {1}
    assert seen.calls == [[fire(1)]]
    assert [run.id for run in await store.open_runs()] == [1]
