"""The services the activator routes: spec, hold queue and metrics per EmbeddingService.

Sources (the Kubernetes watches, or a static file for tests) feed raw objects in; the
request path reads ``resolve`` (two dictionary lookups). Nothing here does I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from glowplug import engines
from glowplug.activator.coldstart import WakeInfo, wake_info
from glowplug.activator.endpoints import EndpointTracker, Failure, condition_failure
from glowplug.activator.holdqueue import ServiceState
from glowplug.activator.metrics import Metrics, ServiceMetrics
from glowplug.activator.models import ModelList
from glowplug.activator.readiness_probe import ReadinessProber
from glowplug.activator.routing import RoutingTable
from glowplug.api import EmbeddingService, SpecError, parse

log = logging.getLogger("glowplug.activator.services")


@dataclass
class Route:
    """Everything the request path needs about one service."""

    spec: EmbeddingService
    state: ServiceState
    metrics: ServiceMetrics
    condition: Failure | None = None  # the operator's Failed condition
    wake: WakeInfo = field(default_factory=WakeInfo)  # status.wake, lastWakeSeconds
    # The most inputs the engine takes per request (TEI's --max-client-batch-size);
    # None: no limit. Larger requests are split (openai.upstream_bodies).
    max_batch: int | None = None
    # Inputs the engine computed for each API key ("namespace/name" of its Secret):
    # cache misses and uncached requests, cumulative while this activator routes the
    # service. The operator splits GPU-seconds by them (operator/attribution.py).
    computed: dict[str, int] = field(default_factory=dict)


def max_batch(svc: EmbeddingService) -> int | None:
    """The engine's batch limit for this spec; the engine module knows its flags."""
    return engines.get(svc.engine.name).max_batch(svc)


class Services:
    def __init__(
        self, metrics: Metrics, on_wake: Callable[[ServiceState], None] | None = None
    ) -> None:
        self.metrics = metrics
        self.table = RoutingTable()
        self.models = ModelList(self.table, self._has_ready)
        self.tracker = EndpointTracker()
        self.routes: dict[str, Route] = {}  # "namespace/name" -> Route
        self._on_wake = on_wake
        self._on_delete: list[Callable[[str], None]] = []
        # The embedding cache's bytes per service, for the gauge (set by the Activator).
        self.cache_bytes: Callable[[str], int] | None = None
        self.prober: ReadinessProber | None = None  # fast release after a wake

    def on_delete(self, callback: Callable[[str], None]) -> None:
        """Call ``callback("namespace/name")`` when a service is deleted."""
        self._on_delete.append(callback)

    def set_prober(self, prober: ReadinessProber) -> None:
        self.prober = prober

    def probed_ready(self, ref: str, address: str) -> None:
        """The readiness prober found a starting engine answering: route to it now."""
        self.tracker.mark_probed(ref, address)
        self._endpoints_changed(ref)

    def set_waker(self, on_wake: Callable[[ServiceState], None]) -> None:
        self._on_wake = on_wake
        for route in self.routes.values():
            route.state._on_wake = on_wake

    def _has_ready(self, ref: str) -> bool:
        route = self.routes.get(ref)
        return bool(route and route.state.has_ready)

    # --- request path -------------------------------------------------------------------

    def resolve(self, model: str) -> Route:
        svc = self.table.resolve(model)
        return self.routes[f"{svc.namespace}/{svc.name}"]

    # --- EmbeddingServices ----------------------------------------------------------------

    def apply_service(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ref = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        try:
            svc = parse(obj)
        except SpecError as err:
            # The API server validates specs; one that still does not parse is not routed.
            log.warning("not routing %s: %s", ref, err)
            self.delete_service(obj)
            return
        old = self.table.upsert(svc)
        if old is None or _listed(old) != _listed(svc):
            names = (svc.model.served_name, svc.key)
            self.models.changed(ref, names + ((old.model.served_name, old.key) if old else ()))
        route = self.routes.get(ref)
        s = svc.scaling
        if route is None:
            state = ServiceState(
                svc.namespace,
                svc.name,
                limit=s.target_concurrency,
                max_queue=s.max_queued_requests,
                replicas=svc.replicas,
                seen_version=svc.resource_version,
                on_wake=self._on_wake,
                on_ready=self._on_ready,
            )
            sm = self.metrics.service(svc.namespace, svc.name, cache=svc.cache.enabled)
            sm.bind_gauges(lambda: float(state.queued), lambda: float(state.inflight))
            state.on_activity = sm.touch
            state.on_ready_change = lambda: self.models.changed(ref)
            if self.cache_bytes is not None:
                read, key = self.cache_bytes, ref
                sm.bind_cache_bytes(lambda: float(read(key)))
            route = Route(svc, state, sm, max_batch=max_batch(svc))
            self.routes[ref] = route
            route.condition = condition_failure(obj)
            route.wake = wake_info(obj)
            self._update_failure(ref)
            state.set_endpoints(self.tracker.addresses(ref))
            return
        route.spec = svc
        if svc.cache.enabled:
            route.metrics.enable_cache()  # a no-op once enabled
        route.max_batch = max_batch(svc)
        route.condition = condition_failure(obj)
        route.wake = wake_info(obj)
        route.state.configure(
            limit=s.target_concurrency,
            max_queue=s.max_queued_requests,
            replicas=svc.replicas,
            seen_version=svc.resource_version,
        )
        self._update_failure(ref)

    def delete_service(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        old = self.table.remove(ns, name)
        if old is not None:
            self.models.changed(f"{ns}/{name}", (old.model.served_name, old.key))
        route = self.routes.pop(f"{ns}/{name}", None)
        if route is not None:
            route.state.close()
            route.metrics.remove()
            for callback in self._on_delete:
                callback(f"{ns}/{name}")

    # --- EndpointSlices -------------------------------------------------------------------

    def apply_slice(self, obj: Mapping[str, Any]) -> None:
        self._endpoints_changed(self.tracker.apply_slice(obj))

    def delete_slice(self, obj: Mapping[str, Any]) -> None:
        self._endpoints_changed(self.tracker.delete_slice(obj))

    def sync_slices(self, namespace: str, service: str, objs: Iterable[Mapping[str, Any]]) -> None:
        """Every slice labelled for one service now (the informer's cache of it)."""
        for ref in self.tracker.replace_slices(f"{namespace}/{service}", objs):
            self._endpoints_changed(ref)

    def set_endpoints(self, namespace: str, name: str, addresses: list[str]) -> None:
        """Static endpoints (tests and ``--static-config``), as one synthetic slice."""
        ref = f"{namespace}/{name}"
        self.tracker.set_static(ref, addresses)
        self._endpoints_changed(ref)

    def _endpoints_changed(self, ref: str | None) -> None:
        if ref is None:
            return
        route = self.routes.get(ref)
        if route is not None:
            route.state.set_endpoints(self.tracker.addresses(ref))
            self._update_failure(ref)
            if self.prober is not None:
                # Probe starting pods only while the service has no ready one (a wake).
                starting = [] if route.state.has_ready else self.tracker.starting(ref)
                path = engines.get(route.spec.engine.name).readiness_path(route.spec)
                self.prober.want(ref, starting, path)

    # --- pods -----------------------------------------------------------------------------

    def apply_pod(self, obj: Mapping[str, Any]) -> None:
        self._update_failure(self.tracker.apply_pod(obj))

    def delete_pod(self, obj: Mapping[str, Any]) -> None:
        self._update_failure(self.tracker.delete_pod(obj))

    def sync_pods(self, namespace: str, service: str, objs: Iterable[Mapping[str, Any]]) -> None:
        """Every pod labelled for one service now (the informer's cache of it)."""
        for ref in self.tracker.replace_pods(f"{namespace}/{service}", objs):
            self._update_failure(ref)

    def _update_failure(self, ref: str | None) -> None:
        if ref is None:
            return
        route = self.routes.get(ref)
        if route is None:
            return
        failure = route.condition or self.tracker.pod_failure(ref)
        state = route.state
        if failure != state.failure:
            if failure is not None and not state.has_ready and state.wake_started is not None:
                route.metrics.wakes["failed"].inc()
            if failure is not None:
                log.warning("%s cannot become ready: %s", ref, failure.message)
            state.set_failure(failure)

    # --- callbacks from the hold queue ----------------------------------------------------

    def _on_ready(self, state: ServiceState, seconds: float) -> None:
        route = self.routes.get(state.ref)
        if route is not None:
            route.metrics.wakes["ready"].inc()
            route.metrics.wake_duration.observe(seconds)
        log.info("%s ready %.2fs after the wake", state.ref, seconds)


def _listed(svc: EmbeddingService) -> tuple[object, ...]:
    """What /v1/models shows of a spec (a status-only update changes none of it)."""
    m = svc.model
    return (m.served_name, svc.key, m.id, m.matryoshka, m.dimensions)
