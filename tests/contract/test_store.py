"""The Store contract: what the scheduler relies on, passed by every backend (the `backend` fixture).

Two stores on one backend are two processes on one state directory: the second one's
`take_leadership` deposes the first, whose every later write must be refused.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.errors import FencedError, StoreError, StoreFatalError, StoreRetryableError
from engine.model import ACTIVE_STATES, OPEN_STATES, RAN_STATES, AgentRow, FailoverRow, LeaderRow, Run, RunState
from engine.store import intents as i
from engine.store.abc import JobState, LeaderClaim, Store
from tests.contract.conftest import Backend

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def claim(pid: int = 0) -> LeaderClaim:
    return LeaderClaim(pid or os.getpid(), 1234, NOW)


def fire(run_id: int, *, job: str = "j", at: datetime = NOW, attempt: int = 1, **kw: object) -> i.NewRun:
    fields: dict[str, object] = {"state": RunState.PENDING, "trigger": "schedule", "created_at": NOW, **kw}
    return i.NewRun(id=run_id, job=job, scheduled_for=at, attempt=attempt, **fields)  # type: ignore[arg-type]


def finished(run_id: int, state: RunState, exit_code: int | None, at: datetime = NOW) -> i.RunFinished:
    return i.RunFinished(run_id=run_id, state=state, reason=None, exit_code=exit_code, ended_at=at)


async def leading(store: Store, pid: int = 0) -> Store:
    await store.take_leadership(claim(pid))
    return store


async def deposed(backend: Backend, store: Store) -> Store:
    """Another store takes leadership on the same database; returns it."""
    return await leading(await backend.store(), pid=os.getpid() + 1)


# ---------------------------------------------------------------- runs


async def test_a_fire_committed_twice_returns_its_id_once(store: Store) -> None:
    await leading(store)
    assert await store.commit([fire(1)]) == {1}
    # The same (job, scheduled_for, attempt) under a new id is not new: it must not launch.
    assert await store.commit([fire(2)]) == set()
    assert await store.commit([fire(1)]) == set()
    assert await store.commit([fire(3, attempt=2), fire(4, job="k")]) == {3, 4}
    assert [run.id for run in await store.open_runs()] == [1, 3, 4]
    assert await store.run(2) is None


async def test_run_finished_moves_only_open_rows(store: Store) -> None:
    await leading(store)
    await store.commit([fire(1), i.RunStarted(1, NOW, None)])
    await store.commit([finished(1, RunState.FAILED, 4)])
    # A second report of the same end (a result delivered twice, a late shim record) changes nothing,
    # and a late start does not reopen it.
    later = NOW + timedelta(seconds=5)
    await store.commit([finished(1, RunState.SUCCEEDED, 0, later), i.RunStarted(1, later, None)])
    run = await store.run(1)
    assert run is not None
    assert (run.state, run.exit_code, run.ended_at, run.started_at) == (RunState.FAILED, 4, NOW, NOW)
    assert await store.open_runs() == []


async def test_start_state_open_runs_and_run_states_return_what_was_committed(store: Store) -> None:
    epoch, _ = await store.take_leadership(claim())
    yesterday = NOW - timedelta(days=1)
    await store.commit(
        [
            fire(1, command='["true"]'),
            fire(2, at=yesterday, state=RunState.SKIPPED, ended_at=yesterday, reason="overlap"),
            fire(3, job="k", at=yesterday),
            i.RunStarted(1, NOW, NOW + timedelta(minutes=1)),
            i.AgentChosen(1, "a1"),
            i.KillRequested(1, "kill"),
            i.LastFire("j", NOW),
            i.Paused("k", True),
            i.RunIdMark(3),
        ]
    )
    await store.commit([finished(3, RunState.SUCCEEDED, 0, yesterday)])
    assert await store.run(1) == Run(
        id=1,
        job="j",
        scheduled_for=NOW,
        attempt=1,
        state=RunState.RUNNING,
        trigger="schedule",
        epoch=epoch,
        created_at=NOW,
        started_at=NOW,
        deadline=NOW + timedelta(minutes=1),
        kill_requested="kill",
        agent="a1",
        command='["true"]',
        flow_id=1,  # in no flow: its own
    )
    assert [run.id for run in await store.open_runs()] == [1]
    assert await store.run_states([1, 2, 3, 99]) == {1: RunState.RUNNING, 2: RunState.SKIPPED, 3: RunState.SUCCEEDED}
    start = await store.start_state()
    assert (start.max_run_id, start.run_id_mark) == (3, 3)
    assert start.jobs == {"j": JobState(paused=False, last_fire=NOW), "k": JobState(paused=True, last_fire=None)}
    assert start.last_success == {"k": yesterday}
    await store.commit([i.LastFire("j", None)])  # forgotten
    assert (await store.start_state()).jobs["j"] == JobState(paused=False, last_fire=None)


async def test_launching_waiting_and_a_restated_start_move_the_run(store: Store) -> None:
    await leading(store)
    await store.commit([fire(1, reason="queued"), fire(2, job="k")])
    await store.commit([i.RunLaunching(1)])  # keeps the reason
    await store.commit([i.RunLaunching(2, reason="waited 3s")])  # replaces it
    one, two = await store.run(1), await store.run(2)
    assert one is not None and (one.state, one.reason) == (RunState.LAUNCHING, "queued")
    assert two is not None and (two.state, two.reason) == (RunState.LAUNCHING, "waited 3s")
    await store.commit([i.RunWaiting(2, "no healthy agent in pool p")])
    # A waiting run is open: a new active must find it.
    assert [(run.id, run.state) for run in await store.open_runs()] == [(1, RunState.LAUNCHING), (2, RunState.WAITING)]
    two = await store.run(2)
    assert two is not None and two.reason == "no healthy agent in pool p"
    later = NOW + timedelta(seconds=7)
    await store.commit([i.RunStarted(1, NOW, None), i.StartRestated(1, later, later + timedelta(minutes=1))])
    await store.commit([i.StartRestated(2, later, None)])  # not started: nothing to restate
    one, two = await store.run(1), await store.run(2)
    assert one is not None and (one.started_at, one.deadline) == (later, later + timedelta(minutes=1))
    assert two is not None and (two.state, two.started_at) == (RunState.WAITING, None)
    await store.commit([finished(1, RunState.SUCCEEDED, 0)])
    await store.commit([i.RunWaiting(1, "late"), i.StartRestated(1, NOW, None)])  # a finished run stays
    one = await store.run(1)
    assert one is not None and (one.state, one.reason, one.started_at) == (RunState.SUCCEEDED, None, later)


async def test_prune_leaves_open_runs_and_the_run_id_mark_only_rises(store: Store) -> None:
    await leading(store)
    old = NOW - timedelta(days=40)
    await store.commit([fire(1, at=old), fire(2, job="k", at=old), fire(3), i.RunIdMark(3)])
    await store.commit([finished(1, RunState.SUCCEEDED, 0, old), finished(3, RunState.FAILED, 1)])
    # Run 2 is still open although it was due long ago; run 3 ended after the cut-off.
    assert await store.prunable_runs(NOW - timedelta(days=30)) == [1]
    assert await store.prunable_runs(NOW + timedelta(days=1)) == [1, 3]
    await store.commit([i.RunsPruned((1, 3)), i.RunIdMark(3)])
    assert [run.id for run in await store.open_runs()] == [2]
    assert await store.run(1) is None and await store.run(3) is None
    await store.commit([i.RunIdMark(2)])  # a lower mark never lowers it
    start = await store.start_state()
    assert (start.max_run_id, start.run_id_mark) == (2, 3)  # pruned ids stay used


async def test_take_leadership_raises_the_epoch_above_the_floor_and_returns_the_previous_leader(
    backend: Backend, store: Store
) -> None:
    epoch, previous = await store.take_leadership(claim())
    assert epoch == store.epoch == 1
    assert previous.epoch == 0 and previous.pid is None and previous.clean_stop
    other = await backend.store()
    epoch2, previous2 = await other.take_leadership(LeaderClaim(os.getpid() + 1, 99, NOW), floor=10)
    assert epoch2 == other.epoch == 11  # above both the stored epoch and the floor
    assert previous2 == LeaderRow(epoch=1, pid=os.getpid(), starttime=1234, since=NOW, clean_stop=False)
    await other.commit([i.CleanStop()])
    third = await backend.store()
    epoch3, previous3 = await third.take_leadership(claim(), floor=5)
    assert epoch3 == 12 and previous3.epoch == 11 and previous3.clean_stop


# ---------------------------------------------------------------- catalog, agents, failovers


def upsert(name: str, next_fire: datetime | None = None) -> i.CatalogUpsert:
    return i.CatalogUpsert(name, f"/jobs/{name}.toml", "every 1m", True, None, "", "", next_fire, None)


async def test_next_fire_and_catalog_drop_change_the_catalog(backend: Backend, store: Store) -> None:
    await leading(store)
    await store.commit([upsert("j"), upsert("k"), i.Paused("k", True)])
    later = NOW + timedelta(minutes=1)
    await store.commit([i.NextFire("j", later), i.NextFire("gone", later), i.CatalogDrop("k")])
    jobs = backend.records().jobs()
    assert [(job.name, job.next_fire, job.paused, job.loaded) for job in jobs] == [("j", later, False, True)]
    await store.commit([i.NextFire("j", None)])
    assert [job.next_fire for job in backend.records().jobs()] == [None]


async def test_a_commit_of_a_whole_catalog_writes_every_row_in_order_with_the_rest(
    backend: Backend, store: Store
) -> None:
    # The size of a folder's first load: long runs of one kind (the SQLite ledger binds those while
    # writing them), a kind whose statement changes within the run, and other intents between.
    await leading(store)
    names = [f"team/job{n:04d}" for n in range(700)]
    first_fires = [i.LastFire(name, None if n % 3 == 0 else NOW + timedelta(seconds=n)) for n, name in enumerate(names)]
    rows = [upsert(name, NOW + timedelta(minutes=n)) for n, name in enumerate(names)]
    await store.commit(
        [fire(1), *first_fires, i.Paused(names[5], True), i.CatalogCleared(), *rows, i.CatalogDrop(names[7])]
    )
    jobs = {job.name: job for job in backend.records().jobs()}
    assert len(jobs) == 699 and names[7] not in jobs
    assert jobs[names[699]].next_fire == NOW + timedelta(minutes=699) and jobs[names[5]].paused
    start = await store.start_state()
    assert start.jobs[names[1]].last_fire == NOW + timedelta(seconds=1)
    assert names[699] not in start.jobs or start.jobs[names[699]].last_fire is None  # 699 % 3 == 0: forgotten
    assert sum(state.last_fire is not None for state in start.jobs.values()) == 466
    assert [run.id for run in await store.open_runs()] == [1]


def seen(version: str | None, contact: datetime | None, *, up: bool = True) -> i.AgentSeen:
    return i.AgentSeen("a1", "http://a1:7070", up, contact, version, 5.0, 10.0, 0.5, 1, None)


async def test_agent_seen_keeps_an_unknown_contact_and_version_and_agent_dropped_removes_it(
    backend: Backend, store: Store
) -> None:
    await leading(store)
    await store.commit([seen("1.2", NOW)])
    later = NOW + timedelta(seconds=5)
    await store.commit([seen(None, None, up=False)])  # unknown: kept
    [agent] = backend.records().agents()
    assert agent == AgentRow("a1", "http://a1:7070", False, NOW, "1.2", 5.0, 10.0, 0.5, 1, None)
    await store.commit([seen("", later)])  # known, if empty: replaces
    [agent] = backend.records().agents()
    assert (agent.version, agent.last_contact, agent.up) == ("", later, True)
    await store.commit([i.AgentDropped("a1"), i.AgentDropped("never-seen")])
    assert backend.records().agents() == []


async def test_a_failover_is_recorded_under_the_new_leaders_epoch(backend: Backend, store: Store) -> None:
    epoch, _ = await store.take_leadership(claim())
    await store.commit([i.Failover(NOW, 41, os.getpid(), "heartbeat stale", 1500.0)])
    new = await deposed(backend, store)
    await new.commit([i.Failover(NOW + timedelta(seconds=1), os.getpid(), os.getpid() + 1, "lock released", None)])
    assert backend.records().failovers() == [
        FailoverRow(NOW + timedelta(seconds=1), os.getpid(), os.getpid() + 1, "lock released", None, new.epoch),
        FailoverRow(NOW, 41, os.getpid(), "heartbeat stale", 1500.0, epoch),
    ]
    with pytest.raises(FencedError):
        await store.commit([i.Failover(NOW, None, os.getpid(), "stale", None)])


async def test_a_clean_stop_is_the_next_leaders_previous_row_and_a_deposed_one_marks_nothing(
    backend: Backend, store: Store
) -> None:
    await leading(store)
    new = await deposed(backend, store)
    await store.commit([i.CleanStop()])  # deposed: its stop says nothing of the new leader
    third = await backend.store()
    _, previous = await third.take_leadership(claim())
    assert previous.epoch == new.epoch and not previous.clean_stop
    await third.commit([i.CleanStop()])
    _, previous = await (await backend.store()).take_leadership(claim())
    assert previous.epoch == third.epoch and previous.clean_stop


# ---------------------------------------------------------------- fencing


async def test_a_commit_after_another_store_took_leadership_is_fenced(backend: Backend, store: Store) -> None:
    await leading(store)
    await store.commit([fire(1)])
    new = await deposed(backend, store)
    with pytest.raises(FencedError):
        await store.commit([fire(2, job="k")])
    with pytest.raises(FencedError):
        await store.commit([i.RunStarted(1, NOW, None)])
    with pytest.raises(FencedError):
        await store.commit([i.Audit(NOW, "root", "run", "j", "ok")])
    assert await new.run(2) is None
    run = await new.run(1)
    assert run is not None and run.state == RunState.PENDING
    assert await new.commit([fire(2, job="k")]) == {2}  # the new leader writes


async def test_a_deferred_write_flushed_after_a_takeover_is_fenced(backend: Backend, store: Store) -> None:
    await leading(store)
    await store.commit([fire(1)])
    new = await deposed(backend, store)
    store.defer(i.RunStarted(1, NOW, None))
    with pytest.raises(FencedError):
        await store.flush()
    run = await new.run(1)
    assert run is not None and run.state == RunState.PENDING


async def test_an_intent_deferred_before_taking_leadership_carries_the_old_epoch(store: Store) -> None:
    """The epoch is bound when an intent is deferred: one queued before this store led is fenced."""
    store.defer(i.Audit(NOW, "root", "run", "j", "ok"))
    await leading(store)
    with pytest.raises(FencedError):
        await store.flush()


async def test_a_catalog_rewrite_after_a_takeover_is_fenced(backend: Backend, store: Store) -> None:
    await leading(store)
    job = i.CatalogUpsert("j", "/jobs/j.toml", "every 1m", True, None, "", "", NOW, None)
    await store.commit([i.CatalogCleared(), job])
    new = await deposed(backend, store)
    with pytest.raises(FencedError):
        await store.commit(
            [i.CatalogCleared(), i.CatalogUpsert("k", "/jobs/k.toml", "manual", True, None, "", "", None, None)]
        )
    # The rewrite was one transaction: its delete went with it. The new leader's rewrite goes through.
    await new.commit([i.CatalogCleared(), job])


async def test_a_prune_after_a_takeover_deletes_nothing(backend: Backend, store: Store) -> None:
    await leading(store)
    await store.commit([fire(1)])
    await store.commit([finished(1, RunState.SUCCEEDED, 0)])
    new = await deposed(backend, store)
    with pytest.raises(FencedError):  # its mark is refused, and the delete in the same transaction with it
        await store.commit([i.RunsPruned((1,)), i.RunIdMark(1)])
    await store.commit([i.RunsPruned((1,))])  # a delete alone checks the epoch itself: it deletes nothing
    assert await new.run(1) is not None


# ---------------------------------------------------------------- faults


async def test_a_failed_commit_keeps_its_deferred_intents_for_the_next(backend: Backend, store: Store) -> None:
    await leading(store)
    await store.commit([fire(1), i.RunStarted(1, NOW, None)])
    store.defer(finished(1, RunState.FAILED, 4))
    with backend.hold_write_lock(), pytest.raises(StoreRetryableError, match="locked by another writer"):
        await store.commit([fire(2, job="k")])  # the transaction that carried the deferred end fails
    assert store.health.failing
    run = await store.run(1)
    assert run is not None and run.state == RunState.RUNNING and await store.run(2) is None
    await store.flush()  # the next attempt writes it
    assert not store.health.failing
    run = await store.run(1)
    assert run is not None and (run.state, run.exit_code) == (RunState.FAILED, 4)


async def test_taking_leadership_while_another_writer_holds_the_lock_is_retryable(
    backend: Backend, store: Store
) -> None:
    with backend.hold_write_lock(), pytest.raises(StoreRetryableError, match="locked by another writer"):
        await store.take_leadership(claim())
    assert store.epoch == 0
    assert await store.take_leadership(claim()) == (1, LeaderRow(0, None, None, None, True))


async def test_an_intent_the_store_cannot_hold_is_fatal_and_keeps_the_deferred_intents(store: Store) -> None:
    await leading(store)
    await store.commit([fire(1)])
    store.defer(i.RunStarted(1, NOW, None))
    too_big = i.RunFinished(1, RunState.SUCCEEDED, None, 0, NOW, peak_rss=1 << 70)
    with pytest.raises(StoreFatalError, match=r"(?i)cannot store run_?finished"):
        await store.commit([too_big])
    run = await store.run(1)
    assert run is not None and run.state == RunState.PENDING  # rolled back: the start with it
    await store.flush()
    run = await store.run(1)
    assert run is not None and run.state == RunState.RUNNING


async def test_a_closed_store_writes_and_reads_nothing(store: Store) -> None:
    await leading(store)
    await store.commit([fire(1)])
    assert store.is_open and store.file_lost() is None and not store.abandoned
    await store.close()
    assert not store.is_open and not store.abandoned
    with pytest.raises(StoreError, match="closed"):
        await store.commit([i.RunStarted(1, NOW, None)])
    with pytest.raises(StoreError, match="closed"):
        await store.open_runs()


# ---------------------------------------------------------------- the SQLite backend's own


def test_the_states_spelled_out_in_the_sqlite_statements_are_the_models() -> None:
    """queries.sql and schema.sql spell state sets out (so the partial index applies): each list is the
    model's open states, or, for a conditional update, the states the memory backend moves it from."""
    from engine.store import memory
    from engine.store.sqlite import queries
    from engine.store.sqlite.queries import QUERIES

    narrower = {
        "run_started": memory._STARTABLE,
        "run_started_clear_reason": memory._STARTABLE,
        "start_restated": ACTIVE_STATES,
        "run_waiting": memory._WAITABLE,
        "last_ends": RAN_STATES,
    }
    schema = (Path(queries.__file__).parent / "schema.sql").read_text()
    statements = [*QUERIES.items(), ("schema.sql", schema)]
    spelled = {
        (name, frozenset(re.findall(r"'(\w+)'", group)))
        for name, sql in statements
        for group in re.findall(r"state (?:NOT )?IN \(([^)]*)\)", sql)
    }
    assert {name for name, _ in spelled} >= {"open_runs", "prunable_runs", "schema.sql", *narrower}
    assert {(name, states) for name, states in spelled if states != narrower.get(name, frozenset(OPEN_STATES))} == set()


async def test_sqlite_reader_keyset_pages_stay_stable_while_inserts_land(tmp_path: Path) -> None:
    """A page reached by `before_id` shows the same runs however many newer ones arrive, and the
    window's position and total follow the new ones (the dashboard's runs view)."""
    from engine.paths import StatePaths
    from engine.store.abc import StoreReader
    from engine.store.sqlite.ledger import Ledger
    from engine.store.sqlite.reader import SqliteReader

    paths = StatePaths(tmp_path / "state")
    ledger = Ledger(paths)
    await ledger.open()
    await leading(ledger)

    async def insert(ids: range) -> None:
        at = [NOW + timedelta(seconds=n) for n in ids]
        await ledger.commit(
            [
                fire(n, job="a" if n % 2 else "b", at=t, state=RunState.SUCCEEDED, ended_at=t)
                for n, t in zip(ids, at, strict=True)
            ]
        )

    await insert(range(1, 26))
    reader: StoreReader = SqliteReader(paths)
    try:
        first = reader.runs_window(limit=10)
        assert [r.id for r in first.runs] == list(range(25, 15, -1)) and (first.newer, first.total) == (0, 25)
        second = reader.runs_window(limit=10, before_id=16, count_base=first.count_base)
        assert [r.id for r in second.runs] == list(range(15, 5, -1)) and (second.newer, second.total) == (10, 25)
        await insert(range(26, 31))
        again = reader.runs_window(limit=10, before_id=16, count_base=second.count_base)
        assert [r.id for r in again.runs] == [r.id for r in second.runs]
        assert (again.newer, again.total) == (15, 30)
        of_a = reader.runs_window(job="a", limit=5, before_id=16)
        assert [r.id for r in of_a.runs] == [15, 13, 11, 9, 7] and (of_a.newer, of_a.total) == (7, 15)
    finally:
        reader.close()
        await ledger.close()


def test_the_sqlite_readers_and_connections_run_only_named_statements() -> None:
    """Every query and read transaction of reader.py and db.py is a named statement of queries.sql;
    only the writer's own transaction control and connection pragmas are spelled in place."""
    import ast

    from engine.store.sqlite import db, reader
    from engine.store.sqlite.queries import QUERIES

    in_place = re.compile(r"(PRAGMA |BEGIN IMMEDIATE$|COMMIT$|ROLLBACK$)")
    unnamed: list[str] = []
    for module in (db, reader):
        for node in ast.walk(ast.parse(Path(module.__file__ or "").read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
                continue
            first = node.args[0]
            text = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
            if node.func.attr == "execute" and text is not None and not in_place.match(text):
                unnamed.append(f"{module.__name__}: execute({text!r})")
            if node.func.attr in {"_plain", "_rows", "_scalar"} and text is not None and text not in QUERIES:
                unnamed.append(f"{module.__name__}: {node.func.attr}({text!r})")
    assert unnamed == []


async def test_a_hold_is_kept_with_the_job_and_a_blocked_reason_changes_only_a_pending_row(
    backend: Backend, store: Store
) -> None:
    await leading(store)
    row = i.CatalogUpsert("j", "/jobs/j.toml", "every 1m", True, None, "", "", None, None, 7, "gpu=1,db=2")
    await store.commit([row, i.Held("j", True), i.Paused("j", True), fire(1), fire(2, job="k")])
    await store.commit([i.RunLaunching(2), i.RunBlocked(1, "waiting for gpu: 1/1 held by run 2")])
    await store.commit([i.RunBlocked(2, "not pending: unchanged")])
    assert (await store.run(1)).reason == "waiting for gpu: 1/1 held by run 2"  # type: ignore[union-attr]
    assert (await store.run(2)).reason is None  # type: ignore[union-attr]
    (job,) = backend.records().jobs()
    assert (job.held, job.paused, job.priority, job.locks) == (True, True, 7, "gpu=1,db=2")
    await store.commit([i.Held("j", False)])
    start = await (await deposed(backend, store)).start_state()
    assert start.jobs["j"] == JobState(paused=True, last_fire=None, held=False)
