"""The wake's phases from pods and their Events (wakephases), as the real components write
them: kube-scheduler's PodScheduled condition, cluster-autoscaler's and Karpenter's Events."""

from __future__ import annotations

from typing import Any

from glowplug.kube.timefmt import format_time
from glowplug.operator import wakephases as wp

T0 = 1_780_000_000.0


def pod(
    *, node: str = "", ready: bool = False, state: dict[str, Any] | None = None
) -> dict[str, Any]:
    conds: list[dict[str, Any]] = []
    if not node:
        conds.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
            }
        )
    conds.append({"type": "Ready", "status": "True" if ready else "False"})
    out: dict[str, Any] = {
        "metadata": {"name": "emb-1"},
        "spec": {"nodeName": node} if node else {},
        "status": {"conditions": conds},
    }
    if state is not None:
        out["status"]["containerStatuses"] = [
            {"name": "engine", "image": "sglang:1", "state": state}
        ]
    return out


def event(
    reason: str, message: str, at: float, component: str = "cluster-autoscaler"
) -> dict[str, Any]:
    return {
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "lastTimestamp": format_time(at),
    }


def test_phases_of_one_pod() -> None:
    assert wp.pod_phase(pod()).phase == wp.WAITING_FOR_NODE
    assert "Insufficient nvidia.com/gpu" in wp.pod_phase(pod()).message
    creating = pod(node="gpu-1", state={"waiting": {"reason": "ContainerCreating"}})
    assert wp.pod_phase(creating).phase == wp.PULLING_IMAGE
    assert "ContainerCreating" in wp.pod_phase(creating).message
    running = pod(node="gpu-1", state={"running": {"startedAt": format_time(T0)}})
    assert wp.pod_phase(running).phase == wp.STARTING_ENGINE
    assert wp.pod_phase(pod(node="gpu-1", ready=True)).phase == wp.READY


def test_latest_node_autoscaler_signal_wins() -> None:
    up = event("TriggeredScaleUp", "pod triggered scale-up: [{gpu 0->1 (max: 2)}]", T0)
    no = event(
        "NotTriggerScaleUp", "pod didn't trigger scale-up: 1 max node group size reached", T0 + 5
    )
    other = event("FailedScheduling", "0/2 nodes are available", T0 + 9, "default-scheduler")
    sig = wp.node_signal([up, no, other])
    assert sig is not None and sig.kind == wp.NO_SCALE_UP and sig.time == T0 + 5
    again = event("TriggeredScaleUp", "pod triggered scale-up: [{gpu 1->2 (max: 2)}]", T0 + 7)
    sig = wp.node_signal([up, no, again])
    assert sig is not None and sig.kind == wp.SCALE_UP and "1->2" in sig.message
    karpenter = event("Nominated", "Pod should schedule on: nodeclaim/gpu-abc", T0, "karpenter")
    sig = wp.node_signal([karpenter])
    assert sig is not None and sig.kind == wp.SCALE_UP and sig.source == "karpenter"
    # a Nominated Event that is not Karpenter's nomination is no signal
    assert wp.node_signal([event("Nominated", "something else", T0)]) is None
    assert wp.node_signal([other]) is None


def test_observe_takes_the_most_advanced_pod() -> None:
    pods = [pod(), pod(node="gpu-1", state={"running": {}})]
    pods[1]["metadata"]["name"] = "emb-2"
    obs = wp.observe(pods)
    assert obs is not None and (obs.phase, obs.pod) == (wp.STARTING_ENGINE, "emb-2")
    assert wp.observe([]) is None
    assert wp.unscheduled(pods) == ["emb-1"]


def test_timeline_moves_forward_and_round_trips_through_status() -> None:
    tl = wp.Timeline(T0)
    assert tl.enter(wp.WAITING_FOR_NODE, T0 + 1)
    assert not tl.enter(wp.WAITING_FOR_NODE, T0 + 2)
    assert tl.enter(wp.STARTING_ENGINE, T0 + 30)
    assert not tl.enter(wp.PULLING_IMAGE, T0 + 31)  # never backwards
    assert tl.enter(wp.READY, T0 + 50)
    # the first phase counts from the trigger
    assert tl.durations() == {wp.WAITING_FOR_NODE: 30.0, wp.STARTING_ENGINE: 20.0}
    back = wp.Timeline.restore(tl.status())
    assert back is not None and back.entries == tl.entries and back.started == T0


def test_node_failures() -> None:
    tl = wp.Timeline(T0)
    obs = wp.pod_phase(pod())
    tl.enter(obs.phase, T0 + 1)
    assert wp.node_failure(obs, tl, T0 + 599, 600) is None
    fail = wp.node_failure(obs, tl, T0 + 600, 600)
    assert fail is not None and fail.reason == wp.NODE_WAIT_TIMEOUT
    no = wp.pod_phase(pod(), [event("NotTriggerScaleUp", "pod didn't trigger scale-up: x", T0)])
    fail = wp.node_failure(no, tl, T0 + 2, 600)
    assert fail is not None and fail.reason == wp.NOT_TRIGGER_SCALE_UP
    assert "pod didn't trigger scale-up: x" in fail.message
    up = wp.pod_phase(pod(), [event("TriggeredScaleUp", "pod triggered scale-up: y", T0)])
    assert wp.node_failure(up, tl, T0 + 5000, 600) is None
