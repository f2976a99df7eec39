"""The scheduler's firing policy driven by an injected clock: no sleeping, no job processes.

A real Scheduler on a real SQLite ledger and job folder; only the local executor (the port that
would start shims) is a FakeExecutor, and time moves only when a test moves it. `clock.advance`
lets time pass; `clock.set` steps the wall clock alone, as NTP or an operator would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.clock import FakeClock
from engine.exec.fake import FakeExecutor
from engine.exec.port import RunContext, RunInfo
from engine.model import JobSpec, RunState
from engine.paths import StatePaths
from engine.run.loop import Scheduler
from engine.store.intents import NewRun
from tests.helpers import async_wait, write_job

START = datetime(2026, 11, 29, 2, 59, 59, 500000, tzinfo=UTC)


class Harness:
    def __init__(self, state: Path, jobs: Path, clock: FakeClock) -> None:
        self.state, self.jobs, self.clock = state, jobs, clock
        self.s: Scheduler | None = None
        self.executor_class: type[FakeExecutor] = FakeExecutor

    def _executor(self, ctx: RunContext) -> FakeExecutor:
        self.executor = self.executor_class(ctx)
        return self.executor

    async def start(self) -> Scheduler:
        self.s = Scheduler(StatePaths(self.state), self.jobs, clock=self.clock, local_executor=self._executor)
        await self.s.take_leadership(pid=os.getpid(), starttime=None, cause="start")
        await self.s.prepare()
        return self.s

    async def stop(self) -> None:
        if self.s is None:
            return
        for executor in (self.s.local, self.s.agents):
            if executor is not None:
                await executor.aclose()
        await self.s.store.flush()
        await self.s.store.close()
        self.s = None

    async def tick(self, seconds: float = 0.0) -> None:
        assert self.s is not None
        if seconds:
            self.clock.advance(seconds)
        await self.s.iterate()
        await self.s.store.flush()

    async def rescan(self) -> None:
        assert self.s is not None
        await self.s.rescan()

    def finish(self, run_id: int, exit_code: int = 0) -> None:
        self.executor.finish(run_id, exit_code)

    async def runs(self, job: str = "j") -> list[dict[str, Any]]:
        assert self.s is not None
        rows = await self.s.store.query("SELECT * FROM runs WHERE job = ? ORDER BY id", (job,))
        return [dict(r) for r in rows]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(start: datetime = START) -> Harness:
        h = Harness(tmp_path / "state", tmp_path / "jobs", FakeClock(start))
        h.jobs.mkdir(exist_ok=True)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.stop()


def at(hour: int, minute: int = 0, second: int = 0) -> str:
    return datetime(2026, 11, 29, hour, minute, second, tzinfo=UTC).isoformat(timespec="microseconds")


def states(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["scheduled_for"], r["state"]) for r in rows]


# ------------------------------------------------------------------------------------ clock jumps


async def test_after_the_clock_goes_back_fires_continue_on_the_new_wall_time(harness, caplog) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "10s"\ncommand = "true"\n')
    s = await h.start()
    await h.tick(0.5)  # 03:00:00 fires
    h.finish(h.executor.launched[-1])
    await h.tick(10)  # 03:00:10 fires
    h.finish(h.executor.launched[-1])
    await h.tick()
    caplog.set_level(logging.WARNING, "vigil.scheduler")
    h.clock.set(h.clock.now() - timedelta(hours=1))  # 02:00:10
    await h.tick()
    # `vigil jobs` reads the catalog: its next fire is on the new timeline, not an hour ahead.
    catalog = await s.store.query("SELECT next_fire FROM jobs WHERE name = 'j'")
    assert catalog[0]["next_fire"] == at(2, 0, 20)
    state = await s.store.query("SELECT last_fire FROM job_state WHERE job = 'j'")
    assert datetime.fromisoformat(state[0]["last_fire"]) <= h.clock.now()
    for _ in range(3):
        await h.tick(10)
        h.finish(h.executor.launched[-1])
    rows = await h.runs()
    assert [r["scheduled_for"] for r in rows] == [at(3, 0, 0), at(3, 0, 10), at(2, 0, 20), at(2, 0, 30), at(2, 0, 40)]
    assert len(h.executor.launched) == 5
    assert "wall clock went back 1h 0m" in caplog.text


async def test_a_fire_time_that_already_ran_is_not_run_again_after_the_clock_goes_back(harness, caplog) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "10s"\ncommand = "true"\n')
    await h.start()
    await h.tick(0.5)  # 03:00:00 launches
    await h.tick(10)  # 03:00:10 is skipped: 03:00:00 is still running
    h.finish(h.executor.launched[0])
    await h.tick()
    caplog.set_level(logging.WARNING, "vigil.scheduler")
    h.clock.set(h.clock.now() - timedelta(seconds=15))  # 02:59:55
    await h.tick()
    await h.tick(5)  # 03:00:00 comes round again: it already ran
    await h.tick(10)  # 03:00:10 too (it has its skipped row)
    assert len(h.executor.launched) == 1
    assert "already has a run in the ledger" in caplog.text
    await h.tick(10)  # 03:00:20 is new
    rows = await h.runs()
    assert states(rows) == [(at(3, 0, 0), "succeeded"), (at(3, 0, 10), "skipped"), (at(3, 0, 20), "running")]
    assert len(h.executor.launched) == 2


async def test_a_fire_time_that_came_round_again_is_not_taken_for_a_restore_at_the_next_start(harness, caplog) -> None:
    # The id of a row the ledger ignored (its fire time already had a run) was never used: it must
    # not reach STATE/high-water, or the next active takes its database for a restored backup and
    # restarts every schedule from now (fires lost).
    h = harness()
    write_job(h.jobs, "j", 'every = "10s"\ncommand = "true"\n')
    await h.start()
    await h.tick(0.5)  # 03:00:00 runs
    h.finish(h.executor.launched[0])
    await h.tick()
    caplog.set_level(logging.WARNING, "vigil.scheduler")
    h.clock.set(h.clock.now() - timedelta(seconds=5))
    await h.tick()
    await h.tick(5)  # 03:00:00 comes round again: ignored by the ledger
    assert len(h.executor.launched) == 1
    assert "already has a run in the ledger" in caplog.text
    assert h.s is not None and h.s.high_water.mark.run_id == 1  # the ignored row's id was never used
    await h.stop()
    caplog.clear()
    again = harness(h.clock.now())
    s = await again.start()
    assert not s.restored, caplog.text
    assert "restored or replaced" not in caplog.text


async def test_caught_up_fires_queued_behind_a_fire_time_that_already_ran_still_run(harness) -> None:
    # catchup = "all" queues caught-up fires behind each other. If the first of them is a fire time
    # that already has a run (as after the wall clock went back), the ledger ignores it; the ones
    # queued behind it must still start, not wait for a run that never comes.
    h = harness()
    write_job(h.jobs, "j", 'every = "1s"\ncatchup = "all"\ncommand = "true"\n')
    s = await h.start()
    await h.tick(0.5)  # 03:00:00 runs
    h.finish(h.executor.launched[-1])
    await h.tick()
    # 03:00:01 already has a run (written by an active whose clock was ahead).
    fire, created = datetime.fromisoformat(at(3, 0, 1)), datetime.fromisoformat(at(3, 0, 0))
    await s.store.commit([NewRun(100, "j", fire, 1, RunState.SUCCEEDED, "schedule", created, ended_at=created)])
    h.clock.advance(3.0)  # a stall: 03:00:01 .. 03:00:03 fall due together
    for _ in range(4):
        await h.tick()
        for run_id in h.executor.launched:
            if run_id in s.table.runs:
                h.finish(run_id)
    await h.tick()
    rows = await h.runs()
    assert [r["scheduled_for"] for r in rows if r["state"] == "succeeded"].count(at(3, 0, 1)) == 1
    assert {at(3, 0, 2), at(3, 0, 3)} <= {r["scheduled_for"] for r in rows if r["state"] == "succeeded"}, states(rows)
    assert not [r for r in rows if r["state"] in ("pending", "launching")], states(rows)


async def test_a_restart_after_the_clock_went_back_fires_from_the_new_wall_time(harness, caplog) -> None:
    ahead = harness(START + timedelta(hours=2))  # e.g. a run under faketime +2h
    write_job(ahead.jobs, "j", 'every = "1s"\ncommand = "true"\n')
    await ahead.start()
    for _ in range(3):
        await ahead.tick(1)
        ahead.finish(ahead.executor.launched[-1])
    await ahead.tick()
    await ahead.stop()
    assert len(ahead.executor.launched) == 3

    caplog.set_level(logging.WARNING, "vigil.scheduler")
    real = harness(START + timedelta(minutes=1))  # the real clock, two hours behind the stored last fire
    s = await real.start()
    catalog = await s.store.query("SELECT next_fire FROM jobs WHERE name = 'j'")
    assert catalog[0]["next_fire"] == at(3, 1, 0)  # what `vigil jobs` shows: the next second, not 2 h on
    for _ in range(3):
        await real.tick(1)
        real.finish(real.executor.launched[-1])
    assert len(real.executor.launched) == 3
    rows = await real.runs()
    assert [r["scheduled_for"] for r in rows[3:]] == [at(3, 1, 0), at(3, 1, 1), at(3, 1, 2)]
    assert "behind the last recorded fire" in caplog.text


@pytest.mark.parametrize(("catchup", "expect_run"), [("latest", True), ("none", False)])
async def test_a_forward_jump_is_named_and_follows_catchup(harness, caplog, catchup: str, expect_run: bool) -> None:
    h = harness()
    write_job(h.jobs, "j", f'every = "10m"\ncatchup = "{catchup}"\ncommand = "true"\n')
    await h.start()
    caplog.set_level(logging.WARNING, "vigil.scheduler")
    h.clock.set(h.clock.now() + timedelta(hours=1))  # 03:59:59.5: fires 03:00 … 03:50 were jumped over
    await h.tick()
    assert "wall clock jumped forward 1h 0m" in caplog.text
    rows = await h.runs()
    assert [r["scheduled_for"] for r in rows] == [at(3, m) for m in range(0, 60, 10)]
    missed = [r for r in rows if r["state"] == "missed"]
    assert len(missed) == (5 if expect_run else 6)
    for row in missed:
        assert row["reason"].startswith("clock jumped forward 1h 0m: "), row
        assert "overloaded" not in row["reason"]
    assert len(h.executor.launched) == (1 if expect_run else 0)


async def test_timeouts_and_durations_use_the_monotonic_clock(harness) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "1h"\ntimeout = "30s"\ncommand = "sleep 100"\n')
    s = await h.start()
    await h.tick(1)  # 03:00:00 launches
    assert len(h.executor.launched) == 1
    run_id = h.executor.launched[0]
    h.clock.set(h.clock.now() + timedelta(minutes=10))  # a wall step forward must not end it early
    await h.tick()
    await h.tick(10)
    assert h.executor.killed == []
    h.clock.set(h.clock.now() - timedelta(hours=2))  # nor a step back keep it alive past 30 s
    await h.tick()
    row = (await s.store.query("SELECT started_at, deadline FROM runs WHERE id = ?", (run_id,)))[0]
    # While it runs, its start and deadline are shown in the new timeline (no negative durations).
    assert datetime.fromisoformat(row["started_at"]) == h.clock.now() - timedelta(seconds=10)
    assert datetime.fromisoformat(row["deadline"]) == h.clock.now() + timedelta(seconds=20)
    await h.tick(21)
    assert h.executor.killed == [run_id]
    h.finish(run_id, -9)
    await h.tick()
    row = (await s.store.query("SELECT * FROM runs WHERE id = ?", (run_id,)))[0]
    assert row["state"] == "timed_out"
    took = datetime.fromisoformat(row["ended_at"]) - datetime.fromisoformat(row["started_at"])
    assert abs(took.total_seconds() - 31) < 1.5, (row["started_at"], row["ended_at"])


async def test_a_pending_retry_is_not_postponed_by_a_clock_that_went_back_over_a_restart(harness) -> None:
    first = harness()
    write_job(first.jobs, "j", 'every = "1h"\nretries = 1\nretry_delay = "10s"\ncommand = "false"\n')
    await first.start()
    await first.tick(0.5)
    first.finish(first.executor.launched[0], exit_code=1)
    await first.tick()  # attempt 2 waits 10 s
    await first.stop()
    second = harness(first.clock.now() - timedelta(hours=2))
    await second.start()
    await second.tick(10.5)
    rows = await second.runs()
    assert [(r["attempt"], r["state"]) for r in rows] == [(1, "failed"), (2, "running")]
    assert len(second.executor.launched) == 1


# ------------------------------------------------------------------------------- late fires, catch-up


@pytest.mark.parametrize(("late_s", "runs"), [(0.5, True), (600.0, False)])
async def test_a_late_fire_follows_catchup_none_beyond_a_fixed_tolerance(harness, late_s: float, runs: bool) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "1h"\ncatchup = "none"\ncommand = "true"\n')
    await h.start()
    await h.tick(0.5 + late_s)  # the 03:00 fire, handled late_s after its time
    rows = await h.runs()
    assert len(rows) == 1
    if runs:
        assert rows[0]["state"] == "running" and len(h.executor.launched) == 1
    else:
        assert rows[0]["state"] == "missed", rows[0]
        assert rows[0]["reason"] == "scheduler overloaded: catchup=none"
        assert h.executor.launched == []


async def test_a_late_fire_outside_the_catchup_window_is_missed(harness) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "1h"\ncatchup_window = "5m"\ncommand = "true"\n')
    await h.start()
    await h.tick(0.5 + 600)  # 10 minutes late, window 5 minutes
    rows = await h.runs()
    assert [r["state"] for r in rows] == ["missed"]
    assert "outside catchup window" in rows[0]["reason"]


async def test_catchup_all_runs_every_missed_fire_one_after_another(harness) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "1m"\ncatchup = "all"\ncommand = "true"\n')
    await h.start()
    await h.tick(0.5 + 4 * 60)  # 03:00 … 03:04 all fell due during one stall
    rows = await h.runs()
    assert [r["state"] for r in rows] == ["running"] + ["pending"] * 4, states(rows)
    assert len(h.executor.launched) == 1
    order = [rows[0]["id"]]
    for _ in range(4):
        h.finish(h.executor.launched[-1])
        await h.tick()
        order.append(h.executor.launched[-1])
    await h.tick()
    rows = await h.runs()
    assert order == [r["id"] for r in rows], "caught-up fires start oldest first"
    assert [r["state"] for r in rows] == ["succeeded"] * 4 + ["running"]
    assert rows[4]["reason"] == f"started after run {rows[3]['id']} ended"


# The on-time fire after downtime: the newest fire, within the 1 s tolerance, runs whatever `catchup`
# says; only the older ones follow the policy (and the window).
@pytest.mark.parametrize(
    ("settings", "expect"),
    [
        ('catchup = "none"', [("missed", "catchup=none"), ("running", None)]),
        (
            'catchup = "latest"',
            [("missed", f"catchup=latest: superseded by {at(3, 0, 10)[:19]}+00:00"), ("running", None)],
        ),
        ('catchup = "all"', [("running", None), ("pending", "catchup=all: waiting for run 2")]),
        ('catchup = "none"\ncatchup_window = "0s"', [("missed", "outside catchup window (0ms)"), ("running", None)]),
        ('catchup = "latest"\ncatchup_window = "0s"', [("missed", "outside catchup window (0ms)"), ("running", None)]),
        ('catchup = "all"\ncatchup_window = "0s"', [("missed", "outside catchup window (0ms)"), ("running", None)]),
    ],
)
async def test_after_downtime_the_on_time_fire_runs_and_only_older_fires_follow_catchup(
    harness, settings: str, expect: list[tuple[str, str | None]]
) -> None:
    first = harness()
    write_job(first.jobs, "j", f'every = "5s"\n{settings}\ncommand = "true"\n')
    await first.start()
    await first.tick(0.5)  # 03:00:00 runs
    first.finish(first.executor.launched[-1])
    await first.tick()
    await first.stop()
    second = harness(first.clock.now() + timedelta(seconds=10.3))  # down 8 s; back 0.3 s after 03:00:10
    s = await second.start()
    await second.tick()
    rows = (await second.runs())[1:]
    assert [r["scheduled_for"] for r in rows] == [at(3, 0, 5), at(3, 0, 10)]
    missed_as = f"{s.planner.takeover_cause}: "  # the late fire's cause: the scheduler was not running
    want = [(state, f"{missed_as}{reason}" if state == "missed" else reason) for state, reason in expect]
    assert [(r["state"], r["reason"]) for r in rows] == want
    assert second.executor.launched == [rows[0]["id"] if expect[0][0] == "running" else rows[1]["id"]]


async def test_after_a_stall_the_on_time_fire_runs_under_catchup_none(harness) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "5s"\ncatchup = "none"\ncommand = "true"\n')
    await h.start()
    await h.tick(0.5)  # 03:00:00 runs
    h.finish(h.executor.launched[-1])
    await h.tick(10.3)  # the loop stalled: 03:00:05 is late, 03:00:10 is 0.3 s old
    rows = await h.runs()
    assert states(rows) == [(at(3, 0, 0), "succeeded"), (at(3, 0, 5), "missed"), (at(3, 0, 10), "running")]
    assert rows[1]["reason"] == "scheduler overloaded: catchup=none"
    assert h.executor.launched == [rows[0]["id"], rows[2]["id"]]


# ------------------------------------------------------------------------ what a late fire is blamed on


async def test_every_fire_a_forward_jump_passed_over_is_named_for_it_even_the_first(harness, caplog) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "10s"\ncommand = "true"\n')
    await h.start()
    await h.tick(0.5)  # 03:00:00 runs: the last look before the jump
    h.finish(h.executor.launched[-1])
    await h.tick()
    caplog.set_level(logging.WARNING, "vigil.scheduler")
    # While the loop sleeps towards 03:00:10, the wall clock is stepped 10 minutes ahead: the first
    # fire passed over (03:00:10) sits exactly at "now - step".
    h.clock.advance(10)
    h.clock.jump(600)
    await h.tick()
    assert "wall clock jumped forward 10m 0s" in caplog.text
    rows = (await h.runs())[1:]
    assert rows[0]["scheduled_for"] == at(3, 0, 10) and rows[-1]["scheduled_for"] == at(3, 10, 10)
    assert [r["state"] for r in rows] == ["missed"] * 60 + ["running"]
    superseded = f"clock jumped forward 10m 0s: catchup=latest: superseded by {at(3, 10, 10)[:19]}+00:00"
    assert {r["reason"] for r in rows[:-1]} == {superseded}


async def test_downtime_then_a_jump_each_fire_is_named_for_its_own_cause(harness) -> None:
    first = harness()
    write_job(first.jobs, "j", 'every = "10m"\ncatchup_window = "6h"\ncommand = "true"\n')
    await first.start()
    await first.tick(0.5)  # 03:00 runs
    first.finish(first.executor.launched[-1])
    await first.tick()
    await first.stop()
    second = harness(START + timedelta(minutes=35, seconds=0.5))  # down until 03:35
    s = await second.start()
    second.clock.jump(3600)  # and the clock steps an hour ahead right after the start: 04:35
    await second.tick()
    rows = (await second.runs())[1:]
    fire_times = [(3, 10), (3, 20), (3, 30), (3, 40), (3, 50), (4, 0), (4, 10), (4, 20), (4, 30)]
    assert [r["scheduled_for"] for r in rows] == [at(hour, minute) for hour, minute in fire_times]
    superseded = "catchup=latest: superseded by 2026-11-29T04:30:00+00:00"
    assert [r["reason"] for r in rows] == [f"{s.planner.takeover_cause}: {superseded}"] * 3 + [
        f"clock jumped forward 1h 0m: {superseded}"
    ] * 5 + [None]


async def test_a_long_stall_with_a_small_step_in_it_is_an_overload(harness) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "1m"\ncatchup = "none"\ncommand = "true"\n')
    await h.start()
    await h.tick(0.5)  # 03:00 runs
    h.finish(h.executor.launched[-1])
    await h.tick()
    h.clock.advance(600)  # ten minutes without a look, with a 5 s step somewhere in them
    h.clock.jump(5)
    await h.tick()
    rows = (await h.runs())[1:]
    assert len(rows) == 10
    assert {r["reason"] for r in rows} == {"scheduler overloaded: catchup=none"}


# ------------------------------------------------------------------- regular fires behind a catch-up


async def test_a_fire_skipped_behind_a_catch_up_names_the_running_run_and_the_backlog(harness) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "1m"\ncatchup = "all"\ncommand = "true"\n')
    s = await h.start()
    await h.tick(0.5 + 4 * 60 + 30)  # 03:00 … 03:04 caught up at 03:04:30: one runs, four queue
    first = h.executor.launched[-1]
    await h.tick(30)  # 03:05, a regular fire, while the backlog runs
    rows = await h.runs()
    assert rows[-1]["scheduled_for"] == at(3, 5) and rows[-1]["state"] == "skipped"
    assert rows[-1]["reason"] == f"overlap=skip: run {first} running, 4 caught-up fires queued"
    assert next(r for r in rows if r["id"] == first)["state"] == "running"
    h.finish(first)
    await h.tick()
    second = h.executor.launched[-1]
    assert s.table.active["j"] == {second}, "an ended run leaves the job's active runs"
    h.finish(second)  # ends in the same iteration as the next regular fire: the end counts first
    await h.tick(60)  # 03:06
    third = h.executor.launched[-1]
    rows = await h.runs()
    assert states(rows)[-1] == (at(3, 6), "skipped")
    assert rows[-1]["reason"] == f"overlap=skip: run {third} running, 2 caught-up fires queued"
    assert s.table.active["j"] == {third}
    assert list(s.table.queued["j"]) == [r["id"] for r in rows if r["state"] == "pending"]


async def test_a_skip_behind_several_runs_names_each_and_an_ended_one_none(harness) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "1m"\ncommand = "sleep 100"\n')
    s = await h.start()
    await h.tick(0.5)  # 03:00 runs
    manual = asyncio.create_task(s.command("run", {"job": "j", "user": "op"}))  # alongside it
    await asyncio.sleep(0)
    await h.tick(1)
    scheduled, by_hand = h.executor.launched
    assert (await manual)["run_id"] == by_hand
    await h.tick(60)  # 03:01
    assert (await h.runs())[-1]["reason"] == f"overlap=skip: runs {scheduled}, {by_hand} still running"
    h.finish(scheduled)
    await h.tick(60)  # 03:02: only the manual run is left
    assert (await h.runs())[-1]["reason"] == f"overlap=skip: run {by_hand} still running"


async def test_with_overlap_queue_caught_up_fires_count_against_max_queued(harness) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "1m"\ncatchup = "all"\noverlap = "queue"\nmax_queued = 2\ncommand = "true"\n')
    await h.start()
    await h.tick(0.5 + 4 * 60 + 30)  # 03:00 … 03:04: one runs, four queue (beyond max_queued)
    await h.tick(30)  # 03:05
    rows = await h.runs()
    assert states(rows)[-1] == (at(3, 5), "skipped")
    assert rows[-1]["reason"] == "overlap=queue: queue full (4 waiting, caught-up fires included, max_queued = 2)"


# ------------------------------------------------------------------------------- jobs that come and go


async def test_a_job_deleted_and_re_added_gets_no_missed_rows_for_its_absence(harness) -> None:
    h = harness()
    path = write_job(h.jobs, "j", 'every = "1m"\ncommand = "true"\n')
    body = path.read_text()
    await h.start()
    await h.tick(0.5)  # 03:00 runs
    h.finish(h.executor.launched[-1])
    await h.tick()
    path.unlink()
    await h.rescan()
    await h.tick(600)
    path.write_text(body)
    await h.rescan()
    await h.tick(0.2)
    await h.tick(60)  # the first fire after it came back
    rows = await h.runs()
    assert [r for r in rows if r["state"] in ("missed", "skipped")] == []
    assert [r["scheduled_for"] for r in rows] == [at(3, 0), at(3, 11)]


async def test_a_new_schedule_gets_no_missed_rows_for_the_time_before_it(harness) -> None:
    h = harness()
    path = write_job(h.jobs, "j", 'every = "1h"\ncommand = "true"\n')
    await h.start()
    await h.tick(0.5)  # 03:00 runs
    h.finish(h.executor.launched[-1])
    await h.tick(30 * 60)  # 03:30: the schedule becomes every 5 minutes
    path.write_text('every = "5m"\ncommand = "true"\n')
    await h.rescan()
    await h.tick(5 * 60)  # 03:35 is its first fire
    rows = await h.runs()
    assert states(rows) == [(at(3, 0), "succeeded"), (at(3, 35), "running")]


async def test_a_job_absent_across_a_restart_gets_no_missed_rows(harness) -> None:
    first = harness()
    seen_removed = write_job(first.jobs, "gone-while-up", 'every = "1m"\ncommand = "true"\n')
    gone_while_down = write_job(first.jobs, "gone-while-down", 'every = "1m"\ncommand = "true"\n')
    bodies = {p: p.read_text() for p in (seen_removed, gone_while_down)}
    await first.start()
    await first.tick(0.5)  # both fire at 03:00
    for run_id in first.executor.launched:
        first.finish(run_id)
    await first.tick()
    seen_removed.unlink()
    await first.rescan()
    await first.stop()

    gone_while_down.unlink()
    second = harness(first.clock.now() + timedelta(minutes=10))
    seen_removed.write_text(bodies[seen_removed])  # back before the restart
    await second.start()
    await second.tick(0.2)
    gone_while_down.write_text(bodies[gone_while_down])  # back while the second one runs
    await second.rescan()
    await second.tick(60)
    for job in ("gone-while-up", "gone-while-down"):
        rows = await second.runs(job)
        assert [r for r in rows if r["state"] in ("missed", "skipped")] == [], (job, states(rows))
        assert [r["scheduled_for"] for r in rows] == [at(3, 0), at(3, 11)], (job, states(rows))


# ------------------------------------------------------------------------------------ overlap = queue


async def test_the_queue_is_capped_by_max_queued_and_a_started_run_loses_its_waiting_reason(harness) -> None:
    h = harness()
    write_job(h.jobs, "j", 'every = "10s"\noverlap = "queue"\nmax_queued = 2\ncommand = "sleep 100"\n')
    await h.start()
    for _ in range(4):
        await h.tick(10)  # 03:00:00 launches, :10 and :20 queue, :30 overflows
    rows = await h.runs()
    assert [r["state"] for r in rows[:4]] == ["running", "pending", "pending", "skipped"], states(rows)
    assert rows[3]["reason"] == "overlap=queue: queue full (2 waiting, max_queued = 2)"
    first, second = rows[0]["id"], rows[1]["id"]
    h.finish(first)
    await h.tick()
    row = (await h.runs())[1]
    assert row["id"] == second and h.executor.launched == [first, second]
    assert row["reason"] == f"started after run {first} ended"


def test_max_queued_is_validated(tmp_path: Path) -> None:
    from engine.config import load_folder

    write_job(tmp_path, "ok", 'command = "true"\noverlap = "queue"\nmax_queued = 3\n')
    write_job(tmp_path, "zero", 'command = "true"\nmax_queued = 0\n')
    write_job(tmp_path, "text", 'command = "true"\nmax_queued = "many"\n')
    result = load_folder(tmp_path)
    assert result.jobs["ok"].max_queued == 3
    errors = "\n".join(e.format() for e in result.errors)
    assert "zero.toml:2: max_queued: must be at least 1, got 0" in errors
    assert "text.toml:2: max_queued: expected an integer" in errors


# ------------------------------------------------------------------------------------ launch slices


class SlowLaunches(FakeExecutor):
    """Each launch takes half a millisecond of the loop's time, as a real one under load does."""

    def launch(self, run: RunInfo, job: JobSpec) -> None:
        until = time.perf_counter() + 0.0005
        while time.perf_counter() < until:
            pass
        super().launch(run, job)


async def test_a_burst_of_launches_is_cut_into_slices_and_a_run_killed_while_waiting_never_starts(
    harness,
) -> None:
    h = harness()
    for n in range(400):
        write_job(h.jobs, f"j{n:03d}", 'command = "true"\nevery = "1s"\n')
    h.executor_class = SlowLaunches
    s = await h.start()
    h.clock.advance(1.0)
    await s.iterate()  # 400 fires due at once (no flush here: its await would let the loop turn)
    # The loop had other work to do long before all 400 were launched (200 ms of launching).
    first_slice = len(h.executor.launched)
    assert 0 < first_slice < 400
    last = max(r.id for r in s.table.runs.values() if r.state is RunState.LAUNCHING)
    reply = asyncio.create_task(s.command("kill", {"run_id": last, "user": "op"}))
    await asyncio.sleep(0)  # the command is queued for the next iteration
    await h.tick()
    assert (await reply)["ok"]
    await async_wait(lambda: not s._to_launch, 10)
    assert len(h.executor.launched) == 399 == len(set(h.executor.launched)) and last not in h.executor.launched
    await h.tick()
    killed = await s.store.query("SELECT state, reason FROM runs WHERE id = ?", (last,))
    assert [tuple(r) for r in killed] == [("killed", "cancelled by operator before it started")]
