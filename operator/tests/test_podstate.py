"""Wake failures read from pod status."""

from __future__ import annotations

from typing import Any

from glowplug.kube.podstate import is_ready, pod_failure, service_failure


def pod(
    name: str = "p",
    *,
    waiting: str | None = None,
    last_terminated: str | None = None,
    terminated: str | None = None,
    unschedulable: bool = False,
    ready: bool = False,
    created: str = "2026-01-01T00:00:10Z",
    deleting: bool = False,
) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "engine", "image": "lmsysorg/sglang:x", "restartCount": 3}
    cs["state"] = {}
    if waiting:
        cs["state"]["waiting"] = {"reason": waiting, "message": "details"}
    if terminated:
        cs["state"]["terminated"] = {"reason": terminated, "exitCode": 137}
    if last_terminated:
        cs["lastState"] = {"terminated": {"reason": last_terminated, "exitCode": 137}}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
            }
        )
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {
        "metadata": meta,
        "status": {"conditions": conditions, "containerStatuses": [cs]},
    }


def test_each_reason() -> None:
    f = pod_failure(pod(unschedulable=True))
    assert f is not None and f.reason == "Unschedulable" and "nvidia.com/gpu" in f.message
    for waiting in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
        f = pod_failure(pod(waiting=waiting))
        assert f is not None and f.reason == "ImagePullBackOff", waiting
        assert "lmsysorg/sglang:x" in f.message
    f = pod_failure(pod(waiting="CrashLoopBackOff", last_terminated="Error"))
    assert f is not None and f.reason == "CrashLoopBackOff" and "exit code 137" in f.message
    f = pod_failure(pod(waiting="CrashLoopBackOff", last_terminated="OOMKilled"))
    assert f is not None and f.reason == "OOMKilled"
    f = pod_failure(pod(terminated="OOMKilled"))
    assert f is not None and f.reason == "OOMKilled"
    for waiting in ("CreateContainerConfigError", "CreateContainerError"):
        f = pod_failure(pod(waiting=waiting))
        assert f is not None and f.reason == "CreateContainerConfigError", waiting
        assert waiting in f.message and "details" in f.message


def test_healthy_and_starting_pods_are_not_failures() -> None:
    assert pod_failure(pod()) is None
    assert pod_failure(pod(waiting="ContainerCreating")) is None
    assert pod_failure({"metadata": {"name": "x"}}) is None


def test_a_ready_pod_clears_the_service_failure() -> None:
    assert service_failure([pod("a", ready=True), pod("b", waiting="ImagePullBackOff")]) is None
    f = service_failure([pod("a", unschedulable=True), pod("b", waiting="CrashLoopBackOff")])
    assert f is not None and f.reason == "CrashLoopBackOff" and f.pod == "b"


def test_deleting_and_old_pods_are_ignored() -> None:
    assert service_failure([pod(waiting="ImagePullBackOff", deleting=True)]) is None
    since = 1767225600.0 + 60  # 2026-01-01T00:01:00Z
    old = pod("old", waiting="ImagePullBackOff", created="2026-01-01T00:00:10Z")
    new = pod("new", waiting="CrashLoopBackOff", created="2026-01-01T00:02:00Z")
    assert service_failure([old], since=since) is None
    f = service_failure([old, new], since=since)
    assert f is not None and f.pod == "new"


def test_is_ready() -> None:
    assert is_ready(pod(ready=True))
    assert not is_ready(pod(ready=True, deleting=True))
    assert not is_ready(pod())


def mount_event(pod_name: str, uid: str = "u1") -> dict[str, Any]:
    """A FailedMount Event as the kubelet posts it (shape of a core/v1 Event)."""
    return {
        "reason": "FailedMount",
        "type": "Warning",
        "involvedObject": {"kind": "Pod", "name": pod_name, "uid": uid},
        "message": 'MountVolume.SetUp failed for volume "model" : hostPath type check failed:'
        " /models/qwen3 is not a directory",
    }


def test_failed_mount_needs_container_creating_and_the_pods_event() -> None:
    creating = pod("p", waiting="ContainerCreating")
    creating["metadata"]["uid"] = "u1"
    f = pod_failure(creating, [mount_event("p")])
    assert f is not None and f.reason == "FailedMount"
    assert "is not a directory" in f.message and "pod p" in f.message
    # Another pod's event, an earlier pod of the same name, or no event: no failure.
    assert pod_failure(creating, [mount_event("q")]) is None
    assert pod_failure(creating, [mount_event("p", uid="old")]) is None
    assert pod_failure(creating) is None
    # Once the containers run, an old FailedMount Event is history.
    running = pod("p")
    running["metadata"]["uid"] = "u1"
    assert pod_failure(running, [mount_event("p")]) is None
    # Through service_failure too; a ready pod still wins.
    f = service_failure([creating], events=[mount_event("p")])
    assert f is not None and f.reason == "FailedMount"
    assert service_failure([creating, pod("r", ready=True)], events=[mount_event("p")]) is None
