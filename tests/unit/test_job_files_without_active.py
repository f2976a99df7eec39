"""engine.api: the job catalog as it stands with no active scheduler (what the dashboard shows then)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.api import JobFilesReader, catalog_folder, catalog_without_active
from engine.model import JobRow

NOW = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)


def _row(jobs: Path, name: str, schedule: str, next_in: float | None, **kw: Any) -> JobRow:
    fields: dict[str, Any] = {
        "name": name,
        "path": str(jobs / f"{name}.toml"),
        "schedule": schedule,
        "enabled": True,
        "agent": None,
        "description": "",
        "tags": "",
        "next_fire": None if next_in is None else NOW + timedelta(seconds=next_in),
        "error": None,
        "paused": False,
        "loaded": True,
    }
    return JobRow(**{**fields, **kw})


def test_files_now_decide_schedule_next_fire_and_errors(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "sub").mkdir(parents=True)
    (jobs / "same.toml").write_text('every = "1m"\ncommand = "true"\n')
    (jobs / "changed.toml").write_text('every = "5m"\ncommand = "true"\n')  # was every 1m
    (jobs / "off.toml").write_text('every = "1m"\ncommand = "true"\nenabled = false\n')
    (jobs / "sub" / "_folder.toml").write_text('timeout = "bogus"\n')
    (jobs / "sub" / "x.toml").write_text('every = "1m"\ncommand = "true"\n')  # valid itself, its folder is not
    rows = [
        _row(jobs, "same", "every 1m", 30),
        _row(jobs, "changed", "every 1m", 30),
        _row(jobs, "off", "every 1m", 30),
        _row(jobs, "sub/x", "every 1m", 30, tags="etl"),
    ]
    assert catalog_folder(rows) == jobs
    view = JobFilesReader(jobs).read([r.name for r in rows])
    out = {r.name: r for r in catalog_without_active(rows, view, {"same"}, NOW)}
    assert out["same"].next_fire == rows[0].next_fire and out["same"].paused is True
    assert out["changed"].schedule == "every 5m" and out["changed"].next_fire is None
    assert out["off"].enabled is False
    x = out["sub/x"]
    assert x.schedule == "invalid" and x.next_fire is None and x.tags == "etl"
    assert x.error.startswith("not valid now: ") and "_folder.toml:1: timeout" in x.error


def test_without_files_only_past_next_fires_are_dropped(tmp_path: Path) -> None:
    rows = [_row(tmp_path, "past", "every 2s", -1), _row(tmp_path, "ahead", "every 1m", 1)]
    out = {r.name: r for r in catalog_without_active(rows, None, set(), NOW)}
    assert out["past"].next_fire is None and out["ahead"].next_fire == rows[1].next_fire


def test_a_job_that_loads_with_a_notify_error_shows_it_and_stays_loaded(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "load.toml").write_text('every = "1m"\ncommand = "true"\nnotify = ["opz"]\n')
    view = JobFilesReader(jobs).read()
    (row,) = catalog_without_active([], view, set(), NOW)
    assert (row.schedule, row.loaded) == ("every 1m", True)  # it still runs: alerting config never stops a job
    assert row.error is not None and "load.toml:3: notify: unknown channel 'opz'" in row.error
