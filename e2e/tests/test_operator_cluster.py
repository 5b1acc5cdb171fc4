"""The CRD and the operator against the test bed's real API server: the schema refuses bad
specs naming the field, the scale subresource works, the operator renders a Deployment and
a Service owned by the EmbeddingService and follows spec.replicas, and a missing Secret
becomes a Failed condition that clears once the Secret exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster, audit
from e2e.tests.conftest import OperatorProcess
from e2e.tests.helpers import apply, get, wait_for

pytestmark = pytest.mark.cluster


def embsvc(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}},
        # The test drives replicas itself: no autoscaler decisions in between.
        "scaling": {"autoscale": False},
    }
    body.update(spec)
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name},
        "spec": body,
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def test_crd_installs_with_columns_and_explain(cluster: Cluster, crd_installed: Path) -> None:
    crd = json.loads(
        cluster.kubectl("get", "crd", "embeddingservices.glowplug.dev", "-o", "json").stdout
    )
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True"
    assert established["NamesAccepted"] == "True"

    # The OpenAPI document is published a moment after Established: poll for it.
    def explain() -> str | None:
        out = cluster.kubectl("explain", "embsvc.spec.scaling.idleTimeout", check=False)
        return out.stdout if out.returncode == 0 else None

    assert "scale to zero" in wait_for(explain, 60, what="kubectl explain embsvc")


BAD = [
    (
        "min-over-max",
        {"scaling": {"minReplicas": 3, "maxReplicas": 2}},
        "spec.scaling.minReplicas",
    ),
    (
        "two-sources",
        {
            "model": {
                "id": "x",
                "source": {"huggingFace": {}, "hostPath": {"path": "/mnt/models"}},
            }
        },
        "spec.model.source",
    ),
    ("bad-duration", {"scaling": {"idleTimeout": "5 minutes"}}, "spec.scaling.idleTimeout"),
    (
        "colon-name",
        {"model": {"id": "x", "servedName": "qwen:small", "source": {"huggingFace": {}}}},
        "spec.model.servedName",
    ),
    ("max-zero", {"scaling": {"maxReplicas": 0}}, "spec.scaling.maxReplicas"),
    ("negative-gpus", {"resources": {"gpus": -1}}, "spec.resources.gpus"),
    ("cache-size", {"cache": {"enabled": True, "maxBytes": "12MB"}}, "spec.cache.maxBytes"),
    ("cache-ttl-zero", {"cache": {"enabled": True, "ttl": "0s"}}, "spec.cache.ttl"),
    ("cache-ttl", {"cache": {"ttl": "one day"}}, "spec.cache.ttl"),
    ("idle-automatic", {"scaling": {"idleTimeout": "automatic"}}, "spec.scaling.idleTimeout"),
    (
        "auto-bounds",
        {"scaling": {"idleTimeout": "auto", "autoIdleTimeout": {"min": "20m", "max": "10m"}}},
        "spec.scaling.autoIdleTimeout.min must be <= spec.scaling.autoIdleTimeout.max",
    ),
    (
        "auto-penalty",
        {"scaling": {"idleTimeout": "auto", "autoIdleTimeout": {"wakePenalty": "soon"}}},
        "spec.scaling.autoIdleTimeout.wakePenalty",
    ),
    # issue 11 (8): cron fields, zone names and duration bounds
    (
        "bad-cron",
        {
            "scaling": {
                "autoscale": False,
                "prewarm": [{"schedule": "99 8 * * funday", "duration": "1h"}],
            }
        },
        "spec.scaling.prewarm[0].schedule",
    ),
    (
        "bad-zone-shape",
        {
            "scaling": {
                "autoscale": False,
                "prewarm": [
                    {"schedule": "0 8 * * *", "duration": "1h", "timeZone": "Europe Berlin"}
                ],
            }
        },
        "spec.scaling.prewarm[0].timeZone",
    ),
    ("zero-activation", {"scaling": {"activationTimeout": "0s"}}, "spec.scaling.activationTimeout"),
    ("zero-node-wait", {"scaling": {"nodeWaitTimeout": "0ms"}}, "spec.scaling.nodeWaitTimeout"),
    ("zero-request", {"engine": {"requestTimeout": "0s"}}, "spec.engine.requestTimeout"),
    (
        "overflow-request",
        {"engine": {"requestTimeout": "99999999999999h"}},
        "spec.engine.requestTimeout",
    ),
    ("long-request", {"engine": {"requestTimeout": "2h"}}, "spec.engine.requestTimeout"),
    # Engines glowplug does not know, and image/version combinations known to be wrong.
    ("unknown-engine", {"engine": {"name": "llamacpp"}}, "spec.engine.name"),
    (
        "sglang-cuda12-tag-after-0519",
        {"engine": {"image": "lmsysorg/sglang:v0.5.23-cu129"}},
        "spec.engine.image",
    ),
    (
        "sglang-before-ready",
        {"engine": {"image": "lmsysorg/sglang:v0.5.19-cu129"}},
        "spec.engine.image",
    ),
    (
        "tei-before-served-name",
        {
            "engine": {
                "name": "tei",
                "image": "ghcr.io/huggingface/text-embeddings-inference:cpu-1.8",
            }
        },
        "spec.engine.image",
    ),
    ("cuda-on-tei", {"engine": {"name": "tei", "cuda": "12"}}, "spec.engine.cuda"),
    ("cuda-11", {"engine": {"cuda": "11"}}, "spec.engine.cuda"),
]


@pytest.mark.parametrize(("name", "spec", "field"), BAD, ids=[b[0] for b in BAD])
def test_invalid_spec_is_refused_naming_the_field(
    cluster: Cluster, crd_installed: Path, namespace: str, name: str, spec: Any, field: str
) -> None:
    out = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(embsvc(name, **spec)), check=False
    )
    assert out.returncode != 0
    assert field in out.stderr, out.stderr
    gone = cluster.kubectl("get", "embsvc", name, "-n", namespace, check=False)
    assert gone.returncode != 0


GOOD_ENGINES = [
    ("vllm-cpu", {"engine": {"name": "vllm"}, "resources": {"gpus": 0}}),
    ("sglang-cuda12", {"engine": {"cuda": "12"}}),
    (
        "sglang-0519-with-cuda12",
        {"engine": {"cuda": "12", "image": "lmsysorg/sglang:v0.5.19-cu129"}},
    ),
    (
        "tei-19",
        {
            "engine": {
                "name": "tei",
                "image": "ghcr.io/huggingface/text-embeddings-inference:cpu-1.9",
            }
        },
    ),
]


@pytest.mark.parametrize(("name", "spec"), GOOD_ENGINES, ids=[g[0] for g in GOOD_ENGINES])
def test_good_engine_combinations_are_accepted(
    cluster: Cluster, crd_installed: Path, namespace: str, name: str, spec: Any
) -> None:
    """The CEL rules refuse only what they must (the same rules as glowplug.api.images)."""
    apply(cluster, namespace, embsvc(name, **spec))
    assert get(cluster, "embsvc", name, namespace)["spec"]["engine"]["cuda"] == (
        spec["engine"].get("cuda", "")
    )


def test_unknown_time_zone_is_a_failed_condition_naming_the_field(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    """A zone the schema cannot judge (well-formed, but not in the IANA database) is
    accepted by the API server and refused by the operator: Failed/InvalidSpec names it."""
    body = embsvc(
        "mars",
        scaling={
            "autoscale": False,
            "prewarm": [{"schedule": "0 8 * * 1-5", "duration": "1h", "timeZone": "Mars/Base"}],
        },
    )
    apply(cluster, namespace, body)

    def failed() -> dict[str, Any] | None:
        c = condition(get(cluster, "embsvc", "mars", namespace), "Failed")
        return c if c.get("status") == "True" else None

    c = wait_for(failed, 60, what="Failed condition for Mars/Base")
    assert c["reason"] == "InvalidSpec"
    assert "spec.scaling.prewarm[0].timeZone" in c["message"]
    assert "Mars/Base" in c["message"]


def test_defaults_and_scale_subresource(
    cluster: Cluster, crd_installed: Path, namespace: str
) -> None:
    apply(cluster, namespace, embsvc("scaled"))
    obj = get(cluster, "embsvc", "scaled", namespace)
    assert obj["spec"]["replicas"] == 0
    generation = obj["metadata"]["generation"]
    assert obj["spec"]["engine"]["requestTimeout"] == "2m"
    assert obj["spec"]["scaling"]["idleTimeout"] == "5m"
    assert obj["spec"]["cache"] == {"enabled": False, "ttl": "24h", "maxBytes": "256Mi"}
    cluster.kubectl("scale", "embsvc", "scaled", "-n", namespace, "--replicas", "2")
    scaled = get(cluster, "embsvc", "scaled", namespace)
    assert scaled["spec"]["replicas"] == 2
    # A write through the scale subresource bumps metadata.generation like any spec
    # change: why the operator must not treat a generation change as a new pod spec
    # (issue 11, the Unschedulable diagnosis; scaling.spec_fingerprint).
    assert scaled["metadata"]["generation"] == generation + 1
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/glowplug.dev/v1alpha1/namespaces/{namespace}/embeddingservices/scaled/scale",
        ).stdout
    )
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2


def test_concurrent_status_writes_to_one_object_do_not_conflict(
    cluster: Cluster, crd_installed: Path, namespace: str
) -> None:
    """Eight of the operator's writers write one EmbeddingService's status at once, all
    from the same (soon stale) body, as its reconciler, ticks and ledger do: every write
    lands, none is answered 409 (each is given the object the previous write returned),
    and the scale subresource's resourceVersion is the object's own (the activator's
    wake writes with the version its watch saw)."""
    import asyncio

    from kubernetes_asyncio import config

    from glowplug.kube.client import TimeoutApiClient, user_agent
    from glowplug.operator.kube import Kube

    apply(cluster, namespace, embsvc("writers"))
    body = get(cluster, "embsvc", "writers", namespace)
    tail = audit.AuditTail(cluster.audit_log)

    async def write_all() -> list[Any]:
        await config.load_kube_config(config_file=str(cluster.kubeconfig))
        api = TimeoutApiClient()
        api.user_agent = user_agent("status-test")
        try:
            kube = Kube(api)

            def mutate(i: int) -> Any:
                def patch(current: Any) -> dict[str, Any]:
                    seen = dict((current.get("status") or {}).get("idlePolicy") or {})
                    return {"idlePolicy": {**seen, f"w{i}": i}}

                return patch

            return await asyncio.gather(
                *(kube.update_status(namespace, "writers", mutate(i), body=body) for i in range(8))
            )
        finally:
            await api.close()

    written = asyncio.run(write_all())
    assert all(written), written
    status = get(cluster, "embsvc", "writers", namespace)["status"]
    assert status["idlePolicy"] == {f"w{i}": i for i in range(8)}, status
    mine: list[audit.Request] = []

    def logged() -> bool:
        mine.extend(r for r in tail.read() if r.user_agent.startswith("glowplug-status-test"))
        return len(mine) >= 8

    wait_for(logged, 30, what="the eight writes in the audit log")
    assert [(r.verb, r.resource, r.code) for r in mine] == [
        ("patch", "embeddingservices/status", 200)
    ] * 8
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/glowplug.dev/v1alpha1/namespaces/{namespace}/embeddingservices/writers/scale",
        ).stdout
    )
    assert (
        scale["metadata"]["resourceVersion"]
        == get(cluster, "embsvc", "writers", namespace)["metadata"]["resourceVersion"]
    )


def test_operator_renders_owned_deployment_and_service_and_follows_replicas(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    apply(cluster, namespace, embsvc("rendered"))

    def deployment() -> dict[str, Any] | None:
        out = cluster.kubectl(
            "get", "deployment", "rendered", "-n", namespace, "-o", "json", check=False
        )
        return json.loads(out.stdout) if out.returncode == 0 else None

    dep = wait_for(deployment, 60, what="the rendered Deployment")
    svc = get(cluster, "service", "rendered", namespace)
    owner = get(cluster, "embsvc", "rendered", namespace)
    for obj in (dep, svc):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["kind"] == "EmbeddingService" and ref["name"] == "rendered"
        assert ref["uid"] == owner["metadata"]["uid"]
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
        assert obj["metadata"]["labels"]["glowplug.dev/service"] == "rendered"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "glowplug"
    assert dep["spec"]["replicas"] == 0
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "engine" and "--is-embedding" in container["args"]
    assert svc["spec"]["selector"] == {"glowplug.dev/service": "rendered"}
    assert svc["spec"]["ports"][0]["name"] == "http"

    def idle_status() -> dict[str, Any] | None:
        status = get(cluster, "embsvc", "rendered", namespace).get("status") or {}
        return status if status.get("phase") == "Idle" else None

    status = wait_for(idle_status, 30, what="status phase Idle")
    assert status["selector"] == "glowplug.dev/service=rendered"

    # The wake path: spec.replicas through the scale subresource reaches the Deployment.
    cluster.kubectl("scale", "embsvc", "rendered", "-n", namespace, "--replicas", "1")
    wait_for(
        lambda: (deployment() or {}).get("spec", {}).get("replicas") == 1,
        10,
        what="Deployment replicas 1",
    )
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=rendered"
    ).stdout
    assert "Created" in events and "Scaled" in events

    # kopf guards the autoscaler's per-object daemon with a finalizer under our name; with
    # the operator running, a delete completes and the owned objects are collected.
    def finalizers() -> list[str]:
        return list(get(cluster, "embsvc", "rendered", namespace)["metadata"].get("finalizers", []))

    assert wait_for(finalizers, 30, what="kopf's finalizer") == ["glowplug.dev/finalizer"]
    cluster.kubectl("delete", "embsvc", "rendered", "-n", namespace, "--wait=false")

    def collected() -> bool:
        left = cluster.kubectl(
            "get", "embsvc,deployment,service", "-n", namespace, "-o", "name", check=False
        ).stdout.split()
        return not [x for x in left if x.endswith("/rendered")]

    wait_for(collected, 60, what="the EmbeddingService, Deployment and Service gone")


def test_missing_secret_fails_then_recovers(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    apply(
        cluster,
        namespace,
        embsvc(
            "gated",
            model={
                "id": "Qwen/Qwen3-Embedding-0.6B",
                "source": {"huggingFace": {"tokenSecretRef": {"name": "hf-token"}}},
            },
        ),
    )

    def failed() -> dict[str, Any] | None:
        c = condition(get(cluster, "embsvc", "gated", namespace), "Failed")
        return c if c.get("status") == "True" else None

    cond = wait_for(failed, 60, what="Failed condition")
    assert cond["reason"] == "SecretNotFound"
    assert "hf-token" in cond["message"]
    assert get(cluster, "embsvc", "gated", namespace)["status"]["phase"] == "Failed"
    warnings = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "type=Warning"
    ).stdout
    assert "SecretNotFound" in warnings
    no_dep = cluster.kubectl("get", "deployment", "gated", "-n", namespace, check=False)
    assert no_dep.returncode != 0

    cluster.kubectl(
        "create", "secret", "generic", "hf-token", "-n", namespace, "--from-literal=token=x"
    )

    def recovered() -> dict[str, Any] | None:
        obj = get(cluster, "embsvc", "gated", namespace)
        c = condition(obj, "Failed")
        return obj if c.get("status") == "False" and obj["status"]["phase"] != "Failed" else None

    obj = wait_for(recovered, 60, what="Failed cleared")
    assert obj["status"]["phase"] == "Idle"
    dep = get(cluster, "deployment", "gated", namespace)
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    } in env
