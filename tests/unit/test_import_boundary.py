"""The engine must never pull in the dashboard's stack: a scheduler host may not even have a terminal."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parents[2]


def engine_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(engine.__path__, "engine.") if m.name != "engine.cli.__main__")


def test_engine_modules_are_found() -> None:
    assert {"engine.api", "engine.cli", "engine.run.loop"} <= set(engine_modules())


def test_engine_imports_no_textual_and_no_tui() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {engine_modules()!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        # an optional extra (e.g. the agent server's stack) may be absent; that is not our concern\n"
        "        print('skip', name, exc, file=sys.stderr)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'tui'))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"engine imported: {proc.stdout.strip()}"


def test_no_engine_source_imports_textual_or_tui_even_lazily() -> None:
    """Imports inside functions escape the import-time check above; read the sources too."""
    offenders = []
    for path in (ROOT / "engine").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("import", "from") and words[1].split(".")[0] in ("textual", "tui"):
                offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_vigil_monitor_finds_the_dashboard_through_its_entry_point() -> None:
    from importlib.metadata import entry_points

    (monitor,) = entry_points(group="vigil.commands", name="monitor")
    from tui.app import run_monitor

    assert monitor.load() is run_monitor


def test_tui_uses_only_the_engine_public_api() -> None:
    """The dashboard reads and commands through engine.api/control/model/errors/clock/paths only."""
    allowed = {
        "engine",
        "engine.api",
        "engine.control",
        "engine.model",
        "engine.errors",
        "engine.clock",
        "engine.paths",
    }
    offenders = []
    for path in (ROOT / "tui").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("import", "from") and words[1].startswith("engine"):
                if words[1] not in allowed:
                    offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_apprise_is_imported_only_where_a_url_channel_is_built() -> None:
    """`vigil runs --json`, `vigil notifications` and the scheduler without a url channel stay light."""
    code = (
        "import sys\n"
        "import engine.cli, engine.cli.notify_cmds, engine.api, engine.run.loop, engine.outbox.deliverer\n"
        "print('apprise' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
