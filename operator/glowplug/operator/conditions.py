"""Status conditions and phase of an EmbeddingService: pure functions, no API calls.

Conditions follow the Kubernetes convention (type, status "True"/"False"/"Unknown",
reason, message, lastTransitionTime). ``lastTransitionTime`` moves only when ``status``
changes, so rewriting the same condition is a no-op and status patches stay idempotent.

Who sets which ``Failed`` reason:
- the operator's reconcile: ``InvalidSpec``, ``SecretNotFound`` (``SPEC_REASONS``), and
  it clears only those when the spec is fixed;
- the wake-failure watcher: the reasons ``glowplug.kube.podstate`` reports (``WAKE_REASONS``:
  Unschedulable, ImagePullBackOff, CrashLoopBackOff, OOMKilled, ...), cleared by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from glowplug.kube import podstate
from glowplug.kube.timefmt import now_rfc3339
from glowplug.operator import wakephases

READY = "Ready"
WAKING = "Waking"
FAILED = "Failed"
CONDITION_TYPES = (READY, WAKING, FAILED)

IDLE = "Idle"
READY_PHASE = "Ready"
WAKING_PHASE = "Waking"
FAILED_PHASE = "Failed"

INVALID_SPEC = "InvalidSpec"
SECRET_NOT_FOUND = "SecretNotFound"
SPEC_REASONS = frozenset({INVALID_SPEC, SECRET_NOT_FOUND})
WAKE_REASONS = frozenset(podstate.PRIORITY)

Condition = dict[str, Any]


def get_condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> Condition | None:
    for cond in conditions:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_true(conditions: Iterable[Mapping[str, Any]], type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    *,
    now: str | None = None,
    observed_generation: int | None = None,
) -> list[Condition]:
    """A new list with ``type_`` set; other conditions keep their order and content."""
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    old = get_condition(conditions, type_)
    new: Condition = {
        "type": type_,
        "status": status_text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (
            old["lastTransitionTime"]
            if old and old.get("status") == status_text and old.get("lastTransitionTime")
            else (now or now_rfc3339())
        ),
    }
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    out = [dict(c) for c in conditions if c.get("type") != type_]
    # Keep a stable order (Ready, Waking, Failed, then anything else) so diffs stay small.
    out.append(new)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    out.sort(key=lambda c: order.get(str(c.get("type")), len(order)))
    return out


def clear_failed(
    conditions: Sequence[Mapping[str, Any]],
    reasons: Iterable[str],
    *,
    now: str | None = None,
    observed_generation: int | None = None,
) -> list[Condition]:
    """Set Failed to False if it is True for one of ``reasons``; leave others' reasons alone."""
    cond = get_condition(conditions, FAILED)
    if cond is None:
        return set_condition(
            conditions,
            FAILED,
            False,
            "AsExpected",
            "",
            now=now,
            observed_generation=observed_generation,
        )
    if cond.get("status") == "True" and cond.get("reason") not in set(reasons):
        return [dict(c) for c in conditions]
    if cond.get("status") != "True":
        return [dict(c) for c in conditions]
    return set_condition(
        conditions,
        FAILED,
        False,
        "AsExpected",
        f"resolved: {cond.get('reason')}",
        now=now,
        observed_generation=observed_generation,
    )


def phase(conditions: Iterable[Mapping[str, Any]], spec_replicas: int, ready: int) -> str:
    """Failed if the Failed condition is true; Ready with a ready replica; Waking while
    replicas are wanted but none is ready; else Idle."""
    if is_true(list(conditions), FAILED):
        return FAILED_PHASE
    if ready > 0:
        return READY_PHASE
    if spec_replicas > 0:
        return WAKING_PHASE
    return IDLE


def replica_conditions(
    conditions: Sequence[Mapping[str, Any]],
    spec_replicas: int,
    replicas: int,
    ready: int,
    *,
    now: str | None = None,
    observed_generation: int | None = None,
) -> list[Condition]:
    """Ready and Waking from the replica counts."""
    if ready > 0:
        ready_cond = (True, "ReplicasReady", f"{ready}/{spec_replicas} replicas ready")
    elif spec_replicas == 0:
        ready_cond = (False, "ScaledToZero", "no replicas desired; the next request wakes it")
    else:
        ready_cond = (False, "NoReadyReplicas", f"0/{spec_replicas} replicas ready")
    out = set_condition(
        conditions, READY, *ready_cond, now=now, observed_generation=observed_generation
    )
    waking = spec_replicas > 0 and ready == 0
    reason = "WaitingForReadyReplica" if waking else ("Awake" if ready else "Idle")
    message = f"{replicas} pod(s), none ready yet" if waking else ""
    current = get_condition(conditions, WAKING)
    if (
        waking
        and current is not None
        and current.get("status") == "True"
        and current.get("reason") in wakephases.WAITING_PHASES
    ):
        # The wake tracker (serviceloop.py) says which phase the wake waits in: keep it.
        reason, message = str(current["reason"]), str(current.get("message") or "")
    out = set_condition(
        out,
        WAKING,
        waking,
        reason,
        message,
        now=now,
        observed_generation=observed_generation,
    )
    return out


def status_equal(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` over ``old`` would change any key ``new`` sets."""
    return all(old.get(k) == v for k, v in new.items())


def replica_status(
    current: Mapping[str, Any],
    *,
    desired: int,
    replicas: int,
    ready: int,
    selector: str,
    observed_generation: int | None,
    clear_spec_failures: bool,
    now: str | None = None,
) -> dict[str, Any] | None:
    """The status keys to write after observing the Deployment; None when nothing changed.

    ``current`` is the EmbeddingService as last read; ``desired`` the replicas the
    operator asked the Deployment for. ``clear_spec_failures``: the spec was applied, so
    an InvalidSpec/SecretNotFound failure is over (wake failures are left alone).
    """
    status = current.get("status") or {}
    conds: list[Condition] = [dict(x) for x in status.get("conditions") or []]
    if clear_spec_failures:
        conds = clear_failed(conds, SPEC_REASONS, now=now)
    conds = replica_conditions(conds, desired, replicas, ready, now=now)
    new: dict[str, Any] = {
        "phase": phase(conds, desired, ready),
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": selector,
        "conditions": conds,
    }
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    return None if status_equal(status, new) else new


def failed_status(
    current: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    selector: str,
    observed_generation: int | None,
    now: str | None = None,
) -> dict[str, Any] | None:
    """Status keys for a failure the operator found (InvalidSpec, SecretNotFound)."""
    status = current.get("status") or {}
    conds = set_condition(status.get("conditions") or [], FAILED, True, reason, message, now=now)
    new: dict[str, Any] = {"phase": FAILED_PHASE, "selector": selector, "conditions": conds}
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    return None if status_equal(status, new) else new
