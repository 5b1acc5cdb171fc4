"""API keys over real HTTP: 401/403/429 in OpenAI's shape, allowlists, wake permission,
limits, rotation without a restart, /v1/models per key, and per-key metrics."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
from activator_fakes import engines, harness, service_obj

from glowplug.activator.apikeys import KeySecretError, KeyStore, parse_secret

OWN = "glowplug-system"
KEY_A = "gp-test-key-aaaaaaaaaaaaaaaa"
KEY_B = "gp-test-key-bbbbbbbbbbbbbbbb"


def secret(name: str, key: str, namespace: str = OWN, **fields: str) -> dict[str, Any]:
    data = {"key": key, **fields}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"glowplug.dev/api-key": ""}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


async def call(
    s: aiohttp.ClientSession, url: str, key: str | None, model: str = "emb", path: str = ""
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if path:
        async with s.get(f"{url}{path}", headers=headers) as r:
            return r.status, json.loads(await r.read()), r.headers
    async with s.post(
        f"{url}/v1/embeddings", json={"model": model, "input": "hi"}, headers=headers
    ) as r:
        return r.status, json.loads(await r.read()), r.headers


async def test_required_mode_needs_a_valid_bearer_key() -> None:
    keys = KeyStore("required", OWN)
    async with harness(keys=keys) as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        status, body, headers = await call(s, h.url, None)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert headers["WWW-Authenticate"] == "Bearer"
        status, body, _ = await call(s, h.url, KEY_A)
        assert status == 401 and body["error"]["message"] == "invalid API key"
        assert e.requests == 0
        keys.apply(secret("team-a", KEY_A))
        status, body, _ = await call(s, h.url, KEY_A)
        assert status == 200, body
        # Anything but a Bearer scheme is no key.
        async with s.post(
            f"{h.url}/v1/embeddings",
            json={"model": "emb", "input": "x"},
            headers={"Authorization": f"Basic {KEY_A}"},
        ) as r:
            assert r.status == 401
        # Probes stay open.
        async with s.get(f"{h.url}/healthz") as r:
            assert r.status == 200
        metrics = h.metrics.render().decode()
        assert 'glowplug_api_key_requests_total{code="200",key="glowplug-system/team-a"} 1.0' in (
            metrics
        )
        assert 'glowplug_api_key_rejected_total{key="none",reason="invalid_api_key"} 3.0' in (
            metrics
        )
        assert KEY_A not in metrics


async def test_auto_mode_is_open_until_a_key_exists() -> None:
    keys = KeyStore("auto", OWN)
    async with harness(keys=keys) as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        assert (await call(s, h.url, None))[0] == 200
        keys.apply(secret("team-a", KEY_A))
        assert (await call(s, h.url, None))[0] == 401
        keys.delete(secret("team-a", KEY_A))
        assert (await call(s, h.url, None))[0] == 200


async def test_allowlist_scope_and_models_list() -> None:
    keys = KeyStore("required", OWN)
    keys.apply(secret("team-a", KEY_A, models="small, ns2/other"))
    # A key Secret in ns2 may call ns2 only, whatever its list says.
    keys.apply(secret("ns2-key", KEY_B, namespace="ns2"))
    async with harness(keys=keys) as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj("emb", "ns1", served="small"))
        h.services.apply_service(service_obj("big", "ns1", served="big"))
        h.services.apply_service(service_obj("other", "ns2", served="other"))
        for ns, name in (("ns1", "emb"), ("ns1", "big"), ("ns2", "other")):
            h.services.set_endpoints(ns, name, [e.address])
        assert (await call(s, h.url, KEY_A, "small"))[0] == 200
        assert (await call(s, h.url, KEY_A, "other"))[0] == 200
        status, body, _ = await call(s, h.url, KEY_A, "big")
        assert status == 403 and body["error"]["code"] == "model_not_allowed"
        assert body["error"]["param"] == "model"
        assert (await call(s, h.url, KEY_B, "other"))[0] == 200
        status, body, _ = await call(s, h.url, KEY_B, "small")
        assert status == 403 and body["error"]["code"] == "model_not_allowed"
        # /v1/models lists what each key may call.
        status, body, _ = await call(s, h.url, KEY_A, path="/v1/models")
        assert status == 200
        assert sorted(m["id"] for m in body["data"]) == ["other", "small"]
        _, body, _ = await call(s, h.url, KEY_B, path="/v1/models")
        assert [m["id"] for m in body["data"]] == ["other"]
        status, body, _ = await call(s, h.url, None, path="/v1/models")
        assert status == 401


async def test_a_key_without_wake_cannot_wake_but_can_use_a_warm_service() -> None:
    keys = KeyStore("required", OWN)
    keys.apply(secret("no-wake", KEY_A, wake="false"))
    keys.apply(secret("waker", KEY_B))
    async with harness(keys=keys) as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(replicas=0))
        status, body, _ = await call(s, h.url, KEY_A)
        assert status == 403 and body["error"]["code"] == "wake_not_allowed"
        assert h.scaler.writes == 0
        h.services.set_endpoints("ns1", "emb", [e.address])
        assert (await call(s, h.url, KEY_A))[0] == 200


async def test_a_key_without_wake_gets_cached_answers_at_zero() -> None:
    """Issue 14: a fully cached request needs no wake, so a key that may not wake is
    answered from the cache at zero; a request with a miss is still refused."""
    keys = KeyStore("required", OWN)
    keys.apply(secret("no-wake", KEY_A, wake="false"))
    keys.apply(secret("waker", KEY_B))
    cached = {"enabled": True}
    async with (
        harness(keys=keys) as h,
        engines(1, text_vectors=True) as (e,),
        aiohttp.ClientSession() as s,
    ):
        h.services.apply_service(service_obj(replicas=0, cache=cached))
        h.scaler.on_wake = [e.address]
        # The waker computes "hi" (a wake); then the service goes back to zero.
        assert (await call(s, h.url, KEY_B))[0] == 200
        assert h.scaler.writes == 1 and e.requests == 1
        h.services.set_endpoints("ns1", "emb", [])
        h.scaler.replicas.clear()
        h.services.apply_service(service_obj(replicas=0, cache=cached))
        status, body, headers = await call(s, h.url, KEY_A)
        assert status == 200, body
        assert headers["X-Glowplug-Cache"] == "hit"
        assert h.scaler.writes == 1 and e.requests == 1  # no wake, no engine
        # A miss would need the engine, so a wake: still refused, and nothing woken.
        async with s.post(
            f"{h.url}/v1/embeddings",
            json={"model": "emb", "input": ["hi", "new text"]},
            headers={"Authorization": f"Bearer {KEY_A}"},
        ) as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "wake_not_allowed"
        assert h.scaler.writes == 1 and e.requests == 1
        metrics = h.metrics.render().decode()
        assert (
            'glowplug_api_key_rejected_total{key="glowplug-system/no-wake",'
            'reason="wake_not_allowed"} 1.0'
        ) in metrics
        # What the engine computed per key, for the operator's attribution: the waker's
        # one miss; the cached answer and the refused request computed nothing.
        async with s.get(f"{h.url}/stats") as r:
            entry = (await r.json())["services"]["ns1/emb"]
        assert entry["computedInputs"] == {"glowplug-system/waker": 1}
        # Warm now: a request with one hit and two misses computes two for no-wake.
        h.services.set_endpoints("ns1", "emb", [e.address])
        async with s.post(
            f"{h.url}/v1/embeddings",
            json={"model": "emb", "input": ["hi", "x", "y"]},
            headers={"Authorization": f"Bearer {KEY_A}"},
        ) as r:
            assert r.status == 200
        async with s.get(f"{h.url}/stats") as r:
            entry = (await r.json())["services"]["ns1/emb"]
        assert entry["computedInputs"] == {
            "glowplug-system/waker": 1,
            "glowplug-system/no-wake": 2,
        }


async def test_rate_and_concurrency_limits_answer_429_with_retry_after() -> None:
    keys = KeyStore("required", OWN)
    keys.apply(secret("slow", KEY_A, requestsPerSecond="0.5"))
    keys.apply(secret("one-at-a-time", KEY_B, maxConcurrent="1"))
    async with harness(keys=keys) as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        assert (await call(s, h.url, KEY_A))[0] == 200
        status, body, headers = await call(s, h.url, KEY_A)
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert body["error"]["type"] == "rate_limit_error"
        assert int(headers["Retry-After"]) in (1, 2)
        e.gate = asyncio.Event()
        first = asyncio.create_task(call(s, h.url, KEY_B))
        for _ in range(500):
            if e.requests >= 2:
                break
            await asyncio.sleep(0.01)
        status, body, headers = await call(s, h.url, KEY_B)
        assert status == 429 and "maxConcurrent" in body["error"]["message"]
        assert headers["Retry-After"] == "1"
        e.gate.set()
        assert (await first)[0] == 200
        assert (await call(s, h.url, KEY_B))[0] == 200  # the slot came back
        metrics = h.metrics.render().decode()
        assert (
            'glowplug_api_key_rejected_total{key="glowplug-system/slow",reason="rate_limited"}'
            in (metrics)
        )
        assert 'glowplug_api_key_inputs_total{key="glowplug-system/one-at-a-time"} 2.0' in metrics


async def test_rotation_replaces_the_key_at_once() -> None:
    keys = KeyStore("required", OWN)
    keys.apply(secret("team-a", KEY_A))
    async with harness(keys=keys) as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        assert (await call(s, h.url, KEY_A))[0] == 200
        keys.apply(secret("team-a", KEY_B))  # the watch's MODIFIED event
        assert (await call(s, h.url, KEY_A))[0] == 401
        assert (await call(s, h.url, KEY_B))[0] == 200
        keys.resync([])  # a re-list without it
        assert (await call(s, h.url, KEY_B))[0] == 401


def test_bad_key_secrets_name_the_field_and_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    cases = {
        "data.key is missing": secret("a", ""),
        "shorter than 16": secret("a", "short"),
        "data.wake must be true or false": secret("a", KEY_A, wake="maybe"),
        "data.requestsPerSecond": secret("a", KEY_A, requestsPerSecond="-3"),
        "data.maxConcurrent": secret("a", KEY_A, maxConcurrent="0"),
    }
    for words, obj in cases.items():
        with pytest.raises(KeySecretError, match=words):
            parse_secret(obj, OWN)
    keys = KeyStore("required", OWN)
    keys.apply(secret("a", "tiny-k3y"))
    assert not keys.by_ref
    assert "glowplug-system/a" in caplog.text and "shorter than 16" in caplog.text
    assert "tiny-k3y" not in caplog.text  # never logged
    # Two Secrets with one key: the second is refused (it would be ambiguous in metrics).
    keys.apply(secret("a", KEY_A))
    keys.apply(secret("b", KEY_A))
    assert list(keys.by_ref) == ["glowplug-system/a"]
