"""Timers owned by one loop: the scheduler itself (real asyncio, real clock), and a
service's loop run only when it says it is due or an event comes, as the daemon runs it.

The loop tests drive ``ServiceLoop`` against the cluster API test double of
``test_scaling_loop`` on a simulated clock: a tick happens at ``loop.next_due`` or at a
scripted event (a load change, a pod change: what the pod informer and the activators'
changes feed would poke), never otherwise. Each checks what the tick-every-second
driver there checks (the same scale writes at the same moments, the same ledger
totals) with a fraction of the ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_scaling_loop import T0, Clock, ClusterAPIDouble, a_pod, embsvc, make, run_until

from glowplug.operator.autoscaler import ActivatorLoad
from glowplug.operator.serviceloop import Options, ServiceLoop
from glowplug.operator.timers import Timers

# --- the scheduler ---------------------------------------------------------------------


async def test_timers_fire_in_order_once_each_and_only_when_scheduled() -> None:
    fired: list[tuple[str, float]] = []
    timers = Timers(lambda ns, name: fired.append((name, time.time())))
    timers.start()
    try:
        t = time.time()
        timers.schedule("ns", "late", t + 0.4)
        timers.schedule("ns", "early", t + 0.1)
        timers.schedule("ns", "moved", t + 0.05)
        timers.schedule("ns", "moved", t + 0.25)  # rescheduled: the first entry is stale
        timers.schedule("ns", "cancelled", t + 0.15)
        timers.cancel("ns", "cancelled")
        assert timers.pending() == 3
        await asyncio.sleep(0.7)
        assert [n for n, _ in fired] == ["early", "moved", "late"]
        for (_, at), due in zip(fired, (0.1, 0.25, 0.4), strict=True):
            assert at >= t + due - 0.01  # never early
        assert timers.pending() == 0 and timers.fired == 3
        # A deadline earlier than the one the task sleeps to wakes it.
        timers.schedule("ns", "far", time.time() + 60)
        await asyncio.sleep(0.05)
        timers.schedule("ns", "near", time.time() + 0.05)
        await asyncio.sleep(0.3)
        assert [n for n, _ in fired][-1] == "near" and timers.pending() == 1
    finally:
        await timers.close()


async def test_reschedules_do_not_grow_the_heap_without_bound() -> None:
    timers = Timers(lambda ns, name: None)
    t = time.time() + 3600
    for i in range(10_000):
        timers.schedule("ns", f"s{i % 10}", t + i)
    assert timers.pending() == 10
    assert len(timers.heap) <= 2 * 10 + 64 + 1


# --- a service's loop run only when due --------------------------------------------------


async def run_due(
    loop: ServiceLoop,
    api: ClusterAPIDouble,
    clock: Clock,
    end: float,
    events: dict[float, Callable[[], None]] | None = None,
) -> list[float]:
    """Tick at ``clock.t``, then at each next due time or scripted event until ``end``;
    returns the tick times."""
    pending = dict(events or {})
    ticks: list[float] = []
    while clock.t < end:
        for at in sorted(t for t in pending if t <= clock.t):
            pending.pop(at)()
        await loop.tick(copy.deepcopy(api.obj))
        ticks.append(clock.t)
        due = [t for t in (loop.next_due, min(pending, default=None)) if t is not None]
        if not due:
            break
        clock.t = max(clock.t + 0.01, min(due))
    clock.t = max(clock.t, end)
    return ticks


def scale_times(api: ClusterAPIDouble, log: list[tuple[float, int]], clock: Clock) -> None:
    """Record when each scale write lands (wraps the double's write_scale)."""
    write = api.write_scale

    async def recorded(namespace: str, name: str, replicas: int, rv: str) -> bool:
        ok = await write(namespace, name, replicas, rv)
        if ok:
            log.append((clock.t, replicas))
        return ok

    api.write_scale = recorded  # type: ignore[method-assign]


def burst(load: object) -> dict[float, Callable[[], None]]:
    def busy() -> None:
        load.loads = [ActivatorLoad(queued=20), ActivatorLoad(queued=20)]  # type: ignore[attr-defined]

    def done() -> None:
        load.loads = [ActivatorLoad(last_request_finished=T0 + 2)]  # type: ignore[attr-defined]

    return {T0: busy, T0 + 2: done}


async def test_scale_down_delay_and_idle_deadline_come_from_timers() -> None:
    """The burst of ``test_burst_scales_at_once_then_idle_goes_to_zero``: up to 5 at
    once, to 1 when scaleDownDelay (5 s) has passed, to 0 at idleTimeout (30 s) after
    the last request; every second versus only when due."""
    results = []
    for driver in ("every second", "when due"):
        api, load, clock = make(replicas=1)
        writes: list[tuple[float, int]] = []
        scale_times(api, writes, clock)
        loop = ServiceLoop(api, load, Options(checkpoint_every=10.0), clock=clock)
        if driver == "every second":
            events = burst(load)
            for t in sorted(events):
                await run_until(loop, api, clock, t)
                events[t]()
            await run_until(loop, api, clock, T0 + 60)
            ticks = 60
        else:
            ticks = len(await run_due(loop, api, clock, T0 + 60, burst(load)))
        results.append((writes, ticks))
    (every, _), (due, ticks) = results
    assert [r for _, r in every] == [r for _, r in due] == [5, 1, 0]
    for (t1, _), (t2, _) in zip(every, due, strict=True):
        assert t2 == pytest.approx(t1, abs=1.0)  # the per-second driver rounds up
    assert due[1][0] == pytest.approx(T0 + 7) and due[2][0] == pytest.approx(T0 + 32)
    assert ticks <= 15, f"{ticks} ticks in 60 s when due"


async def test_a_held_gpu_ticks_at_the_checkpoint_and_the_ledger_stays_exact() -> None:
    """One ready pod at minReplicas 1 and no load: the loop runs at each ledger
    checkpoint (10 s), not every second, and the totals are the per-second driver's."""
    totals = []
    for driver in ("every second", "when due"):
        api, load, clock = make(replicas=1, minReplicas=1)
        api.pods = [a_pod("a", T0, ready=True)]
        loop = ServiceLoop(api, load, Options(checkpoint_every=10.0), clock=clock)
        if driver == "every second":
            await run_until(loop, api, clock, T0 + 101)
        else:
            ticks = await run_due(loop, api, clock, T0 + 101)
        totals.append(api.obj["status"]["gpuSeconds"])
    assert totals[0] == totals[1] == pytest.approx(91.0)  # checkpoints at T0 + 1, 11, ..., 91
    assert 10 <= len(ticks) <= 13, ticks
    assert ticks[2] - ticks[1] == pytest.approx(10.0)


async def test_a_service_at_zero_has_no_timer_and_an_event_starts_it() -> None:
    api, load, clock = make(replicas=0)
    loop = ServiceLoop(api, load, Options(), clock=clock)
    ticks = await run_due(loop, api, clock, T0 + 3600)
    assert ticks == [T0] and loop.next_due is None  # one tick, then nothing for an hour
    assert api.obj["spec"]["replicas"] == 0

    def request() -> None:
        load.loads = [ActivatorLoad(queued=1, waking=True)]

    ticks = await run_due(loop, api, clock, clock.t + 5, {clock.t + 1: request})
    assert api.obj["spec"]["replicas"] == 1 and ticks[1] == pytest.approx(T0 + 3601)


async def test_a_wake_waiting_for_a_node_polls_its_events_and_times_out() -> None:
    """A pod without a node: no pod change says a node autoscaler gave up or that
    nodeWaitTimeout passed, so the loop polls while it waits, then stops polling."""
    api, load, clock = make(replicas=0, nodeWaitTimeout="20s")
    loop = ServiceLoop(api, load, Options(), clock=clock)
    pod = a_pod("a", T0)
    del pod["spec"]["nodeName"]
    pod["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    ]

    def request() -> None:
        load.loads = [ActivatorLoad(queued=1, waking=True)]

    def pod_created() -> None:
        api.pods = [pod]

    ticks = await run_due(loop, api, clock, T0 + 40, {T0 + 1: request, T0 + 2: pod_created})
    reasons = [c.get("reason") for c in api.obj["status"].get("conditions", [])]
    assert "NodeWaitTimeout" in reasons
    assert api.event_reads >= 15  # polled about once a second while waiting
    assert len(ticks) <= 45


# --- the daemon: ticks on its timer and on pokes, never otherwise ------------------------


class StoppedDouble:
    """A test double of kopf's daemon stopper: falsy until set, ``wait(timeout)``."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason = None

    def __bool__(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float | None = None) -> Awaitable[None]:
        return self._wait(timeout)

    async def _wait(self, seconds: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)


def ticks_so_far() -> float:
    from prometheus_client import REGISTRY

    from glowplug.metrics import AUTOSCALER_TICKS

    return REGISTRY.get_sample_value(AUTOSCALER_TICKS) or 0.0


async def run_daemon(
    obj: dict[str, Any], pods: list[dict[str, Any]], seconds: float, poke_at: float | None
) -> tuple[float, float]:
    """Run one service's daemon against the API double for ``seconds`` (real time),
    poking it once at ``poke_at``; returns (ticks before the poke, ticks in all)."""
    from glowplug.operator.daemon import Daemons

    daemons = Daemons(Options(interval=0.1, checkpoint_every=0.5))
    api = ClusterAPIDouble(obj, time.time)
    api.pods = pods
    daemons.api = api
    daemons.timers = Timers(daemons.pokes.poke)
    daemons.timers.start()
    stopped = StoppedDouble()
    start = ticks_so_far()
    task = asyncio.create_task(daemons.daemon(body=api.obj, stopped=stopped))
    before = 0.0
    try:
        if poke_at is not None:
            await asyncio.sleep(poke_at)
            before = ticks_so_far() - start
            daemons.pokes.poke("ns", "svc")
            await asyncio.sleep(seconds - poke_at)
        else:
            await asyncio.sleep(seconds)
            before = ticks_so_far() - start
        return before, ticks_so_far() - start
    finally:
        stopped.event.set()
        await asyncio.wait_for(task, 5)
        assert daemons.timers.pending() == 0  # its timer went with it
        await daemons.timers.close()


async def test_the_daemon_of_an_idle_service_at_zero_ticks_only_when_poked() -> None:
    obj = embsvc(0)
    before, total = await run_daemon(obj, [], 1.5, poke_at=1.0)
    assert before == 1  # the first tick, then no timer: nothing for a second
    assert total == 2  # the poke


async def test_the_daemon_of_a_held_gpu_ticks_at_its_checkpoints() -> None:
    """interval 0.1 s, checkpoints every 0.5 s: about 5 ticks in 2 s (the loop that
    ticked every interval made 20)."""
    obj = embsvc(1, minReplicas=1)
    obj["spec"]["scaling"]["autoscale"] = False
    before, _ = await run_daemon(obj, [a_pod("a", time.time() - 5, ready=True)], 2.0, None)
    assert 2 <= before <= 10, before
