"""Shared resources, max_running and hold: pure admission rules, the planner's hooks on a fake clock,
and the whole loop on the in-memory store across a takeover. No process, no sleep."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from engine.clock import FakeClock
from engine.exec.fake import FakeExecutor
from engine.exec.port import RunContext
from engine.model import Overlap, RunState, Settings
from engine.paths import StatePaths
from engine.run import admission
from engine.run.admission import Holders, Kind, Need
from engine.run.commands import Command, Commands
from engine.run.loop import Scheduler
from engine.run.planner import Batch, Trigger
from engine.store import intents as i
from engine.store.memory import MemoryStore
from tests.helpers import write_job
from tests.unit.test_planner import START, Plan, job

GPU = {"gpu": 2, "db": 1}


# ------------------------------------------------------------------------------------ pure rules


def test_a_run_takes_all_its_locks_at_once_or_none() -> None:
    holders = Holders()
    holders.take(Need(41, "a", locks=(("gpu", 1),)))
    holders.take(Need(42, "b", locks=(("gpu", 1),)))
    (waits,) = admission.admit([Need(43, "c", locks=(("db", 1), ("gpu", 1)))], holders, GPU, None)
    assert [o.text for o in waits[1]] == ["waiting for gpu: 2/2 held by runs 41, 42"]
    assert holders.used["db"] == 0  # the free lock was not taken either
    holders.release(41)
    (starts,) = admission.admit([Need(43, "c", locks=(("db", 1), ("gpu", 1)))], holders, GPU, None)
    assert starts[1] == () and holders.used == {"gpu": 2, "db": 1}


def test_waiting_runs_start_by_priority_then_age_and_none_overtakes_on_a_lock_it_shares() -> None:
    holders = Holders()
    holders.take(Need(1, "running", locks=(("gpu", 1),)))
    waiting = [
        Need(10, "old-low", priority=0, locks=(("gpu", 1),)),
        Need(11, "big-high", priority=5, locks=(("gpu", 2),)),  # needs both: waits for all of gpu
        Need(12, "young-high", priority=5, locks=(("gpu", 1),)),
        Need(13, "db-only", priority=-1, locks=(("db", 1),)),
    ]
    decided = admission.admit(waiting, holders, GPU, None)
    assert [(need.job, [o.kind for o in found]) for need, found in decided] == [
        ("big-high", [Kind.LOCK]),
        # 1 of 2 gpu is free, but the run ahead waits for gpu: neither overtakes it
        ("young-high", [Kind.AHEAD]),
        ("old-low", [Kind.AHEAD]),
        ("db-only", []),  # another lock: it goes ahead
    ]
    assert decided[1][1][0].text == "waiting for gpu: run 11 is ahead in line for it"
    assert decided[0][1][0].text == "waiting for gpu (needs 2): 1/2 held by run 1"


def test_max_running_caps_local_runs_only() -> None:
    holders = Holders()
    for run_id in (1, 2):
        holders.take(Need(run_id, "x"))
    holders.take(Need(3, "remote", local=False))
    local, remote = admission.admit([Need(4, "x"), Need(5, "remote", local=False)], holders, {}, 2)
    assert [o.text for o in local[1]] == ["waiting: max_running = 2 reached (2 running)"]
    assert remote[1] == ()


def test_a_lock_on_a_resource_no_longer_declared_waits_saying_so() -> None:
    (decided,) = admission.admit([Need(1, "a", locks=(("gone", 1),))], Holders(), {}, None)
    assert admission.reason(decided[1]) == "waiting for gone: not declared in vigil.toml ([resources.gone] limit)"


def test_a_held_run_says_so_and_keeps_no_place_in_line() -> None:
    holders = Holders()
    held, other = admission.admit(
        [Need(1, "h", priority=9, locks=(("db", 1),), held=True), Need(2, "o", locks=(("db", 1),))],
        holders,
        GPU,
        None,
    )
    assert admission.reason(held[1]) == "job held" and other[1] == ()


# ------------------------------------------------------------------------------------ the planner


def plan(**settings: Any) -> Plan:
    p = Plan(settings=Settings(resources={"gpu": 1, "db": 2}, **settings))
    return p


def states(batch: Batch) -> list[tuple[str, RunState, str | None]]:
    return [(row.job, row.state, row.reason) for row in batch.rows]


def launching(batch: Batch) -> list[tuple[int, str | None]]:
    return [(x.run_id, x.reason) for x in batch.intents if isinstance(x, i.RunLaunching)]


def end(p: Plan, run_id: int, state: RunState = RunState.SUCCEEDED) -> Batch:
    """The run ends in `state`, then the loop's admission pass."""
    batch = Batch()
    info = p.table.get(run_id)
    assert info is not None
    p.planner.finish(info, state, None if state is RunState.SUCCEEDED else "ended", None, p.clock.now(), batch)
    p.planner.admit_waiting(batch)
    return batch


def test_two_jobs_sharing_a_limit_one_lock_never_run_together_and_the_waiter_starts_once_it_is_free() -> None:
    p = plan()
    p.scan(job("a", every=10.0, locks=(("gpu", 1),)), job("b", every=10.0, locks=(("gpu", 1),)))
    fired = p.tick(0.5)
    assert states(fired) == [
        ("a", RunState.LAUNCHING, None),
        ("b", RunState.PENDING, "waiting for gpu: 1/1 held by run 1"),
    ]
    after = end(p, 1)
    assert launching(after) == [(2, "started after waiting for gpu: 1/1 held by run 1")]
    assert p.table.holders.holders_of("gpu") == (2,)
    # b's next fire while its run holds gpu: overlap=skip as ever; a's next fire waits for gpu
    nxt = p.tick(10)
    assert states(nxt) == [
        ("a", RunState.PENDING, "waiting for gpu: 1/1 held by run 2"),
        ("b", RunState.SKIPPED, "overlap=skip: run 2 still running"),
    ]


@pytest.mark.parametrize(
    "state", [RunState.FAILED, RunState.TIMED_OUT, RunState.KILLED, RunState.UNKNOWN, RunState.SUCCEEDED]
)
def test_every_kind_of_end_frees_the_locks_and_a_retry_waiting_for_its_delay_holds_nothing(state: RunState) -> None:
    p = plan()
    p.scan(job("a", locks=(("gpu", 1),), retries=1, retry_delay=30.0), job("b", locks=(("gpu", 1),)))
    batch = Batch()
    p.planner.fire(batch, p.planner.jobs["a"], START, Trigger.MANUAL, START)
    p.planner.fire(batch, p.planner.jobs["b"], START, Trigger.MANUAL, START)
    assert [row.state for row in batch.rows] == [RunState.LAUNCHING, RunState.PENDING]
    after = end(p, 1, state)
    assert launching(after)[0][0] == 2  # b got gpu
    retried = [row for row in after.rows if row.trigger == Trigger.RETRY]
    if state in (RunState.FAILED, RunState.TIMED_OUT):
        # the retry waits for its delay holding nothing, then for gpu (b has it)
        assert [row.state for row in retried] == [RunState.PENDING]
        due = p.tick(31)
        (blocked,) = [x for x in due.intents if isinstance(x, i.RunBlocked)]
        assert blocked == i.RunBlocked(retried[0].id, "waiting for gpu: 1/1 held by run 2")
        assert launching(end(p, 2)) == [(retried[0].id, "started after waiting for gpu: 1/1 held by run 2")]


def test_a_job_gone_frees_its_locks_too() -> None:
    p = plan()
    p.scan(job("a", locks=(("gpu", 1),)), job("b", locks=(("gpu", 1),)))
    batch = Batch()
    for name in ("a", "b"):
        p.planner.fire(batch, p.planner.jobs[name], START, Trigger.MANUAL, START)
    p.scan(job("b", locks=(("gpu", 1),)))  # a's file removed while its run holds gpu
    assert launching(end(p, 1, RunState.FAILED)) == [(2, "started after waiting for gpu: 1/1 held by run 1")]


def test_waiting_runs_start_in_priority_order_then_oldest() -> None:
    p = plan()
    p.scan(
        job("holder", locks=(("gpu", 1),)),
        job("low", locks=(("gpu", 1),), priority=-1),
        job("old", locks=(("gpu", 1),)),
        job("young", locks=(("gpu", 1),)),
        job("high", locks=(("gpu", 1),), priority=10),
    )
    batch = Batch()
    for name in ("holder", "low", "old", "young", "high"):
        p.planner.fire(batch, p.planner.jobs[name], START, Trigger.MANUAL, START)
    order = []
    run_id = 1
    for _ in range(4):
        ((run_id, _reason),) = launching(end(p, run_id))
        order.append(p.table.runs[run_id].job)
    assert order == ["high", "old", "young", "low"]


def test_a_lock_counts_runs_wherever_they_execute() -> None:
    p = plan()
    p.scan(job("remote", agent="a1", locks=(("gpu", 1),)), job("local", locks=(("gpu", 1),)))
    batch = Batch()
    for name in ("remote", "local"):
        p.planner.fire(batch, p.planner.jobs[name], START, Trigger.MANUAL, START)
    assert states(batch) == [
        ("remote", RunState.LAUNCHING, None),
        ("local", RunState.PENDING, "waiting for gpu: 1/1 held by run 1"),
    ]
    p.table.runs[1].state = RunState.WAITING  # the agent is down: it still holds gpu
    assert launching(end(p, 1, RunState.FAILED)) == [(2, "started after waiting for gpu: 1/1 held by run 1")]


def test_why_waiting_names_each_obstacle_for_vigil_why() -> None:
    p = plan(max_running=1)
    p.scan(job("a", locks=(("gpu", 1),)), job("b", locks=(("gpu", 1), ("db", 1))))
    batch = Batch()
    for name in ("a", "b"):
        p.planner.fire(batch, p.planner.jobs[name], START, Trigger.MANUAL, START)
    found = p.planner.why_waiting(2)
    assert [(o.kind, o.resource, o.runs) for o in found] == [
        (Kind.LOCK, "gpu", (1,)),
        (Kind.MAX_RUNNING, "max_running", (1,)),
    ]
    assert admission.reason(found) == "waiting for gpu: 1/1 held by run 1; waiting: max_running = 1 reached (1 running)"
    assert p.planner.why_waiting(1) == ()  # running: not waiting


def test_max_running_holds_local_runs_pending_with_its_reason_but_not_agent_runs() -> None:
    p = plan(max_running=2)
    p.scan(job("a"), job("b"), job("c"), job("remote", agent="a1"))
    batch = Batch()
    for name in ("a", "b", "c", "remote"):
        p.planner.fire(batch, p.planner.jobs[name], START, Trigger.MANUAL, START)
    assert states(batch)[2:] == [
        ("c", RunState.PENDING, "waiting: max_running = 2 reached (2 running)"),
        ("remote", RunState.LAUNCHING, None),
    ]
    assert launching(end(p, 4)) == []  # an agent run's end frees no local slot
    assert launching(end(p, 1)) == [(3, "started after waiting: max_running = 2 reached (2 running)")]
    uses = {use.name: (use.used, use.limit) for use in p.planner.resource_use()}
    assert uses == {"gpu": (0, 1), "db": (0, 2), "max_running": (2, 2)}


def test_a_queued_run_waits_for_its_own_job_first_then_for_the_lock() -> None:
    p = plan()
    p.scan(job("q", every=10.0, overlap=Overlap.QUEUE, locks=(("gpu", 1),)), job("other", locks=(("gpu", 1),)))
    first = p.tick(0.5)
    assert states(first) == [("q", RunState.LAUNCHING, None)]
    second = p.tick(10)
    assert states(second) == [("q", RunState.PENDING, "overlap=queue: waiting for run 1")]
    manual = Batch()
    p.planner.fire(manual, p.planner.jobs["other"], START, Trigger.MANUAL, START)  # run 3 waits for gpu
    after = end(p, 1)
    # the queue's turn came: run 2 is older than run 3, so first in line for gpu
    assert launching(after) == [(2, "started after run 1 ended")]
    assert [x for x in after.intents if isinstance(x, i.RunBlocked)] == [
        i.RunBlocked(3, "waiting for gpu: 1/1 held by run 2")
    ]
    assert launching(end(p, 2)) == [(3, "started after waiting for gpu: 1/1 held by run 2")]


def test_a_queued_run_behind_a_waiting_run_of_its_job_waits_for_it() -> None:
    p = plan()
    p.scan(job("q", every=10.0, overlap=Overlap.QUEUE, locks=(("gpu", 1),)), job("other", locks=(("gpu", 1),)))
    manual = Batch()
    p.planner.fire(manual, p.planner.jobs["other"], START, Trigger.MANUAL, START)  # run 1 holds gpu
    assert states(p.tick(0.5)) == [("q", RunState.PENDING, "waiting for gpu: 1/1 held by run 1")]
    assert states(p.tick(10)) == [("q", RunState.PENDING, "overlap=queue: waiting for run 2")]
    assert launching(end(p, 1)) == [(2, "started after waiting for gpu: 1/1 held by run 1")]
    assert launching(end(p, 2)) == [(3, "started after run 2 ended")]


def commands(p: Plan) -> Commands:
    return Commands(p.planner, lambda info: None, dict, dict)


async def command(p: Plan, op: str, **args: Any) -> tuple[dict[str, Any], Batch]:
    """An operator command as the loop carries it out, then the loop's admission pass."""
    batch = Batch()
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    reply = commands(p).handle(Command(op, {"user": "op", **args}, future), p.clock.now(), batch)
    p.planner.admit_waiting(batch)
    return reply, batch


async def test_a_held_job_s_runs_wait_pending_and_start_on_release_and_both_are_audited() -> None:
    p = plan()
    p.scan(job("h", every=10.0))
    reply, held = await command(p, "hold", job="h")
    assert reply == {"job": "h", "held": True, "waiting": 0}
    assert [x for x in held.intents if isinstance(x, i.Held)] == [i.Held("h", True)]
    fired = p.tick(0.5)
    assert states(fired) == [("h", RunState.PENDING, "job held")]
    assert states(p.tick(10)) == [("h", RunState.SKIPPED, "overlap=skip: run 1 is waiting to start (job held)")]
    reply, released = await command(p, "release", job="h")
    assert reply["waiting"] == 1
    assert launching(released) == [(1, "started: job released")]
    assert [(x.action, x.target, x.result) for x in released.intents if isinstance(x, i.Audit)] == [
        ("release", "h", "released")
    ]


async def test_killing_a_waiting_run_cancels_it_holding_nothing_and_the_next_in_line_moves_up() -> None:
    p = plan()
    p.scan(job("a", locks=(("gpu", 1),)), job("b", locks=(("gpu", 1),), priority=1), job("c", locks=(("gpu", 1),)))
    batch = Batch()
    for name in ("a", "b", "c"):
        p.planner.fire(batch, p.planner.jobs[name], START, Trigger.MANUAL, START)
    _reply, killed = await command(p, "kill", run_id=2)
    assert [(x.run_id, x.state, x.reason) for x in killed.intents if isinstance(x, i.RunFinished)] == [
        (2, RunState.KILLED, "cancelled by operator before it started")
    ]
    assert p.table.holders.holders_of("gpu") == (1,)
    assert launching(end(p, 1)) == [(3, "started after waiting for gpu: 1/1 held by run 1")]


# ------------------------------------------------------------------------------------ across a takeover


async def scheduler(tmp_path: Path, store: MemoryStore, clock: FakeClock) -> tuple[Scheduler, FakeExecutor]:
    made: list[FakeExecutor] = []

    def executor(ctx: RunContext) -> FakeExecutor:
        made.append(FakeExecutor(ctx))
        return made[-1]

    s = Scheduler(StatePaths(tmp_path / "state"), tmp_path / "jobs", clock=clock, store=store, local_executor=executor)
    await s.take_leadership(pid=os.getpid(), starttime=None, cause="failover")
    await s.prepare()
    return s, made[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "vigil.toml").write_text("[resources.gpu]\nlimit = 1\n")
    write_job(jobs, "a", 'every = "10s"\ncommand = "true"\nlocks = ["gpu"]\n')
    write_job(jobs, "b", 'every = "10s"\ncommand = "true"\nlocks = ["gpu"]\npriority = 1\n')
    write_job(jobs, "c", 'command = "true"\n')
    return jobs


async def test_after_a_takeover_holders_are_derived_from_open_runs_and_a_waiting_run_starts_once(
    tmp_path: Path, folder: Path
) -> None:
    clock, store = FakeClock(START), MemoryStore()
    first, first_exec = await scheduler(tmp_path, store, clock)
    clock.advance(0.5)
    await first.iterate()
    (holder,) = first_exec.launched  # b (priority 1) fired with a at 03:00:00 and took gpu
    runs = {run.job: run for run in await store.open_runs()}
    assert runs["b"].id == holder and runs["a"].reason == f"waiting for gpu: 1/1 held by run {holder}"
    hold = asyncio.create_task(first.command("hold", {"job": "c", "user": "op"}))
    await asyncio.sleep(0)
    await first.iterate()
    assert (await hold)["held"] is True
    # The active dies (no clean stop); a new one takes over the same ledger.
    await first.close_executors()
    second, second_exec = await scheduler(tmp_path, store, clock)
    assert second_exec.adopted == [holder] and second_exec.launched == []  # gpu is not granted twice
    assert second.table.holders.holders_of("gpu") == (holder,)
    assert second.planner.held == {"c"}  # the hold is durable
    waiting = runs["a"].id
    assert second.table.waiting == {waiting: f"waiting for gpu: 1/1 held by run {holder}"}
    second_exec.finish(holder, 0)
    await second.iterate()
    assert second_exec.launched == [waiting]
    await second.iterate()
    assert second_exec.launched == [waiting]  # once
    status = second.status()
    assert status["resources"] == [
        {"name": "gpu", "limit": 1, "used": 1, "holders": (waiting,), "waiting": 0},
    ]
    assert status["held"] == ["c"]
    await second.close_executors()
    await store.close()
