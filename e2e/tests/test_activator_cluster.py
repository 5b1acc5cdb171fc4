"""The activator on the test bed: wake from zero, bursts at zero, pods lost under load,
and a service that can never start.

Real processes: the test bed's API server and node agent, the SGLang stand-in as engine
pods (a test double of SGLang), ``glowplug operator`` scoped to the test's namespace, and
``glowplug activator`` as a host process on 127.0.0.1 (it reaches pod IPs directly).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster, audit
from e2e.tests.conftest import OperatorProcess
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, apply, is_ready, wait_for

pytestmark = pytest.mark.cluster


def service(name: str, *, replicas: int = 0, image: str = "", **scaling: Any) -> dict[str, Any]:
    engine: dict[str, Any] = {"env": [{"name": "STANDIN_DELAY_MS", "value": "5"}]}
    if image:
        engine["image"] = image
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name},
        "spec": {
            "model": {"id": "test/stand-in-model", "source": {"huggingFace": {}}},
            "engine": engine,
            "scaling": {"maxReplicas": 3, "idleTimeout": "10m", "targetConcurrency": 8, **scaling},
            "replicas": replicas,
        },
    }


@pytest.fixture
def activator(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess, tmp_path: Path
) -> Iterator[ActivatorProcess]:
    if not GLOWPLUG.exists():
        pytest.skip(f"{GLOWPLUG} is missing: run `make install`")
    act = ActivatorProcess(cluster, namespace, tmp_path / "activator.log", drain_seconds=0.2)
    act.start()
    try:
        yield act
    finally:
        act.stop()
        print(f"\n--- activator log tail ---\n{act.log()[-3000:]}")


def embed(url: str, model: str, text: str = "hello", timeout: float = 120) -> tuple[int, Any]:
    body = json.dumps({"model": model, "input": text}).encode()
    req = urllib.request.Request(
        f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), json.load(resp)
    except urllib.error.HTTPError as err:
        return int(err.code), json.loads(err.read() or b"{}")
    except OSError as err:
        return 0, str(err)


def spec_replicas(cluster: Cluster, namespace: str, name: str) -> int:
    path = f"/apis/glowplug.dev/v1alpha1/namespaces/{namespace}/embeddingservices/{name}"
    return int(cluster.api("GET", path)["spec"].get("replicas") or 0)


def pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector=glowplug.dev%2Fservice%3D{name}"
    return list(cluster.api("GET", path)["items"])


def wakes(act: ActivatorProcess, namespace: str, name: str, outcome: str) -> float:
    labels = f'namespace="{namespace}",outcome="{outcome}",service="{name}"'
    prefix = "glowplug_activator_wakes_total{" + labels + "} "
    for line in act.metrics().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def wait_routed(act: ActivatorProcess, name: str) -> None:
    def routed() -> bool:
        with urllib.request.urlopen(f"{act.url}/v1/models", timeout=5) as resp:
            return any(m["glowplug"]["name"] == name for m in json.load(resp)["data"])

    wait_for(routed, 30, what=f"{name} in /v1/models")


def test_first_request_at_zero_wakes_and_succeeds(
    cluster: Cluster, namespace: str, activator: ActivatorProcess
) -> None:
    apply(cluster, namespace, service("cold"))
    wait_routed(activator, "cold")
    assert spec_replicas(cluster, namespace, "cold") == 0
    tail = audit.AuditTail(cluster.audit_log)
    status, body = embed(activator.url, "cold")
    assert status == 200, body
    assert body["model"] == "cold" and len(body["data"][0]["embedding"]) > 0
    assert spec_replicas(cluster, namespace, "cold") == 1
    assert wakes(activator, namespace, "cold", "ready") == 1
    # The wake's first request is the scale write itself, preconditioned on the version
    # the activator's watch saw (no read first). Only if the object changed since (a
    # status write by the operator) does a 409 send it to read and write again.
    scale_calls = [
        (r.verb, r.code)
        for r in tail.read()
        if r.resource == "embeddingservices/scale" and r.user_agent.startswith("glowplug-activator")
    ]
    assert scale_calls and scale_calls[0][0] == "patch", scale_calls
    assert scale_calls in ([("patch", 200)], [("patch", 409), ("get", 200), ("patch", 200)])
    # the unambiguous name works too
    status, body = embed(activator.url, f"{namespace}/cold")
    assert status == 200, body


def test_100_concurrent_requests_at_zero_all_succeed(
    cluster: Cluster, namespace: str, activator: ActivatorProcess
) -> None:
    apply(cluster, namespace, service("burst"))
    wait_routed(activator, "burst")
    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(lambda i: embed(activator.url, "burst", f"text {i}"), range(100)))
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:3]
    assert wakes(activator, namespace, "burst", "ready") == 1  # one wake for the whole burst


def test_pod_deleted_under_load_every_request_succeeds(
    cluster: Cluster, namespace: str, activator: ActivatorProcess
) -> None:
    apply(cluster, namespace, service("steady", replicas=2, autoscale=False, minReplicas=2))
    wait_routed(activator, "steady")

    def two_ready() -> bool:
        return sum(is_ready(p) for p in pods(cluster, namespace, "steady")) == 2

    wait_for(two_ready, 120, what="two ready pods")
    assert embed(activator.url, "steady")[0] == 200
    stop = threading.Event()
    results: list[int] = []
    lock = threading.Lock()

    def load(i: int) -> None:
        while not stop.is_set():
            status, _ = embed(activator.url, "steady", f"load {i}")
            with lock:
                results.append(status)

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(results) >= 50, 60, what="load running")
    victim = pods(cluster, namespace, "steady")[0]["metadata"]["name"]
    cluster.kubectl("delete", "pod", victim, "-n", namespace, "--wait=false")
    before = len(results)
    wait_for(
        lambda: victim not in {p["metadata"]["name"] for p in pods(cluster, namespace, "steady")},
        120,
        what=f"pod {victim} gone",
    )
    wait_for(lambda: len(results) >= before + 100, 60, what="load after the deletion")
    stop.set()
    for t in threads:
        t.join(130)
    bad = [s for s in results if s != 200]
    assert not bad, f"{len(bad)} of {len(results)} requests failed: {sorted(set(bad))}"


def test_service_that_cannot_start_fails_fast_with_the_reason(
    cluster: Cluster, namespace: str, activator: ActivatorProcess
) -> None:
    apply(cluster, namespace, service("broken", image="registry.invalid/no-such-image:1"))
    wait_routed(activator, "broken")
    t0 = time.monotonic()
    status, body = embed(activator.url, "broken", timeout=60)
    elapsed = time.monotonic() - t0
    assert status == 503, body
    message = body["error"]["message"]
    assert "ImagePullBackOff" in message or "ErrImagePull" in message, message
    assert elapsed < 10, f"the reason took {elapsed:.1f}s to come back"
    # later requests fail fast too, while the cause is there
    t0 = time.monotonic()
    status, body = embed(activator.url, "broken", timeout=60)
    assert status == 503 and time.monotonic() - t0 < 2, body


def test_engine_env_naming_a_missing_secret_fails_fast_with_the_reason(
    cluster: Cluster, namespace: str, activator: ActivatorProcess
) -> None:
    spec = service("noconfig")
    spec["spec"]["engine"]["env"].append(
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}
    )
    apply(cluster, namespace, spec)
    wait_routed(activator, "noconfig")
    t0 = time.monotonic()
    status, body = embed(activator.url, "noconfig", timeout=60)
    elapsed = time.monotonic() - t0
    assert status == 503, body
    assert body["error"]["code"] == "CreateContainerConfigError", body
    assert "absent" in body["error"]["message"], body
    assert elapsed < 10, f"the reason took {elapsed:.1f}s to come back"
