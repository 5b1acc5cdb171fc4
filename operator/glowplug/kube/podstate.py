"""Why a wake cannot succeed, read from the service's pods. Pure functions over pod dicts.

The operator turns the answer into the ``Failed`` condition (reason and message) and a
Warning Event; the activator fails the requests it holds as soon as it sees the
condition (DESIGN.md section 3.3). Reasons, in the order they are reported when several
pods disagree (the most specific first):

- ``OOMKilled``: a container's current or last termination was OOMKilled;
- ``CrashLoopBackOff``: a container waits in CrashLoopBackOff;
- ``ImagePullBackOff``: a container waits in ImagePullBackOff, ErrImagePull or
  InvalidImageName;
- ``CreateContainerConfigError``: a container cannot be created (CreateContainerConfigError,
  e.g. a Secret or ConfigMap key its env names is missing, or CreateContainerError);
- ``FailedMount``: a container waits in ContainerCreating and the kubelet reported a
  FailedMount Event for the pod (e.g. a hostPath model source that is not a directory).
  Pod status does not carry it (the container just waits in ContainerCreating), so the
  caller passes the pods' FailedMount Events;
- ``Unschedulable``: PodScheduled is False with reason Unschedulable.

``Unschedulable`` alone is not a wake failure (``service_failure`` skips it): on a GPU
cluster it is the normal cold start while a node autoscaler adds a node. ``wakephases``
turns it into the ``WaitingForNode`` phase, and into ``NotTriggerScaleUp`` or
``NodeWaitTimeout`` when the wait cannot end well.

Why Unschedulable never reached status before (issue 11): ``ServiceLoop`` ignored pods
created before the last *generation* change, and the wake itself changes the
generation (spec.replicas, through the scale subresource). The tick that noticed it ran
up to a second after the pod was created (and creationTimestamp has whole seconds), so
every pod of a wake counted as "the old spec's" and its failure was never reported.
Only a change of the spec other than ``replicas`` now counts (``scaling.spec_fingerprint``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from glowplug.kube.timefmt import parse_time

OOM_KILLED = "OOMKilled"
CRASH_LOOP = "CrashLoopBackOff"
IMAGE_PULL = "ImagePullBackOff"
CREATE_CONTAINER = "CreateContainerConfigError"
FAILED_MOUNT = "FailedMount"
UNSCHEDULABLE = "Unschedulable"
NOT_TRIGGER_SCALE_UP = "NotTriggerScaleUp"  # from wakephases: a node autoscaler said no
NODE_WAIT_TIMEOUT = "NodeWaitTimeout"  # from wakephases: nothing said a node is coming
PRIORITY = (
    OOM_KILLED,
    CRASH_LOOP,
    IMAGE_PULL,
    CREATE_CONTAINER,
    FAILED_MOUNT,
    NOT_TRIGGER_SCALE_UP,
    NODE_WAIT_TIMEOUT,
    UNSCHEDULABLE,
)
_PULL_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
_CREATE_REASONS = {"CreateContainerConfigError", "CreateContainerError"}

Pod = Mapping[str, Any]
Event = Mapping[str, Any]


@dataclass(frozen=True)
class WakeFailure:
    reason: str
    message: str
    pod: str


def _statuses(pod: Pod) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]


def creating(pod: Pod) -> bool:
    """True when a container of the pod waits in ContainerCreating (volumes not mounted
    yet, or the sandbox not up): the state in which a FailedMount Event matters."""
    return any(
        ((cs.get("state") or {}).get("waiting") or {}).get("reason") == "ContainerCreating"
        for cs in _statuses(pod)
    )


def pod_failure(pod: Pod, events: Iterable[Event] = ()) -> WakeFailure | None:
    """The reason this pod cannot become ready, or None. ``events``: FailedMount Events
    of the namespace (those of other pods are ignored)."""
    meta = pod.get("metadata") or {}
    name = str(meta.get("name", ""))
    found: dict[str, str] = {}
    if creating(pod):
        for ev in events:
            obj = ev.get("involvedObject") or {}
            if ev.get("reason") != FAILED_MOUNT or obj.get("kind") != "Pod":
                continue
            if obj.get("name") == name and obj.get("uid", meta.get("uid")) == meta.get("uid"):
                found.setdefault(
                    FAILED_MOUNT,
                    f"pod {name}: a volume cannot be mounted: {ev.get('message') or 'FailedMount'}",
                )
    for cs in _statuses(pod):
        container = cs.get("name", "?")
        state = cs.get("state") or {}
        last = cs.get("lastState") or {}
        waiting = state.get("waiting") or {}
        for term in (state.get("terminated") or {}, last.get("terminated") or {}):
            if term.get("reason") == OOM_KILLED:
                found.setdefault(
                    OOM_KILLED,
                    f"pod {name}: container {container} was killed for using too much memory"
                    f" (exit code {term.get('exitCode', '?')}, restarts"
                    f" {cs.get('restartCount', 0)})",
                )
        reason = waiting.get("reason")
        detail = waiting.get("message") or ""
        if reason == CRASH_LOOP:
            term = last.get("terminated") or {}
            found.setdefault(
                CRASH_LOOP,
                f"pod {name}: container {container} keeps exiting (last exit code"
                f" {term.get('exitCode', '?')}, {term.get('reason') or 'no reason'}; restarts"
                f" {cs.get('restartCount', 0)})" + (f": {detail}" if detail else ""),
            )
        elif reason in _PULL_REASONS:
            found.setdefault(
                IMAGE_PULL,
                f"pod {name}: cannot pull image {cs.get('image', '?')} ({reason})"
                + (f": {detail}" if detail else ""),
            )
        elif reason in _CREATE_REASONS:
            found.setdefault(
                CREATE_CONTAINER,
                f"pod {name}: container {container} cannot be created ({reason})"
                + (f": {detail}" if detail else ""),
            )
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == UNSCHEDULABLE
        ):
            found.setdefault(
                UNSCHEDULABLE,
                f"pod {name} cannot be scheduled: {cond.get('message') or 'no node fits'}",
            )
    for reason in PRIORITY:
        if reason in found:
            return WakeFailure(reason, found[reason], name)
    return None


def is_ready(pod: Pod) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def service_failure(
    pods: Iterable[Pod], since: float | None = None, events: Iterable[Event] = ()
) -> WakeFailure | None:
    """The service's wake failure: None when any pod is ready (the service serves).

    Pods being deleted are ignored, and so are pods created before ``since`` (the moment
    the spec last changed: their failure belongs to the old spec). ``events``: the
    namespace's FailedMount Events, when any pod waits in ContainerCreating.
    """
    events = list(events)
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    if any(is_ready(p) for p in live):
        return None
    failures = []
    for pod in live:
        created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
        if since is not None and created is not None and created < since:
            continue
        failure = pod_failure(pod, events)
        # Waiting for a node is a phase of the wake, not a failure (wakephases).
        if failure is not None and failure.reason != UNSCHEDULABLE:
            failures.append(failure)
    if not failures:
        return None
    failures.sort(key=lambda f: (PRIORITY.index(f.reason), f.pod))
    return failures[0]
