"""Calendars and windows in the planner and the loop, on a fake clock: a fire on a non-working day is a
skipped row naming the day, a fire outside its windows waits pending (also across a takeover) or is
skipped, a run still going when its window closes is killed saying so. No process, no sleep."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from engine.clock import FakeClock
from engine.config import ScanResult
from engine.exec.fake import FakeExecutor
from engine.exec.port import RunContext, ShimExit
from engine.model import CalendarSpec, NonWorking, OutsideWindow, RunState, Settings
from engine.paths import StatePaths
from engine.run.loop import Scheduler
from engine.run.planner import Batch, Trigger
from engine.store.memory import MemoryStore
from tests.helpers import write_job
from tests.unit.test_planner import START, Plan, at, job, rows

# START is Sunday 2026-11-29 02:59:59.5 UTC
WEEKDAYS = CalendarSpec(name="office", exclude=frozenset({date(2026, 11, 30)}))
SETTINGS = Settings(calendars={"office": WEEKDAYS})
MONDAY_8 = datetime(2026, 11, 30, 8, tzinfo=UTC)


def test_a_fire_on_a_non_working_day_is_a_skipped_row_naming_the_day() -> None:
    p = Plan(settings=SETTINGS)
    p.scan(job(every=10.0, calendar="office"))
    assert rows(p.tick(0.5)) == [(at(3), RunState.SKIPPED, "non-working day: Sunday (calendar office)")]


def test_next_moves_the_fire_so_nothing_runs_or_is_skipped_on_the_non_working_days() -> None:
    p = Plan(settings=SETTINGS)
    p.scan(job(cron="0 9 * * *", calendar="office", on_nonworking=NonWorking.NEXT))
    # Sunday's and the excluded Monday's 09:00 land on Tuesday 09:00: one fire, next
    assert p.planner.next_fire["j"] == datetime(2026, 12, 1, 9, tzinfo=UTC)


def test_a_calendar_edited_in_vigil_toml_moves_the_fires_of_its_jobs() -> None:
    p = Plan(settings=SETTINGS)
    spec = job(cron="0 9 * * *", calendar="office", on_nonworking=NonWorking.NEXT)
    p.scan(spec)
    edited = Settings(calendars={"office": CalendarSpec(name="office")})  # the 30th is a working day again
    p.catalog.apply_scan(ScanResult({"j": spec}, set(), set(), [], edited), p.clock.now())
    assert p.planner.next_fire["j"] == datetime(2026, 11, 30, 9, tzinfo=UTC)


def test_window_wait_and_skip_reasons_and_one_waiting_run_per_job() -> None:
    p = Plan()
    p.scan(job(every=3600.0, window=("mon-fri 08:00-18:00",)))
    first = p.tick(0.5)
    assert rows(first) == [
        (
            at(3),
            RunState.PENDING,
            "outside window mon-fri 08:00-18:00 (opens 2026-11-30T08:00:00+00:00): waits for it to open",
        )
    ]
    (waiting,) = first.rows
    assert waiting.not_before == MONDAY_8
    second = p.tick(3600)
    assert rows(second) == [
        (
            at(4),
            RunState.SKIPPED,
            f"overlap=skip: run {waiting.id} already waits for the window; "
            "outside window mon-fri 08:00-18:00 (opens 2026-11-30T08:00:00+00:00)",
        )
    ]
    p.clock.advance((MONDAY_8 - p.clock.now()).total_seconds() - 1)
    batch = Batch()
    p.planner.handle_retries(p.clock.monotonic(), batch)
    assert batch.launches == []  # not yet
    p.clock.advance(1)
    p.planner.handle_retries(p.clock.monotonic(), batch)
    assert batch.launches == [waiting.id]


def test_outside_window_skip_records_a_skipped_row() -> None:
    p = Plan()
    p.scan(job(every=3600.0, window=("mon-fri 08:00-18:00",), outside_window=OutsideWindow.SKIP))
    assert rows(p.tick(0.5)) == [
        (
            at(3),
            RunState.SKIPPED,
            "outside_window=skip: outside window mon-fri 08:00-18:00 (opens 2026-11-30T08:00:00+00:00)",
        )
    ]


def test_a_fire_inside_its_window_launches_and_its_deadline_is_the_window_close() -> None:
    p = Plan()
    spec = job(every=3600.0, window=("sun 02:00-03:30",), kill_at_window_end=True, timeout=7200.0)
    p.scan(spec)
    (run,) = p.tick(0.5).rows
    assert run.state is RunState.LAUNCHING
    assert p.planner.window_close(spec, p.clock.now()) == at(3, 30)
    info = p.table.get(run.id)
    assert info is not None
    info.started_at, info.deadline = p.clock.now(), at(3, 30)
    assert p.planner.deadline_cause(info) == "window"
    info.deadline = p.clock.now() + timedelta(seconds=7200)
    assert p.planner.deadline_cause(info) == "timeout"
    info.deadline, info.kill_requested = at(3, 30), "window"
    ended = Batch()
    p.planner.handle_finished([ShimExit(run.id, -15, None, None, None)], p.clock.now(), ended)
    (finished,) = [x for x in ended.intents if type(x).__name__ == "RunFinished"]
    assert finished.state is RunState.KILLED  # type: ignore[attr-defined]
    assert finished.reason == (  # type: ignore[attr-defined]
        "kill_at_window_end: its window (sun 02:00-03:30) closed at 2026-11-29T03:30:00.000000+00:00; "
        "process group killed"
    )


def test_manual_runs_ignore_calendars_and_windows() -> None:
    p = Plan(settings=SETTINGS)
    spec = job(every=3600.0, calendar="office", window=("mon-fri 08:00-18:00",))
    p.scan(spec)
    batch = Batch()
    info = p.planner.fire(batch, spec, p.clock.now(), Trigger.MANUAL, p.clock.now())
    assert info.state is RunState.LAUNCHING


async def test_a_waiting_run_survives_a_takeover_and_starts_once_at_the_opening(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_job(jobs, "j", 'every = "1h"\ncommand = "true"\nwindow = "mon-fri 08:00-18:00"\n')
    clock = FakeClock(START)
    store = MemoryStore()
    made: list[FakeExecutor] = []

    def executor(ctx: RunContext) -> FakeExecutor:
        made.append(FakeExecutor(ctx))
        return made[-1]

    async def active() -> Scheduler:
        scheduler = Scheduler(StatePaths(tmp_path / "state"), jobs, clock=clock, store=store, local_executor=executor)
        await scheduler.take_leadership(pid=os.getpid(), starttime=None, cause="start")
        await scheduler.prepare()
        return scheduler

    first = await active()
    clock.advance(0.5)
    await first.iterate()
    (row,) = [run for run in await store.open_runs() if run.job == "j"]
    assert (row.state, row.not_before) == (RunState.PENDING, MONDAY_8)
    await first.close_executors()
    # The active dies; a new one takes over and reloads the waiting row from the ledger.
    second = await active()
    clock.advance((MONDAY_8 - clock.now()).total_seconds() - 60)
    await second.iterate()
    assert made[-1].launched == []
    clock.advance(60)
    await second.iterate()
    assert made[-1].launched[:1] == [row.id]
    assert made[0].launched == []
    await second.close_executors()
    await store.close()
