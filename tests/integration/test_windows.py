"""Admission windows with real processes and the real SQLite file: a fire before its window waits
`pending` and starts once at the opening; a run still going when its window closes is killed, its
whole process group, with the reason. Windows are computed from now, a few seconds wide."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.helpers import runs, wait_for, write_job


def span(opens_in: float, lasts: float) -> tuple[str, datetime, datetime]:
    """A window "HH:MM:SS-HH:MM:SS" (UTC, every day) opening `opens_in` seconds from now."""
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    opens, closes = now + timedelta(seconds=opens_in), now + timedelta(seconds=opens_in + lasts)
    return f"{opens:%H:%M:%S}-{closes:%H:%M:%S}", opens, closes


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_fire_before_its_window_waits_pending_and_starts_once_at_the_opening(
    start_up, state_dir: Path, jobs_dir: Path
) -> None:
    window, opens, _closes = span(6, 30)
    write_job(jobs_dir, "gated", f'every = "1s"\ncommand = "true"\nwindow = "{window}"\n')
    start_up().wait_active()
    waiting = wait_for(
        lambda: [r for r in runs(state_dir, "--job", "gated") if r["state"] == "pending"], 10, what="a waiting run"
    )[0]
    assert when(waiting["not_before"]) == opens
    assert "waits for it to open" in waiting["reason"] and f"outside window {window}" in waiting["reason"]
    # later fires before the opening are skipped, naming the run that waits
    skipped = wait_for(
        lambda: [r for r in runs(state_dir, "--job", "gated") if r["state"] == "skipped"], 10, what="a skipped fire"
    )
    assert f"run {waiting['id']} already waits for the window" in skipped[0]["reason"]
    done = wait_for(
        lambda: [
            r for r in runs(state_dir, "--job", "gated") if r["id"] == waiting["id"] and r["state"] == "succeeded"
        ],
        15,
        what="the waiting run to run at the opening",
    )[0]
    assert when(done["started_at"]) >= opens
    assert when(done["scheduled_for"]) < opens
    # inside the window the job fires as scheduled
    wait_for(
        lambda: [
            r
            for r in runs(state_dir, "--job", "gated")
            if r["state"] == "succeeded" and when(r["scheduled_for"]) >= opens
        ],
        10,
        what="a fire inside the window",
    )


def test_kill_at_window_end_kills_the_run_still_going_when_the_window_closes(
    start_up, state_dir: Path, jobs_dir: Path
) -> None:
    window, _opens, closes = span(-2, 5)
    write_job(
        jobs_dir,
        "bounded",
        f'every = "1s"\ncommand = "sleep 60"\nwindow = "{window}"\nkill_at_window_end = true\nretries = 1\n',
    )
    start_up().wait_active()
    killed = wait_for(
        lambda: [r for r in runs(state_dir, "--job", "bounded") if r["state"] == "killed"],
        20,
        what="the run to be killed at the window's end",
    )[0]
    assert killed["reason"].startswith(f"kill_at_window_end: its window ({window}) closed at ")
    assert killed["reason"].endswith("process group killed")
    assert when(killed["ended_at"]) >= closes - timedelta(seconds=0.1)  # the monotonic deadline, to the clock tick
    # a killed run is not retried; the fires after the close wait for tomorrow's opening
    assert not [r for r in runs(state_dir, "--job", "bounded") if r["attempt"] > 1]
