"""Unit tests: routing names, endpoint parsing, the hold queue and the wake (no HTTP)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from activator_fakes import FakeScaler, service_obj

from glowplug.activator.endpoints import (
    EndpointTracker,
    Failure,
    condition_failure,
    pod_failure,
    ready_addresses,
    starting_addresses,
)
from glowplug.activator.holdqueue import (
    HoldTimeout,
    QueueFull,
    ServiceFailed,
    ServiceGone,
    ServiceState,
)
from glowplug.activator.openai import APIError
from glowplug.activator.routing import RoutingTable
from glowplug.activator.waker import KubeScaler, Waker
from glowplug.api import parse

# --- routing ------------------------------------------------------------------------------


def test_routing_short_full_and_ambiguous_names() -> None:
    t = RoutingTable()
    t.upsert(parse(service_obj("a", "ns1", served="shared")))
    t.upsert(parse(service_obj("b", "ns2", served="shared")))
    t.upsert(parse(service_obj("c", "ns2", served="Qwen/Qwen3")))
    assert t.resolve("ns1/shared").name == "a"
    assert t.resolve("ns2/shared").name == "b"
    assert t.resolve("Qwen/Qwen3").name == "c"  # served names may contain '/'
    assert t.resolve("ns2/Qwen/Qwen3").name == "c"
    with pytest.raises(APIError) as err:
        t.resolve("shared")
    assert err.value.status == 400 and err.value.code == "model_ambiguous"
    assert "ns1/shared, ns2/shared" in err.value.message
    with pytest.raises(APIError) as err:
        t.resolve("nope")
    assert err.value.status == 404 and err.value.code == "model_not_found"
    t.remove("ns2", "b")
    assert t.resolve("shared").name == "a"
    # renaming the served name drops the old name
    t.upsert(parse(service_obj("a", "ns1", served="renamed")))
    assert t.resolve("renamed").name == "a"
    with pytest.raises(APIError):
        t.resolve("shared")


# --- endpoints ------------------------------------------------------------------------------


def _slice(endpoints: list[dict[str, Any]], name: str = "emb-x") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns1",
            "labels": {"kubernetes.io/service-name": "emb"},
        },
        "ports": [{"name": "http", "port": 30000}],
        "endpoints": endpoints,
    }


def test_only_ready_non_terminating_endpoints() -> None:
    s = _slice(
        [
            {"addresses": ["10.244.0.5"], "conditions": {"ready": True}},
            {"addresses": ["10.244.0.6"], "conditions": {"ready": False}},
            {"addresses": ["10.244.0.7"], "conditions": {"ready": True, "terminating": True}},
            {"addresses": ["10.244.0.8"], "conditions": {}},  # nil ready means ready
        ]
    )
    assert ready_addresses(s) == ["10.244.0.5:30000", "10.244.0.8:30000"]
    # The readiness prober's candidates: not ready yet, not terminating.
    assert starting_addresses(s) == ["10.244.0.6:30000"]
    tr = EndpointTracker()
    assert tr.apply_slice(s) == "ns1/emb"
    tr.apply_slice(_slice([{"addresses": ["10.244.0.9"]}], name="emb-y"))
    assert tr.addresses("ns1/emb") == ["10.244.0.5:30000", "10.244.0.8:30000", "10.244.0.9:30000"]
    tr.delete_slice(s)
    assert tr.addresses("ns1/emb") == ["10.244.0.9:30000"]


def _pod(state: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "engine", "ready": False, "state": state}
    if last:
        cs["lastState"] = last
    return {
        "metadata": {"name": "p", "namespace": "ns1", "labels": {"glowplug.dev/service": "emb"}},
        "status": {"containerStatuses": [cs]},
    }


def test_pod_failures() -> None:
    f = pod_failure(_pod({"waiting": {"reason": "ImagePullBackOff", "message": "nope"}}))
    assert f is not None and f.reason == "ImagePullBackOff" and "nope" in f.message
    f = pod_failure(
        _pod(
            {"waiting": {"reason": "CrashLoopBackOff"}},
            {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
        )
    )
    assert f is not None and f.reason == "OOMKilled"
    assert pod_failure(_pod({"waiting": {"reason": "ContainerCreating"}})) is None
    # The activator uses the operator's classification, but leaves Unschedulable (a GPU
    # pod waiting for a new node) to the operator's Failed condition.
    pending = _pod({"waiting": {"reason": "ContainerCreating"}})
    pending["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "x"}
    ]
    assert pod_failure(pending) is None
    f = pod_failure(_pod({"waiting": {"reason": "CreateContainerConfigError", "message": "k"}}))
    assert f is not None and f.reason == "CreateContainerConfigError" and "k" in f.message
    assert pod_failure(_pod({"running": {}})) is None
    cond = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "X"}]}}
    assert condition_failure(cond) == Failure("X", "X")
    assert (
        condition_failure({"status": {"conditions": [{"type": "Failed", "status": "False"}]}})
        is None
    )


# --- hold queue ---------------------------------------------------------------------------


def _state(**kw: Any) -> tuple[ServiceState, list[ServiceState]]:
    woken: list[ServiceState] = []
    args: dict[str, Any] = {"limit": 2, "max_queue": 10, "replicas": 1}
    args.update(kw)
    return ServiceState("ns1", "emb", on_wake=woken.append, **args), woken


async def test_least_inflight_and_per_pod_limit() -> None:
    st, _ = _state()
    st.set_endpoints(["a:1", "b:1"])
    got = [st.try_acquire() for _ in range(4)]
    assert sorted(b.address for b in got if b) == ["a:1", "a:1", "b:1", "b:1"]
    assert st.try_acquire() is None  # both pods at targetConcurrency
    waiter = asyncio.create_task(st.acquire(5))
    await asyncio.sleep(0)
    assert st.queued == 1
    b0 = got[0]
    assert b0 is not None
    st.release(b0)
    b = await waiter
    assert b is b0 and st.inflight == 4 and st.queued == 0


async def test_second_refusal_inside_a_cool_down_re_arms_the_timer() -> None:
    """Issue 11 (7): one pod; a refusal cools it down; a second refusal (another request
    already in flight on it) 0.2 s later extends the cool-down past the first timer.
    The waiter must still get the pod when the second cool-down ends, without any other
    event (before the fix the only timer fired inside the second cool-down and nothing
    dispatched again)."""
    from glowplug.activator import holdqueue

    st, _ = _state(limit=4)
    st.set_endpoints(["a:1"])
    first, second = st.try_acquire(), st.try_acquire()
    assert first is not None and second is not None
    st.cool_down(first)
    st.release(first, completed=False)
    waiter = asyncio.create_task(st.acquire(10))
    await asyncio.sleep(0.2)
    st.cool_down(second)  # the second refusal, inside the first cool-down
    st.release(second, completed=False)
    await asyncio.sleep(0)
    assert not waiter.done() and st.queued == 1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    b = await asyncio.wait_for(waiter, 5 * holdqueue.COOLDOWN_SECONDS)
    waited = loop.time() - t0
    assert b.address == "a:1"
    # Served when the second cool-down ended (0.5 s after it began, 0.3 s from here).
    assert waited < holdqueue.COOLDOWN_SECONDS + 1.0


async def test_backlog_released_one_slot_at_a_time() -> None:
    st, woken = _state(replicas=0, limit=3)
    waiters = [asyncio.create_task(st.acquire(5)) for _ in range(10)]
    await asyncio.sleep(0)
    assert st.queued == 10 and len(woken) == 1  # one wake for ten requests
    st.set_endpoints(["a:1"])
    await asyncio.sleep(0)
    assert sum(w.done() for w in waiters) == 3  # only as many as the pod's slots
    done = [w for w in waiters if w.done()]
    st.release(done[0].result())
    await asyncio.sleep(0)
    assert sum(w.done() for w in waiters) == 4
    for w in waiters:
        w.cancel()


async def test_wake_is_not_lost_when_endpoints_arrive_before_waiting() -> None:
    st, woken = _state(replicas=0)
    task = asyncio.create_task(st.acquire(5))
    st.set_endpoints(["a:1"])  # arrives before the waiter even ran
    b = await task
    assert b.address == "a:1"
    assert woken == []  # ready before anyone had to wait: no wake


async def test_queue_full_timeout_and_cancel_leave_no_trace() -> None:
    st, _ = _state(replicas=0, max_queue=2)
    t1 = asyncio.create_task(st.acquire(5))
    t2 = asyncio.create_task(st.acquire(0.05))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await st.acquire(5)
    with pytest.raises(HoldTimeout):
        await t2
    t1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t1
    assert st.queued == 0 and st.inflight == 0


async def test_cancel_after_slot_handed_over_gives_it_back() -> None:
    st, _ = _state(replicas=0)
    task = asyncio.create_task(st.acquire(5))
    await asyncio.sleep(0)
    st.set_endpoints(["a:1"])  # the waiter's future now holds a slot...
    task.cancel()  # ...but the client leaves before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert st.inflight == 0 and st.backends["a:1"].inflight == 0


async def test_failure_fails_waiters_and_later_requests() -> None:
    st, _ = _state(replicas=0)
    task = asyncio.create_task(st.acquire(5))
    await asyncio.sleep(0)
    st.set_failure(Failure("CrashLoopBackOff", "engine exits"))
    with pytest.raises(ServiceFailed) as err:
        await task
    assert err.value.failure.reason == "CrashLoopBackOff"
    with pytest.raises(ServiceFailed):
        await st.acquire(5)
    st.set_failure(None)
    st.set_endpoints(["a:1"])
    assert (await st.acquire(5)).address == "a:1"


async def test_deleted_service_fails_waiters() -> None:
    st, _ = _state(replicas=0)
    task = asyncio.create_task(st.acquire(5))
    await asyncio.sleep(0)
    st.close()
    with pytest.raises(ServiceGone):
        await task


async def test_removed_endpoint_keeps_counting_its_inflight() -> None:
    st, _ = _state()
    st.set_endpoints(["a:1"])
    b = st.try_acquire()
    assert b is not None
    st.set_endpoints(["b:1"])
    assert "a:1" in st.backends and not st.backends["a:1"].ready
    assert st.try_acquire() is not None and st.backends["b:1"].inflight == 1
    st.release(b)
    assert "a:1" not in st.backends


# --- wake ---------------------------------------------------------------------------------


async def test_waker_one_write_per_wake() -> None:
    scaler = FakeScaler()
    waker = Waker(scaler)
    st = ServiceState("ns1", "emb", limit=1, max_queue=100, replicas=0, on_wake=waker)
    tasks = [asyncio.create_task(st.acquire(5)) for _ in range(50)]
    await asyncio.sleep(0.05)
    assert scaler.writes == 1 and scaler.calls == 1
    assert st.replicas == 1 and st.waking
    st.set_endpoints(["a:1"])
    await asyncio.sleep(0)
    assert not st.waking or st.queued  # still draining the backlog through one slot
    for t in tasks:
        t.cancel()
    await waker.close()


async def test_waker_retries_api_errors_while_requests_wait() -> None:
    scaler = FakeScaler()
    scaler.fail_with = RuntimeError("API down")
    waker = Waker(scaler)
    st = ServiceState("ns1", "emb", limit=1, max_queue=100, replicas=0, on_wake=waker)
    task = asyncio.create_task(st.acquire(5))
    await asyncio.sleep(0.3)
    assert scaler.calls >= 2 and scaler.writes == 0
    scaler.fail_with = None
    await asyncio.sleep(0.5)
    assert scaler.writes == 1
    task.cancel()
    await waker.close()


class FakeCustomObjectsApi:
    """TEST DOUBLE of kubernetes_asyncio's CustomObjectsApi scale calls, with CAS."""

    def __init__(self, replicas: int = 0, conflicts: int = 0) -> None:
        self.replicas = replicas
        self.rv = 1
        self.conflicts = conflicts  # next N writes lose a race to someone else
        self.writes: list[dict[str, Any]] = []
        self.reads = 0
        self.status_patches: list[dict[str, Any]] = []

    async def get_namespaced_custom_object_scale(self, *args: Any) -> dict[str, Any]:
        self.reads += 1
        return {"metadata": {"resourceVersion": str(self.rv)}, "spec": {"replicas": self.replicas}}

    async def patch_namespaced_custom_object_scale(self, *args: Any, **kw: Any) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        body = args[-1]
        assert kw["_content_type"] == "application/merge-patch+json"
        if self.conflicts:
            self.conflicts -= 1
            self.rv += 1  # another writer got there first...
            self.replicas = 0  # ...and, say, the autoscaler scaled to zero
            raise ApiException(status=409, reason="Conflict")
        if body["metadata"]["resourceVersion"] != str(self.rv):
            raise ApiException(status=409, reason="Conflict")
        self.rv += 1
        self.replicas = body["spec"]["replicas"]
        self.writes.append(body)

    async def patch_namespaced_custom_object_status(self, *args: Any, **kw: Any) -> None:
        self.status_patches.append(args[-1])


async def test_kube_scaler_compare_and_swap() -> None:
    api = FakeCustomObjectsApi(conflicts=2)
    assert await KubeScaler(api).raise_from_zero("ns1", "emb") is True
    assert api.replicas == 1 and len(api.writes) == 1
    assert api.writes[0]["metadata"]["resourceVersion"] == "3"  # re-read after each 409
    assert "wakeStartedTime" in api.status_patches[0]["status"]
    # already up (someone else woke it): no write
    assert await KubeScaler(api).raise_from_zero("ns1", "emb") is False
    assert len(api.writes) == 1


async def test_a_wake_writes_with_the_watched_version_before_it_reads() -> None:
    """The watch's resourceVersion, still current: one write and no read. Stale (the
    object changed since): the write's 409 falls back to read, then write."""
    api = FakeCustomObjectsApi()
    assert await KubeScaler(api).raise_from_zero("ns1", "emb", seen_version="1") is True
    assert (api.reads, len(api.writes), api.replicas) == (0, 1, 1)
    api.replicas = 0  # scaled to zero again: now at version 2
    assert await KubeScaler(api).raise_from_zero("ns1", "emb", seen_version="1") is True
    assert (api.reads, len(api.writes), api.writes[-1]["metadata"]["resourceVersion"]) == (
        1,
        2,
        "2",
    )
