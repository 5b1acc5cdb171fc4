"""The activator's Prometheus metrics, built from the names in ``glowplug.metrics``.

Two kinds of series, kept apart so that /metrics stays cheap with thousands of services:

- Per-service counters and gauges ({namespace, service, ...}): plain numbers in
  ``ServiceMetrics``, rendered by this module. Each service caches its rendered lines
  and renders them again only after a change, so a scrape of 10,000 idle services is a
  join of cached bytes, not 10,000 x N label formats (prometheus_client's
  ``generate_latest`` formats every sample on every scrape: 2,001 services took 2.2 s).
  Only the series a service can need from the start exist at zero (requests by path,
  embeddings, ready wakes, the two queue gauges; the cache's series only where
  ``spec.cache.enabled``); a rejection reason, an error code or a failed wake appears
  the first time it happens.
- Histograms: prometheus_client collectors. By default aggregated over services (no
  namespace/service label; ``request_duration`` keeps ``path``), because one
  per-service histogram is 14 to 20 series. ``per_service_histograms=True`` (activator
  flag ``--per-service-histograms``, chart value
  ``activator.metrics.perServiceHistograms``) labels them per service again, for the
  dashboard's per-service latency panels, at the old cost.

Each ``Metrics`` owns its own ``CollectorRegistry`` and service table (several
activators can live in one test process).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.registry import Collector

from glowplug import metrics as m
from glowplug.exposition import Family, label_text, value_text

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


def _family(name: str, type_: str, help_: str, *labels: str) -> Family:
    """A per-service family: namespace and service, then ``labels``."""
    return Family(name, type_, help_, (*_SVC, *labels))


REQUESTS = _family(
    m.REQUESTS_TOTAL,
    "counter",
    "Requests answered, by HTTP code and path (cold: waited for a wake; warm: did not)",
    "code",
    "path",
)
EMBEDDINGS = _family(m.EMBEDDINGS_TOTAL, "counter", "Inputs embedded (successful requests)")
WAKES = _family(
    m.ACTIVATOR_WAKES_TOTAL,
    "counter",
    "Wakes this activator triggered, by outcome (ready, failed, error)",
    "outcome",
)
REJECTED = _family(
    m.REJECTED_TOTAL, "counter", "Requests refused or failed by the activator, by reason", "reason"
)
QUEUED = _family(m.QUEUED_REQUESTS, "gauge", "Requests waiting in the hold queue")
INFLIGHT = _family(m.INFLIGHT_REQUESTS, "gauge", "Requests sent to a backend and not yet answered")
CACHE_HITS = _family(
    m.CACHE_HITS_TOTAL,
    "counter",
    "Inputs answered from the embedding cache, by tier (memory, shared)",
    "tier",
)
CACHE_MISSES = _family(
    m.CACHE_MISSES_TOTAL,
    "counter",
    "Inputs looked up in the embedding cache and sent to the engine",
)
CACHE_BYTES = _family(
    m.CACHE_BYTES, "gauge", "Bytes held by this replica's in-memory embedding cache"
)
CACHE_SERVED_AT_ZERO = _family(
    m.CACHE_SERVED_AT_ZERO_TOTAL,
    "counter",
    "Requests answered wholly from the cache while no replica was ready",
)
CACHE_WAKES_AVOIDED = _family(
    m.CACHE_WAKES_AVOIDED_TOTAL,
    "counter",
    "Wakes the requests answered from the cache at zero would have caused",
)
# Exposition order (each family's samples must form one group).
FAMILIES = (
    REQUESTS,
    EMBEDDINGS,
    WAKES,
    REJECTED,
    QUEUED,
    INFLIGHT,
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_BYTES,
    CACHE_SERVED_AT_ZERO,
    CACHE_WAKES_AVOIDED,
)
_INDEX = {f.name: i for i, f in enumerate(FAMILIES)}
_CACHE_IDX = _INDEX[CACHE_BYTES.name]
_WAKE_OUTCOMES = frozenset(WAKE_OUTCOMES)
_REJECT_REASONS = frozenset(REJECT_REASONS)
_CACHE_TIERS = frozenset(CACHE_TIERS)


class Count:
    """One per-service counter's value; ``inc`` queues its service for re-rendering."""

    __slots__ = ("_owner", "value")

    def __init__(self, owner: ServiceMetrics) -> None:
        self._owner = owner
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount
        self._owner.touch()


class ServiceMetrics:
    """The series of one service, created once; the hot path does no label lookups."""

    def __init__(
        self,
        parent: Metrics,
        namespace: str,
        service: str,
        *,
        cache: bool = False,
    ) -> None:
        self._parent = parent
        self.namespace, self.service = namespace, service
        self.key = (namespace, service)
        # (family index, extra label values) -> value; rendered in insertion order.
        self._counts: dict[tuple[int, tuple[str, ...]], Count] = {}
        self._gauges: dict[int, Callable[[], float]] = {}
        self._cache_bytes: Callable[[], float] = _zero
        self._requests: dict[tuple[int, str], Count] = {}
        for path in ("cold", "warm"):
            self.requests(200, path)
        self.embeddings = self._count(EMBEDDINGS)
        self.wakes = _Lazy(self, WAKES, _WAKE_OUTCOMES)
        self.wakes.create("ready")  # at zero: the first ready wake shows in increase()
        self.rejected = _Lazy(self, REJECTED, _REJECT_REASONS)
        self._gauges[_INDEX[QUEUED.name]] = _zero
        self._gauges[_INDEX[INFLIGHT.name]] = _zero
        self.cache_hits = _Lazy(self, CACHE_HITS, _CACHE_TIERS)
        self.cache_misses = _LazyOne(self, CACHE_MISSES)
        self.cache_served_at_zero = _LazyOne(self, CACHE_SERVED_AT_ZERO)
        self.cache_wakes_avoided = _LazyOne(self, CACHE_WAKES_AVOIDED)
        if cache:
            self.enable_cache()
        h = parent.histograms
        self.duration = h.durations(namespace, service)
        self.overhead = h.overhead(namespace, service)
        self.queue_wait = h.queue_wait(namespace, service)
        self.wake_duration = h.wake_duration(namespace, service)
        self.touch()

    def touch(self) -> None:
        """Render this service again at the next scrape (a value changed, or a request
        came in: the hold queue's gauges are read while it has any)."""
        pending = self._parent._pending
        if self.key not in pending:
            pending[self.key] = self

    def _count(self, family: Family, *labels: str) -> Count:
        key = (_INDEX[family.name], labels)
        c = self._counts.get(key)
        if c is None:
            c = self._counts[key] = Count(self)
            self.touch()
        return c

    def requests(self, code: int, path: str) -> Count:
        key = (code, path)
        c = self._requests.get(key)
        if c is None:
            c = self._requests[key] = self._count(REQUESTS, str(code), path)
        return c

    def enable_cache(self) -> None:
        """The cache's series, at zero (a service with ``spec.cache.enabled``)."""
        idx = _INDEX[CACHE_BYTES.name]
        if idx in self._gauges:
            return
        self.requests(200, "cache")
        for tier in CACHE_TIERS:
            self.cache_hits.create(tier)
        for one in (self.cache_misses, self.cache_served_at_zero, self.cache_wakes_avoided):
            one.get()
        self._gauges[idx] = self._cache_bytes
        self.touch()

    def bind_gauges(self, queued: Callable[[], float], inflight: Callable[[], float]) -> None:
        """Gauges read the hold queue at scrape time, while the service has requests
        (``touch`` on each one): nothing to update per request."""
        self._gauges[_INDEX[QUEUED.name]] = queued
        self._gauges[_INDEX[INFLIGHT.name]] = inflight
        self.touch()

    def bind_cache_bytes(self, read: Callable[[], float]) -> None:
        """The memory tier's bytes, shown once the service enables the cache."""
        self._cache_bytes = read
        idx = _INDEX[CACHE_BYTES.name]
        if idx in self._gauges:
            self._gauges[idx] = read
            self.touch()

    def remove(self) -> None:
        self._parent._remove(self)
        self._parent.histograms.remove(self.namespace, self.service)

    def render(self) -> tuple[list[bytes], bool]:
        """This service's lines per family, and whether a gauge is non-zero (a request
        in the queue or in flight: read it again at the next scrape). Runs in the render
        thread while the event loop may increment: the service left the pending set
        before its values were read, so a racing increment queues it again."""
        gauges = list(self._gauges.items())
        values = [read() for _, read in gauges]
        lines: list[list[str]] = [[] for _ in FAMILIES]
        svc = (self.namespace, self.service)
        for (idx, extra), c in list(self._counts.items()):
            lines[idx].append(_line(FAMILIES[idx], (*svc, *extra), c.value))
        for (idx, _read), v in zip(gauges, values, strict=True):
            lines[idx].append(_line(FAMILIES[idx], svc, v))
        # The cache's bytes stay while its entries do; only requests keep it live.
        live = any(v for (idx, _), v in zip(gauges, values, strict=True) if idx != _CACHE_IDX)
        return ["".join(ls).encode() for ls in lines], live


def _line(family: Family, values: tuple[str, ...], value: float) -> str:
    labels = label_text(zip(family.labels, values, strict=True))
    return f"{family.name}{labels} {value_text(value)}\n"


def _zero() -> float:
    return 0.0


class _Lazy:
    """Children of one labelled family, created on first use (``lazy["reason"]``)."""

    __slots__ = ("_allowed", "_children", "_family", "_owner")

    def __init__(self, owner: ServiceMetrics, family: Family, allowed: frozenset[str]) -> None:
        self._owner, self._family = owner, family
        self._allowed = allowed
        self._children: dict[str, Count] = {}

    def __getitem__(self, value: str) -> Count:
        return self.create(value)

    def create(self, value: str) -> Count:
        c = self._children.get(value)
        if c is None:
            if value not in self._allowed:
                raise KeyError(f"{self._family.name}: unknown label value {value!r}")
            c = self._children[value] = self._owner._count(self._family, value)
        return c

    def value(self, label: str) -> float:
        """The current value (0 for a child that does not exist yet)."""
        c = self._children.get(label)
        return c.value if c is not None else 0.0


class _LazyOne:
    """An unlabelled per-service counter created on first use."""

    __slots__ = ("_child", "_family", "_owner")

    def __init__(self, owner: ServiceMetrics, family: Family) -> None:
        self._owner, self._family = owner, family
        self._child: Count | None = None

    def get(self) -> Count:
        if self._child is None:
            self._child = self._owner._count(self._family)
        return self._child

    def inc(self, amount: float = 1.0) -> None:
        self.get().inc(amount)

    @property
    def value(self) -> float:
        return self._child.value if self._child is not None else 0.0


class Histograms:
    """The four latency histograms, aggregated or per service (``per_service``)."""

    def __init__(self, registry: CollectorRegistry, per_service: bool) -> None:
        self.per_service = per_service
        svc = _SVC if per_service else ()
        self._request_duration = Histogram(
            m.REQUEST_DURATION,
            "Time from request arrival to the last response byte, including any hold",
            (*svc, "path"),
            buckets=m.REQUEST_BUCKETS,
            registry=registry,
        )
        self._overhead = Histogram(
            m.ACTIVATOR_OVERHEAD,
            "Latency the activator adds: total time minus queue wait minus upstream time",
            svc,
            buckets=m.OVERHEAD_BUCKETS,
            registry=registry,
        )
        self._queue_wait = Histogram(
            m.QUEUE_WAIT,
            "Time requests waited in the hold queue (for a wake or a free slot)",
            svc,
            buckets=m.QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self._wake_duration = Histogram(
            m.ACTIVATOR_WAKE_DURATION,
            "Time from a wake's trigger to the first ready endpoint",
            svc,
            buckets=m.WAKE_BUCKETS,
            registry=registry,
        )

        self._shared_durations: Mapping[str, Histogram] = MappingProxyType(
            {p: self._request_duration.labels(p) for p in PATHS} if not per_service else {}
        )

    def collectors(self) -> tuple[Histogram, ...]:
        return (self._request_duration, self._overhead, self._queue_wait, self._wake_duration)

    def _svc(self, namespace: str, service: str) -> tuple[str, ...]:
        return (namespace, service) if self.per_service else ()

    def durations(self, namespace: str, service: str) -> Mapping[str, Histogram]:
        """The request-duration child per path (aggregated: one mapping shared by all)."""
        if not self.per_service:
            return self._shared_durations
        return {p: self._request_duration.labels(namespace, service, p) for p in PATHS}

    def overhead(self, namespace: str, service: str) -> Histogram:
        h = self._overhead
        return h.labels(namespace, service) if self.per_service else h

    def queue_wait(self, namespace: str, service: str) -> Histogram:
        h = self._queue_wait
        return h.labels(namespace, service) if self.per_service else h

    def wake_duration(self, namespace: str, service: str) -> Histogram:
        h = self._wake_duration
        return h.labels(namespace, service) if self.per_service else h

    def remove(self, namespace: str, service: str) -> None:
        if not self.per_service:
            return  # aggregated: the series outlive any one service
        for path in PATHS:
            self._request_duration.remove(namespace, service, path)
        for h in (self._overhead, self._queue_wait, self._wake_duration):
            h.remove(namespace, service)


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
    def __init__(self, *, per_service_histograms: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.histograms = Histograms(r, per_service_histograms)
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
        self._services: dict[tuple[str, str], ServiceMetrics] = {}
        self._headers = [f.header() for f in FAMILIES]
        # Each family's rendered lines per service, and the services to render again.
        # The event loop writes _pending and _services; the render thread reads them and
        # writes _chunks under _lock (so a service removed meanwhile leaves nothing).
        self._chunks: list[dict[tuple[str, str], bytes]] = [{} for _ in FAMILIES]
        self._pending: dict[tuple[str, str], ServiceMetrics] = {}
        self._lock = threading.Lock()

    def key(self, ref: str | None) -> KeyMetrics:
        """The children of one key (``None``: requests without a valid key)."""
        name = ref or NO_KEY
        km = self._keys.get(name)
        if km is None:
            km = self._keys[name] = KeyMetrics(self, name)
        return km

    def service(self, namespace: str, service: str, *, cache: bool = False) -> ServiceMetrics:
        sm = ServiceMetrics(self, namespace, service, cache=cache)
        self._services[(namespace, service)] = sm
        return sm

    def find(self, namespace: str, service: str) -> ServiceMetrics | None:
        return self._services.get((namespace, service))

    def _remove(self, sm: ServiceMetrics) -> None:
        with self._lock:
            if self._services.get(sm.key) is not sm:
                return
            del self._services[sm.key]
            for chunks in self._chunks:
                chunks.pop(sm.key, None)
            if self._pending.get(sm.key) is sm:
                del self._pending[sm.key]

    def families(self) -> Mapping[str, tuple[str, tuple[str, ...]]]:
        """name -> (type, label names) of every family /metrics carries (tests, docs)."""
        out: dict[str, tuple[str, tuple[str, ...]]] = {f.name: (f.type, f.labels) for f in FAMILIES}
        collectors: tuple[Counter | Histogram, ...] = (
            *self.histograms.collectors(),
            self.cache_shared_errors,
            self.key_requests,
            self.key_inputs,
            self.key_rejected,
        )
        for c in collectors:
            out[_full_name(c)] = (str(c._type), tuple(c._labelnames))
        return out

    def render(self) -> bytes:
        """The whole exposition (text format 0.0.4). Safe to call from a worker thread:
        only services that changed since the last scrape (or have requests queued or in
        flight) are formatted; the rest is a join of cached bytes."""
        pending = self._pending
        for key in list(pending):
            sm = pending.pop(key, None)
            if sm is None:
                continue
            lines, live = sm.render()
            with self._lock:
                if self._services.get(key) is not sm:
                    continue  # removed while it rendered
                for idx, chunk in enumerate(lines):
                    if chunk:
                        self._chunks[idx][key] = chunk
                    else:
                        self._chunks[idx].pop(key, None)
            if live:
                pending.setdefault(key, sm)
        parts = [generate_latest(self.registry)]
        with self._lock:
            for header, by_service in zip(self._headers, self._chunks, strict=True):
                parts.append(header)
                parts.append(b"".join(by_service.values()))
        return b"".join(parts)


def _full_name(c: Collector) -> str:
    name, kind = str(getattr(c, "_name", "")), str(getattr(c, "_type", ""))
    # prometheus-client drops a counter's _total suffix from _name.
    return f"{name}_total" if kind == "counter" and not name.endswith("_total") else name
