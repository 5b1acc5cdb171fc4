"""Timers: every service's next due time, owned by one task.

Each ``ServiceLoop`` tick ends by saying when the loop next needs to run with nothing
else happening (``ServiceLoop.next_due``: its idle deadline, the end of a scaleDownDelay
window, a pre-warm edge, a wake's poll or timeout, the next ledger checkpoint while GPUs
are held, the next tick while load is in flight) or that nothing is pending (None). The
daemon hands that to ``Timers.schedule``, and then waits only for a poke: an event
(``pokes``) or this scheduler when the time comes, whichever first. A service with
nothing pending has no entry, so N idle services cost no wake-up at all, and the
operator holds one sleeping task instead of N timers.

The heap holds (due, sequence, key); rescheduling a key leaves its old entry behind,
skipped when it surfaces (``due`` holds the one in force), so ``schedule`` is
O(log n) and never searches the heap.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


class Timers:
    """One task that fires ``on_due(namespace, name)`` at each service's due time."""

    def __init__(
        self,
        on_due: Callable[[str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.on_due = on_due
        self.clock = clock  # the loops' clock (wall time: their deadlines are unix times)
        self.due: dict[Key, float] = {}
        self.heap: list[tuple[float, int, Key]] = []
        self.fired = 0  # timers that came due (benchmarks)
        self._seq = 0
        self._changed = asyncio.Event()  # an earlier deadline than the one slept to
        self._task: asyncio.Task[None] | None = None

    def schedule(self, namespace: str, name: str, at: float | None) -> None:
        """Run the service's loop at ``at`` (unix time), or never on a timer (None)."""
        key = (namespace, name)
        if at is None:
            self.due.pop(key, None)  # its heap entry, if any, is skipped when it surfaces
            return
        if self.due.get(key) == at:
            return
        earliest = self.heap[0][0] if self.heap else None
        self.due[key] = at
        self._seq += 1
        heapq.heappush(self.heap, (at, self._seq, key))
        if len(self.heap) > 2 * len(self.due) + 64:
            # Many reschedules of far deadlines (busy services): drop the stale entries.
            self.heap = [(t, s, k) for t, s, k in self.heap if self.due.get(k) == t]
            heapq.heapify(self.heap)
        if earliest is None or at < earliest:
            self._changed.set()

    def cancel(self, namespace: str, name: str) -> None:
        self.schedule(namespace, name, None)

    def pending(self) -> int:
        return len(self.due)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="service timers")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        while True:
            self._changed.clear()
            now = self.clock()
            while self.heap:
                at, _seq, key = self.heap[0]
                if self.due.get(key) != at:
                    heapq.heappop(self.heap)  # rescheduled or cancelled since
                    continue
                if at > now:
                    break
                heapq.heappop(self.heap)
                del self.due[key]
                self.fired += 1
                try:
                    self.on_due(*key)
                except Exception:  # one bad callback must not stop every service's timers
                    log.exception("timer of %s/%s failed", *key)
            if self.heap:
                sleep = max(0.0, self.heap[0][0] - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), sleep)
            else:
                await self._changed.wait()


__all__ = ["Timers"]
