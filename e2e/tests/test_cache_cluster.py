"""The embedding cache on the test bed: repeats are answered at zero, without a wake,
from this activator's memory and, through a real redis-server, from another replica's.

Real processes: the test bed's API server and node agent, the SGLang stand-in as engine
pods (a test double of SGLang), ``glowplug operator`` scaling to zero after a short
idleTimeout, ``glowplug activator`` as host processes on 127.0.0.1, and Debian's
redis-server on 127.0.0.1 (scripts/install-redis.sh).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.redisserver import PASSWORD, RedisServer, RedisUnavailable, redis_server_binary
from e2e.tests.conftest import OperatorFactory
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, apply, replicas_and_pods, wait_for

pytestmark = pytest.mark.cluster

NAME = "cached"


def service() -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"id": "test/stand-in-model", "source": {"huggingFace": {}}},
            "scaling": {"minReplicas": 0, "maxReplicas": 1, "idleTimeout": "3s"},
            "cache": {"enabled": True, "ttl": "1h"},
        },
    }


def embed(url: str, inputs: list[str]) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = json.dumps({"model": NAME, "input": inputs}).encode()
    req = urllib.request.Request(
        f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=180) as resp:
        return int(resp.status), json.load(resp), dict(resp.headers)


def metric(act: ActivatorProcess, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in act.metrics().splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    try:
        binary = redis_server_binary()
    except RedisUnavailable as err:
        pytest.skip(f"no redis-server: {err}")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def activators(
    cluster: Cluster, namespace: str, crd_installed: Path, tmp_path: Path
) -> Iterator[Callable[..., ActivatorProcess]]:
    if not GLOWPLUG.exists():
        pytest.skip(f"{GLOWPLUG} is missing: run `make install`")
    made: list[ActivatorProcess] = []

    def start(redis_url: str = "") -> ActivatorProcess:
        args = ("--cache-redis-url", redis_url) if redis_url else ()
        a = ActivatorProcess(
            cluster, namespace, tmp_path / f"activator-{len(made)}.log", extra_args=args,
            env={"GLOWPLUG_CACHE_REDIS_PASSWORD": PASSWORD},
        )  # fmt: skip
        made.append(a)
        a.start()
        return a

    try:
        yield start
    finally:
        for a in made:
            a.stop()
            print(f"\n--- activator log {a.log_path} tail ---\n{a.log()[-1500:]}")


def wake_answer_and_wait_for_zero(
    cluster: Cluster, namespace: str, act: ActivatorProcess, factory: OperatorFactory
) -> dict[str, Any]:
    factory(
        "--standalone", "--namespace", namespace, "--metrics-port", "0",
        "--activator-url", act.url,
    )  # fmt: skip
    apply(cluster, namespace, service())
    wait_for(lambda: act.stats(NAME) != {}, 30, what=f"{NAME} routed")
    status, first, headers = embed(act.url, ["alpha", "beta"])
    assert status == 200 and headers["X-Glowplug-Cache"] == "miss", first
    assert first["usage"]["prompt_tokens"] > 0
    wait_for(
        lambda: replicas_and_pods(cluster, namespace, NAME) == (0, 0), 120, what="scale to zero"
    )
    return first


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_repeats_are_answered_at_zero_without_a_wake(
    cluster: Cluster,
    namespace: str,
    activators: Callable[..., ActivatorProcess],
    operator_factory: OperatorFactory,
    request: pytest.FixtureRequest,
    shared: bool,
) -> None:
    url = request.getfixturevalue("redis").url if shared else ""
    act = activators(url)
    first = wake_answer_and_wait_for_zero(cluster, namespace, act, operator_factory)
    labels = {"namespace": namespace, "service": NAME}
    assert metric(act, "glowplug_activator_wakes_total", outcome="ready", **labels) == 1

    # At zero: the repeat is answered by this activator, and nothing wakes.
    status, again, headers = embed(act.url, ["beta", "alpha"])
    assert status == 200 and headers["X-Glowplug-Cache"] == "hit", again
    assert [d["embedding"] for d in again["data"]] == [
        first["data"][1]["embedding"],
        first["data"][0]["embedding"],
    ]
    assert again["usage"]["prompt_tokens"] == 0
    assert replicas_and_pods(cluster, namespace, NAME) == (0, 0)
    assert metric(act, "glowplug_cache_served_at_zero_total", **labels) == 1
    assert metric(act, "glowplug_cache_wakes_avoided_total", **labels) == 1
    if not shared:
        return
    # A second activator replica, empty memory, same Redis: a hit at zero as well.
    other = activators(url)
    wait_for(lambda: other.stats(NAME) != {}, 30, what=f"{NAME} routed by the second")
    status, body, headers = embed(other.url, ["alpha"])
    assert status == 200 and headers["X-Glowplug-Cache"] == "hit", body
    assert body["data"][0]["embedding"] == first["data"][0]["embedding"]
    assert metric(other, "glowplug_cache_hits_total", tier="shared", **labels) == 1
    assert replicas_and_pods(cluster, namespace, NAME) == (0, 0)
    assert metric(other, "glowplug_activator_wakes_total", outcome="ready", **labels) == 0
