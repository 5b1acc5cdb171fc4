"""The autoscaler's pure decision function, rule by rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from glowplug.api.spec import ScalingSpec
from glowplug.operator.autoscaler import (
    ActivatorLoad,
    Decision,
    ScalerState,
    ServiceLoad,
    decide,
    need,
)

SPEC = ScalingSpec(
    min_replicas=0,
    max_replicas=8,
    idle_timeout=300.0,
    scale_down_delay=60.0,
    target_concurrency=8,
)
IDLE = ServiceLoad()


def load(in_flight: int = 0, queued: int = 0, **kw: object) -> ServiceLoad:
    return ServiceLoad(in_flight=in_flight, queued=queued, **kw)  # type: ignore[arg-type]


def run(
    state: ScalerState,
    current: int,
    times: range | list[float],
    the_load: ServiceLoad,
    spec: ScalingSpec = SPEC,
    prewarm: int = 0,
) -> tuple[int, list[Decision]]:
    """Tick ``decide`` at each time, applying its decision as the operator would."""
    out = []
    for t in times:
        d = decide(float(t), current, spec, the_load, state, prewarm)
        current = d.replicas
        out.append(d)
    return current, out


def test_need_rounds_up_and_waking_needs_one() -> None:
    assert need(load(0, 0), 8) == 0
    assert need(load(1, 0), 8) == 1
    assert need(load(8, 0), 8) == 1
    assert need(load(8, 1), 8) == 2
    assert need(load(0, 0, waking=True), 8) == 1


def test_combine_sums_and_takes_latest_finish() -> None:
    combined = ServiceLoad.combine(
        [
            ActivatorLoad(in_flight=3, queued=10, last_request_finished=100.0),
            ActivatorLoad(in_flight=5, queued=2, waking=True, last_request_finished=None),
            ActivatorLoad(last_request_finished=150.0),
        ],
        unreadable=1,
    )
    assert combined == ServiceLoad(8, 12, True, 150.0, 1)
    assert combined.busy


def test_burst_jumps_straight_to_what_the_backlog_needs() -> None:
    state = ScalerState()
    d = decide(0.0, 0, SPEC, load(0, 40), state)
    assert d.replicas == 5  # 40 held / 8 per replica, at once
    d = decide(1.0, 1, SPEC, load(0, 40), ScalerState())
    assert d.replicas == 5


def test_burst_is_capped_by_max_replicas() -> None:
    d = decide(0.0, 0, replace(SPEC, max_replicas=3), load(0, 400), ScalerState())
    assert d.replicas == 3


def test_two_activators_are_summed() -> None:
    both = ServiceLoad.combine([ActivatorLoad(in_flight=6), ActivatorLoad(in_flight=6)])
    assert decide(0.0, 1, SPEC, both, ScalerState()).replicas == 2


def test_scale_down_waits_scale_down_delay_of_lower_demand() -> None:
    state = ScalerState()
    current, _ = run(state, 0, range(0, 10), load(40, 0))
    assert current == 5
    # Demand drops to 2 replicas' worth at t=10: nothing changes for 60 s.
    current, decisions = run(state, current, range(10, 70), load(16, 0))
    assert current == 5, decisions[-1]
    current, _ = run(state, current, [70.0], load(16, 0))
    assert current == 2


def test_scale_down_window_remembers_a_spike() -> None:
    state = ScalerState()
    current, _ = run(state, 0, range(0, 5), load(24, 0))
    assert current == 3
    current, _ = run(state, current, range(5, 40), load(8, 0))
    # a brief spike to 2 replicas' worth at t=40 restarts the clock for the third only
    current, _ = run(state, current, [40.0], load(16, 0))
    current, _ = run(state, current, range(41, 65), load(8, 0))
    assert current == 3  # t=64: low since 5, but 3 replicas' window ends at 65
    current, _ = run(state, current, [65.0], load(8, 0))
    assert current == 2  # the spike at 40 still asks for 2 until 100
    current, _ = run(state, current, range(66, 101), load(8, 0))
    assert current == 2  # t=100: the spike's recommendation was in force until t=41
    current, _ = run(state, current, [101.0], load(8, 0))
    assert current == 1


def test_scale_up_is_immediate_during_a_scale_down_wait() -> None:
    state = ScalerState()
    current, _ = run(state, 0, range(0, 3), load(16, 0))
    current, _ = run(state, current, range(3, 30), load(1, 0))
    assert current == 2
    current, _ = run(state, current, [30.0], load(30, 0))
    assert current == 4


def test_last_replica_goes_exactly_at_idle_timeout_after_last_finish() -> None:
    state = ScalerState()
    current, _ = run(state, 1, range(0, 10), load(1, 0))  # busy until t=9
    finished = ServiceLoad(last_request_finished=9.5)
    current, _ = run(state, current, range(10, 309), finished)
    assert current == 1  # t=308: 298.5 s idle
    current, decisions = run(state, current, [309.0, 309.5], finished)
    assert [d.replicas for d in decisions] == [1, 0]
    assert decisions[-1].reason == "scale to zero: idle"


@pytest.mark.parametrize(
    "busy",
    [
        load(1, 0),
        load(0, 1),
        ServiceLoad(waking=True),
        ServiceLoad(unreadable=1),
        ServiceLoad(unreadable=1, last_request_finished=0.0),
    ],
    ids=["in-flight", "queued", "waking", "unreadable", "unreadable-old-finish"],
)
def test_never_to_zero_while_anything_is_busy(busy: ServiceLoad) -> None:
    state = ScalerState(last_activity=-10_000.0)
    current, _ = run(state, 1, range(0, 1000, 10), busy)
    assert current == 1
    # and the idle clock starts at the last busy tick (t=990)
    current, _ = run(state, current, range(1000, 1290, 10), IDLE)
    assert current == 1
    current, _ = run(state, current, [1290.0], IDLE)
    assert current == 0


def test_unreadable_activator_blocks_scale_down_above_one_but_not_scale_up() -> None:
    state = ScalerState()
    current, _ = run(state, 0, range(0, 3), load(32, 0))
    assert current == 4
    blind = ServiceLoad.combine([ActivatorLoad(in_flight=1)], unreadable=1)
    current, _ = run(state, current, range(3, 500), blind)
    assert current == 4
    blind_burst = ServiceLoad.combine([ActivatorLoad(in_flight=60)], unreadable=1)
    current, _ = run(state, current, [500.0], blind_burst)
    assert current == 8


def test_unknown_last_activity_counts_as_now() -> None:
    # A fresh operator (no status.lastRequestTime) with idle activators that restarted
    # too (no lastRequestFinished): the full idle timeout runs from the first tick.
    state = ScalerState(last_activity=None)
    current, _ = run(state, 1, range(1000, 1300), IDLE)
    assert current == 1
    current, _ = run(state, current, [1300.0], IDLE)
    assert current == 0


def test_persisted_last_request_time_counts_after_restart() -> None:
    # The persisted time is recent: the activators' older figures do not shorten it.
    state = ScalerState(last_activity=900.0)
    stale = ServiceLoad(last_request_finished=100.0)
    current, _ = run(state, 1, range(1000, 1200), stale)
    assert current == 1
    current, _ = run(state, current, [1200.0], stale)
    assert current == 0


def test_restart_never_scales_down_before_a_full_window() -> None:
    # Restarted operator sees 4 replicas running and a load that needs 1: it keeps 4
    # for scaleDownDelay, because it has not watched the demand for that long.
    state = ScalerState()
    current, _ = run(state, 4, range(500, 560), load(3, 0))
    assert current == 4
    current, _ = run(state, current, [560.0], load(3, 0))
    assert current == 1


def test_min_replicas_is_a_floor() -> None:
    spec = replace(SPEC, min_replicas=2)
    state = ScalerState(last_activity=0.0)
    current, _ = run(state, 0, [0.0], IDLE, spec)
    assert current == 2
    current, _ = run(state, current, range(1, 2000, 10), IDLE, spec)
    assert current == 2


def test_prewarm_raises_the_floor_while_open() -> None:
    state = ScalerState(last_activity=0.0)
    current, _ = run(state, 0, range(0, 100), IDLE, prewarm=1)
    assert current == 1
    current, _ = run(state, current, range(100, 400), IDLE, prewarm=1)
    assert current == 1
    # the window closes; last activity was long ago, so the replica goes at once
    current, _ = run(state, current, [400.0], IDLE, prewarm=0)
    assert current == 0


def test_prewarm_above_max_is_capped() -> None:
    spec = replace(SPEC, max_replicas=2)
    assert decide(0.0, 0, spec, IDLE, ScalerState(), prewarm_floor=5).replicas == 2


def test_lowered_max_replicas_applies_at_once() -> None:
    spec = replace(SPEC, max_replicas=2)
    d = decide(0.0, 5, spec, load(40, 0), ScalerState())
    assert d.replicas == 2


def test_above_one_then_idle_goes_to_one_after_delay_then_zero_after_idle() -> None:
    spec = replace(SPEC, idle_timeout=120.0, scale_down_delay=60.0)
    state = ScalerState()
    current, _ = run(state, 0, [0.0], load(24, 0), spec)
    assert current == 3
    finished = ServiceLoad(last_request_finished=0.5)
    current, _ = run(state, current, range(1, 61), finished, spec)
    assert current == 3  # t=60: the window still holds the t=0 recommendation
    current, _ = run(state, current, [61.0], finished, spec)
    assert current == 1
    current, _ = run(state, current, range(62, 121), finished, spec)
    assert current == 1  # 120.5 s after the last finish is t=120.5
    current, _ = run(state, current, [121.0], finished, spec)
    assert current == 0


def test_short_idle_timeout_still_waits_scale_down_delay_for_extra_replicas() -> None:
    spec = replace(SPEC, idle_timeout=5.0, scale_down_delay=30.0)
    state = ScalerState()
    current, _ = run(state, 0, [0.0], load(24, 0), spec)
    finished = ServiceLoad(last_request_finished=1.0)
    current, _ = run(state, current, range(1, 31), finished, spec)
    assert current == 3  # demand has been lower since t=1: the window ends at t=31
    current, _ = run(state, current, [31.0], finished, spec)
    assert current == 0  # the window passed and the service has been idle 30 s


def test_zero_stays_zero_when_idle_and_wakes_on_queue() -> None:
    state = ScalerState(last_activity=0.0)
    current, _ = run(state, 0, range(0, 50), IDLE)
    assert current == 0
    current, _ = run(state, current, [50.0], load(0, 1))
    assert current == 1
