"""The learned idle timeout: the policy's choice, its persistence, and decide() with
idleTimeout: auto (the code the operator and the simulator share)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from glowplug.api import SpecError, parse
from glowplug.api.spec import AutoIdle, ScalingSpec
from glowplug.operator.autoscaler import ScalerState, ServiceLoad, decide
from glowplug.operator.idlepolicy import EDGES, MIN_GAPS, IdlePolicy, _bin

BOUNDS = AutoIdle(min=30.0, max=600.0, wake_penalty=300.0)


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
