"""With no scheduler active, the dashboard's jobs are what their files say now, not the last catalog.

The `jobs` catalog is written by the active. Once it is gone nothing fires and nothing keeps a broken
file's last valid version running, so the dashboard must agree with `vigil jobs`: a file broken now is
an error, a next fire already past is not shown, removed files are gone and new ones appear.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from engine.clock import iso
from engine.paths import StatePaths
from engine.store.sqlite.db import connect
from tests.tui.conftest import ready, until
from tests.tui.fixture_state import EPOCH, FIXED_NOW, FixedActiveSource, fixed_clock
from tests.tui.screen_text import screen_text
from tui.app import VigilApp
from tui.data import StateSource
from tui.screens.jobs import JobsScreen


def _state(root: Path, jobs: Path) -> StatePaths:
    """A state whose last active loaded `d` (every 2s), `e` (every 1m) and `gone` from `jobs`."""
    paths = StatePaths(root)
    conn = connect(paths)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "UPDATE leader SET epoch = ?, pid = 4242, starttime = 1, since = ? WHERE id = 1", (EPOCH, iso(FIXED_NOW))
    )
    for name, schedule, next_in in (("d", "every 2s", -30), ("e", "every 1m", 40), ("gone", "every 5m", 200)):
        conn.execute(
            "INSERT INTO jobs (name, path, schedule, enabled, agent, description, tags, next_fire, error, "
            "writer_epoch) VALUES (?, ?, ?, 1, NULL, '', '', ?, NULL, ?)",
            (name, str(jobs / f"{name}.toml"), schedule, iso(FIXED_NOW + timedelta(seconds=next_in)), EPOCH),
        )
    conn.execute(
        "INSERT INTO runs (id, job, scheduled_for, attempt, state, trigger, epoch, writer_epoch, created_at, "
        "started_at, ended_at, exit_code) VALUES (1, 'd', ?, 1, 'succeeded', 'schedule', ?, ?, ?, ?, ?, 0)",
        (*(iso(FIXED_NOW - timedelta(seconds=32)),), EPOCH, EPOCH, *(iso(FIXED_NOW - timedelta(seconds=32)),) * 3),
    )
    conn.execute("COMMIT")
    conn.close()
    return paths


def _job_folder(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "d.toml").write_text('every = "2s\n')  # broken since the last active loaded it
    (jobs / "e.toml").write_text('every = "1m"\ncommand = "true"\n')
    (jobs / "new.toml").write_text('every = "10m"\ncommand = "true"\n')  # added while no scheduler ran
    return jobs


def _flat(app: VigilApp) -> str:
    """The screen's words on one line: wrapped notes and banners read as one sentence."""
    return " ".join(screen_text(app).split())


def _next(app: VigilApp, name: str) -> str:
    """The NEXT cell of a job's row, found under the column's header."""
    text = screen_text(app).splitlines()
    header = next(line for line in text if " JOB" in line and "NEXT" in line)
    start = header.index("NEXT")
    return _lines(app)[name][start : start + 8].strip()


def _lines(app: VigilApp) -> dict[str, str]:
    rows = [line for line in screen_text(app).splitlines() if line.startswith(" ") and len(line.split()) > 2]
    return {line.split()[0]: line for line in rows}


async def test_no_active_shows_a_broken_job_file_as_an_error_and_no_past_next_fire(tmp_path: Path) -> None:
    jobs = _job_folder(tmp_path)
    paths = _state(tmp_path / "state", jobs)
    app = VigilApp(paths, clock=fixed_clock, interval=60.0)  # nobody answers on the control socket
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        text = screen_text(app)
        lines = _lines(app)
        assert "○ NO ACTIVE SCHEDULER" in text and "No scheduler is active" in text
        assert "⚠ ERROR" in lines["d"] and "invalid" in lines["d"] and "IDLE" not in lines["d"]
        assert "11:59:30" not in text  # the last active's next fire for d, already past
        assert _next(app, "d") == "—"
        assert "12:00:40" in lines["e"]  # still ahead, same schedule: the recorded next fire stands
        assert "gone" not in lines  # its file was removed: the next scheduler will not load it
        assert "· IDLE" in lines["new"] and "every 10m" in lines["new"]
        # The selected job's error is spelled out under the table, as `vigil jobs` gives it.
        assert app.screen.focused is not None
        assert "⚠ d: " in _flat(app) and "d.toml:1: syntax: invalid TOML" in _flat(app)


async def test_no_active_follows_a_job_file_that_breaks_and_is_fixed(tmp_path: Path) -> None:
    jobs = _job_folder(tmp_path)
    (jobs / "d.toml").write_text('every = "2s"\ncommand = "true"\n')
    paths = _state(tmp_path / "state", jobs)
    source = StateSource(paths, clock=fixed_clock, files_every=0.0)
    app = VigilApp(paths, clock=fixed_clock, interval=60.0, source=source)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert "· IDLE" in _lines(app)["d"] and "11:59:30" not in screen_text(app)

        async def shows(word: str) -> bool:
            await app.refresh_now()  # a re-read of the files is started; a later refresh shows it
            await pilot.pause()
            return word in _lines(app)["d"]

        async def wait_shows(word: str) -> None:
            deadline = time.monotonic() + 5.0
            while not await shows(word):
                assert time.monotonic() < deadline, f"d never showed {word!r}: {_lines(app)['d']!r}"
                await pilot.pause(0.02)

        (jobs / "d.toml").write_text('every = "2s"\ncommand = "true"\nbogus = 1\n')
        await wait_shows("⚠ ERROR")
        assert "bogus" in _flat(app)  # its error, under the table (d is the selected row)
        (jobs / "d.toml").write_text('every = "2s"\ncommand = "true"\n')
        await wait_shows("· IDLE")
        assert "bogus" not in _flat(app)
        assert isinstance(app.screen, JobsScreen)


async def test_with_an_active_the_catalog_is_the_truth(tmp_path: Path) -> None:
    """The active keeps a broken file's last valid version scheduled: its catalog row is shown as is."""
    jobs = _job_folder(tmp_path)
    paths = _state(tmp_path / "state", jobs)
    app = VigilApp(paths, clock=fixed_clock, interval=60.0, source=FixedActiveSource(paths, clock=fixed_clock))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        lines = _lines(app)
        assert "● ACTIVE" in screen_text(app)
        assert "· IDLE" in lines["d"] and "every 2s" in lines["d"]
        assert "gone" in lines and "new" not in lines


async def test_an_unreadable_job_folder_keeps_the_recorded_jobs_and_says_why(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs-that-moved"
    paths = _state(tmp_path / "state", jobs)  # the folder the catalog names does not exist
    app = VigilApp(paths, clock=fixed_clock, interval=60.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await until(pilot, lambda: "does not exist" in _flat(app), what="folder problem in the banner")
        lines = _lines(app)
        assert set(lines) >= {"d", "e", "gone"}
        assert "11:59:30" not in screen_text(app) and _next(app, "d") == "—"
        assert _next(app, "e") == "12:00:40" and "every 2s" in lines["d"]
