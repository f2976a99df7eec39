"""Policy unit tests: the planner and the run table on a fake clock. No store, no processes, no sleep.

The planner turns fires, ends and retries into a Batch (intents + launches); these tests read the
batch as the loop would commit it. The last ones drive the whole Scheduler with a FakeExecutor on the
in-memory store: a fire whose row already exists never launches, a failed commit undoes new work and
carries the accounting, refusals are audited, a launch the executor refuses fails and is retried.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.clock import FakeClock, iso
from engine.config import ScanResult
from engine.errors import StoreRetryableError
from engine.exec.fake import FakeExecutor
from engine.exec.port import RunContext, ShimExit
from engine.model import Catchup, ChannelSpec, JobSpec, Overlap, RunState, Settings
from engine.notify.events import Event, EventKind
from engine.paths import StatePaths
from engine.run.catalog import Catalog
from engine.run.loop import Scheduler
from engine.run.planner import Batch, Planner, Trigger
from engine.run.table import RunTable
from engine.store import intents as i
from engine.store.memory import MemoryStore
from tests.helpers import write_job

START = datetime(2026, 11, 29, 2, 59, 59, 500000, tzinfo=UTC)  # the first 10 s fire is 03:00:00


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, 29, hour, minute, second, tzinfo=UTC)


def job(name: str = "j", **fields: object) -> JobSpec:
    return JobSpec(name=name, path=f"/jobs/{name}.toml", command="true", **fields)  # type: ignore[arg-type]


@dataclass
class Plan:
    """A planner fed by hand: `scan` loads jobs, `tick` lets time pass and handles what fell due."""

    clock: FakeClock = field(default_factory=lambda: FakeClock(START))
    settings: Settings = field(default_factory=Settings)

    def __post_init__(self) -> None:
        self.table = RunTable(self.clock)
        self.planner = Planner(self.table, self.clock)
        self.catalog = Catalog(self.planner, Path("/jobs"))

    def scan(self, *jobs: JobSpec) -> None:
        result = ScanResult({j.name: j for j in jobs}, {j.name for j in jobs}, set(), [], self.settings)
        self.catalog.apply_scan(result, self.clock.now(), initial=True)

    def tick(self, seconds: float = 0.0) -> Batch:
        if seconds:
            self.clock.advance(seconds)
        batch = Batch()
        self.planner.handle_retries(self.clock.monotonic(), batch)
        self.planner.handle_fires(self.clock.now(), batch)
        return batch

    def end(self, run_id: int, exit_code: int = 0) -> Batch:
        batch = Batch()
        self.planner.handle_finished([ShimExit(run_id, exit_code, None, None, None)], self.clock.now(), batch)
        return batch


def rows(batch: Batch) -> list[tuple[datetime, RunState, str | None]]:
    return [(row.scheduled_for, row.state, row.reason) for row in batch.rows]


def of_kind(batch: Batch, kind: type) -> list[object]:
    return [intent for intent in batch.intents if isinstance(intent, kind)]


# ------------------------------------------------------------------------------------ overlap


def test_overlap_skip_skips_a_fire_while_the_job_runs() -> None:
    p = Plan()
    p.scan(job(every=10.0))
    first = p.tick(0.5)
    assert rows(first) == [(at(3), RunState.LAUNCHING, None)]
    (run,) = first.rows
    assert rows(p.tick(10)) == [(at(3, 0, 10), RunState.SKIPPED, f"overlap=skip: run {run.id} still running")]
    p.end(run.id)
    assert rows(p.tick(10)) == [(at(3, 0, 20), RunState.LAUNCHING, None)]


def test_overlap_queue_waits_up_to_max_queued_and_starts_the_next_when_the_run_ends() -> None:
    p = Plan()
    p.scan(job(every=10.0, overlap=Overlap.QUEUE, max_queued=1))
    (running,) = p.tick(0.5).rows
    (waiting,) = p.tick(10).rows
    assert (waiting.state, waiting.reason) == (RunState.PENDING, f"overlap=queue: waiting for run {running.id}")
    assert rows(p.tick(10)) == [
        (at(3, 0, 20), RunState.SKIPPED, "overlap=queue: queue full (1 waiting, max_queued = 1)")
    ]
    after_end = p.end(running.id)
    assert after_end.launches == [waiting.id]
    assert i.RunLaunching(waiting.id, f"started after run {running.id} ended") in after_end.intents
    assert p.table.get(waiting.id).state is RunState.LAUNCHING  # type: ignore[union-attr]


def test_overlap_allow_launches_beside_a_running_run() -> None:
    p = Plan()
    p.scan(job(every=10.0, overlap=Overlap.ALLOW))
    p.tick(0.5)
    assert rows(p.tick(10)) == [(at(3, 0, 10), RunState.LAUNCHING, None)]
    assert len(p.table.active["j"]) == 2


# ------------------------------------------------------------------------------------ retries


def test_a_failed_run_is_retried_after_its_delay_doubling_each_attempt_up_to_retries() -> None:
    p = Plan()
    p.scan(job(every=3600.0, retries=2, retry_delay=5.0))
    (run,) = p.tick(0.5).rows
    ended = p.end(run.id, exit_code=1)
    (retry,) = ended.rows
    assert (retry.attempt, retry.state, retry.trigger) == (2, RunState.PENDING, Trigger.RETRY)
    assert retry.not_before == p.clock.now() + timedelta(seconds=5)
    assert retry.reason == "retry 2 of 3 after failed (in 5s)"
    assert p.tick(4.9).launches == []
    assert p.tick(0.1).launches == [retry.id]
    (second_retry,) = p.end(retry.id, exit_code=1).rows
    assert second_retry.reason == "retry 3 of 3 after failed (in 10s)"
    assert p.tick(10).launches == [second_retry.id]
    assert p.end(second_retry.id, exit_code=1).rows == []  # no attempts left


def test_a_due_retry_starts_even_while_a_newer_fire_of_its_job_runs() -> None:
    """Today's behaviour, pinned: a retry does not consult `overlap` (see the issue-10 report)."""
    p = Plan()
    p.scan(job(every=10.0, retries=1, retry_delay=15.0, overlap=Overlap.SKIP))
    (run,) = p.tick(0.5).rows
    (retry,) = p.end(run.id, exit_code=1).rows  # due at 03:00:15
    (newer,) = p.tick(10).rows  # 03:00:10 launches: no run of the job is active
    assert newer.state is RunState.LAUNCHING
    assert p.tick(5).launches == [retry.id]  # the retry starts beside it
    assert p.table.active["j"] == {newer.id, retry.id}


# ------------------------------------------------------------------------------------ after


def test_a_scheduled_job_with_after_fires_only_once_its_upstream_succeeded_since_its_last_fire() -> None:
    p = Plan()
    p.scan(job("up"), job("down", every=10.0, after=("up",)))
    assert rows(p.tick(0.5)) == [(at(3), RunState.SKIPPED, "after: not yet succeeded since the previous run: up")]
    p.planner.last_success["up"] = at(3, 0, 5)
    assert rows(p.tick(10)) == [(at(3, 0, 10), RunState.LAUNCHING, None)]


def test_an_unscheduled_after_job_fires_when_its_upstream_succeeds() -> None:
    p = Plan()
    p.scan(job("up"), job("down", after=("up",)))
    up = p.planner.fire(Batch(), p.planner.jobs["up"], p.clock.now(), Trigger.MANUAL, p.clock.now())
    ended = p.end(up.id)
    (down,) = ended.rows
    assert (down.job, down.trigger, down.reason) == ("down", Trigger.AFTER, "after: up succeeded (run 1)")
    assert i.LastFire("down", p.clock.now()) in ended.intents
    failed = p.planner.fire(Batch(), p.planner.jobs["up"], p.clock.now(), Trigger.MANUAL, p.clock.now())
    # A failure does not start it: the step is recorded skipped in that flow, saying why.
    assert rows(p.end(failed.id, exit_code=1)) == [
        (p.clock.now(), RunState.SKIPPED, f"after: up failed (run {failed.id}); this step needs success")
    ]


# ------------------------------------------------------------------------------------ catch-up


@pytest.mark.parametrize(
    ("catchup", "expect"),
    [
        (Catchup.LATEST, [RunState.MISSED, RunState.MISSED, RunState.LAUNCHING]),
        (Catchup.ALL, [RunState.LAUNCHING, RunState.PENDING, RunState.PENDING]),
        (Catchup.NONE, [RunState.MISSED, RunState.MISSED, RunState.MISSED]),
    ],
)
def test_fires_missed_during_a_stall_follow_catchup(catchup: Catchup, expect: list[RunState]) -> None:
    p = Plan()
    p.scan(job(every=10.0, catchup=catchup))
    p.clock.set(START + timedelta(seconds=25))  # 03:00:00, :10 and :20 fall due together, all late
    batch = p.tick()
    assert [(row.scheduled_for, row.state) for row in batch.rows] == list(
        zip([at(3), at(3, 0, 10), at(3, 0, 20)], expect, strict=True)
    )
    late = [row.reason for row in batch.rows if row.state is RunState.MISSED]
    # Late fires after this leadership began, with no clock step or store fault: the loop was slow.
    assert all(reason is not None and reason.startswith("scheduler overloaded: catchup=") for reason in late)
    assert of_kind(batch, i.LastFire) == [i.LastFire("j", at(3, 0, 20))]


def test_a_long_gap_records_the_newest_misses_and_one_summary_row() -> None:
    p = Plan(settings=Settings(max_missed_rows=2))
    p.scan(job(every=10.0, catchup=Catchup.NONE))
    p.clock.set(START + timedelta(seconds=45))  # 03:00:00 .. 03:00:40: five fires, two kept
    batch = p.tick()
    summary, *kept = batch.rows
    assert [row.scheduled_for for row in kept] == [at(3, 0, 30), at(3, 0, 40)]
    assert summary.scheduled_for == at(3, 0, 30) - timedelta(microseconds=1)
    assert summary.state is RunState.MISSED
    assert summary.reason == "scheduler overloaded: 3 earlier fires not recorded individually (max_missed_rows)"


def test_a_failed_commit_undoes_the_fires_so_they_come_due_again() -> None:
    p = Plan()
    p.scan(job(every=10.0))
    first_id = p.planner.next_id
    work = Batch(first_id=first_id)
    p.clock.advance(0.5)
    p.planner.handle_fires(p.clock.now(), work)
    assert len(work.rows) == 1
    p.planner.undo(work, p.planner.next_id)
    assert p.planner.next_id == first_id and len(p.table) == 0
    again = p.tick()  # the same fire, from the same last fire
    assert rows(again) == [(at(3), RunState.LAUNCHING, None)] and again.rows[0].id == first_id


# ------------------------------------------------------------------------------------ the loop


@dataclass
class Loop:
    scheduler: Scheduler
    store: MemoryStore
    clock: FakeClock
    executor: FakeExecutor


@pytest.fixture
async def loop(tmp_path: Path) -> AsyncIterator[Loop]:
    """The whole loop on a fake clock, a FakeExecutor and the in-memory store: no process, no sleep."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_job(jobs, "j", 'every = "10s"\ncommand = "true"\n')
    clock = FakeClock(START)
    store = MemoryStore()
    made: list[FakeExecutor] = []

    def executor(ctx: RunContext) -> FakeExecutor:
        made.append(FakeExecutor(ctx))
        return made[-1]

    scheduler = Scheduler(StatePaths(tmp_path / "state"), jobs, clock=clock, store=store, local_executor=executor)
    await scheduler.take_leadership(pid=os.getpid(), starttime=None, cause="start")
    await scheduler.prepare()
    yield Loop(scheduler, store, clock, made[0])
    await scheduler.close_executors()
    await store.close()


async def test_a_fire_whose_row_exists_already_is_never_launched(loop: Loop) -> None:
    # Another active recorded this fire before (the wall clock went back since): the ledger ignores
    # the second row, and the loop does not launch it.
    await loop.store.commit([i.NewRun(99, "j", at(3), 1, RunState.SUCCEEDED, Trigger.SCHEDULE, START, ended_at=START)])
    loop.clock.advance(0.5)
    await loop.scheduler.iterate()
    assert loop.executor.launched == []
    assert len(loop.scheduler.table) == 0
    loop.clock.advance(10)
    await loop.scheduler.iterate()
    assert len(loop.executor.launched) == 1  # the next fire time runs as scheduled


async def test_a_failed_commit_carries_the_run_ends_and_refires_the_new_work(loop: Loop) -> None:
    loop.clock.advance(0.5)
    await loop.scheduler.iterate()  # 03:00:00 launches
    (first,) = loop.executor.launched
    loop.executor.finish(first, 0)
    loop.clock.advance(10)
    with loop.store.database.hold_write_lock():  # another writer holds the lock: nothing is written
        await loop.scheduler.iterate()  # the end of `first` and the 03:00:10 fire
    assert loop.executor.launched == [first]
    assert not (await loop.store.run(first)).state.terminal  # type: ignore[union-attr]
    loop.store.health.retry_at = 0.0  # a test does not wait out the backoff
    await loop.scheduler.iterate()
    assert (await loop.store.run(first)).state is RunState.SUCCEEDED  # type: ignore[union-attr]
    assert len(loop.executor.launched) == 2  # the undone fire came due again and ran once
    second = await loop.store.run(loop.executor.launched[1])
    assert second is not None and second.scheduled_for == at(3, 0, 10) and second.id == first + 1


async def test_an_unknown_run_or_job_is_refused_as_not_found_and_audited(loop: Loop) -> None:
    kill = asyncio.create_task(loop.scheduler.command("kill", {"run_id": 12345, "user": "op"}))
    pause = asyncio.create_task(loop.scheduler.command("pause", {"job": "nope", "user": "op"}))
    await asyncio.sleep(0)  # both queued for the loop
    await loop.scheduler.iterate()
    assert await kill == {
        "ok": False,
        "error": "run 12345 is not running (it may have ended already)",
        "kind": "not_found",
    }
    assert await pause == {"ok": False, "error": "no job named 'nope'", "kind": "not_found"}
    assert await loop.scheduler.command("rerun", {"run_id": 777, "user": "op"}) == {
        "ok": False,
        "error": "no run with id 777",
        "kind": "not_found",
    }
    await loop.store.flush()
    audit = loop.store.database.tables.audit
    assert [(a.user, a.action, a.target, a.result) for a in audit] == [
        ("op", "kill", "12345", "refused: run 12345 is not running (it may have ended already)"),
        ("op", "pause", "nope", "refused: no job named 'nope'"),
        ("op", "rerun", "777", "refused: no run with id 777"),
    ]


async def test_a_job_whose_file_does_not_load_is_refused_not_missing(loop: Loop) -> None:
    """`vigil run` of a job whose file is broken exits 1 (refused), not 3 (no such job)."""
    (loop.scheduler.folder.root / "broken.toml").write_text("command = \n")
    await loop.scheduler.rescan()
    run = asyncio.create_task(loop.scheduler.command("run", {"job": "broken", "user": "op"}))
    await asyncio.sleep(0)
    await loop.scheduler.iterate()
    assert await run == {"ok": False, "error": "no job named 'broken'", "kind": "refused"}


async def test_a_run_its_executor_cannot_start_fails_with_the_reason_and_is_retried(loop: Loop) -> None:
    write_job(loop.scheduler.folder.root, "j", 'every = "1h"\nretries = 1\nretry_delay = "5s"\ncommand = "true"\n')
    await loop.scheduler.rescan()
    loop.executor.refuse = "could not start: workdir /gone: no such directory"
    loop.clock.advance(0.5)
    await loop.scheduler.iterate()  # 03:00:00 is committed, then its launch fails
    await loop.scheduler.iterate()  # the failure (decided mid-commit) and its retry are committed next
    failed, retry = sorted(loop.store.database.tables.runs.values(), key=lambda run: run.id)
    assert (failed.state, failed.reason, failed.attempt) == (
        RunState.FAILED,
        "could not start: workdir /gone: no such directory",
        1,
    )
    assert (retry.state, retry.attempt) == (RunState.PENDING, 2)
    loop.executor.refuse = None
    loop.clock.advance(5)
    await loop.scheduler.iterate()
    assert len(loop.executor.launched) == 1


# ------------------------------------------------------------------------------------ events

OPS = Settings(notify=("ops",), channels={"ops": ChannelSpec(name="ops", command="true")})


def events(batch: Batch) -> list[Event]:
    """The events this batch queues (each for the `ops` channel), in order."""
    queued = [intent for intent in batch.intents if isinstance(intent, i.NotificationQueued)]
    assert all(q.channels == ("ops",) for q in queued)
    return [q.event for q in queued]


def test_a_failure_after_the_last_retry_queues_one_failed_event_and_a_retried_one_none() -> None:
    p = Plan(settings=OPS)
    p.scan(job(every=3600.0, retries=1, retry_delay=5.0))
    (run,) = p.tick(0.5).rows
    first_end = p.end(run.id, exit_code=3)
    assert events(first_end) == []  # retried: nothing announced
    (retry,) = first_end.rows
    p.tick(5)
    last_end = p.end(retry.id, exit_code=3)
    (event,) = events(last_end)
    assert event == Event(
        id=f"failed:run:{retry.id}",
        event=EventKind.FAILED,
        at=p.clock.now(),
        job="j",
        run_id=retry.id,
        state="failed",
        exit_code=3,
        reason="exit code 3",
        attempt=2,
        final=True,
        message=f"job j run {retry.id} failed: exit code 3 (after the last of 2 attempts)",
    )
    # Queued in the batch of the run's end: one transaction holds both.
    assert i.RunFinished in {type(intent) for intent in last_end.intents}


def test_timed_out_killed_and_unknown_ends_are_announced_with_why_no_retry_followed() -> None:
    p = Plan(settings=OPS)
    p.scan(job(every=10.0, timeout=2.0, retries=2, overlap=Overlap.ALLOW))
    (timed,) = p.tick(0.5).rows
    p.table.get(timed.id).kill_requested = "timeout"  # type: ignore[union-attr]
    (killed,) = p.tick(10).rows
    p.table.get(killed.id).kill_requested = "kill"  # type: ignore[union-attr]
    (lost,) = p.tick(10).rows
    assert events(p.end(timed.id, exit_code=-9)) == []  # timed out, retried
    (k,) = events(p.end(killed.id, exit_code=-9))
    assert (k.event, k.state, k.final, k.message) == (
        EventKind.KILLED,
        "killed",
        True,
        f"job j run {killed.id} killed: killed by operator (attempt 1; a killed run is not retried)",
    )
    batch = Batch()
    p.planner.handle_finished([ShimExit(lost.id, None, None, None, None, reason="shim gone")], p.clock.now(), batch)
    (u,) = events(batch)
    assert (u.id, u.event, u.exit_code, u.reason) == (f"unknown:run:{lost.id}", EventKind.UNKNOWN, None, "shim gone")


def test_recovered_is_the_first_success_after_an_announced_failure_only() -> None:
    p = Plan(settings=OPS)
    p.scan(job(every=10.0, retries=1, retry_delay=1.0))
    (a,) = p.tick(0.5).rows
    (a_retry,) = p.end(a.id, exit_code=1).rows
    p.tick(1)
    assert events(p.end(a_retry.id, exit_code=0)) == []  # a retried failure then a success: no recovery
    (b,) = p.tick(9).rows
    (b_retry,) = p.end(b.id, exit_code=1).rows
    p.tick(1)
    assert [e.event for e in events(p.end(b_retry.id, exit_code=1))] == [EventKind.FAILED]
    (c,) = p.tick(9).rows
    (recovered,) = events(p.end(c.id, exit_code=0))
    assert (recovered.id, recovered.event, recovered.run_id, recovered.state) == (
        f"recovered:run:{c.id}",
        EventKind.RECOVERED,
        c.id,
        "succeeded",
    )
    (d,) = p.tick(10).rows
    assert events(p.end(d.id, exit_code=0)) == []  # the second success is not news


def test_a_gap_of_1000_missed_fires_is_one_missed_event_with_its_count() -> None:
    p = Plan(settings=Settings(notify=OPS.notify, channels=OPS.channels, max_missed_rows=100))
    p.scan(job(every=10.0, catchup=Catchup.NONE))
    p.clock.set(START + timedelta(seconds=9995.5))  # 03:00:00 .. 05:46:30: 1000 fires, all late
    batch = p.tick()
    missed = [row for row in batch.rows if row.state is RunState.MISSED]
    assert len(missed) == 101  # 100 rows and the summary row of the 900 older ones
    (event,) = events(batch)
    assert (event.id, event.event, event.job, event.count) == (
        f"missed:run:{missed[0].id}",
        EventKind.MISSED,
        "j",
        1000,
    )
    assert (event.first_at, event.last_at) == (at(3), at(3) + timedelta(seconds=9990))
    assert event.reason == "scheduler overloaded"
    assert event.message == f"job j: 1000 fires missed ({iso(at(3))} to {iso(at(5, 46, 30))}): scheduler overloaded"
    after = p.tick(5)  # 05:46:40, on time: it runs, and nothing more is missed
    assert rows(after) == [(at(5, 46, 40), RunState.LAUNCHING, None)] and events(after) == []


def test_each_job_and_each_gap_is_its_own_missed_event() -> None:
    p = Plan(settings=OPS)
    p.scan(job("a", every=10.0, catchup=Catchup.NONE), job("b", every=10.0, catchup=Catchup.LATEST))
    p.clock.set(START + timedelta(seconds=25))
    first = events(p.tick())
    assert [(e.job, e.count) for e in first] == [("a", 3), ("b", 2)]  # b runs its newest late fire
    p.clock.advance(40)
    second = events(p.tick())
    assert [(e.job, e.count) for e in second] == [("a", 4), ("b", 3)]
    assert {e.id for e in first}.isdisjoint(e.id for e in second)


def test_a_run_of_a_job_that_went_away_is_announced_to_the_scheduler_channels() -> None:
    p = Plan(settings=OPS)
    p.scan(job(every=10.0, notify=("pager",)))
    (run,) = p.tick(0.5).rows
    p.scan()  # the job file is removed
    batch = Batch()
    info = p.table.get(run.id)
    assert info is not None
    p.planner.finish(info, RunState.FAILED, "job j no longer exists", None, p.clock.now(), batch)
    (event,) = events(batch)
    assert (event.event, event.reason, event.message) == (
        EventKind.FAILED,
        "job j no longer exists",
        f"job j run {run.id} failed: job j no longer exists (no retries)",
    )


async def test_a_new_active_continues_recovered_from_the_last_outcome_in_the_ledger(loop: Loop) -> None:
    # A previous active's last word on j: failed, no retry followed (the catalog holds j since prepare()).
    await loop.store.commit([i.NewRun(50, "j", at(2), 1, RunState.FAILED, Trigger.SCHEDULE, START, ended_at=START)])
    start = await loop.store.start_state()
    loop.scheduler.planner.last_outcome.update(start.last_end)  # as _load_state does at takeover
    loop.scheduler.planner.settings = OPS
    loop.clock.advance(0.5)
    await loop.scheduler.iterate()
    (run,) = loop.executor.launched
    loop.executor.finish(run, 0)
    await loop.scheduler.iterate()
    (row,) = await loop.store.due_notifications(loop.clock.now())
    assert (row.event_id, row.channel) == (f"recovered:run:{run}", "ops")
    assert Event.from_json(row.document).message == f"job j run {run} succeeded; its previous outcome was failed"


async def test_writes_refused_for_a_while_are_one_store_error_event_in_the_first_commit_that_succeeds(
    loop: Loop,
) -> None:
    loop.scheduler.planner.settings = OPS
    loop.clock.advance(0.5)
    with loop.store.database.hold_write_lock():  # another writer holds the lock: nothing is written
        for _ in range(3):
            with pytest.raises(StoreRetryableError):
                await loop.store.commit([i.RunIdMark(1)])
        assert await loop.store.due_notifications(loop.clock.now()) == []
    loop.store.health.retry_at = 0.0  # a test does not wait out the backoff
    await loop.scheduler.iterate()  # the first write that goes through (the 03:00:00 fire)
    (row,) = await loop.store.due_notifications(loop.clock.now())
    event = Event.from_json(row.document)
    assert (event.event, event.count, event.last_at) == (EventKind.STORE_ERROR, 3, loop.clock.now())
    assert event.reason is not None and "locked" in event.reason
    assert event.first_at is not None and event.first_at <= loop.clock.now()
    assert row.event_id == f"store_error:{iso(event.first_at)}"
    await loop.store.commit([i.RunIdMark(2)])  # healthy: nothing more to say
    assert len(await loop.store.due_notifications(loop.clock.now())) == 1
