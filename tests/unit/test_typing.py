"""engine/ and tui/ type-check cleanly under the settings in pyproject.toml ([tool.mypy])."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the test extra")


def test_mypy_reports_no_errors() -> None:
    stdout, stderr, status = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            str(ROOT / "engine"),
            str(ROOT / "tui"),
        ]
    )
    assert status == 0, stdout + stderr
