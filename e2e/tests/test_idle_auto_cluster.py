"""idleTimeout: auto on the test bed: the operator learns the service's idle gaps from the
activator's /stats, scales to zero at the learned timeout (well before the upper bound),
writes what it learned to status.idlePolicy, and a restarted operator resumes from it.

Real processes: the test bed's API server and node agent, the SGLang stand-in as engine
pods (a test double of SGLang), ``glowplug activator`` on 127.0.0.1 and ``glowplug
operator`` reading its /stats.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.tests.conftest import OperatorFactory
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, apply, wait_for

pytestmark = pytest.mark.cluster

NAME = "learner"
GAP = 12.0  # seconds between requests: long against the wake price, so auto learns "short"
MAX = 30.0


def service() -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"id": "test/stand-in-model", "source": {"huggingFace": {}}},
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": 1,
                "idleTimeout": "auto",
                "autoIdleTimeout": {"min": "2s", "max": f"{MAX:g}s", "wakePenalty": "1s"},
            },
        },
    }


def status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    obj = cluster.api(
        "GET", f"/apis/glowplug.dev/v1alpha1/namespaces/{namespace}/embeddingservices/{NAME}"
    )
    return dict(obj.get("status") or {})


def replicas(cluster: Cluster, namespace: str) -> int:
    obj = cluster.api(
        "GET", f"/apis/glowplug.dev/v1alpha1/namespaces/{namespace}/embeddingservices/{NAME}"
    )
    return int(obj["spec"].get("replicas") or 0)


def embed(url: str) -> int:
    body = json.dumps({"model": NAME, "input": "hello"}).encode()
    req = urllib.request.Request(
        f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=180) as resp:
        json.load(resp)
        return int(resp.status)


@pytest.fixture
def activator(
    cluster: Cluster, namespace: str, crd_installed: Path, tmp_path: Path
) -> Iterator[ActivatorProcess]:
    if not GLOWPLUG.exists():
        pytest.skip(f"{GLOWPLUG} is missing: run `make install`")
    act = ActivatorProcess(cluster, namespace, tmp_path / "activator.log")
    act.start()
    try:
        yield act
    finally:
        act.stop()
        print(f"\n--- activator log tail ---\n{act.log()[-1500:]}")


def start_operator(factory: OperatorFactory, namespace: str, act: ActivatorProcess) -> Any:
    return factory(
        "--standalone", "--namespace", namespace, "--metrics-port", "0",
        "--activator-url", act.url,
    )  # fmt: skip


def seconds_to_zero(cluster: Cluster, namespace: str, act: ActivatorProcess) -> float:
    """Send one request (waking if needed); how long after it finished replicas hit 0."""
    assert embed(act.url) == 200
    finished = act.stats(NAME)["lastRequestFinished"]
    wait_for(lambda: replicas(cluster, namespace) == 0, MAX + 60, what="scale to zero")
    return float(time.time() - finished)


def test_learns_a_short_timeout_and_keeps_it_across_a_restart(
    cluster: Cluster, namespace: str, activator: ActivatorProcess, operator_factory: OperatorFactory
) -> None:
    op = start_operator(operator_factory, namespace, activator)
    apply(cluster, namespace, service())
    wait_for(lambda: activator.stats(NAME) != {}, 30, what=f"{NAME} routed")
    for _ in range(4):  # each quiet spell of about GAP seconds is one learned gap
        seconds_to_zero(cluster, namespace, activator)
        time.sleep(GAP)
    learned = wait_for(
        lambda: (status(cluster, namespace).get("idlePolicy") or {}).get("gaps", 0) >= 3 and
        status(cluster, namespace)["idlePolicy"],
        30, what="status.idlePolicy with the gaps",
    )  # fmt: skip
    assert learned["idleTimeoutSeconds"] < MAX / 2, learned
    took = seconds_to_zero(cluster, namespace, activator)
    assert took < MAX - 5, (took, learned)  # the learned timeout, not the upper bound

    # A new operator process starts from status.idlePolicy, not from scratch.
    op.stop()
    start_operator(operator_factory, namespace, activator)
    time.sleep(GAP)
    took = seconds_to_zero(cluster, namespace, activator)
    assert took < MAX - 5, took
    after = status(cluster, namespace)["idlePolicy"]
    assert after["gaps"] >= learned["gaps"], (after, learned)
