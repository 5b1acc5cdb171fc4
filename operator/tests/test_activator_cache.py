"""The embedding cache: keys, the byte-bounded LRU, and the request path over real HTTP
(the activator on 127.0.0.1, FakeEngine backends, FakeScaler counting wakes)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from activator_fakes import DIMS, engines, harness, service_obj, text_vector

from glowplug.activator.cache import (
    ENTRY_OVERHEAD,
    MemoryCache,
    entry_key,
    pack_vector,
    service_fingerprint,
    unpack_vector,
)
from glowplug.activator.openai import base64_to_floats, format_query
from glowplug.api import SpecError, parse

CACHED = {"enabled": True}


async def post(s: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, dict[str, Any], Any]:
    async with s.post(f"{url}/v1/embeddings", json=body) as resp:
        return resp.status, json.loads(await resp.read()), resp.headers


def vectors(body: dict[str, Any]) -> list[Any]:
    assert [d["index"] for d in body["data"]] == list(range(len(body["data"])))
    return [d["embedding"] for d in body["data"]]


def metric(h: Any, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in h.metrics.render().decode().splitlines():
        if line.startswith(f"{name}{{") and line.split("}")[0][len(name) + 1 :] == want:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{want}}}")


def svc(**spec: Any) -> Any:
    return parse(service_obj(cache=CACHED, uid="u1", **spec))


# --- keys and the LRU ---------------------------------------------------------------------


def test_spec_cache_defaults_and_errors() -> None:
    c = parse(service_obj()).cache
    assert (c.enabled, c.ttl, c.max_bytes) == (False, 86400.0, 256 << 20)
    c = parse(service_obj(cache={"enabled": True, "ttl": "10m", "maxBytes": "64Ki"})).cache
    assert (c.enabled, c.ttl, c.max_bytes) == (True, 600.0, 65536)
    with pytest.raises(SpecError) as err:
        parse(service_obj(cache={"ttl": "0s", "maxBytes": "12MB"}))
    assert any(e.startswith("spec.cache.maxBytes:") for e in err.value.errors)
    assert any(e.startswith("spec.cache.ttl:") for e in err.value.errors)


def test_fingerprint_changes_with_what_changes_vectors_only() -> None:
    base = service_fingerprint(svc())
    assert service_fingerprint(svc()) == base
    for changed in (
        svc(model={"revision": "abc123"}),
        svc(model={"id": "Qwen/Qwen3-Embedding-4B"}),
        svc(engine={"args": ["--dtype", "float16"]}),
        svc(engine={"image": "lmsysorg/sglang:other"}),
        parse(service_obj(cache=CACHED, uid="u2")),  # deleted and recreated
    ):
        assert service_fingerprint(changed) != base
    # Memory and batching limits cannot change a vector: entries stay valid.
    assert service_fingerprint(svc(engine={"args": ["--mem-fraction-static", "0.7"]})) == base
    assert service_fingerprint(svc(scaling={"idleTimeout": "1m"})) == base


def test_key_covers_dimensions_and_text() -> None:
    fp = service_fingerprint(svc())
    k = entry_key(fp, None, "hello")
    assert entry_key(fp, None, "hello") == k
    assert entry_key(fp, 256, "hello") != k
    assert entry_key(fp, None, "hello ") != k
    assert entry_key(fp, None, format_query("Find it", "hello")) != k


def test_lru_byte_budget_ttl_and_invalidation() -> None:
    now = [100.0]
    mem = MemoryCache(max_bytes=10 * (16 + ENTRY_OVERHEAD), clock=lambda: now[0])
    vec = pack_vector([1.0, 2.0, 3.0, 4.0])  # 16 bytes
    size = len(vec) + ENTRY_OVERHEAD
    fp = b"f" * 32
    per_service = 3 * size
    for i in range(4):
        mem.put("a", fp, bytes([i]), vec, 200.0, per_service)
    assert mem.get("a", fp, bytes([0])) is None  # evicted: over the service's budget
    assert mem.service_bytes("a") == 3 * size
    assert mem.get("a", fp, bytes([1])) is not None  # now the newest
    mem.put("a", fp, bytes([4]), vec, 200.0, per_service)
    assert mem.get("a", fp, bytes([2])) is None and mem.get("a", fp, bytes([1])) is not None
    # The activator-wide budget: the biggest service gives first.
    for i in range(9):
        mem.put("b", fp, bytes([i]), vec, 200.0, 100 * size)
    assert mem.bytes <= mem.max_bytes
    assert mem.service_bytes("b") == 7 * size and mem.service_bytes("a") == 3 * size
    # TTL
    now[0] = 250.0
    assert mem.get("a", fp, bytes([1])) is None
    # A new fingerprint for the service drops its old entries at once.
    mem.put("b", b"g" * 32, b"x", vec, 300.0, 100 * size)
    assert mem.service_bytes("b") == size
    assert mem.get("b", fp, bytes([8])) is None
    assert unpack_vector(mem.get("b", b"g" * 32, b"x")[0]) == [1.0, 2.0, 3.0, 4.0]  # type: ignore[index]
    mem.drop("b")
    assert mem.service_bytes("b") == 0


# --- the request path ----------------------------------------------------------------------


async def test_repeats_are_answered_at_zero_without_a_wake() -> None:
    async with harness() as h, engines(1, text_vectors=True) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(replicas=0, cache=CACHED))
        h.scaler.on_wake = [e.address]
        status, first, headers = await post(s, h.url, {"model": "emb", "input": ["a", "b"]})
        assert status == 200, first
        assert headers["X-Glowplug-Cache"] == "miss"
        assert first["usage"]["prompt_tokens"] == 2  # the FakeEngine counts 1 per input
        assert vectors(first) == [text_vector("a", DIMS), text_vector("b", DIMS)]
        assert h.scaler.writes == 1 and e.requests == 1

        # Scaled to zero (the endpoints go away): repeats need neither engine nor wake.
        h.services.set_endpoints("ns1", "emb", [])
        h.scaler.replicas.clear()
        h.services.apply_service(service_obj(replicas=0, cache=CACHED))
        for _ in range(3):
            status, body, headers = await post(
                s, h.url, {"model": "emb", "input": ["b", "a"], "encoding_format": "base64"}
            )
            assert status == 200, body
            assert headers["X-Glowplug-Cache"] == "hit" and headers["X-Glowplug-Cache-Hits"] == "2"
            assert [base64_to_floats(v) for v in vectors(body)] == [
                text_vector("b", DIMS),
                text_vector("a", DIMS),
            ]
            assert body["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
            assert body["model"] == "emb"
        assert h.scaler.writes == 1 and h.scaler.calls == 1 and e.requests == 1
        assert h.state().replicas == 0 and not h.state().waking
        assert (
            metric(h, "glowplug_cache_hits_total", namespace="ns1", service="emb", tier="memory")
            == 6
        )
        assert metric(h, "glowplug_cache_misses_total", namespace="ns1", service="emb") == 2
        assert metric(h, "glowplug_cache_served_at_zero_total", namespace="ns1", service="emb") == 3
        # Three requests within one idleTimeout: a single wake was avoided.
        assert metric(h, "glowplug_cache_wakes_avoided_total", namespace="ns1", service="emb") == 1
        assert metric(h, "glowplug_cache_bytes", namespace="ns1", service="emb") == 2 * (
            4 * DIMS + ENTRY_OVERHEAD
        )
        assert (
            metric(
                h,
                "glowplug_requests_total",
                namespace="ns1",
                service="emb",
                code="200",
                path="cache",
            )
            == 3
        )


async def test_partial_hits_send_only_distinct_misses_and_merge_in_order() -> None:
    async with harness() as h, engines(1, text_vectors=True) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(cache=CACHED))
        h.services.set_endpoints("ns1", "emb", [e.address])
        await post(s, h.url, {"model": "emb", "input": ["b", "d"]})
        status, body, headers = await post(
            s, h.url, {"model": "emb", "input": ["a", "b", "c", "a", "d"], "user": "u"}
        )
        assert status == 200, body
        assert headers["X-Glowplug-Cache"] == "partial" and headers["X-Glowplug-Cache-Hits"] == "2"
        assert e.bodies[-1]["input"] == ["a", "c"]  # misses only, each once
        assert e.bodies[-1]["user"] == "u" and e.bodies[-1]["model"] == "emb"
        assert vectors(body) == [text_vector(t, DIMS) for t in ["a", "b", "c", "a", "d"]]
        assert body["usage"]["prompt_tokens"] == 2  # what the engine computed: two of five


async def test_query_instruction_dimensions_and_encoding_in_the_key() -> None:
    model = {"queryInstruction": "Find passages", "matryoshka": True, "minDimensions": 2}
    async with harness() as h, engines(1, text_vectors=True) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(cache=CACHED, model=model))
        h.services.set_endpoints("ns1", "emb", [e.address])
        await post(s, h.url, {"model": "emb", "input": "x"})
        # As a query the engine sees other text: a miss, and the instruction is applied.
        _, body, headers = await post(
            s, h.url, {"model": "emb", "input": "x", "input_type": "query"}
        )
        assert headers["X-Glowplug-Cache"] == "miss"
        assert e.bodies[-1]["input"] == [format_query("Find passages", "x")]
        assert "input_type" not in e.bodies[-1]
        assert vectors(body) == [text_vector(format_query("Find passages", "x"), DIMS)]
        _, _, headers = await post(s, h.url, {"model": "emb", "input": "x", "input_type": "query"})
        assert headers["X-Glowplug-Cache"] == "hit"
        # Other dimensions: another vector.
        _, body, headers = await post(s, h.url, {"model": "emb", "input": "x", "dimensions": 4})
        assert headers["X-Glowplug-Cache"] == "miss" and len(vectors(body)[0]) == 4
        # The encoding is not part of the key.
        _, body, headers = await post(
            s, h.url, {"model": "emb", "input": "x", "encoding_format": "base64"}
        )
        assert headers["X-Glowplug-Cache"] == "hit"
        assert base64_to_floats(vectors(body)[0]) == text_vector("x", DIMS)
        assert e.requests == 3


async def test_revision_or_engine_change_invalidates_and_off_means_off() -> None:
    async with harness() as h, engines(1, text_vectors=True) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(cache=CACHED))
        h.services.set_endpoints("ns1", "emb", [e.address])
        await post(s, h.url, {"model": "emb", "input": "x"})
        _, _, headers = await post(s, h.url, {"model": "emb", "input": "x"})
        assert headers["X-Glowplug-Cache"] == "hit"
        h.services.apply_service(service_obj(cache=CACHED, model={"revision": "r2"}))
        _, _, headers = await post(s, h.url, {"model": "emb", "input": "x"})
        assert headers["X-Glowplug-Cache"] == "miss"
        h.services.apply_service(
            service_obj(
                cache=CACHED, model={"revision": "r2"}, engine={"args": ["--dtype", "half"]}
            )
        )
        _, _, headers = await post(s, h.url, {"model": "emb", "input": "x"})
        assert headers["X-Glowplug-Cache"] == "miss"
        assert e.requests == 3
        # Cache disabled: every request reaches the engine and no cache header is set.
        h.services.apply_service(service_obj())
        for _ in range(2):
            status, _, headers = await post(s, h.url, {"model": "emb", "input": "x"})
            assert status == 200 and "X-Glowplug-Cache" not in headers
        assert e.requests == 5
        # Token ids bypass the cache.
        h.services.apply_service(service_obj(cache=CACHED))
        for _ in range(2):
            _, _, headers = await post(s, h.url, {"model": "emb", "input": [1, 2, 3]})
            assert "X-Glowplug-Cache" not in headers
        assert e.requests == 7
        h.services.delete_service(service_obj())
        assert h.activator.cache.memory.service_bytes("ns1/emb") == 0


async def test_engine_error_passes_through_and_stores_nothing() -> None:
    async with harness() as h, engines(1, text_vectors=True) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(cache=CACHED))
        h.services.set_endpoints("ns1", "emb", [e.address])
        e.status = 400
        status, body, _ = await post(s, h.url, {"model": "emb", "input": "x"})
        assert status == 400 and "engine says no" in body["error"]["message"]
        assert h.activator.cache.memory.service_bytes("ns1/emb") == 0
        e.status = 200
        _, _, headers = await post(s, h.url, {"model": "emb", "input": "x"})
        assert headers["X-Glowplug-Cache"] == "miss"
