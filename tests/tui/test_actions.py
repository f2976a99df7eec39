"""Every dashboard command against a real `vigil up`: run now, pause/resume, kill (confirmed), rerun.

The scheduler audits each command itself; these tests check the audit rows it wrote.
"""

from __future__ import annotations

import time
from pathlib import Path

from engine.api import StateReader
from engine.paths import StatePaths, os_user
from tests.helpers import write_job
from tests.tui.conftest import ready, until
from tests.tui.screen_text import screen_text
from tui.app import VigilApp
from tui.screens.jobs import JobsScreen
from tui.screens.modals import ConfirmScreen
from tui.screens.runs import RunsScreen

NEVER = 'cron = "0 0 1 1 *"\n'  # fires once a year: only commands start these jobs


def notes(app: VigilApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_actions_reach_the_scheduler_and_are_audited(start_up, state_dir: Path, jobs_dir: Path) -> None:
    write_job(jobs_dir, "act/sleeper", NEVER + 'command = "sleep 30"\n')
    write_job(jobs_dir, "act/quick", NEVER + 'command = "echo hello from quick"\n')
    up = start_up()
    up.wait_active()
    app = VigilApp(StatePaths(state_dir), interval=0.25)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        jobs = app.screen
        assert isinstance(jobs, JobsScreen)
        await until(pilot, lambda: set(jobs.table.keys) == {"act/quick", "act/sleeper"}, what="catalog")
        await until(pilot, lambda: jobs.check_action("run_now", ()) is True, what="commands enabled")

        # run now: feedback within a second, then the job shows as running
        jobs.table.move_cursor_to("act/sleeper")
        pressed = time.monotonic()
        await pilot.press("r")
        await until(pilot, lambda: any("started run" in n for n in notes(app)), limit=1.0, what="run-now feedback")
        assert time.monotonic() - pressed < 1.0
        await until(pilot, lambda: jobs.jobs["act/sleeper"].status == "running", limit=10, what="running")
        assert jobs.check_action("kill", ()) is True

        # kill asks first; "n" cancels and sends nothing
        await pilot.press("K")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("n")
        await until(pilot, lambda: any("Kill cancelled" in n for n in notes(app)), what="cancelled")
        assert jobs.jobs["act/sleeper"].status == "running"
        await pilot.press("K")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await until(pilot, lambda: any("kill sent" in n for n in notes(app)), limit=1.0, what="kill feedback")
        await until(
            pilot,
            lambda: (jobs.jobs["act/sleeper"].last or None) and jobs.jobs["act/sleeper"].last.state == "killed",
            limit=15,
            what="killed",
        )
        killed_id = jobs.jobs["act/sleeper"].last.id

        # rerun the killed run, then kill the rerun from the runs view
        await pilot.press("R")
        await until(
            pilot, lambda: any(f"rerun of {killed_id}" in n for n in notes(app)), limit=1.0, what="rerun feedback"
        )
        await until(pilot, lambda: jobs.jobs["act/sleeper"].status == "running", limit=10, what="rerun running")
        rerun_id = jobs.jobs["act/sleeper"].current.id
        await pilot.press("2")
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        await until(
            pilot,
            lambda: runs.table.cursor_key == str(rerun_id) and runs.runs[str(rerun_id)].is_open,
            limit=5,
            what="rerun listed",
        )
        await pilot.press("K")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await until(
            pilot,
            lambda: runs.runs.get(str(rerun_id)) and runs.runs[str(rerun_id)].state == "killed",
            limit=15,
            what="rerun killed",
        )

        # pause and resume from the jobs view
        await pilot.press("1")
        assert app.screen is jobs
        jobs.table.move_cursor_to("act/quick")
        await pilot.press("p")
        await until(pilot, lambda: jobs.jobs["act/quick"].paused, limit=5, what="paused")
        assert "⏸ PAUSED" in next(line for line in screen_text(app).splitlines() if "act/quick" in line)
        await pilot.press("p")
        await until(pilot, lambda: not jobs.jobs["act/quick"].paused, limit=5, what="resumed")

    reader = StateReader(StatePaths(state_dir))
    audit = reader.audit(limit=50)
    reader.close()
    actions = [(a.action, a.target) for a in reversed(audit)]
    assert actions == [
        ("run", "act/sleeper"),
        ("kill", str(killed_id)),
        ("rerun", str(killed_id)),
        ("kill", str(rerun_id)),
        ("pause", "act/quick"),
        ("resume", "act/quick"),
    ]
    assert {a.user for a in audit} == {os_user()}
    assert any(a.result == f"rerun as {rerun_id}" for a in audit)
