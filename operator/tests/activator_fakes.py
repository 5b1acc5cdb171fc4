"""Test doubles for the activator's tests: a fake engine, a fake scaler, a harness.

``FakeEngine`` is a TEST DOUBLE of an embeddings engine (not SGLang): a real aiohttp
server on 127.0.0.1 that can delay, drop connections before or after the response
headers, answer errors in the engines' flat shape, enforce a TEI-like batch limit (413),
and counts requests and peak concurrency.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from glowplug.activator.apikeys import KeyStore
from glowplug.activator.embeddingcache import EmbeddingCache
from glowplug.activator.holdqueue import ServiceState
from glowplug.activator.http import HttpServer, Limits
from glowplug.activator.metrics import Metrics
from glowplug.activator.server import Activator, Config
from glowplug.activator.services import Services
from glowplug.activator.waker import Waker

DIMS = 8


def vector(i: int, dims: int) -> list[float]:
    """The fake engine's deterministic embedding for input ``i`` (float32-exact values)."""
    return [i + k / 4 for k in range(dims)]


def text_vector(text: str, dims: int) -> list[float]:
    """With ``FakeEngine(text_vectors=True)``: an embedding that depends on the text only
    (float32-exact values), so an answer merged from a cache can be checked per input."""
    seed = sum(ord(c) * (j + 1) for j, c in enumerate(text)) % 1000
    return [seed + k / 8 for k in range(dims)]


class FakeEngine:
    """TEST DOUBLE of an engine's /v1/embeddings endpoint."""

    def __init__(
        self, *, delay: float = 0.0, native_base64: bool = False, text_vectors: bool = False
    ) -> None:
        self.text_vectors = text_vectors
        self.delay = delay
        self.native_base64 = native_base64
        self.drop_before_headers = 0  # next N requests: close the connection, no response
        self.drop_after_headers = 0  # next N requests: send headers, then close mid-body
        self.status = 200
        self.error_type = "BadRequestError"  # the flat error body's type (SGLang's)
        self.max_batch: int | None = None  # more inputs: 413, as TEI's client batch limit
        self.index_from_input = False  # input "item-N" embeds as vector(N)
        self.batch_sizes: list[int] = []  # inputs per request received
        self.requests = 0  # requests received
        self.bodies: list[dict[str, Any]] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self.gate: asyncio.Event | None = None  # when set, requests wait for it
        # GET /ready answers 503 until this loop time (None: always 200), as SGLang's
        # /ready does until the model is loaded; ready_probes counts the probes.
        self.ready_at: float | None = None
        self.ready_probes = 0
        self.health_probes = 0  # GET /health
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeEngine:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/health", self.health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def health(self, request: web.Request) -> web.Response:
        """The readiness endpoint of engines without /ready (TEI, vLLM, SGLang 0.5.19)."""
        self.health_probes += 1
        return await self._readiness()

    async def ready(self, request: web.Request) -> web.Response:
        self.ready_probes += 1
        return await self._readiness()

    async def _readiness(self) -> web.Response:
        if self.ready_at is not None and asyncio.get_running_loop().time() < self.ready_at:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "ready"})

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            body = await request.json()
            self.bodies.append(body)
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.drop_before_headers > 0:
                self.drop_before_headers -= 1
                assert request.transport is not None
                request.transport.abort()
                return web.Response()
            if self.status != 200:
                return web.json_response(
                    {
                        "object": "error",
                        "message": "engine says no",
                        "type": self.error_type,
                        "param": None,
                        "code": self.status,
                    },
                    status=self.status,
                )
            inputs = body["input"]
            n = 1 if isinstance(inputs, str) or isinstance(inputs[0], int) else len(inputs)
            self.batch_sizes.append(n)
            if self.max_batch is not None and n > self.max_batch:
                return web.json_response(
                    {
                        "message": f"batch size {n} > maximum allowed batch size {self.max_batch}",
                        "type": "validation",
                        "code": 413,
                    },
                    status=413,
                )
            dims = body.get("dimensions") or DIMS
            data: list[dict[str, Any]] = []
            for i in range(n):
                seed = i
                if self.index_from_input and isinstance(inputs, list):
                    seed = int(str(inputs[i]).rsplit("-", 1)[1])
                emb: Any = (
                    text_vector(inputs if isinstance(inputs, str) else inputs[i], dims)
                    if self.text_vectors
                    else vector(seed, dims)
                )
                if self.native_base64 and body.get("encoding_format") == "base64":
                    from glowplug.activator.openai import floats_to_base64

                    emb = floats_to_base64(emb)
                data.append({"object": "embedding", "index": i, "embedding": emb})
            payload = json.dumps(
                {
                    "object": "list",
                    "data": data,
                    "model": "/models/fake-engine-path",
                    "usage": {"prompt_tokens": n, "total_tokens": n},
                }
            ).encode()
            if self.drop_after_headers > 0:
                self.drop_after_headers -= 1
                resp = web.StreamResponse()
                resp.content_length = len(payload)
                resp.content_type = "application/json"
                await resp.prepare(request)
                await resp.write(payload[:10])
                assert request.transport is not None
                request.transport.abort()
                return resp
            return web.Response(body=payload, content_type="application/json")
        finally:
            self.concurrent -= 1


class FakeScaler:
    """TEST DOUBLE of the scale subresource: counts writes, optionally publishes endpoints."""

    def __init__(self) -> None:
        self.writes = 0
        self.calls = 0
        self.replicas: dict[str, int] = {}
        self.on_wake: list[str] | None = None  # addresses to publish on wake
        self.services: Services | None = None
        self.wake_delay = 0.0
        self.fail_with: Exception | None = None
        self.seen_versions: list[str] = []  # what each call was told the watch saw

    async def raise_from_zero(self, namespace: str, name: str, seen_version: str = "") -> bool:
        self.calls += 1
        self.seen_versions.append(seen_version)
        await asyncio.sleep(0.01)  # an API round trip: lets more requests pile up
        if self.fail_with is not None:
            raise self.fail_with
        ref = f"{namespace}/{name}"
        if self.replicas.get(ref, 0) >= 1:
            return False
        self.replicas[ref] = 1
        self.writes += 1
        if self.on_wake is not None and self.services is not None:
            services, addresses = self.services, self.on_wake

            async def publish() -> None:
                await asyncio.sleep(self.wake_delay)
                services.set_endpoints(namespace, name, addresses)

            asyncio.get_running_loop().create_task(publish())
        return True


def service_obj(
    name: str = "emb",
    namespace: str = "ns1",
    *,
    served: str | None = None,
    replicas: int = 1,
    scaling: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    cache: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    uid: str = "",
) -> dict[str, Any]:
    """A raw EmbeddingService object as the API server would return it."""
    m: dict[str, Any] = {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}}
    if served is not None:
        m["servedName"] = served
    m.update(model or {})
    obj: dict[str, Any] = {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "spec": {"model": m, "replicas": replicas, "scaling": scaling or {}},
    }
    if cache is not None:
        obj["spec"]["cache"] = cache
    if engine is not None:
        obj["spec"]["engine"] = engine
    if uid:
        obj["metadata"]["uid"] = uid
    if conditions is not None:
        obj["status"] = {"conditions": conditions}
    return obj


class Harness:
    """An activator on 127.0.0.1 with a FakeScaler, fed directly (no API server)."""

    def __init__(
        self,
        config: Config | None = None,
        limits: Limits | None = None,
        keys: KeyStore | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.limits = limits
        self.metrics = Metrics()
        self.scaler = FakeScaler()
        self.waker = Waker(self.scaler, self.metrics)
        self.services = Services(self.metrics, self.waker)
        self.scaler.services = self.services
        self.activator = Activator(
            self.services, metrics=self.metrics, config=config, keys=keys, cache=cache
        )
        self.activator.synced.set()
        self.server: HttpServer | None = None
        self.url = ""

    def state(self, name: str = "emb", namespace: str = "ns1") -> ServiceState:
        return self.services.routes[f"{namespace}/{name}"].state

    async def start(self) -> None:
        self.server = HttpServer(
            self.activator.handle, max_body=self.activator.config.max_body_bytes, limits=self.limits
        )
        port = await self.server.start("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
        await self.waker.close()
        await self.activator.close()


async def until(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Poll ``cond`` (a bounded wait, not a timed assertion)."""
    for _ in range(int(limit_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


@asynccontextmanager
async def harness(
    config: Config | None = None,
    limits: Limits | None = None,
    keys: KeyStore | None = None,
    cache: EmbeddingCache | None = None,
) -> AsyncIterator[Harness]:
    h = Harness(config, limits, keys, cache)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


@asynccontextmanager
async def engines(n: int = 1, **kwargs: Any) -> AsyncIterator[list[FakeEngine]]:
    started = [await FakeEngine(**kwargs).start() for _ in range(n)]
    try:
        yield started
    finally:
        for e in started:
            await e.stop()
