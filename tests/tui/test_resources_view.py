"""The dashboard and shared resources against a real `vigil up`: hold (confirmed) and release, a
pending run's waiting reason and the job's priority and locks under the jobs table, and each
resource's use and max_running in the cluster view."""

from __future__ import annotations

from pathlib import Path

from engine.paths import StatePaths
from tests.helpers import vigil, write_job
from tests.tui.conftest import ready, until
from tests.tui.screen_text import screen_text
from tui.app import VigilApp
from tui.screens.cluster import ClusterScreen
from tui.screens.jobs import JobsScreen
from tui.screens.modals import ConfirmScreen

NEVER = 'cron = "0 0 1 1 *"\n'


def notes(app: VigilApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_hold_release_waiting_reason_locks_and_resource_use_are_shown(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    (jobs_dir / "vigil.toml").write_text("[scheduler]\nmax_running = 4\n[resources.gpu]\nlimit = 1\n")
    write_job(
        jobs_dir,
        "train",
        NEVER + f'locks = ["gpu"]\npriority = 7\ncommand = "while [ ! -e {gate} ]; do sleep 0.05; done"\n',
    )
    write_job(jobs_dir, "infer", NEVER + 'locks = { gpu = 1 }\ncommand = "true"\n')
    up = start_up()
    up.wait_active()
    app = VigilApp(StatePaths(state_dir), interval=0.25)
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        jobs = app.screen
        assert isinstance(jobs, JobsScreen)
        await until(pilot, lambda: set(jobs.table.keys) == {"infer", "train"}, what="catalog")
        await until(pilot, lambda: jobs.check_action("toggle_hold", ()) is True, what="commands enabled")

        # hold asks first, then the job shows HELD
        jobs.table.move_cursor_to("infer")
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await until(pilot, lambda: jobs.jobs["infer"].held, limit=5, what="held")
        assert "HELD" in next(line for line in screen_text(app).splitlines() if "infer" in line)

        # train takes gpu; infer's run waits, held; release: it then waits for gpu, saying who holds it
        vigil(state_dir, "run", "train")
        await until(pilot, lambda: jobs.jobs["train"].status == "running", limit=10, what="train running")
        vigil(state_dir, "run", "infer")
        await until(pilot, lambda: "job held" in screen_text(app), limit=5, what="the held reason")
        await pilot.press("h")  # release: no question
        await until(pilot, lambda: any("infer released" in n for n in notes(app)), limit=5, what="released")
        train_id = jobs.jobs["train"].current.id
        await until(
            pilot,
            lambda: f"pending: waiting for gpu: 1/1 held by run {train_id}" in screen_text(app),
            limit=5,
            what="the lock reason under the table",
        )
        jobs.table.move_cursor_to("train")
        await until(pilot, lambda: "locks gpu=1 · priority 7" in screen_text(app), what="train's locks")

        await pilot.press("3")
        assert isinstance(app.screen, ClusterScreen)
        await until(
            pilot,
            lambda: f"gpu 1/1 · held by runs {train_id} · 1 waiting" in screen_text(app),
            limit=5,
            what="gpu's use",
        )
        assert f"max_running 1/4 · held by runs {train_id}" in screen_text(app)
        gate.touch()
