"""The list/watch loops against a test double of the API client (no API server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from activator_fakes import service_obj, until

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
