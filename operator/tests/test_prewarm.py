"""Pre-warm windows: the cron matcher, durations and time zones (DST included)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from glowplug.api.spec import PrewarmWindow
from glowplug.operator.prewarm import CronError, floor, is_open, last_start, next_start, parse_cron


def ts(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_fields_ranges_lists_steps_and_names() -> None:
    cron = parse_cron("*/15 8-10,14 1 jan,Mar-may mon-fri")
    assert cron.minutes == {0, 15, 30, 45}
    assert cron.hours == {8, 9, 10, 14}
    assert cron.days == {1}
    assert cron.months == {1, 3, 4, 5}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert parse_cron("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    assert parse_cron("5/20 * * * *").minutes == {5, 25, 45}


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "* * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "5-1 * * * *",
        "*/0 * * * *",
        "x * * * *",
        "* * * * * *",
    ],
)
def test_bad_schedules_are_refused(bad: str) -> None:
    with pytest.raises(CronError):
        parse_cron(bad)


def test_day_of_month_or_weekday_when_both_restricted() -> None:
    cron = parse_cron("0 0 13 * fri")
    fri_12 = datetime(2026, 6, 12, tzinfo=UTC)  # a Friday, not the 13th
    sat_13 = datetime(2026, 6, 13, tzinfo=UTC)
    sun_14 = datetime(2026, 6, 14, tzinfo=UTC)
    assert cron.matches(fri_12) and cron.matches(sat_13) and not cron.matches(sun_14)


def test_window_open_for_its_duration_in_its_zone() -> None:
    window = PrewarmWindow(schedule="0 8 * * 1-5", duration=3600.0, time_zone="Europe/Paris")
    monday_8 = ts("2026-06-15T08:00:00", "Europe/Paris")  # 06:00 UTC (CEST)
    assert not is_open(window, monday_8 - 1)
    assert last_start(window, monday_8) == monday_8
    assert is_open(window, monday_8 + 3599)
    assert not is_open(window, monday_8 + 3600)
    saturday_8 = ts("2026-06-20T08:00:00", "Europe/Paris")
    assert not is_open(window, saturday_8 + 10)
    # The same schedule in UTC opens two hours later in summer.
    utc_window = PrewarmWindow(schedule="0 8 * * 1-5", duration=3600.0)
    assert not is_open(utc_window, monday_8 + 60)
    assert is_open(utc_window, monday_8 + 7200 + 60)


def test_window_spanning_midnight_and_weekdays() -> None:
    window = PrewarmWindow(schedule="0 22 * * fri", duration=6 * 3600.0, time_zone="UTC")
    assert is_open(window, ts("2026-06-20T03:59:59"))  # Saturday early morning
    assert not is_open(window, ts("2026-06-20T04:00:00"))


def test_dst_spring_forward_skips_a_missing_minute() -> None:
    # 02:30 does not exist in New York on 2026-03-08; cron keyed on local time skips it.
    window = PrewarmWindow(schedule="30 2 * * *", duration=600.0, time_zone="America/New_York")
    assert next_start(window, ts("2026-03-08T00:00:00", "America/New_York")) == ts(
        "2026-03-09T02:30:00", "America/New_York"
    )


def test_dst_fall_back_fires_on_each_occurrence() -> None:
    window = PrewarmWindow(schedule="30 1 * * *", duration=600.0, time_zone="America/New_York")
    first = next_start(window, ts("2026-11-01T00:00:00", "America/New_York"))
    assert first is not None
    second = next_start(window, first)
    assert second == first + 3600  # 01:30 EDT, then 01:30 EST


def test_floor_is_the_largest_open_window() -> None:
    now = ts("2026-06-15T09:00:00")
    windows = [
        PrewarmWindow(schedule="0 8 * * *", duration=7200.0, replicas=1),
        PrewarmWindow(schedule="30 8 * * *", duration=3600.0, replicas=3),
        PrewarmWindow(schedule="0 12 * * *", duration=3600.0, replicas=5),
    ]
    assert floor(windows, now) == 3
    assert floor(windows, now + 1800) == 1  # 09:30: only the first is open
    assert floor([], now) == 0
    assert (
        floor([PrewarmWindow(schedule="0 8 * * *", duration=60, time_zone="Nowhere/X")], now) == 0
    )


def test_star_step_day_of_month_is_unrestricted_as_in_crontab5() -> None:
    """crontab(5): day fields that start with * are unrestricted, so ``*/2`` in
    day-of-month ANDs with a restricted day-of-week (odd days that are weekdays), not ORs
    (which would fire on every weekday and on every odd day)."""
    cron = parse_cron("0 8 */2 * 1-5")
    assert cron.day_any and not cron.weekday_any
    odd_weekday = datetime(2026, 12, 1, 8, 0)  # Tuesday the 1st
    even_weekday = datetime(2026, 12, 2, 8, 0)  # Wednesday the 2nd
    odd_sunday = datetime(2026, 12, 13, 8, 0)  # Sunday the 13th
    assert cron.matches(odd_weekday)
    assert not cron.matches(even_weekday)
    assert not cron.matches(odd_sunday)
    # Both restricted (no leading *): either matches.
    both = parse_cron("0 8 1 * 1")
    assert both.matches(datetime(2026, 12, 1, 8, 0))  # the 1st (a Tuesday)
    assert both.matches(datetime(2026, 12, 7, 8, 0))  # a Monday


def test_bad_field_is_named() -> None:
    with pytest.raises(CronError, match="day-of-week field 'funday'"):
        parse_cron("0 8 * * funday")
    with pytest.raises(CronError, match="minute field '99'"):
        parse_cron("99 8 * * *")
