"""The operator's per-service Prometheus collectors (names and buckets from glowplug.metrics).

Counters only ever add what the ledger accounted since this process started: after a
restart they begin again at zero and ``increase()`` handles the reset. (Seeding them
with the cumulative totals from status would look like one huge increase.)

The ledger counters are exact at each scrape, also for a service whose loop rests at
zero (it ticks only on events, up to 5 minutes apart): before they are rendered,
``LedgerSync`` adds, for every service, what its ledger's rates accrued since the
ledger's time (``ledger.Rates``: the baseline keeps growing at zero). The
next advance of the ledger adds only what that did not cover, so the counters never go
backwards and count each GPU-second once.
``glowplug_replicas`` and ``glowplug_service_info`` are set by ``handlers.py``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    Counter,
    Gauge,
    generate_latest,
)

from glowplug import metrics as m
from glowplug.api.spec import EmbeddingService
from glowplug.exposition import Family, FamilyTable, HistogramTable, render
from glowplug.operator.ledger import Delta, Rates

_LEDGER_LABELS = ("namespace", "service", "gpu_type")


class LedgerSync:
    """Brings every live service's ledger counters up to the scrape's time (run before
    the counters are rendered)."""

    def __init__(self) -> None:
        self.series: weakref.WeakSet[ServiceSeries] = weakref.WeakSet()

    def sync(self) -> None:
        for series in list(self.series):
            series.sync()


LEDGER_SYNC = LedgerSync()

# Per-service families: glowplug.exposition tables (formatted once per child, not on
# every scrape); ``glowplug_replicas`` and ``glowplug_service_info`` too.
GPU_SECONDS = FamilyTable(
    Family(
        m.GPU_SECONDS_TOTAL,
        "counter",
        "GPU-seconds held by the service's pods (bound to a node until gone)",
        _LEDGER_LABELS,
    )
)
BASELINE_GPU_SECONDS = FamilyTable(
    Family(
        m.BASELINE_GPU_SECONDS_TOTAL,
        "counter",
        "GPU-seconds max(replicas, cost.baselineReplicas) always-on replicas would hold",
        _LEDGER_LABELS,
    )
)
GPU_PRICE = FamilyTable(
    Family(m.GPU_HOURLY_PRICE, "gauge", "cost.gpuHourlyPrice: dollars per GPU-hour", _LEDGER_LABELS)
)
GPU_SECONDS_ATTRIBUTED = FamilyTable(
    Family(
        m.GPU_SECONDS_ATTRIBUTED_TOTAL,
        "counter",
        "GPU-seconds split by each API key's share of the inputs computed for it"
        " (docs/cost-model.md, Attribution)",
        ("namespace", "service", "key"),
    )
)
WAKES = FamilyTable(
    Family(
        m.WAKES_TOTAL,
        "counter",
        "Wakes by outcome (ready or failed)",
        ("namespace", "service", "outcome"),
    )
)
REPLICAS = FamilyTable(
    Family(
        m.REPLICAS,
        "gauge",
        "Replicas of each EmbeddingService: desired (what the Deployment is asked for) and ready.",
        ("namespace", "service", "state"),
    )
)
SERVICE_INFO = FamilyTable(
    Family(
        m.SERVICE_INFO,
        "gauge",
        "One series per EmbeddingService, value 1, carrying its model, engine and GPU type.",
        ("namespace", "service", "model", "engine", "gpu_type"),
    )
)

# Histograms: only services that woke have them (about 90 series each).
WAKE_DURATION = HistogramTable(
    Family(
        m.WAKE_DURATION,
        "histogram",
        "Seconds from raising replicas from zero to the first ready pod",
        ("namespace", "service"),
    ),
    m.WAKE_BUCKETS,
)
WAKE_PHASE_DURATION = HistogramTable(
    Family(
        m.WAKE_PHASE_DURATION,
        "histogram",
        "Seconds a wake spent in each phase: waiting for a node, pulling the image, starting"
        " the engine, and from the first ready pod to the first response",
        ("namespace", "service", "phase"),
    ),
    m.WAKE_PHASE_BUCKETS,
)
PER_SERVICE: tuple[FamilyTable | HistogramTable, ...] = (
    GPU_SECONDS,
    BASELINE_GPU_SECONDS,
    GPU_PRICE,
    GPU_SECONDS_ATTRIBUTED,
    WAKES,
    REPLICAS,
    SERVICE_INFO,
    WAKE_DURATION,
    WAKE_PHASE_DURATION,
)

# The loop's own counters: prometheus_client.
STATS_ERRORS = Counter(
    m.AUTOSCALER_STATS_ERRORS, "Activator /stats reads that failed", ("activator",)
)
TICKS = Counter(m.AUTOSCALER_TICKS, "Service loop ticks, all services")
TIMERS = Gauge(m.AUTOSCALER_TIMERS, "Service loop timers pending (services with one)")


def exposition() -> bytes:
    """The operator's whole /metrics: the ledger counters brought up to now first."""
    LEDGER_SYNC.sync()
    return generate_latest(REGISTRY) + render(PER_SERVICE)


def serve(port: int, host: str = "") -> ThreadingHTTPServer:
    """/metrics on ``host:port`` (all addresses by default), served by daemon threads
    (a scrape renders off the event loop; ``server.shutdown()`` stops it)."""
    server = ThreadingHTTPServer((host, port), _MetricsHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class _MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = exposition()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not worth a log line


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
        # What the ledger accounted since this series began, up to ``as_of``, and the
        # rates from then on (the scrape thread reads these; the children hold what the
        # counters export).
        self._lock = threading.Lock()
        self._counted = (0.0, 0.0)
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
            self._export(*self._counted)

    def sync(self) -> None:
        """The counters as of now: the accounted totals plus what the rates accrued since."""
        with self._lock:
            rates = self._rates
            if rates is None:
                return
            elapsed = max(0.0, self.clock() - self._as_of)
            gpu, base = self._counted
            self._export(gpu + rates.gpus * elapsed, base + rates.baseline_gpus * elapsed)

    def _export(self, gpu: float, base: float) -> None:
        # Only ever up: a ledger that accounts less than was extrapolated (the baseline
        # lowered by a spec edit) is caught up with, not subtracted.
        if gpu > self.gpu.value:
            self.gpu.set(gpu)
        if base > self.baseline.value:
            self.baseline.set(base)

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
        ns, name = self.namespace, self.name
        ledger = (ns, name, self.gpu_type)
        for table in (GPU_SECONDS, BASELINE_GPU_SECONDS, GPU_PRICE):
            table.remove(*ledger)
        for outcome in ("ready", "failed"):
            WAKES.remove(ns, name, outcome)
        for key in self.keys:
            GPU_SECONDS_ATTRIBUTED.remove(ns, name, key)
        WAKE_DURATION.remove(ns, name)
        for phase in m.WAKE_PHASE_LABELS:
            WAKE_PHASE_DURATION.remove(ns, name, phase)
