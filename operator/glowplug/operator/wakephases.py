"""The phases of a wake, read from the service's pods and their Events. Pure, no I/O.

A wake (replicas raised from zero) moves through:

- ``WaitingForNode``: the pod is not bound to a node. The scheduler says why
  (``PodScheduled=False``, reason ``Unschedulable``, its message); a node autoscaler says
  whether a node is coming, as Events on the pod:

  - cluster-autoscaler (``cluster-autoscaler/processors/status/
    eventing_scale_up_processor.go``): ``TriggeredScaleUp`` "pod triggered scale-up:
    [{group 0->1 (max: 3)}]", or ``NotTriggerScaleUp`` "pod didn't trigger scale-up:
    <reasons>" when no node group can take the pod;
  - Karpenter: ``Nominated`` "Pod should schedule on: nodeclaim/<name>" once it has
    launched (or picked) capacity for the pod.

- ``PullingImage``: bound, no container running yet (image pull, volume mounts,
  container creation);
- ``StartingEngine``: the engine container runs, its readiness probe has not passed
  (model load, warm-up);
- ``Ready``: the first pod is ready;
- ``FirstResponse``: the activator answered the first request that waited for the wake.

A wake cannot succeed while waiting for a node (DESIGN.md section 3.3) when a node
autoscaler said no (``NotTriggerScaleUp`` newer than any scale-up signal), or when
nothing said a node is coming for ``spec.scaling.nodeWaitTimeout``. Everything else is
the normal GPU cold start: wait, and say what for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from glowplug.kube import podstate
from glowplug.kube.timefmt import format_time, parse_time

WAITING_FOR_NODE = "WaitingForNode"
PULLING_IMAGE = "PullingImage"
STARTING_ENGINE = "StartingEngine"
READY = "Ready"
FIRST_RESPONSE = "FirstResponse"
FAILED = "Failed"
PHASES = (WAITING_FOR_NODE, PULLING_IMAGE, STARTING_ENGINE, READY, FIRST_RESPONSE)
# The phases a wake waits in: the Waking condition's reason while it lasts.
WAITING_PHASES = frozenset({WAITING_FOR_NODE, PULLING_IMAGE, STARTING_ENGINE})
# The histogram's ``phase`` label for the time spent in each phase.
HISTOGRAM_PHASE = {
    WAITING_FOR_NODE: "node",
    PULLING_IMAGE: "image",
    STARTING_ENGINE: "engine",
    READY: "first_response",
}

NOT_TRIGGER_SCALE_UP = "NotTriggerScaleUp"
NODE_WAIT_TIMEOUT = "NodeWaitTimeout"
TRIGGERED_SCALE_UP = "TriggeredScaleUp"
NOMINATED = "Nominated"
SCALE_UP = "scale-up"
NO_SCALE_UP = "no-scale-up"

Pod = Mapping[str, Any]
Event = Mapping[str, Any]


@dataclass(frozen=True)
class NodeSignal:
    """What a node autoscaler last said about a pod."""

    kind: str  # SCALE_UP | NO_SCALE_UP
    source: str  # the Event's reporting component, e.g. cluster-autoscaler, karpenter
    reason: str  # the Event's reason
    message: str
    time: float


@dataclass(frozen=True)
class Observation:
    """Where the most advanced pod of a wake stands."""

    phase: str
    message: str
    pod: str
    signal: NodeSignal | None = None


def _event_time(ev: Event) -> float | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        t = parse_time(ev.get(key))
        if t is not None:
            return t
    series = ev.get("series") or {}
    return parse_time(series.get("lastObservedTime"))


def _source(ev: Event) -> str:
    return str(
        (ev.get("source") or {}).get("component") or ev.get("reportingComponent") or "unknown"
    )


def node_signal(events: Iterable[Event]) -> NodeSignal | None:
    """The latest node-autoscaler verdict among a pod's Events, or None."""
    best: NodeSignal | None = None
    for ev in events:
        reason = str(ev.get("reason") or "")
        message = str(ev.get("message") or "")
        karpenter = reason == NOMINATED and message.startswith("Pod should schedule on")
        if reason == TRIGGERED_SCALE_UP or karpenter:
            kind = SCALE_UP
        elif reason == NOT_TRIGGER_SCALE_UP:
            kind = NO_SCALE_UP
        else:
            continue
        t = _event_time(ev) or 0.0
        # Ties go to the scale-up: a node on its way outranks a refusal of the same second.
        if best is None or t > best.time or (t == best.time and kind == SCALE_UP):
            best = NodeSignal(kind, _source(ev), reason, message, t)
    return best


def _scheduler_message(pod: Pod) -> str:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("message") or cond.get("reason") or "")
    return ""


def pod_phase(pod: Pod, events: Sequence[Event] = ()) -> Observation:
    """The phase one pod of a wake is in, and what it waits for."""
    name = str((pod.get("metadata") or {}).get("name", ""))
    if podstate.is_ready(pod):
        return Observation(READY, f"pod {name} is ready", name)
    if not (pod.get("spec") or {}).get("nodeName"):
        signal = node_signal(events)
        why = _scheduler_message(pod) or "not scheduled yet"
        message = f"pod {name} has no node: {why}"
        if signal is None:
            message += "; no node autoscaler has answered for it yet"
        else:
            message += f"; {signal.source}: {signal.message}"
        return Observation(WAITING_FOR_NODE, message, name, signal)
    node = str((pod.get("spec") or {}).get("nodeName"))
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    running = [cs for cs in statuses if (cs.get("state") or {}).get("running") is not None]
    if running:
        return Observation(
            STARTING_ENGINE,
            f"pod {name} on node {node}: the engine runs, its readiness probe has not"
            " passed yet (loading the model)",
            name,
        )
    waiting = [
        str(((cs.get("state") or {}).get("waiting") or {}).get("reason") or "") for cs in statuses
    ]
    detail = ", ".join(w for w in waiting if w) or "creating containers"
    image = next((str(cs.get("image")) for cs in statuses if cs.get("image")), "")
    return Observation(
        PULLING_IMAGE,
        f"pod {name} on node {node}: pulling the image and starting containers"
        + (f" ({image}: {detail})" if image else f" ({detail})"),
        name,
    )


def observe(
    pods: Iterable[Pod], events_by_pod: Mapping[str, Sequence[Event]] | None = None
) -> Observation | None:
    """The wake's phase: that of its most advanced live pod; None without pods."""
    events_by_pod = events_by_pod or {}
    best: Observation | None = None
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        obs = pod_phase(pod, events_by_pod.get(str(meta.get("name", ""))) or ())
        if best is None or PHASES.index(obs.phase) > PHASES.index(best.phase):
            best = obs
    return best


def unscheduled(pods: Iterable[Pod]) -> list[str]:
    """Names of live pods not bound to a node (whose Events are worth reading)."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if not meta.get("deletionTimestamp") and not (pod.get("spec") or {}).get("nodeName"):
            out.append(str(meta.get("name", "")))
    return out


@dataclass
class Timeline:
    """One wake: when it started and when each phase was entered."""

    started: float
    entries: list[tuple[str, float]] = field(default_factory=list)
    message: str = ""
    outcome: str = ""  # "" while in progress; READY/FIRST_RESPONSE or FAILED when over

    @property
    def phase(self) -> str:
        return self.entries[-1][0] if self.entries else ""

    def entered(self, phase: str) -> float | None:
        return next((t for p, t in self.entries if p == phase), None)

    def enter(self, phase: str, now: float, message: str = "") -> bool:
        """Record ``phase`` (once; phases only move forward). True when it is new."""
        self.message = message or self.message
        if phase == FAILED:
            if self.phase != FAILED:
                self.entries.append((FAILED, now))
                return True
            return False
        if self.phase in PHASES and PHASES.index(phase) <= PHASES.index(self.phase):
            return False
        self.entries.append((phase, now))
        return True

    def durations(self) -> dict[str, float]:
        """Seconds spent in each completed phase (until the next one began).

        The first phase counts from the trigger: a wake that waited for a node spent
        that time in ``WaitingForNode`` even before the pod existed.
        """
        out: dict[str, float] = {}
        for i in range(len(self.entries) - 1):
            phase, t = self.entries[i]
            start = self.started if i == 0 else t
            out[phase] = max(0.0, self.entries[i + 1][1] - start)
        return out

    def status(self) -> dict[str, Any]:
        last = self.entries[-1][1] if self.entries else self.started
        out: dict[str, Any] = {
            "startedTime": format_time(self.started),
            "phase": self.phase,
            "message": self.message,
            "seconds": round(max(0.0, last - self.started), 3),
            "timeline": [{"phase": p, "time": format_time(t)} for p, t in self.entries][:16],
        }
        return out

    @staticmethod
    def restore(raw: Any) -> Timeline | None:
        """A wake in progress from ``status.wake`` (an operator restart mid-wake)."""
        if not isinstance(raw, Mapping):
            return None
        started = parse_time(raw.get("startedTime"))
        if started is None:
            return None
        entries = []
        for item in raw.get("timeline") or []:
            if not isinstance(item, Mapping):
                continue
            t = parse_time(item.get("time"))
            phase = str(item.get("phase") or "")
            if t is not None and (phase in PHASES or phase == FAILED):
                entries.append((phase, t))
        return Timeline(started, entries, str(raw.get("message") or ""))


def node_failure(
    obs: Observation | None, timeline: Timeline, now: float, node_wait_timeout: float
) -> podstate.WakeFailure | None:
    """Why a wake waiting for a node cannot succeed, or None while it can."""
    if obs is None or obs.phase != WAITING_FOR_NODE:
        return None
    signal = obs.signal
    if signal is not None and signal.kind == NO_SCALE_UP:
        return podstate.WakeFailure(
            NOT_TRIGGER_SCALE_UP,
            f"{obs.message}. No node group can take the pod: check spec.pod.nodeSelector,"
            " tolerations and spec.resources against the GPU node pools and their limits",
            obs.pod,
        )
    since = timeline.entered(WAITING_FOR_NODE)
    if since is None:
        return None
    since = min(since, timeline.started)
    waited = now - since
    if signal is None and waited >= node_wait_timeout:
        return podstate.WakeFailure(
            NODE_WAIT_TIMEOUT,
            f"{obs.message}; waited {waited:.0f}s (spec.scaling.nodeWaitTimeout"
            f" {node_wait_timeout:g}s) and nothing says a node is coming: no node"
            " autoscaler Event (TriggeredScaleUp, Nominated) and no node able to take it",
            obs.pod,
        )
    return None


__all__ = [
    "FAILED",
    "FIRST_RESPONSE",
    "HISTOGRAM_PHASE",
    "NODE_WAIT_TIMEOUT",
    "NOT_TRIGGER_SCALE_UP",
    "PHASES",
    "PULLING_IMAGE",
    "READY",
    "STARTING_ENGINE",
    "WAITING_FOR_NODE",
    "WAITING_PHASES",
    "NodeSignal",
    "Observation",
    "Timeline",
    "node_failure",
    "node_signal",
    "observe",
    "pod_phase",
    "unscheduled",
]
