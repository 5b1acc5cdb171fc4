"""Rendering: the typed EmbeddingService -> its Deployment and Service manifests.

Pure functions, no API calls: the handlers apply what these return (server-side apply),
so everything the operator owns on those objects is decided here and unit-tested.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from glowplug import engines
from glowplug.api.spec import API_VERSION, KIND, EmbeddingService
from glowplug.kube.labels import (
    ENGINE_PORT_ANNOTATION,
    MANAGED_BY,
    SERVICE_LABEL,
    TEMPLATE_HASH_ANNOTATION,
)

# The Service's port: clients of the ClusterIP (rare: the activator uses pod IPs from the
# EndpointSlices) reach the engine on the usual HTTP port.
SERVICE_PORT = 80
# Budget for a rollout's new pod to become ready before the Deployment reports
# ProgressDeadlineExceeded: the startup probe's 30 minutes plus scheduling and pulling.
PROGRESS_DEADLINE_SECONDS = 2700
SAFE_TO_EVICT_LOCAL_VOLUMES = "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"

Manifest = dict[str, Any]


def selector_labels(svc: EmbeddingService) -> dict[str, str]:
    """The pod selector: only the service label, so engine or image changes keep it."""
    return {SERVICE_LABEL: svc.name}


def selector_string(svc: EmbeddingService) -> str:
    """``status.selector`` for the scale subresource (and for HPA)."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(svc).items())


def labels(svc: EmbeddingService) -> dict[str, str]:
    return {
        SERVICE_LABEL: svc.name,
        "app.kubernetes.io/name": svc.engine.name,
        "app.kubernetes.io/instance": svc.name,
        "app.kubernetes.io/component": "embedding-engine",
        "app.kubernetes.io/part-of": "glowplug",
        # No app.kubernetes.io/version: on pods it would restart every engine on a
        # glowplug upgrade.
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def owner_reference(svc: EmbeddingService) -> Manifest:
    """Makes the EmbeddingService the controller: deleting it garbage-collects the rest."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": svc.name,
        "uid": svc.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def desired_replicas(svc: EmbeddingService) -> int:
    """spec.replicas, clamped to the scaling bounds while the autoscaler owns it.

    With autoscale off, kubectl scale or an HPA own spec.replicas and it is taken as is.
    """
    return svc.scaling.clamp(svc.replicas) if svc.scaling.autoscale else svc.replicas


def _merge_tolerations(*lists: list[Manifest] | tuple[Manifest, ...]) -> list[Manifest]:
    out: list[Manifest] = []
    for items in lists:
        for item in items:
            if dict(item) not in out:
                out.append(dict(item))
    return out


def render_pod_template(svc: EmbeddingService) -> Manifest:
    engine = engines.get(svc.engine.name)
    volumes = engine.volumes(svc)
    local = [v["name"] for v in volumes if "emptyDir" in v or "hostPath" in v]
    annotations = {
        **dict(svc.pod.annotations),
        "kubectl.kubernetes.io/default-container": "engine",
    }
    if local:
        # /dev/shm and node-local model/cache directories hold nothing worth keeping:
        # let the cluster autoscaler drain and remove an idle GPU node.
        annotations[SAFE_TO_EVICT_LOCAL_VOLUMES] = ",".join(local)
    pod_spec: Manifest = {
        "containers": [engine.container(svc)],
        "volumes": volumes,
        "terminationGracePeriodSeconds": engine.termination_grace_seconds(svc),
        # Engines never call the Kubernetes API; do not hand them a token.
        "automountServiceAccountToken": False,
        # Service links would put every Service in the namespace into the environment.
        "enableServiceLinks": False,
    }
    tolerations = _merge_tolerations(engine.tolerations(svc), svc.pod.tolerations)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if svc.pod.node_selector:
        pod_spec["nodeSelector"] = dict(svc.pod.node_selector)
    if svc.pod.affinity:
        pod_spec["affinity"] = dict(svc.pod.affinity)
    if svc.pod.priority_class_name:
        pod_spec["priorityClassName"] = svc.pod.priority_class_name
    return {
        # The user's labels first: ours win, because the selector depends on them.
        "metadata": {"labels": {**dict(svc.pod.labels), **labels(svc)}, "annotations": annotations},
        "spec": pod_spec,
    }


def template_hash(template: Manifest) -> str:
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_deployment(svc: EmbeddingService) -> Manifest:
    template = render_pod_template(svc)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": svc.name,
            "namespace": svc.namespace,
            "labels": labels(svc),
            "annotations": {TEMPLATE_HASH_ANNOTATION: template_hash(template)},
            "ownerReferences": [owner_reference(svc)],
        },
        "spec": {
            "replicas": desired_replicas(svc),
            "selector": {"matchLabels": selector_labels(svc)},
            # A spec change starts one new pod and removes an old one only once the new
            # one is ready: serving capacity never drops during a rollout (at the cost of
            # one extra GPU while it lasts). At zero replicas nothing is started at all.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "template": template,
        },
    }


def render_service(svc: EmbeddingService) -> Manifest:
    engine = engines.get(svc.engine.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.name,
            "namespace": svc.namespace,
            "labels": labels(svc),
            "annotations": {ENGINE_PORT_ANNOTATION: str(engine.port)},
            "ownerReferences": [owner_reference(svc)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(svc),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }
