"""idleTimeout: auto on the test bed: the operator learns the service's idle gaps from the
activator's /stats, scales to zero at the learned timeout (well before the upper bound),
writes what it learned to status.idlePolicy, and a restarted operator resumes from it;
on a periodic trickle it scales to zero early and pre-warms ahead of the next request.

Real processes: the test bed's API server and node agent, the SGLang stand-in as engine
pods (a test double of SGLang), ``glowplug activator`` on 127.0.0.1 and ``glowplug
operator`` reading its /stats.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.tests.conftest import OperatorFactory
from e2e.tests.helpers import ActivatorProcess, apply, wait_for
from glowplug.metrics import REQUESTS_TOTAL

pytestmark = pytest.mark.cluster

NAME = "learner"
GAP = 12.0  # seconds between requests: long against the wake price, so auto learns "short"
MAX = 30.0


def service(auto: dict[str, Any] | None = None) -> dict[str, Any]:
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
                "autoIdleTimeout": auto
                or {"min": "2s", "max": f"{MAX:g}s", "wakePenalty": "1s", "prewarm": False},
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


def metric(act: ActivatorProcess, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in act.metrics().splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def cold_answers(act: ActivatorProcess, namespace: str) -> float:
    """Requests this activator answered after waiting for a wake (path="cold")."""
    labels = {"namespace": namespace, "service": NAME, "code": "200", "path": "cold"}
    return metric(act, REQUESTS_TOTAL, **labels)


def embed(url: str) -> int:
    body = json.dumps({"model": NAME, "input": "hello"}).encode()
    req = urllib.request.Request(
        f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=180) as resp:
        json.load(resp)
        return int(resp.status)


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


PERIOD = 24.0  # seconds from one request's end to the next: the trickle's period
PW_MAX = 40.0


def test_periodic_trickle_is_prewarmed_ahead_of_the_request(
    cluster: Cluster, namespace: str, activator: ActivatorProcess, operator_factory: OperatorFactory
) -> None:
    """A request every PERIOD seconds. Keeping the replica up for PERIOD costs more than
    pre-warming it a wake duration before the next request, so once auto has seen enough
    gaps it plans a pre-warm (status.idlePolicy.prewarm), scales to zero after min, brings
    a replica back on its own before the next request, and that request is answered warm:
    it does not wait for a cold start."""
    start_operator(operator_factory, namespace, activator)
    apply(cluster, namespace, service(
        {"min": "2s", "max": f"{PW_MAX:g}s", "wakePenalty": "20s"}
    ))  # fmt: skip
    wait_for(lambda: activator.stats(NAME) != {}, 30, what=f"{NAME} routed")

    def plan() -> dict[str, Any] | None:
        got = (status(cluster, namespace).get("idlePolicy") or {}).get("prewarm")
        return dict(got) if got else None

    for _ in range(12):  # each period is one learned gap; a plan needs 5 and a wake time
        assert embed(activator.url) == 200
        if plan() is not None:
            break
        time.sleep(PERIOD)
    learned = plan()
    assert learned is not None, status(cluster, namespace)
    assert status(cluster, namespace).get("lastWakeSeconds"), status(cluster, namespace)
    print(f"learned: {status(cluster, namespace)['idlePolicy']}")

    for round_ in range(2):
        finished = float(activator.stats(NAME)["lastRequestFinished"])
        # Early zero: the plan's keep-alive is min (2 s), not the period.
        wait_for(lambda: replicas(cluster, namespace) == 0, PERIOD, what="early scale to zero")
        # The pre-warm: a replica again, ready, before anyone asked.
        wait_for(
            lambda: replicas(cluster, namespace) == 1 and bool(ready_pods(cluster, namespace))
            and routed_ready(activator),
            PERIOD + 30, what="the pre-warmed replica ready",
        )  # fmt: skip
        raised = time.time() - finished
        cold_before = cold_answers(activator, namespace)
        time.sleep(max(0.0, finished + PERIOD - time.time()))
        assert embed(activator.url) == 200
        assert cold_answers(activator, namespace) == cold_before, "waited for a cold start"
        print(f"round {round_}: pre-warmed replica ready {raised:.1f} s into the gap")


def routed_ready(act: ActivatorProcess) -> bool:
    """Whether the activator routes to a ready replica (its /v1/models says so)."""
    with urllib.request.urlopen(f"{act.url}/v1/models", timeout=5) as resp:
        models = json.load(resp)["data"]
    return any(m["glowplug"]["name"] == NAME and m["glowplug"]["ready"] for m in models)


def ready_pods(cluster: Cluster, namespace: str) -> list[str]:
    pods = cluster.api(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods?labelSelector=glowplug.dev%2Fservice%3D{NAME}",
    )["items"]
    return [
        p["metadata"]["name"]
        for p in pods
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    ]
