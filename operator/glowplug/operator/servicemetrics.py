"""The operator's per-service Prometheus collectors (names and buckets from glowplug.metrics).

Counters only ever add what the ledger accounted since this process started: after a
restart they begin again at zero and ``increase()`` handles the reset. (Seeding them
with the cumulative totals from status would look like one huge increase.)

The ledger counters are exact at each scrape, also for a service whose loop rests at
zero (it ticks only on events, up to 5 minutes apart): a collector registered ahead of
them (``LedgerSync``) first adds, for every service, what its ledger's rates accrued
since the ledger's time (``ledger.Rates``: the baseline keeps growing at zero). The
next advance of the ledger adds only what that did not cover, so the counters never go
backwards and count each GPU-second once.
``glowplug_replicas`` and ``glowplug_service_info`` belong to ``handlers.py``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from glowplug import metrics as m
from glowplug.api.spec import EmbeddingService
from glowplug.operator.ledger import Delta, Rates

_LEDGER_LABELS = ("namespace", "service", "gpu_type")


class LedgerSync:
    """A collector that exports nothing: collected before the ledger counters (the
    registry collects in registration order, and this module registers it first), it
    brings every live service's counters up to the scrape's time."""

    def __init__(self) -> None:
        self.series: weakref.WeakSet[ServiceSeries] = weakref.WeakSet()

    def collect(self) -> Iterator[Any]:
        for series in list(self.series):
            series.sync()
        return iter(())

    def describe(self) -> list[Any]:
        return []


LEDGER_SYNC = LedgerSync()
REGISTRY.register(LEDGER_SYNC)

GPU_SECONDS = Counter(
    m.GPU_SECONDS_TOTAL,
    "GPU-seconds held by the service's pods (bound to a node until gone)",
    _LEDGER_LABELS,
)
BASELINE_GPU_SECONDS = Counter(
    m.BASELINE_GPU_SECONDS_TOTAL,
    "GPU-seconds max(replicas, cost.baselineReplicas) always-on replicas would hold",
    _LEDGER_LABELS,
)
GPU_PRICE = Gauge(m.GPU_HOURLY_PRICE, "cost.gpuHourlyPrice: dollars per GPU-hour", _LEDGER_LABELS)
WAKE_DURATION = Histogram(
    m.WAKE_DURATION,
    "Seconds from raising replicas from zero to the first ready pod",
    ("namespace", "service"),
    buckets=m.WAKE_BUCKETS,
)
WAKE_PHASE_DURATION = Histogram(
    m.WAKE_PHASE_DURATION,
    "Seconds a wake spent in each phase: waiting for a node, pulling the image, starting"
    " the engine, and from the first ready pod to the first response",
    ("namespace", "service", "phase"),
    buckets=m.WAKE_PHASE_BUCKETS,
)
GPU_SECONDS_ATTRIBUTED = Counter(
    m.GPU_SECONDS_ATTRIBUTED_TOTAL,
    "GPU-seconds split by each API key's share of the inputs computed for it"
    " (docs/cost-model.md, Attribution)",
    ("namespace", "service", "key"),
)
WAKES = Counter(
    m.WAKES_TOTAL, "Wakes by outcome (ready or failed)", ("namespace", "service", "outcome")
)
STATS_ERRORS = Counter(
    m.AUTOSCALER_STATS_ERRORS, "Activator /stats reads that failed", ("activator",)
)
TICKS = Counter(m.AUTOSCALER_TICKS, "Service loop ticks, all services")
TIMERS = Gauge(m.AUTOSCALER_TIMERS, "Service loop timers pending (services with one)")


class ServiceSeries:
    """The labelled children of one service, created at zero when it appears."""

    def __init__(self, svc: EmbeddingService, clock: Callable[[], float] = time.time) -> None:
        self.namespace = svc.namespace
        self.name = svc.name
        self.gpu_type = svc.resources.gpu_label
        self.clock = clock
        ledger = (svc.namespace, svc.name, self.gpu_type)
        self.gpu = GPU_SECONDS.labels(*ledger)
        self.baseline = BASELINE_GPU_SECONDS.labels(*ledger)
        # What the ledger accounted since this series began, up to ``as_of``, the rates
        # from then on, and what the counters export (the scrape thread reads these).
        self._lock = threading.Lock()
        self._counted = (0.0, 0.0)
        self._exported = (0.0, 0.0)
        self._as_of = 0.0
        self._rates: Rates | None = None
        LEDGER_SYNC.series.add(self)
        GPU_PRICE.labels(*ledger).set(svc.cost.gpu_hourly_price)
        for outcome in ("ready", "failed"):
            WAKES.labels(svc.namespace, svc.name, outcome)
        # The wake histograms (about 90 series) appear when the service first wakes, at
        # zero, before the wake's own observation: a service that never woke exports its
        # counters only (10,000 idle services: about 60,000 series, not a million).
        self.woke = False
        self.keys: set[str] = set()  # attributed keys: their children go with the service

    def attribute(self, seconds_by_key: dict[str, float]) -> None:
        for key, seconds in seconds_by_key.items():
            self.keys.add(key)
            GPU_SECONDS_ATTRIBUTED.labels(self.namespace, self.name, key).inc(seconds)

    def accrue(self, delta: Delta, as_of: float, rates: Rates | None) -> None:
        """What one advance of the ledger accounted, up to ``as_of``; ``rates`` from then on."""
        with self._lock:
            gpu, base = self._counted
            self._counted = (gpu + delta.gpu_seconds, base + delta.baseline_gpu_seconds)
            self._as_of, self._rates = as_of, rates
            self._export(self._counted)

    def sync(self) -> None:
        """The counters as of now: the accounted totals plus what the rates accrued since."""
        with self._lock:
            rates, elapsed = self._rates, max(0.0, self.clock() - self._as_of)
            if rates is None:
                return
            gpu, base = self._counted
            self._export((gpu + rates.gpus * elapsed, base + rates.baseline_gpus * elapsed))

    def _export(self, target: tuple[float, float]) -> None:
        # Only ever up: a ledger that accounts less than was extrapolated (the baseline
        # lowered by a spec edit) is caught up with, not subtracted.
        counters = (self.gpu, self.baseline)
        for counter, want, have in zip(counters, target, self._exported, strict=True):
            if want > have:
                counter.inc(want - have)
        self._exported = (
            max(target[0], self._exported[0]),
            max(target[1], self._exported[1]),
        )

    def price(self, dollars_per_gpu_hour: float) -> None:
        GPU_PRICE.labels(self.namespace, self.name, self.gpu_type).set(dollars_per_gpu_hour)

    def wake_began(self) -> None:
        """Create the wake histograms' children at zero (a wake has begun)."""
        if not self.woke:
            self.woke = True
            WAKE_DURATION.labels(self.namespace, self.name)
            for phase in m.WAKE_PHASE_LABELS:
                WAKE_PHASE_DURATION.labels(self.namespace, self.name, phase)

    def wake(self, outcome: str, seconds: float | None = None) -> None:
        WAKES.labels(self.namespace, self.name, outcome).inc()
        if seconds is not None:
            WAKE_DURATION.labels(self.namespace, self.name).observe(seconds)

    def phase(self, phase: str, seconds: float) -> None:
        """One wake's time in one phase (``glowplug.metrics.WAKE_PHASE_LABELS``)."""
        WAKE_PHASE_DURATION.labels(self.namespace, self.name, phase).observe(seconds)

    def stop(self) -> None:
        """The service's loop stopped without the service going (this replica paused by
        a peer, or shutting down): the counters stay where the ledger last accounted and
        stop extrapolating. The replica that takes over accounts from status' checkpoint
        on; a standby whose series kept accruing the baseline would count it twice (seen
        in the Helm suite with two operator replicas: saved 291 GPU-s against 83)."""
        LEDGER_SYNC.series.discard(self)
        with self._lock:
            self._rates = None

    def remove(self) -> None:
        """Drop every child of this service (it was deleted)."""
        LEDGER_SYNC.series.discard(self)
        ledger = (self.namespace, self.name, self.gpu_type)
        for collector, labels in (
            (GPU_SECONDS, ledger),
            (BASELINE_GPU_SECONDS, ledger),
            (GPU_PRICE, ledger),
            (WAKES, (self.namespace, self.name, "ready")),
            (WAKES, (self.namespace, self.name, "failed")),
            (WAKE_DURATION, (self.namespace, self.name)),
            *((WAKE_PHASE_DURATION, (self.namespace, self.name, p)) for p in m.WAKE_PHASE_LABELS),
            *((GPU_SECONDS_ATTRIBUTED, (self.namespace, self.name, k)) for k in self.keys),
        ):
            with contextlib.suppress(KeyError):
                collector.remove(*labels)
