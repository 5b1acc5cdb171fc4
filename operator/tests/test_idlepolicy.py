"""The learned idle timeout: the policy's choice, its persistence, and decide() with
idleTimeout: auto (the code the operator and the simulator share)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from glowplug.api import SpecError, parse
from glowplug.api.spec import AutoIdle, ScalingSpec
from glowplug.operator.autoscaler import ScalerState, ServiceLoad, decide
from glowplug.operator.idlepolicy import (
    EDGES,
    MIN_GAPS,
    PREWARM_MIN_GAPS,
    IdlePolicy,
    Plan,
    _bin,
    choose,
    keep_alive_cost,
    prewarm_cost,
)
from glowplug.operator.simulate import SimConfig, simulate

# Keep-alive only: the tests of the pre-warm plan are further down (PREWARM).
BOUNDS = AutoIdle(min=30.0, max=600.0, wake_penalty=300.0, prewarm=False)
PREWARM = replace(BOUNDS, prewarm=True)


def raw(**scaling: object) -> dict[str, object]:
    return {
        "metadata": {"name": "s", "namespace": "n"},
        "spec": {"model": {"id": "m", "source": {"huggingFace": {}}}, "scaling": scaling},
    }


def test_spec_auto_and_its_bounds() -> None:
    s = parse(raw(idleTimeout="auto")).scaling
    assert s.auto_idle == AutoIdle(min=30.0, max=600.0, wake_penalty=300.0)
    assert s.idle_timeout == 600.0  # the upper bound stands in where one number is needed
    s = parse(raw(idleTimeout="auto", autoIdleTimeout={"min": "1m", "max": "2h"})).scaling
    assert s.auto_idle is not None and (s.auto_idle.min, s.auto_idle.max) == (60.0, 7200.0)
    assert parse(raw(idleTimeout="5m")).scaling.auto_idle is None
    with pytest.raises(SpecError) as err:
        parse(raw(idleTimeout="auto", autoIdleTimeout={"min": "20m", "max": "10m"}))
    assert err.value.errors == [
        "spec.scaling.autoIdleTimeout.min: must be <= spec.scaling.autoIdleTimeout.max"
    ]
    with pytest.raises(SpecError):
        parse(raw(idleTimeout="automatic"))


def test_bins_cover_the_range() -> None:
    assert _bin(1.0) == 0 and _bin(EDGES[0]) == 0
    for i in (1, 10, 40):
        assert _bin(EDGES[i]) == i and _bin(EDGES[i] * 1.01) == i + 1
    assert _bin(10 * 86400.0) == len(EDGES) - 1


def test_ski_rental_until_enough_gaps() -> None:
    p = IdlePolicy()
    assert p.timeout(BOUNDS, 30.0, 0.0) == 330.0  # wake GPU time + penalty, clamped
    assert p.timeout(replace(BOUNDS, max=120.0), 30.0, 0.0) == 120.0
    assert not p.observe(10.0, 100.0, BOUNDS)  # shorter than min: cannot matter
    assert p.gaps == 0


def test_short_gaps_keep_it_long_long_gaps_make_it_short() -> None:
    busy = IdlePolicy()
    for i in range(20):
        busy.observe(90.0 + i, 1000.0 + 100 * i, BOUNDS)
    assert busy.timeout(BOUNDS, 30.0, 3000.0) >= 110.0  # stays up across the usual gaps
    quiet = IdlePolicy()
    for i in range(20):
        quiet.observe(3 * 3600.0, 1000.0 + 4 * 3600 * i, BOUNDS)
    assert quiet.timeout(BOUNDS, 30.0, 90000.0) == BOUNDS.min  # waiting never pays
    # A higher price per wake waits longer over the same gaps.
    mixed = IdlePolicy()
    for i, gap in enumerate([40.0, 200.0, 400.0, 500.0, 3600.0] * 4):
        mixed.observe(gap, 10000.0 + 10 * i, BOUNDS)
    cheap = mixed.timeout(replace(BOUNDS, wake_penalty=10.0), 5.0, 10300.0)
    dear = mixed.timeout(replace(BOUNDS, wake_penalty=3000.0), 5.0, 10300.0)
    assert cheap < dear


def test_the_hour_of_day_profile_carries_to_the_next_day() -> None:
    p = IdlePolicy()
    day = 86400.0
    for i in range(10):  # yesterday 08:00-09:00: gaps of two minutes
        p.observe(120.0, 8 * 3600.0 + 300 * i, BOUNDS)
    for i in range(10):  # last night: gaps of hours
        p.observe(5 * 3600.0, day + i * 600.0, BOUNDS)
    assert p.timeout(BOUNDS, 30.0, day + 2 * 3600.0) == BOUNDS.min  # 02:00: short
    assert p.timeout(BOUNDS, 30.0, day + 8 * 3600.0 + 60) > 120.0  # 08:00: as yesterday


def test_state_round_trips_through_status_json() -> None:
    p = IdlePolicy()
    for i, gap in enumerate([45.0, 90.0, 3000.0, 90.0, 600.0, 7200.0]):
        p.observe(gap, 50000.0 + 1000 * i, BOUNDS)
    t = p.timeout(BOUNDS, 30.0, 60000.0)
    doc = json.loads(json.dumps(p.to_status(t)))
    assert doc["idleTimeoutSeconds"] == round(t, 1)
    back = IdlePolicy.from_status(doc)
    assert back.gaps == p.gaps and back.at == p.at
    assert back.timeout(BOUNDS, 30.0, 60000.0) == t
    assert IdlePolicy.from_status({"recent": "junk", "daily": [[99, []], "x"]}).gaps == 0
    assert IdlePolicy.from_status(None).recent == {}


def test_decide_learns_gaps_and_scales_to_zero_at_the_learned_timeout() -> None:
    scaling = ScalingSpec(idle_timeout=BOUNDS.max, auto_idle=BOUNDS, scale_down_delay=0.0)
    state = ScalerState(wake_seconds=30.0)
    t = 0.0
    # Requests every 3 hours: each idle spell is a gap of about 3 h.
    for _ in range(MIN_GAPS + 2):
        d = decide(t, 1, scaling, ServiceLoad(in_flight=1), state)
        t += 1.0
        d = decide(t, 1, scaling, ServiceLoad(last_request_finished=t), state)
        t += 3 * 3600.0
    assert state.idle.gaps >= MIN_GAPS and state.learned >= MIN_GAPS
    d = decide(t, 1, scaling, ServiceLoad(in_flight=1), state)
    t += 1.0
    finished = t
    d = decide(t, 1, scaling, ServiceLoad(last_request_finished=finished), state)
    assert d.idle_timeout == BOUNDS.min and d.replicas == 1
    d = decide(
        finished + BOUNDS.min, 1, scaling, ServiceLoad(last_request_finished=finished), state
    )
    assert d.replicas == 0 and d.reason == "scale to zero: idle"
    # A fixed timeout ignores all of this.
    fixed = replace(scaling, auto_idle=None, idle_timeout=300.0)
    d = decide(
        finished + BOUNDS.min,
        1,
        fixed,
        ServiceLoad(last_request_finished=finished),
        ScalerState(last_activity=finished),
    )
    assert d.replicas == 1 and d.idle_timeout == 300.0


# --- pre-warm ahead of predicted arrivals (the hybrid histogram policy) -----------------


def periodic(gap: float, n: int, jitter: float = 0.0) -> IdlePolicy:
    p = IdlePolicy()
    for i in range(n):
        g = gap + (jitter if i % 2 else -jitter)
        p.observe(g, 1000.0 + (gap + 5.0) * i, PREWARM)
    return p


def test_costs_of_the_two_plans() -> None:
    items = [(100.0, 1.0), (500.0, 2.0)]
    # keep-alive 200: the 100 s gap stays warm (100), the 500 s ones wake (200 + 30 + 300).
    assert keep_alive_cost(items, 200.0, 330.0) == 100.0 + 2 * (200.0 + 330.0)
    # pre-warm: zero after 30 s, up again at 450, ready at 480, down at 550.
    cost = prewarm_cost(items, 30.0, 450.0, 550.0, 30.0, 300.0)
    assert cost == (30.0 + 330.0) + 2 * (30.0 + (500.0 - 450.0))
    # a gap inside the wake pays the part of the penalty it waited for
    late = prewarm_cost([(470.0, 1.0)], 30.0, 450.0, 550.0, 30.0, 300.0)
    assert late == 30.0 + 30.0 + 300.0 * (480.0 - 470.0) / 30.0
    # a gap beyond the window: the window's GPU time and a cold wake
    missed = prewarm_cost([(900.0, 1.0)], 30.0, 450.0, 550.0, 30.0, 300.0)
    assert missed == 30.0 + 100.0 + 330.0


def test_regular_gaps_get_a_prewarm_plan_around_the_next_arrival() -> None:
    p = periodic(600.0, 12, jitter=10.0)
    plan = p.plan(PREWARM, 30.0, 20000.0)
    assert plan.prewarm and plan.keep_alive == PREWARM.min
    assert plan.after is not None and plan.until is not None
    # Ready (after + wake) before the earliest gap seen, held past the longest one.
    assert plan.after + 30.0 < 590.0 < 610.0 < plan.until
    assert plan.floor_at(100.0, 100.0 + plan.after - 1) == 0
    assert plan.floor_at(100.0, 100.0 + plan.after) == 1
    assert plan.floor_at(100.0, 100.0 + plan.until) == 0
    # The same gaps, keep-alive only: 10 minutes idle cost more than a wake, so it drops
    # the replica at min and every request waits for a cold start.
    assert p.plan(BOUNDS, 30.0, 20000.0) == Plan(keep_alive=BOUNDS.min)


def test_spread_gaps_fall_back_to_keep_alive() -> None:
    # Exponential gaps (Poisson arrivals, mean 5 min): nothing to predict.
    p = IdlePolicy()
    gaps = [30.0 + 300.0 * (-__import__("math").log(1 - (i + 0.5) / 40)) for i in range(40)]
    for i, g in enumerate(gaps[::7] + gaps):
        p.observe(g, 1000.0 + 10 * i, PREWARM)
    plan = p.plan(PREWARM, 30.0, 2000.0)
    assert not plan.prewarm, plan
    assert plan.keep_alive == p.plan(BOUNDS, 30.0, 2000.0).keep_alive


def test_prewarm_needs_enough_gaps_and_a_wake_to_hide() -> None:
    few = periodic(600.0, PREWARM_MIN_GAPS - 1)
    assert not few.plan(PREWARM, 30.0, 20000.0).prewarm
    enough = periodic(600.0, PREWARM_MIN_GAPS)
    assert enough.plan(PREWARM, 30.0, 20000.0).prewarm
    assert not enough.plan(PREWARM, 0.0, 20000.0).prewarm  # no wake measured yet
    # Gaps so short that the pre-warm would start before min: keep-alive.
    short = choose({_bin(45.0): 20.0}, 20, PREWARM, 30.0)
    assert not short.prewarm


def test_plan_survives_status_and_a_restart() -> None:
    p = periodic(600.0, 12, jitter=10.0)
    plan = p.plan(PREWARM, 30.0, 20000.0)
    doc = json.loads(json.dumps(p.to_status(plan.keep_alive, plan)))
    assert doc["prewarm"] == {"afterSeconds": round(plan.after or 0, 1),
                              "untilSeconds": round(plan.until or 0, 1)}  # fmt: skip
    assert IdlePolicy.from_status(doc).plan(PREWARM, 30.0, 20000.0) == plan
    assert p.to_status(600.0)["prewarm"] is None


def test_decide_prewarms_ahead_of_the_predicted_arrival() -> None:
    scaling = ScalingSpec(idle_timeout=PREWARM.max, auto_idle=PREWARM, scale_down_delay=0.0)
    state = ScalerState(wake_seconds=30.0, idle=periodic(600.0, 12, jitter=10.0))
    t = 20000.0
    decide(t, 1, scaling, ServiceLoad(in_flight=1), state)
    finished = t + 1.0
    d = decide(finished, 1, scaling, ServiceLoad(last_request_finished=finished), state)
    plan = d.plan
    assert plan is not None and plan.after is not None and plan.until is not None
    assert d.prewarm_at == finished + plan.after and d.replicas == 1
    d = decide(finished + 31.0, 1, scaling, ServiceLoad(last_request_finished=finished), state)
    assert d.replicas == 0 and d.reason == "scale to zero: idle"
    d = decide(
        finished + plan.after, 0, scaling, ServiceLoad(last_request_finished=finished), state
    )
    assert d.replicas == 1 and d.reason == "scale up: predicted arrival"
    assert d.prewarm_at is None
    d = decide(
        finished + plan.until - 1, 1, scaling, ServiceLoad(last_request_finished=finished), state
    )
    assert d.replicas == 1
    d = decide(
        finished + plan.until, 1, scaling, ServiceLoad(last_request_finished=finished), state
    )
    assert d.replicas == 0  # nobody came: the window closes
    # A floor from spec.minReplicas is no prediction.
    floor = replace(scaling, min_replicas=1)
    d = decide(
        finished + plan.after, 0, floor, ServiceLoad(last_request_finished=finished),
        ScalerState(wake_seconds=30.0, idle=periodic(600.0, 12, jitter=10.0),
                    last_activity=finished),
    )  # fmt: skip
    assert d.reason == "scale up: floor"


def test_simulator_periodic_trickle_is_warmed_ahead() -> None:
    """A job that embeds every 10 minutes (+-20 s): keep-alive-only auto drops the
    replica and wakes for each request; with pre-warm most requests find it ready, at a
    fraction of the GPU time of keeping it up (15m)."""
    trace = [(i * 600.0 + (15.0 if i % 3 else -15.0), 2.0) for i in range(1, 144)]
    base = SimConfig(scaling=ScalingSpec(max_replicas=1), wake_delay=30.0, horizon=86400.0)

    def run(auto: AutoIdle | None, fixed: float = 0.0) -> tuple[float, int, int, int]:
        sc = replace(
            base.scaling,
            idle_timeout=auto.max if auto else fixed,
            auto_idle=auto,
        )
        r = simulate(trace, replace(base, scaling=sc))
        return r.gpu_seconds, r.wakes, r.prewarms, r.added_latency.count

    _, _, ka_pre, ka_waited = run(BOUNDS)
    pw_gpu, _, pw_pre, pw_waited = run(PREWARM)
    kept_gpu, _, _, kept_waited = run(None, 900.0)
    assert ka_pre == 0 and pw_pre > 100
    assert pw_waited < ka_waited / 10, (pw_waited, ka_waited)
    assert pw_gpu < kept_gpu / 2, (pw_gpu, kept_gpu)
    assert kept_waited <= pw_waited
