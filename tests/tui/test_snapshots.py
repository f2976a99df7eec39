"""Screenshots at 80×24 and 120×40 with a fixed clock and fixed data (pytest-textual-snapshot).

Update after an intended change with: pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.tui.conftest import ready, until
from tui.app import VigilApp
from tui.screens.run import LogView, RunScreen
from tui.screens.runs import RunsScreen

SMALL, LARGE = (80, 24), (120, 40)


def before(*steps: Callable[[Pilot[Any]], Any]) -> Callable[[Pilot[Any]], Any]:
    async def run(pilot: Pilot[Any]) -> None:
        await ready(pilot)
        for step in steps:
            result = step(pilot)
            if result is not None:
                await result
        await pilot.pause()

    return run


async def _runs_loaded(pilot: Pilot[Any]) -> None:
    await pilot.press("2")
    screen = pilot.app.screen
    assert isinstance(screen, RunsScreen)
    await until(pilot, lambda: screen.table.row_count == 25 and screen.total == 25, what="runs page")


async def _run_log(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, VigilApp)
    app.show_run(12)
    screen = await until(pilot, lambda: app.screen if isinstance(app.screen, RunScreen) else None)
    await until(pilot, lambda: screen.record is not None and screen.query_one(LogView).line_count == 40)
    await pilot.pause()


async def _confirm_kill(pilot: Pilot[Any]) -> None:
    await pilot.press("j", "j", "j", "K")
    await until(pilot, lambda: type(pilot.app.screen).__name__ == "ConfirmScreen", what="confirm")


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_jobs(snap_compare, make_app, size) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=before())


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_runs(snap_compare, make_app, size) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=before(_runs_loaded))


def test_run_detail_and_log(snap_compare, make_app) -> None:
    assert snap_compare(make_app(), terminal_size=SMALL, run_before=before(_run_log))


def test_cluster(snap_compare, make_app) -> None:
    assert snap_compare(make_app(), terminal_size=SMALL, run_before=before(lambda p: p.press("3")))


def test_agents(snap_compare, make_app) -> None:
    assert snap_compare(make_app(), terminal_size=SMALL, run_before=before(lambda p: p.press("4")))


def test_no_active_scheduler(snap_compare, make_app) -> None:
    assert snap_compare(make_app(active=False), terminal_size=SMALL, run_before=before())


def test_read_only_with_filter(snap_compare, make_app) -> None:
    async def type_filter(pilot: Pilot[Any]) -> None:
        await pilot.press("slash", *"demo", "enter")

    assert snap_compare(make_app(read_only=True), terminal_size=SMALL, run_before=before(type_filter))


def test_help(snap_compare, make_app) -> None:
    assert snap_compare(make_app(), terminal_size=SMALL, run_before=before(lambda p: p.press("question_mark")))


def test_kill_confirmation(snap_compare, make_app) -> None:
    assert snap_compare(make_app(), terminal_size=SMALL, run_before=before(_confirm_kill))
