"""`[calendars.NAME]` in vigil.toml and the calendar/window job keys: what loads, and every bad value or
combination reported with its file, key and reason. Also `vigil plan` and `vigil next` on such a folder."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from engine.cli import main
from engine.config import load_folder
from engine.model import NonWorking, OutsideWindow

CALENDAR = """
[calendars.de-berlin]
weekdays = ["mon", "tue", "wed", "thu", "fri"]
holidays = { country = "DE", subdivision = "BE" }
include = [2026-12-27]
exclude = [2026-12-24, "2026-12-31"]
"""


def folder(tmp_path: Path, settings: str, **jobs: str) -> Path:
    (tmp_path / "vigil.toml").write_text(settings)
    for name, text in jobs.items():
        (tmp_path / f"{name}.toml").write_text('command = "true"\n' + text)
    return tmp_path


def errors(root: Path) -> list[str]:
    return [error.format() for error in load_folder(root).errors]


def test_a_calendar_and_the_job_keys_load(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        CALENDAR,
        moved='cron = "0 9 * * *"\ncalendar = "de-berlin"\non_nonworking = "next"\n'
        'window = ["mon-fri 08:00-18:00", "22:00-06:00"]\noutside_window = "skip"\nkill_at_window_end = true\n',
        month_end='workday = -1\nat_time = "18:00"\ncalendar = "de-berlin"\ntimezone = "Europe/Berlin"\n',
    )
    result = load_folder(root)
    assert result.errors == []
    spec = result.settings.calendars["de-berlin"]
    assert (spec.country, spec.subdivision, spec.weekdays) == ("DE", "BE", frozenset(range(5)))
    assert spec.exclude == {date(2026, 12, 24), date(2026, 12, 31)} and spec.include == {date(2026, 12, 27)}
    moved = result.jobs["moved"]
    assert (moved.on_nonworking, moved.outside_window, moved.kill_at_window_end) == (
        NonWorking.NEXT,
        OutsideWindow.SKIP,
        True,
    )
    assert moved.window == ("mon-fri 08:00-18:00", "22:00-06:00")
    assert result.jobs["month_end"].schedule_text == "workday -1 at 18:00 Europe/Berlin; calendar de-berlin"


def test_bad_calendars_name_vigil_toml_the_key_and_the_valid_choices(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        '[calendars.bad]\nweekdays = ["mon", "fry"]\nholidays = { country = "DE", subdivision = "XX" }\n'
        'exclude = ["2026-13-01"]\n[calendars.nowhere]\nholidays = { country = "QQ" }\n',
        j='cron = "0 9 * * *"\ncalendar = "bad"\n',
    )
    found = errors(root)
    toml = str(root / "vigil.toml")
    assert (
        f"{toml}:2: calendars.bad.weekdays: unknown weekday 'fry' (valid: mon, tue, wed, thu, fri, sat, sun)" in found
    )
    assert any(
        line.startswith(f"{toml}:3: calendars.bad.holidays.subdivision: unknown subdivision 'XX' of DE (valid: BB, BE")
        for line in found
    )
    assert f"{toml}:4: calendars.bad.exclude: item 1: expected a date YYYY-MM-DD, got '2026-13-01'" in found
    assert any("calendars.nowhere.holidays.country: unknown country 'QQ'" in line for line in found)
    # the job naming the invalid calendar does not load, and says why
    assert any(
        "j.toml:3: calendar: calendar 'bad' is declared in vigil.toml but its definition is invalid" in line
        for line in found
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('workday = 1\nat_time = "18:00"\n', "workday: needs calendar"),
        ('workday = 1\ncalendar = "de-berlin"\n', 'workday: needs at_time = "HH:MM"'),
        ('workday = 1\nat_time = "18:00"\ncalendar = "de-berlin"\ncron = "0 9 * * *"\n', "cron: cannot be combined"),
        ('workday = 1\nat_time = "18:00"\ncalendar = "de-berlin"\nevery = "1h"\n', "every: cannot be combined"),
        ('cron = "0 9 * * *"\nat_time = "18:00"\n', "at_time: needs workday"),
        ('cron = "0 9 * * *"\non_nonworking = "next"\n', "on_nonworking: needs calendar"),
        ('cron = "0 9 * * *"\nkill_at_window_end = true\n', "kill_at_window_end: needs window"),
        ('cron = "0 9 * * *"\noutside_window = "skip"\n', "outside_window: needs window"),
        ('cron = "0 9 * * *"\ncalendar = "de-brelin"\n', "unknown calendar 'de-brelin' (did you mean 'de-berlin'?"),
        ("workday = 0\n", "workday: 0 is no working day"),
        ("workday = 24\n", "workday: must be at most 23"),
        ('cron = "0 9 * * *"\nwindow = "mon-fri 08:00"\n', "window: expected a span"),
        ('cron = "0 9 * * *"\nwindow = ["mon-fri 08:00-18:00", "fri-sux 01:00-02:00"]\n', "item 2: unknown weekday"),
        ('cron = "0 9 * * *"\non_nonworking = "later"\n', "expected one of skip, next, previous"),
    ],
)
def test_bad_job_keys_and_combinations_are_reported(tmp_path: Path, text: str, message: str) -> None:
    root = folder(tmp_path, CALENDAR, j=text)
    found = errors(root)
    assert any(message in line for line in found), found
    assert "j" not in load_folder(root).jobs


def test_vigil_plan_shows_what_the_calendar_removes_and_empty_working_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = folder(tmp_path, CALENDAR, daily='cron = "0 9 * * *"\ncalendar = "de-berlin"\ntimezone = "Europe/Berlin"\n')
    assert main(["plan", "--jobs", str(root), "--days", "14", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    statuses = {fire["status"] for fire in doc["fires"]}
    assert statuses <= {"planned", "skipped"} and len(doc["fires"]) in (14, 15)
    skipped = [fire for fire in doc["fires"] if fire["status"] == "skipped"]
    assert skipped and all(fire["reason"].startswith("non-working day: ") for fire in skipped)
    assert main(["plan", "--jobs", str(root), "--days", "7", "--job", "nothing*"]) == 0
    assert "no fires planned" in capsys.readouterr().out
    (root / "weekly.toml").write_text('command = "true"\ncron = "0 9 * * mon"\ncalendar = "de-berlin"\n')
    (root / "daily.toml").unlink()
    assert main(["plan", "--jobs", str(root), "--days", "14", "--empty", "--json"]) == 0
    empty = json.loads(capsys.readouterr().out)["empty_working_days"]
    assert empty and all(day["calendar"] == "de-berlin" for day in empty)
    assert all(date.fromisoformat(day["date"]).weekday() != 0 for day in empty)  # Mondays have the run


def test_vigil_next_says_why_a_day_is_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = folder(tmp_path, CALENDAR, daily='cron = "0 9 * * *"\ncalendar = "de-berlin"\n')
    assert main(["next", "daily", "--jobs", str(root), "-n", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ran = [line for line in lines if "skipped" not in line]
    assert len(ran) == 7
    assert any("skipped: non-working day: Saturday (calendar de-berlin)" in line for line in lines)
    assert main(["next", "daily", "--jobs", str(root), "-n", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["plan", "--jobs", str(root), "--days", "400"]) == 1
    assert capsys.readouterr().err.startswith("vigil: --days 400: expected a whole number from 1 to 366")
