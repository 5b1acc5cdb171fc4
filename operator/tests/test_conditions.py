"""Conditions and phase: pure helpers shared by the reconciler and the autoscaler."""

from __future__ import annotations

import datetime as dt

import pytest

from glowplug.operator import conditions as c

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:01:00Z"


def test_now_rfc3339() -> None:
    when = dt.datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=dt.UTC)
    assert c.now_rfc3339(when) == "2026-03-04T05:06:07Z"


def test_set_condition_adds_and_orders() -> None:
    conds = c.set_condition([], c.FAILED, True, "InvalidSpec", "bad", now=T0)
    conds = c.set_condition(conds, c.READY, False, "ScaledToZero", "", now=T0)
    assert [x["type"] for x in conds] == ["Ready", "Failed"]
    assert conds[1] == {
        "type": "Failed",
        "status": "True",
        "reason": "InvalidSpec",
        "message": "bad",
        "lastTransitionTime": T0,
    }


def test_transition_time_moves_only_on_status_change() -> None:
    conds = c.set_condition([], c.READY, True, "A", "x", now=T0)
    same = c.set_condition(conds, c.READY, True, "B", "y", now=T1)
    assert same[0]["lastTransitionTime"] == T0
    assert same[0]["reason"] == "B"
    flipped = c.set_condition(same, c.READY, False, "C", "z", now=T1)
    assert flipped[0]["lastTransitionTime"] == T1


def test_set_condition_does_not_mutate() -> None:
    conds = [{"type": "Ready", "status": "True", "reason": "A", "message": ""}]
    c.set_condition(conds, c.READY, False, "B", "", now=T0)
    assert conds[0]["status"] == "True"


def test_observed_generation() -> None:
    conds = c.set_condition([], c.READY, True, "A", "", now=T0, observed_generation=7)
    assert conds[0]["observedGeneration"] == 7


def test_clear_failed_only_for_own_reasons() -> None:
    spec_failed = c.set_condition([], c.FAILED, True, c.SECRET_NOT_FOUND, "no hf", now=T0)
    cleared = c.clear_failed(spec_failed, c.SPEC_REASONS, now=T1)
    assert c.get_condition(cleared, c.FAILED) == {
        "type": "Failed",
        "status": "False",
        "reason": "AsExpected",
        "message": "resolved: SecretNotFound",
        "lastTransitionTime": T1,
    }
    wake_failed = c.set_condition([], c.FAILED, True, "CrashLoopBackOff", "boom", now=T0)
    kept = c.clear_failed(wake_failed, c.SPEC_REASONS, now=T1)
    assert kept == wake_failed


def test_clear_failed_when_absent_or_false() -> None:
    added = c.clear_failed([], c.SPEC_REASONS, now=T0)
    assert c.get_condition(added, c.FAILED) is not None
    assert not c.is_true(added, c.FAILED)
    again = c.clear_failed(added, c.SPEC_REASONS, now=T1)
    assert again == added


@pytest.mark.parametrize(
    ("failed", "spec_replicas", "ready", "expected"),
    [
        (True, 1, 1, "Failed"),
        (False, 1, 1, "Ready"),
        (False, 0, 1, "Ready"),  # draining the last pod still serves
        (False, 1, 0, "Waking"),
        (False, 0, 0, "Idle"),
        (True, 0, 0, "Failed"),
    ],
)
def test_phase(failed: bool, spec_replicas: int, ready: int, expected: str) -> None:
    conds = c.set_condition([], c.FAILED, failed, "X", "", now=T0)
    assert c.phase(conds, spec_replicas, ready) == expected


def test_replica_conditions() -> None:
    idle = c.replica_conditions([], 0, 0, 0, now=T0)
    assert not c.is_true(idle, c.READY) and not c.is_true(idle, c.WAKING)
    assert c.get_condition(idle, c.READY)["reason"] == "ScaledToZero"  # type: ignore[index]
    waking = c.replica_conditions(idle, 1, 1, 0, now=T1)
    assert c.is_true(waking, c.WAKING) and not c.is_true(waking, c.READY)
    ready = c.replica_conditions(waking, 1, 1, 1, now=T1)
    assert c.is_true(ready, c.READY) and not c.is_true(ready, c.WAKING)
    assert c.get_condition(ready, c.READY)["message"] == "1/1 replicas ready"  # type: ignore[index]


def test_replica_conditions_keep_failed() -> None:
    failed = c.set_condition([], c.FAILED, True, "OOMKilled", "", now=T0)
    out = c.replica_conditions(failed, 1, 1, 0, now=T1)
    assert c.is_true(out, c.FAILED)


def test_status_equal() -> None:
    assert c.status_equal({"a": 1, "b": 2}, {"a": 1})
    assert not c.status_equal({"a": 1}, {"a": 2})
    assert c.status_equal({}, {"a": None})  # a null in a merge patch deletes: no change


def test_every_wake_failure_reason_is_cleared_by_the_watcher() -> None:
    # The watcher clears only WAKE_REASONS: a reason kube.podstate reports but this set
    # lacks would stay Failed forever.
    from glowplug.kube import podstate

    assert set(podstate.PRIORITY) <= c.WAKE_REASONS
    assert not (c.WAKE_REASONS & c.SPEC_REASONS)
