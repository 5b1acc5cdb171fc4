"""Rendering: Deployment and Service manifests from the typed spec."""

from __future__ import annotations

from typing import Any

import pytest

from glowplug.api import EmbeddingService, parse
from glowplug.kube import labels
from glowplug.operator import render


def svc(**spec: Any) -> EmbeddingService:
    body: dict[str, Any] = {
        "model": {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}},
    }
    body.update(spec)
    return parse(
        {
            "metadata": {"name": "qwen3-small", "namespace": "search", "uid": "uid-123"},
            "spec": body,
        }
    )


EXPECTED_LABELS = {
    "glowplug.dev/service": "qwen3-small",
    "app.kubernetes.io/name": "sglang",
    "app.kubernetes.io/instance": "qwen3-small",
    "app.kubernetes.io/component": "embedding-engine",
    "app.kubernetes.io/part-of": "glowplug",
    "app.kubernetes.io/managed-by": "glowplug",
}

EXPECTED_OWNER = {
    "apiVersion": "glowplug.dev/v1alpha1",
    "kind": "EmbeddingService",
    "name": "qwen3-small",
    "uid": "uid-123",
    "controller": True,
    "blockOwnerDeletion": True,
}


def test_deployment_identity_labels_owner() -> None:
    d = render.render_deployment(svc())
    assert (d["apiVersion"], d["kind"]) == ("apps/v1", "Deployment")
    assert d["metadata"]["name"] == "qwen3-small"
    assert d["metadata"]["namespace"] == "search"
    assert d["metadata"]["labels"] == EXPECTED_LABELS
    assert d["metadata"]["ownerReferences"] == [EXPECTED_OWNER]
    assert d["spec"]["selector"] == {"matchLabels": {"glowplug.dev/service": "qwen3-small"}}
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == EXPECTED_LABELS
    # The selector must select the template.
    assert d["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_service() -> None:
    s = render.render_service(svc())
    assert (s["apiVersion"], s["kind"]) == ("v1", "Service")
    assert s["metadata"]["name"] == "qwen3-small"
    assert s["metadata"]["namespace"] == "search"
    assert s["metadata"]["labels"] == EXPECTED_LABELS
    assert s["metadata"]["ownerReferences"] == [EXPECTED_OWNER]
    assert s["spec"]["selector"] == {"glowplug.dev/service": "qwen3-small"}
    assert s["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert s["metadata"]["annotations"]["glowplug.dev/engine-port"] == "30000"


def test_service_port_targets_the_engine_container_port() -> None:
    d = render.render_deployment(svc(engine={"name": "tei"}, resources={"gpus": 0}))
    (port,) = d["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert port["name"] == render.render_service(svc())["spec"]["ports"][0]["targetPort"]
    assert port["containerPort"] == 8080


def test_selector_string() -> None:
    assert render.selector_string(svc()) == "glowplug.dev/service=qwen3-small"


@pytest.mark.parametrize(
    ("scaling", "replicas", "expected"),
    [
        ({}, 0, 0),
        ({}, 1, 1),
        ({"maxReplicas": 2}, 5, 2),
        ({"minReplicas": 1, "maxReplicas": 3}, 0, 1),
        ({"autoscale": False, "maxReplicas": 2}, 5, 5),
        ({"autoscale": False, "minReplicas": 1, "maxReplicas": 2}, 0, 0),
    ],
)
def test_replicas(scaling: dict[str, Any], replicas: int, expected: int) -> None:
    d = render.render_deployment(svc(scaling=scaling, replicas=replicas))
    assert d["spec"]["replicas"] == expected


def test_rollout_never_drops_capacity() -> None:
    strategy = render.render_deployment(svc())["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert render.render_deployment(svc())["spec"]["progressDeadlineSeconds"] >= 1800


def test_pod_spec_basics() -> None:
    pod = render.render_deployment(svc(engine={"requestTimeout": "3m"}))["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["name"] == "engine"
    assert spec["terminationGracePeriodSeconds"] > 180 + 10
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "nodeSelector" not in spec and "affinity" not in spec
    assert "priorityClassName" not in spec
    assert [v["name"] for v in spec["volumes"]] == ["dshm"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"] == "dshm"
    assert annotations["kubectl.kubernetes.io/default-container"] == "engine"


def test_pod_overrides_from_spec_pod() -> None:
    toleration = {"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    s = svc(
        pod={
            "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "tolerations": [
                toleration,
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            ],
            "affinity": affinity,
            "priorityClassName": "embeddings",
            "labels": {"team": "search", "glowplug.dev/service": "spoofed"},
            "annotations": {"prometheus.io/scrape": "true"},
        },
        model={"id": "m", "source": {"hostPath": {"path": "/mnt/models"}}},
    )
    pod = render.render_deployment(s)["spec"]["template"]
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    # The GPU toleration once, then the user's extra one.
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        toleration,
    ]
    assert spec["affinity"] == affinity
    assert spec["priorityClassName"] == "embeddings"
    assert pod["metadata"]["labels"]["team"] == "search"
    # Our selector label wins over a user label of the same key.
    assert pod["metadata"]["labels"]["glowplug.dev/service"] == "qwen3-small"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations[render.SAFE_TO_EVICT_LOCAL_VOLUMES] == "dshm,model"


def test_template_hash_tracks_the_template_only() -> None:
    a = render.render_deployment(svc(replicas=0))
    b = render.render_deployment(svc(replicas=1))
    c = render.render_deployment(svc(engine={"args": ["--dtype", "bfloat16"]}))
    key = labels.TEMPLATE_HASH_ANNOTATION
    assert a["metadata"]["annotations"][key] == b["metadata"]["annotations"][key]
    assert a["metadata"]["annotations"][key] != c["metadata"]["annotations"][key]


def test_rendering_is_deterministic() -> None:
    assert render.render_deployment(svc()) == render.render_deployment(svc())


def test_tei_cpu_pod_has_no_gpu_bits() -> None:
    d = render.render_deployment(
        svc(engine={"name": "tei"}, resources={"gpus": 0, "cpu": "2", "memory": "4Gi"})
    )
    spec = d["spec"]["template"]["spec"]
    assert "tolerations" not in spec
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]
    assert d["metadata"]["labels"]["app.kubernetes.io/name"] == "tei"
    # The selector does not depend on the engine, so switching engines is a rollout.
    assert d["spec"]["selector"] == {"matchLabels": {"glowplug.dev/service": "qwen3-small"}}
