"""The operator's event plumbing: pokes on load changes and the start-up rate gate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from glowplug.operator.activity import Snapshot
from glowplug.operator.autoscaler import ActivatorLoad
from glowplug.operator.pokes import Pokes, poke_on_load
from glowplug.operator.serviceapi import RateGate


class SnapshotsDouble:
    """A test double of the load reader: the test sets the per-service figures."""

    def __init__(self) -> None:
        self.per_service: dict[str, list[ActivatorLoad]] = {}

    async def snapshot(self) -> Snapshot:
        return Snapshot(time.time(), dict(self.per_service), 0, 1)

    async def refresh(self, services: Sequence[str] | None = None) -> Snapshot:
        return await self.snapshot()


async def test_only_services_whose_load_changed_are_poked() -> None:
    reader = SnapshotsDouble()
    reader.per_service = {"ns/a": [ActivatorLoad()], "ns/b": [ActivatorLoad()]}
    pokes = Pokes()
    a, b = pokes.event("ns", "a"), pokes.event("ns", "b")
    task = asyncio.create_task(poke_on_load(reader, pokes, 0.02))
    try:
        await asyncio.sleep(0.05)
        a.clear()
        b.clear()
        reader.per_service = {"ns/a": [ActivatorLoad(queued=1)], "ns/b": [ActivatorLoad()]}
        await asyncio.wait_for(a.wait(), 2)
        assert not b.is_set()
        reader.per_service = {"ns/a": [ActivatorLoad(queued=1)]}  # b left the activator
        await asyncio.wait_for(b.wait(), 2)
    finally:
        task.cancel()


async def test_rate_gate_spreads_passes() -> None:
    gate = RateGate(100.0)
    t0 = time.monotonic()
    await asyncio.gather(*(gate.wait() for _ in range(20)))
    assert time.monotonic() - t0 >= 0.18  # 20 passes at 100/s: the last after 0.19 s
