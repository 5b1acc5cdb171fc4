"""Pre-warm windows: five-field cron schedules, opened for a duration, in a time zone.

A window ``{schedule: "0 8 * * 1-5", duration: 10h, replicas: 1, timeZone: Europe/Paris}``
is open from each minute the schedule matches (wall-clock time in its zone) for
``duration`` seconds. While open it raises the autoscaler's floor to ``replicas``.

The schedule grammar and its parser live in ``glowplug.api.cron`` (the spec parser
validates with them): a small matcher instead of a dependency, and ``zoneinfo`` (the
standard library, with the ``tzdata`` package as its database wherever the image has none)
does the time-zone work, DST included: a minute that does not exist in the zone (spring
forward) never matches, a repeated one (fall back) matches once per occurrence, exactly
like cron daemons keyed on local time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime

from glowplug.api.cron import Cron, CronError, parse_cron
from glowplug.api.cron import zone as _zone
from glowplug.api.spec import PrewarmWindow


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
