"""The operator's per-service Prometheus collectors (names and buckets from glowplug.metrics).

Counters only ever add what the ledger accounted since this process started: after a
restart they begin again at zero and ``increase()`` handles the reset. (Seeding them
with the cumulative totals from status would look like one huge increase.)
``glowplug_replicas`` and ``glowplug_service_info`` belong to ``handlers.py``.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

from glowplug import metrics as m
from glowplug.api.spec import EmbeddingService

_LEDGER_LABELS = ("namespace", "service", "gpu_type")

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


class ServiceSeries:
    """The labelled children of one service, created at zero when it appears."""

    def __init__(self, svc: EmbeddingService) -> None:
        self.namespace = svc.namespace
        self.name = svc.name
        self.gpu_type = svc.resources.gpu_label
        ledger = (svc.namespace, svc.name, self.gpu_type)
        self.gpu = GPU_SECONDS.labels(*ledger)
        self.baseline = BASELINE_GPU_SECONDS.labels(*ledger)
        GPU_PRICE.labels(*ledger).set(svc.cost.gpu_hourly_price)
        for outcome in ("ready", "failed"):
            WAKES.labels(svc.namespace, svc.name, outcome)
        WAKE_DURATION.labels(svc.namespace, svc.name)
        for phase in m.WAKE_PHASE_LABELS:
            WAKE_PHASE_DURATION.labels(svc.namespace, svc.name, phase)
        self.keys: set[str] = set()  # attributed keys: their children go with the service

    def attribute(self, seconds_by_key: dict[str, float]) -> None:
        for key, seconds in seconds_by_key.items():
            self.keys.add(key)
            GPU_SECONDS_ATTRIBUTED.labels(self.namespace, self.name, key).inc(seconds)

    def price(self, dollars_per_gpu_hour: float) -> None:
        GPU_PRICE.labels(self.namespace, self.name, self.gpu_type).set(dollars_per_gpu_hour)

    def wake(self, outcome: str, seconds: float | None = None) -> None:
        WAKES.labels(self.namespace, self.name, outcome).inc()
        if seconds is not None:
            WAKE_DURATION.labels(self.namespace, self.name).observe(seconds)

    def phase(self, phase: str, seconds: float) -> None:
        """One wake's time in one phase (``glowplug.metrics.WAKE_PHASE_LABELS``)."""
        WAKE_PHASE_DURATION.labels(self.namespace, self.name, phase).observe(seconds)

    def remove(self) -> None:
        """Drop every child of this service (it was deleted)."""
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
