"""Late, longer and shorter: the run watch driven through the planner on a fake clock (no sleeps).

Each test reads the batch as the loop would commit it: a `RunWarned` and its event's
`NotificationQueued`, in one transaction, once per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.clock import FakeClock
from engine.config import ScanResult
from engine.exec.port import ShimExit
from engine.model import ChannelSpec, JobSpec, Overlap, RunState, RunWarning, Settings, Threshold
from engine.notify.events import Event, EventKind
from engine.run.catalog import Catalog
from engine.run.planner import Batch, Planner, Trigger
from engine.run.table import RunTable
from engine.store import intents as i

START = datetime(2026, 11, 29, 2, 59, 59, 500000, tzinfo=UTC)  # the first 10 s fire is 03:00:00
SETTINGS = Settings(channels={"ops": ChannelSpec(name="ops", command="cat")}, notify=("ops",))


def job(name: str = "j", **fields: object) -> JobSpec:
    return JobSpec(name=name, path=f"/jobs/{name}.toml", command="true", **fields)  # type: ignore[arg-type]


@dataclass
class Watch:
    """A planner with its watch, fed by hand as the loop would: fires, starts, looks, ends."""

    clock: FakeClock = field(default_factory=lambda: FakeClock(START))

    def __post_init__(self) -> None:
        self.table = RunTable(self.clock)
        self.planner = Planner(self.table, self.clock)
        self.catalog = Catalog(self.planner, Path("/jobs"))

    def scan(self, *jobs: JobSpec) -> None:
        result = ScanResult({j.name: j for j in jobs}, {j.name for j in jobs}, set(), [], SETTINGS)
        self.catalog.apply_scan(result, self.clock.now(), initial=True)
        self.planner.settings = SETTINGS

    def fire(self, seconds: float = 0.0) -> list[i.NewRun]:
        """Time passes; what fell due is planned, and launching runs start (as the loop's launch does)."""
        if seconds:
            self.clock.advance(seconds)
        batch = Batch()
        self.planner.handle_fires(self.clock.now(), batch)
        for row in batch.rows:
            if row.state is RunState.LAUNCHING:
                self.start(row.id)
        return batch.rows

    def start(self, run_id: int) -> None:
        info = self.table.get(run_id)
        assert info is not None
        info.state = RunState.RUNNING
        info.started_at = self.clock.now()
        info.started_mono = self.clock.monotonic()

    def look(self, seconds: float = 0.0) -> list[Event]:
        """Time passes and the loop's iteration looks: the events it queues."""
        if seconds:
            self.clock.advance(seconds)
        batch = Batch()
        self.planner.watch_runs(self.clock.now(), self.clock.monotonic(), batch)
        return events(batch)

    def end(self, run_id: int, exit_code: int = 0, seconds: float = 0.0, *, ended_at: datetime | None = None) -> Batch:
        """Time passes and the run's end is handled; `ended_at`: when its executor says it ended."""
        if seconds:
            self.clock.advance(seconds)
        batch = Batch()
        result = ShimExit(run_id, exit_code, None, None, None, ended_at=ended_at)
        self.planner.handle_finished([result], self.clock.now(), batch)
        return batch

    def due_in(self) -> float | None:
        return self.planner.watch.next_due(self.clock.now(), self.clock.monotonic())


def events(batch: Batch) -> list[Event]:
    # A run's end may queue its own event (failed, ...) beside a warning's: only warnings count here.
    kinds = {str(warning) for warning in RunWarning}
    queued = [
        intent for intent in batch.intents if isinstance(intent, i.NotificationQueued) and intent.event.event in kinds
    ]
    warned = {(intent.run_id, intent.warning) for intent in batch.intents if isinstance(intent, i.RunWarned)}
    # Every event has its warning row in the same batch, and the other way round.
    assert {(q.event.run_id, RunWarning(q.event.event.value)) for q in queued} == warned
    assert all(q.channels == ("ops",) for q in queued)
    return [q.event for q in queued]


# ------------------------------------------------------------------------------------ late


def test_a_run_queued_past_late_after_is_late_once_saying_what_it_waits_for() -> None:
    w = Watch()
    w.scan(job(every=10.0, overlap=Overlap.QUEUE, late_after=15.0))
    (first,) = w.fire(0.5)  # 03:00:00 runs
    (queued,) = w.fire(10)  # 03:00:10 waits behind it
    assert queued.state is RunState.PENDING
    assert w.look() == []
    assert w.due_in() == 15.0  # the loop sleeps until 03:00:25, the queued run's limit
    assert w.look(14.9) == []
    (late,) = w.look(0.1)
    assert late.id == f"late:run:{queued.id}" and late.event is EventKind.LATE
    assert (late.job, late.run_id, late.state, late.threshold_s) == ("j", queued.id, "pending", 15.0)
    assert late.reason == f"not started 15s after it was due: queued behind run {first.id} still running"
    assert w.look(30) == []  # once


def test_a_run_that_starts_in_time_is_not_late() -> None:
    w = Watch()
    w.scan(job(every=10.0, overlap=Overlap.QUEUE, late_after=15.0))
    (first,) = w.fire(0.5)
    (queued,) = w.fire(10)
    end = w.end(first.id, seconds=4)
    assert end.launches == [queued.id]
    w.start(queued.id)
    assert w.look(60) == []


def test_a_run_started_after_its_limit_without_being_seen_waiting_is_late() -> None:
    # A fire caught up after downtime: the run is created, and starts, two minutes after its time.
    w = Watch()
    spec = job(cron="0 * * * *", late_after=60.0)
    w.scan(spec)
    batch = Batch()
    info = w.planner.fire(batch, spec, START - timedelta(minutes=2), Trigger.SCHEDULE, START)
    w.start(info.id)
    (late,) = w.look()
    assert (late.state, late.reason) == ("running", "started 2m after it was due")


def test_a_quick_run_caught_up_late_and_ended_before_the_loop_looked_is_late_at_its_end() -> None:
    w = Watch()
    spec = job(cron="0 * * * *", late_after=3.0)
    w.scan(spec)
    info = w.planner.fire(Batch(), spec, START - timedelta(seconds=14), Trigger.SCHEDULE, START)
    w.start(info.id)
    (late,) = events(w.end(info.id, seconds=0.01))  # `true`: over before the next look
    assert (late.event, late.reason) == (EventKind.LATE, "started 14s after it was due")
    assert w.look() == []  # and not a second time


def test_a_retry_is_late_from_the_end_of_its_delay_not_from_the_first_fire() -> None:
    w = Watch()
    w.scan(job(every=3600.0, retries=1, retry_delay=100.0, late_after=30.0))
    (first,) = w.fire(0.5)
    end = w.end(first.id, exit_code=1, seconds=50)
    (retry,) = end.rows
    assert retry.not_before == w.clock.now() + timedelta(seconds=100)
    assert w.look() == []  # 50 s after the fire, but its delay has 100 s to go
    assert w.look(129) == []
    (late,) = w.look(1.5)
    assert (late.run_id, late.attempt) == (retry.id, 2)
    assert late.reason == "not started 30s after it was due: a retry due at 2026-11-29T03:02:30.000000+00:00"


def test_late_after_unset_watches_nothing() -> None:
    w = Watch()
    w.scan(job(every=10.0, overlap=Overlap.QUEUE))
    w.fire(0.5)
    w.fire(10)
    assert w.look(3600) == [] and w.due_in() is None


# ------------------------------------------------------------------------------------ longer


def test_a_run_past_warn_if_longer_is_warned_while_running_once() -> None:
    w = Watch()
    w.scan(job(every=3600.0, warn_if_longer=Threshold(seconds=30.0)))
    (run,) = w.fire(0.5)
    assert w.look() == []
    assert w.due_in() == 30.0
    assert w.look(29.9) == []
    (longer,) = w.look(0.1)
    assert (longer.id, longer.state, longer.duration_s, longer.threshold_s) == (
        f"longer:run:{run.id}",
        "running",
        30.0,
        30.0,
    )
    assert longer.reason == "running for 30.0s, past warn_if_longer = 30s"
    assert w.look(10) == []
    assert events(w.end(run.id, seconds=5)) == []  # not again at its end


def test_a_wall_clock_step_does_not_move_the_longer_limit() -> None:
    w = Watch()
    w.scan(job(every=3600.0, warn_if_longer=Threshold(seconds=30.0)))
    w.fire(0.5)
    w.look()
    w.clock.jump(3600)
    assert w.look() == []
    assert len(w.look(30)) == 1


def test_a_run_that_ended_past_the_limit_before_the_loop_looked_is_warned_at_its_end() -> None:
    w = Watch()
    w.scan(job(every=3600.0, warn_if_longer=Threshold(seconds=30.0)))
    (run,) = w.fire(0.5)
    w.look()
    end = w.end(run.id, exit_code=1, seconds=31)  # the end is handled before the timer's look
    (longer,) = events(end)
    assert (longer.event, longer.state, longer.duration_s) == (EventKind.LONGER, "failed", 31.0)
    assert longer.reason == "ran for 31.0s, past warn_if_longer = 30s"
    assert any(isinstance(intent, i.RunFinished) for intent in end.intents)  # same transaction as its end
    assert w.look() == []


def finished_at(batch: Batch) -> datetime:
    (finished,) = [intent for intent in batch.intents if isinstance(intent, i.RunFinished)]
    return finished.ended_at


def test_a_run_that_ended_during_an_outage_ran_until_its_end_not_until_it_was_seen() -> None:
    # A 10 s run whose end is handled an hour later (the scheduler was down): not `longer`, and
    # its 10 s, not 3610 s, join the history of a percentage threshold.
    w = Watch()
    w.scan(job(every=3600.0, warn_if_longer=Threshold(seconds=30.0), warn_if_shorter=Threshold(percent=50.0)))
    w.planner.watch.set_history("j", [10.0, 10.0, 10.0, 40.0, 40.0])
    (run,) = w.fire(0.5)
    real_end = w.clock.now() + timedelta(seconds=10)
    end = w.end(run.id, seconds=3600, ended_at=real_end)
    assert events(end) == []
    assert finished_at(end) == real_end
    assert w.planner.watch.median("j") == 10.0  # with 3610 s it would be 25 s


def test_a_reported_end_is_bounded_by_the_runs_start_and_now() -> None:
    w = Watch()
    w.scan(job(every=3600.0))
    (run,) = w.fire(0.5)
    started = w.clock.now()
    assert finished_at(w.end(run.id, seconds=5, ended_at=started - timedelta(seconds=60))) == started
    (run,) = w.fire(3595)
    assert finished_at(w.end(run.id, seconds=5, ended_at=w.clock.now() + timedelta(hours=1))) == w.clock.now()
    (run,) = w.fire(3595)
    assert finished_at(w.end(run.id, seconds=5)) == w.clock.now()  # not known: when it is handled


def test_a_percentage_is_of_the_median_of_recent_successes_and_each_success_joins_them() -> None:
    w = Watch()
    w.scan(job(every=100.0, warn_if_longer=Threshold(percent=200.0)))
    assert w.planner.watch.histories_wanted(w.planner.jobs) == ["j"]
    w.planner.watch.set_history("j", [10.0, 12.0, 8.0, 9.0, 11.0])  # newest first, as the store reads them
    assert w.planner.watch.histories_wanted(w.planner.jobs) == []
    (run,) = w.fire(0.5)
    w.look()
    assert w.due_in() == 20.0  # 200% of 10 s
    (longer,) = w.look(20)
    assert longer.threshold_s == 20.0
    assert (
        longer.reason
        == "running for 20.0s, past warn_if_longer = 200% of the median 10.0s of the last 5 successes (20.0s)"
    )
    w.end(run.id, seconds=20)  # a 40 s success joins the history: median of 40, 10, 12, 8, 9, 11 is 10.5
    assert len(w.fire(60)) == 1
    w.look()
    assert w.due_in() == 21.0


def test_a_percentage_needs_five_successes_before_it_applies() -> None:
    # One quick first success would otherwise make every normal run "longer" than 200% of it.
    w = Watch()
    w.scan(job(every=100.0, warn_if_longer=Threshold(percent=200.0), warn_if_shorter=Threshold(percent=50.0)))
    w.planner.watch.set_history("j", [1.0, 1.0, 1.0])
    (run,) = w.fire(0.5)
    assert w.look(10) == [] and w.due_in() is None  # 10 s is 1000% of the median, but 3 runs are no median
    assert events(w.end(run.id, seconds=0)) == []  # 10 s, the 4th success
    (run,) = w.fire(90)
    assert events(w.end(run.id, seconds=0.1)) == []  # 0.1 s, neither shorter: the 5th success
    (run,) = w.fire(99.9)
    w.look()
    assert w.due_in() == 2.0  # five successes: 200% of their median, 1 s
    (longer,) = w.look(2)
    assert longer.reason == (
        "running for 2.0s, past warn_if_longer = 200% of the median 1.0s of the last 5 successes (2.0s)"
    )


def test_a_percentage_with_no_history_sets_no_threshold() -> None:
    w = Watch()
    w.scan(job(every=100.0, warn_if_longer=Threshold(percent=200.0), warn_if_shorter=Threshold(percent=50.0)))
    w.planner.watch.set_history("j", [])
    (run,) = w.fire(0.5)
    assert w.look(3000) == [] and w.due_in() is None
    assert events(w.end(run.id)) == []


# ------------------------------------------------------------------------------------ shorter


def test_a_success_under_warn_if_shorter_is_warned_with_its_end() -> None:
    w = Watch()
    w.scan(job(every=100.0, warn_if_shorter=Threshold(seconds=2.0)))
    (run,) = w.fire(0.5)
    end = w.end(run.id, seconds=0.5)
    (shorter,) = events(end)
    assert (shorter.id, shorter.state, shorter.duration_s, shorter.threshold_s) == (
        f"shorter:run:{run.id}",
        "succeeded",
        0.5,
        2.0,
    )
    assert shorter.reason == "succeeded in 500ms, under warn_if_shorter = 2s"
    assert shorter.message == f"job {shorter.job} run {shorter.run_id} ended early: {shorter.reason}"
    finished = [intent for intent in end.intents if isinstance(intent, i.RunFinished)]
    assert [f.run_id for f in finished] == [run.id]


def test_a_quick_failure_or_a_long_enough_success_is_not_shorter() -> None:
    w = Watch()
    w.scan(job(every=100.0, warn_if_shorter=Threshold(percent=50.0)))
    w.planner.watch.set_history("j", [10.0] * 5)
    (run,) = w.fire(0.5)
    assert events(w.end(run.id, exit_code=1, seconds=1)) == []  # failed: never "shorter"
    (run,) = w.fire(100)
    assert events(w.end(run.id, seconds=5)) == []  # exactly half of 10 s: not under it
    (run,) = w.fire(95)
    (shorter,) = events(w.end(run.id, seconds=4.9))  # median of 5 and five 10s is 10, half is 5
    assert shorter.threshold_s == 5.0
