"""The activator's informers against a test double of the API client (no API server);
e2e/tests/test_activator_cluster.py runs them against the test-bed API server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from activator_fakes import service_obj, until

from glowplug.activator.apikeys import KeyStore
from glowplug.activator.metrics import Metrics
from glowplug.activator.services import Services
from glowplug.activator.watch import KubeSource


class FakeResponse:
    def __init__(self, status: int, doc: Any = None, lines: list[Any] | None = None) -> None:
        self.status = status
        self.doc = doc
        self.lines = lines or []
        self.content = self

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def json(self) -> Any:
        return self.doc

    async def text(self) -> str:
        return json.dumps(self.doc)

    async def iter_any(self) -> AsyncIterator[bytes]:
        for item in self.lines:
            data = json.dumps(item).encode() + b"\n"
            # split each event in two chunks: the reader must join them
            yield data[:7]
            yield data[7:]
        await asyncio.sleep(3600)  # a watch stays open


def _slice(ip: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "emb-a",
            "namespace": "ns1",
            "labels": {"kubernetes.io/service-name": "emb", "glowplug.dev/service": "emb"},
        },
        "ports": [{"name": "http", "port": 30000}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
    }


class FakeApiClient:
    """TEST DOUBLE of kubernetes_asyncio's ApiClient.call_api for list and watch GETs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.slice_watches = 0

    async def call_api(self, path: str, method: str, **kw: Any) -> FakeResponse:
        query = dict(kw["query_params"])
        self.calls.append((path, query))
        watch = query.get("watch") == "true"
        if "embeddingservices" in path:
            if not watch:
                return FakeResponse(
                    200, {"metadata": {"resourceVersion": "5"}, "items": [service_obj()]}
                )
            return FakeResponse(
                200, lines=[{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}]
            )
        if "endpointslices" in path:
            assert query.get("labelSelector") == "glowplug.dev/service"
            if not watch:
                items = [] if self.slice_watches == 0 else [_slice("10.244.0.9")]
                return FakeResponse(200, {"metadata": {"resourceVersion": "7"}, "items": items})
            self.slice_watches += 1
            if self.slice_watches == 1:
                return FakeResponse(
                    200,
                    lines=[
                        {"type": "ADDED", "object": _slice("10.244.0.5")},
                        {"type": "ERROR", "object": {"code": 410, "message": "too old"}},
                    ],
                )
            return FakeResponse(200, lines=[])
        return FakeResponse(200, {"metadata": {"resourceVersion": "1"}, "items": []})


async def test_list_watch_and_relist_after_410() -> None:
    services = Services(Metrics())
    api = FakeApiClient()
    source = KubeSource(api, services)
    source.start()
    try:
        await asyncio.wait_for(source.wait_synced(), 5)
        assert services.table.resolve("emb").name == "emb"
        # the ADDED slice arrives through the watch, then a 410 makes it list again,
        # and the re-list replaces what the watch had said
        await until(lambda: api.slice_watches >= 2)
        await until(lambda: services.routes["ns1/emb"].state.has_ready)
        assert list(services.routes["ns1/emb"].state.backends) == ["10.244.0.9:30000"]
        es_watch = [q for p, q in api.calls if "embeddingservices" in p and "watch" in q]
        assert es_watch[0]["resourceVersion"] == "5"
    finally:
        await source.close()


class RelistApiClient:
    """TEST DOUBLE of call_api: each list answers the next of ``lists`` for its kind,
    and each watch ends at once with a 410 (so the informer lists again)."""

    def __init__(self, lists: dict[str, list[list[dict[str, Any]]]]) -> None:
        self.lists = lists
        self.listed: dict[str, int] = {}

    async def call_api(self, path: str, method: str, **kw: Any) -> FakeResponse:
        query = dict(kw["query_params"])
        kind = next((k for k in self.lists if k in path), "")
        if query.get("watch") != "true":
            n = self.listed.get(kind, 0)
            self.listed[kind] = n + 1
            pages = self.lists.get(kind) or [[]]
            items = pages[min(n, len(pages) - 1)]
            return FakeResponse(200, {"metadata": {"resourceVersion": str(n)}, "items": items})
        if self.listed.get(kind, 0) >= len(self.lists.get(kind) or [[]]):
            return FakeResponse(200, lines=[])  # the last list stands: watch quietly
        return FakeResponse(200, lines=[{"type": "ERROR", "object": {"code": 410}}])


SECRET = {
    # The label's value may be empty (its presence selects it), as the e2e test's is.
    "metadata": {"name": "k", "namespace": "ns1", "labels": {"glowplug.dev/api-key": ""}},
    "stringData": {"key": "a-test-key-of-32-characters-long"},
}


def _pod(name: str, reason: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns1", "labels": {"glowplug.dev/service": "b"}},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "engine", "ready": False, "state": {"waiting": {"reason": reason}}}
            ],
        },
    }


async def test_a_relist_applies_what_the_watch_missed() -> None:
    """Deleted while disconnected: gone after the re-list; a pod's failure arrives and
    clears; an API key Secret appears and is removed."""
    api = RelistApiClient(
        {
            "embeddingservices": [[service_obj("a"), service_obj("b")], [service_obj("b")]],
            "pods": [[_pod("b-1", "ImagePullBackOff")], []],
            "secrets": [[SECRET], []],
        }
    )
    services, keys = Services(Metrics()), KeyStore("auto")
    source = KubeSource(api, services, ["ns1"], keys, ["ns1"])
    source.start()
    try:
        await asyncio.wait_for(source.wait_synced(), 5)
        await until(lambda: api.listed.get("embeddingservices", 0) >= 2)
        await until(lambda: "ns1/a" not in services.routes)
        assert list(services.routes) == ["ns1/b"]
        await until(lambda: api.listed.get("pods", 0) >= 2)
        await until(lambda: services.routes["ns1/b"].state.failure is None)
        await until(lambda: api.listed.get("secrets", 0) >= 2)
        await until(lambda: not keys.by_ref)
    finally:
        await source.close()


async def test_the_first_list_shows_a_pod_failure_and_a_key() -> None:
    api = RelistApiClient(
        {
            "embeddingservices": [[service_obj("b", replicas=0)]],
            "pods": [[_pod("b-1", "ImagePullBackOff")]],
            "secrets": [[SECRET]],
        }
    )
    services, keys = Services(Metrics()), KeyStore("auto")
    source = KubeSource(api, services, ["ns1"], keys, ["ns1"])
    source.start()
    try:
        await asyncio.wait_for(source.wait_synced(), 5)
        failure = services.routes["ns1/b"].state.failure
        assert failure is not None and failure.reason == "ImagePullBackOff"
        assert list(keys.by_ref) == ["ns1/k"]
    finally:
        await source.close()
