"""contrib/systemd: the units say what docs/operations.md promises, and systemd accepts them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
NAMES = ("vigil.service", "vigil@.service", "vigil-agent.service")


def settings(text: str) -> dict[str, list[str]]:
    """KEY -> every value set in the unit's [Service] section (comments and blank lines skipped)."""
    section, found = "", {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("name", NAMES)
def test_each_unit_is_notify_watchdog_restart_and_never_kills_running_jobs(name: str) -> None:
    service = settings((UNITS / name).read_text())
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] and service["Restart"] == ["on-failure"]
    # Only the main process is signalled on stop/restart: the shims and jobs are left running.
    assert service["KillMode"] == ["process"]
    # A job the OOM killer kills in the unit's cgroup must not make systemd stop the scheduler.
    assert service["OOMPolicy"] == ["continue"]
    command = "agent" if "agent" in name else "up"
    assert service["ExecStart"][0].split()[1] == command


def test_the_template_shares_the_state_of_vigil_service() -> None:
    main = settings((UNITS / "vigil.service").read_text())
    node = settings((UNITS / "vigil@.service").read_text())
    for key in ("Environment", "EnvironmentFile", "ExecStart", "StateDirectory"):
        assert node[key] == main[key], key  # one state directory, one job folder: one active, the rest standbys


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", NAMES)
def test_systemd_accepts_the_unit(name: str, tmp_path: Path) -> None:
    vigil = Path(sys.executable).with_name("vigil")  # the installed entry point stands in for /opt/vigil
    text = (UNITS / name).read_text().replace("/opt/vigil/bin/vigil", str(vigil))
    unit = tmp_path / name.replace("@.", "@2.")
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
