"""The GPU-hour ledger core: scripted pod lifetimes, restarts, re-lists."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest

from glowplug.kube.timefmt import format_time, parse_time
from glowplug.operator.ledger import (
    Ledger,
    PodHold,
    Rates,
    integrate,
    saved_percent,
    spec_baseline_gpus,
    totals_at,
    written_rates,
)

T0 = 1_780_000_000.0  # an arbitrary real epoch, so checkpoints round-trip as RFC 3339


@dataclass(frozen=True)
class Life:
    uid: str
    bound: float
    gone: float
    gpus: int = 1


def bound_at(lives: Sequence[Life], t: float) -> list[PodHold]:
    return [PodHold(p.uid, T0 + p.bound, p.gpus) for p in lives if p.bound <= t < p.gone]


def replay(ledger: Ledger, lives: Sequence[Life], ticks: Iterable[float], base: float) -> None:
    for t in ticks:
        ledger.advance(T0 + t, bound_at(lives, t), base)


def exact(lives: Sequence[Life], end: float, base: float) -> tuple[float, float]:
    return integrate(
        [(T0 + p.bound, T0 + min(p.gone, end), p.gpus) for p in lives if p.bound < end],
        T0,
        T0 + end,
        base,
    )


SCENARIO = [
    Life("a", 10, 70),
    Life("b", 20, 45, gpus=2),  # a burst replica with two GPUs
    Life("c", 100, 160),
    Life("d", 150, 200),
]


def test_integrate_held_and_baseline() -> None:
    held, base = integrate([(0, 10, 1), (5, 15, 2)], 0, 20, 1)
    assert held == 10 + 20
    # 0-5: 1 ; 5-10: 3 ; 10-15: 2 ; 15-20: max(0,1)=1
    assert base == 5 + 15 + 10 + 5


def test_scripted_lifetimes_match_exactly_with_ticks_on_the_edges() -> None:
    ledger = Ledger(as_of=T0)
    replay(ledger, SCENARIO, range(1, 241), 1.0)
    held, base = exact(SCENARIO, 240, 1.0)
    assert held == 60 + 50 + 60 + 50
    assert ledger.gpu_seconds == pytest.approx(held)
    assert ledger.baseline_gpu_seconds == pytest.approx(base)
    # baseline: 240 s of one always-on replica, plus what ran above it
    assert base == 240 + 50 + 10


def test_coarse_ticks_charge_a_gone_pod_up_to_the_tick_that_saw_it_gone() -> None:
    ledger = Ledger(as_of=T0)
    replay(ledger, [Life("a", 10, 71.5)], [5, 30, 60, 90], 0.0)
    # bound at 10 (charged from its binding, not from the tick), gone seen at 90
    assert ledger.gpu_seconds == pytest.approx(80)


def test_pending_pods_count_from_binding() -> None:
    ledger = Ledger(as_of=T0)
    ledger.advance(T0 + 3, [PodHold("p", T0 + 1.25, 1)], 0.0)
    assert ledger.gpu_seconds == pytest.approx(1.75)


def test_relisting_the_same_pods_never_double_counts() -> None:
    ledger = Ledger(as_of=T0)
    pods = [PodHold("a", T0, 1), PodHold("b", T0 + 5, 2)]
    ledger.advance(T0 + 10, pods, 1.0)
    for _ in range(3):
        ledger.advance(T0 + 10, pods, 1.0)  # the same list again, same instant
        ledger.advance(T0 + 10, list(reversed(pods)), 1.0)
    assert ledger.gpu_seconds == pytest.approx(10 + 10)
    ledger.advance(T0 + 20, pods, 1.0)
    assert ledger.gpu_seconds == pytest.approx(20 + 30)


# (kill_at, down_for) pairs where no pod vanishes while no operator runs: the ledger
# cannot see that (test_a_pod_gone_while_no_operator_ran_... covers it).
RESTARTS = [
    pytest.param(kill_at, down_for, id=f"kill{kill_at}-down{down_for}")
    for kill_at in (30, 44, 45, 80, 155)
    for down_for in (0, 1, 4)
    if not any(kill_at < p.gone <= kill_at + down_for for p in SCENARIO)
]


@pytest.mark.parametrize(("kill_at", "down_for"), RESTARTS)
def test_restart_mid_scenario_changes_nothing(kill_at: int, down_for: int) -> None:
    # The operator checkpoints every 5 s, dies at kill_at (losing what it had in memory
    # since the last checkpoint), and a new one starts down_for seconds later.
    first = Ledger(as_of=T0)
    status: dict[str, object] = {}
    for t in range(1, kill_at + 1):
        first.advance(T0 + t, bound_at(SCENARIO, t), 1.0)
        if t % 5 == 0:
            status = first.checkpoint()
    restart = kill_at + down_for
    second = Ledger.restore(status, created=T0, now=T0 + restart)
    replay(second, SCENARIO, range(restart, 241), 1.0)
    held, base = exact(SCENARIO, 240, 1.0)
    assert second.gpu_seconds == pytest.approx(held, abs=0.01)
    assert second.baseline_gpu_seconds == pytest.approx(base, abs=0.01)


def test_restart_from_a_stale_checkpoint_recounts_only_after_it() -> None:
    first = Ledger(as_of=T0)
    replay(first, SCENARIO, range(1, 31), 1.0)
    status = first.checkpoint()  # at t=30
    # Counted in memory, never persisted. (No pod comes or goes here: the live loop
    # checkpoints at once whenever the set of pods changes.)
    replay(first, SCENARIO, range(31, 44), 1.0)
    second = Ledger.restore(status, created=T0, now=T0 + 44)
    replay(second, SCENARIO, range(44, 241), 1.0)
    held, base = exact(SCENARIO, 240, 1.0)
    assert second.gpu_seconds == pytest.approx(held, abs=0.01)
    assert second.baseline_gpu_seconds == pytest.approx(base, abs=0.01)


def test_restart_twice_in_a_row_without_ticks() -> None:
    first = Ledger(as_of=T0)
    replay(first, SCENARIO, range(1, 51), 1.0)
    status = first.checkpoint()
    second = Ledger.restore(status, created=T0, now=T0 + 50)
    second.advance(T0 + 50, bound_at(SCENARIO, 50), 1.0)
    third = Ledger.restore(second.checkpoint(), created=T0, now=T0 + 50)
    replay(third, SCENARIO, range(51, 241), 1.0)
    assert third.gpu_seconds == pytest.approx(exact(SCENARIO, 240, 1.0)[0], abs=0.01)


def test_a_pod_gone_while_no_operator_ran_is_charged_up_to_the_checkpoint() -> None:
    lives = [Life("a", 0, 20)]
    first = Ledger(as_of=T0)
    replay(first, lives, range(1, 11), 0.0)
    second = Ledger.restore(first.checkpoint(), created=T0, now=T0 + 30)
    replay(second, lives, range(30, 40), 0.0)
    # It held 20 s; 10 s were seen. The loss is bounded by the downtime (documented).
    assert second.gpu_seconds == pytest.approx(10)


def test_new_service_starts_at_creation_and_baseline_runs_while_at_zero() -> None:
    ledger = Ledger.restore(None, created=T0, now=T0 + 100)
    ledger.advance(T0 + 100, [], 2.0)
    assert ledger.gpu_seconds == 0
    assert ledger.baseline_gpu_seconds == pytest.approx(200)


def test_totals_without_a_ledger_time_continue_from_now() -> None:
    ledger = Ledger.restore({"gpuSeconds": 50, "baselineGpuSeconds": 90}, T0, T0 + 1000)
    ledger.advance(T0 + 1010, [PodHold("a", T0, 1)], 1.0)
    assert ledger.gpu_seconds == pytest.approx(60)
    assert ledger.baseline_gpu_seconds == pytest.approx(100)


def test_garbage_in_status_is_ignored() -> None:
    ledger = Ledger.restore(
        {"gpuSeconds": "x", "baselineGpuSeconds": -5, "ledgerTime": "yesterday"}, T0, T0 + 10
    )
    assert (ledger.gpu_seconds, ledger.baseline_gpu_seconds, ledger.as_of) == (0, 0, T0)


def test_checkpoint_fields_round_trip() -> None:
    ledger = Ledger(as_of=T0)
    ledger.advance(T0 + 7200.5, [PodHold("a", T0, 1)], 2.0)
    cp = ledger.checkpoint()
    assert cp["gpuSeconds"] == pytest.approx(7200.5)
    assert cp["baselineGpuSeconds"] == pytest.approx(14401)
    assert cp["gpuHours"] == 2.0
    assert cp["savedPercent"] == 50.0
    assert parse_time(cp["ledgerTime"]) == pytest.approx(T0 + 7200.5)
    assert parse_time(format_time(T0 + 0.123456)) == pytest.approx(T0 + 0.123456)


def test_saved_percent() -> None:
    assert saved_percent(0, 0) == 0.0
    assert saved_percent(25, 100) == 75.0
    assert saved_percent(120, 100) == -20.0


def test_clock_going_backwards_charges_nothing() -> None:
    ledger = Ledger(as_of=T0 + 10)
    assert ledger.advance(T0 + 5, [PodHold("a", T0, 1)], 1.0).gpu_seconds == 0
    assert ledger.as_of == T0 + 10
    ledger.advance(T0 + 12, [], 1.0)  # "a" gone: charged from as_of
    assert ledger.gpu_seconds == pytest.approx(2)


# --- reading status at any later instant (totals_at) -------------------------------------


def service(status: dict[str, object], baseline_replicas: int = 1, gpus: int = 1) -> dict:
    return {
        "metadata": {"creationTimestamp": format_time(T0)},
        "spec": {"resources": {"gpus": gpus}, "cost": {"baselineReplicas": baseline_replicas}},
        "status": status,
    }


def test_checkpoint_states_the_rates_from_its_time_on() -> None:
    ledger = Ledger(as_of=T0)
    ledger.advance(T0 + 10, [PodHold("a", T0, 2), PodHold("b", T0 + 5, 1)], 1.0)
    cp = ledger.checkpoint()
    assert (cp["gpusHeld"], cp["baselineGpus"]) == (3.0, 3.0)
    ledger.advance(T0 + 20, [], 2.0)
    cp = ledger.checkpoint()
    assert (cp["gpusHeld"], cp["baselineGpus"]) == (0.0, 2.0)


def test_status_at_a_later_time_equals_the_ledger_advanced_to_it() -> None:
    # The scenario's last checkpoint is the one the last pod's end triggered (t=200).
    # From then on nothing is written; the ledger in memory keeps advancing.
    ledger = Ledger(as_of=T0)
    replay(ledger, SCENARIO, range(1, 201), 1.0)
    obj = service(ledger.checkpoint())
    replay(ledger, SCENARIO, range(201, 3601), 1.0)
    later = totals_at(obj, T0 + 3600)
    assert later.gpu_seconds == pytest.approx(ledger.gpu_seconds)
    assert later.baseline_gpu_seconds == pytest.approx(ledger.baseline_gpu_seconds)
    held, base = exact(SCENARIO, 3600, 1.0)
    assert later.saved_gpu_seconds == pytest.approx(base - held, abs=1e-3)
    assert later.saved_percent == saved_percent(held, base)


def test_while_pods_hold_gpus_the_totals_grow_at_their_gpus() -> None:
    ledger = Ledger(as_of=T0)
    ledger.advance(T0 + 10, [PodHold("a", T0, 2)], 1.0)
    obj = service(ledger.checkpoint())
    ledger.advance(T0 + 17, [PodHold("a", T0, 2)], 1.0)  # no checkpoint in between
    assert totals_at(obj, T0 + 17).gpu_seconds == pytest.approx(ledger.gpu_seconds)
    assert totals_at(obj, T0 + 17).baseline_gpu_seconds == pytest.approx(34)


def test_before_its_time_status_says_what_it_checkpointed() -> None:
    ledger = Ledger(as_of=T0)
    ledger.advance(T0 + 10, [PodHold("a", T0, 1)], 1.0)
    totals = totals_at(service(ledger.checkpoint()), T0 + 5)
    assert (totals.gpu_seconds, totals.baseline_gpu_seconds) == (10, 10)


def test_a_service_never_checkpointed_counts_its_baseline_from_creation() -> None:
    obj = service({}, baseline_replicas=2, gpus=2)
    assert written_rates(obj) == Rates(0.0, 4.0)
    assert totals_at(obj, T0 + 100).baseline_gpu_seconds == pytest.approx(400)
    assert totals_at(obj, T0 + 100).gpu_seconds == 0
    # and it is what the ledger restored for it counts
    ledger = Ledger.restore(obj["status"], created=T0, now=T0 + 100)
    ledger.advance(T0 + 100, [], spec_baseline_gpus(obj))
    assert ledger.baseline_gpu_seconds == pytest.approx(400)


def test_a_checkpoint_without_rates_states_none() -> None:
    old = service({"gpuSeconds": 5, "baselineGpuSeconds": 9, "ledgerTime": format_time(T0)})
    assert written_rates(old) is None
    with pytest.raises(ValueError, match="gpusHeld"):
        totals_at(old, T0 + 1)


def test_spec_baseline_gpus_defaults_and_garbage() -> None:
    assert spec_baseline_gpus({}) == 1
    assert spec_baseline_gpus(service({}, baseline_replicas=0)) == 0
    assert spec_baseline_gpus({"spec": {"cost": {"baselineReplicas": "x"}, "resources": []}}) == 1
