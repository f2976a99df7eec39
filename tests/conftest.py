from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import Up


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "jobs"
    folder.mkdir()
    return folder


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def start_up(state_dir: Path, jobs_dir: Path) -> Iterator:
    """Start `vigil up` processes; stop them and kill leftover job process groups afterwards."""
    started: list[Up] = []

    def start(state: Path | None = None, jobs: Path | None = None) -> Up:
        up = Up(state or state_dir, jobs or jobs_dir)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()
    _kill_leftover_jobs(state_dir)


def _kill_leftover_jobs(state_dir: Path) -> None:
    runs = state_dir / "runs"
    if not runs.is_dir():
        return
    for started in runs.glob("*/started"):
        try:
            pid = int(started.read_text().strip())
        except ValueError:
            continue
        try:
            # Only a process that is still this run's job (pid reuse is possible).
            if psutil.Process(pid).environ().get("VIGIL_RUN_ID") == started.parent.name:
                os.killpg(pid, signal.SIGKILL)
        except (OSError, psutil.Error):
            pass
