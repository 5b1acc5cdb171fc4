"""Five-field cron schedules and IANA time zones, as ``spec.scaling.prewarm[]`` uses them.

Here (not in the operator) because the spec parser validates with the same code the
pre-warm timer runs: a schedule or zone that parses here is one the timer understands.

The grammar is standard cron (crontab(5)): numbers, ``*``, ranges, lists, ``/step``,
month and weekday names, Sunday as 0 or 7. ``CRON_REGEX`` is the same grammar as a
regular expression, copied into the CRD's CEL rule (a unit test keeps them equal) so the
API server refuses ``99 8 * * funday``; what a regex cannot say (a range that runs
backwards, an unknown time zone) is refused by ``parse_cron`` / ``check_zone`` and
reaches the ``Failed`` condition as ``InvalidSpec`` naming the field.

Day matching follows crontab(5): "If both fields are restricted (i.e., do not start
with a *), the command will be run when either field matches the current time." A field
that starts with ``*`` (``*``, ``*/2``) is unrestricted in that sense, so
``0 8 */2 * 1-5`` fires on odd days that are also weekdays (Vixie cron and cronie do
this; they set DOM_STAR/DOW_STAR when the field's first character is ``*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def _field_re(value: str) -> str:
    item = rf"(\*|{value}(-{value})?)(/[1-9][0-9]?)?"
    return rf"{item}(,{item})*"


_MINUTE = "[0-5]?[0-9]"
_HOUR = "([01]?[0-9]|2[0-3])"
_DAY = "(0?[1-9]|[12][0-9]|3[01])"
_MONTH = "(0?[1-9]|1[0-2]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_WEEKDAY = "([0-7]|sun|mon|tue|wed|thu|fri|sat)"

# Case-insensitive (names); RE2 (CEL) and Python read it the same way.
CRON_REGEX = (
    r"(?i)^\s*"
    + r"\s+".join(_field_re(v) for v in (_MINUTE, _HOUR, _DAY, _MONTH, _WEEKDAY))
    + r"\s*$"
)
# The shape of an IANA zone name (Area/Location, or UTC); whether it exists is
# ``check_zone``'s to say, since only the time-zone database knows.
TIME_ZONE_REGEX = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"

_MONTHS = {
    name: i + 1
    for i, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DAYS = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}


class CronError(ValueError):
    """A schedule that is not five valid cron fields, or an unknown time zone."""


@dataclass(frozen=True)
class Cron:
    """A parsed five-field schedule: the sets of allowed values per field."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_any: bool  # day-of-month field starts with "*" (crontab(5): unrestricted)
    weekday_any: bool  # day-of-week field starts with "*"

    def matches(self, local: datetime) -> bool:
        """Whether the local wall-clock minute ``local`` is one the schedule fires at."""
        if local.minute not in self.minutes or local.hour not in self.hours:
            return False
        if local.month not in self.months:
            return False
        weekday = (local.weekday() + 1) % 7  # Python: Monday 0; cron: Sunday 0
        day_ok = local.day in self.days
        weekday_ok = weekday in self.weekdays
        # crontab(5): when both day fields are restricted, either one matching suffices.
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
        raise CronError(f"{text!r} is not a number" + (" or a name" if names else ""))
    return int(text)


@lru_cache(maxsize=256)
def parse_cron(schedule: str) -> Cron:
    fields = schedule.split()
    if len(fields) != 5:
        raise CronError(f"{schedule!r}: a cron schedule has five fields, got {len(fields)}")
    day, weekday = fields[2], fields[4]
    labels = ("minute", "hour", "day-of-month", "month", "day-of-week")
    bounds = ((0, 59, None), (0, 23, None), (1, 31, None), (1, 12, _MONTHS), (0, 7, _DAYS))
    parsed = []
    for label, text, (lo, hi, names) in zip(labels, fields, bounds, strict=True):
        try:
            parsed.append(_field(text, lo, hi, names))
        except CronError as err:
            raise CronError(f"{schedule!r}: {label} field {text!r}: {err}") from None
    return Cron(
        minutes=parsed[0],
        hours=parsed[1],
        days=parsed[2],
        months=parsed[3],
        weekdays=frozenset(d % 7 for d in parsed[4]),  # 7 is Sunday too
        day_any=day.startswith("*"),
        weekday_any=weekday.startswith("*"),
    )


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The time zone named ``name`` (IANA), or ``CronError``."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise CronError(
            f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)"
        ) from err


def check_zone(name: str) -> None:
    zone(name)


__all__ = ["CRON_REGEX", "TIME_ZONE_REGEX", "Cron", "CronError", "check_zone", "parse_cron", "zone"]
