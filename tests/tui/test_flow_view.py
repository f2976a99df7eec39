"""The flow view (`w` on a run): a flow's steps as a tree with states, durations and edge conditions."""

from __future__ import annotations

import sqlite3

from engine.paths import StatePaths
from tests.tui.conftest import ready, until
from tests.tui.fixture_state import EPOCH, _t
from tests.tui.screen_text import screen_text
from tui.data import after_edges
from tui.screens.flow import FlowScreen
from tui.screens.run import RunScreen
from tui.screens.runs import RunsScreen

# A flow of the fixture's etl jobs: extract (root) → transform (failed) → load (skipped); ids above the fixture's.
FLOW = (
    (900, "etl/extract", "succeeded", None, 0, "schedule"),
    (901, "etl/transform", "failed", "exit code 2", 2, "after"),
    (902, "etl/load", "skipped", "after: etl/transform failed (run 901); this step needs success", None, "after"),
)


def add_flow(paths: StatePaths) -> None:
    db = sqlite3.connect(paths.db, isolation_level=None)
    for offset, (run_id, job, state, reason, exit_code, trigger) in enumerate(FLOW):
        started = None if state == "skipped" else _t(60 - 10 * offset)
        db.execute(
            "INSERT INTO runs (id, job, scheduled_for, attempt, state, reason, trigger, epoch, writer_epoch,"
            " created_at, started_at, ended_at, exit_code, flow_id) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, 900)",
            (
                run_id,
                job,
                _t(60 - 10 * offset),
                state,
                reason,
                trigger,
                EPOCH,
                EPOCH,
                _t(60 - 10 * offset),
                started,
                _t(55 - 10 * offset),
                exit_code,
            ),
        )
    db.close()


def test_after_edges_are_read_back_from_the_schedule_text() -> None:
    assert after_edges("every 1m; after etl/load(failure),etl/extract") == (
        ("etl/load", "failure"),
        ("etl/extract", "success"),
    )
    assert after_edges("cron 0 * * * *") == ()


async def test_w_on_a_run_opens_its_flow_as_a_tree(make_app, fixed_paths: StatePaths) -> None:
    add_flow(fixed_paths)
    app = make_app()
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot)
        await pilot.press("2")
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        await until(pilot, lambda: "902" in runs.runs, what="the flow's runs")
        await pilot.press("enter")  # the newest run: etl/load (902), a step of flow 900
        detail = await until(pilot, lambda: app.screen if isinstance(app.screen, RunScreen) else None)
        await until(pilot, lambda: "flow 900 (w)" in screen_text(app), what="the run's flow in its detail")
        await pilot.press("w")
        flow = await until(pilot, lambda: app.screen if isinstance(app.screen, FlowScreen) else None)
        assert flow.flow_id == 900
        text = await until(pilot, lambda: "Flow 900" in screen_text(app) and screen_text(app), what="the tree")
        assert "Flow 900 · etl/extract · failed" in text
        assert "1 failed, 1 skipped, 1 succeeded" in text
        lines = [line.strip() for line in text.splitlines()]
        (root,) = [line for line in lines if line.startswith("etl/extract")]
        assert "OK" in root and "run 900" in root and "5.0s" in root
        (transform,) = [line for line in lines if line.startswith("└─ success etl/transform")]
        assert "FAIL" in transform and "run 901" in transform and "exit code 2" in transform
        (load,) = [line for line in lines if line.startswith("└─ success etl/load")]
        assert "run 902" in load and "SKIP" in load and "this step needs success" in load
        await pilot.press("escape")
        assert app.screen is detail
