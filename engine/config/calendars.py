"""`[calendars.NAME]` in vigil.toml: working weekdays, public holidays, extra working and non-working days.

Each entry is checked on its own and every problem reported with its key; an invalid calendar is left
out (jobs naming it do not load, saying it is invalid). The holiday country and subdivision are checked
against the `holidays` package, which is imported only when a calendar has `holidays` and the caller
asks for it (`check_holidays`: listing commands do not). Imports `fields`, `engine.schedule`,
`engine.model` and `engine.text`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

from engine.config.fields import BadValue, as_string_list
from engine.config.names import NAME_RULE, NAME_SEGMENT
from engine.model import CalendarSpec
from engine.schedule.calendars import WEEKDAYS, holiday_problem
from engine.text import describe, quote, show

__all__ = ["CALENDAR_KEYS", "parse_calendars"]

CALENDAR_KEYS = ("weekdays", "holidays", "include", "exclude")
_HOLIDAY_KEYS = ("country", "subdivision")
_Report = Callable[[tuple[str, ...], str], None]


def _weekdays(value: object) -> frozenset[int]:
    names = as_string_list(value, 'weekday names such as "mon"')
    problems: list[tuple[tuple[str, ...], str]] = [
        ((), f"unknown weekday {quote(name)} (valid: {', '.join(WEEKDAYS)})")
        for name in names
        if name.lower() not in WEEKDAYS
    ]
    if problems:
        raise BadValue.many(problems)
    return frozenset(WEEKDAYS.index(name.lower()) for name in names)


def _dates(value: object) -> frozenset[date]:
    if not isinstance(value, list):
        raise BadValue(f"expected an array of dates such as [2026-12-24], got {describe(value)}")
    days: set[date] = set()
    problems: list[tuple[tuple[str, ...], str]] = []
    for number, item in enumerate(value, start=1):
        if isinstance(item, datetime):
            problems.append(((), f"item {number}: expected a date without a time, got {show(str(item))}"))
        elif isinstance(item, date):
            days.add(item)
        elif isinstance(item, str):
            try:
                days.add(date.fromisoformat(item.strip()))
            except ValueError:
                problems.append(((), f"item {number}: expected a date YYYY-MM-DD, got {show(item)}"))
        else:
            problems.append(((), f"item {number}: expected a date such as 2026-12-24, got {describe(item)}"))
    if problems:
        raise BadValue.many(problems)
    return frozenset(days)


def _holidays(value: object, check: bool) -> tuple[str, str | None]:
    if not isinstance(value, dict):
        raise BadValue(f'expected a table such as {{ country = "DE", subdivision = "BE" }}, got {describe(value)}')
    problems: list[tuple[tuple[str, ...], str]] = []
    for key in value:
        if key not in _HOLIDAY_KEYS:
            problems.append(((key,), f"unknown key (valid: {', '.join(_HOLIDAY_KEYS)})"))
    country, subdivision = value.get("country"), value.get("subdivision")
    if not isinstance(country, str) or not country.strip():
        problems.append((("country",), f'required: an ISO 3166 country code such as "DE", got {describe(country)}'))
    if subdivision is not None and (not isinstance(subdivision, str) or not subdivision.strip()):
        problems.append((("subdivision",), f'expected a code such as "BE", got {describe(subdivision)}'))
    if problems:
        raise BadValue.many(problems)
    assert isinstance(country, str)
    country = country.strip().upper()
    sub = subdivision.strip() if isinstance(subdivision, str) else None
    if check:
        problem = holiday_problem(country, sub)
        if problem is not None:
            raise BadValue(problem, ("subdivision",) if problem.startswith("unknown subdivision") else ("country",))
    return country, sub


def parse_calendars(
    section: Mapping[str, Any], bad: _Report, *, check_holidays: bool = True
) -> tuple[dict[str, CalendarSpec], set[str]]:
    """The valid calendars, and the names declared but invalid (each problem reported)."""
    calendars: dict[str, CalendarSpec] = {}
    invalid: set[str] = set()
    for name, table in section.items():
        where = ("calendars", name)
        if not isinstance(table, dict):
            bad(where, f"expected a table [calendars.{name}], got {describe(table)}")
            invalid.add(name)
            continue
        ok = True
        if not NAME_SEGMENT.fullmatch(name):
            bad(where, f"calendar names {NAME_RULE}")
            ok = False
        values: dict[str, Any] = {}
        for key, raw in table.items():
            try:
                if key == "weekdays":
                    values["weekdays"] = _weekdays(raw)
                elif key == "holidays":
                    values["country"], values["subdivision"] = _holidays(raw, check_holidays)
                elif key in ("include", "exclude"):
                    values[key] = _dates(raw)
                else:
                    bad((*where, key), f"unknown key (valid: {', '.join(CALENDAR_KEYS)})")
                    ok = False
            except BadValue as problem:
                for sub, reason in problem.problems:
                    bad((*where, key, *sub), reason)
                ok = False
        if not ok:
            invalid.add(name)
            continue
        calendars[name] = CalendarSpec(name=name, **values)
    return calendars, invalid
