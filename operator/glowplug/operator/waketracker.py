"""One service's wake, followed through its phases (``wakephases``) by the operator's loop.

``ServiceLoop`` (``scaling.py``) calls ``track`` every tick while replicas are wanted:
it keeps ``status.wake`` (the timeline of the wake in progress), the Waking condition's
reason and message (through the ``__waking__`` key of the status patch), one Normal
Event per phase, the node failure when the wait cannot end well (``NotTriggerScaleUp``,
``NodeWaitTimeout``), ``status.lastWake`` and the per-phase histogram when it ends.
Kept apart from the loop so that the loop can change how it is driven (events instead
of ticks) without touching what a wake means.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from glowplug.api.spec import EmbeddingService
from glowplug.kube.podstate import WakeFailure
from glowplug.operator import wakephases
from glowplug.operator.wakephases import Timeline

log = logging.getLogger(__name__)

# After the first ready pod, how long to wait for the activators to report the first
# response of the wake (the FirstResponse phase) before closing the timeline without it.
FIRST_RESPONSE_WAIT = 120.0


class WakeAPI(Protocol):
    def info(self, body: Mapping[str, Any], reason: str, message: str) -> None: ...

    async def list_pod_events(
        self, namespace: str, pods: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]: ...


def _key(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


class WakeTracker:
    def __init__(self) -> None:
        self.timeline: Timeline | None = None  # the wake in progress (or awaiting its
        self.timeline_ready: float | None = None  # first response after this ready time)
        self.written_wake: tuple[str, str] | None = None  # (phase, message) in status
        self.node_fail: WakeFailure | None = None  # NotTriggerScaleUp / NodeWaitTimeout

    @property
    def waiting(self) -> bool:
        """A wake is in progress (not ready, not failed): never scale it away."""
        return self.timeline is not None and not self.timeline.outcome

    async def track(
        self,
        api: WakeAPI,
        series: Any,
        wake_start: float | None,
        now: float,
        body: Mapping[str, Any],
        svc: EmbeddingService | None,
        status: Mapping[str, Any],
        spec_replicas: int,
        ready: int,
        pods: list[dict[str, Any]],
        failure: WakeFailure | None,
        patch: dict[str, Any],
    ) -> WakeFailure | None:
        """Follow the wake through its phases (wakephases): status.wake, the Waking
        condition, an Event per phase; the node failure when the wait cannot end well."""
        tl = self.timeline
        if spec_replicas == 0:
            if tl is not None and not tl.outcome:
                patch["wake"] = None  # abandoned: scaled back to zero before ready
            self.timeline, self.written_wake, self.node_fail = None, None, None
            return None
        if tl is None:
            start = wake_start
            restored = Timeline.restore(status.get("wake"))
            if restored is not None and (start is None or abs(restored.started - start) < 2.0):
                tl = restored  # the operator restarted during this wake
                self.written_wake = (tl.phase, tl.message)
            elif start is not None and ready == 0:
                tl = Timeline(start)
            else:
                return None
            self.timeline = tl
        if tl.outcome:
            # Over (Ready: awaiting the first response; or Failed). A node failure holds
            # while the pod still has no node; once it gets one the failure clears.
            if self.node_fail is not None and wakephases.unscheduled(pods) and ready == 0:
                return self.node_fail
            return None
        if ready > 0:
            obs: wakephases.Observation | None = wakephases.Observation(
                wakephases.READY, f"{ready} pod(s) ready", ""
            )
        else:
            waiting = wakephases.unscheduled(pods)
            events = (
                await api.list_pod_events(
                    str((body.get("metadata") or {}).get("namespace")), waiting
                )
                if waiting
                else {}
            )
            obs = wakephases.observe(pods, events)
        if obs is None:
            return None  # no pod yet: the Deployment is creating it
        if tl.enter(obs.phase, now, obs.message):
            log.info("%s: wake phase %s: %s", _key(body), obs.phase, obs.message)
            api.info(body, obs.phase, obs.message)
        if obs.phase == wakephases.READY:
            tl.outcome = wakephases.READY
            self.timeline_ready = now
            self._observe_phases(series, tl)
            patch["wake"] = None
            patch["lastWake"] = tl.status()
            self.written_wake = None
            return None
        if self.written_wake != (tl.phase, tl.message):
            patch["wake"] = tl.status()
            patch["__waking__"] = (tl.phase, tl.message)
            self.written_wake = (tl.phase, tl.message)
        if failure is not None or svc is None:
            return None
        return wakephases.node_failure(obs, tl, now, svc.scaling.node_wait_timeout)

    def end_failed(
        self,
        series: Any,
        wake_start: float | None,
        now: float,
        failure: WakeFailure | None,
        patch: dict[str, Any],
    ) -> None:
        """A wake failure was just reported: close the wake's timeline as Failed."""
        if "__failed__" not in patch:
            return
        if series is not None and wake_start is not None:
            series.wake("failed")
        tl = self.timeline
        if failure is not None and failure.reason in (
            wakephases.NOT_TRIGGER_SCALE_UP,
            wakephases.NODE_WAIT_TIMEOUT,
        ):
            self.node_fail = failure
        if tl is None or tl.outcome or failure is None:
            return
        tl.enter(wakephases.FAILED, now, f"{failure.reason}: {failure.message}")
        tl.outcome = wakephases.FAILED
        patch["wake"] = None
        patch["lastWake"] = tl.status()
        patch.pop("__waking__", None)
        self.written_wake = None

    def _observe_phases(self, series: Any, tl: Timeline) -> None:
        if series is None:
            return
        for phase, seconds in tl.durations().items():
            label = wakephases.HISTOGRAM_PHASE.get(phase)
            if label is not None:
                series.phase(label, seconds)

    def first_response(
        self, series: Any, now: float, first: float | None, patch: dict[str, Any]
    ) -> None:
        """Close a ready wake's timeline at the activators' first response after it."""
        tl, ready_at = self.timeline, self.timeline_ready
        if tl is None or tl.outcome != wakephases.READY or ready_at is None:
            return
        if first is not None and first >= tl.started:
            ready_entered = tl.entered(wakephases.READY) or ready_at
            at = max(first, ready_entered)
            tl.entries.append((wakephases.FIRST_RESPONSE, at))
            tl.outcome = wakephases.FIRST_RESPONSE
            tl.message = "the first held request was answered"
            if series is not None:
                series.phase("first_response", at - ready_entered)
            patch["lastWake"] = tl.status()
            self.timeline = None
        elif now - ready_at > FIRST_RESPONSE_WAIT:
            self.timeline = None  # no request waited for this wake (a pre-warm, a scale)
