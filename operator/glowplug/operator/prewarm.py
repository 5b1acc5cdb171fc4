"""Pre-warm windows: five-field cron schedules, opened for a duration, in a time zone.

A window ``{schedule: "0 8 * * 1-5", duration: 10h, replicas: 1, timeZone: Europe/Paris}``
is open from each minute the schedule matches (wall-clock time in its zone) for
``duration`` seconds. While open it raises the autoscaler's floor to ``replicas``.

A small matcher instead of a dependency: the grammar we accept (numbers, ``*``, ranges,
lists, ``/step``, month and weekday names, Sunday as 0 or 7) is the whole of standard
cron, and ``zoneinfo`` (standard library) does the time-zone work, DST included: a
minute that does not exist in the zone (spring forward) never matches, a repeated one
(fall back) matches once per occurrence, exactly like cron daemons keyed on local time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from glowplug.api.spec import PrewarmWindow

_MONTHS = {
    name: i + 1
    for i, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DAYS = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}


class CronError(ValueError):
    """A schedule that is not five valid cron fields."""


@dataclass(frozen=True)
class Cron:
    """A parsed five-field schedule: the sets of allowed values per field."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_any: bool  # day-of-month field was "*"
    weekday_any: bool  # day-of-week field was "*"

    def matches(self, local: datetime) -> bool:
        """Whether the local wall-clock minute ``local`` is one the schedule fires at."""
        if local.minute not in self.minutes or local.hour not in self.hours:
            return False
        if local.month not in self.months:
            return False
        weekday = (local.weekday() + 1) % 7  # Python: Monday 0; cron: Sunday 0
        day_ok = local.day in self.days
        weekday_ok = weekday in self.weekdays
        # Vixie cron: when both day fields are restricted, either one matching suffices.
        if self.day_any or self.weekday_any:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


def _field(text: str, lo: int, hi: int, names: dict[str, int] | None) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"bad step {step_text!r}")
            step = int(step_text)
        if part == "*":
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, names), _value(b, names)
        else:
            start = _value(part, names)
            end = hi if step > 1 else start
        if start > end:
            raise CronError(f"range {part!r} runs backwards")
        values.update(range(start, end + 1, step))
    bad = [v for v in values if not lo <= v <= hi]
    if bad:
        raise CronError(f"{bad[0]} is outside {lo}-{hi}")
    return frozenset(values)


def _value(text: str, names: dict[str, int] | None) -> int:
    low = text.lower()
    if names and low in names:
        return names[low]
    if not text.isdigit():
        raise CronError(f"{text!r} is not a number")
    return int(text)


@lru_cache(maxsize=256)
def parse_cron(schedule: str) -> Cron:
    fields = schedule.split()
    if len(fields) != 5:
        raise CronError(f"{schedule!r}: a cron schedule has five fields, got {len(fields)}")
    minute, hour, day, month, weekday = fields
    try:
        weekdays = _field(weekday, 0, 7, _DAYS)
        return Cron(
            minutes=_field(minute, 0, 59, None),
            hours=_field(hour, 0, 23, None),
            days=_field(day, 1, 31, None),
            months=_field(month, 1, 12, _MONTHS),
            weekdays=frozenset(d % 7 for d in weekdays),  # 7 is Sunday too
            day_any=day == "*",
            weekday_any=weekday == "*",
        )
    except CronError as err:
        raise CronError(f"{schedule!r}: {err}") from None


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise CronError(f"unknown time zone {name!r}") from err


def last_start(window: PrewarmWindow, now: float) -> float | None:
    """The latest firing of the window's schedule in ``(now - duration, now]``, or None.

    Walks back minute by minute over at most ``duration`` (bounded at 8 days, the longest
    useful window), checking each real UTC minute in local time, so DST gaps and repeats
    behave as the local clock does.
    """
    cron = parse_cron(window.schedule)
    zone = _zone(window.time_zone)
    minute = math.floor(now / 60) * 60
    span = min(window.duration, 8 * 86400)
    earliest = now - span
    t = float(minute)
    while t > earliest:
        local = datetime.fromtimestamp(t, UTC).astimezone(zone)
        if cron.matches(local):
            return t
        t -= 60
    return None


def is_open(window: PrewarmWindow, now: float) -> bool:
    return last_start(window, now) is not None


def floor(windows: Iterable[PrewarmWindow], now: float) -> int:
    """The replicas the open windows ask for (the largest), 0 when none is open.

    A window whose schedule or zone cannot be parsed is ignored here: the spec parser
    and the CRD refuse such specs, so this only guards against a corrupt object.
    """
    best = 0
    for window in windows:
        try:
            if is_open(window, now):
                best = max(best, window.replicas)
        except CronError:
            continue
    return best


def next_start(window: PrewarmWindow, now: float, horizon: float = 8 * 86400) -> float | None:
    """The next firing strictly after ``now`` within ``horizon`` seconds (for status/tests)."""
    cron = parse_cron(window.schedule)
    zone = _zone(window.time_zone)
    t = math.floor(now / 60) * 60 + 60.0
    end = now + horizon
    while t <= end:
        if cron.matches(datetime.fromtimestamp(t, UTC).astimezone(zone)):
            return t
        t += 60
    return None


__all__ = [
    "Cron",
    "CronError",
    "floor",
    "is_open",
    "last_start",
    "next_start",
    "parse_cron",
]
