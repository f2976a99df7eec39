"""The Executor port keeps the executors below the scheduler: no executor imports engine.run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXECUTORS = [
    "engine/agents/dispatcher.py",
    "engine/exec/port.py",
    "engine/exec/runner.py",
    "engine/exec/local.py",
    "engine/exec/fake.py",
]


def imported_modules(path: Path) -> set[str]:
    """Every module the file imports, at any depth (TYPE_CHECKING blocks and functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", EXECUTORS)
def test_an_executor_never_imports_the_scheduler(module: str) -> None:
    imports = imported_modules(ROOT / module)
    assert not {name for name in imports if name == "engine.run" or name.startswith("engine.run.")}, imports


def test_the_check_sees_an_import_inside_a_type_checking_block(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine.run.loop import Scheduler\n"
    )
    assert "engine.run.loop" in imported_modules(sample)
