from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from engine.paths import StatePaths
from tests.tui.fixture_state import FixedActiveSource, build_fixed_state, fixed_clock
from tui.app import VigilApp


@pytest.fixture
def fixed_paths(tmp_path: Path) -> StatePaths:
    return build_fixed_state(tmp_path / "state")


@pytest.fixture
def make_app(fixed_paths: StatePaths) -> Callable[..., VigilApp]:
    """An app on the fixed state; `active=True` pretends a scheduler answers (for screenshots)."""

    def make(
        *,
        active: bool = True,
        read_only: bool = False,
        clock: Callable[[], datetime] = fixed_clock,
        paths: StatePaths | None = None,
    ) -> VigilApp:
        paths = paths or fixed_paths
        source = FixedActiveSource(paths, clock=clock) if active else None
        return VigilApp(paths, read_only=read_only, clock=clock, source=source, interval=60.0)

    return make


async def until(pilot: Pilot[Any], predicate: Callable[[], object], limit: float = 5.0, what: str = "") -> Any:
    """Let the app run until `predicate()` is truthy (polling with a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + limit
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        await pilot.pause(0.02)
    raise AssertionError(f"gave up after {limit}s waiting for {what or predicate} (last: {last!r})")


async def ready(pilot: Pilot[Any]) -> None:
    """Wait for the first snapshot to reach the screen, then let pending work settle."""
    app = pilot.app
    assert isinstance(app, VigilApp)
    await until(pilot, lambda: app.snapshot is not None, what="first snapshot")
    await pilot.pause()
    await pilot.pause()
