"""The tree is ruff-clean and ruff-formatted (CI runs only the test command, so it is checked here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ruff() -> list[str]:
    beside = Path(sys.executable).with_name("ruff")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is in the test extra")
    return [found]


@pytest.mark.parametrize("argv", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_reports_nothing(argv: list[str]) -> None:
    proc = subprocess.run([*_ruff(), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
