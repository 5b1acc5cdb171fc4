"""Load figures from every activator replica (their ``GET /stats``), read about once a second.

Where the activators are:
- in a cluster, ``--activator-service NAMESPACE/NAME``: every endpoint of that Service's
  EndpointSlices that is ready, serving or terminating (a draining activator still holds
  requests, so it still counts);
- for local runs, ``--activator-url URL`` (repeatable): fixed base URLs.

An activator whose stats cannot be read (refused, timed out, malformed) counts as busy
for every service: the autoscaler must not scale anything down on a guess. One reader
is shared by every service's loop; a snapshot is reused for ``max_age`` seconds so N
services cost one round of requests, not N.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from glowplug.kube import stats
from glowplug.operator.autoscaler import ActivatorLoad, ServiceLoad
from glowplug.outage import Outage, is_unreachable

log = logging.getLogger(__name__)

# The most services one filtered /stats read names (about 40 bytes each in the URL).
MAX_SERVICES_PER_READ = 200


class Discovery(Protocol):
    async def urls(self) -> list[str]: ...


class LoadSource(Protocol):
    """What the autoscaler loop needs: a shared snapshot, and a fresh one on demand
    (of every service, or of ``services``, "namespace/name", only)."""

    async def snapshot(self) -> Snapshot: ...

    async def refresh(self, services: Sequence[str] | None = None) -> Snapshot: ...


@dataclass
class StaticDiscovery:
    """A fixed list of activator base URLs (local runs and tests)."""

    base_urls: Sequence[str]

    async def urls(self) -> list[str]:
        return [u.rstrip("/") for u in self.base_urls]


@dataclass
class EndpointSliceDiscovery:
    """The activator Service's endpoints, listed from its EndpointSlices."""

    discovery_api: Any  # kubernetes_asyncio.client.DiscoveryV1Api
    namespace: str
    service: str
    port_name: str = "http"
    # Endpoints seen ready before: if they vanish from the slice mid-drain we cannot
    # tell, and that is fine (a pod removed from the slice has finished terminating).

    async def urls(self) -> list[str]:
        slices = await self.discovery_api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={self.service}"
        )
        return endpoint_urls(
            self.discovery_api.api_client.sanitize_for_serialization(slices), self.port_name
        )


def endpoint_urls(slice_list: Mapping[str, Any], port_name: str = "http") -> list[str]:
    """Base URLs of the endpoints that may hold requests (pure, for tests)."""
    out: list[str] = []
    for sl in slice_list.get("items") or []:
        ports = [p for p in sl.get("ports") or [] if p.get("port")]
        port = next((p["port"] for p in ports if p.get("name") == port_name), None)
        if port is None and ports:
            port = ports[0]["port"]
        if port is None:
            continue
        for ep in sl.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            # ready is "unknown" (None) means ready; serving/terminating cover draining pods.
            if not (
                cond.get("ready") in (True, None) or cond.get("serving") or cond.get("terminating")
            ):
                continue
            for address in (ep.get("addresses") or [])[:1]:
                host = f"[{address}]" if ":" in address else address
                out.append(f"http://{host}:{port}")
    return sorted(set(out))


@dataclass(frozen=True)
class Snapshot:
    """One round of /stats: per service, each readable activator's figures."""

    time: float
    per_service: Mapping[str, list[ActivatorLoad]]
    unreadable: int
    activators: int

    def load(self, namespace: str, name: str) -> ServiceLoad:
        return ServiceLoad.combine(
            self.per_service.get(f"{namespace}/{name}", []), unreadable=self.unreadable
        )


def parse_stats(payload: Any) -> dict[str, ActivatorLoad]:
    """One activator's /stats body -> loads by "namespace/name"; ValueError if malformed."""
    return {
        key: ActivatorLoad(
            in_flight=s.in_flight,
            queued=s.queued,
            waking=s.waking,
            last_request_finished=s.last_request_finished,
            first_response=s.first_response_after_wake,
        )
        for key, s in stats.parse(payload).items()
    }


@dataclass
class LoadReader:
    discovery: Discovery
    timeout: float = 1.0
    max_age: float = 0.5
    on_error: Any = None  # callable(url) -> None, e.g. a Prometheus counter's inc
    _session: aiohttp.ClientSession | None = None
    _snapshot: Snapshot | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _outage: Outage = field(default_factory=lambda: Outage(log, "the activator list"))
    # The services of the next coalesced refresh, and the future its callers await.
    _batch: set[str] | None = None
    _batch_result: asyncio.Future[Snapshot] | None = None
    _batch_task: asyncio.Task[None] | None = None
    rounds: int = 0  # rounds of /stats reads made (tests)

    async def snapshot(self) -> Snapshot:
        """The latest snapshot, refreshed when older than ``max_age``."""
        async with self._lock:
            now = time.time()
            if self._snapshot is None or now - self._snapshot.time > self.max_age:
                self._snapshot = await self.refresh()
            return self._snapshot

    async def refresh(self, services: Sequence[str] | None = None) -> Snapshot:
        """Read every activator now: all services, or only ``services``.

        Calls with ``services`` made in the same event-loop turn share one round (the
        union of their services; every loop that decided to scale to zero on one tick
        re-reads together), and each activator answers only those services, so K
        services going to zero at once cost one round of O(K) answers, not K rounds
        of O(all services) each (and one activator list, not K).
        """
        if services is None:
            return await self._round(None)
        if self._batch is None or self._batch_result is None:
            self._batch = set()
            self._batch_result = asyncio.get_running_loop().create_future()
            self._batch_task = asyncio.create_task(self._run_batch())
        self._batch.update(services)
        return await asyncio.shield(self._batch_result)

    async def _run_batch(self) -> None:
        await asyncio.sleep(0)  # let the other loops woken in this turn join
        keys, result = self._batch, self._batch_result
        self._batch = self._batch_result = None
        assert keys is not None and result is not None
        try:
            # Beyond a few hundred services a full read is as cheap (and the URL short).
            snap = await self._round(sorted(keys) if len(keys) <= MAX_SERVICES_PER_READ else None)
        except asyncio.CancelledError:
            result.cancel()
            raise
        except Exception as err:  # handed to every waiter
            result.set_exception(err)
        else:
            result.set_result(snap)

    async def _round(self, services: Sequence[str] | None) -> Snapshot:
        self.rounds += 1
        now = time.time()
        try:
            urls = await self.discovery.urls()
        except Exception as err:  # the API is down: we cannot tell who is busy
            if is_unreachable(err):
                self._outage.failed(err)
            else:
                log.warning("cannot list activators: %s", err)
            return Snapshot(now, {}, unreadable=1, activators=0)
        self._outage.ok()
        results = await asyncio.gather(*(self._read(u, services) for u in urls))
        per_service: dict[str, list[ActivatorLoad]] = {}
        unreadable = 0
        for url, result in zip(urls, results, strict=True):
            if result is None:
                unreadable += 1
                if self.on_error is not None:
                    self.on_error(url)
                continue
            for key, load in result.items():
                per_service.setdefault(key, []).append(load)
        return Snapshot(now, per_service, unreadable, len(urls))

    async def _read(
        self, base: str, services: Sequence[str] | None = None
    ) -> dict[str, ActivatorLoad] | None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        query = [("service", k) for k in services] if services is not None else None
        try:
            async with self._session.get(f"{base}/stats", params=query) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                return parse_stats(await resp.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            log.info("activator %s unreadable (counts as busy): %s", base, err or type(err))
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
