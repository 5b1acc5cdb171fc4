"""The shared embedding cache against a real redis-server (Debian's, extracted by
scripts/install-redis.sh) on 127.0.0.1: two activators share entries, and a Redis that is
down, stops, or refuses the password is a warning, never a failed request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from activator_fakes import DIMS, engines, harness, service_obj, text_vector
from e2e.redisserver import PASSWORD, RedisServer, RedisUnavailable, redis_server_binary
from test_activator_cache import metric, post, vectors

from glowplug.activator.cache import MemoryCache
from glowplug.activator.embeddingcache import EmbeddingCache
from glowplug.activator.sharedcache import SharedCache

pytest.importorskip("redis")
CACHED = {"enabled": True, "ttl": "1h"}


@pytest.fixture(scope="module")
def redis_server_bin() -> str:
    try:
        return redis_server_binary()
    except RedisUnavailable as err:
        pytest.skip(f"no redis-server: {err}")


@pytest.fixture
def redis_server(redis_server_bin: str) -> Iterator[RedisServer]:
    server = RedisServer(redis_server_bin)
    server.start()
    try:
        yield server
    finally:
        server.close()


def shared(url: str, h_metrics: Any = None, **kw: Any) -> SharedCache:
    return SharedCache(url, password=PASSWORD, retry_seconds=0.3, **kw)


@asynccontextmanager
async def activator(url: str, **kw: Any) -> AsyncIterator[Any]:
    cache = EmbeddingCache(MemoryCache(), shared(url, **kw))
    async with harness(cache=cache) as h:
        yield h


async def test_two_activators_share_entries_and_answer_at_zero(redis_server: RedisServer) -> None:
    async with (
        activator(redis_server.url) as a,
        activator(redis_server.url) as b,
        engines(1, text_vectors=True) as (e,),
        aiohttp.ClientSession() as s,
    ):
        assert a.activator.cache.shared is not None and await a.activator.cache.shared.ping()
        a.services.apply_service(service_obj(cache=CACHED))
        a.services.set_endpoints("ns1", "emb", [e.address])
        status, body, _ = await post(s, a.url, {"model": "emb", "input": ["p", "q"]})
        assert status == 200, body
        await a.activator.cache.shared.flush()
        # The other replica holds nothing in memory and its service is at zero.
        b.services.apply_service(service_obj(replicas=0, cache=CACHED))
        status, body, headers = await post(s, b.url, {"model": "emb", "input": ["q", "p"]})
        assert status == 200, body
        assert headers["X-Glowplug-Cache"] == "hit"
        assert vectors(body) == [text_vector("q", DIMS), text_vector("p", DIMS)]
        assert b.scaler.calls == 0 and e.requests == 1
        assert (
            metric(b, "glowplug_cache_hits_total", namespace="ns1", service="emb", tier="shared")
            == 2
        )
        # Copied into b's memory: the next hit does not go to Redis.
        _, _, headers = await post(s, b.url, {"model": "emb", "input": ["q", "p"]})
        assert (
            metric(b, "glowplug_cache_hits_total", namespace="ns1", service="emb", tier="memory")
            == 2
        )


async def test_redis_down_warns_once_and_serves_then_recovers(
    redis_server_bin: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(redis_server_bin)  # not started yet: nothing listens
    caplog.set_level(logging.INFO, "glowplug.activator.cache")
    async with (
        activator(server.url) as a,
        engines(1, text_vectors=True) as (e,),
        aiohttp.ClientSession() as s,
    ):
        a.services.apply_service(service_obj(cache=CACHED))
        a.services.set_endpoints("ns1", "emb", [e.address])
        for i in range(5):
            status, body, _ = await post(s, a.url, {"model": "emb", "input": [f"t{i}"]})
            assert status == 200, body
            assert vectors(body) == [text_vector(f"t{i}", DIMS)]
            await asyncio.sleep(0.1)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "not answering" in warnings[0].getMessage()
        assert server.url.split("//")[1] in warnings[0].getMessage()
        assert a.metrics.cache_shared_errors._value.get() >= 1
        # Redis comes up: the tier is used again (after the retry interval) and says so.
        server.start()
        try:
            await asyncio.sleep(0.4)
            await post(s, a.url, {"model": "emb", "input": ["fresh"]})
            assert a.activator.cache.shared is not None
            await a.activator.cache.shared.flush()
            assert a.activator.cache.shared.up
            assert any("answers again" in r.getMessage() for r in caplog.records)
            got = await a.activator.cache.shared.get_many(
                [next(iter(a.activator.cache.memory._services["ns1/emb"].entries))]
            )
            assert len(got) == 1
            # Redis stops mid-flight: still served, from memory and the engine.
            server.stop()
            status, body, headers = await post(
                s, a.url, {"model": "emb", "input": ["fresh", "new"]}
            )
            assert status == 200 and headers["X-Glowplug-Cache"] == "partial"
            assert vectors(body) == [text_vector("fresh", DIMS), text_vector("new", DIMS)]
        finally:
            server.close()


async def test_wrong_password_is_a_warning_not_a_crash(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "glowplug.activator.cache")
    bad = SharedCache(f"redis://:wrong@127.0.0.1:{redis_server.port}/0", retry_seconds=0.3)
    try:
        assert await bad.ping() is False
        assert await bad.get_many([b"k"]) == [None]
        msgs = [r.getMessage() for r in caplog.records]
        assert len(msgs) == 1 and "wrong" not in msgs[0] and "***@127.0.0.1" in msgs[0]
    finally:
        await bad.close()
