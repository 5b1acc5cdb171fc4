"""The autoscaler's decision: load and state in, desired replicas out. Pure, no I/O.

The live loop (``serviceloop.py``) and the replay simulator (``simulate.py``) both call
``decide`` so that what the simulator reports is what the operator does.

Rules (DESIGN.md sections 3.4 and 5):

- need = ceil((inFlight + queued) / targetConcurrency), summed over activators; the
  floor is max(minReplicas, open pre-warm windows); everything clamped to maxReplicas.
- Scale-up is immediate and jumps straight to what the backlog needs.
- A replica above one goes only after ``scaleDownDelay`` of lower demand: the new count
  is the highest recommendation seen during the last ``scaleDownDelay`` (a stabilisation
  window, as the HPA does), and the window starts when this state was created, so a
  restarted operator never scales down before it has watched a full window.
- The last replica goes only when nothing is queued, in flight or waking on any
  activator, no activator is unreadable, and ``idleTimeout`` has passed since the last
  request finished. Unknown last activity counts as "now".
- idleTimeout: auto with a pre-warm plan (idlepolicy.py): the idle timeout is the
  plan's short keep-alive, and from ``after`` to ``until`` seconds into the idle gap the
  floor is at least one replica (a predicted arrival), as if a pre-warm window were open.
- An activator whose stats cannot be read counts as busy: no scale-down of any kind.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from glowplug.api.spec import ScalingSpec
from glowplug.operator.idlepolicy import IdlePolicy, Plan


@dataclass(frozen=True)
class ActivatorLoad:
    """One activator's figures for one service (one entry of its ``/stats``)."""

    in_flight: int = 0
    queued: int = 0
    waking: bool = False
    last_request_finished: float | None = None
    first_response: float | None = None  # unix time of the first answer after its last wake


@dataclass(frozen=True)
class ServiceLoad:
    """A service's load summed over every activator."""

    in_flight: int = 0
    queued: int = 0
    waking: bool = False
    last_request_finished: float | None = None  # max over activators
    unreadable: int = 0  # activators whose stats could not be read
    first_response: float | None = None  # earliest first answer after a wake, any activator

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.queued > 0 or self.waking or self.unreadable > 0

    @staticmethod
    def combine(loads: Iterable[ActivatorLoad], unreadable: int = 0) -> ServiceLoad:
        in_flight = queued = 0
        waking = False
        last: float | None = None
        first: float | None = None
        for one in loads:
            if one.first_response is not None:
                first = one.first_response if first is None else min(first, one.first_response)
            in_flight += max(0, one.in_flight)
            queued += max(0, one.queued)
            waking = waking or one.waking
            if one.last_request_finished is not None:
                last = (
                    one.last_request_finished
                    if last is None
                    else max(last, one.last_request_finished)
                )
        return ServiceLoad(in_flight, queued, waking, last, unreadable, first)


@dataclass
class ScalerState:
    """What the autoscaler remembers about one service between ticks (in memory).

    ``last_activity`` is the latest moment the service was known to be in use: the end
    of its last request, or any tick at which it was busy. It is seeded from the
    persisted ``status.lastRequestTime``; None means unknown and is replaced by the
    first tick's ``now``.
    """

    last_activity: float | None = None
    # (time, recommendation) for the scale-down stabilisation window.
    history: deque[tuple[float, int]] = field(default_factory=deque)
    started: float | None = None  # first tick this state saw
    # idleTimeout: auto (idlepolicy.py): the learned gaps, seeded from status.idlePolicy,
    # and the measured wake duration (status.lastWakeSeconds) that prices a wake.
    idle: IdlePolicy = field(default_factory=IdlePolicy)
    wake_seconds: float = 0.0
    busy: bool = False  # busy at the previous tick
    learned: int = 0  # gaps recorded since the state was persisted


@dataclass(frozen=True)
class Decision:
    replicas: int  # desired spec.replicas
    reason: str
    recommendation: int  # the instantaneous recommendation (need and floor, clamped)
    last_activity: float  # to persist as status.lastRequestTime when it advanced
    idle_timeout: float  # the idle timeout in force (learned with idleTimeout: auto)
    # idleTimeout: auto: the plan in force, and when it next raises replicas on its own
    # (a predicted pre-warm still ahead; None: none), for a loop that sleeps at zero.
    plan: Plan | None = None
    prewarm_at: float | None = None
    # When this decision may next differ with the load unchanged (the idle deadline, the
    # scaleDownDelay window moving, a predicted pre-warm's edges); None: not before the
    # load or the spec changes. The loop that rests between events sleeps until then.
    next_at: float | None = None


def need(load: ServiceLoad, target_concurrency: int) -> int:
    """Replicas the current backlog needs, before any floor or cap."""
    demand = load.in_flight + load.queued
    replicas = math.ceil(demand / max(1, target_concurrency))
    if load.waking:
        replicas = max(replicas, 1)  # an activator holds requests for a wake
    return replicas


def decide(
    now: float,
    current: int,
    scaling: ScalingSpec,
    load: ServiceLoad,
    state: ScalerState,
    prewarm_floor: int = 0,
) -> Decision:
    """Desired replicas for one service at ``now``; updates ``state`` in place."""
    if state.started is None:
        state.started = now
        # The window starts full of "keep what runs now": no scale-down until a whole
        # scaleDownDelay has been observed by this process.
        state.history.append((now, current))
    if state.last_activity is None:
        state.last_activity = now
    before = state.last_activity
    if load.busy:
        state.last_activity = now
    elif load.last_request_finished is not None:
        state.last_activity = max(state.last_activity, load.last_request_finished)
    idle_timeout = scaling.idle_timeout
    auto = scaling.auto_idle
    if auto is not None:
        # A request after a quiet spell ends an idle gap: learn it (tick-accurate).
        ended = not state.busy and state.last_activity > before
        if ended and state.idle.observe(state.last_activity - before, now, auto):
            state.learned += 1
        plan = state.idle.plan(auto, state.wake_seconds, now)
        idle_timeout = plan.keep_alive
    else:
        plan = None
    state.busy = load.busy

    predicted = 0
    prewarm_at: float | None = None
    if plan is not None and plan.after is not None and not load.busy:
        # In absolute time: the moment decide() reported as prewarm_at is the one it acts on.
        predicted = plan.floor_at(state.last_activity, now)
        if now < state.last_activity + plan.after:
            prewarm_at = state.last_activity + plan.after
    floor = max(scaling.min_replicas, prewarm_floor, predicted)
    rec = min(scaling.max_replicas, max(need(load, scaling.target_concurrency), floor))
    if load.unreadable:
        rec = max(rec, min(current, scaling.max_replicas))

    history = state.history
    history.append((now, rec))
    # Keep the newest entry at or before the window's start: it was in force then.
    horizon = now - scaling.scale_down_delay
    while len(history) > 1 and history[1][0] <= horizon:
        history.popleft()
    stable = max(r for _, r in history)

    idle_for = now - state.last_activity
    idle = not load.busy and idle_for >= idle_timeout

    last = state.last_activity
    edges: list[float] = []
    if len(history) > 1 and stable > rec:
        edges.append(history[1][0] + scaling.scale_down_delay)  # the window's max may drop
    if current >= 1 and not load.busy:
        edges.append(last + idle_timeout)  # the last replica's idle deadline
    if prewarm_at is not None:
        edges.append(prewarm_at)
    if plan is not None and plan.until is not None and predicted and not load.busy:
        edges.append(last + plan.until)  # the predicted pre-warm ends
    ahead = [t for t in edges if t > now]
    next_at = min(ahead) if ahead else None

    def out(replicas: int, reason: str) -> Decision:
        return Decision(replicas, reason, rec, last, idle_timeout, plan, prewarm_at, next_at)

    if rec > current:
        if rec > floor:
            return out(rec, "scale up: backlog")
        by_prediction = predicted > max(scaling.min_replicas, prewarm_floor)
        return out(rec, "scale up: predicted arrival" if by_prediction else "scale up: floor")
    if current > scaling.max_replicas:
        # maxReplicas lowered: obey at once, keep at least what is needed.
        return out(scaling.max_replicas, "above maxReplicas")
    target = min(current, max(stable, 1)) if current >= 1 else 0
    if target == 1 and rec == 0 and stable <= 1:
        target = 0 if idle else 1
    if target < current:
        return out(target, "scale to zero: idle" if target == 0 else "scale down: demand lower")
    return out(current, "steady")
