"""An API outage, logged once when it starts and once when it ends.

While the API server is down (stopped, restarting, black-holed) every watch and every
per-service loop fails each second; logging each failure would bury the one line that
matters. One ``Outage`` per process is shared by its loops: the first failure logs a
warning, later ones are counted silently, the first success after them logs the
recovery with the outage's length and how many calls failed.
"""

from __future__ import annotations

import logging
import time

import aiohttp

# Answers of an API server that is starting or overloaded, not of a bad request.
UNAVAILABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class Unavailable(Exception):
    """The API server answered, but with "not now" (``UNAVAILABLE_STATUSES``)."""


def is_unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the API server could not be reached, did not answer in time,
    cut a response short, or said "not now" (as opposed to an answer we did not like:
    those are logged where they happen)."""
    # asyncio.TimeoutError is TimeoutError (Python 3.11+); ServerTimeoutError is both.
    if isinstance(err, Unavailable | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return True
    if isinstance(err, TimeoutError | OSError):
        return True
    status = getattr(err, "status", None)  # kubernetes_asyncio's ApiException
    return isinstance(status, int) and status in UNAVAILABLE_STATUSES


class Outage:
    """Shared by a process's loops, each naming itself by a key (a watch, a service).

    The outage starts with the first loop that fails and ends when every loop that
    failed has succeeded again: one loop getting through while the others still fail
    (a restarting API server answers some paths before others) is not the end.
    """

    def __init__(self, logger: logging.Logger, what: str = "the API server") -> None:
        self.logger = logger
        self.what = what
        self.since: float | None = None
        self.failures = 0
        self._failing: set[str] = set()

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, err: BaseException, key: str = "") -> None:
        self.failures += 1
        self._failing.add(key)
        if self.since is None:
            self.since = time.monotonic()
            self.logger.warning(
                "%s is unreachable (%s: %s); retrying, logged again when it answers",
                self.what,
                type(err).__name__,
                err or "no detail",
            )

    def ok(self, key: str = "") -> None:
        self._failing.discard(key)
        if self.since is not None and not self._failing:
            self.logger.warning(
                "%s answers again after %.1f s (%d failed calls meanwhile)",
                self.what,
                time.monotonic() - self.since,
                self.failures,
            )
            self.since = None
            self.failures = 0

    def forget(self, key: str) -> None:
        """A loop that ended (its service was deleted) no longer holds the outage open."""
        if key in self._failing:
            self.ok(key)


__all__ = ["UNAVAILABLE_STATUSES", "Outage", "Unavailable", "is_unreachable"]
