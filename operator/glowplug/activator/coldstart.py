"""What held clients learn about a wake: headers, the phase reached, Retry-After.

- A response that waited for a wake (no ready pod when it arrived) carries
  ``X-Glowplug-Cold-Start: true`` and ``X-Glowplug-Wait-Seconds`` (how long it was held),
  as the KEDA HTTP add-on's interceptor marks cold starts with ``X-KEDA-HTTP-Cold-Start``.
- 503/504 answers during a wake name the phase the wake reached, read from the
  operator's ``status.wake`` (phase and what it waits for).
- ``Retry-After`` on those answers comes from this service's observed wake time
  (``status.lastWakeSeconds``): the rest of a typical wake, not a constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COLD_START_HEADER = "X-Glowplug-Cold-Start"
WAIT_SECONDS_HEADER = "X-Glowplug-Wait-Seconds"
# Without any observed wake: a GPU cold start takes tens of seconds at least.
DEFAULT_RETRY_AFTER = 30
MAX_RETRY_AFTER = 600


@dataclass(frozen=True)
class WakeInfo:
    """The operator's view of the service's wake, from its status."""

    phase: str = ""  # status.wake.phase while a wake is in progress
    message: str = ""
    last_wake_seconds: float | None = None  # status.lastWakeSeconds

    def describe(self) -> str:
        """``; the wake reached <phase>: <message>`` or "" when nothing is known."""
        if not self.phase:
            return ""
        return f"; the wake reached {self.phase}" + (f": {self.message}" if self.message else "")

    def retry_after(self, elapsed: float) -> str:
        """Seconds until a wake like the last one would be done (at least 1)."""
        typical = self.last_wake_seconds
        if typical is None or typical <= 0:
            return str(DEFAULT_RETRY_AFTER)
        rest = typical - max(0.0, elapsed)
        return str(min(MAX_RETRY_AFTER, max(1, math.ceil(rest))))


def wake_info(obj: Mapping[str, Any]) -> WakeInfo:
    status = obj.get("status") or {}
    wake = status.get("wake") if isinstance(status.get("wake"), Mapping) else {}
    last = status.get("lastWakeSeconds")
    try:
        last_s = float(last) if last is not None else None
    except (TypeError, ValueError):
        last_s = None
    return WakeInfo(
        phase=str((wake or {}).get("phase") or ""),
        message=str((wake or {}).get("message") or ""),
        last_wake_seconds=last_s,
    )


def cold_start_headers(waited: float) -> dict[str, str]:
    return {COLD_START_HEADER: "true", WAIT_SECONDS_HEADER: f"{waited:.3f}"}


__all__ = [
    "COLD_START_HEADER",
    "WAIT_SECONDS_HEADER",
    "WakeInfo",
    "cold_start_headers",
    "wake_info",
]
