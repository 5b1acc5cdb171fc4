"""The activator's Prometheus collectors, built from the names in ``glowplug.metrics``.

Each ``Metrics`` owns its own ``CollectorRegistry`` (several activators can live in one
test process). Per-service children are created at zero when a service appears, so a
service that was never called still shows up, and cached in ``ServiceMetrics`` so the
hot path does no label lookups.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from glowplug import metrics as m

PATHS = ("cold", "warm", "cache")  # cache: answered wholly from the embedding cache
REJECT_REASONS = (
    "queue_full",
    "activation_timeout",
    "wake_failed",
    "upstream_error",
    "draining",
    "service_deleted",
)
WAKE_OUTCOMES = ("ready", "failed", "error")
CACHE_TIERS = ("memory", "shared")
_SVC = m.SERVICE_LABELS
NO_KEY = "none"  # the key label of requests without a valid key


class ServiceMetrics:
    """The children of one service, created once."""

    def __init__(self, parent: Metrics, namespace: str, service: str) -> None:
        self._parent = parent
        self._labels = (namespace, service)
        self._requests: dict[tuple[int, str], Counter] = {}
        for path in PATHS:
            self.requests(200, path)
        self.duration = {p: parent.request_duration.labels(namespace, service, p) for p in PATHS}
        self.overhead = parent.overhead.labels(namespace, service)
        self.queue_wait = parent.queue_wait.labels(namespace, service)
        self.embeddings = parent.embeddings.labels(namespace, service)
        self.rejected = {r: parent.rejected.labels(namespace, service, r) for r in REJECT_REASONS}
        self.wakes = {o: parent.wakes.labels(namespace, service, o) for o in WAKE_OUTCOMES}
        self.wake_duration = parent.wake_duration.labels(namespace, service)
        self.queued = parent.queued.labels(namespace, service)
        self.inflight = parent.inflight.labels(namespace, service)
        self.cache_hits = {t: parent.cache_hits.labels(namespace, service, t) for t in CACHE_TIERS}
        self.cache_misses = parent.cache_misses.labels(namespace, service)
        self.cache_bytes = parent.cache_bytes.labels(namespace, service)
        self.cache_served_at_zero = parent.cache_served_at_zero.labels(namespace, service)
        self.cache_wakes_avoided = parent.cache_wakes_avoided.labels(namespace, service)

    def requests(self, code: int, path: str) -> Counter:
        key = (code, path)
        child = self._requests.get(key)
        if child is None:
            child = self._parent.requests.labels(*self._labels, str(code), path)
            self._requests[key] = child
        return child

    def bind_gauges(self, queued: Callable[[], float], inflight: Callable[[], float]) -> None:
        """Gauges read the hold queue at scrape time: nothing to update per request."""
        self.queued.set_function(queued)
        self.inflight.set_function(inflight)

    def bind_cache_bytes(self, read: Callable[[], float]) -> None:
        self.cache_bytes.set_function(read)

    def remove(self) -> None:
        p, (ns, svc) = self._parent, self._labels
        for t in CACHE_TIERS:
            p.cache_hits.remove(ns, svc, t)
        for cc in (p.cache_misses, p.cache_bytes, p.cache_served_at_zero, p.cache_wakes_avoided):
            cc.remove(ns, svc)
        for code, path in self._requests:
            p.requests.remove(ns, svc, str(code), path)
        for path in PATHS:
            p.request_duration.remove(ns, svc, path)
        for c in (p.overhead, p.queue_wait, p.embeddings, p.wake_duration, p.queued, p.inflight):
            c.remove(ns, svc)
        for r in REJECT_REASONS:
            p.rejected.remove(ns, svc, r)
        for o in WAKE_OUTCOMES:
            p.wakes.remove(ns, svc, o)


class KeyMetrics:
    """The children of one API key, created on first use (keys are few)."""

    def __init__(self, parent: Metrics, ref: str) -> None:
        self._parent = parent
        self.ref = ref
        self.inputs = parent.key_inputs.labels(ref)
        self._requests: dict[int, Counter] = {}
        self._rejected: dict[str, Counter] = {}

    def requests(self, code: int) -> Counter:
        child = self._requests.get(code)
        if child is None:
            child = self._requests[code] = self._parent.key_requests.labels(self.ref, str(code))
        return child

    def rejected(self, reason: str) -> Counter:
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self._parent.key_rejected.labels(self.ref, reason)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            m.REQUESTS_TOTAL,
            "Requests answered, by HTTP code and path (cold: waited for a wake; warm: did not)",
            (*_SVC, "code", "path"),
            registry=r,
        )
        self.request_duration = Histogram(
            m.REQUEST_DURATION,
            "Time from request arrival to the last response byte, including any hold",
            (*_SVC, "path"),
            buckets=m.REQUEST_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            m.ACTIVATOR_OVERHEAD,
            "Latency the activator adds: total time minus queue wait minus upstream time",
            _SVC,
            buckets=m.OVERHEAD_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            m.QUEUE_WAIT,
            "Time requests waited in the hold queue (for a wake or a free slot)",
            _SVC,
            buckets=m.QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.queued = Gauge(
            m.QUEUED_REQUESTS, "Requests waiting in the hold queue", _SVC, registry=r
        )
        self.inflight = Gauge(
            m.INFLIGHT_REQUESTS, "Requests sent to a backend and not yet answered", _SVC, registry=r
        )
        self.embeddings = Counter(
            m.EMBEDDINGS_TOTAL, "Inputs embedded (successful requests)", _SVC, registry=r
        )
        self.wakes = Counter(
            m.ACTIVATOR_WAKES_TOTAL,
            "Wakes this activator triggered, by outcome (ready, failed, error)",
            (*_SVC, "outcome"),
            registry=r,
        )
        self.wake_duration = Histogram(
            m.ACTIVATOR_WAKE_DURATION,
            "Time from a wake's trigger to the first ready endpoint",
            _SVC,
            buckets=m.WAKE_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            m.REJECTED_TOTAL,
            "Requests refused or failed by the activator, by reason",
            (*_SVC, "reason"),
            registry=r,
        )

        self.cache_hits = Counter(
            m.CACHE_HITS_TOTAL,
            "Inputs answered from the embedding cache, by tier (memory, shared)",
            (*_SVC, "tier"),
            registry=r,
        )
        self.cache_misses = Counter(
            m.CACHE_MISSES_TOTAL,
            "Inputs looked up in the embedding cache and sent to the engine",
            _SVC,
            registry=r,
        )
        self.cache_bytes = Gauge(
            m.CACHE_BYTES,
            "Bytes held by this replica's in-memory embedding cache",
            _SVC,
            registry=r,
        )
        self.cache_served_at_zero = Counter(
            m.CACHE_SERVED_AT_ZERO_TOTAL,
            "Requests answered wholly from the cache while no replica was ready",
            _SVC,
            registry=r,
        )
        self.cache_wakes_avoided = Counter(
            m.CACHE_WAKES_AVOIDED_TOTAL,
            "Wakes the requests answered from the cache at zero would have caused",
            _SVC,
            registry=r,
        )
        self.cache_shared_errors = Counter(
            m.CACHE_SHARED_ERRORS_TOTAL,
            "Calls to the shared (Redis) cache that failed or timed out",
            registry=r,
        )
        self.key_requests = Counter(
            m.KEY_REQUESTS_TOTAL,
            "Embeddings requests answered per API key (its Secret), by HTTP code",
            ("key", "code"),
            registry=r,
        )
        self.key_inputs = Counter(
            m.KEY_INPUTS_TOTAL, "Inputs embedded per API key (its Secret)", ("key",), registry=r
        )
        self.key_rejected = Counter(
            m.KEY_REJECTED_TOTAL,
            "Requests refused per API key (its Secret; none: no valid key), by reason",
            ("key", "reason"),
            registry=r,
        )
        self._keys: dict[str, KeyMetrics] = {}

    def key(self, ref: str | None) -> KeyMetrics:
        """The children of one key (``None``: requests without a valid key)."""
        name = ref or NO_KEY
        km = self._keys.get(name)
        if km is None:
            km = self._keys[name] = KeyMetrics(self, name)
        return km

    def service(self, namespace: str, service: str) -> ServiceMetrics:
        return ServiceMetrics(self, namespace, service)

    def render(self) -> bytes:
        return generate_latest(self.registry)
