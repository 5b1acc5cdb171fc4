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


def is_unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the API server could not be reached or did not answer in time
    (as opposed to an answer we did not like: those are logged where they happen)."""
    # asyncio.TimeoutError is TimeoutError (Python 3.11+); ServerTimeoutError is both.
    return isinstance(err, aiohttp.ClientConnectionError | TimeoutError | OSError)


class Outage:
    def __init__(self, logger: logging.Logger, what: str = "the API server") -> None:
        self.logger = logger
        self.what = what
        self.since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, err: BaseException) -> None:
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            self.logger.warning(
                "%s is unreachable (%s: %s); retrying, logged again when it answers",
                self.what,
                type(err).__name__,
                err or "no detail",
            )

    def ok(self) -> None:
        if self.since is not None:
            self.logger.warning(
                "%s answers again after %.1f s (%d failed calls meanwhile)",
                self.what,
                time.monotonic() - self.since,
                self.failures,
            )
            self.since = None
            self.failures = 0


__all__ = ["Outage", "is_unreachable"]
