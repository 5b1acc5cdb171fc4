"""Durations as the CRD writes them: Go-style strings such as ``90s``, ``5m``, ``1h30m``.

The same grammar is enforced by the CRD's CEL rules (``DURATION_REGEX``), so a value the
API server accepted always parses here.
"""

from __future__ import annotations

import re

# One or more <number><unit> parts; units ordered as Go prints them, fractions allowed.
DURATION_REGEX = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# A duration whose value stays far from overflow (Go's time.Duration, which the API
# server's CEL duration() uses, ends near 2562047h): at most two parts of at most six
# digits. The bounded durations (spec.DURATION_BOUNDS) must match it as well.
BOUNDED_DURATION_REGEX = r"^([0-9]{1,6}(\.[0-9]{1,9})?(ms|s|m|h)){1,2}$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_FULL = re.compile(DURATION_REGEX)


class DurationError(ValueError):
    """A string that is not a duration like ``90s``, ``5m`` or ``1h30m``."""


def parse_duration(text: str) -> float:
    """Return the duration in seconds."""
    if not isinstance(text, str) or not _FULL.match(text):
        raise DurationError(
            f"{text!r} is not a duration: use a number and a unit (ms, s, m, h)"
            ", e.g. 90s, 5m, 1h30m"
        )
    return sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest Go-style string for a whole number of seconds (fractions as ms)."""
    if seconds < 0:
        raise DurationError(f"negative duration: {seconds}")
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    out += f"{secs}s" if secs or not out else ""
    return out
