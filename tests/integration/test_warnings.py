"""Late, longer and shorter with a real `vigil up`: real shims, a real SQLite file, the CLI's JSON.

Each warning shows in `vigil runs --json` (`warnings`) and as one outbox row for the channel the
job notifies, with the event's stable id.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.model import Notification
from engine.paths import StatePaths
from engine.store.sqlite.reader import SqliteReader
from tests.helpers import runs, vigil, wait_for, write_job

VIGIL_TOML = """
[scheduler]
notify = ["log"]

[notify.log]
command = "cat >> {events}"
"""


def setup(jobs: Path, tmp_path: Path) -> None:
    (jobs / "vigil.toml").write_text(VIGIL_TOML.format(events=tmp_path / "events.jsonl"))


def outbox(state: Path, event: str) -> list[Notification]:
    reader = SqliteReader(StatePaths(state))
    try:
        return [n for n in reader.notifications(limit=1000) if n.event == event]
    finally:
        reader.close()


def run_of(state: Path, run_id: int) -> dict[str, Any]:
    (run,) = [r for r in runs(state) if r["id"] == run_id]
    return run


def start_run(state: Path, job: str) -> int:
    out = vigil(state, "run", job).stdout  # "started run 7 of job"
    return int(out.split()[2])


def test_a_run_queued_behind_a_long_one_is_late(start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path) -> None:
    setup(jobs_dir, tmp_path)
    write_job(
        jobs_dir, "hold", 'every = "2s"\noverlap = "queue"\nmax_queued = 1\nlate_after = "1s"\ncommand = "sleep 5"\n'
    )
    start_up().wait_active()
    late = wait_for(lambda: outbox(state_dir, "late"), 15, what="a late event")
    queued = late[0].run_id
    assert queued is not None
    assert (late[0].channel, late[0].event_id) == ("log", f"late:run:{queued}")
    doc = json.loads(late[0].document)
    assert (doc["state"], doc["threshold_s"]) == ("pending", 1.0)
    match = re.fullmatch(r"not started 1s after it was due: queued behind run (\d+) still running", doc["reason"])
    assert match, doc["reason"]
    assert run_of(state_dir, queued)["warnings"] == ["late"]
    assert run_of(state_dir, int(match.group(1)))["warnings"] == []  # the run it waited for started at once


def test_a_run_past_warn_if_longer_is_warned_while_it_still_runs(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    setup(jobs_dir, tmp_path)
    write_job(jobs_dir, "slow", 'warn_if_longer = "1s"\ncommand = "sleep 5"\n')
    start_up().wait_active()
    run_id = start_run(state_dir, "slow")
    (longer,) = wait_for(lambda: outbox(state_dir, "longer"), 10, what="a longer event")
    run = run_of(state_dir, run_id)
    assert run["state"] == "running" and run["warnings"] == ["longer"]
    doc = json.loads(longer.document)
    assert (doc["id"], doc["state"], doc["threshold_s"]) == (f"longer:run:{run_id}", "running", 1.0)
    assert 1.0 <= doc["duration_s"] < 3.0


def test_a_percent_threshold_follows_the_median_of_recent_successes(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    setup(jobs_dir, tmp_path)
    took = tmp_path / "took"
    took.write_text("0.2")
    write_job(jobs_dir, "grow", f'warn_if_longer = "300%"\ncommand = "sleep $(cat {took})"\n')
    start_up().wait_active()
    for _ in range(5):  # a percentage applies from the fifth success on
        run_id = start_run(state_dir, "grow")
        wait_for(lambda run_id=run_id: run_of(state_dir, run_id)["state"] == "succeeded", 10)
    assert outbox(state_dir, "longer") == []  # the first ran with too short a history: no threshold yet
    took.write_text("4")
    slow = start_run(state_dir, "grow")
    (longer,) = wait_for(lambda: outbox(state_dir, "longer"), 10, what="a longer event")
    assert longer.run_id == slow and run_of(state_dir, slow)["state"] == "running"
    doc = json.loads(longer.document)
    assert 0.6 <= doc["threshold_s"] < 1.5  # three times a median of about 0.2 s
    assert doc["reason"].startswith("running for ") and "300% of the median" in doc["reason"]


def test_a_success_quicker_than_warn_if_shorter_is_warned_with_its_end(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    setup(jobs_dir, tmp_path)
    write_job(jobs_dir, "quick", 'warn_if_shorter = "2s"\ncommand = "true"\n')
    write_job(jobs_dir, "broken", 'warn_if_shorter = "2s"\ncommand = "exit 3"\n')
    start_up().wait_active()
    quick = start_run(state_dir, "quick")
    broken = start_run(state_dir, "broken")
    wait_for(lambda: run_of(state_dir, broken)["state"] == "failed", 10)
    wait_for(lambda: run_of(state_dir, quick)["state"] == "succeeded", 10)
    run = run_of(state_dir, quick)
    assert run["warnings"] == ["shorter"]
    assert run_of(state_dir, broken)["warnings"] == []  # a quick failure is a failure, not "shorter"
    (shorter,) = outbox(state_dir, "shorter")
    doc = json.loads(shorter.document)
    assert (doc["id"], doc["state"], doc["threshold_s"]) == (f"shorter:run:{quick}", "succeeded", 2.0)
    table = vigil(state_dir, "runs", "--job", "quick").stdout
    header, row = table.splitlines()
    assert header.split()[8] == "WARN" and row.split()[8] == "shorter"


def test_a_run_that_ends_while_no_scheduler_is_up_keeps_its_real_end(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    # The scheduler is SIGKILLed while the job runs; the job ends 1.5 s in, the scheduler comes back
    # seconds later. The run ended when its shim recorded the exit, not when it was seen: no `longer`
    # for a run of 1.5 s against warn_if_longer = 3s, however long the outage.
    setup(jobs_dir, tmp_path)
    ended = tmp_path / "ended"
    write_job(jobs_dir, "nightly", f'warn_if_longer = "3s"\ncommand = "sleep 1.5; date +%s.%N > {ended}"\n')
    first = start_up()
    first.wait_active()
    run_id = start_run(state_dir, "nightly")
    wait_for(lambda: run_of(state_dir, run_id)["state"] == "running", 10, what="the run to start")
    first.kill9()
    wait_for(lambda: ended.exists() and ended.read_text().strip(), 10, what="the job to end")
    job_end = datetime.fromtimestamp(float(ended.read_text()), UTC)
    time.sleep(3)  # the outage: past warn_if_longer from the run's start
    start_up().wait_active()
    run = wait_for(lambda: (r := run_of(state_dir, run_id))["state"] == "succeeded" and r, 10, what="its end")
    recorded = datetime.fromisoformat(run["ended_at"])
    assert abs((recorded - job_end).total_seconds()) < 1.0, (recorded, job_end)
    assert run["warnings"] == [] and outbox(state_dir, "longer") == []
