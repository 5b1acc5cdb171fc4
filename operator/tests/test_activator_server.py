"""Component tests: the activator over real HTTP on 127.0.0.1, with FakeEngine backends."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from activator_fakes import DIMS, FakeEngine, engines, harness, service_obj, until, vector

from glowplug.activator.endpoints import Failure
from glowplug.activator.openai import base64_to_floats
from glowplug.activator.server import Config


async def post(
    session: aiohttp.ClientSession, url: str, body: Any, **kw: Any
) -> tuple[int, dict[str, Any], Any]:
    async with session.post(f"{url}/v1/embeddings", json=body, **kw) as resp:
        return resp.status, json.loads(await resp.read()), resp.headers


def emb(model: str = "emb", inp: Any = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "input": inp, **extra}


async def test_warm_request_is_forwarded_and_model_rewritten() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(served="small"))
        h.services.set_endpoints("ns1", "emb", [e.address])
        status, body, _ = await post(s, h.url, emb("small", ["a", "b"]))
        assert status == 200, body
        assert body["model"] == "small"
        assert [d["embedding"] for d in body["data"]] == [vector(0, DIMS), vector(1, DIMS)]
        # namespace/servedName works too, and the engine sees the served name
        status, body, _ = await post(s, h.url, emb("ns1/small"))
        assert status == 200 and body["model"] == "small"
        assert e.bodies[-1]["model"] == "small"
        assert h.state().inflight == 0 and h.state().last_finished is not None


async def test_hold_wake_and_release() -> None:
    """A request at zero triggers one wake, is held, and is served once endpoints appear."""
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(replicas=0))
        h.scaler.on_wake = [e.address]
        h.scaler.wake_delay = 0.2
        results = await asyncio.gather(*(post(s, h.url, emb()) for _ in range(30)))
        assert [r[0] for r in results] == [200] * 30
        assert h.scaler.writes == 1
        assert h.scaler.seen_versions == ["1"]  # the watched object's, for the first write
        assert h.state().inflight == 0 and h.state().queued == 0
        metrics = h.metrics.render().decode()
        assert (
            'glowplug_activator_wakes_total{namespace="ns1",outcome="ready",service="emb"} 1.0'
            in metrics
        )
        assert 'path="cold"' in metrics


async def test_burst_released_through_per_pod_limit() -> None:
    async with harness() as h, engines(2, delay=0.05) as es, aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(scaling={"targetConcurrency": 3}))
        h.services.set_endpoints("ns1", "emb", [e.address for e in es])
        results = await asyncio.gather(*(post(s, h.url, emb()) for _ in range(40)))
        assert all(r[0] == 200 for r in results)
        for e in es:
            assert e.max_concurrent <= 3
            assert e.requests > 0
        assert sum(e.requests for e in es) == 40
        assert h.state().inflight == 0 and h.state().queued == 0


async def test_queue_full_is_503_with_retry_after() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        e.gate = asyncio.Event()
        h.services.apply_service(
            service_obj(scaling={"targetConcurrency": 1, "maxQueuedRequests": 2})
        )
        h.services.set_endpoints("ns1", "emb", [e.address])
        tasks = [asyncio.create_task(post(s, h.url, emb())) for _ in range(3)]
        await until(lambda: h.state().queued == 2 and h.state().inflight == 1)
        status, body, headers = await post(s, h.url, emb())
        assert status == 503
        assert body["error"]["code"] == "queue_full"
        assert "maxQueuedRequests" in body["error"]["message"]
        assert headers["Retry-After"]
        e.gate.set()
        assert [r[0] for r in await asyncio.gather(*tasks)] == [200, 200, 200]


async def test_activation_timeout_is_504() -> None:
    async with harness() as h, aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(replicas=0, scaling={"activationTimeout": "1s"}))
        status, body, _ = await post(s, h.url, emb())
        assert status == 504
        assert body["error"]["code"] == "activation_timeout"
        assert "1s" in body["error"]["message"]
        assert h.scaler.writes == 1  # the wake happened; only the request gave up
        assert h.state().queued == 0 and h.state().inflight == 0


async def test_disconnecting_clients_leak_no_slot_or_counter() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(replicas=0))
        # Held while waking: clients give up; their places are freed, the wake goes on.
        tasks = [
            asyncio.create_task(post(s, h.url, emb(), timeout=aiohttp.ClientTimeout(total=0.3)))
            for _ in range(5)
        ]
        for t in tasks:
            with pytest.raises(asyncio.TimeoutError):
                await t
        await until(lambda: h.state().queued == 0)
        assert h.state().queued == 0
        assert h.scaler.writes == 1
        # In flight on a backend: the client gives up mid-request; the slot comes back.
        h.services.set_endpoints("ns1", "emb", [e.address])
        e.gate = asyncio.Event()
        t = asyncio.create_task(post(s, h.url, emb(), timeout=aiohttp.ClientTimeout(total=0.3)))
        with pytest.raises(asyncio.TimeoutError):
            await t
        await until(lambda: h.state().inflight == 0)
        assert h.state().inflight == 0
        assert all(b.inflight == 0 for b in h.state().backends.values())
        e.gate.set()
        status, _, _ = await post(s, h.url, emb())
        assert status == 200


async def test_retry_when_dropped_before_response_but_not_after() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        e.drop_before_headers = 1
        status, _, _ = await post(s, h.url, emb())
        assert status == 200
        assert e.requests == 2  # retried once
        e.drop_before_headers = 2
        status, body, _ = await post(s, h.url, emb())
        assert status == 502  # retried once only
        assert e.requests == 4
        e.drop_after_headers = 1
        before = e.requests
        status, body, _ = await post(s, h.url, emb())
        assert status == 502, body
        assert e.requests == before + 1  # never retried after the response started
        assert h.state().inflight == 0


async def test_connect_errors_retry_on_another_endpoint() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        dead = FakeEngine()
        await dead.start()
        dead_addr = dead.address
        await dead.stop()  # a port that refuses connections
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [dead_addr, e.address])
        results = await asyncio.gather(*(post(s, h.url, emb()) for _ in range(10)))
        assert [r[0] for r in results] == [200] * 10
        assert e.requests == 10


async def test_base64_whatever_the_engine_returns() -> None:
    for native in (False, True):
        async with (
            harness() as h,
            engines(1, native_base64=native) as (e,),
            aiohttp.ClientSession() as s,
        ):
            h.services.apply_service(service_obj())
            h.services.set_endpoints("ns1", "emb", [e.address])
            status, body, _ = await post(s, h.url, emb(inp=["x", "y"], encoding_format="base64"))
            assert status == 200
            for i, d in enumerate(body["data"]):
                assert isinstance(d["embedding"], str)
                assert base64_to_floats(d["embedding"]) == vector(i, DIMS)


async def test_dimensions_pass_through_and_refusals() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(
            service_obj(model={"matryoshka": True, "dimensions": 64, "minDimensions": 4})
        )
        h.services.apply_service(service_obj(name="plain", served="plain"))
        h.services.set_endpoints("ns1", "emb", [e.address])
        h.services.set_endpoints("ns1", "plain", [e.address])
        status, body, _ = await post(s, h.url, emb(dimensions=16))
        assert status == 200 and len(body["data"][0]["embedding"]) == 16
        assert e.bodies[-1]["dimensions"] == 16
        for dims in (2, 65):
            status, body, _ = await post(s, h.url, emb(dimensions=dims))
            assert status == 400 and body["error"]["param"] == "dimensions"
            assert "[4, 64]" in body["error"]["message"]
        status, body, _ = await post(s, h.url, emb("plain", dimensions=16))
        assert status == 400 and "Matryoshka" in body["error"]["message"]


async def test_input_type_query_applies_instruction_and_is_stripped() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(model={"queryInstruction": "Find passages"}))
        h.services.set_endpoints("ns1", "emb", [e.address])
        status, _, _ = await post(s, h.url, emb(inp=["what is x"], input_type="query"))
        assert status == 200
        assert e.bodies[-1]["input"] == ["Instruct: Find passages\nQuery:what is x"]
        assert "input_type" not in e.bodies[-1]
        status, _, _ = await post(s, h.url, emb(inp="doc text", input_type="document"))
        assert status == 200
        assert e.bodies[-1]["input"] == "doc text" and "input_type" not in e.bodies[-1]


async def test_fail_fast_names_the_reason() -> None:
    async with harness() as h, aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(replicas=0))
        held = asyncio.create_task(post(s, h.url, emb()))
        await until(lambda: h.state().queued == 1)
        h.services.apply_pod(
            {
                "metadata": {
                    "name": "emb-abc",
                    "namespace": "ns1",
                    "labels": {"glowplug.dev/service": "emb"},
                },
                "status": {
                    "containerStatuses": [
                        {
                            "name": "engine",
                            "ready": False,
                            "state": {
                                "waiting": {
                                    "reason": "ImagePullBackOff",
                                    "message": "Back-off pulling image nope:1",
                                }
                            },
                        }
                    ]
                },
            }
        )
        status, body, headers = await held
        assert status == 503 and "ImagePullBackOff" in body["error"]["message"]
        assert headers["Retry-After"]
        status, body, _ = await post(s, h.url, emb())  # later requests fail fast
        assert status == 503 and body["error"]["code"] == "ImagePullBackOff"
        # the operator's Failed condition works the same way, and clearing it recovers
        h.services.delete_pod({"metadata": {"name": "emb-abc", "namespace": "ns1"}})
        assert h.state().failure is None
        cond = {"type": "Failed", "status": "True", "reason": "Unschedulable", "message": "0/1"}
        h.services.apply_service(service_obj(replicas=0, conditions=[cond]))
        status, body, _ = await post(s, h.url, emb())
        assert status == 503 and "Unschedulable" in body["error"]["message"]
        assert h.state().failure == Failure("Unschedulable", "0/1")


async def test_models_stats_metrics_health() -> None:
    async with harness() as h, aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj("a", "ns1", served="shared", replicas=0))
        h.services.apply_service(service_obj("b", "ns2", served="shared", replicas=0))
        h.services.apply_service(service_obj("c", "ns2", served="solo", replicas=0))
        async with s.get(f"{h.url}/v1/models") as r:
            models = await r.json()
        ids = {(m["id"], m["owned_by"]) for m in models["data"]}
        assert ids == {("ns1/shared", "ns1"), ("ns2/shared", "ns2"), ("solo", "ns2")}
        status, body, _ = await post(s, h.url, emb("shared"))
        assert status == 400 and body["error"]["code"] == "model_ambiguous"
        assert "ns1/shared" in body["error"]["message"]
        assert "ns2/shared" in body["error"]["message"]
        async with s.get(f"{h.url}/stats") as r:
            st = await r.json()
        assert set(st) == {"activator", "time", "epoch", "cursor", "full", "services"}
        assert st["full"] is True
        assert st["services"]["ns2/c"] == {
            "namespace": "ns2",
            "name": "c",
            "inFlight": 0,
            "queued": 0,
            "waking": False,
            "lastRequestFinished": None,
            "firstResponseAfterWake": None,
        }
        async with s.get(f"{h.url}/metrics") as r:
            text = await r.text()
        # children exist at zero as soon as a service appears
        assert (
            'glowplug_requests_total{code="200",namespace="ns2",path="warm",service="c"} 0.0'
            in text
        )
        assert 'glowplug_queued_requests{namespace="ns2",service="c"} 0.0' in text
        for path in ("/healthz", "/readyz"):
            async with s.get(f"{h.url}{path}") as r:
                assert r.status == 200
        h.activator.draining = True
        async with s.get(f"{h.url}/readyz") as r:
            assert r.status == 503


async def test_engine_errors_pass_through_openai_shaped() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        e.status = 400
        status, body, _ = await post(s, h.url, emb())
        assert status == 400 and "engine says no" in body["error"]["message"]


async def test_endpoint_removed_under_load_requests_still_succeed() -> None:
    async with harness() as h, engines(2, delay=0.02) as (e1, e2), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(scaling={"targetConcurrency": 4}))
        h.services.set_endpoints("ns1", "emb", [e1.address, e2.address])
        tasks = [asyncio.create_task(post(s, h.url, emb())) for _ in range(60)]
        await asyncio.sleep(0.05)
        h.services.set_endpoints("ns1", "emb", [e2.address])  # e1 leaves (terminating)
        results = await asyncio.gather(*tasks)
        assert [r[0] for r in results] == [200] * 60
        assert "127.0.0.1" in e2.address and e2.requests > 0
        assert h.state().inflight == 0 and e1.address not in h.state().backends


async def test_body_limits() -> None:
    async with (
        harness(Config(max_body_bytes=1000, max_inputs=3)) as h,
        aiohttp.ClientSession() as s,
    ):
        h.services.apply_service(service_obj())
        status, body, _ = await post(s, h.url, emb(inp="x" * 2000))
        assert status == 413 and "1000 bytes" in body["error"]["message"]
        status, body, _ = await post(s, h.url, emb(inp=["a", "b", "c", "d"]))
        assert status == 400 and "at most 3" in body["error"]["message"]


async def test_forwarder_reads_chunked_answers_and_times_out() -> None:
    from aiohttp import web

    from glowplug.activator.forwarder import ConnectFailed, Forwarder, UpstreamTimeout

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b'{"object": "list", ', b'"data": []}'):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/embeddings", chunked)
    app.router.add_post("/slow/v1/embeddings", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    address = f"127.0.0.1:{runner.addresses[0][1]}"
    fwd = Forwarder(connect_timeout=1)
    try:
        for _ in range(3):  # the second and third reuse the pooled connection
            status, body = await fwd.post(address, b"{}", 5)
            assert status == 200 and json.loads(body) == {"object": "list", "data": []}
        assert fwd.pooled() == {address: 1}
        await runner.cleanup()
        await asyncio.sleep(0.1)  # let the client see the server close its idle connection
        with pytest.raises(ConnectFailed):
            await fwd.post(address, b"{}", 5)
    finally:
        await fwd.close()
        await runner.cleanup()
    # a backend that never answers: the request timeout (spec.engine.requestTimeout)
    async with engines(1) as (e,):
        e.gate = asyncio.Event()
        fwd = Forwarder()
        try:
            with pytest.raises(UpstreamTimeout):
                await fwd.post(e.address, b'{"model": "m", "input": "x"}', 0.2)
        finally:
            e.gate.set()
            await fwd.close()


async def test_connect_errors_until_the_deadline_are_502() -> None:
    async with harness() as h, aiohttp.ClientSession() as s:
        dead = FakeEngine()
        await dead.start()
        dead_addr = dead.address
        await dead.stop()
        h.services.apply_service(service_obj(scaling={"activationTimeout": "1s"}))
        h.services.set_endpoints("ns1", "emb", [dead_addr])
        status, body, _ = await post(s, h.url, emb())
        assert status == 502 and "connect to" in body["error"]["message"]
        assert h.state().inflight == 0 and h.state().queued == 0


# --- what the real engines taught (issue 9) -------------------------------------------------


async def test_empty_and_whitespace_inputs_refused_before_any_engine_call() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        for inp, param in (
            (" \n\t", "input"),
            (["ok", "", "x"], "input[1]"),
            (["a", "  "], "input[1]"),
        ):
            status, body, _ = await post(s, h.url, emb(inp=inp))
            assert status == 400, body
            assert body["error"]["param"] == param
            assert f"'{param}'" in body["error"]["message"]
        assert e.requests == 0


def tei_obj(args: list[str] | None = None) -> dict[str, Any]:
    return service_obj(engine={"name": "tei", "args": args or []})


async def test_requests_over_the_engine_batch_limit_are_split_and_merged_in_order() -> None:
    async with harness() as h, engines(2) as (e1, e2), aiohttp.ClientSession() as s:
        for e in (e1, e2):
            e.max_batch = 32  # TEI's default --max-client-batch-size: more gets 413
            e.index_from_input = True
        h.services.apply_service(tei_obj())
        h.services.set_endpoints("ns1", "emb", [e1.address, e2.address])
        inputs = [f"item-{i}" for i in range(70)]
        status, body, _ = await post(s, h.url, emb(inp=inputs))
        assert status == 200, body
        assert [d["index"] for d in body["data"]] == list(range(70))
        assert [d["embedding"] for d in body["data"]] == [vector(i, DIMS) for i in range(70)]
        assert body["usage"] == {"prompt_tokens": 70, "total_tokens": 70}
        assert body["model"] == "emb"
        assert sorted(e1.batch_sizes + e2.batch_sizes) == [6, 32, 32]
        # base64 applies to the merged answer too.
        status, body, _ = await post(s, h.url, emb(inp=inputs[:40], encoding_format="base64"))
        assert status == 200
        assert [base64_to_floats(d["embedding"]) for d in body["data"]] == [
            vector(i, DIMS) for i in range(40)
        ]
        assert h.state().inflight == 0


async def test_batch_limit_follows_the_engine_flag() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        e.max_batch = 8
        h.services.apply_service(tei_obj(["--max-client-batch-size", "8"]))
        h.services.set_endpoints("ns1", "emb", [e.address])
        status, body, _ = await post(s, h.url, emb(inp=[f"x-{i}" for i in range(20)]))
        assert status == 200 and len(body["data"]) == 20
        assert e.batch_sizes == [8, 8, 4]
        # SGLang has no client batch limit: one request, whatever its size.
        h.services.apply_service(service_obj())
        e.max_batch = None
        status, body, _ = await post(s, h.url, emb(inp=[f"x-{i}" for i in range(100)]))
        assert status == 200 and e.batch_sizes[-1] == 100


async def test_a_failed_chunk_is_the_answer() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(tei_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        e.status, e.error_type = 422, "validation"
        status, body, _ = await post(s, h.url, emb(inp=[f"x-{i}" for i in range(40)]))
        assert status == 422
        assert (
            body["error"]["type"] == "validation" and "engine says no" in body["error"]["message"]
        )
        assert h.state().inflight == 0


async def test_503_from_a_shutting_down_engine_is_retried_on_another_pod() -> None:
    async with harness() as h, engines(2) as (going, staying), aiohttp.ClientSession() as s:
        going.status, going.error_type = 503, "ServiceUnavailableError"
        h.services.apply_service(service_obj(scaling={"targetConcurrency": 4}))
        h.services.set_endpoints("ns1", "emb", [going.address, staying.address])
        results = await asyncio.gather(*(post(s, h.url, emb()) for _ in range(20)))
        assert [r[0] for r in results] == [200] * 20
        assert going.requests >= 1  # it was tried, answered 503, and the request moved on
        assert staying.requests == 20
        assert h.state().inflight == 0


async def test_503_until_the_deadline_is_answered_as_the_engine_said() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        e.status, e.error_type = 503, "ServiceUnavailableError"
        h.services.apply_service(service_obj(scaling={"activationTimeout": "1s"}))
        h.services.set_endpoints("ns1", "emb", [e.address])
        status, body, _ = await post(s, h.url, emb())
        assert status == 503
        assert body["error"]["type"] == "ServiceUnavailableError"
        assert e.requests >= 2  # retried until the activation deadline
        assert h.state().inflight == 0


async def test_engine_error_type_is_kept_in_openai_shape() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        e.status = 400  # SGLang's flat body: {"object": "error", "type": "BadRequestError", ...}
        status, body, _ = await post(s, h.url, emb())
        assert status == 400
        assert body["error"] == {
            "message": "engine: engine says no",
            "type": "BadRequestError",
            "param": None,
            "code": "400",
        }


# --- issue 11 (3): what held clients learn --------------------------------------------


async def test_a_response_that_waited_for_a_wake_says_so() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(replicas=0))
        h.scaler.on_wake = [e.address]
        h.scaler.wake_delay = 0.3
        status, _, headers = await post(s, h.url, emb())
        assert status == 200
        assert headers["X-Glowplug-Cold-Start"] == "true"
        assert float(headers["X-Glowplug-Wait-Seconds"]) >= 0.25
        # the first answer after the wake is in /stats for the operator's FirstResponse
        st = h.state()
        assert st.first_response_after_wake is not None
        # a warm request carries no such header
        status, _, headers = await post(s, h.url, emb())
        assert status == 200 and "X-Glowplug-Cold-Start" not in headers


async def test_504_names_the_phase_reached_and_retry_after_follows_observed_wakes() -> None:
    async with harness() as h, aiohttp.ClientSession() as s:
        obj = service_obj(replicas=0, scaling={"activationTimeout": "1s"})
        obj["status"] = {
            "lastWakeSeconds": 95.2,
            "wake": {
                "phase": "WaitingForNode",
                "message": "pod emb-1 has no node: 0/1 nodes are available; "
                "cluster-autoscaler: pod triggered scale-up: [{gpu 0->1 (max: 2)}]",
            },
        }
        h.services.apply_service(obj)
        status, body, headers = await post(s, h.url, emb())
        assert status == 504
        message = body["error"]["message"]
        assert "the wake reached WaitingForNode" in message
        assert "pod triggered scale-up" in message
        # 95.2 s typical, about 1 s already spent: about 94 s left
        assert 90 <= int(headers["Retry-After"]) <= 95


# --- issue 11 (5): fast release --------------------------------------------------------


def starting_slice(address: str, *, ready: bool) -> dict[str, Any]:
    """An EndpointSlice as the EndpointSlice controller writes it for a starting pod."""
    host, port = address.rsplit(":", 1)
    return {
        "metadata": {
            "name": "emb-x1",
            "namespace": "ns1",
            "labels": {"kubernetes.io/service-name": "emb"},
        },
        "ports": [{"name": "http", "port": int(port), "protocol": "TCP"}],
        "endpoints": [{"addresses": [host], "conditions": {"ready": ready}}],
    }


async def test_held_request_goes_when_the_engine_answers_not_when_the_slice_says_ready() -> None:
    from glowplug.activator.readiness_probe import ReadinessProber

    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        prober = ReadinessProber(h.services.probed_ready)
        h.services.set_prober(prober)
        try:
            h.services.apply_service(service_obj(replicas=0))
            loop = asyncio.get_running_loop()
            e.ready_at = loop.time() + 0.6  # the engine loads its model for 0.6 s
            task = asyncio.create_task(post(s, h.url, emb()))
            await until(lambda: h.state().queued == 1)
            # the pod has an IP: in the slice, not ready (the kubelet has not probed yet)
            h.services.apply_slice(starting_slice(e.address, ready=False))
            assert prober.probing("ns1/emb") == [e.address]
            status, _, headers = await asyncio.wait_for(task, 10)
            assert status == 200
            assert headers["X-Glowplug-Cold-Start"] == "true"
            assert e.ready_probes >= 2  # 503 while loading, then the 200 that released it
            assert prober.probing("ns1/emb") == []
            # the slice never said ready: the probe released the request
            assert h.services.tracker.starting("ns1/emb") == [e.address]
            # a warm service is not probed: another starting pod next to a ready one
            h.services.apply_slice(starting_slice(e.address, ready=True))
            assert prober.probing("ns1/emb") == []
        finally:
            await prober.close()


async def test_a_slow_metrics_render_does_not_stall_the_probes() -> None:
    """/metrics renders off the event loop: a render that takes a second (thousands of
    services) leaves /readyz answering meanwhile."""
    async with harness() as h:
        real = h.metrics.render

        def slow() -> bytes:
            time.sleep(1.0)  # a render of many services holds its thread this long
            return real()

        h.metrics.render = slow  # type: ignore[method-assign]
        async with aiohttp.ClientSession() as s:

            async def scrape() -> float:
                async with s.get(f"{h.url}/metrics") as r:
                    assert r.status == 200
                    await r.read()
                return time.monotonic()

            async def probe() -> float:
                await asyncio.sleep(0.2)  # the render is under way
                async with s.get(f"{h.url}/readyz") as r:
                    assert r.status == 200
                return time.monotonic()

            scraped, probed = await asyncio.gather(scrape(), probe())
        assert probed < scraped  # the probe was answered while the render ran


async def test_fast_release_probes_the_engines_own_readiness_path() -> None:
    """SGLang with cuda "12" (0.5.19) has no /ready: starting pods are probed on /health."""
    from glowplug.activator.readiness_probe import ReadinessProber

    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        prober = ReadinessProber(h.services.probed_ready)
        h.services.set_prober(prober)
        try:
            h.services.apply_service(service_obj(replicas=0, engine={"cuda": "12"}))
            e.ready_at = asyncio.get_running_loop().time() + 0.3
            task = asyncio.create_task(post(s, h.url, emb()))
            await until(lambda: h.state().queued == 1)
            h.services.apply_slice(starting_slice(e.address, ready=False))
            status, _, _ = await asyncio.wait_for(task, 10)
            assert status == 200
            assert e.health_probes >= 2 and e.ready_probes == 0
        finally:
            await prober.close()
