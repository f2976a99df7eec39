"""Working-day calendars, `workday`, moves to the next/previous working day and admission windows:
pure tests with real holiday data (the `holidays` package) and explicit tz-aware datetimes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.model import CalendarSpec, JobSpec, NonWorking, OutsideWindow
from engine.schedule import calendar_of, fire_excluded, job_trigger, parse_window, windows_for
from engine.schedule.calendars import WorkdayTrigger, holiday_problem, parse_at_time
from engine.schedule.projection import PlanStatus, empty_working_days, project

BERLIN = ZoneInfo("Europe/Berlin")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
DE_BE = CalendarSpec(
    name="de-berlin",
    country="DE",
    subdivision="BE",
    include=frozenset({date(2026, 12, 27)}),
    exclude=frozenset({date(2026, 12, 24), date(2026, 12, 31)}),
)
DE_BB = CalendarSpec(name="de-bb", country="DE", subdivision="BB")
US = CalendarSpec(name="us", country="US")
GB = CalendarSpec(name="gb", country="GB")
AU_NSW = CalendarSpec(name="au-nsw", country="AU", subdivision="NSW")
CALENDARS = {spec.name: spec for spec in (DE_BE, DE_BB, US, GB, AU_NSW)}


def job(**fields: object) -> JobSpec:
    return JobSpec(name="j", path="/jobs/j.toml", command="true", **fields)  # type: ignore[arg-type]


def fires(trigger: object, after: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    for _ in range(count):
        after = trigger.next_fire(after)  # type: ignore[attr-defined]
        out.append(after)
    return out


# ------------------------------------------------------------------------------ working days


def test_berlin_holidays_weekends_include_and_exclude_each_say_why() -> None:
    cal = calendar_of(DE_BE)
    assert cal.why_not_working(date(2026, 12, 25)) == "non-working day: Christmas Day (DE-BE)"
    assert cal.why_not_working(date(2026, 12, 26)) == "non-working day: Second Day of Christmas (DE-BE)"
    assert cal.why_not_working(date(2026, 12, 24)) == "non-working day: 2026-12-24 is excluded in calendar de-berlin"
    assert cal.why_not_working(date(2026, 12, 20)) == "non-working day: Sunday (calendar de-berlin)"
    assert cal.is_working(date(2026, 12, 27))  # a Sunday, included
    assert cal.is_working(date(2026, 12, 23))


def test_a_subdivision_holiday_is_its_own() -> None:
    # International Women's Day is a public holiday in Berlin only: Monday 8 March 2027.
    assert calendar_of(DE_BE).why_not_working(date(2027, 3, 8)) == "non-working day: Women's Day (DE-BE)"
    assert calendar_of(DE_BB).is_working(date(2027, 3, 8))


def test_us_and_gb_holidays_including_observed_days() -> None:
    us, gb = calendar_of(US), calendar_of(GB)
    assert us.why_not_working(date(2026, 11, 26)) == "non-working day: Thanksgiving Day (US)"
    assert us.why_not_working(date(2026, 7, 3)) == "non-working day: Independence Day (observed) (US)"
    assert gb.why_not_working(date(2026, 12, 28)) == "non-working day: Boxing Day (observed) (GB)"
    assert gb.is_working(date(2026, 12, 29))
    assert us.is_working(date(2026, 12, 28))


def test_unknown_country_and_subdivision_name_the_choices() -> None:
    assert holiday_problem("DE", "BE") is None
    problem = holiday_problem("DE", "XX")
    assert problem is not None and problem.startswith("unknown subdivision 'XX' of DE (valid: BB, BE, BW, BY")
    problem = holiday_problem("ZZ", None)
    assert problem is not None and "unknown country 'ZZ'" in problem and "ZA" in problem


def test_next_and_previous_working_day_across_month_and_year_ends() -> None:
    cal = calendar_of(DE_BE)
    # 31 Dec excluded, 1 Jan a holiday, then a weekend
    assert cal.next_working(date(2026, 12, 30)) == date(2027, 1, 4)
    assert cal.previous_working(date(2027, 1, 4)) == date(2026, 12, 30)
    # a month end: Sunday 1 November 2026 back to Friday 30 October
    assert cal.previous_working(date(2026, 11, 1)) == date(2026, 10, 30)
    assert cal.next_working(date(2026, 10, 30)) == date(2026, 11, 2)


def test_a_calendar_with_no_working_day_moves_nowhere() -> None:
    never = calendar_of(CalendarSpec(name="never", weekdays=frozenset()))
    assert never.next_working(date(2026, 1, 1)) is None
    trigger = job_trigger(job(cron="0 9 * * *", calendar="never", on_nonworking=NonWorking.NEXT), {"never": never.spec})
    assert trigger is not None and trigger.next_fire(datetime(2026, 1, 1, tzinfo=UTC)) is None


# ------------------------------------------------------------------------------ workday


def test_last_working_day_of_every_month_of_a_year() -> None:
    spec = job(workday=-1, at_time="18:00", calendar="de-berlin", timezone="Europe/Berlin")
    trigger = job_trigger(spec, CALENDARS)
    got = fires(trigger, datetime(2025, 12, 31, 23, tzinfo=UTC), 12)
    assert [f.astimezone(BERLIN).date() for f in got] == [
        date(2026, 1, 30),
        date(2026, 2, 27),
        date(2026, 3, 31),
        date(2026, 4, 30),
        date(2026, 5, 29),
        date(2026, 6, 30),
        date(2026, 7, 31),
        date(2026, 8, 31),
        date(2026, 9, 30),
        date(2026, 10, 30),
        date(2026, 11, 30),
        date(2026, 12, 30),  # 31st excluded
    ]
    cal = calendar_of(DE_BE)
    for fire in got:
        local = fire.astimezone(BERLIN)
        assert (local.hour, local.minute) == (18, 0)
        assert fire_excluded(spec, CALENDARS, fire) is None
        later = [local.date() + timedelta(days=k) for k in range(1, 5)]
        assert all(not cal.is_working(d) for d in later if d.month == local.month)


def test_first_and_nth_working_day_skip_holidays() -> None:
    trigger = job_trigger(job(workday=1, at_time="06:30", calendar="de-berlin", timezone="Europe/Berlin"), CALENDARS)
    first = fires(trigger, datetime(2026, 12, 15, tzinfo=UTC), 2)
    assert [f.astimezone(BERLIN).isoformat() for f in first] == [
        "2027-01-04T06:30:00+01:00",  # 1 Jan holiday, 2-3 weekend
        "2027-02-01T06:30:00+01:00",
    ]
    third = job_trigger(job(workday=3, at_time="09:00", calendar="us", timezone="America/New_York"), CALENDARS)
    # July 2026: Fri 3rd is Independence Day (observed): 1, 2, 6
    assert third.next_fire(datetime(2026, 6, 30, tzinfo=UTC)).date() == date(2026, 7, 6)  # type: ignore[union-attr]


def test_a_month_with_fewer_working_days_fires_on_its_last_day_and_is_skipped_saying_why() -> None:
    spec = job(workday=22, at_time="12:00", calendar="de-berlin", timezone="Europe/Berlin")
    trigger = job_trigger(spec, CALENDARS)
    assert isinstance(trigger, WorkdayTrigger)
    fire = trigger.next_fire(datetime(2026, 12, 1, tzinfo=UTC))
    assert fire is not None and fire.astimezone(BERLIN).isoformat() == "2026-12-31T12:00:00+01:00"
    assert fire_excluded(spec, CALENDARS, fire) == (
        "workday = 22: 2026-12 has only 21 working days in calendar de-berlin, no working day 22"
    )
    # A month that has it fires on the day itself (July 2026: 23 weekdays, no Berlin holiday).
    july = trigger.next_fire(datetime(2026, 7, 1, tzinfo=UTC))
    assert july is not None and july.astimezone(BERLIN).date() == date(2026, 7, 30)
    assert fire_excluded(spec, CALENDARS, july) is None


def test_at_time_parses_and_refuses() -> None:
    assert parse_at_time("18:00").isoformat() == "18:00:00"
    with pytest.raises(ValueError, match="HH:MM"):
        parse_at_time("25:00")


# ------------------------------------------------------------------------------ moved fires


def test_next_moves_a_holiday_fire_to_the_next_working_day_same_wall_time() -> None:
    spec = job(cron="30 9 * * 5", timezone="Europe/Berlin", calendar="de-berlin", on_nonworking=NonWorking.NEXT)
    trigger = job_trigger(spec, CALENDARS)
    # Fridays 2026-12-25 (Christmas) → Sunday 27th (included); 2027-01-01 (New Year) → Monday 4th
    got = [f.astimezone(BERLIN).isoformat() for f in fires(trigger, datetime(2026, 12, 19, tzinfo=UTC), 3)]
    assert got == ["2026-12-27T09:30:00+01:00", "2027-01-04T09:30:00+01:00", "2027-01-08T09:30:00+01:00"]
    # once `after` is past the holiday itself, the moved fire is still ahead
    assert trigger.next_fire(datetime(2026, 12, 25, 12, tzinfo=UTC)).astimezone(BERLIN).day == 27  # type: ignore[union-attr]


def test_previous_moves_back_and_fires_landing_together_are_one() -> None:
    spec = job(cron="0 9 * * *", timezone="Europe/Berlin", calendar="de-berlin", on_nonworking=NonWorking.PREVIOUS)
    trigger = job_trigger(spec, CALENDARS)
    got = [f.astimezone(BERLIN).date() for f in fires(trigger, datetime(2026, 12, 22, 9, tzinfo=UTC), 4)]
    # 24, 25, 26 land on the 23rd's own fire; the 27th is included; 31st → 30th
    assert got == [date(2026, 12, 23), date(2026, 12, 27), date(2026, 12, 28), date(2026, 12, 29)]
    plan = project(spec, CALENDARS, datetime(2026, 12, 22, 12, tzinfo=UTC), datetime(2026, 12, 27, 12, tzinfo=UTC))
    assert [(p.at.date(), p.status) for p in plan] == [
        (date(2026, 12, 23), PlanStatus.PLANNED),
        (date(2026, 12, 24), PlanStatus.MERGED),
        (date(2026, 12, 25), PlanStatus.MERGED),
        (date(2026, 12, 26), PlanStatus.MERGED),
        (date(2026, 12, 27), PlanStatus.PLANNED),
    ]
    assert plan[2].reason is not None and plan[2].reason.startswith("non-working day: Christmas Day (DE-BE)")


def test_skip_leaves_the_fire_and_says_why_it_is_skipped() -> None:
    spec = job(cron="0 9 * * *", timezone="Europe/Berlin", calendar="de-berlin")
    trigger = job_trigger(spec, CALENDARS)
    christmas = trigger.next_fire(datetime(2026, 12, 24, 12, tzinfo=UTC))  # type: ignore[union-attr]
    assert christmas == datetime(2026, 12, 25, 8, tzinfo=UTC)
    assert fire_excluded(spec, CALENDARS, christmas) == "non-working day: Christmas Day (DE-BE)"


def test_lord_howe_half_hour_dst_and_a_state_holiday() -> None:
    # Lord Howe Island (NSW): clocks go 02:00 → 02:30 on Sunday 4 October 2026; Monday 5th is Labour Day.
    spec = job(cron="15 2 * * *", timezone="Australia/Lord_Howe", calendar="au-nsw", on_nonworking=NonWorking.NEXT)
    trigger = job_trigger(spec, CALENDARS)
    assert calendar_of(AU_NSW).why_not_working(date(2026, 10, 5)) == "non-working day: Labor Day (AU-NSW)"
    fire = trigger.next_fire(datetime(2026, 10, 1, 15, tzinfo=UTC))  # type: ignore[union-attr]
    assert fire is not None and fire.astimezone(LORD_HOWE).isoformat() == "2026-10-02T02:15:00+10:30"
    fire = trigger.next_fire(fire)  # type: ignore[union-attr]
    assert fire is not None and fire.astimezone(LORD_HOWE).isoformat() == "2026-10-06T02:15:00+11:00"
    # A workday fire whose wall time is in the half-hour gap fires when the gap ends.
    gap_day = CalendarSpec(name="sundays", weekdays=frozenset({6}))
    wd = job_trigger(
        job(workday=1, at_time="02:10", calendar="sundays", timezone="Australia/Lord_Howe"), {"sundays": gap_day}
    )
    fire = wd.next_fire(datetime(2026, 9, 30, tzinfo=UTC))  # type: ignore[union-attr]
    assert fire is not None and fire.astimezone(LORD_HOWE).isoformat() == "2026-10-04T02:30:00+11:00"


# ------------------------------------------------------------------------------ windows


def berlin(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN)


def test_window_membership_next_opening_and_reason() -> None:
    w = windows_for(("mon-fri 08:00-18:00",), "Europe/Berlin")
    assert w.containing(berlin("2026-12-04T17:59")) is not None  # Friday
    assert w.containing(berlin("2026-12-04T18:00")) is None
    assert w.next_opening(berlin("2026-12-04T18:00")) == berlin("2026-12-07T08:00")
    assert w.why_outside(berlin("2026-12-05T12:00")) == (
        "outside window mon-fri 08:00-18:00 (opens 2026-12-07T08:00:00+01:00)"
    )
    assert w.closing(berlin("2026-12-04T09:00")) == berlin("2026-12-04T18:00")


def test_overnight_windows_belong_to_the_day_they_open() -> None:
    w = windows_for(("fri 22:00-06:00",), "Europe/Berlin")
    assert w.containing(berlin("2026-12-04T23:00")) is not None  # Friday night
    assert w.containing(berlin("2026-12-05T05:59")) is not None  # Saturday morning, same window
    assert w.containing(berlin("2026-12-05T06:00")) is None
    assert w.containing(berlin("2026-12-04T05:00")) is None  # Friday morning: Thursday's would be
    assert w.closing(berlin("2026-12-04T23:00")) == berlin("2026-12-05T06:00")
    assert w.next_opening(berlin("2026-12-05T06:00")) == berlin("2026-12-11T22:00")


def test_abutting_windows_close_at_the_end_of_the_last() -> None:
    w = windows_for(("mon-fri 08:00-18:00", "mon-fri 18:00-20:00"), "Europe/Berlin")
    assert w.closing(berlin("2026-12-04T10:00")) == berlin("2026-12-04T20:00")


def test_windows_on_dst_days_are_wall_clock_spans() -> None:
    w = windows_for(("01:00-04:00",), "Europe/Berlin")
    spring = w.closing(berlin("2026-03-29T01:30"))
    assert spring is not None and spring - berlin("2026-03-29T01:30").astimezone(UTC) == timedelta(hours=1, minutes=30)
    autumn_open = datetime(2026, 10, 25, 1, 0, tzinfo=BERLIN)
    autumn = w.closing(autumn_open)
    assert autumn is not None and autumn - autumn_open.astimezone(UTC) == timedelta(hours=4)
    # a window opening inside the spring gap opens when the gap ends
    gap = windows_for(("02:30-05:00",), "Europe/Berlin")
    assert gap.next_opening(berlin("2026-03-29T00:00")) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    lh = windows_for(("02:00-03:00",), "Australia/Lord_Howe")
    opened = lh.next_opening(datetime(2026, 10, 3, 12, tzinfo=UTC))
    assert opened is not None and opened.astimezone(LORD_HOWE).isoformat() == "2026-10-04T02:30:00+11:00"
    assert lh.closing(opened) - opened == timedelta(minutes=30)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mon-fry 08:00-18:00", "unknown weekday 'mon-fry'"),
        ("08:00-18:61", "minutes and seconds 00…59"),
        ("08:00", 'expected a span "HH:MM-HH:MM"'),
        ("mon-fri 08:00-08:00", "opens and closes at the same time"),
        ("a b c", "expected"),
    ],
)
def test_bad_windows_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(text)


def test_projection_marks_window_waits_and_skips_and_finds_empty_working_days() -> None:
    spec = job(cron="0 7 * * *", timezone="Europe/Berlin", window=("mon-fri 08:00-18:00",))
    start, end = berlin("2026-12-04T00:00"), berlin("2026-12-06T00:00")
    plan = project(spec, {}, start, end)
    assert [(p.status, p.starts_at) for p in plan] == [
        (PlanStatus.WAITS, berlin("2026-12-04T08:00")),
        (PlanStatus.WAITS, berlin("2026-12-07T08:00")),
    ]
    skipping = project(
        job(
            cron="0 7 * * *",
            timezone="Europe/Berlin",
            window=("mon-fri 08:00-18:00",),
            outside_window=OutsideWindow.SKIP,
        ),
        {},
        start,
        end,
    )
    assert {p.status for p in skipping} == {PlanStatus.SKIPPED}
    on_cal = job(cron="0 9 * * mon", timezone="Europe/Berlin", calendar="de-berlin")
    week = project(on_cal, CALENDARS, berlin("2026-12-21T00:00"), berlin("2026-12-28T00:00"))
    empty = empty_working_days(DE_BE, week, {"j": "Europe/Berlin"}, date(2026, 12, 21), date(2026, 12, 27))
    assert empty == [date(2026, 12, 22), date(2026, 12, 23), date(2026, 12, 27)]
