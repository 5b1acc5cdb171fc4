"""RFC 3339 timestamps as Kubernetes writes them, to and from unix seconds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def format_time(when: float) -> str:
    """Unix seconds as RFC 3339 UTC with microseconds (status fields keep sub-second time)."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339(now: datetime | None = None) -> str:
    """RFC 3339 in UTC with a Z, seconds precision (conditions' lastTransitionTime)."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> float | None:
    """An RFC 3339 string (or a datetime, as kubernetes-asyncio returns) as unix seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
