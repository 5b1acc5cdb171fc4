"""Load figures from every activator replica (their ``GET /stats``), as changes.

Where the activators are:
- in a cluster, ``--activator-service NAMESPACE/NAME``: every endpoint of that Service's
  EndpointSlices that is ready, serving or terminating (a draining activator still holds
  requests, so it still counts);
- for local runs, ``--activator-url URL`` (repeatable): fixed base URLs.

An activator whose stats cannot be read (refused, timed out, malformed) counts as busy
for every service: the autoscaler must not scale anything down on a guess. One reader
is shared by every service's loop.

How it reads (the protocol is ``glowplug.kube.stats``): the reader keeps what each
activator told it, one full read and then only changes (``since`` its cursor). While
``follow`` runs, one long poll per activator (``wait`` seconds) brings each change as it
happens, and calls back with the services it touched (the daemon pokes their loops), so
N idle services cost one empty answer per activator per ``wait`` seconds instead of N
entries a second; ``snapshot`` then costs no request. Without ``follow`` (tools, tests),
``snapshot`` reads changes when the last read is older than ``max_age``. ``refresh``
asks every activator for its changes now (before the last replica goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from glowplug.kube import stats
from glowplug.kube.informer import Informer
from glowplug.kube.outage import Outage, is_unreachable
from glowplug.operator.autoscaler import ActivatorLoad, ServiceLoad

log = logging.getLogger(__name__)


class Discovery(Protocol):
    async def urls(self) -> list[str]: ...


class LoadSource(Protocol):
    """What the autoscaler loop needs: a shared snapshot, and a fresh one on demand."""

    async def snapshot(self) -> Snapshot: ...

    async def refresh(self) -> Snapshot: ...


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


@dataclass
class WatchedEndpointSlices:
    """The activator Service's endpoints from a watch of its EndpointSlices (an informer
    on ``kubernetes.io/service-name``): ``urls`` makes no request."""

    informer: Informer
    namespace: str
    service: str
    port_name: str = "http"

    async def urls(self) -> list[str]:
        await self.informer.wait_synced()
        return endpoint_urls(
            {"items": self.informer.items(self.namespace, self.service)}, self.port_name
        )


def watched_endpoint_slices(api_client: Any, namespace: str, service: str) -> WatchedEndpointSlices:
    """Discovery of the activators by one EndpointSlice watch in their namespace."""

    def path(ns: str | None) -> str:
        return f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"

    informer = Informer(
        api_client, "EndpointSlice", path, [namespace], label="kubernetes.io/service-name"
    )
    informer.start()
    return WatchedEndpointSlices(informer, namespace, service)


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
    # Per service, each readable activator's (URL, inputs computed per API key): what
    # attribution.py splits GPU-seconds by. Absent where no API keys are in use.
    computed: Mapping[str, list[tuple[str, Mapping[str, int]]]] = field(default_factory=dict)

    def load(self, namespace: str, name: str) -> ServiceLoad:
        return ServiceLoad.combine(
            self.per_service.get(f"{namespace}/{name}", []), unreadable=self.unreadable
        )


def parse_stats(payload: Any) -> dict[str, ActivatorLoad]:
    """One activator's /stats body -> loads by "namespace/name"; ValueError if malformed."""
    return {key: _load(s) for key, s in stats.parse(payload).items()}


@dataclass
class _Activator:
    """What one activator told the reader: its figures, up to its cursor."""

    url: str
    epoch: str = ""
    cursor: int = 0
    loads: dict[str, ActivatorLoad] = field(default_factory=dict)
    # Per service, its computedInputs (only while it has API keys in use).
    computed: dict[str, Mapping[str, int]] = field(default_factory=dict)
    readable: bool = False  # its last read succeeded
    read: bool = False  # read at least once
    task: asyncio.Task[None] | None = None  # its long poll, while following


OnChange = Callable[[str, str], None]  # (namespace, name) whose load changed

IDLE_LOAD = ActivatorLoad()


@dataclass
class LoadReader:
    discovery: Discovery
    timeout: float = 1.0
    max_age: float = 0.5
    on_error: Any = None  # callable(url) -> None, e.g. a Prometheus counter's inc
    wait: float = 25.0  # a long poll's wait (below the activator's cap, stats.MAX_WAIT)
    _session: aiohttp.ClientSession | None = None
    _activators: dict[str, _Activator] = field(default_factory=dict)
    _per_service: dict[str, list[ActivatorLoad]] = field(default_factory=dict)
    _snapshot: Snapshot | None = None
    _unreadable: int = 0  # discovery failed: count one unknown activator
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _following: bool = False
    _on_change: OnChange | None = None
    _outage: Outage = field(default_factory=lambda: Outage(log, "the activator list"))
    # The refresh round the next callers join, before it is sent (see refresh).
    _next_round: asyncio.Future[Snapshot] | None = None
    _round_task: asyncio.Task[None] | None = None
    bytes_read: int = 0  # response bytes (benchmarks)
    reads: int = 0  # /stats requests answered (benchmarks)

    async def snapshot(self) -> Snapshot:
        """The figures as known: no request while following, else refreshed when older
        than ``max_age``."""
        if self._following and self._snapshot is not None:
            return self._snapshot
        async with self._lock:
            now = time.time()
            if self._snapshot is None or now - self._snapshot.time > self.max_age:
                self._snapshot = await self.refresh()
            return self._snapshot

    async def refresh(self) -> Snapshot:
        """Every activator's changes now (its cursor; a full read the first time).

        Calls made in the same event-loop turn share one round of reads: when many
        services decide to scale to zero on one tick, each re-reads right before its
        write, and they cost one request per activator, not one each. A call never joins
        a round already sent (that could miss a request that arrived meanwhile)."""
        if self._next_round is None:
            self._next_round = asyncio.get_running_loop().create_future()
            self._round_task = asyncio.create_task(self._run_round(self._next_round))
        return await asyncio.shield(self._next_round)

    async def _run_round(self, result: asyncio.Future[Snapshot]) -> None:
        await asyncio.sleep(0)  # the other loops woken in this turn join
        self._next_round = None  # from here on, a new call waits for the next round
        try:
            snap = await self._refresh_now()
        except asyncio.CancelledError:
            result.cancel()
            raise
        except Exception as err:  # handed to every waiter
            result.set_exception(err)
        else:
            result.set_result(snap)

    async def _refresh_now(self) -> Snapshot:
        if not await self._discover():
            return self._make_snapshot()
        await asyncio.gather(*(self._read(a, 0.0) for a in list(self._activators.values())))
        self._snapshot = self._make_snapshot()
        return self._snapshot

    async def follow(self, on_change: OnChange, interval: float = 1.0) -> None:
        """Long-poll every activator until cancelled, calling ``on_change`` for each
        service whose figures changed; looks for new activators every ``interval``."""
        self._following = True
        self._on_change = on_change
        try:
            while True:
                before = set(self._activators)
                await self._discover()
                for a in self._activators.values():
                    if a.task is None or a.task.done():
                        a.task = asyncio.create_task(self._poll(a, interval), name=f"stats {a.url}")
                if set(self._activators) != before or self._snapshot is None:
                    self._snapshot = self._make_snapshot()
                await asyncio.sleep(interval)
        finally:
            self._following = False
            self._on_change = None
            tasks = [a.task for a in self._activators.values() if a.task is not None]
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for a in self._activators.values():
                a.task = None

    async def _poll(self, a: _Activator, interval: float) -> None:
        while self._activators.get(a.url) is a:
            started = time.monotonic()
            await self._read(a, self.wait if a.read and a.readable else 0.0)
            self._snapshot = self._make_snapshot()
            # At most one answer a second per activator under load; at once is not needed
            # (the loops tick once a second).
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _discover(self) -> bool:
        """Bring the activator list up to date; False when it cannot be listed."""
        try:
            urls = await self.discovery.urls()
        except Exception as err:  # the API is down: we cannot tell who is busy
            if is_unreachable(err):
                self._outage.failed(err)
            else:
                log.warning("cannot list activators: %s", err)
            self._unreadable = 1
            return False
        self._outage.ok()
        self._unreadable = 0
        for url in set(self._activators) - set(urls):
            gone = self._activators.pop(url)
            if gone.task is not None:
                gone.task.cancel()
            self._changed(gone.loads.keys())
        for url in urls:
            if url not in self._activators:
                self._activators[url] = _Activator(url)
        return True

    async def _read(self, a: _Activator, wait: float) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        params = {}
        if a.epoch:
            params = {"since": stats.format_since(a.epoch, a.cursor), "wait": f"{wait:g}"}
        try:
            async with self._session.get(
                f"{a.url}/stats",
                params=params,
                timeout=aiohttp.ClientTimeout(total=self.timeout + (wait if params else 0.0)),
            ) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                raw = await resp.read()
                self.bytes_read += len(raw)
                self.reads += 1
                reply = stats.parse_reply(json.loads(raw))
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            if a.readable or not a.read:
                log.info("activator %s unreadable (counts as busy): %s", a.url, err or type(err))
            a.read = True
            if a.readable:
                a.readable = False
                self._changed(a.loads.keys())  # busy now, whatever they were
            if self.on_error is not None:
                self.on_error(a.url)
            return
        self._apply(a, reply)

    def _apply(self, a: _Activator, reply: stats.Reply) -> None:
        was_readable = a.readable
        a.read = a.readable = True
        if reply.epoch and reply.epoch == a.epoch and reply.cursor < a.cursor:
            return  # an older answer than one applied already (a refresh overtook it)
        if reply.full:
            a.computed = {}
        for key, s in reply.services.items():
            if s.computed_inputs is None:
                a.computed.pop(key, None)
            else:
                a.computed[key] = s.computed_inputs
        fresh = {key: _load(s) for key, s in reply.services.items()}
        if reply.full:
            old = a.loads
            a.loads = {k: v for k, v in fresh.items() if v != IDLE_LOAD}
            changed = {k for k in old.keys() | a.loads.keys() if old.get(k) != a.loads.get(k)}
        else:
            changed = set()
            for key, load in fresh.items():
                if a.loads.get(key, IDLE_LOAD) != load:
                    changed.add(key)
                if load == IDLE_LOAD:
                    a.loads.pop(key, None)
                else:
                    a.loads[key] = load
        a.epoch, a.cursor = reply.epoch, reply.cursor
        self._changed(changed if was_readable else changed | a.loads.keys())

    def _changed(self, keys: Any) -> None:
        keys = list(keys)
        for key in keys:
            self._per_service[key] = [
                a.loads[key] for a in self._activators.values() if a.readable and key in a.loads
            ]
            if not self._per_service[key]:
                del self._per_service[key]
        if self._on_change is not None:
            for key in keys:
                namespace, _sep, name = key.partition("/")
                self._on_change(namespace, name)

    def _make_snapshot(self) -> Snapshot:
        unreadable = self._unreadable + sum(1 for a in self._activators.values() if not a.readable)
        computed: dict[str, list[tuple[str, Mapping[str, int]]]] = {}
        for a in self._activators.values():
            if a.readable:
                for key, counts in a.computed.items():
                    computed.setdefault(key, []).append((a.url, counts))
        return Snapshot(time.time(), self._per_service, unreadable, len(self._activators), computed)

    async def close(self) -> None:
        for a in self._activators.values():
            if a.task is not None:
                a.task.cancel()
        if self._session is not None:
            await self._session.close()


def _load(s: stats.ServiceStats) -> ActivatorLoad:
    return ActivatorLoad(
        in_flight=s.in_flight,
        queued=s.queued,
        waking=s.waking,
        last_request_finished=s.last_request_finished,
        first_response=s.first_response_after_wake,
    )
