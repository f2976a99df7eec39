"""The job keys `late_after`, `warn_if_longer` and `warn_if_shorter`: parsed, inherited, and checked together."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.config import format_errors, load_folder
from engine.model import Threshold


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_the_three_keys_read_as_seconds_and_percentages_and_late_after_suits_a_manual_job(tmp_path: Path) -> None:
    write(tmp_path, "etl/_folder.toml", 'warn_if_longer = "200%"\n')
    write(tmp_path, "etl/load.toml", 'command = "true"\nlate_after = "5m"\nwarn_if_shorter = "2s"\n')
    result = load_folder(tmp_path)
    assert result.errors == [], format_errors(result.errors)
    job = result.jobs["etl/load"]
    assert job.schedule_text == "manual"  # a manual run can wait too (behind overlap, for an agent)
    assert (job.late_after, job.warn_if_longer, job.warn_if_shorter) == (
        300.0,
        Threshold(percent=200.0),
        Threshold(seconds=2.0),
    )


@pytest.mark.parametrize(
    ("shorter", "longer"),
    [('"30s"', '"30s"'), ('"1m"', '"30s"'), ('"200%"', '"150%"')],
)
def test_warn_if_shorter_not_below_warn_if_longer_is_an_error_naming_file_and_key(
    tmp_path: Path, shorter: str, longer: str
) -> None:
    path = write(tmp_path, "j.toml", f'command = "true"\nwarn_if_longer = {longer}\nwarn_if_shorter = {shorter}\n')
    result = load_folder(tmp_path)
    (error,) = result.errors
    assert (Path(error.path), error.key, error.line) == (path, "warn_if_shorter", 3)
    assert "must be below warn_if_longer" in error.reason
    assert "j" not in result.jobs


def test_the_error_points_at_the_job_file_when_the_folder_sets_the_other_key(tmp_path: Path) -> None:
    write(tmp_path, "etl/_folder.toml", 'warn_if_shorter = "1m"\n')
    path = write(tmp_path, "etl/fast.toml", 'command = "true"\nwarn_if_longer = "30s"\n')
    (error,) = load_folder(tmp_path).errors
    assert (Path(error.path), error.key) == (path, "warn_if_longer")
    assert error.reason == "warn_if_shorter (1m) must be below warn_if_longer (30s)"


def test_a_duration_and_a_percentage_are_not_compared(tmp_path: Path) -> None:
    write(tmp_path, "j.toml", 'command = "true"\nwarn_if_longer = "150%"\nwarn_if_shorter = "10m"\n')
    result = load_folder(tmp_path)
    assert result.errors == [] and "j" in result.jobs
