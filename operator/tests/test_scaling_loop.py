"""The per-service loop's glue, against a test double of the cluster API (no cluster).

The double keeps one EmbeddingService object and its pods in memory, applies merge
patches to status, and enforces the scale subresource's compare-and-swap.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from operator_metrics import scrape

from glowplug.kube.timefmt import format_time, parse_time
from glowplug.operator.activity import Snapshot
from glowplug.operator.autoscaler import ActivatorLoad
from glowplug.operator.ledger import totals_at
from glowplug.operator.serviceloop import Options, ServiceLoop, pod_gpus, pod_hold

T0 = 1_780_000_000.0


def embsvc(replicas: int = 0, **scaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {
            "name": "svc",
            "namespace": "ns",
            "uid": "u-1",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": format_time(T0),
        },
        "spec": {
            "model": {"id": "m", "source": {"huggingFace": {}}},
            "replicas": replicas,
            "resources": {"gpus": 1},
            "scaling": {
                "idleTimeout": "30s",
                "scaleDownDelay": "5s",
                "targetConcurrency": 8,
                "maxReplicas": 5,
                **scaling,
            },
            "cost": {"baselineReplicas": 1},
        },
        "status": {},
    }


def a_pod(uid: str, bound: float, *, ready: bool = False, waiting: str = "") -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "engine", "image": "img", "state": {}}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting}}
    return {
        "metadata": {"name": f"pod-{uid}", "uid": uid, "creationTimestamp": format_time(bound)},
        "spec": {
            "nodeName": "node",
            "containers": [{"name": "engine", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastTransitionTime": format_time(bound),
                },
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
            "containerStatuses": [cs],
        },
    }


class ClusterAPIDouble:
    """A test double of ``ServiceAPI``: one object, its pods, CAS on the scale."""

    def __init__(self, obj: dict[str, Any], clock: Callable[[], float]) -> None:
        self.obj = obj
        self.pods: list[dict[str, Any]] = []
        self.clock = clock
        self.warnings: list[tuple[str, str]] = []
        self.infos: list[tuple[str, str]] = []
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.event_reads = 0
        self.scale_writes: list[int] = []
        self.conflict_next_scale = False
        self.reads = 0  # read_object calls (a GET each)

    def _bump(self) -> None:
        meta = self.obj["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    async def read_object(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return copy.deepcopy(self.obj)

    async def write_ledger(self, namespace: str, name: str, fields: dict[str, Any]) -> None:
        self.obj.setdefault("status", {}).update(fields)
        self._bump()

    async def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pods)

    async def read_scale(self, namespace: str, name: str) -> tuple[int, str] | None:
        return int(self.obj["spec"]["replicas"]), self.obj["metadata"]["resourceVersion"]

    async def write_scale(self, namespace: str, name: str, replicas: int, rv: str) -> bool:
        if self.conflict_next_scale:
            self.conflict_next_scale = False
            self._bump()
            return False
        if rv != self.obj["metadata"]["resourceVersion"]:
            return False
        self.obj["spec"]["replicas"] = replicas
        self.scale_writes.append(replicas)
        self._bump()
        return True

    async def update_status(
        self,
        namespace: str,
        name: str,
        mutate: Callable[[Mapping[str, Any]], dict[str, Any] | None],
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        patch = mutate(copy.deepcopy(self.obj))
        if patch:
            status = self.obj.setdefault("status", {})
            for k, v in patch.items():
                if v is None:
                    status.pop(k, None)
                else:
                    status[k] = v
            self._bump()
        return patch

    def warn(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        self.warnings.append((reason, message))

    def info(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        self.infos.append((reason, message))

    async def list_pod_events(
        self, namespace: str, pods: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        self.event_reads += 1
        return {p: copy.deepcopy(self.events.get(p, [])) for p in pods}


class LoadDouble:
    """A test double of the activators' load: a fixed snapshot the test edits."""

    def __init__(self) -> None:
        self.loads: list[ActivatorLoad] = []
        self.unreadable = 0

    async def snapshot(self) -> Snapshot:
        return Snapshot(0.0, {"ns/svc": list(self.loads)}, self.unreadable, 1)

    async def refresh(self) -> Snapshot:
        return await self.snapshot()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(replicas: int = 0, **scaling: Any) -> tuple[ClusterAPIDouble, LoadDouble, Clock]:
    clock = Clock(T0)
    return ClusterAPIDouble(embsvc(replicas, **scaling), clock), LoadDouble(), clock


async def run_until(loop: ServiceLoop, api: ClusterAPIDouble, clock: Clock, end: float) -> None:
    while clock.t < end:
        await loop.tick(copy.deepcopy(api.obj))
        clock.t += 1.0


def test_pod_gpus_and_hold() -> None:
    p = a_pod("a", T0 + 5)
    assert pod_gpus(p) == 1
    hold = pod_hold(p)
    assert hold is not None and hold.bound_at == T0 + 5
    p["spec"]["initContainers"] = [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]
    assert pod_gpus(p) == 4
    del p["spec"]["nodeName"]
    assert pod_hold(p) is None


async def test_burst_scales_at_once_then_idle_goes_to_zero() -> None:
    api, load, clock = make(replicas=1)
    loop = ServiceLoop(api, load, Options(checkpoint_every=10.0), clock=clock)
    load.loads = [ActivatorLoad(queued=20), ActivatorLoad(queued=20)]
    await run_until(loop, api, clock, T0 + 1)
    assert api.scale_writes == [5]  # 40 held / 8
    load.loads = [ActivatorLoad(last_request_finished=T0 + 2)]
    await run_until(loop, api, clock, T0 + 6)
    assert api.obj["spec"]["replicas"] == 5  # scaleDownDelay: 5 s from the first idle tick
    await run_until(loop, api, clock, T0 + 7)
    assert api.scale_writes == [5, 1]  # the last replica waits for idleTimeout
    await run_until(loop, api, clock, T0 + 32)
    assert api.scale_writes == [5, 1]
    await run_until(loop, api, clock, T0 + 33)
    assert api.scale_writes == [5, 1, 0]  # 30 s after the last request finished
    assert parse_time(api.obj["status"]["lastRequestTime"]) == T0 + 2


async def test_conflicting_scale_write_is_retried_next_tick() -> None:
    api, load, clock = make(replicas=1)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    load.loads = [ActivatorLoad(in_flight=17)]
    api.conflict_next_scale = True
    await run_until(loop, api, clock, T0 + 1)
    assert api.scale_writes == []
    await run_until(loop, api, clock, T0 + 2)
    assert api.scale_writes == [3]


async def test_autoscale_off_never_writes_replicas() -> None:
    api, load, clock = make(replicas=1, autoscale=False)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    load.loads = [ActivatorLoad(queued=100)]
    await run_until(loop, api, clock, T0 + 5)
    load.loads = []
    await run_until(loop, api, clock, T0 + 100)
    assert api.scale_writes == []


async def test_restart_uses_persisted_last_request_time() -> None:
    api, load, clock = make(replicas=1)
    api.obj["status"]["lastRequestTime"] = format_time(T0 - 10)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    # activators restarted too: they know nothing
    await run_until(loop, api, clock, T0 + 20)
    assert api.obj["spec"]["replicas"] == 1
    await run_until(loop, api, clock, T0 + 21)
    assert api.obj["spec"]["replicas"] == 0  # 30 s after T0 - 10


async def test_wake_failure_sets_and_clears_failed() -> None:
    api, load, clock = make(replicas=1)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    load.loads = [ActivatorLoad(queued=1, waking=True)]
    api.pods = [a_pod("a", T0, waiting="ImagePullBackOff")]
    await run_until(loop, api, clock, T0 + 3)
    failed = next(c for c in api.obj["status"]["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "ImagePullBackOff")
    assert api.obj["status"]["phase"] == "Failed"
    assert [w[0] for w in api.warnings] == ["ImagePullBackOff"]  # once, not every tick
    api.pods = [a_pod("b", T0 + 3, ready=True)]
    await run_until(loop, api, clock, T0 + 5)
    failed = next(c for c in api.obj["status"]["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "False"
    assert api.obj["status"]["phase"] == "Ready"


async def test_wake_is_measured_from_the_stamp_to_the_first_ready_pod() -> None:
    api, load, clock = make(replicas=0)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await run_until(loop, api, clock, T0 + 2)
    # the activator wakes it: replicas 0 -> 1 and a stamp
    api.obj["spec"]["replicas"] = 1
    api.obj["status"]["wakeStartedTime"] = format_time(T0 + 1.5)
    load.loads = [ActivatorLoad(queued=1, waking=True)]
    api.pods = [a_pod("a", T0 + 2)]
    await run_until(loop, api, clock, T0 + 9)
    api.pods = [a_pod("a", T0 + 2, ready=True)]
    await run_until(loop, api, clock, T0 + 10)
    assert api.obj["status"]["lastWakeSeconds"] == 7.5
    assert "wakeStartedTime" not in api.obj["status"]


async def test_ledger_survives_a_restart() -> None:
    api, _load, clock = make(replicas=1)
    api.pods = [a_pod("a", T0 + 3)]
    first = ServiceLoop(api, None, Options(checkpoint_every=5.0), clock=clock)
    # checkpoints: T0+1 (the pod appeared), then every 5 s: the last at T0+21
    await run_until(first, api, clock, T0 + 24)
    assert api.obj["status"]["gpuSeconds"] == 21 - 3
    # killed at T0+23 (2 s of accounting lost from memory); a new one starts at T0+27
    clock.t = T0 + 27
    second = ServiceLoop(api, None, Options(checkpoint_every=5.0), clock=clock)
    await run_until(second, api, clock, T0 + 61)
    assert second.ledger is not None
    assert second.ledger.gpu_seconds == 60 - 3
    assert second.ledger.baseline_gpu_seconds == 60
    status = api.obj["status"]  # the last checkpoint: T0+58
    assert status["gpuSeconds"] == 58 - 3
    assert status["baselineGpuSeconds"] == 58


async def test_an_idle_service_reads_nothing_at_its_first_tick() -> None:
    """The ledger is restored from the body kopf hands over: no GET per service at a
    start-up (500 services at zero made 1,500 reads after their reconcile). The
    checkpoint states its rates, as every checkpoint does (one written before the rate
    fields existed is rewritten once, and that write checks the API first)."""
    api, load, clock = make(0)
    api.obj["status"] = {
        "gpuSeconds": 7.0,
        "baselineGpuSeconds": 9.0,
        "gpusHeld": 0,
        "baselineGpus": 1,
        "ledgerTime": format_time(T0 - 100),
        "lastRequestTime": format_time(T0),
    }
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await run_until(loop, api, clock, T0 + 30)
    assert api.reads == 0
    assert loop.ledger is not None and loop.ledger.gpu_seconds == 7.0


async def test_a_checkpoint_newer_than_the_body_is_continued_from() -> None:
    """kopf's body may lag a checkpoint the previous replica wrote just before a
    failover: the first checkpoint write reads the object first and continues from it."""
    api, _load, clock = make(replicas=1)
    stale = copy.deepcopy(api.obj)
    stale["status"] = {
        "gpuSeconds": 10.0,
        "baselineGpuSeconds": 10.0,
        "ledgerTime": format_time(T0 - 20),
    }
    api.obj["status"] = {
        "gpuSeconds": 25.0,
        "baselineGpuSeconds": 25.0,
        "ledgerTime": format_time(T0 - 5),
    }  # written after `stale`
    loop = ServiceLoop(api, None, Options(checkpoint_every=5.0), clock=clock)
    await loop.tick(stale)  # no pod: nothing to write, nothing read
    assert api.reads == 0
    api.pods = [a_pod("a", T0 + 1)]
    clock.t = T0 + 2
    await loop.tick(stale)  # the pod set changed: a checkpoint, checked first
    assert api.reads == 1
    status = api.obj["status"]
    assert status["gpuSeconds"] == 25.0 + 1.0  # the newer checkpoint, plus the pod's 1 s
    assert status["baselineGpuSeconds"] == 25.0 + 7.0
    clock.t = T0 + 8
    await loop.tick(copy.deepcopy(api.obj))
    assert api.reads == 1  # checked once
    assert api.obj["status"]["gpuSeconds"] == 25.0 + 7.0


async def test_restart_resumes_at_a_ledger_time_between_whole_seconds() -> None:
    # Ticks land 0.9 s past each second; the checkpoint's time is the tick's, to the
    # microsecond, so a restart resumes exactly where the totals stop.
    api, _load, clock = make(replicas=1)
    api.pods = [a_pod("a", T0)]
    first = ServiceLoop(api, None, Options(checkpoint_every=5.0), clock=clock)
    for step in range(12):
        clock.t = T0 + step + 0.9
        await first.tick(copy.deepcopy(api.obj))
    when = parse_time(api.obj["status"]["ledgerTime"])
    assert when is not None and when == pytest.approx(T0 + 11.9)
    # one pod held since T0: the totals agree with their time
    assert api.obj["status"]["gpuSeconds"] == pytest.approx(when - T0)
    second = ServiceLoop(api, None, Options(checkpoint_every=5.0), clock=clock)
    clock.t = T0 + 20.0
    await second.tick(copy.deepcopy(api.obj))
    assert second.ledger is not None
    assert second.ledger.gpu_seconds == pytest.approx(20)


async def test_a_spec_change_clears_the_failure_or_reports_the_new_one() -> None:
    api, load, clock = make(replicas=1)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    api.pods = [a_pod("old", T0, waiting="ImagePullBackOff")]
    await run_until(loop, api, clock, T0 + 2)
    assert api.obj["status"]["phase"] == "Failed"
    # A new spec (new generation): the old pod's failure no longer counts.
    api.obj["metadata"]["generation"] = 2
    api.obj["spec"]["engine"] = {"image": "fixed:1"}
    await run_until(loop, api, clock, T0 + 4)
    failed = next(c for c in api.obj["status"]["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "False"
    # Its new pod fails the same way: reported again, with a fresh Event.
    api.pods = [a_pod("new", T0 + 5, waiting="ImagePullBackOff")]
    clock.t = T0 + 6
    await run_until(loop, api, clock, T0 + 8)
    failed = next(c for c in api.obj["status"]["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "ImagePullBackOff")
    assert "pod-new" in failed["message"]
    assert [w[0] for w in api.warnings] == ["ImagePullBackOff", "ImagePullBackOff"]


async def test_auto_idle_timeout_is_persisted_and_resumed_after_a_restart() -> None:
    api, load, clock = make(replicas=1, idleTimeout="auto", autoIdleTimeout={"min": "2s"})
    api.obj["status"]["lastWakeSeconds"] = 12.5
    loop = ServiceLoop(api, load, Options(), clock=clock)
    # Requests 60 s apart, each finished at once: gaps of about 60 s.
    for _ in range(6):
        load.loads = [ActivatorLoad(in_flight=1)]
        await run_until(loop, api, clock, clock.t + 1)
        load.loads = [ActivatorLoad(last_request_finished=clock.t)]
        await run_until(loop, api, clock, clock.t + 60)
    stored = api.obj["status"]["idlePolicy"]
    assert stored["gaps"] >= 5
    assert loop.scaler is not None and loop.scaler.wake_seconds == 12.5
    from glowplug.api import parse

    bounds = parse(api.obj).scaling.auto_idle
    assert bounds is not None
    learned = loop.scaler.idle.timeout(bounds, 12.5, clock.t)
    assert stored["idleTimeoutSeconds"] == round(learned, 1)
    # A new operator process reads it back from status.
    again = ServiceLoop(api, load, Options(), clock=clock)
    await run_until(again, api, clock, clock.t + 1)
    assert again.scaler is not None and again.scaler.idle.gaps == stored["gaps"]
    assert again.scaler.idle.recent == pytest.approx(loop.scaler.idle.recent, abs=1e-4)
    assert again.scaler.idle.timeout(bounds, 12.5, clock.t) == learned


# --- issue 11: wake phases, node waits ---------------------------------------------------


def pending_pod(uid: str, created: float) -> dict[str, Any]:
    """A pod the scheduler could not place (as kube-scheduler writes it)."""
    pod = a_pod(uid, created)
    del pod["spec"]["nodeName"]
    pod["status"] = {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
            }
        ]
    }
    return pod


def ca_event(reason: str, message: str, at: float) -> dict[str, Any]:
    """An Event as cluster-autoscaler's EventingScaleUpStatusProcessor records it."""
    return {
        "reason": reason,
        "message": message,
        "type": "Normal",
        "source": {"component": "cluster-autoscaler"},
        "lastTimestamp": format_time(at),
    }


def condition(api: ClusterAPIDouble, type_: str) -> dict[str, Any]:
    return next(c for c in api.obj["status"]["conditions"] if c["type"] == type_)


async def wake(api: ClusterAPIDouble, load: LoadDouble, clock: Clock, loop: ServiceLoop) -> None:
    """The activator's wake: replicas 0 -> 1 through the scale subresource, which bumps
    metadata.generation (as the API server does for any spec change)."""
    await run_until(loop, api, clock, clock.t + 1)
    api.obj["spec"]["replicas"] = 1
    api.obj["metadata"]["generation"] += 1
    api.obj["status"]["wakeStartedTime"] = format_time(clock.t)
    load.loads = [ActivatorLoad(queued=1, waking=True)]


async def test_a_wakes_own_pods_failures_are_reported() -> None:
    """The diagnosis of issue 11: the wake bumps the generation, and the pod it creates
    exists before the tick that notices (whole-second creationTimestamp). It used to be
    ignored as "the old spec's pod", so its failure never reached status."""
    api, load, clock = make(replicas=0)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await wake(api, load, clock, loop)
    api.pods = [a_pod("a", clock.t - 0.5, waiting="ImagePullBackOff")]
    await run_until(loop, api, clock, clock.t + 2)
    failed = condition(api, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "ImagePullBackOff")


async def test_wake_phases_timeline_events_and_histograms() -> None:
    def phase_count(phase: str) -> float:
        v = scrape(
            "glowplug_wake_phase_duration_seconds_count",
            {"namespace": "ns", "service": "svc", "phase": phase},
        )
        return v or 0.0

    before = {p: phase_count(p) for p in ("node", "image", "engine", "first_response")}
    api, load, clock = make(replicas=0)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await wake(api, load, clock, loop)
    t_wake = clock.t
    api.pods = [pending_pod("a", clock.t)]
    await run_until(loop, api, clock, clock.t + 2)
    st = api.obj["status"]
    assert st["wake"]["phase"] == "WaitingForNode"
    assert "Insufficient nvidia.com/gpu" in st["wake"]["message"]
    assert "no node autoscaler has answered" in st["wake"]["message"]
    waking = condition(api, "Waking")
    assert (waking["status"], waking["reason"]) == ("True", "WaitingForNode")
    assert (
        condition(api, "Failed").get("status") != "True"
        if any(c["type"] == "Failed" for c in st["conditions"])
        else True
    )
    # cluster-autoscaler answers: the message says so
    api.events["pod-a"] = [
        ca_event("TriggeredScaleUp", "pod triggered scale-up: [{gpu-pool 0->1 (max: 4)}]", clock.t)
    ]
    await run_until(loop, api, clock, clock.t + 2)
    assert "cluster-autoscaler: pod triggered scale-up" in api.obj["status"]["wake"]["message"]
    assert "gpu-pool 0->1" in condition(api, "Waking")["message"]
    # the node arrives (10 s after the wake): pulling, then the engine runs, then ready
    clock.t = t_wake + 10
    api.pods = [a_pod("a", t_wake, waiting="ContainerCreating")]
    await run_until(loop, api, clock, clock.t + 1)
    assert api.obj["status"]["wake"]["phase"] == "PullingImage"
    running = a_pod("a", t_wake)
    running["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": "x"}}
    clock.t = t_wake + 14
    api.pods = [running]
    await run_until(loop, api, clock, clock.t + 1)
    assert api.obj["status"]["wake"]["phase"] == "StartingEngine"
    assert condition(api, "Waking")["reason"] == "StartingEngine"
    clock.t = t_wake + 20
    api.pods = [a_pod("a", t_wake, ready=True)]
    await run_until(loop, api, clock, clock.t + 1)
    st = api.obj["status"]
    assert "wake" not in st
    phases = [e["phase"] for e in st["lastWake"]["timeline"]]
    assert phases == ["WaitingForNode", "PullingImage", "StartingEngine", "Ready"]
    assert st["lastWake"]["seconds"] == 20
    # the activator reports the first answer 0.3 s after ready
    load.loads = [ActivatorLoad(in_flight=1, first_response=t_wake + 20.3)]
    await run_until(loop, api, clock, clock.t + 1)
    phases = [e["phase"] for e in api.obj["status"]["lastWake"]["timeline"]]
    assert phases[-1] == "FirstResponse"
    # one Normal Event per phase, in order
    assert [r for r, _ in api.infos] == [
        "WaitingForNode",
        "PullingImage",
        "StartingEngine",
        "Ready",
    ]
    for phase in ("node", "image", "engine", "first_response"):
        assert phase_count(phase) == before[phase] + 1, phase
    node_sum = scrape(
        "glowplug_wake_phase_duration_seconds_sum",
        {"namespace": "ns", "service": "svc", "phase": "node"},
    )
    assert node_sum is not None and node_sum >= 10


async def test_not_trigger_scale_up_fails_within_a_tick() -> None:
    api, load, clock = make(replicas=0)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await wake(api, load, clock, loop)
    api.pods = [pending_pod("a", clock.t)]
    await run_until(loop, api, clock, clock.t + 2)
    api.events["pod-a"] = [
        ca_event(
            "NotTriggerScaleUp",
            "pod didn't trigger scale-up: 1 node(s) didn't match Pod's node affinity/selector",
            clock.t,
        )
    ]
    await run_until(loop, api, clock, clock.t + 1)
    failed = condition(api, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "NotTriggerScaleUp")
    assert "didn't match Pod's node affinity" in failed["message"]
    assert api.warnings[-1][0] == "NotTriggerScaleUp"
    assert api.obj["status"]["lastWake"]["phase"] == "Failed"
    assert "wake" not in api.obj["status"]


async def test_node_wait_timeout_only_without_any_signal() -> None:
    api, load, clock = make(replicas=0, nodeWaitTimeout="8s")
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await wake(api, load, clock, loop)
    t_wake = clock.t
    api.pods = [pending_pod("a", clock.t)]
    await run_until(loop, api, clock, t_wake + 6)
    assert not any(
        c["type"] == "Failed" and c["status"] == "True" for c in api.obj["status"]["conditions"]
    )
    await run_until(loop, api, clock, t_wake + 10)
    failed = condition(api, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "NodeWaitTimeout")
    assert "spec.scaling.nodeWaitTimeout" in failed["message"]

    # The same wait with a node autoscaler on it is not cut short.
    api2, load2, clock2 = make(replicas=0, nodeWaitTimeout="8s")
    loop2 = ServiceLoop(api2, load2, Options(), clock=clock2)
    await wake(api2, load2, clock2, loop2)
    api2.pods = [pending_pod("a", clock2.t)]
    api2.events["pod-a"] = [
        {
            "reason": "Nominated",
            "message": "Pod should schedule on: nodeclaim/gpu-x7k2q",
            "source": {"component": "karpenter"},
            "lastTimestamp": format_time(clock2.t),
        }
    ]
    await run_until(loop2, api2, clock2, clock2.t + 20)
    assert not any(
        c["type"] == "Failed" and c["status"] == "True" for c in api2.obj["status"]["conditions"]
    )
    assert (
        "karpenter: Pod should schedule on: nodeclaim/gpu-x7k2q"
        in (api2.obj["status"]["wake"]["message"])
    )


async def test_a_pending_wake_is_not_scaled_away_inside_its_wait() -> None:
    """KServe #1247 the other way round: no held request left (they timed out), the
    idle timeout passes, but the pod still waits for a node a node autoscaler is adding."""
    api, load, clock = make(replicas=0, idleTimeout="2s", nodeWaitTimeout="1h")
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await wake(api, load, clock, loop)
    api.pods = [pending_pod("a", clock.t)]
    api.events["pod-a"] = [
        ca_event("TriggeredScaleUp", "pod triggered scale-up: [{g 0->1 (max: 1)}]", clock.t)
    ]
    await run_until(loop, api, clock, clock.t + 3)
    load.loads = [ActivatorLoad(last_request_finished=clock.t)]
    await run_until(loop, api, clock, clock.t + 30)
    assert api.obj["spec"]["replicas"] == 1
    assert 0 not in api.scale_writes


async def test_restart_during_a_wake_keeps_its_timeline() -> None:
    api, load, clock = make(replicas=0)
    first = ServiceLoop(api, load, Options(), clock=clock)
    await wake(api, load, clock, first)
    t_wake = clock.t
    api.pods = [pending_pod("a", clock.t)]
    await run_until(first, api, clock, clock.t + 3)
    # the operator is killed; a new one takes over and the pod gets its node
    second = ServiceLoop(api, load, Options(), clock=clock)
    api.pods = [a_pod("a", t_wake, ready=True)]
    await run_until(second, api, clock, clock.t + 1)
    phases = [e["phase"] for e in api.obj["status"]["lastWake"]["timeline"]]
    assert phases == ["WaitingForNode", "Ready"]


async def test_failed_mount_event_of_a_creating_pod_fails_the_wake() -> None:
    """The kubelet's FailedMount Event (pod status only says ContainerCreating) becomes the
    FailedMount condition; another pod's Event does not."""
    api, load, clock = make(replicas=1)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    load.loads = [ActivatorLoad(queued=1, waking=True)]
    api.pods = [a_pod("a", T0, waiting="ContainerCreating")]
    mount = {
        "reason": "FailedMount",
        "involvedObject": {"kind": "Pod", "name": "pod-a", "uid": "a"},
        "message": 'MountVolume.SetUp failed for volume "model" : hostPath type check failed:'
        " /models/m is not a directory",
    }
    api.events["pod-b"] = [dict(mount, involvedObject={"kind": "Pod", "name": "pod-b"})]
    await run_until(loop, api, clock, T0 + 2)
    conditions = (api.obj.get("status") or {}).get("conditions") or []
    assert not [c for c in conditions if c["type"] == "Failed" and c["status"] == "True"]
    api.events["pod-a"] = [mount]
    await run_until(loop, api, clock, T0 + 4)
    failed = condition(api, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "FailedMount")
    assert "is not a directory" in failed["message"]


class CountingAPI(ClusterAPIDouble):
    """The double, counting every write it receives."""

    def __init__(self, obj: dict[str, Any], clock: Callable[[], float]) -> None:
        super().__init__(obj, clock)
        self.writes = 0

    async def write_ledger(self, namespace: str, name: str, fields: dict[str, Any]) -> None:
        self.writes += 1
        await super().write_ledger(namespace, name, fields)

    async def update_status(
        self,
        namespace: str,
        name: str,
        mutate: Callable[[Mapping[str, Any]], dict[str, Any] | None],
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        patch = await super().update_status(namespace, name, mutate)
        self.writes += 1 if patch else 0
        return patch


async def test_an_idle_service_at_zero_writes_nothing_and_rests() -> None:
    clock = Clock(T0)
    api = CountingAPI(embsvc(0), clock)
    load = LoadDouble()
    loop = ServiceLoop(api, load, Options(checkpoint_every=5.0), clock=clock)
    await run_until(loop, api, clock, T0 + 2)
    settled = api.writes  # the first tick persists lastRequestTime once
    assert settled <= 1 and loop.at_rest
    await run_until(loop, api, clock, T0 + 120)
    assert api.writes == settled, "an idle service at zero wrote status or the ledger"
    assert loop.next_due is None  # no pre-warm, no pod: nothing to run for but events


async def test_a_held_request_ends_the_rest() -> None:
    api, load, clock = make(0)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await run_until(loop, api, clock, T0 + 3)
    assert loop.at_rest
    load.loads = [ActivatorLoad(queued=1, waking=True)]
    await run_until(loop, api, clock, T0 + 4)
    assert api.obj["spec"]["replicas"] == 1 and not loop.at_rest


async def test_an_unreadable_activator_makes_no_status_writes_at_zero() -> None:
    clock = Clock(T0)
    api = CountingAPI(embsvc(0), clock)
    load = LoadDouble()
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await run_until(loop, api, clock, T0 + 2)
    settled = api.writes
    load.unreadable = 1  # busy for the autoscaler (no scale-down), but nobody used it
    await run_until(loop, api, clock, T0 + 60)
    assert api.writes == settled
    assert api.obj["spec"]["replicas"] == 0


async def test_a_prewarm_service_rests_only_to_the_next_minute() -> None:
    window = {"schedule": "0 9 * * *", "duration": "1h", "replicas": 1}
    api, load, clock = make(0, prewarm=[window])
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await run_until(loop, api, clock, T0 + 2)
    assert loop.at_rest  # T0 is 20:26 UTC: the 09:00 window is closed
    assert loop.rest_seconds(clock.t) <= 60.2


async def test_a_learned_prewarm_plan_rests_until_it_and_scales_up_ahead() -> None:
    """idleTimeout: auto resumed from status with a pre-warm plan: at zero the loop rests
    only until the predicted pre-warm, then raises a replica with nobody asking."""
    from glowplug.api.spec import AutoIdle
    from glowplug.operator.idlepolicy import IdlePolicy

    learned = IdlePolicy()
    for i in range(12):  # a request every 10 minutes, yesterday
        learned.observe(600.0 + (10 if i % 2 else -10), T0 - 86400 + 610 * i, AutoIdle())
    plan = learned.plan(AutoIdle(), 30.0, T0)
    assert plan.after is not None
    api, load, clock = make(0, idleTimeout="auto")
    finished = T0 - 300.0  # the last request finished 5 minutes ago
    api.obj["status"] = {
        "idlePolicy": learned.to_status(plan.keep_alive, plan),
        "lastWakeSeconds": 30.0,
        "lastRequestTime": format_time(finished),
    }
    load.loads = [ActivatorLoad(last_request_finished=finished)]
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await run_until(loop, api, clock, T0 + 2)
    assert loop.at_rest and api.obj["spec"]["replicas"] == 0
    wake_at = finished + plan.after
    assert loop.rest_seconds(clock.t) == pytest.approx(wake_at - clock.t)
    await run_until(loop, api, clock, wake_at + 1)
    assert api.obj["spec"]["replicas"] == 1  # pre-warmed ahead of the predicted request
    assert api.obj["status"]["idlePolicy"]["prewarm"] == {
        "afterSeconds": round(plan.after, 1),
        "untilSeconds": round(plan.until or 0, 1),
    }


class FailingOnceAPI(ClusterAPIDouble):
    """The double, failing the first status write (an API server timing out)."""

    def __init__(self, obj: dict[str, Any], clock: Callable[[], float]) -> None:
        super().__init__(obj, clock)
        self.fail = True

    async def update_status(
        self,
        namespace: str,
        name: str,
        mutate: Callable[[Mapping[str, Any]], dict[str, Any] | None],
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        if self.fail:
            self.fail = False
            raise RuntimeError("timed out (simulated)")
        return await super().update_status(namespace, name, mutate)


async def test_a_failed_last_request_write_is_written_again() -> None:
    clock = Clock(T0)
    api = FailingOnceAPI(embsvc(0), clock)
    loop = ServiceLoop(api, LoadDouble(), Options(), clock=clock)
    await run_until(loop, api, clock, T0 + 1)
    assert "lastRequestTime" not in api.obj["status"]  # the first write failed
    await run_until(loop, api, clock, T0 + 3)
    assert "lastRequestTime" in api.obj["status"]


async def test_checkpoints_only_while_gpus_are_held() -> None:
    clock = Clock(T0)
    api = CountingAPI(embsvc(1), clock)
    loop = ServiceLoop(api, None, Options(checkpoint_every=5.0), clock=clock)
    api.pods = [a_pod("p1", T0, ready=True)]
    await run_until(loop, api, clock, T0 + 21)
    held = api.writes
    assert held >= 4  # the pod appeared, then every 5 s
    api.pods = []
    api.obj["spec"]["replicas"] = 0
    await run_until(loop, api, clock, T0 + 23)
    gone = api.writes
    assert gone > held  # the pod set changed: one checkpoint says so
    await run_until(loop, api, clock, T0 + 90)
    assert api.writes == gone


async def test_status_at_zero_stays_exact_without_writes() -> None:
    # The ledger writes nothing at zero, yet status + rate x elapsed is what it counts.
    clock = Clock(T0)
    api = CountingAPI(embsvc(1), clock)
    loop = ServiceLoop(api, None, Options(checkpoint_every=5.0), clock=clock)
    api.pods = [a_pod("p1", T0, ready=True)]
    await run_until(loop, api, clock, T0 + 30)
    api.pods = []
    api.obj["spec"]["replicas"] = 0
    await run_until(loop, api, clock, T0 + 35)
    gone = api.writes
    await run_until(loop, api, clock, T0 + 600)
    assert api.writes == gone
    assert loop.ledger is not None
    now = totals_at(api.obj, loop.ledger.as_of)
    assert now.gpu_seconds == pytest.approx(loop.ledger.gpu_seconds)
    assert now.baseline_gpu_seconds == pytest.approx(loop.ledger.baseline_gpu_seconds)
    assert api.obj["status"]["baselineGpuSeconds"] < 0.1 * now.baseline_gpu_seconds


async def test_a_baseline_edit_at_zero_is_one_checkpoint() -> None:
    clock = Clock(T0)
    api = CountingAPI(embsvc(0), clock)
    loop = ServiceLoop(api, LoadDouble(), Options(checkpoint_every=5.0), clock=clock)
    await run_until(loop, api, clock, T0 + 10)
    settled = api.writes
    assert "ledgerTime" not in api.obj["status"]  # never held: nothing to checkpoint
    api.obj["spec"]["cost"]["baselineReplicas"] = 3
    await run_until(loop, api, clock, T0 + 60)
    assert api.writes == settled + 1
    assert api.obj["status"]["baselineGpus"] == 3
    assert loop.ledger is not None
    totals = totals_at(api.obj, loop.ledger.as_of)
    assert totals.baseline_gpu_seconds == pytest.approx(loop.ledger.baseline_gpu_seconds)


async def test_a_checkpoint_without_rates_is_rewritten_once_after_a_restart() -> None:
    clock = Clock(T0 + 100)
    obj = embsvc(0)
    obj["status"] = {"gpuSeconds": 5.0, "baselineGpuSeconds": 50.0, "ledgerTime": format_time(T0)}
    api = CountingAPI(obj, clock)
    loop = ServiceLoop(api, LoadDouble(), Options(checkpoint_every=5.0), clock=clock)
    await run_until(loop, api, clock, T0 + 110)
    ledger_writes = api.writes
    await run_until(loop, api, clock, T0 + 200)
    assert api.writes == ledger_writes
    assert api.obj["status"]["gpusHeld"] == 0 and api.obj["status"]["baselineGpus"] == 1
    assert totals_at(api.obj, T0 + 200).baseline_gpu_seconds == pytest.approx(50 + 200)


def sample(name: str, labels: dict[str, str]) -> float:
    value = scrape(name, labels)
    assert value is not None, (name, labels)
    return value


async def test_counters_are_exact_at_each_scrape_while_the_loop_rests() -> None:
    # The loop rests at zero (no tick), yet every scrape's baseline counter has grown by
    # baselineGpus x elapsed; the next tick adds only the rest, never twice.
    clock = Clock(T0)
    obj = embsvc(1)
    obj["metadata"]["namespace"] = "t-rest-scrape"
    obj["spec"]["resources"]["gpuType"] = "L4"
    api = ClusterAPIDouble(obj, clock)
    loop = ServiceLoop(api, None, Options(checkpoint_every=5.0), clock=clock)
    labels = {"namespace": "t-rest-scrape", "service": "svc", "gpu_type": "L4"}
    try:
        api.pods = [a_pod("p1", T0, ready=True)]
        await run_until(loop, api, clock, T0 + 20)
        api.pods = []
        api.obj["spec"]["replicas"] = 0
        await run_until(loop, api, clock, T0 + 22)
        used = sample("glowplug_gpu_seconds_total", labels)
        base = sample("glowplug_baseline_gpu_seconds_total", labels)
        clock.t = T0 + 322  # five minutes without a tick
        assert sample("glowplug_gpu_seconds_total", labels) == pytest.approx(used)
        later = sample("glowplug_baseline_gpu_seconds_total", labels)
        assert later == pytest.approx(base + 300)
        await loop.tick(copy.deepcopy(api.obj))  # the tick after the rest adds nothing more
        assert sample("glowplug_baseline_gpu_seconds_total", labels) == pytest.approx(later)
        assert loop.ledger is not None
        # since this series began (T0): everything the ledger counted
        assert later == pytest.approx(loop.ledger.baseline_gpu_seconds)
    finally:
        loop.series.remove()


async def test_wake_histograms_appear_when_the_service_first_wakes() -> None:
    """An idle service exports its counters only; a wake creates the wake histograms at
    zero before observing into them (issue 12: 10,000 idle services, bounded series)."""
    from glowplug import metrics as m

    api, load, clock = make(0)
    api.obj["metadata"]["namespace"] = "t-wake-series"
    labels = {"namespace": "t-wake-series", "service": "svc"}
    loop = ServiceLoop(api, load, Options(), clock=clock)
    await run_until(loop, api, clock, T0 + 5)
    assert scrape(m.WAKES_TOTAL, {**labels, "outcome": "ready"}) == 0
    assert scrape(f"{m.WAKE_DURATION}_count", labels) is None
    assert scrape(f"{m.WAKE_PHASE_DURATION}_count", {**labels, "phase": "node"}) is None
    await wake(api, load, clock, loop)
    await run_until(loop, api, clock, clock.t + 2)
    assert scrape(f"{m.WAKE_DURATION}_count", labels) == 0
    assert scrape(f"{m.WAKE_PHASE_DURATION}_count", {**labels, "phase": "node"}) == 0


def test_a_stopped_series_stops_extrapolating_the_baseline() -> None:
    """A loop paused by a peer stops its counters where its ledger last accounted: the
    replica taking over counts from the checkpoint on (two operator replicas in the Helm
    suite had counted the baseline at zero twice)."""
    from glowplug import metrics as m
    from glowplug.api import parse
    from glowplug.operator.ledger import Delta, Rates
    from glowplug.operator.servicemetrics import ServiceSeries

    obj = embsvc(0)
    obj["metadata"]["namespace"] = "t-stopped-series"
    svc = parse(obj)
    clock = Clock(T0)
    series = ServiceSeries(svc, clock)
    labels = {"namespace": "t-stopped-series", "service": "svc", "gpu_type": series.gpu_type}

    def baseline() -> float | None:
        return scrape(m.BASELINE_GPU_SECONDS_TOTAL, labels)

    series.accrue(Delta(0.0, 0.0), T0, Rates(0.0, 1.0))
    clock.t = T0 + 10
    assert baseline() == 10.0  # at zero the rate carries the counter
    series.stop()
    clock.t = T0 + 100
    assert baseline() == 10.0
    series.remove()
