"""``GET /stats``: the per-service load figures the operator's autoscaler reads.

The contract (fields, keys, ``since`` and ``wait``, epochs and cursors) is
``glowplug.kube.stats``, shared with the reader. ``StatsFeed`` numbers changes: each
time a service's figures differ from what it last published, the cursor moves on and
the service is stamped with it, so "what changed after cursor c" is the services
stamped after c, newest last.

What it looks at, so that an idle activator does no work per service: a service the
request path touched (``touch``: a request arrived at it or left it), the services it
last published as busy (in flight, queued or waking: those change without a request,
when a wake ends), and every service once per ``SWEEP_EVERY`` seconds (a safety net for
a change no hook reported, and how a deleted service's zeros are found).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from glowplug.activator.services import Route, Services
from glowplug.kube.stats import ServiceStats, document, parse_since

# A sweep of every service at most this often (only while someone reads /stats).
SWEEP_EVERY = 5.0
# While a ``since`` request waits, the busy services are looked at this often.
RECHECK_EVERY = 0.5

# The last field: inputs computed per API key, sorted (None: no API keys in use).
Computed = tuple[tuple[str, int], ...] | None
Signature = tuple[int, int, bool, float | None, float | None, Computed]
IDLE: Signature = (0, 0, False, None, None, None)


def signature(route: Route, keyed: bool = False) -> Signature:
    """``keyed``: API keys are in use, so the service reports ``computedInputs`` (empty
    until a key's input was computed): the operator's attribution starts from it."""
    state = route.state
    computed = tuple(sorted(route.computed.items())) if keyed or route.computed else None
    return (
        state.inflight,
        state.queued,
        state.waking,
        state.last_finished,
        state.first_response_after_wake,
        computed,
    )


def _stats(key: str, sig: Signature) -> ServiceStats:
    namespace, _sep, name = key.partition("/")
    computed = None if sig[5] is None else dict(sig[5])
    return ServiceStats(namespace, name, sig[0], sig[1], sig[2], sig[3], sig[4], computed)


class StatsFeed:
    """The activator's side of ``/stats``: full reads, and changes after a cursor."""

    def __init__(
        self,
        services: Services,
        activator: str,
        clock: Callable[[], float] = time.monotonic,
        keyed: Callable[[], bool] = lambda: False,
    ) -> None:
        self.services = services
        self.activator = activator
        self.clock = clock
        self.keyed = keyed  # whether API keys are in use (computedInputs reported)
        self.epoch = uuid.uuid4().hex[:16]  # this process: a restart forces a full read
        self.cursor = 0
        self.published: dict[str, Signature] = {}  # what was last published (not IDLE)
        self.stamps: OrderedDict[str, int] = OrderedDict()  # key -> cursor, oldest first
        self.floor = 0  # cursors below this cannot be answered with changes (trimmed)
        self.dirty: set[str] = set()
        self.busy: set[str] = set()
        self.last_sweep = -SWEEP_EVERY
        self.sweeps = 0  # full sweeps made (tests, benchmarks)
        self.closing = False
        self._waiters: set[asyncio.Event] = set()

    # --- hooks ---------------------------------------------------------------------------

    def touch(self, key: str) -> None:
        """Something about ``key`` may have changed (the request path calls this)."""
        self.dirty.add(key)
        for ev in self._waiters:
            ev.set()

    def close(self) -> None:
        """Answer every waiting request now (the activator is shutting down)."""
        self.closing = True
        for ev in self._waiters:
            ev.set()

    # --- numbering changes ---------------------------------------------------------------

    def collect(self, *, sweep: bool = False) -> None:
        """Stamp every service whose figures changed since they were last published."""
        now = self.clock()
        routes = self.services.routes
        if sweep or now - self.last_sweep >= SWEEP_EVERY:
            self.last_sweep = now
            self.sweeps += 1
            keys: set[str] | dict[str, Any] = routes.keys() | self.published.keys()
        else:
            keys = self.dirty | self.busy
        self.dirty = set()
        keyed = self.keyed()
        for key in keys:
            route = routes.get(key)
            sig = IDLE if route is None else signature(route, keyed)
            if sig == self.published.get(key, IDLE):
                continue
            self.cursor += 1
            self.stamps[key] = self.cursor
            self.stamps.move_to_end(key)
            if sig == IDLE:
                self.published.pop(key, None)
            else:
                self.published[key] = sig
            if sig[0] or sig[1] or sig[2]:
                self.busy.add(key)
            else:
                self.busy.discard(key)
        self._trim()

    def _trim(self) -> None:
        # Deleted services keep a stamp (their zeros) until it is old and they are many.
        extra = len(self.stamps) - 2 * len(self.services.routes) - 1000
        while extra > 0:
            key, stamp = next(iter(self.stamps.items()))
            if key in self.services.routes:
                break  # the oldest is still routed: trim later
            del self.stamps[key]
            self.floor = stamp
            extra -= 1

    def changed_after(self, cursor: int) -> list[ServiceStats]:
        out: list[ServiceStats] = []
        for key in reversed(self.stamps):
            if self.stamps[key] <= cursor:
                break
            out.append(_stats(key, self.published.get(key, IDLE)))
        return out

    # --- answers -------------------------------------------------------------------------

    def full(self) -> dict[str, Any]:
        self.collect(sweep=True)
        return document(
            self.activator,
            (_stats(key, self.published.get(key, IDLE)) for key in self.services.routes),
            epoch=self.epoch,
            cursor=self.cursor,
        )

    async def answer(self, since: str | None, wait: float) -> dict[str, Any]:
        """The body for ``GET /stats?since=...&wait=...`` (see glowplug.kube.stats)."""
        asked = parse_since(since)
        if asked is None or asked[0] != self.epoch or not self.floor <= asked[1] <= self.cursor:
            return self.full()
        cursor = asked[1]
        deadline = self.clock() + wait
        while True:
            self.collect()
            changed = self.changed_after(cursor)
            left = deadline - self.clock()
            if changed or left <= 0 or self.closing:
                return document(
                    self.activator, changed, epoch=self.epoch, cursor=self.cursor, full=False
                )
            await self._wait(min(left, RECHECK_EVERY if self.busy else left))

    async def _wait(self, seconds: float) -> None:
        ev = asyncio.Event()
        if self.dirty:
            ev.set()
        self._waiters.add(ev)
        try:
            async with asyncio.timeout(seconds):
                await ev.wait()
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(ev)
