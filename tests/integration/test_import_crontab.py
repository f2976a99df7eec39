"""An imported crontab runs under a real scheduler: cron's stdin (`%`) and SHELL reach the job."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import vigil, vigil_json, wait_for


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for the SHELL line")
def test_an_imported_crontab_runs_with_crons_stdin_and_shell(
    start_up, state_dir: Path, jobs_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    crontab = tmp_path / "mine.txt"
    crontab.write_text(
        f"OUT={out}\n"
        '0 4 * * * tr a-z A-Z > "$OUT.stdin"%first line%it\'s 100\\% %%last\n'
        "SHELL=/bin/bash\n"
        '0 5 * * * echo "bash $BASH_VERSINFO" > "$OUT.shell"\n'
    )
    imported = vigil(state_dir, "import-crontab", str(crontab), "--timezone", "UTC", jobs=jobs_dir)
    assert "mine/tr" in imported.stdout and "mine/echo" in imported.stdout
    start_up().wait_active()
    for name in ("mine/tr", "mine/echo"):
        vigil(state_dir, "run", name)

    def ended() -> list[dict[str, object]]:
        rows = vigil_json(state_dir, "runs")
        done = [r for r in rows if r["state"] not in ("pending", "launching", "running")]
        return done if len(done) == 2 else []

    runs = wait_for(ended, 15, what="both runs to end")
    assert sorted(r["state"] for r in runs) == ["succeeded", "succeeded"], runs
    assert (tmp_path / "out.stdin").read_bytes() == b"FIRST LINE\nIT'S 100% \n\nLAST\n"
    assert (tmp_path / "out.shell").read_text().startswith("bash ") and (
        tmp_path / "out.shell"
    ).read_text() != "bash \n"
