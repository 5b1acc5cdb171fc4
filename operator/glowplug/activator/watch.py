"""Kubernetes watches that feed ``Services``: EmbeddingServices, EndpointSlices and pods.

Each kind runs a list-then-watch loop: list everything (replacing what was known, so
deletions missed while disconnected are applied), then watch from the list's
resourceVersion with bookmarks; a 410 Gone or any error goes back to listing. Objects are
handled as raw JSON dicts (no model classes) to keep the watch cheap.

EndpointSlices and pods are selected by the ``glowplug.dev/service`` label, which the
operator puts on each Service (the EndpointSlice controller copies Service labels onto
its slices) and on each pod.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp

from glowplug.activator.apikeys import KEY_LABEL, KeyStore
from glowplug.activator.endpoints import SERVICE_LABEL
from glowplug.activator.services import Services
from glowplug.api import GROUP, PLURAL, VERSION
from glowplug.kubeclient import CONNECT_TIMEOUT, WATCH_TIMEOUT
from glowplug.outage import UNAVAILABLE_STATUSES, Outage, Unavailable, is_unreachable

log = logging.getLogger("glowplug.activator.watch")

WATCH_TIMEOUT_SECONDS = 300
RETRY_DELAY = 1.0
# A list of a few thousand objects: a generous read timeout, a short connect.
LIST_TIMEOUT = aiohttp.ClientTimeout(
    total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT, sock_read=60
)

Apply = Callable[[Mapping[str, Any]], None]
Resync = Callable[[Iterable[Mapping[str, Any]], str | None], None]


class _Gone(Exception):
    """The watch's resourceVersion expired: list again."""


class Kind:
    """How to list and watch one kind, and where its events go."""

    def __init__(
        self,
        name: str,
        path: Callable[[str | None], str],
        apply: Apply,
        delete: Apply,
        resync: Resync,
        label_selector: str | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.apply = apply
        self.delete = delete
        self.resync = resync
        self.label_selector = label_selector


def kinds(services: Services) -> list[Kind]:
    def es_path(ns: str | None) -> str:
        scope = f"/namespaces/{ns}" if ns else ""
        return f"/apis/{GROUP}/{VERSION}{scope}/{PLURAL}"

    def slice_path(ns: str | None) -> str:
        scope = f"/namespaces/{ns}" if ns else ""
        return f"/apis/discovery.k8s.io/v1{scope}/endpointslices"

    def pod_path(ns: str | None) -> str:
        scope = f"/namespaces/{ns}" if ns else ""
        return f"/api/v1{scope}/pods"

    s = services
    return [
        Kind("EmbeddingService", es_path, s.apply_service, s.delete_service, s.resync_services),
        Kind(
            "EndpointSlice",
            slice_path,
            s.apply_slice,
            s.delete_slice,
            s.resync_slices,
            SERVICE_LABEL,
        ),
        Kind("Pod", pod_path, s.apply_pod, s.delete_pod, s.resync_pods, SERVICE_LABEL),
    ]


def key_kind(keys: KeyStore) -> Kind:
    """API key Secrets (labelled ``glowplug.dev/api-key``), always one namespace at a time:
    the activator's Role grants list/watch on Secrets in its namespaces only."""

    def secret_path(ns: str | None) -> str:
        return f"/api/v1/namespaces/{ns}/secrets"

    return Kind("Secret", secret_path, keys.apply, keys.delete, keys.resync, KEY_LABEL)


class KubeSource:
    """Runs the list/watch loops for every kind and namespace scope."""

    def __init__(
        self,
        api_client: Any,
        services: Services,
        namespaces: list[str] | None = None,
        keys: KeyStore | None = None,
        key_namespaces: list[str] | None = None,
    ) -> None:
        self.api = api_client  # kubernetes_asyncio.client.ApiClient
        self.services = services
        self.namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        self.keys = keys
        self.key_namespaces = list(dict.fromkeys(key_namespaces or []))
        self._tasks: list[asyncio.Task[None]] = []
        self._synced: dict[tuple[str, str | None], asyncio.Event] = {}
        # One outage for all the loops: logged when it starts and when it ends.
        self.outage = Outage(log)

    def start(self) -> None:
        scopes: list[tuple[Kind, list[str | None]]] = [
            (kind, self.namespaces) for kind in kinds(self.services)
        ]
        if self.keys is not None and self.key_namespaces:
            scopes.append((key_kind(self.keys), list(self.key_namespaces)))
        for kind, namespaces in scopes:
            for ns in namespaces:
                ev = asyncio.Event()
                self._synced[(kind.name, ns)] = ev
                self._tasks.append(asyncio.create_task(self._run(kind, ns, ev)))

    async def wait_synced(self) -> None:
        await asyncio.gather(*(ev.wait() for ev in self._synced.values()))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _get(self, path: str, query: list[tuple[str, str]], limit_s: Any) -> Any:
        return await self.api.call_api(
            path,
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=limit_s,
        )

    async def _run(self, kind: Kind, ns: str | None, synced: asyncio.Event) -> None:
        while True:
            try:
                rv = await self._list(kind, ns)
                self.outage.ok(f"{kind.name}/{ns}")
                synced.set()
                while True:
                    rv = await self._watch(kind, ns, rv)
            except asyncio.CancelledError:
                raise
            except _Gone:
                log.info("%s watch expired, listing again", kind.name)
            except Exception as err:
                if is_unreachable(err):
                    self.outage.failed(err, f"{kind.name}/{ns}")  # routing goes on meanwhile
                else:
                    log.warning(
                        "%s watch failed (%s), listing again in %.0fs",
                        kind.name,
                        err,
                        RETRY_DELAY,
                    )
                await asyncio.sleep(RETRY_DELAY)

    async def _list(self, kind: Kind, ns: str | None) -> str:
        query = [("labelSelector", kind.label_selector)] if kind.label_selector else []
        resp = await self._get(kind.path(ns), query, LIST_TIMEOUT)
        async with resp:
            if resp.status in UNAVAILABLE_STATUSES:
                raise Unavailable(f"list {kind.path(ns)}: HTTP {resp.status}")
            if resp.status != 200:
                raise RuntimeError(f"list {kind.path(ns)}: HTTP {resp.status}: {await resp.text()}")
            doc = await resp.json()
        # A re-list replaces what is known in this scope only (one namespace, or all).
        kind.resync(doc.get("items") or [], ns)
        return str((doc.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, kind: Kind, ns: str | None, rv: str) -> str:
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(WATCH_TIMEOUT_SECONDS)),
        ]
        if rv:
            query.append(("resourceVersion", rv))
        if kind.label_selector:
            query.append(("labelSelector", kind.label_selector))
        # No total limit (the server ends the watch after timeoutSeconds); a read timeout
        # of two bookmark intervals ends a watch whose server went silent.
        resp = await self._get(kind.path(ns), query, WATCH_TIMEOUT)
        async with resp:
            if resp.status == 410:
                raise _Gone()
            if resp.status in UNAVAILABLE_STATUSES:
                raise Unavailable(f"watch {kind.path(ns)}: HTTP {resp.status}")
            if resp.status != 200:
                raise RuntimeError(f"watch {kind.path(ns)}: HTTP {resp.status}")
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        rv = self._event(kind, json.loads(line), rv)
        return rv

    def _event(self, kind: Kind, event: Mapping[str, Any], rv: str) -> str:
        typ = event.get("type")
        obj = event.get("object") or {}
        if typ == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise RuntimeError(f"watch error: {obj.get('message')}")
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        if typ in ("ADDED", "MODIFIED"):
            kind.apply(obj)
        elif typ == "DELETED":
            kind.delete(obj)
        return new_rv
