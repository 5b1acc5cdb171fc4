"""An informer: a list+watch cache of one kind, indexed by the ``glowplug.dev/service`` label.

The loop is the one the API server documents for efficient change detection
(https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):
list (replacing everything known in that scope, so deletions missed while disconnected
are applied), then watch from the list's resourceVersion with bookmarks; a 410 Gone
(the resourceVersion expired) or any error lists again. Objects stay raw JSON dicts, no
model classes: deserialising pods into kubernetes_asyncio models costs far more CPU than
the watch itself.

Readers get the cached objects of one service (``items(namespace, service)``), and a
callback hears which service changed, so per-service work runs on events instead of a
LIST per service per tick (DESIGN.md invariant 6). The operator watches engine pods
with it; the activator its EmbeddingServices, EndpointSlices, pods and API key Secrets
(``glowplug.activator.watch``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from glowplug.kube.client import CONNECT_TIMEOUT, WATCH_TIMEOUT
from glowplug.kube.labels import SERVICE_LABEL
from glowplug.kube.outage import UNAVAILABLE_STATUSES, Outage, Unavailable, is_unreachable

log = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 300
RETRY_DELAY = 1.0
LIST_PAGE = 500  # objects per list page: a few thousand pods never arrive as one body
LIST_TIMEOUT = aiohttp.ClientTimeout(
    total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT, sock_read=60
)

Key = tuple[str, str]  # (namespace, value of SERVICE_LABEL)
OnChange = Callable[[str, str], None]


class _Gone(Exception):
    """The watch's resourceVersion expired: list again."""


def _check(resp: Any, what: str) -> None:
    """A list's or watch's answer: 410 Gone lists again, unavailable is an outage."""
    if resp.status == 410:
        raise _Gone()
    if resp.status in UNAVAILABLE_STATUSES:
        raise Unavailable(f"{what}: HTTP {resp.status}")
    if resp.status != 200:
        raise RuntimeError(f"{what}: HTTP {resp.status}")


async def raw_get(api: Any, path: str, query: list[tuple[str, str]], limit_s: Any) -> Any:
    """GET ``path`` with the client's auth, the response unread (the caller parses it)."""
    return await api.call_api(
        path,
        "GET",
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=limit_s,
    )


async def list_objects(
    api: Any, path: str, query: Sequence[tuple[str, str]] = ()
) -> tuple[list[dict[str, Any]], str]:
    """Every object at ``path`` in pages of ``LIST_PAGE``, as raw JSON dicts (no model
    classes: for 10,000 Deployments, deserialising into kubernetes_asyncio models and
    back cost seconds a page), and the list's resourceVersion. A 410 (the continue token
    expired mid-list) raises ``_Gone``; the API server unavailable, ``Unavailable``."""
    items: list[dict[str, Any]] = []
    cont = ""
    while True:
        q = [("limit", str(LIST_PAGE)), *query]
        if cont:
            q.append(("continue", cont))
        resp = await raw_get(api, path, q, LIST_TIMEOUT)
        async with resp:
            _check(resp, f"list {path}")
            doc = await resp.json()
        items.extend(doc.get("items") or [])
        meta = doc.get("metadata") or {}
        cont = str(meta.get("continue") or "")
        if not cont:
            return items, str(meta.get("resourceVersion", ""))


def scopes(namespaces: Sequence[str]) -> tuple[list[str | None], Callable[[str], bool]]:
    """The list/watch scopes for ``--namespace`` values and a filter for what they return.

    Plain names get one namespaced watch each; none, or any glob ('team-*'), needs one
    cluster-wide watch whose objects are filtered by the patterns.
    """
    if not namespaces:
        return [None], lambda _ns: True
    if any(ch in ns for ns in namespaces for ch in "*?["):
        patterns = list(namespaces)
        return [None], lambda ns: any(fnmatch.fnmatchcase(ns, p) for p in patterns)
    return list(namespaces), lambda _ns: True


class Informer:
    """List+watch cache of the objects of one kind that carry ``label`` (None: every
    object of the kind), indexed by the label's value, or with ``by_name`` by the
    object's own name (EmbeddingServices, API key Secrets: one object per key)."""

    def __init__(
        self,
        api_client: Any,
        kind: str,
        path: Callable[[str | None], str],
        namespaces: Sequence[str] = (),
        label: str | None = SERVICE_LABEL,
        on_change: OnChange | None = None,
        *,
        by_name: bool = False,
    ) -> None:
        self.api = api_client  # kubernetes_asyncio.client.ApiClient
        self.kind = kind
        self.path = path
        self.label = label
        self.by_name = by_name or label is None
        self.on_change = on_change
        self.scopes, self.wanted = scopes(namespaces)
        self.objects: dict[Key, dict[str, dict[str, Any]]] = {}  # key -> name -> object
        self.lists = 0  # lists made (start-up and re-lists): tests and logs
        self._synced: dict[str | None, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.outage = Outage(log, f"the {kind} watch")

    # --- reading -------------------------------------------------------------------------

    def items(self, namespace: str, service: str) -> list[dict[str, Any]]:
        return list(self.objects.get((namespace, service), {}).values())

    @property
    def synced(self) -> bool:
        return bool(self._synced) and all(ev.is_set() for ev in self._synced.values())

    async def wait_synced(self) -> None:
        await asyncio.gather(*(ev.wait() for ev in self._synced.values()))

    # --- running -------------------------------------------------------------------------

    def start(self) -> None:
        for ns in self.scopes:
            ev = asyncio.Event()
            self._synced[ns] = ev
            self._tasks.append(
                asyncio.create_task(self._run(ns, ev), name=f"{self.kind} informer {ns or '*'}")
            )

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _run(self, ns: str | None, synced: asyncio.Event) -> None:
        while True:
            try:
                rv = await self._list(ns)
                self.outage.ok()
                synced.set()
                while True:
                    rv = await self._watch(ns, rv)
            except asyncio.CancelledError:
                raise
            except _Gone:
                log.info("%s watch expired, listing again", self.kind)
                continue
            except Exception as err:
                if is_unreachable(err):
                    self.outage.failed(err)  # the cache stays as it was: work goes on
                else:
                    log.warning("%s watch failed (%s), listing again", self.kind, err)
            await asyncio.sleep(RETRY_DELAY)

    async def _get(self, path: str, query: list[tuple[str, str]], limit_s: Any) -> Any:
        return await raw_get(self.api, path, query, limit_s)

    async def _list(self, ns: str | None) -> str:
        items, version = await list_objects(self.api, self.path(ns), self._selector())
        items = [trim(o) for o in items]
        self.lists += 1
        self._replace(ns, items)
        return version

    async def _watch(self, ns: str | None, rv: str) -> str:
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(WATCH_TIMEOUT_SECONDS)),
            *self._selector(),
        ]
        if rv:
            query.append(("resourceVersion", rv))
        resp = await self._get(self.path(ns), query, WATCH_TIMEOUT)
        async with resp:
            _check(resp, f"watch {self.path(ns)}")
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        rv = self._event(json.loads(line), rv)
        return rv

    def _selector(self) -> list[tuple[str, str]]:
        return [("labelSelector", self.label)] if self.label else []

    # --- the cache -----------------------------------------------------------------------

    def _key(self, obj: Mapping[str, Any]) -> tuple[Key, str] | None:
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "")
        name = str(meta.get("name"))
        labels = meta.get("labels") or {}
        if self.label is None:
            value: Any = name
        elif self.by_name:
            # Selected by the label's presence (an API key Secret's value may be empty).
            value = name if self.label in labels else None
        else:
            value = labels.get(self.label)
        if not value or not self.wanted(ns):
            return None
        return (ns, name if self.by_name else str(value)), name

    def _event(self, event: Mapping[str, Any], rv: str) -> str:
        typ = event.get("type")
        obj = event.get("object") or {}
        if typ == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise RuntimeError(f"watch error: {obj.get('message')}")
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        if typ in ("ADDED", "MODIFIED", "DELETED"):
            self._apply(trim(obj), deleted=typ == "DELETED")
        return new_rv  # BOOKMARK: only the resourceVersion moves

    def _apply(self, obj: dict[str, Any], *, deleted: bool) -> None:
        found = self._key(obj)
        if found is None:
            # Its label may have been removed: drop it wherever it was.
            name = str((obj.get("metadata") or {}).get("name"))
            ns = str((obj.get("metadata") or {}).get("namespace") or "")
            for key, objs in list(self.objects.items()):
                if key[0] == ns and objs.pop(name, None) is not None:
                    self._changed(key)
            return
        key, name = found
        objs = self.objects.setdefault(key, {})
        if deleted:
            objs.pop(name, None)
            if not objs:
                del self.objects[key]
        else:
            objs[name] = obj
        self._changed(key)

    def _replace(self, ns: str | None, items: list[dict[str, Any]]) -> None:
        fresh: dict[Key, dict[str, dict[str, Any]]] = {}
        for obj in items:
            found = self._key(obj)
            if found is not None:
                fresh.setdefault(found[0], {})[found[1]] = obj
        old = {k: v for k, v in self.objects.items() if ns is None or k[0] == ns}
        for key in old:
            del self.objects[key]
        self.objects.update(fresh)
        for key in set(old) | set(fresh):
            if old.get(key) != fresh.get(key):
                self._changed(key)

    def _changed(self, key: Key) -> None:
        if self.on_change is not None:
            self.on_change(*key)


def trim(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop ``metadata.managedFields`` (server-side apply bookkeeping, often the largest
    part of an object, read by nobody here): what client-go's informers trim with a
    transform for the same reason. Kept for thousands of objects, it is memory."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


def pods(
    api_client: Any, namespaces: Sequence[str] = (), on_change: OnChange | None = None
) -> Informer:
    """The engine pods (every pod carrying ``glowplug.dev/service``)."""

    def path(ns: str | None) -> str:
        return f"/api/v1/namespaces/{ns}/pods" if ns else "/api/v1/pods"

    return Informer(api_client, "Pod", path, namespaces, on_change=on_change)
