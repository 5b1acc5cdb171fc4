"""The reconciler's decisions, against an in-memory test double of the Kubernetes API.

The real API server is exercised by e2e/tests/test_operator_cluster.py; here the double
(``FakeKube``) records what would be applied and keeps one EmbeddingService's status.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest
from operator_metrics import scrape

from glowplug.operator import conditions as cond
from glowplug.operator import handlers
from glowplug.operator.kube import StatusMutation


class FakeKube:
    """Test double for glowplug.operator.kube.Kube: objects in dicts, no HTTP."""

    def __init__(self) -> None:
        self.embsvcs: dict[tuple[str, str], dict[str, Any]] = {}
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], set[str]] = {}
        self.applied: list[dict[str, Any]] = []
        self.fail_next_apply = False
        self.rv = 0
        self.status_updates = 0  # update_status calls (each a GET and maybe a PATCH)
        self.lists = 0  # list_managed calls

    def _bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    async def apply(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if self.fail_next_apply:
            self.fail_next_apply = False
            raise RuntimeError("API server unavailable (simulated)")
        self.applied.append(copy.deepcopy(manifest))
        meta = manifest["metadata"]
        key = (meta["namespace"], meta["name"])
        store = self.deployments if manifest["kind"] == "Deployment" else self.services
        obj = copy.deepcopy(manifest)
        created = key not in store
        obj["status"] = (store.get(key) or {}).get("status", {})
        self._bump(obj)
        store[key] = obj
        return copy.deepcopy(obj), created

    async def list_managed(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        self.lists += 1
        store = self.deployments if kind == "Deployment" else self.services
        return [copy.deepcopy(o) for (ns, _), o in store.items() if namespace in (None, ns)]

    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        return self.secrets.get((namespace, name))

    async def get_embsvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.embsvcs.get((namespace, name)))

    async def update_status(
        self,
        namespace: str,
        name: str,
        mutate: StatusMutation,
        *,
        body: Mapping[str, Any] | None = None,
        attempts: int = 5,
    ) -> dict[str, Any] | None:
        self.status_updates += 1
        current = self.embsvcs.get((namespace, name))
        if current is None:
            return None
        patch = mutate(current)
        assert not asyncio.iscoroutine(patch)
        if patch:
            current.setdefault("status", {}).update(copy.deepcopy(patch))  # type: ignore[arg-type]
            self._bump(current)
        return patch  # type: ignore[return-value]

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        obj["metadata"]["generation"] = obj["metadata"].get("generation", 0) + 1
        self._bump(obj)
        meta = obj["metadata"]
        self.embsvcs[(meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)


def embsvc(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}},
    }
    body.update(spec)
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": "small", "namespace": "ns", "uid": "u1"},
        "spec": body,
    }


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        assert body["metadata"]["name"] == "small"
        self.events.append((type_, reason, message))

    def reasons(self) -> list[str]:
        return [r for _, r, _ in self.events]


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def events() -> Recorder:
    return Recorder()


@pytest.fixture
async def reconciler(kube: FakeKube, events: Recorder) -> Any:
    r = handlers.Reconciler(kube, emit=events)  # type: ignore[arg-type]
    yield r
    for key in list(r.states):
        r.forget(key)


def status(kube: FakeKube) -> dict[str, Any]:
    return kube.embsvcs[("ns", "small")].get("status", {})


async def test_create_applies_service_and_deployment(
    kube: FakeKube, events: Recorder, reconciler: handlers.Reconciler
) -> None:
    body = kube.put(embsvc())
    await reconciler.on_embsvc_event("ADDED", body)
    assert [m["kind"] for m in kube.applied] == ["Service", "Deployment"]
    assert kube.deployments[("ns", "small")]["spec"]["replicas"] == 0
    assert events.events == [
        ("Normal", "Created", "created Deployment small (0 replicas) and Service small")
    ]
    st = status(kube)
    assert st["phase"] == "Idle"
    assert st["selector"] == "glowplug.dev/service=small"
    assert st["observedGeneration"] == 1
    assert not cond.is_true(st["conditions"], cond.FAILED)


async def test_same_generation_is_skipped(kube: FakeKube, reconciler: handlers.Reconciler) -> None:
    body = kube.put(embsvc())
    await reconciler.on_embsvc_event("ADDED", body)
    n = len(kube.applied)
    # Our own status write comes back as a MODIFIED event of the same generation.
    await reconciler.on_embsvc_event("MODIFIED", kube.embsvcs[("ns", "small")])
    assert len(kube.applied) == n


async def test_replicas_change_takes_the_fast_path(
    kube: FakeKube, events: Recorder, reconciler: handlers.Reconciler
) -> None:
    body = kube.put(embsvc())
    await reconciler.on_embsvc_event("ADDED", body)
    kube.applied.clear()
    body["spec"]["replicas"] = 1
    body = kube.put(body)
    await reconciler.on_embsvc_event("MODIFIED", body)
    assert [m["kind"] for m in kube.applied] == ["Deployment"]
    assert kube.deployments[("ns", "small")]["spec"]["replicas"] == 1
    assert events.events[-1] == ("Normal", "Scaled", "scaled Deployment small: 0 -> 1")
    assert status(kube)["phase"] == "Waking"


async def test_replicas_are_clamped(kube: FakeKube, reconciler: handlers.Reconciler) -> None:
    body = kube.put(embsvc(replicas=7, scaling={"maxReplicas": 3}))
    await reconciler.on_embsvc_event("ADDED", body)
    assert kube.deployments[("ns", "small")]["spec"]["replicas"] == 3


async def test_template_change_is_an_update_event(
    kube: FakeKube, events: Recorder, reconciler: handlers.Reconciler
) -> None:
    body = kube.put(embsvc())
    await reconciler.on_embsvc_event("ADDED", body)
    body["spec"]["engine"] = {"args": ["--dtype", "bfloat16"]}
    body = kube.put(body)
    await reconciler.on_embsvc_event("MODIFIED", body)
    assert events.reasons()[-1] == "Updated"
    container = kube.deployments[("ns", "small")]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--dtype", "bfloat16"]


async def test_invalid_spec_fails_and_recovers(
    kube: FakeKube, events: Recorder, reconciler: handlers.Reconciler
) -> None:
    bad = embsvc(scaling={"prewarm": [{"schedule": "daily", "duration": "1h"}]})
    body = kube.put(bad)
    await reconciler.on_embsvc_event("ADDED", body)
    assert kube.applied == []
    st = status(kube)
    assert st["phase"] == "Failed"
    failed = cond.get_condition(st["conditions"], cond.FAILED)
    assert failed is not None and failed["reason"] == "InvalidSpec"
    assert "spec.scaling.prewarm[0].schedule" in failed["message"]
    assert events.events[-1][:2] == ("Warning", "InvalidSpec")
    # Fixed: applied, Failed cleared.
    body["spec"]["scaling"] = {}
    body = kube.put(body)
    await reconciler.on_embsvc_event("MODIFIED", body)
    assert status(kube)["phase"] == "Idle"
    assert not cond.is_true(status(kube)["conditions"], cond.FAILED)


async def test_missing_secret_fails_then_recovers_by_itself(
    kube: FakeKube,
    events: Recorder,
    reconciler: handlers.Reconciler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers, "SECRET_RECHECK_SECONDS", 0.01)
    spec = embsvc(model={"id": "m", "source": {"huggingFace": {"tokenSecretRef": {"name": "hf"}}}})
    body = kube.put(spec)
    await reconciler.on_embsvc_event("ADDED", body)
    assert ("ns", "small") not in kube.deployments
    assert ("ns", "small") in kube.services
    st = status(kube)
    assert st["phase"] == "Failed"
    failed = cond.get_condition(st["conditions"], cond.FAILED)
    assert failed is not None and failed["reason"] == "SecretNotFound"
    assert "Secret ns/hf not found" in failed["message"]
    assert events.reasons().count("SecretNotFound") == 1
    # The Secret appears; the periodic re-check picks it up without any spec change.
    kube.secrets[("ns", "hf")] = {"token"}
    for _ in range(200):
        if ("ns", "small") in kube.deployments:
            break
        await asyncio.sleep(0.01)
    assert ("ns", "small") in kube.deployments
    assert status(kube)["phase"] == "Idle"
    failed = cond.get_condition(status(kube)["conditions"], cond.FAILED)
    assert failed is not None and failed["status"] == "False"
    env = kube.deployments[("ns", "small")]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    } in env


async def test_secret_without_the_key(kube: FakeKube, reconciler: handlers.Reconciler) -> None:
    kube.secrets[("ns", "hf")] = {"other"}
    spec = embsvc(
        model={
            "id": "m",
            "source": {"huggingFace": {"tokenSecretRef": {"name": "hf", "key": "token"}}},
        }
    )
    await reconciler.on_embsvc_event("ADDED", kube.put(spec))
    failed = cond.get_condition(status(kube)["conditions"], cond.FAILED)
    assert failed is not None and failed["reason"] == "SecretNotFound"
    assert "no key 'token'" in failed["message"] and "other" in failed["message"]


async def test_wake_failure_is_not_cleared_by_reconcile(
    kube: FakeKube, reconciler: handlers.Reconciler
) -> None:
    body = kube.put(embsvc())
    kube.embsvcs[("ns", "small")]["status"] = {
        "conditions": cond.set_condition([], cond.FAILED, True, "CrashLoopBackOff", "boom")
    }
    await reconciler.on_embsvc_event("ADDED", body)
    assert status(kube)["phase"] == "Failed"
    failed = cond.get_condition(status(kube)["conditions"], cond.FAILED)
    assert failed is not None and failed["reason"] == "CrashLoopBackOff"


async def test_deployment_status_flows_to_embsvc_status(
    kube: FakeKube, reconciler: handlers.Reconciler
) -> None:
    body = kube.put(embsvc(replicas=1))
    await reconciler.on_embsvc_event("ADDED", body)
    assert status(kube)["phase"] == "Waking"
    dep = kube.deployments[("ns", "small")]
    dep["status"] = {"replicas": 1, "readyReplicas": 1}
    kube._bump(dep)  # as the API server does on every change
    await reconciler.on_deployment_event("MODIFIED", dep)
    st = status(kube)
    assert (st["phase"], st["replicas"], st["readyReplicas"]) == ("Ready", 1, 1)
    assert cond.is_true(st["conditions"], cond.READY)
    assert (
        scrape("glowplug_replicas", {"namespace": "ns", "service": "small", "state": "ready"}) == 1
    )


async def test_a_replayed_deployment_costs_no_status_read(
    kube: FakeKube, reconciler: handlers.Reconciler
) -> None:
    """kopf re-lists each watch cycle and replays every Deployment: an unchanged one
    (same resourceVersion) must not read and rewrite the EmbeddingService's status."""
    body = kube.put(embsvc(replicas=0))
    await reconciler.on_embsvc_event("ADDED", body)
    applied = copy.deepcopy(kube.deployments[("ns", "small")])  # as the apply returned it
    seen = kube.status_updates
    await reconciler.on_deployment_event("MODIFIED", applied)
    assert kube.status_updates == seen  # the reconcile already wrote this one's status
    dep = copy.deepcopy(applied)
    dep["metadata"]["resourceVersion"] = "41"
    await reconciler.on_deployment_event("MODIFIED", dep)
    seen = kube.status_updates
    await reconciler.on_deployment_event("MODIFIED", copy.deepcopy(dep))
    assert kube.status_updates == seen
    dep["metadata"]["resourceVersion"] = "42"
    dep["status"] = {"replicas": 1}
    await reconciler.on_deployment_event("MODIFIED", dep)
    assert kube.status_updates == seen + 1


async def test_a_deployment_status_change_our_status_does_not_show_costs_nothing(
    kube: FakeKube, reconciler: handlers.Reconciler
) -> None:
    """After a create or a scale the Deployment controller rewrites the Deployment's
    status a few times (observedGeneration, conditions) with the same replica counts:
    no status read and no write for those (at 500 services they were 1,500 late GETs)."""
    body = kube.put(embsvc(replicas=0))
    await reconciler.on_embsvc_event("ADDED", body)
    dep = copy.deepcopy(kube.deployments[("ns", "small")])
    seen = kube.status_updates
    for rv, extra in (
        ("50", {"observedGeneration": 1}),
        ("51", {"conditions": [{"type": "Available", "status": "True"}]}),
    ):
        dep["metadata"]["resourceVersion"] = rv
        dep["status"] = {**dep.get("status", {}), **extra}
        await reconciler.on_deployment_event("MODIFIED", copy.deepcopy(dep))
    assert kube.status_updates == seen
    dep["metadata"]["resourceVersion"] = "52"
    dep["spec"]["replicas"] = 1  # a scale: our status shows the desired replicas
    await reconciler.on_deployment_event("MODIFIED", copy.deepcopy(dep))
    assert kube.status_updates == seen + 1
    assert status(kube)["phase"] == "Waking"


async def test_a_resumed_operator_applies_nothing_that_is_already_there(
    kube: FakeKube, events: Recorder
) -> None:
    """A restart or failover: the watches list the Deployment and Service the previous
    replica applied; when they hold what would be applied, nothing is sent again."""
    first = handlers.Reconciler(kube, emit=events)  # type: ignore[arg-type]
    body = kube.put(embsvc(replicas=0))
    await first.on_embsvc_event("ADDED", body)
    applied = len(kube.applied)
    assert applied == 2
    # The API server's view: what was applied, with a default it fills in.
    dep = copy.deepcopy(kube.deployments[("ns", "small")])
    dep["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    service = copy.deepcopy(kube.services[("ns", "small")])
    service["spec"]["clusterIP"] = "10.96.0.12"
    second = handlers.Reconciler(kube, emit=events)  # type: ignore[arg-type]
    await second.on_deployment_event("ADDED", dep)
    await second.on_service_event("ADDED", service)
    await second.on_embsvc_event("ADDED", copy.deepcopy(kube.embsvcs[("ns", "small")]))
    assert len(kube.applied) == applied
    assert second.states[("ns", "small")].applied_generation is not None
    # Without the watch bodies first: its one listing of each kind shows them in place.
    third = handlers.Reconciler(kube, emit=events, namespaces=["ns"])  # type: ignore[arg-type]
    lists = kube.lists
    await third.on_embsvc_event("ADDED", copy.deepcopy(kube.embsvcs[("ns", "small")]))
    assert len(kube.applied) == applied
    assert kube.lists == lists + 2
    # Globbed namespaces cannot be listed: it applies both (one request each, as many
    # as reading them would cost), and says nothing: nothing was created or scaled.
    globbed = handlers.Reconciler(kube, emit=events, namespaces=["n*"])  # type: ignore[arg-type]
    said = len(events.events)
    await globbed.on_embsvc_event("ADDED", copy.deepcopy(kube.embsvcs[("ns", "small")]))
    assert len(kube.applied) == applied + 2 and kube.lists == lists + 2
    assert events.events[said:] == []
    applied += 2
    # A spec changed while no operator ran: applied.
    fourth = handlers.Reconciler(kube, emit=events)  # type: ignore[arg-type]
    changed = kube.put(
        {
            **kube.embsvcs[("ns", "small")],
            "spec": {**kube.embsvcs[("ns", "small")]["spec"], "replicas": 1},
        }
    )
    await fourth.on_deployment_event("ADDED", dep)
    await fourth.on_service_event("ADDED", service)
    await fourth.on_embsvc_event("MODIFIED", changed)
    assert [m["kind"] for m in kube.applied[applied:]] == ["Deployment"]
    assert kube.deployments[("ns", "small")]["spec"]["replicas"] == 1
    for r in (first, second, third, globbed, fourth):
        for key in list(r.states):
            r.forget(key)


async def test_api_error_is_retried(
    kube: FakeKube, reconciler: handlers.Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "RETRY_MIN_SECONDS", 0.01)
    reconciler.states.clear()
    kube.fail_next_apply = True
    body = kube.put(embsvc())
    await reconciler.on_embsvc_event("ADDED", body)
    for _ in range(200):
        if ("ns", "small") in kube.deployments:
            break
        await asyncio.sleep(0.01)
    assert ("ns", "small") in kube.deployments


async def test_deleted_deployment_is_recreated(
    kube: FakeKube, reconciler: handlers.Reconciler
) -> None:
    body = kube.put(embsvc())
    await reconciler.on_embsvc_event("ADDED", body)
    dep = kube.deployments.pop(("ns", "small"))
    await reconciler.on_deployment_event("DELETED", dep)
    for _ in range(200):
        if ("ns", "small") in kube.deployments:
            break
        await asyncio.sleep(0.01)
    assert ("ns", "small") in kube.deployments


async def test_deleted_embsvc_is_forgotten(kube: FakeKube, reconciler: handlers.Reconciler) -> None:
    body = kube.put(embsvc())
    await reconciler.on_embsvc_event("ADDED", body)
    await reconciler.on_embsvc_event("DELETED", body)
    assert ("ns", "small") not in reconciler.states


async def test_deleted_service_is_recreated(
    kube: FakeKube, reconciler: handlers.Reconciler
) -> None:
    body = kube.put(embsvc())
    await reconciler.on_embsvc_event("ADDED", body)
    svc = kube.services.pop(("ns", "small"))
    await reconciler.on_service_event("DELETED", svc)
    for _ in range(200):
        if ("ns", "small") in kube.services:
            break
        await asyncio.sleep(0.01)
    assert ("ns", "small") in kube.services


async def test_nothing_is_applied_while_the_owner_is_being_deleted(
    kube: FakeKube, reconciler: handlers.Reconciler
) -> None:
    body = kube.put(embsvc())
    await reconciler.on_embsvc_event("ADDED", body)
    kube.embsvcs[("ns", "small")]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    kube.applied.clear()
    dep = kube.deployments.pop(("ns", "small"))
    await reconciler.on_deployment_event("DELETED", dep)
    await asyncio.sleep(0.05)
    assert kube.applied == []


class SlowKube(FakeKube):
    """The double, with applies that take a moment; it records how many overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most = 0

    async def apply(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            return await super().apply(manifest)
        finally:
            self.in_flight -= 1


async def test_a_start_up_reconciles_a_bounded_number_at_once() -> None:
    """kopf hands over every object at start-up: reconciles wait for a slot instead of
    queueing hundreds of calls on the connection pool."""
    kube = SlowKube()
    r = handlers.Reconciler(kube, emit=lambda *_: None)  # type: ignore[arg-type]
    bodies = []
    for i in range(60):
        body = embsvc()
        body["metadata"] = {**body["metadata"], "name": f"s{i}", "uid": f"u{i}"}
        bodies.append(kube.put(body))
    await asyncio.gather(*(r.on_embsvc_event("ADDED", b) for b in bodies))
    assert len(kube.deployments) == 60
    assert kube.most <= handlers.RECONCILE_CONCURRENCY
    assert kube.lists == 2  # one listing of each kind, shared by the sixty
    for key in list(r.states):
        r.forget(key)


async def test_a_failed_listing_at_start_up_applies_anyway(
    kube: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    """Priming saves requests; it is not needed to be right: without it, apply."""
    kube.put(embsvc())
    first = handlers.Reconciler(kube, emit=lambda *_: None)  # type: ignore[arg-type]
    await first.on_embsvc_event("ADDED", copy.deepcopy(kube.embsvcs[("ns", "small")]))
    first.forget(("ns", "small"))

    class BrokenListKube(FakeKube):
        async def list_managed(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
            raise RuntimeError("API server unavailable (simulated)")

    broken = BrokenListKube()
    broken.deployments, broken.services = kube.deployments, kube.services
    broken.embsvcs = kube.embsvcs
    again = handlers.Reconciler(broken, emit=lambda *_: None)  # type: ignore[arg-type]
    with caplog.at_level("WARNING"):
        await again.on_embsvc_event("ADDED", copy.deepcopy(kube.embsvcs[("ns", "small")]))
    assert "applying instead" in caplog.text
    assert [m["kind"] for m in broken.applied] == ["Service", "Deployment"]


async def test_a_reconcile_with_nothing_to_send_does_not_wait_for_busy_calls(
    kube: FakeKube, events: Recorder
) -> None:
    """The bound is on API calls: while every slot is taken by calls that hang, a
    resumed reconcile whose objects are in place finishes (a failover of 10,000 services
    then does not hold back a wake's apply behind 10,000 reconciles)."""
    first = handlers.Reconciler(kube, emit=events)  # type: ignore[arg-type]
    body = kube.put(embsvc(replicas=0))
    await first.on_embsvc_event("ADDED", body)
    release = asyncio.Event()

    class HangingKube(FakeKube):
        async def apply(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
            await release.wait()
            return await super().apply(manifest)

    hanging = HangingKube()
    hanging.deployments, hanging.services, hanging.embsvcs = (
        kube.deployments,
        kube.services,
        kube.embsvcs,
    )
    second = handlers.Reconciler(hanging, emit=lambda *_: None)  # type: ignore[arg-type]
    blocked = []
    for i in range(handlers.RECONCILE_CONCURRENCY + 2):  # new services: their applies hang
        other = embsvc()
        other["metadata"] = {**other["metadata"], "name": f"new{i}", "uid": f"n{i}"}
        blocked.append(asyncio.create_task(second.on_embsvc_event("ADDED", hanging.put(other))))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(
        second.on_embsvc_event("ADDED", copy.deepcopy(kube.embsvcs[("ns", "small")])), 5
    )
    assert second.states[("ns", "small")].applied_generation is not None
    assert not any(t.done() for t in blocked)
    release.set()
    await asyncio.gather(*blocked)
    for r in (first, second):
        for key in list(r.states):
            r.forget(key)
