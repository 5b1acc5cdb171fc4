"""The operator's output running on the test bed: the rendered engine pod becomes Ready
through the node agent, is listed in the Service's EndpointSlice, answers embeddings (the
SGLang stand-in), stops on scale to zero, and is garbage-collected with its owner."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.cluster.procs import start_time
from e2e.tests.conftest import OperatorProcess
from e2e.tests.helpers import apply, container_pid, endpoint_ips, is_ready, wait_for

pytestmark = pytest.mark.cluster

SELECTOR = "glowplug.dev/service=minilm"


def embedding_service(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": "minilm"},
        "spec": {
            "model": {
                "id": "sentence-transformers/all-MiniLM-L6-v2",
                "source": {"huggingFace": {}},
            },
            # Replicas are driven by the test alone: no autoscaler decisions in between.
            "scaling": {"autoscale": False, "minReplicas": 0, "maxReplicas": 2},
            "replicas": replicas,
        },
    }


def pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", SELECTOR, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def ready_pod(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    return next((p for p in pods(cluster, namespace) if is_ready(p)), None)


def exists(cluster: Cluster, namespace: str, kind: str, name: str) -> bool:
    out = cluster.kubectl("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name")
    return bool(out.stdout.strip())


def test_rendered_pod_ready_in_endpoints_answers_and_stops_at_zero(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    apply(cluster, namespace, embedding_service(replicas=1))
    p = wait_for(lambda: ready_pod(cluster, namespace), 120, what="a Ready engine pod")
    ip = p["status"]["podIP"]
    wait_for(lambda: endpoint_ips(cluster, namespace, "minilm") == [ip], 60, what="EndpointSlice")

    req = urllib.request.Request(
        f"http://{ip}:30000/v1/embeddings",
        data=json.dumps(
            {"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "hi"}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.load(resp)
    assert len(body["data"]) == 1 and body["usage"]["prompt_tokens"] > 0
    with urllib.request.urlopen(f"http://{ip}:30000/model_info", timeout=10) as resp:
        assert json.load(resp)["stand_in"] is True

    pid = container_pid(p, "engine")
    st = start_time(pid)
    assert st is not None
    cluster.kubectl("scale", "embsvc/minilm", "-n", namespace, "--replicas=0")
    wait_for(lambda: start_time(pid) != st, 120, what=f"engine process {pid} to stop")
    wait_for(lambda: not pods(cluster, namespace), 60, what="no engine pods")
    assert endpoint_ips(cluster, namespace, "minilm") == []


def test_deleting_the_embedding_service_collects_everything(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    apply(cluster, namespace, embedding_service(replicas=1))
    p = wait_for(lambda: ready_pod(cluster, namespace), 120, what="a Ready engine pod")
    pid = container_pid(p, "engine")
    st = start_time(pid)
    assert exists(cluster, namespace, "deployment", "minilm")
    assert exists(cluster, namespace, "service", "minilm")
    rs = cluster.kubectl("get", "rs", "-n", namespace, "-l", SELECTOR, "-o", "name").stdout
    assert rs.strip()

    cluster.kubectl("delete", "embsvc", "minilm", "-n", namespace, "--wait=false")
    wait_for(
        lambda: (
            not exists(cluster, namespace, "deployment", "minilm")
            and not exists(cluster, namespace, "service", "minilm")
            and not cluster.kubectl(
                "get", "rs", "-n", namespace, "-l", SELECTOR, "-o", "name"
            ).stdout.strip()
            and not pods(cluster, namespace)
        ),
        180,
        what="Deployment, ReplicaSet, Pod and Service to be garbage-collected",
    )
    assert start_time(pid) != st
