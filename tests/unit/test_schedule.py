"""Unit tests for engine.schedule: pure maths at fixed instants, no sleeping."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from engine.clock import FakeClock
from engine.errors import ScheduleError
from engine.model import Catchup, JobSpec, Overlap, RunState
from engine.schedule import (
    AtTrigger,
    CombinedTrigger,
    CronTrigger,
    EveryTrigger,
    FirePlan,
    Trigger,
    fires_between,
    overlap_decision,
    plan_missed_fires,
    preview,
    retry_delay,
    should_retry,
    trigger_for,
    upstream_satisfied,
    validate_cron,
    validate_timezone,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(trigger: Trigger, after: datetime, n: int) -> list[datetime]:
    """The next `n` fires by repeated next_fire, as the scheduler walks them."""
    out: list[datetime] = []
    current: datetime | None = after
    for _ in range(n):
        assert current is not None
        current = trigger.next_fire(current)
        if current is None:
            break
        out.append(current)
    return out


def job(**kwargs: object) -> JobSpec:
    kwargs.setdefault("name", "demo")
    kwargs.setdefault("path", "jobs/demo.toml")
    kwargs.setdefault("command", "true")
    return JobSpec(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ cron basics


def test_cron_five_fields_fires_on_the_minute_strictly_after() -> None:
    trigger = CronTrigger("*/15 * * * *")
    assert fires(trigger, utc(2026, 1, 5, 10, 7, 30), 3) == [
        utc(2026, 1, 5, 10, 15),
        utc(2026, 1, 5, 10, 30),
        utc(2026, 1, 5, 10, 45),
    ]
    # Exactly on a fire: the next one, never the same instant again.
    assert trigger.next_fire(utc(2026, 1, 5, 10, 15)) == utc(2026, 1, 5, 10, 30)
    # A microsecond before a fire still gets that fire.
    assert trigger.next_fire(utc(2026, 1, 5, 10, 14, 59) + timedelta(microseconds=999_999)) == utc(2026, 1, 5, 10, 15)


def test_cron_returns_utc_for_non_utc_input() -> None:
    after = datetime(2026, 1, 5, 11, 7, tzinfo=timezone(timedelta(hours=1)))  # 10:07 UTC
    fire = CronTrigger("0 * * * *").next_fire(after)
    assert fire == utc(2026, 1, 5, 11)
    assert fire is not None and fire.utcoffset() == timedelta(0)


def test_cron_six_fields_seconds_first() -> None:
    assert fires(CronTrigger("*/10 * * * * *"), utc(2026, 1, 1, 0, 0, 5), 3) == [
        utc(2026, 1, 1, 0, 0, 10),
        utc(2026, 1, 1, 0, 0, 20),
        utc(2026, 1, 1, 0, 0, 30),
    ]
    # Seconds field first: "30 0 12 * * *" is 12:00:30 every day, not minute 30.
    assert fires(CronTrigger("30 0 12 * * *"), utc(2026, 1, 1), 2) == [
        utc(2026, 1, 1, 12, 0, 30),
        utc(2026, 1, 2, 12, 0, 30),
    ]
    assert CronTrigger("0 */5 * * * *").next_fire(utc(2026, 1, 1, 0, 4, 59)) == utc(2026, 1, 1, 0, 5)


def test_cron_weekday_names_and_ranges() -> None:
    # 2026-01-03 is a Saturday.
    assert fires(CronTrigger("0 9 * * mon-fri"), utc(2026, 1, 3, 12), 2) == [
        utc(2026, 1, 5, 9),
        utc(2026, 1, 6, 9),
    ]
    assert fires(CronTrigger("0 0 1 jan,jul *"), utc(2026, 1, 2), 2) == [utc(2026, 7, 1), utc(2027, 1, 1)]


def test_cron_seven_means_sunday() -> None:
    assert CronTrigger("0 0 * * 7").next_fire(utc(2026, 1, 5)) == utc(2026, 1, 11)
    assert CronTrigger("0 0 * * 5-7").next_fire(utc(2026, 1, 5)) == utc(2026, 1, 9)


def test_cron_day_of_month_or_day_of_week_like_vixie() -> None:
    # Both restricted: the 13th OR any Friday. 2026-01-02 and 01-09 are Fridays, 01-13 a Tuesday.
    assert fires(CronTrigger("0 0 13 * 5"), utc(2026, 1, 1), 4) == [
        utc(2026, 1, 2),
        utc(2026, 1, 9),
        utc(2026, 1, 13),
        utc(2026, 1, 16),
    ]
    # Only one restricted: that one alone decides.
    assert fires(CronTrigger("0 0 13 * *"), utc(2026, 1, 1), 1) == [utc(2026, 1, 13)]


def test_cron_last_day_of_month_and_leap_day() -> None:
    assert fires(CronTrigger("0 0 L * *"), utc(2028, 1, 15), 3) == [
        utc(2028, 1, 31),
        utc(2028, 2, 29),
        utc(2028, 3, 31),
    ]
    assert CronTrigger("0 0 29 2 *").next_fire(utc(2026, 1, 1)) == utc(2028, 2, 29)


def test_cron_nth_and_last_weekday() -> None:
    # Second Monday: 2026-01-12, 2026-02-09. Last Friday: 2026-01-30, 2026-02-27.
    assert fires(CronTrigger("0 9 * * 1#2"), utc(2026, 1, 1), 2) == [utc(2026, 1, 12, 9), utc(2026, 2, 9, 9)]
    assert fires(CronTrigger("0 9 * * L5"), utc(2026, 1, 1), 2) == [utc(2026, 1, 30, 9), utc(2026, 2, 27, 9)]


@pytest.mark.parametrize("macro", ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"])
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/New_York"])
def test_cron_macros_fire_when_croniter_says(macro: str, tz: str) -> None:
    """Vixie cron's macros: the next 20 fires equal croniter's, from starts away from DST changes."""
    zone = ZoneInfo(tz)
    for start in (datetime(2026, 1, 5, 13, 7, tzinfo=zone), datetime(2027, 6, 30, 23, 59, 59, tzinfo=zone)):
        reference = croniter(macro, start)
        count = 20 if macro != "@hourly" else 10  # ten hours stay clear of every DST change
        expected = [reference.get_next(datetime).astimezone(UTC) for _ in range(count)]
        assert fires(CronTrigger(macro, tz), start, count) == expected, (macro, start)


def test_cron_macros_are_case_insensitive_and_hourly_follows_real_time() -> None:
    assert CronTrigger("@DAILY").next_fire(utc(2026, 1, 1, 12)) == utc(2026, 1, 2)
    # @hourly is `0 * * * *` (Vixie sets its hour field to `*`): twice in Berlin's repeated hour.
    assert CronTrigger("@hourly", "Europe/Berlin").wildcard_hour
    assert fires(CronTrigger("@hourly", "Europe/Berlin"), utc(2026, 10, 24, 23, 30), 3) == [
        utc(2026, 10, 25, 0),
        utc(2026, 10, 25, 1),
        utc(2026, 10, 25, 2),
    ]
    # @daily is a fixed time: the skipped or repeated hour does not double it.
    assert not CronTrigger("@daily", "Europe/Berlin").wildcard_hour


def test_reboot_and_unknown_macros_are_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"@reboot is not supported: .*systemd unit"):
        validate_cron("@reboot")
    with pytest.raises(ValueError, match=r"unknown macro '@fortnightly' \(known: @yearly, .*@hourly\)"):
        validate_cron("@fortnightly")
    with pytest.raises(ValueError, match="unknown macro '@daily 5'"):
        CronTrigger("@daily 5")


def test_cron_in_zone_without_dst() -> None:
    assert CronTrigger("0 9 * * *", "Asia/Tokyo").next_fire(utc(2026, 6, 1, 1)) == utc(2026, 6, 2, 0)


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata"])
def test_cron_agrees_with_croniter_away_from_dst(tz: str) -> None:
    """croniter is the reference for plain cron maths; zones without DST make the comparison exact."""
    rng = random.Random(4)
    zone = ZoneInfo(tz)
    fields = [
        ["*", "*/7", "0", "5,35", "10-20/3", "59"],
        ["*", "*/5", "0", "3-9", "1,30,45"],
        ["*", "0", "*/6", "9-17", "23"],
        ["*", "1", "15", "L", "1-7", "*/10", "31"],
        ["*", "2", "jan-mar", "*/4", "6,12"],
        ["*", "0", "1-5", "sat,sun", "3"],
    ]
    for _ in range(150):
        parts = [rng.choice(options) for options in fields]
        expr = " ".join(parts[1:]) if rng.random() < 0.5 else " ".join(parts)
        start = datetime(2026, 1, 1, tzinfo=zone) + timedelta(seconds=rng.randrange(400 * 86400))
        reference = croniter(expr, start, second_at_beginning=True)
        expected = [reference.get_next(datetime).astimezone(UTC) for _ in range(5)]
        assert fires(CronTrigger(expr, tz), start, 5) == expected, expr


# ---------------------------------------------------------------------------------------------- DST
# Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST at 01:00 UTC;
#                2026-10-25 03:00 CEST -> 02:00 CET at 01:00 UTC.
# America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT at 07:00 UTC;
#                   2026-11-01 02:00 EDT -> 01:00 EST at 06:00 UTC.


def test_berlin_spring_forward_fixed_time_fires_once_after_gap() -> None:
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin")
    assert fires(trigger, utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 02:30 does not exist: 03:00 CEST, right after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    # Starting exactly at the gap's end: that fire is behind us, the next is the following day.
    assert trigger.next_fire(utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 30, 0, 30)


def test_berlin_spring_forward_six_field_expression() -> None:
    assert fires(CronTrigger("0 30 2 * * *", "Europe/Berlin"), utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 30),
    ]


def test_berlin_spring_forward_several_gap_times_coalesce_into_one_fire() -> None:
    # 02:00 and 02:30 do not exist and 03:00 is the gap's end: all three are one fire at 01:00 UTC.
    assert fires(CronTrigger("0,30 2,3 * * *", "Europe/Berlin"), utc(2026, 3, 28, 23), 3) == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 30),  # 03:30 CEST
        utc(2026, 3, 30, 0, 0),  # 02:00 CEST next day
    ]


def test_berlin_spring_forward_wildcard_hour_follows_real_time() -> None:
    assert fires(CronTrigger("0 * * * *", "Europe/Berlin"), utc(2026, 3, 28, 23, 30), 3) == [
        utc(2026, 3, 29, 0, 0),  # 01:00 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST: one hour later in real time
        utc(2026, 3, 29, 2, 0),
    ]
    # 02:30 does not exist; a wildcard-hour job is not run for it: still hourly in real time.
    assert fires(CronTrigger("30 * * * *", "Europe/Berlin"), utc(2026, 3, 29, 0, 0), 2) == [
        utc(2026, 3, 29, 0, 30),
        utc(2026, 3, 29, 1, 30),
    ]


def test_berlin_fall_back_fixed_time_fires_once_at_first_occurrence() -> None:
    trigger = CronTrigger("30 2 * * *", "Europe/Berlin")
    assert fires(trigger, utc(2026, 10, 24, 12), 2) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, first occurrence
        utc(2026, 10, 26, 1, 30),  # not 2026-10-25 01:30 UTC (02:30 CET, the repeat)
    ]
    # From inside the repeated hour, first pass and second pass, the repeat is still not fired.
    assert trigger.next_fire(utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 26, 1, 30)
    assert trigger.next_fire(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)


def test_croniter_alone_fires_twice_at_fall_back() -> None:
    """Documents why CronTrigger does its own DST handling: croniter repeats the fixed time."""
    reference = croniter("30 2 * * *", datetime(2026, 10, 24, 12, tzinfo=BERLIN))
    raw = [reference.get_next(datetime).astimezone(UTC) for _ in range(2)]
    assert raw == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)]
    assert fires(CronTrigger("30 2 * * *", "Europe/Berlin"), utc(2026, 10, 24, 12), 2)[1] != raw[1]


def test_berlin_fall_back_fixed_hour_with_minute_steps_runs_only_the_first_pass() -> None:
    assert fires(CronTrigger("*/20 2 * * *", "Europe/Berlin"), utc(2026, 10, 24, 22), 4) == [
        utc(2026, 10, 25, 0, 0),
        utc(2026, 10, 25, 0, 20),
        utc(2026, 10, 25, 0, 40),
        utc(2026, 10, 26, 1, 0),
    ]


def test_berlin_fall_back_wildcard_hour_runs_hourly_in_real_time() -> None:
    assert fires(CronTrigger("0 * * * *", "Europe/Berlin"), utc(2026, 10, 24, 22, 30), 4) == [
        utc(2026, 10, 24, 23, 0),  # 01:00 CEST
        utc(2026, 10, 25, 0, 0),  # 02:00 CEST
        utc(2026, 10, 25, 1, 0),  # 02:00 CET, the repeated hour
        utc(2026, 10, 25, 2, 0),  # 03:00 CET
    ]
    # Starting inside the first pass still finds the repeat.
    assert CronTrigger("30 * * * *", "Europe/Berlin").next_fire(utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 25, 1, 30)


def test_new_york_spring_forward() -> None:
    assert fires(CronTrigger("30 2 * * *", "America/New_York"), utc(2026, 3, 7, 12), 2) == [
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT, right after the gap
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]
    assert fires(CronTrigger("0 * * * *", "America/New_York"), utc(2026, 3, 8, 5, 30), 3) == [
        utc(2026, 3, 8, 6, 0),  # 01:00 EST
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT
        utc(2026, 3, 8, 8, 0),
    ]


def test_new_york_fall_back() -> None:
    assert fires(CronTrigger("30 1 * * *", "America/New_York"), utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, first occurrence only
        utc(2026, 11, 2, 6, 30),  # 01:30 EST next day
    ]
    assert fires(CronTrigger("0 * * * *", "America/New_York"), utc(2026, 11, 1, 4, 30), 3) == [
        utc(2026, 11, 1, 5, 0),  # 01:00 EDT
        utc(2026, 11, 1, 6, 0),  # 01:00 EST
        utc(2026, 11, 1, 7, 0),  # 02:00 EST
    ]


def test_half_hour_dst_shift_lord_howe() -> None:
    # Australia/Lord_Howe 2026-04-05: 02:00 +11:00 -> 01:30 +10:30 at 15:00 UTC on 04-04.
    assert fires(CronTrigger("45 1 * * *", "Australia/Lord_Howe"), utc(2026, 4, 4, 0), 2) == [
        utc(2026, 4, 4, 14, 45),
        utc(2026, 4, 5, 15, 15),
    ]
    assert fires(CronTrigger("15,45 * * * *", "Australia/Lord_Howe"), utc(2026, 4, 4, 14, 30), 3) == [
        utc(2026, 4, 4, 14, 45),
        utc(2026, 4, 4, 15, 15),  # 01:45 again, +10:30
        utc(2026, 4, 4, 15, 45),
    ]


@pytest.mark.parametrize(
    ("expr", "tz", "start"),
    [
        ("*/7 * * * *", "Europe/Berlin", utc(2026, 3, 28, 20)),
        ("*/7 * * * *", "Europe/Berlin", utc(2026, 10, 24, 20)),
        ("*/10 1-3 * * *", "America/New_York", utc(2026, 3, 8, 0)),
        ("*/10 1-3 * * *", "America/New_York", utc(2026, 10, 31, 20)),
        ("*/30 */2 * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 0)),
        ("0 */15 * * * *", "Europe/Berlin", utc(2026, 10, 24, 22)),
    ],
)
def test_fires_between_matches_repeated_next_fire_across_dst(expr: str, tz: str, start: datetime) -> None:
    trigger = CronTrigger(expr, tz)
    walked = fires(trigger, start, 500)
    end = walked[-1]
    listed, dropped = fires_between(trigger, start, end, 1000)
    assert dropped == 0
    assert listed == walked
    assert listed == sorted(set(listed))


# -------------------------------------------------------------------------------------- every, at, combo


def test_every_fires_on_epoch_multiples_regardless_of_start() -> None:
    trigger = EveryTrigger(300)
    assert fires(trigger, utc(2026, 1, 5, 10, 7, 30), 2) == [utc(2026, 1, 5, 10, 10), utc(2026, 1, 5, 10, 15)]
    # The phase is the epoch's, not the first call's: a restart at another time keeps the same grid.
    assert trigger.next_fire(utc(2026, 1, 5, 10, 9, 59)) == utc(2026, 1, 5, 10, 10)
    assert trigger.next_fire(utc(2026, 1, 5, 10, 10)) == utc(2026, 1, 5, 10, 15)


def test_every_odd_and_fractional_periods() -> None:
    assert EveryTrigger(7).next_fire(utc(1970, 1, 1, 0, 1, 40)) == utc(1970, 1, 1, 0, 1, 45)
    assert EveryTrigger(5400).next_fire(utc(2026, 1, 1)) == utc(2026, 1, 1, 1, 30)
    quarter = EveryTrigger(0.25)
    assert fires(quarter, utc(2026, 1, 1) + timedelta(milliseconds=100), 2) == [
        utc(2026, 1, 1) + timedelta(milliseconds=250),
        utc(2026, 1, 1) + timedelta(milliseconds=500),
    ]


@pytest.mark.parametrize("bad", [0, -5, 1e-9])
def test_every_rejects_non_positive_period(bad: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        EveryTrigger(bad)


def test_every_driven_by_fake_clock() -> None:
    clock = FakeClock(utc(2026, 1, 1, 0, 0, 3))
    trigger = EveryTrigger(10)
    seen = []
    for _ in range(3):
        due = trigger.next_fire(clock.now())
        assert due is not None
        clock.set(due)
        seen.append(clock.now())
    assert seen == [utc(2026, 1, 1, 0, 0, 10), utc(2026, 1, 1, 0, 0, 20), utc(2026, 1, 1, 0, 0, 30)]


def test_at_fires_once() -> None:
    when = datetime(2026, 5, 1, 14, 0, tzinfo=BERLIN)
    trigger = AtTrigger(when)
    fire = trigger.next_fire(utc(2026, 1, 1))
    assert fire == utc(2026, 5, 1, 12, 0)
    assert fire is not None and fire.tzinfo is UTC
    assert trigger.next_fire(utc(2026, 5, 1, 12, 0)) is None
    assert trigger.next_fire(utc(2027, 1, 1)) is None


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        AtTrigger(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        CronTrigger("* * * * *").next_fire(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        EveryTrigger(5).next_fire(datetime(2026, 1, 1))


def test_combined_takes_the_earliest_and_outlives_a_spent_at() -> None:
    trigger = CombinedTrigger([CronTrigger("0 * * * *"), EveryTrigger(40 * 60), AtTrigger(utc(2026, 1, 1, 0, 50))])
    assert fires(trigger, utc(2026, 1, 1), 5) == [
        utc(2026, 1, 1, 0, 40),  # every 40m
        utc(2026, 1, 1, 0, 50),  # at
        utc(2026, 1, 1, 1, 0),  # cron
        utc(2026, 1, 1, 1, 20),  # every
        utc(2026, 1, 1, 2, 0),  # cron and every coincide: one fire
    ]
    assert CombinedTrigger([]).next_fire(utc(2026, 1, 1)) is None
    assert CombinedTrigger([AtTrigger(utc(2025, 1, 1))]).next_fire(utc(2026, 1, 1)) is None


def test_trigger_for() -> None:
    assert trigger_for(job()) is None
    assert trigger_for(job(after=("upstream",))) is None
    cron = trigger_for(job(cron="0 3 * * *", timezone="Europe/Berlin"))
    assert isinstance(cron, CronTrigger)
    assert cron.next_fire(utc(2026, 1, 1)) == utc(2026, 1, 1, 2)
    assert isinstance(trigger_for(job(every=30.0)), EveryTrigger)
    assert isinstance(trigger_for(job(at=utc(2026, 1, 1))), AtTrigger)
    combined = trigger_for(job(cron="0 0 * * *", every=7200.0, at=utc(2026, 1, 1, 0, 30)))
    assert isinstance(combined, CombinedTrigger)
    assert fires(combined, utc(2025, 12, 31, 23), 3) == [
        utc(2026, 1, 1),
        utc(2026, 1, 1, 0, 30),
        utc(2026, 1, 1, 2),
    ]


def test_trigger_for_bad_spec_raises_schedule_error_naming_the_job() -> None:
    with pytest.raises(ScheduleError, match=r"job 'demo': cron '61 \* \* \* \*'"):
        trigger_for(job(cron="61 * * * *"))
    with pytest.raises(ScheduleError, match="unknown time zone 'Mars/Olympus'"):
        trigger_for(job(cron="* * * * *", timezone="Mars/Olympus"))


# ------------------------------------------------------------------------------------------ fires_between


def test_fires_between_keeps_newest_and_counts_dropped() -> None:
    listed, dropped = fires_between(CronTrigger("0 * * * *"), utc(2026, 1, 1, 0), utc(2026, 1, 1, 10), 3)
    assert listed == [utc(2026, 1, 1, 8), utc(2026, 1, 1, 9), utc(2026, 1, 1, 10)]
    assert dropped == 7  # 01:00..07:00


def test_fires_between_start_exclusive_end_inclusive() -> None:
    listed, dropped = fires_between(CronTrigger("0 * * * *"), utc(2026, 1, 1, 1), utc(2026, 1, 1, 3), 10)
    assert (listed, dropped) == ([utc(2026, 1, 1, 2), utc(2026, 1, 1, 3)], 0)
    assert fires_between(CronTrigger("0 * * * *"), utc(2026, 1, 1, 3), utc(2026, 1, 1, 3), 10) == ([], 0)
    assert fires_between(CronTrigger("0 * * * *"), utc(2026, 1, 1, 3), utc(2026, 1, 1, 1), 10) == ([], 0)


def test_fires_between_limit_zero_only_counts() -> None:
    assert fires_between(CronTrigger("*/10 * * * *"), utc(2026, 1, 1), utc(2026, 1, 1, 1), 0) == ([], 6)
    with pytest.raises(ValueError, match="negative"):
        fires_between(CronTrigger("* * * * *"), utc(2026, 1, 1), utc(2026, 1, 1, 1), -1)


def test_fires_between_every_fast_path_agrees_with_generic_walk() -> None:
    every = EveryTrigger(90)
    start, end = utc(2026, 1, 1, 0, 0, 45), utc(2026, 1, 1, 1)
    fast = fires_between(every, start, end, 5)
    slow = fires_between(CombinedTrigger([every]), start, end, 5)  # forces the generic loop
    assert fast == slow
    # 40 fires (00:01:30 .. 01:00:00); the newest 5 are kept.
    newest = [utc(2026, 1, 1, 0, 54), utc(2026, 1, 1, 0, 55, 30), utc(2026, 1, 1, 0, 57)]
    newest += [utc(2026, 1, 1, 0, 58, 30), utc(2026, 1, 1, 1, 0)]
    assert fast == (newest, 35)


def test_fires_between_at_and_combined_deduplicate() -> None:
    assert fires_between(AtTrigger(utc(2026, 1, 1, 5)), utc(2026, 1, 1), utc(2026, 1, 2), 10) == (
        [utc(2026, 1, 1, 5)],
        0,
    )
    both = CombinedTrigger([CronTrigger("0 * * * *"), EveryTrigger(1800)])
    assert fires_between(both, utc(2026, 1, 1), utc(2026, 1, 1, 2), 3) == (
        [utc(2026, 1, 1, 1, 0), utc(2026, 1, 1, 1, 30), utc(2026, 1, 1, 2, 0)],
        1,
    )


def test_fires_between_long_outage_of_a_frequent_job_is_fast() -> None:
    began = time.perf_counter()
    listed, dropped = fires_between(CronTrigger("*/10 * * * * *"), utc(2026, 1, 1), utc(2026, 1, 2), 1000)
    assert time.perf_counter() - began < 2.0
    assert (len(listed), dropped) == (1000, 8640 - 1000)
    assert listed[-1] == utc(2026, 1, 2)


# ----------------------------------------------------------------------------------------------- preview


def test_preview_shows_offsets_across_the_berlin_transition() -> None:
    spec = job(cron="30 2 * * *", timezone="Europe/Berlin")
    shown = [d.isoformat() for d in preview(spec, utc(2026, 3, 27, 12), 3)]
    assert shown == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_preview_every_in_job_zone_and_empty_cases() -> None:
    spec = job(every=3600.0, timezone="America/New_York")
    assert [d.isoformat() for d in preview(spec, utc(2026, 1, 1), 2)] == [
        "2025-12-31T20:00:00-05:00",
        "2025-12-31T21:00:00-05:00",
    ]
    assert preview(job(), utc(2026, 1, 1), 5) == []
    assert preview(spec, utc(2026, 1, 1), 0) == []
    assert preview(job(at=utc(2025, 1, 1)), utc(2026, 1, 1), 3) == []
    assert len(preview(job(at=utc(2026, 6, 1)), utc(2026, 1, 1), 3)) == 1


# ------------------------------------------------------------------------------------------ missed fires

NOW = utc(2026, 1, 1, 12)
GAP = [utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 11, 0), utc(2026, 1, 1, 11, 30), utc(2026, 1, 1, 12, 0)]


def test_plan_missed_all_runs_every_fire_inside_the_window() -> None:
    plans = plan_missed_fires(GAP, NOW, Catchup.ALL, 3600)
    assert plans == [
        FirePlan(utc(2026, 1, 1, 10, 0), "missed", "downtime: outside catchup window (1h)"),
        FirePlan(utc(2026, 1, 1, 11, 0), "run", None),  # exactly now - window: inside
        FirePlan(utc(2026, 1, 1, 11, 30), "run", None),
        FirePlan(utc(2026, 1, 1, 12, 0), "run", None),
    ]


def test_plan_missed_latest_runs_only_the_newest() -> None:
    plans = plan_missed_fires(GAP, NOW, Catchup.LATEST, 3600)
    superseded = "downtime: catchup=latest: superseded by 2026-01-01T12:00:00+00:00"
    assert plans == [
        FirePlan(utc(2026, 1, 1, 10, 0), "missed", "downtime: outside catchup window (1h)"),
        FirePlan(utc(2026, 1, 1, 11, 0), "missed", superseded),
        FirePlan(utc(2026, 1, 1, 11, 30), "missed", superseded),
        FirePlan(utc(2026, 1, 1, 12, 0), "run", None),
    ]


def test_plan_missed_none_runs_nothing_and_names_the_cause() -> None:
    plans = plan_missed_fires(GAP, NOW, Catchup.NONE, 5400, cause="failover")
    assert [(p.action, p.reason) for p in plans] == [
        ("missed", "failover: outside catchup window (1h30m)"),
        ("missed", "failover: catchup=none"),
        ("missed", "failover: catchup=none"),
        ("missed", "failover: catchup=none"),
    ]


def test_plan_missed_latest_with_everything_outside_window_runs_nothing() -> None:
    plans = plan_missed_fires(GAP[:2], NOW, Catchup.LATEST, 60)
    assert [p.action for p in plans] == ["missed", "missed"]
    assert {p.reason for p in plans} == {"downtime: outside catchup window (1m)"}


def test_plan_missed_sorts_input_and_handles_empty() -> None:
    plans = plan_missed_fires(list(reversed(GAP)), NOW, Catchup.ALL, 86400)
    assert [p.scheduled_for for p in plans] == GAP
    assert all(p.action == "run" for p in plans)
    assert plan_missed_fires([], NOW, Catchup.LATEST, 3600) == []
    with pytest.raises(ValueError, match="negative"):
        plan_missed_fires(GAP, NOW, Catchup.ALL, -1)


# ----------------------------------------------------------------------------------------------- retries


def test_retry_delay_doubles_and_caps() -> None:
    assert [retry_delay(10, attempt) for attempt in (1, 2, 3, 4)] == [10.0, 20.0, 40.0, 80.0]
    assert retry_delay(10, 10) == 3600.0  # 5120 capped
    assert retry_delay(10, 3, cap_s=30) == 30.0
    assert retry_delay(10, 10_000) == 3600.0  # no float overflow
    assert retry_delay(0, 5) == 0.0


def test_retry_delay_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt starts at 1"):
        retry_delay(10, 0)


@pytest.mark.parametrize(
    ("state", "attempt", "retries", "expected"),
    [
        ("failed", 1, 2, True),
        ("failed", 2, 2, True),
        ("failed", 3, 2, False),  # three attempts were allowed and made
        ("timed_out", 1, 1, True),
        ("failed", 1, 0, False),
        ("killed", 1, 5, False),  # an operator's kill is not retried
        ("unknown", 1, 5, False),  # might still be running: never silently re-run
        ("succeeded", 1, 5, False),
        (RunState.TIMED_OUT, 1, 1, True),
        (RunState.KILLED, 1, 1, False),
    ],
)
def test_should_retry(state: str, attempt: int, retries: int, expected: bool) -> None:
    assert should_retry(state, attempt, retries) is expected


@pytest.mark.parametrize(
    ("policy", "active", "expected"),
    [
        (Overlap.SKIP, 0, "launch"),
        (Overlap.SKIP, 1, "skip"),
        (Overlap.QUEUE, 0, "launch"),
        (Overlap.QUEUE, 2, "queue"),
        (Overlap.ALLOW, 0, "launch"),
        (Overlap.ALLOW, 3, "launch"),
    ],
)
def test_overlap_decision(policy: Overlap, active: int, expected: str) -> None:
    assert overlap_decision(policy, active) == expected


def test_overlap_decision_rejects_negative_count() -> None:
    with pytest.raises(ValueError, match="negative"):
        overlap_decision(Overlap.SKIP, -1)


# ------------------------------------------------------------------------------------------------ after


def test_upstream_satisfied() -> None:
    last = {"a": utc(2026, 1, 1, 10), "b": utc(2026, 1, 1, 8), "c": None}
    assert upstream_satisfied((), last, None) == (True, [])
    assert upstream_satisfied(("a", "b"), last, None) == (True, [])  # never ran: any success counts
    assert upstream_satisfied(("a", "b"), last, utc(2026, 1, 1, 9)) == (False, ["b"])
    assert upstream_satisfied(("a",), last, utc(2026, 1, 1, 10)) == (False, ["a"])  # must be strictly later
    assert upstream_satisfied(("c", "a", "missing"), last, None) == (False, ["c", "missing"])


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        (
            "* * * *",
            "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), got 4",
        ),
        ("0 0 0 * * * *", "got 7"),
        ("", "empty cron expression"),
        ("61 * * * *", "minute field '61': 61 is out of range (allowed 0-59"),
        ("* 24 * * *", "hour field '24': 24 is out of range (allowed 0-23"),
        ("60 * * * * *", "second field '60': 60 is out of range (allowed 0-59"),
        ("0 0 0 * *", "day-of-month field '0': 0 is out of range (allowed 1-31"),
        ("0 0 * 13 *", "month field '13': 13 is out of range (allowed 1-12"),
        ("0 0 * * 8", "day-of-week field '8': 8 is out of range (allowed 0-7"),
        ("0 0 * * funday", "day-of-week field 'funday': unknown value 'funday'"),
        ("0 0 * mon *", "month field 'mon': unknown value 'mon'"),
        ("*/0 * * * *", "minute field '*/0': step '0' must be a whole number >= 1"),
        ("0 5-2 * * *", "hour field '5-2': range '5-2' runs backwards"),
        ("0,,5 * * * *", "minute field '0,,5': empty list item"),
        ("0 0 31 2 *", "never fires"),
        ("H * * * *", "not supported"),
        ("0 0 15W * *", "not supported"),
        ("0 0 * * 1#6", "the week number after '#' must be 1-5"),
        ("0 0 15 * 1#2", "cannot be combined"),
        ("@reboot", "@reboot is not supported"),
        ("@weekdays", "unknown macro"),
        ("daily", "got 1"),
    ],
)
def test_validate_cron_errors(expr: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        validate_cron(expr)
    assert message in str(excinfo.value)
    assert str(excinfo.value).startswith(f"cron {expr!r}: ")


@pytest.mark.parametrize(
    "expr",
    ["* * * * *", "*/10 * * * * *", "0 9 * * mon-fri", "0 0 L * *", "0 0 29 2 *", "0 0 ? * 1#1"],
)
def test_validate_cron_accepts(expr: str) -> None:
    validate_cron(expr, "Europe/Berlin")


def test_validate_cron_checks_the_zone() -> None:
    with pytest.raises(ValueError, match=r"^unknown time zone 'Mars/Olympus'$"):
        validate_cron("* * * * *", "Mars/Olympus")


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../../etc/passwd", "/etc/localtime", "Europe/"])
def test_validate_timezone_rejects(name: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        validate_timezone(name)
    assert str(excinfo.value) == f"unknown time zone {name!r}"


def test_validate_timezone_accepts_real_zones() -> None:
    for name in ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"):
        validate_timezone(name)


def test_cron_trigger_constructor_validates() -> None:
    with pytest.raises(ValueError, match="out of range"):
        CronTrigger("99 * * * *")
    with pytest.raises(ValueError, match="unknown time zone"):
        CronTrigger("* * * * *", "Nowhere/City")


# -------------------------------------------------------------------------------------------- performance


def test_ten_thousand_cron_triggers_build_and_query_quickly() -> None:
    zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]
    # Distinct expressions (seconds + minute + hour) so the parse cache cannot hide the cost.
    exprs = [f"{i % 60} {i // 60 % 60} {i // 3600 % 24} * * *" for i in range(7919, 17919)]
    now = utc(2026, 5, 1, 12)
    began = time.perf_counter()
    results = [CronTrigger(e, zones[i % 4]).next_fire(now) for i, e in enumerate(exprs)]
    elapsed = time.perf_counter() - began
    assert all(r is not None and now < r <= now + timedelta(days=1) for r in results)
    assert elapsed < 1.0, f"10,000 triggers took {elapsed:.2f}s"


@pytest.mark.parametrize(
    "expr",
    [
        "0 0 */2 * 1-5",  # `*/2` restricts: either field matches (Vixie cron would need both)
        "0 0 1-31/3 * 1-5",
        "0 0 1,15 * MON",
        "0 0 * * */2",
    ],
)
def test_day_fields_combine_as_croniter_does(expr: str) -> None:
    start = utc(2026, 3, 1)
    expected, it = [], croniter(expr, start)
    for _ in range(40):
        expected.append(it.get_next(datetime))
    assert fires(CronTrigger(expr), start, 40) == expected


@pytest.mark.parametrize(
    "expr",
    ["*/61 * * * *", "0 */25 * * *", "*/61 * * * * *", "0 0 */32 * *", "0 0 1 */13 *", "0 0 * * */8", "5/61 * * * *"],
)
def test_cron_step_beyond_the_fields_range_is_refused(expr: str) -> None:
    """`*/61` once meant "minute 0 only" (hourly): a step must fit the field it steps through."""
    with pytest.raises(ValueError, match="is larger than the field's range"):
        CronTrigger(expr)


def test_cron_largest_steps_still_fire_as_written() -> None:
    assert fires(CronTrigger("*/60 * * * *"), utc(2026, 1, 1), 2) == [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2)]
    assert fires(CronTrigger("0 */24 * * *"), utc(2026, 1, 1), 2) == [utc(2026, 1, 2), utc(2026, 1, 3)]
    assert len(fires(CronTrigger("0 0 * * */7"), utc(2026, 1, 1), 2)) == 2


@pytest.mark.parametrize(
    ("catchup", "actions"),
    [
        (Catchup.NONE, ["missed", "missed", "missed", "run"]),
        (Catchup.LATEST, ["missed", "missed", "missed", "run"]),
        (Catchup.ALL, ["run", "run", "run", "run"]),
    ],
)
def test_plan_missed_an_on_time_newest_fire_runs_whatever_the_policy(catchup: Catchup, actions: list[str]) -> None:
    now = NOW + timedelta(seconds=0.4)  # 12:00 is 0.4 s old: on time
    plans = plan_missed_fires(GAP, now, catchup, 3 * 3600, on_time_s=1.0)
    assert [p.action for p in plans] == actions
    assert plans[-1] == FirePlan(NOW, "run", None)
    if catchup is Catchup.LATEST:
        assert plans[0].reason == "downtime: catchup=latest: superseded by 2026-01-01T12:00:00+00:00"
    # The window does not apply to the on-time fire, and a fire 1.5 s old is late.
    assert [p.action for p in plan_missed_fires(GAP, now, catchup, 0, on_time_s=1.0)] == ["missed"] * 3 + ["run"]
    late = plan_missed_fires(GAP[-1:], NOW + timedelta(seconds=1.5), Catchup.NONE, 3600, on_time_s=1.0)
    assert [p.action for p in late] == ["missed"]


def test_plan_missed_names_each_fire_for_its_own_cause() -> None:
    plans = plan_missed_fires(GAP, NOW, Catchup.NONE, 86400, cause=lambda f: "early" if f.hour < 11 else "late")
    assert [p.reason for p in plans] == ["early: catchup=none"] + ["late: catchup=none"] * 3


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1-100/2 * * * *", "cron '1-100/2 * * * *': minute field '1-100/2': 100 is out of range (allowed 0-59)"),
        ("0 25-30/2 * * *", "hour field '25-30/2': 25 is out of range (allowed 0-23)"),
        ("0 0 * * sun-mon/9", "day-of-week field 'sun-mon/9': step 9 is larger than the field's range"),
        ("0 0 * * 8/2", "day-of-week field '8/2': 8 is out of range (allowed 0-7 or SUN-SAT)"),
    ],
)
def test_cron_range_with_a_step_names_the_field_and_its_range(expr: str, expected: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        validate_cron(expr)
    assert expected in str(excinfo.value)


def test_jobs_of_one_load_share_a_trigger_per_schedule_and_fire_as_their_own_would() -> None:
    shared: dict[tuple[object, ...], Trigger] = {}
    berlin = [trigger_for(job(name=f"b{n}", cron="30 2 * * *", timezone="Europe/Berlin"), shared) for n in range(3)]
    york = trigger_for(job(name="ny", cron="30 2 * * *", timezone="America/New_York"), shared)
    hourly = [trigger_for(job(name=f"e{n}", every=3600.0), shared) for n in range(2)]
    both = trigger_for(job(name="both", cron="30 2 * * *", timezone="Europe/Berlin", every=3600.0), shared)
    assert berlin[0] is berlin[1] is berlin[2] and york is not berlin[0] and hourly[0] is hourly[1]
    assert isinstance(both, CombinedTrigger) and both.triggers == (berlin[0], hourly[0])
    start = utc(2026, 3, 28, 0, 0)  # across Berlin's spring-forward night
    alone = trigger_for(job(cron="30 2 * * *", timezone="Europe/Berlin"))
    assert alone is not None and berlin[0] is not None and york is not None
    assert fires(berlin[0], start, 3) == fires(alone, start, 3) != fires(york, start, 3)
