"""Pure parts of the executor and reconciliation: no processes needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import executor
from engine.reconcile import Action, ShimEvidence, decide


def test_scope_prefix_only_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert executor.scope_prefix(7, {}) == []
    assert executor.scope_prefix(7, {"VIGIL_SYSTEMD_SCOPE": "0", "INVOCATION_ID": "x"}) == []
    prefix = executor.scope_prefix(7, {"VIGIL_SYSTEMD_SCOPE": "1"})
    assert prefix[0] == "/usr/bin/systemd-run" and "--scope" in prefix and prefix[-1] == "--"
    assert any(arg.endswith("-7") for arg in prefix if arg.startswith("--unit="))


def test_job_argv_string_goes_through_sh_and_array_is_execd() -> None:
    assert executor.job_argv("echo $HOME") == ["/bin/sh", "-c", "echo $HOME"]
    assert executor.job_argv(("python3", "-V")) == ["python3", "-V"]


def test_exit_record_must_be_complete(tmp_path: Path) -> None:
    (tmp_path / "exit").write_text("exit=3 end\n")
    assert executor.read_exit_record(tmp_path) == 3
    (tmp_path / "exit").write_text("exit=3")
    assert executor.read_exit_record(tmp_path) is None
    (tmp_path / "exit").write_text("")
    assert executor.read_exit_record(tmp_path) is None


def test_cpu_seconds_from_times_output(tmp_path: Path) -> None:
    (tmp_path / "times").write_text("0m0.001000s 0m0.002000s\n1m2.500000s 0m0.250000s\n")
    assert executor.read_cpu_seconds(tmp_path) == pytest.approx(62.75)


@pytest.mark.parametrize(
    ("evidence", "action"),
    [
        (ShimEvidence(False, False, None, None, None), Action.LAUNCH),
        (ShimEvidence(True, False, None, None, None), Action.LAUNCH),
        (ShimEvidence(True, True, 10, 11, None), Action.ADOPT),
        (ShimEvidence(True, True, None, None, None), Action.ADOPT),
        (ShimEvidence(True, False, 10, 11, 0), Action.INGEST),
        (ShimEvidence(True, True, 10, 11, 2), Action.INGEST),
        (ShimEvidence(True, False, 10, None, None), Action.UNKNOWN),
        (ShimEvidence(True, False, 10, 11, None), Action.UNKNOWN),
    ],
)
def test_reconciliation_decisions(evidence: ShimEvidence, action: Action) -> None:
    decision = decide(evidence)
    assert decision.action is action
    if action is Action.UNKNOWN:
        assert decision.reason and "shim 10" in decision.reason
