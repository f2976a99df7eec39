"""Cron expressions and time zones: the parser, and when an expression fires in a zone across DST.

Pure: no I/O, no clock. Imports only the standard library, `engine.text`.

Cron syntax: 5 fields (minute hour day-of-month month day-of-week) or 6 with a seconds field first;
numbers, names (jan, mon), ranges, steps, lists, ``*``/``?``, ``L`` (last day of month), ``n#k`` and
``Ln`` (k-th / last weekday n); or one of Vixie cron's macros (`MACROS`: ``@daily`` is ``0 0 * * *``, and
so on; ``@hourly``'s hour is a ``*``, as in Vixie cron, so it follows real time across DST). ``@reboot`` is
refused (`REBOOT_REASON`). When day-of-month and day-of-week are both restricted a day matching either
fires (Vixie cron, croniter's default).

DST rule (Vixie cron), decided by the hour field alone because DST moves whole hours:

- Hour field written with ``*`` (``*``, ``*/2``): the job follows real time. Every instant whose local wall
  time matches fires, so in the repeated fall-back hour ``0 * * * *`` fires twice (hourly in real time),
  and wall times inside a spring-forward gap do not exist and do not fire.
- Any other hour field (a fixed time such as ``30 2 * * *``): each matching wall time fires once. A
  repeated wall time fires at its first occurrence only; wall times inside a spring-forward gap fire
  once, at the instant the gap ends (coalesced with each other and with a fire at that instant).
"""

from __future__ import annotations

import bisect
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.text import describe, quote

__all__ = [
    "EPOCH_UTC",
    "MACROS",
    "REBOOT_REASON",
    "ZonedCron",
    "day_field_values",
    "floor_ts",
    "load_zone",
    "require_aware",
    "utc",
    "validate_cron",
    "validate_timezone",
]

_EPOCH = datetime(1970, 1, 1)  # naive: the origin for wall-clock arithmetic
EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_SEARCH_YEARS = 100  # a valid expression fires well within this (29 Feb on a 5th Monday: < 40 years)


# --------------------------------------------------------------------------------------------- helpers


def require_aware(when: datetime, what: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {when.isoformat()}")


def floor_ts(when: datetime) -> int:
    """Whole POSIX seconds at or before `when`: fires are on whole seconds, so `> floor` means `> when`."""
    require_aware(when, "time")
    return (when - EPOCH_UTC) // _SECOND


def utc(ts: int) -> datetime:
    return EPOCH_UTC + timedelta(seconds=ts)


def _wall(ts: int) -> datetime:
    """Naive wall-clock datetime for POSIX-style seconds `ts` (offset already added)."""
    return _EPOCH + timedelta(seconds=ts)


def _wall_ts(wall: datetime) -> int:
    return (wall - _EPOCH) // _SECOND


def load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise ValueError(f"unknown time zone {quote(name)}") from None


def validate_timezone(name: str) -> None:
    """Reject a zone name zoneinfo cannot load, with a message fit for an operator."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"unknown time zone {quote(str(name))}")
    load_zone(name)


# ------------------------------------------------------------------------------------- zone transitions
# zoneinfo does not expose its transitions, so they are found by sampling the UTC offset every 6 hours
# (no zone since 1970 has two offset changes within days of each other) and bisecting to the second.
# Cached per zone and year, so a reload of 10,000 jobs in a handful of zones samples each zone once.

_Transition = tuple[int, int, int]  # (instant in POSIX seconds, offset before, offset after), offsets in s
_SAMPLE_STEP = 6 * 3600
_transition_cache: dict[tuple[ZoneInfo, int], tuple[_Transition, ...]] = {}


def _offset_at(zone: ZoneInfo, ts: int) -> int:
    offset = datetime.fromtimestamp(ts, zone).utcoffset()
    assert offset is not None  # zoneinfo always answers
    return offset // _SECOND


def _year_start(year: int) -> int:
    return (datetime(year, 1, 1) - _EPOCH) // _SECOND


def _year_of(ts: int) -> int:
    return time.gmtime(ts).tm_year


def _year_transitions(zone: ZoneInfo, year: int) -> tuple[_Transition, ...]:
    key = (zone, year)
    cached = _transition_cache.get(key)
    if cached is not None:
        return cached
    found: list[_Transition] = []
    if 1 < year < 9999:
        start, end = _year_start(year), _year_start(year + 1)
        prev_ts = start - _SAMPLE_STEP
        prev_off = _offset_at(zone, prev_ts)
        while prev_ts < end:
            ts = min(prev_ts + _SAMPLE_STEP, end)
            off = _offset_at(zone, ts)
            if off != prev_off:
                lo, hi = prev_ts, ts  # offset(lo) == prev_off, offset(hi) == off
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if _offset_at(zone, mid) == prev_off:
                        lo = mid
                    else:
                        hi = mid
                if start <= hi < end:
                    found.append((hi, prev_off, off))
            prev_ts, prev_off = ts, off
    result = tuple(found)
    _transition_cache[key] = result
    return result


def _next_transition(zone: ZoneInfo, after: int, upto: int) -> _Transition | None:
    """The first transition T with after < T <= upto."""
    for year in range(_year_of(after), _year_of(upto) + 1):
        for tr in _year_transitions(zone, year):
            if tr[0] > after:
                return tr if tr[0] <= upto else None
    return None


def _prev_transition(zone: ZoneInfo, at: int) -> _Transition | None:
    """The latest transition T <= at (looking back at most into the previous year)."""
    year = _year_of(at)
    for y in (year, year - 1):
        for tr in reversed(_year_transitions(zone, y)):
            if tr[0] <= at:
                return tr
    return None


# ------------------------------------------------------------------------------------------ cron parser

_MONTHS = {n: i for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_WEEKDAYS = {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())}
# (name, lowest, highest, names)
_FIELDS: tuple[tuple[str, int, int, Mapping[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _WEEKDAYS),
)
_SEC, _MIN, _HOUR, _DOM, _MON, _DOW = range(6)
#: Vixie cron's macros and the expression each stands for (crontab(5)); matched case-insensitively.
MACROS: Mapping[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Why `@reboot` is refused, and what to do instead (docs/decisions.md, "Cron macros").
REBOOT_REASON = (
    "@reboot is not supported: Vigil fires jobs by the clock, and a scheduler start is not a boot (a restart "
    "or a failover starts one too); start the command from a systemd unit (Type=oneshot, "
    "WantedBy=multi-user.target) instead"
)
_NTH = re.compile(r"(\w+)#(\d+)")
_LAST_WEEKDAY = re.compile(r"l(\w+)")
_UNSUPPORTED = re.compile(r"^[hr](\(|/|$)|^\d+w$|^lw$")
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS_IN_MONTH[month]


@dataclass(frozen=True, slots=True)
class _ParsedField:
    values: frozenset[int]
    last_day: bool = False  # day-of-month `L`
    nth: tuple[tuple[int, int], ...] = ()  # day-of-week (weekday, k); k == -1 means last
    unrestricted: bool = False  # written `*` or `?`


def _allowed(index: int) -> str:
    """The values a field takes, as an operator writes them: `0-59`, `1-12 or JAN-DEC`."""
    _, lo, hi, names = _FIELDS[index]
    if not names:
        return f"{lo}-{hi}"
    first, last = min(names, key=names.__getitem__), max(names, key=names.__getitem__)
    return f"{lo}-{hi} or {first.upper()}-{last.upper()}"


def _field_error(index: int, text: str, problem: str) -> ValueError:
    """`<field> field '<text>': <problem> (allowed <values>)`: the field, what is wrong, what is right."""
    return ValueError(f"{_FIELDS[index][0]} field {quote(text)}: {problem} (allowed {_allowed(index)})")


def _field_value(index: int, token: str, text: str) -> int:
    _, lo, hi, names = _FIELDS[index]
    if token.isdigit():
        value = int(token)
    elif token in names:
        value = names[token]
    else:
        raise _field_error(index, text, f"unknown value {quote(token)}")
    if not lo <= value <= hi:
        raise _field_error(index, text, f"{value} is out of range")
    return value


@lru_cache(maxsize=4096)
def _parse_field(index: int, text: str) -> _ParsedField:
    name, lo, hi, _ = _FIELDS[index]
    low = text.lower()
    if low == "*" or (low == "?" and index in (_DOM, _DOW)):
        values = frozenset(range(lo, hi + 1))
        return _ParsedField(frozenset(v % 7 for v in values) if index == _DOW else values, unrestricted=True)
    values_set: set[int] = set()
    last_day = False
    nth: list[tuple[int, int]] = []
    for item in low.split(","):
        if not item:
            raise _field_error(index, text, "empty list item")
        if _UNSUPPORTED.match(item):
            raise ValueError(
                f"{name} field {quote(text)}: hashed (H), random (R) and nearest-weekday (W) values are not supported"
            )
        if index == _DOM and item == "l":
            last_day = True
            continue
        if index == _DOW and (m := _NTH.fullmatch(item) or _LAST_WEEKDAY.fullmatch(item)):
            weekday = _field_value(index, m.group(1), text) % 7
            if m.re is _NTH:
                k = int(m.group(2))
                if not 1 <= k <= 5:
                    raise ValueError(f"{name} field {quote(text)}: the week number after '#' must be 1-5")
            else:
                k = -1
            nth.append((weekday, k))
            continue
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise _field_error(index, text, f"step {quote(step_text)} must be a whole number >= 1")
            step = int(step_text)
            span = 7 if index == _DOW else hi - lo + 1  # 0 and 7 are both Sunday
            if step > span:
                # `*/61` would silently mean "at minute 0", i.e. hourly: never what was written.
                raise ValueError(
                    f"{name} field {quote(text)}: step {step} is larger than the field's range "
                    f"({lo}-{hi if index != _DOW else 6}: at most /{span})"
                )
        if base == "*":
            first, last = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _field_value(index, a, text), _field_value(index, b, text)
            if first > last:
                raise ValueError(f"{name} field {quote(text)}: range {quote(base)} runs backwards")
        else:
            first = _field_value(index, base, text)
            last = hi if slash else first
        values_set.update(range(first, last + 1, step))
    if index == _DOW:
        values_set = {v % 7 for v in values_set}
    return _ParsedField(frozenset(values_set), last_day, tuple(nth))


@dataclass(frozen=True, slots=True)
class _CronSpec:
    """A parsed expression plus the wall-clock matcher (naive local datetimes, second resolution)."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    dom: _ParsedField
    dow: _ParsedField
    wildcard_hour: bool
    every_day: bool

    def day_matches(self, year: int, month: int, day: int) -> bool:
        dim = _days_in_month(year, month)
        dom_ok = day in self.dom.values or (self.dom.last_day and day == dim)
        weekday = (datetime(year, month, day).weekday() + 1) % 7  # cron: 0 = Sunday
        dow_ok = weekday in self.dow.values or any(
            w == weekday and (k == (day - 1) // 7 + 1 or (k == -1 and day + 7 > dim)) for w, k in self.dow.nth
        )
        if self.dom.unrestricted:
            return dow_ok
        if self.dow.unrestricted:
            return dom_ok
        return dom_ok or dow_ok

    def next_match(self, lo: datetime) -> datetime | None:
        """First matching wall time at or after `lo` (naive, microseconds ignored); None past the horizon."""
        y, mo, d, h, mi, s = lo.year, lo.month, lo.day, lo.hour, lo.minute, lo.second
        max_year = min(lo.year + _SEARCH_YEARS, 9999)
        months, hours, minutes, seconds = self.months, self.hours, self.minutes, self.seconds
        while y <= max_year:
            if mo not in months:
                i = bisect.bisect_left(months, mo)
                if i == len(months):
                    y, mo = y + 1, months[0]
                else:
                    mo = months[i]
                d, h, mi, s = 1, 0, 0, 0
                continue
            if d > _days_in_month(y, mo):
                d, h, mi, s = 1, 0, 0, 0
                mo += 1
                if mo > 12:
                    y, mo = y + 1, 1
                continue
            if not self.every_day and not self.day_matches(y, mo, d):
                d, h, mi, s = d + 1, 0, 0, 0
                continue
            if h not in hours:
                i = bisect.bisect_left(hours, h)
                if i == len(hours):
                    d, h, mi, s = d + 1, 0, 0, 0
                    continue
                h, mi, s = hours[i], 0, 0
            if mi not in minutes:
                i = bisect.bisect_left(minutes, mi)
                if i == len(minutes):
                    h, mi, s = h + 1, 0, 0
                    continue
                mi, s = minutes[i], 0
            if s not in seconds:
                i = bisect.bisect_left(seconds, s)
                if i == len(seconds):
                    mi, s = mi + 1, 0
                    continue
                s = seconds[i]
            return datetime(y, mo, d, h, mi, s)
        return None


@lru_cache(maxsize=16384)
def _parse_cron(expr: str) -> _CronSpec:
    """Parse once per distinct expression; fields are cached separately, so staggered times stay cheap."""
    if not isinstance(expr, str):
        raise ValueError(f"cron expression must be a string, got {describe(expr)}")
    text = expr.strip()
    if not text:
        raise ValueError("empty cron expression")
    if text.startswith("@"):
        text = _expand_macro(text)
    parts = text.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    elif len(parts) != 6:
        raise ValueError(
            f"expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), got {len(parts)}"
        )
    fields = [_parse_field(i, part) for i, part in enumerate(parts)]
    dom, dow = fields[_DOM], fields[_DOW]
    if dow.nth and not dom.unrestricted:
        raise ValueError(
            "a day-of-month cannot be combined with an nth/last weekday ('#' or 'L'); set one of them to '*'"
        )
    spec = _CronSpec(
        seconds=tuple(sorted(fields[_SEC].values)),
        minutes=tuple(sorted(fields[_MIN].values)),
        hours=tuple(sorted(fields[_HOUR].values)),
        months=tuple(sorted(fields[_MON].values)),
        dom=dom,
        dow=dow,
        wildcard_hour=parts[_HOUR].startswith("*"),
        every_day=dom.unrestricted and dow.unrestricted,
    )
    if spec.next_match(datetime(2000, 1, 1)) is None:
        raise ValueError("never fires: no real date matches its day-of-month, month and day-of-week")
    return spec


def day_field_values(text: str, *, day_of_week: bool) -> frozenset[int]:
    """The days a day-of-month (1-31) or day-of-week (0-6, Sunday 0) field names (ValueError if bad)."""
    return _parse_field(_DOW if day_of_week else _DOM, text).values


def _expand_macro(text: str) -> str:
    macro = text.lower()
    if macro == "@reboot":
        raise ValueError(REBOOT_REASON)
    expansion = MACROS.get(macro)
    if expansion is None:
        raise ValueError(f"unknown macro {quote(text)} (known: {', '.join(MACROS)})")
    return expansion


def validate_cron(expr: str, timezone: str = "UTC") -> None:
    """Raise ValueError saying what is wrong with the expression or its zone, e.g. for a job file."""
    validate_timezone(timezone)
    try:
        _parse_cron(expr)
    except ValueError as exc:
        raise ValueError(f"cron {quote(expr)}: {exc}") from None


# ------------------------------------------------------------------------------- fires in a time zone


class ZonedCron:
    """A valid cron expression in a time zone: its fire instants in POSIX seconds, by the DST rule above."""

    __slots__ = ("_fixed", "_spec", "_zone")

    def __init__(self, expr: str, timezone: str = "UTC") -> None:
        validate_cron(expr, timezone)
        self._spec = _parse_cron(expr)
        self._zone = load_zone(timezone)
        self._fixed = not self._spec.wildcard_hour

    @property
    def wildcard_hour(self) -> bool:
        """True when the hour field starts with `*`: such jobs follow real time across DST changes."""
        return self._spec.wildcard_hour

    def next_after(self, after: int) -> int | None:
        """First fire instant (POSIX seconds) > `after`.

        Walks the UTC-offset segments between zone transitions: inside one segment wall time and
        real time move together, so the matcher's next wall time maps to one instant; at a transition
        the gap or repeated wall times are handled by the DST rule.
        """
        zone, spec, fixed = self._zone, self._spec, self._fixed
        off = _offset_at(zone, after)
        seg_start = after
        lo = _wall(after + off + 1)
        if fixed:
            prev = _prev_transition(zone, after)
            if prev is not None and prev[1] > prev[2]:  # maybe inside the second pass of a repeated hour
                lo = max(lo, _wall(prev[0] + prev[1]))
        while True:
            wall = spec.next_match(lo)
            if wall is None:
                return None
            wall_ts = _wall_ts(wall)
            candidate = wall_ts - off
            tr = _next_transition(zone, seg_start, candidate)
            if tr is None:
                return candidate
            at, before, now_off = tr
            if fixed and now_off > before and wall_ts < at + now_off:
                return at  # a fixed wall time inside the spring-forward gap: fire once when it ends
            off, seg_start = now_off, at
            # Fixed jobs skip wall times repeated after a fall-back; real-time jobs see them again.
            lo = _wall(at + (max(before, now_off) if fixed else now_off))

    def fires(self, after: int, end: int) -> Iterator[int]:
        """Fire instants in (after, end]; within one UTC-offset segment only the wall-time matcher runs."""
        ts = self.next_after(after)
        spec, zone = self._spec, self._zone
        while ts is not None and ts <= end:
            yield ts
            off = _offset_at(zone, ts)
            tr = _next_transition(zone, ts, end)
            seg_end = end + 1 if tr is None else tr[0]
            wall_ts = ts + off
            while True:
                wall = spec.next_match(_wall(wall_ts + 1))
                if wall is None:
                    return
                wall_ts = _wall_ts(wall)
                nxt = wall_ts - off
                if nxt >= seg_end or nxt > end:
                    break
                yield nxt
                ts = nxt
            ts = self.next_after(ts)
