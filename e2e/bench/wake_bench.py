"""Wake overhead benchmark (``make bench``): first response minus the engine's own readiness.

What it measures: a request arrives at a service at zero and is held; the woken pod gets
an IP (its EndpointSlice entry appears with ``ready: false``); the engine finishes loading
at a moment the benchmark picks (its ``/ready`` turns 200). The wake overhead is the
moment the client receives the response minus that moment: what the activator adds on top
of the engine's own start. With the activator's readiness prober (100-200 ms probes,
``glowplug.activator.readiness_probe``) it is about half a probe interval plus one
forwarded request, independent of the kubelet's probe period and of how fast the
EndpointSlice travels.

Everything runs in one process on loopback: the real activator code (hold queue,
services, prober, HTTP server, forwarder) in front of ``EngineDouble``, a TEST DOUBLE of an
engine (``/ready`` 503 until loaded, ``/v1/embeddings`` answers a fixed vector). The
scale write is a test double too (no API server): this isolates the activator's share.

Writes ``e2e/bench/results/wake-<UTC time>.json`` and prints a table. Reports only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from glowplug.activator.http import HttpServer
from glowplug.activator.metrics import Metrics
from glowplug.activator.readiness_probe import PROBE_INTERVAL, ReadinessProber
from glowplug.activator.server import Activator
from glowplug.activator.services import Services
from glowplug.activator.waker import Waker

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "e2e" / "bench" / "results"


class EngineDouble:
    """TEST DOUBLE of an engine: /ready is 503 until ``ready_at`` (loop time), then 200."""

    def __init__(self) -> None:
        self.ready_at = float("inf")
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ready", self.ready)
        app.router.add_post("/v1/embeddings", self.embeddings)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def ready(self, request: web.Request) -> web.Response:
        ok = asyncio.get_running_loop().time() >= self.ready_at
        return web.json_response({}, status=200 if ok else 503)

    async def embeddings(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5] * 8}],
                "model": "m",
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class ScalerDouble:
    """TEST DOUBLE of the scale subresource: the write succeeds at once."""

    async def raise_from_zero(self, namespace: str, name: str, seen_version: str = "") -> bool:
        return True


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name, "namespace": "bench", "resourceVersion": "1"},
        "spec": {
            "model": {"id": "m", "source": {"huggingFace": {}}},
            "replicas": 0,
            "scaling": {},
        },
    }


def starting_slice(name: str, port: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{name}-x",
            "namespace": "bench",
            "labels": {"kubernetes.io/service-name": name},
        },
        "ports": [{"name": "http", "port": port}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": False}}],
    }


async def one_wake(
    session: aiohttp.ClientSession, url: str, services: Services, engine: EngineDouble, i: int
) -> float:
    loop = asyncio.get_running_loop()
    name = f"svc{i}"
    services.apply_service(service(name))
    load_time = random.uniform(0.3, 0.9)
    engine.ready_at = loop.time() + load_time
    body = {"model": name, "input": "hello"}
    task = asyncio.create_task(session.post(f"{url}/v1/embeddings", json=body))
    await asyncio.sleep(0.05)  # held; then the pod gets its IP
    services.apply_slice(starting_slice(name, engine.port))
    resp = await task
    await resp.read()
    done = loop.time()
    assert resp.status == 200, resp.status
    services.delete_service({"metadata": {"namespace": "bench", "name": name}})
    return done - engine.ready_at


async def run(wakes: int) -> dict[str, Any]:
    metrics = Metrics()
    services = Services(metrics)
    waker = Waker(ScalerDouble(), metrics)
    services.set_waker(waker)
    prober = ReadinessProber(services.probed_ready)
    services.set_prober(prober)
    activator = Activator(services, metrics=metrics)
    activator.synced.set()
    server = HttpServer(activator.handle, max_body=activator.config.max_body_bytes)
    port = await server.start("127.0.0.1", 0)
    engine = EngineDouble()
    await engine.start()
    overheads: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(wakes):
                overheads.append(
                    await one_wake(session, f"http://127.0.0.1:{port}", services, engine, i)
                )
                print(f"wake {i + 1}/{wakes}: overhead {overheads[-1] * 1000:.1f} ms", flush=True)
    finally:
        await prober.close()
        await server.close()
        await waker.close()
        await activator.close()
        await engine.stop()
    q = statistics.quantiles(overheads, n=20)
    return {
        "what": "first response minus the engine's own readiness, readiness prober on",
        "probe_interval_s": PROBE_INTERVAL,
        "wakes": wakes,
        "p50_ms": round(statistics.median(overheads) * 1000, 1),
        "p95_ms": round(q[18] * 1000, 1),
        "max_ms": round(max(overheads) * 1000, 1),
        "overheads_ms": [round(x * 1000, 1) for x in overheads],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wakes", type=int, default=30)
    args = parser.parse_args()
    result = asyncio.run(run(args.wakes))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"wake-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(
        "wake overhead (first response - engine ready), readiness prober every"
        f" {PROBE_INTERVAL * 1000:.0f} ms, {result['wakes']} wakes"
    )
    p50, p95, top = result["p50_ms"], result["p95_ms"], result["max_ms"]
    print(f"  p50 {p50:.1f} ms   p95 {p95:.1f} ms   max {top:.1f} ms")
    print(f"  target: p50 <= 100 ms   -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
