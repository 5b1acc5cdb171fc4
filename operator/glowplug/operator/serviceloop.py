"""One EmbeddingService's loop: the GPU-hour ledger, wake failures and phases, autoscaling.

Each tick (``daemon.py`` runs it about once a second, or rests it while nothing happens):

1. reads the service's pods (label ``glowplug.dev/service``, from the shared pod
   informer) and feeds the GPU-hour ledger (restored from kopf's body, checked against
   the API before the first checkpoint), checkpointing it into status every
   ``--ledger-checkpoint`` seconds while GPUs are held and at once whenever the set of
   pods holding GPUs changes (an idle service reads and writes nothing);
2. turns pods that cannot become ready into the ``Failed`` condition and a Warning
   Event, measures each wake (replicas raised from zero to the first ready pod) and
   follows it through its phases (``waketracker``: status.wake, Events, node failures);
3. reads every activator's ``/stats`` (one shared snapshot for all services) and
   applies ``autoscaler.decide``; each change of ``spec.replicas`` is a compare-and-swap
   write through the scale subresource;
4. splits the tick's GPU-seconds by API key (``attribution.py``, from the activators'
   ``computedInputs``) into ``glowplug_gpu_seconds_attributed_total``.

After the tick, ``next_due`` says when the loop next needs to run if no event comes
(a unix time, or None: not before an event), from the timers the tick found pending:
the next ledger checkpoint while GPUs are held, the autoscaler's idle deadline,
scaleDownDelay window and predicted pre-warm edges (``Decision.next_at``), the next
minute while pre-warm windows are set, a wake's poll of pod Events while its pods wait
for a node or a volume, the end of the wait for a wake's first response, and the next
tick while load is in flight or a write must be retried. ``daemon.py`` hands it to the
one scheduler (``timers.Timers``) that owns every service's timers. ``at_rest`` says the
service is at zero with nothing going on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from glowplug.api.spec import EmbeddingService, SpecError, parse
from glowplug.kube.outage import Outage, is_unreachable
from glowplug.kube.podstate import WakeFailure, creating, is_ready, service_failure
from glowplug.kube.timefmt import format_time, parse_time
from glowplug.operator import conditions as cond
from glowplug.operator import prewarm, wakephases
from glowplug.operator.activity import LoadSource
from glowplug.operator.attribution import Attribution, Reading
from glowplug.operator.autoscaler import Decision, ScalerState, ServiceLoad, decide
from glowplug.operator.idlepolicy import IdlePolicy
from glowplug.operator.ledger import Ledger, PodHold, Rates, spec_baseline_gpus, written_rates
from glowplug.operator.serviceapi import ServiceAPI
from glowplug.operator.waketracker import FIRST_RESPONSE_WAIT, WakeTracker

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
LAST_REQUEST_PERSIST_EVERY = 5.0  # while busy, persist lastRequestTime this often
# Pre-warm windows open and close on cron minutes: a service with windows runs just
# after each minute starts (the minute's floor is then in force).
MINUTE_SLACK = 0.2


@dataclass
class Options:
    activator_urls: Sequence[str] = ()
    activator_service: str = ""  # "namespace/name"
    interval: float = 1.0
    checkpoint_every: float = 10.0
    stats_timeout: float = 1.0
    namespaces: Sequence[str] = ()  # --namespace (globs allowed); empty: all namespaces


# --- one service's loop --------------------------------------------------------------------


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """GPUs a pod holds: its containers' nvidia.com/gpu limits (init containers run first)."""
    spec = pod.get("spec") or {}

    def gpus(container: Mapping[str, Any]) -> int:
        limits = (container.get("resources") or {}).get("limits") or {}
        try:
            return int(str(limits.get(GPU_RESOURCE, 0)))
        except ValueError:
            return 0

    main = sum(gpus(c) for c in spec.get("containers") or [])
    init = max((gpus(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def pod_hold(pod: Mapping[str, Any]) -> PodHold | None:
    """The pod's GPU hold if it is bound to a node, else None."""
    meta = pod.get("metadata") or {}
    if not (pod.get("spec") or {}).get("nodeName"):
        return None
    bound = None
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "True":
            bound = parse_time(c.get("lastTransitionTime"))
    if bound is None:
        bound = parse_time(meta.get("creationTimestamp"))
    if bound is None:
        return None
    return PodHold(uid=str(meta.get("uid")), bound_at=bound, gpus=pod_gpus(pod))


def spec_fingerprint(body: Mapping[str, Any]) -> str:
    """The spec without ``replicas``: what, when it changes, makes new pods differ.

    A change of ``spec.replicas`` alone (every wake, every scale) bumps
    ``metadata.generation`` too, but the pods it creates are the same spec's pods.
    """
    import json

    spec = dict(body.get("spec") or {})
    spec.pop("replicas", None)
    return json.dumps(spec, sort_keys=True, default=str)


def _raw_int(obj: Mapping[str, Any], *path: str, default: int) -> int:
    value: Any = obj
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


class ServiceLoop:
    """Everything the operator does each tick for one EmbeddingService."""

    def __init__(
        self,
        api: ServiceAPI,
        reader: LoadSource | None,
        options: Options,
        clock: Callable[[], float] = time.time,
        outage: Outage | None = None,
    ) -> None:
        self.api = api
        self.outage = outage or Outage(log)
        self.reader = reader
        self.options = options
        self.clock = clock
        self.scaler: ScalerState | None = None
        self.ledger: Ledger | None = None
        self.series: Any = None  # servicemetrics.ServiceSeries, created lazily
        self.last_checkpoint = 0.0
        # The checkpoint the ledger was restored from (kopf's body), until the first
        # write checked it against the API; None once checked.
        self.restored_from: tuple[Any, ...] | None = None
        self.last_pods: frozenset[str] = frozenset()
        self.last_rates: Rates | None = None  # the rates status states (ledger.py)
        self.persisted_activity: float | None = None
        self.prev_replicas: int | None = None
        self.wake_start: float | None = None
        self.generation: int | None = None
        self.fingerprint: str | None = None
        self.last_tick: float | None = None
        self.spec_changed_at: float | None = None
        self.wake = WakeTracker()  # the wake's phases, timeline and node failures
        self.reported: str | None = None  # the wake-failure reason in status, if ours
        self.clear_pending = False  # the spec changed while a wake failure was reported
        # At rest: at zero, no pod, no wake, no load. The daemon then sleeps until an
        # event (its pods, its object, its load) or the next pre-warm edge.
        self.at_rest = False
        self.tick_failed = False
        self.load: ServiceLoad | None = None  # the last load read (None: not read)
        self.prewarm = False  # the spec has pre-warm windows
        self.prewarm_at: float | None = None  # idleTimeout: auto's next predicted pre-warm
        self.attribution = Attribution()  # GPU-seconds by API key (attribution.py)
        self.readings: list[Reading] = []  # this tick's computedInputs from /stats
        # When the loop next needs to run with no event (unix time; None: only on an
        # event), and what this tick found pending towards it.
        self.next_due: float | None = None
        self.retry = False  # a write of this tick failed: try again next interval
        self.decision_at: float | None = None  # the autoscaler's Decision.next_at
        self.scaling = False  # the autoscaler wanted another replica count
        self.auto_idle = False  # idleTimeout: auto (its plan follows the hour)

    async def tick(self, body: Mapping[str, Any]) -> None:
        self.tick_failed = False  # an API call of this tick failed (logged as an outage)
        self.retry = False
        self.decision_at = None
        self.scaling = False
        now = self.clock()
        meta = body.get("metadata") or {}
        status = dict(body.get("status") or {})
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        try:
            svc: EmbeddingService | None = parse(body)
        except SpecError:
            svc = None
        if svc is not None:
            if self.series is not None and self.series.gpu_type != svc.resources.gpu_label:
                self.series.remove()  # gpuType changed: the old series end here
                self.series = None
            if self.series is None:
                self.series = _series(svc, self.clock)
            self.series.price(svc.cost.gpu_hourly_price)
        spec_replicas = _raw_int(body, "spec", "replicas", default=0)
        generation = _raw_int(body, "metadata", "generation", default=0)
        fingerprint = spec_fingerprint(body)
        if self.generation is None:
            self.generation = generation
            self.fingerprint = fingerprint
            failed = cond.get_condition(status.get("conditions") or [], cond.FAILED)
            if (
                failed
                and failed.get("status") == "True"
                and failed.get("reason") in cond.WAKE_REASONS
            ):
                self.reported = str(failed.get("reason"))
        elif fingerprint != self.fingerprint:
            self.generation = generation
            self.fingerprint = fingerprint
            # The change happened after the last tick that saw the old spec; pods carry
            # whole-second creationTimestamps, so compare with that second. (A change of
            # replicas alone is no new spec: podstate, "why Unschedulable never
            # reached status".)
            seen = self.last_tick if self.last_tick is not None else now
            self.spec_changed_at = float(math.floor(seen))
            if self.reported is not None:
                # A new spec: its pods may fail differently or not at all; say so afresh.
                self.reported = None
                self.clear_pending = True
        else:
            self.generation = generation
        self.last_tick = now
        pods = await self.api.list_pods(namespace, name)
        patch: dict[str, Any] = {}

        # 1. the ledger
        if self.ledger is None:
            # From the body kopf hands over (its watch cache: no request). It may lag a
            # checkpoint another replica wrote just before a failover; the first write
            # checks that first (``_verify_restore``), so an idle service reads nothing.
            self.ledger = _restore(body, now)
            self.restored_from = _checkpoint_fields(body)
            self.last_checkpoint = now
            self.last_rates = written_rates(body)
        holds = [h for h in (pod_hold(p) for p in pods) if h is not None]
        baseline = spec_baseline_gpus(body)
        delta = self.ledger.advance(now, holds, baseline)
        if self.series is not None:
            self.series.accrue(delta, self.ledger.as_of, self.ledger.rates)
        pod_set = frozenset(h.uid for h in holds)
        # While GPUs are held the totals move: checkpoint every checkpoint_every. With no
        # pod, only the baseline moves, and a restart recomputes it from ledgerTime: an
        # idle service writes nothing (DESIGN.md invariant 6). A checkpoint states the
        # rates it grows at from then on, so a change of rates (a pod, a spec edit of the
        # baseline) is due at once: status + rate x elapsed stays exact at zero.
        due = bool(holds) and now - self.last_checkpoint >= self.options.checkpoint_every
        moved = pod_set != self.last_pods or self.ledger.rates != self.last_rates
        # Never twice at one instant; right after a restore, status holds a checkpoint.
        if (moved or due) and now > self.last_checkpoint:
            try:
                if self.restored_from is not None:
                    await self._verify_restore(namespace, name, body, now, holds, baseline)
                await self.api.write_ledger(namespace, name, self.ledger.checkpoint())
            except Exception as err:  # kept in memory; the next checkpoint catches up
                self.retry = True
                if is_unreachable(err):
                    self.outage.failed(err, f"{namespace}/{name}")
                    self.tick_failed = True
                else:
                    log.warning("%s/%s: ledger checkpoint failed: %s", namespace, name, err)
            else:
                self.last_pods = pod_set
                self.last_rates = self.ledger.rates
                self.last_checkpoint = now
        elif moved:
            self.retry = True  # the rates changed at the restore's instant: next interval

        # 2. wake failures and wake duration
        ready = sum(1 for p in pods if is_ready(p))
        # Pods created before the last spec change carry the old spec's failure.
        # A pod waiting in ContainerCreating: its Events may say FailedMount.
        mounting = [p["metadata"]["name"] for p in pods if creating(p) and not is_ready(p)]
        events = (
            [ev for evs in (await self.api.list_pod_events(namespace, mounting)).values()
             for ev in evs]
            if mounting
            else []
        )  # fmt: skip
        failure = service_failure(pods, since=self.spec_changed_at, events=events)
        self._wake(now, status, spec_replicas, ready, patch)
        node_failure = await self.wake.track(
            self.api,
            self.series,
            self.wake_start,
            now,
            body,
            svc,
            status,
            spec_replicas,
            ready,
            pods,
            failure,
            patch,
        )
        failure_patch = self._failure(failure or node_failure, body)
        if failure_patch:
            patch.update(failure_patch)
            self.wake.end_failed(self.series, self.wake_start, now, failure or node_failure, patch)

        # 3. the autoscaler
        self.readings = []
        if svc is not None and svc.scaling.autoscale and self.reader is not None:
            await self._autoscale(now, svc, status, spec_replicas, patch)
        self.prev_replicas = spec_replicas
        # 4. this tick's GPU-seconds split by API key
        attributed = self.attribution.advance(delta.gpu_seconds, self.readings, bool(holds))
        if attributed and self.series is not None:
            self.series.attribute(attributed)

        if patch:
            await self._write_status(namespace, name, patch, spec_replicas, ready, body)
        self.prewarm = bool(svc is not None and svc.scaling.prewarm)
        self.auto_idle = bool(svc is not None and svc.scaling.auto_idle is not None)
        self.at_rest = self._resting(spec_replicas, pods)
        self.next_due = self._next_due(now, spec_replicas, bool(holds), pods, mounting)

    async def _verify_restore(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        now: float,
        holds: Sequence[PodHold],
        baseline: float,
    ) -> None:
        """Before the first checkpoint: continue from the latest one in the API.

        The ledger was restored from kopf's cached body; a checkpoint written after that
        body (by the replica this one took over from) must not be overwritten with older
        totals. One read per service that writes a checkpoint at all, spread by the rate
        gate at a start-up; the Prometheus counters already counted the interval.
        """
        fresh = await self.api.read_object(namespace, name)
        restored, self.restored_from = self.restored_from, None
        if fresh is None or _checkpoint_fields(fresh) == restored:
            return
        log.info("%s/%s: a newer ledger checkpoint in status: continuing from it", namespace, name)
        self.ledger = _restore(fresh, now)
        self.last_rates = written_rates(fresh)
        self.ledger.advance(now, holds, baseline)

    def _resting(self, spec_replicas: int, pods: Sequence[Mapping[str, Any]]) -> bool:
        load = self.load
        return (
            spec_replicas == 0
            and not pods
            and self.wake.timeline is None
            and self.wake_start is None
            and not self.clear_pending
            and (load is None or not (load.in_flight or load.queued or load.waking))
        )

    def _next_due(
        self,
        now: float,
        spec_replicas: int,
        holding: bool,
        pods: Sequence[Mapping[str, Any]],
        mounting: Sequence[str],
    ) -> float | None:
        """When this loop next needs to run if no event comes (see the module docstring).

        What an event brings is left to it: pods becoming ready, failing or going (the
        pod informer), a scale write landing (the object's event), a request starting or
        ending (the activators' changes).
        """
        soon = now + self.options.interval
        if self.retry or self.tick_failed or self.clear_pending or self.scaling:
            return soon  # a write to retry, or a change to see through
        load = self.load
        if load is not None and (
            load.in_flight or load.queued or load.waking or (load.unreadable and spec_replicas)
        ):
            # Load in flight: each tick marks the service used (lastRequestTime, the idle
            # gap's end). An unreadable activator counts as busy for a service with
            # replicas (it must not go idle in the dark); at zero it changes nothing.
            return soon
        due: list[float] = []
        if holding:
            due.append(max(soon, self.last_checkpoint + self.options.checkpoint_every))
        if mounting:
            due.append(soon)  # its Events may say FailedMount: no pod change says so
        if self.wake.waiting and wakephases.unscheduled(pods):
            # Waiting for a node: the node autoscaler's Events and nodeWaitTimeout.
            due.append(soon)
        ready_at = self.wake.timeline_ready
        if self.wake.timeline is not None and ready_at is not None:
            due.append(max(soon, ready_at + FIRST_RESPONSE_WAIT + MINUTE_SLACK))
        if self.decision_at is not None:
            due.append(max(now + 0.05, self.decision_at))
        if self.prewarm:
            due.append(now + 60.0 - now % 60.0 + MINUTE_SLACK)
        if self.prewarm_at is not None and self.prewarm_at > now:
            due.append(self.prewarm_at)
        if self.auto_idle:
            due.append(now + 3600.0 - now % 3600.0 + MINUTE_SLACK)  # the plan is per hour
        return min(due) if due else None

    def rest_seconds(self, now: float) -> float | None:
        """Seconds from ``now`` to ``next_due`` (None: only an event runs the loop)."""
        if self.next_due is None:
            return None
        return max(0.0, self.next_due - now)

    def _failure(self, failure: WakeFailure | None, body: Mapping[str, Any]) -> dict[str, Any]:
        if failure is not None and failure.reason != self.reported:
            self.reported = failure.reason
            self.clear_pending = False
            log.warning("%s: wake failure %s: %s", _key(body), failure.reason, failure.message)
            self.api.warn(body, failure.reason, failure.message)
            return {"__failed__": failure}
        if failure is None and (self.reported is not None or self.clear_pending):
            # A ready pod, no failing pod any more, or a new spec: the failure is over.
            self.reported = None
            self.clear_pending = False
            return {"__clear_failed__": True}
        return {}

    def _wake(
        self,
        now: float,
        status: Mapping[str, Any],
        spec_replicas: int,
        ready: int,
        patch: dict[str, Any],
    ) -> None:
        stamped = parse_time(status.get("wakeStartedTime"))
        if spec_replicas == 0:
            self.wake_start = None  # abandoned (scaled back to zero before ready)
            return
        if self.wake_start is None and ready == 0:
            if stamped is not None:
                self.wake_start = stamped
            elif self.prev_replicas == 0:
                self.wake_start = now  # we saw replicas leave zero
            if self.wake_start is not None and self.series is not None:
                self.series.wake_began()
        if self.wake_start is None:
            if stamped is not None and ready > 0:
                patch["wakeStartedTime"] = None  # stale stamp: clear it
            return
        if ready > 0:
            seconds = max(0.0, now - self.wake_start)
            patch["lastWakeSeconds"] = round(seconds, 3)
            patch["wakeStartedTime"] = None
            if self.series is not None:
                self.series.wake("ready", seconds)
            log.info("wake took %.1f s", seconds)
            self.wake_start = None

    async def _autoscale(
        self,
        now: float,
        svc: EmbeddingService,
        status: Mapping[str, Any],
        spec_replicas: int,
        patch: dict[str, Any],
    ) -> None:
        assert self.reader is not None
        snapshot = await self.reader.snapshot()
        load = snapshot.load(svc.namespace, svc.name)
        self.load = load
        self.readings = list(snapshot.computed.get(f"{svc.namespace}/{svc.name}", ()))
        self.wake.first_response(self.series, now, load.first_response, patch)
        if self.scaler is None:
            self.persisted_activity = parse_time(status.get("lastRequestTime"))
            self.scaler = ScalerState(last_activity=self.persisted_activity)
            # idleTimeout: auto resumes from what it learned before a restart.
            self.scaler.idle = IdlePolicy.from_status(status.get("idlePolicy"))
        self.scaler.wake_seconds = _float(status.get("lastWakeSeconds"))
        floor = prewarm.floor(svc.scaling.prewarm, now)
        decision = decide(now, spec_replicas, svc.scaling, load, self.scaler, floor)
        self._persist_idle_policy(svc, status, decision, patch)
        self.prewarm_at = decision.prewarm_at
        self.decision_at = decision.next_at
        activity = decision.last_activity
        persisted = self.persisted_activity
        # Busy only because an activator cannot be read is no use of the service: kept in
        # memory (no scale-down on a guess) but not persisted, or one unreadable activator
        # would make every service write every few seconds.
        used = load.in_flight > 0 or load.queued > 0 or load.waking
        if persisted is None or (
            activity > persisted
            and (not load.busy or (used and activity - persisted >= LAST_REQUEST_PERSIST_EVERY))
        ):
            patch["lastRequestTime"] = format_time(activity)
            self.persisted_activity = activity
        if decision.replicas == spec_replicas:
            return
        self.scaling = True  # run again soon: the write lands, is refused or waits
        if decision.replicas == 0 and self.wake.waiting:
            return  # a pending wake is never scaled away inside its wait (issue 11)
        if decision.replicas == 0:
            # Re-read every activator right before the last replica goes: a request that
            # arrived since the snapshot keeps it (the wake race's window shrinks to ms).
            fresh = await self.reader.refresh()
            if fresh.load(svc.namespace, svc.name).busy:
                return
        current = await self.api.read_scale(svc.namespace, svc.name)
        if current is None or current[0] != spec_replicas:
            return  # someone else changed it since we looked: decide again next tick
        if await self.api.write_scale(svc.namespace, svc.name, decision.replicas, current[1]):
            log.info(
                "%s/%s: replicas %d -> %d (%s)",
                svc.namespace,
                svc.name,
                spec_replicas,
                decision.replicas,
                decision.reason,
            )
            if spec_replicas == 0:
                self.wake_start = now
                patch["wakeStartedTime"] = format_time(now)

    def _persist_idle_policy(
        self,
        svc: EmbeddingService,
        status: Mapping[str, Any],
        decision: Decision,
        patch: dict[str, Any],
    ) -> None:
        """Write status.idlePolicy when auto learned a gap or its plan changed."""
        state = self.scaler
        if state is None or svc.scaling.auto_idle is None:
            return
        stored = status.get("idlePolicy")
        doc = state.idle.to_status(decision.idle_timeout, decision.plan)
        old = (
            (stored.get("idleTimeoutSeconds"), stored.get("prewarm"))
            if isinstance(stored, Mapping)
            else None
        )
        if state.learned or old != (doc["idleTimeoutSeconds"], doc["prewarm"]):
            patch["idlePolicy"] = doc
            state.learned = 0

    async def _write_status(
        self,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        spec_replicas: int,
        ready: int,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        failed: WakeFailure | None = patch.pop("__failed__", None)
        clear = bool(patch.pop("__clear_failed__", False))
        waking: tuple[str, str] | None = patch.pop("__waking__", None)
        generation = self.generation

        def mutate(current: Mapping[str, Any]) -> dict[str, Any] | None:
            out = dict(patch)
            st = current.get("status") or {}
            if waking is not None and failed is None:
                old = list(out.get("conditions") or st.get("conditions") or [])
                new = cond.set_condition(
                    old, cond.WAKING, True, waking[0], waking[1], observed_generation=generation
                )
                if new != old:
                    out["conditions"] = new
            if failed is not None or clear:
                old = list(out.get("conditions") or st.get("conditions") or [])
                if failed is not None:
                    new = cond.set_condition(
                        old,
                        cond.FAILED,
                        True,
                        failed.reason,
                        failed.message,
                        observed_generation=generation,
                    )
                else:
                    new = cond.clear_failed(old, cond.WAKE_REASONS)
                if new != old:
                    out["conditions"] = new
                    replicas = _raw_int(current, "spec", "replicas", default=spec_replicas)
                    out["phase"] = cond.phase(new, replicas, ready)
            return out or None

        try:
            # Against kopf's body (its live watch view): a read only on a conflict.
            await self.api.update_status(namespace, name, mutate, body)
        except Exception as err:  # next tick writes again; the ledger stays in memory
            self.retry = True
            if is_unreachable(err):
                self.outage.failed(err, f"{namespace}/{name}")
                self.tick_failed = True
            else:
                log.warning("%s/%s: status write failed: %s", namespace, name, err)
            if failed is not None:
                self.reported = None  # report it again next tick
            if "lastRequestTime" in patch:
                self.persisted_activity = None  # not persisted: write it again next tick
            self.wake.written_wake = None  # and the wake's status


_CHECKPOINT = ("gpuSeconds", "baselineGpuSeconds", "ledgerTime")


def _checkpoint_fields(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    status = obj.get("status") or {}
    return tuple(status.get(k) for k in _CHECKPOINT)


def _restore(obj: Mapping[str, Any], now: float) -> Ledger:
    created = parse_time((obj.get("metadata") or {}).get("creationTimestamp")) or now
    return Ledger.restore(obj.get("status"), created, now)


def _float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return 0.0


def _key(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _series(svc: EmbeddingService, clock: Callable[[], float]) -> Any:
    from glowplug.operator.servicemetrics import ServiceSeries

    return ServiceSeries(svc, clock)


__all__ = [
    "Options",
    "ServiceLoop",
    "pod_gpus",
    "pod_hold",
    "spec_fingerprint",
]
