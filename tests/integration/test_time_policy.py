"""Firing policy with real `vigil up` processes and real shims (the clock cases are in tests/unit)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import runs, wait_for, write_job


def test_a_queue_is_capped_and_a_queued_run_says_what_it_waited_for(start_up, state_dir: Path, jobs_dir: Path) -> None:
    write_job(jobs_dir, "q", 'every = "1s"\noverlap = "queue"\nmax_queued = 1\ncommand = "sleep 2.5"\n')
    up = start_up()
    full = wait_for(
        lambda: [r for r in runs(state_dir, "--job", "q") if r["state"] == "skipped"],
        10,
        what="a fire to find the queue full",
    )[0]
    assert full["reason"] == "overlap=queue: queue full (1 waiting, max_queued = 1)", full
    # The run that waited starts when the first ends, and its reason stops saying it is waiting.
    started = wait_for(
        lambda: [
            r
            for r in runs(state_dir, "--job", "q")
            if r["state"] == "running" and (r["reason"] or "").startswith("started after run")
        ],
        10,
        what="the queued run to start",
    )[0]
    first = min(r["id"] for r in runs(state_dir, "--job", "q"))
    assert started["reason"] == f"started after run {first} ended"
    assert not [r for r in runs(state_dir, "--job", "q") if r["state"] == "pending" and r["id"] < started["id"]]
    assert up.proc.poll() is None
