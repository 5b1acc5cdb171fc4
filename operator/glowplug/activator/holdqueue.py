"""Per-service hold queue: backends with per-pod slots, a bounded FIFO of waiters, the wake.

All state lives on the event loop thread and every check-and-act runs without an
``await`` in between, so a wake-up cannot be lost: a waiter is enqueued in the same
step that found no free slot, and every event that can free a slot (a release, new
endpoints, a limit change, a cool-down ending) runs ``_dispatch``, which hands slots to
waiters directly (FIFO, one slot per waiter, never the whole backlog onto one pod).

``epoch`` counts those events; it is exposed for tests and debugging.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable

from glowplug.activator.endpoints import Failure

# A backend that refused a connection is skipped this long (unless nothing else is left).
COOLDOWN_SECONDS = 0.5


class QueueFull(Exception):
    """More than ``maxQueuedRequests`` are already waiting."""


class HoldTimeout(Exception):
    """No slot became free before the request's activation deadline."""


class ServiceFailed(Exception):
    """The service cannot become ready (ImagePullBackOff, CrashLoopBackOff, ...)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class ServiceGone(Exception):
    """The EmbeddingService was deleted while the request waited."""


class Backend:
    """One pod address and the requests in flight on it."""

    __slots__ = ("address", "cooldown_until", "inflight", "ready")

    def __init__(self, address: str) -> None:
        self.address = address
        self.inflight = 0
        self.ready = True
        self.cooldown_until = 0.0

    def __repr__(self) -> str:
        return f"Backend({self.address}, inflight={self.inflight}, ready={self.ready})"


class ServiceState:
    """The hold queue of one EmbeddingService."""

    def __init__(
        self,
        namespace: str,
        name: str,
        *,
        limit: int,
        max_queue: int,
        replicas: int,
        seen_version: str = "",
        on_wake: Callable[[ServiceState], None] | None = None,
        on_ready: Callable[[ServiceState, float], None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.limit = max(1, limit)
        self.max_queue = max(0, max_queue)
        self.replicas = replicas  # spec.replicas as last seen (or raised by our own wake)
        # The resourceVersion of the object the watch last delivered, with ``replicas``:
        # the wake writes with it as its precondition before it reads (kube.scale).
        self.seen_version = seen_version
        self._on_wake = on_wake
        self._on_ready = on_ready
        self.backends: dict[str, Backend] = {}  # includes not-ready ones still serving
        self._ready: list[Backend] = []
        self.waiters: deque[asyncio.Future[Backend]] = deque()
        self.inflight = 0
        self.epoch = 0
        self.failure: Failure | None = None
        self.wake_started: float | None = None  # monotonic, while a wake is in progress
        self.wake_pending = False  # a wake task is running
        self.last_finished: float | None = None  # unix time of the last completed request
        self.gone = False
        # Unix time of the first answer to a request that waited for the last wake (the
        # operator's FirstResponse phase, through /stats); set by the request path.
        self.first_response_after_wake: float | None = None
        self.awaiting_first_response = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # monotonic time the timer fires at
        # Called when a request takes a slot or joins the queue (after the count
        # changed): /metrics reads the queue gauges only of services that had one.
        self.on_activity: Callable[[], None] | None = None
        # Called when has_ready flips (the /v1/models listing shows it).
        self.on_ready_change: Callable[[], None] | None = None

    # --- what the request path calls --------------------------------------------------

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def has_ready(self) -> bool:
        return bool(self._ready)

    @property
    def queued(self) -> int:
        return len(self.waiters)

    @property
    def waking(self) -> bool:
        return self.wake_started is not None or (bool(self.waiters) and not self._ready)

    def try_acquire(self) -> Backend | None:
        """A slot now, without waiting, unless others are already waiting (FIFO)."""
        if self.waiters:
            return None
        b = self._pick(time.monotonic())
        if b is not None:
            b.inflight += 1
            self.inflight += 1
            if self.on_activity is not None:
                self.on_activity()
        return b

    async def acquire(self, wait_s: float) -> Backend:
        """A slot on the least-loaded ready backend, waiting up to ``wait_s`` seconds."""
        b = self.try_acquire()
        if b is not None:
            return b
        if self.gone:
            raise ServiceGone()
        if self.failure is not None and not self._ready:
            raise ServiceFailed(self.failure)
        if len(self.waiters) >= self.max_queue:
            raise QueueFull()
        fut: asyncio.Future[Backend] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        if self.on_activity is not None:
            self.on_activity()
        self.maybe_wake()
        try:
            async with asyncio.timeout(wait_s):
                return await fut
        except TimeoutError:
            self._abandon(fut)
            raise HoldTimeout() from None
        except asyncio.CancelledError:
            # The client went away: free its place (or the slot it was just given).
            self._abandon(fut)
            raise

    def _abandon(self, fut: asyncio.Future[Backend]) -> None:
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            # Handed a slot in the same instant it gave up: give the slot back.
            self.release(fut.result(), completed=False)
            return
        if not fut.done():
            fut.cancel()
        with contextlib.suppress(ValueError):
            self.waiters.remove(fut)

    def release(self, b: Backend, *, completed: bool = True) -> None:
        """Give a slot back; ``completed`` when a request finished (for the idle clock)."""
        b.inflight -= 1
        self.inflight -= 1
        if completed:
            self.last_finished = time.time()
        if not b.ready and b.inflight == 0 and self.backends.get(b.address) is b:
            del self.backends[b.address]
        if self.waiters:
            self._dispatch()

    def answered_after_wait(self) -> None:
        """A request that waited was answered: the first one after a wake is recorded."""
        if self.awaiting_first_response:
            self.awaiting_first_response = False
            self.first_response_after_wake = time.time()

    def cool_down(self, b: Backend) -> None:
        """Skip a backend that refused a connection for a moment, and retry others."""
        b.cooldown_until = time.monotonic() + COOLDOWN_SECONDS
        self._arm_timer(b.cooldown_until)

    # --- what the sources (watches) call ----------------------------------------------

    def set_endpoints(self, addresses: Iterable[str]) -> None:
        wanted = set(addresses)
        had_ready = bool(self._ready)
        for addr, b in list(self.backends.items()):
            if addr not in wanted:
                b.ready = False
                if b.inflight == 0:
                    del self.backends[addr]
        for addr in wanted:
            known = self.backends.get(addr)
            if known is None:
                self.backends[addr] = Backend(addr)
            else:
                known.ready = True
                known.cooldown_until = 0.0
        self._ready = [b for b in self.backends.values() if b.ready]
        self.epoch += 1
        if self._ready and not had_ready:
            if self.waiters:
                self.awaiting_first_response = True
            if self.wake_started is not None:
                started, self.wake_started = self.wake_started, None
                if self._on_ready is not None:
                    self._on_ready(self, time.monotonic() - started)
            self.replicas = max(self.replicas, 1)
        if bool(self._ready) != had_ready and self.on_ready_change is not None:
            self.on_ready_change()
        self._dispatch()
        self.maybe_wake()

    def configure(
        self, *, limit: int, max_queue: int, replicas: int, seen_version: str = ""
    ) -> None:
        self.limit = max(1, limit)
        self.max_queue = max(0, max_queue)
        self.replicas = replicas
        self.seen_version = seen_version
        self.epoch += 1
        self._dispatch()
        self.maybe_wake()

    def set_failure(self, failure: Failure | None) -> None:
        """Fail held requests when the service cannot become ready; later ones fail fast."""
        self.failure = failure
        self.epoch += 1
        if failure is not None and not self._ready:
            self.wake_started = None
            self._fail_waiters(ServiceFailed(failure))
        else:
            self.maybe_wake()

    def close(self) -> None:
        """The EmbeddingService was deleted."""
        self.gone = True
        self._fail_waiters(ServiceGone())
        if self._timer is not None:
            self._timer.cancel()

    # --- wake ---------------------------------------------------------------------------

    def maybe_wake(self) -> None:
        """Start a wake when requests wait, nothing is ready and the service is at zero."""
        if (
            self.waiters
            and not self._ready
            and self.replicas == 0
            and not self.wake_pending
            and self.failure is None
            and not self.gone
            and self._on_wake is not None
        ):
            self.wake_pending = True
            if self.wake_started is None:
                self.wake_started = time.monotonic()
            self._on_wake(self)

    def wake_done(self, *, raised: bool) -> None:
        """The waker finished; ``raised`` when spec.replicas is now >= 1."""
        self.wake_pending = False
        if raised:
            self.replicas = max(self.replicas, 1)
        elif not self.waiters:
            self.wake_started = None
        self.epoch += 1

    # --- internals ----------------------------------------------------------------------

    def _pick(self, now: float) -> Backend | None:
        """Least in-flight ready backend with a free slot; cooling-down ones are skipped
        (the cool-down timer dispatches again when it ends)."""
        best: Backend | None = None
        limit = self.limit
        for b in self._ready:
            n = b.inflight
            if n >= limit or b.cooldown_until > now:
                continue
            if best is None or n < best.inflight:
                best = b
                if n == 0:
                    break
        return best

    def _dispatch(self) -> None:
        now = time.monotonic()
        waiters = self.waiters
        while waiters:
            fut = waiters[0]
            if fut.done():
                waiters.popleft()
                continue
            b = self._pick(now)
            if b is None:
                break
            waiters.popleft()
            b.inflight += 1
            self.inflight += 1
            fut.set_result(b)

    def _fail_waiters(self, exc: Exception) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)
                # Mark retrieved: a waiter that already gave up never reads it.
                fut.exception()

    def _arm_timer(self, at: float) -> None:
        """Dispatch again at monotonic time ``at`` (a cool-down's end), or earlier.

        One timer, set for the earliest cool-down that ends; when it fires it re-arms for
        the earliest one still running (a second refusal inside the first cool-down ends
        later than the timer did: without the re-arm, waiters stalled until an unrelated
        event dispatched).
        """
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(loop.time() + max(0.0, at - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.epoch += 1
        self._dispatch()
        now = time.monotonic()
        pending = [b.cooldown_until for b in self._ready if b.cooldown_until > now]
        if pending and self.waiters:
            self._arm_timer(min(pending))
