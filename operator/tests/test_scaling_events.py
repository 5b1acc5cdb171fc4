"""The operator's event plumbing: pokes on load changes and the start-up rate gate."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from activator_fakes import engines, harness, service_obj, until

from glowplug.activator.stats import StatsFeed
from glowplug.operator.activity import LoadReader, StaticDiscovery
from glowplug.operator.pokes import Pokes
from glowplug.operator.serviceapi import RateGate


async def test_only_services_whose_load_changed_are_poked() -> None:
    """The reader follows a real activator over HTTP (a long poll of changes): a request
    to one service pokes that service's loop only, and soon."""
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        for name in ("a", "b"):
            h.services.apply_service(service_obj(name=name))
            h.services.set_endpoints("ns1", name, [e.address])
        pokes = Pokes()
        a, b = pokes.event("ns1", "a"), pokes.event("ns1", "b")
        reader = LoadReader(StaticDiscovery([h.url]), wait=20.0)
        task = asyncio.create_task(reader.follow(pokes.poke, 0.05))
        try:
            await until(lambda: reader.reads >= 1)  # the full read
            await asyncio.sleep(0.3)  # and a poll held open: nothing changes
            assert reader.reads == 1
            a.clear()
            b.clear()
            reads = reader.reads
            async with s.post(f"{h.url}/v1/embeddings", json={"model": "a", "input": "x"}) as r:
                assert r.status == 200
            await asyncio.wait_for(a.wait(), 5)
            await until(
                lambda: (
                    (reader._snapshot is not None)
                    and reader._snapshot.load("ns1", "a").last_request_finished is not None
                )
            )
            assert not b.is_set()
            assert reader.reads - reads <= 3  # a held poll answers changes, not a stream
            snap = await reader.snapshot()  # no request while following
            assert reader.reads - reads <= 3 and snap.unreadable == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await reader.close()


async def test_a_restarted_activator_is_read_in_full_again() -> None:
    """A new activator process has another epoch: the reader's cursor means nothing
    there, and the first answer replaces everything it knew of that URL."""
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        async with s.post(f"{h.url}/v1/embeddings", json={"model": "emb", "input": "x"}) as r:
            assert r.status == 200
        reader = LoadReader(StaticDiscovery([h.url]))
        try:
            assert (await reader.refresh()).load("ns1", "emb").last_request_finished
            old = h.activator.feed
            h.activator.feed = StatsFeed(h.services, "restarted")  # as a new process
            h.services.routes["ns1/emb"].state.last_finished = None
            snap = await reader.refresh()
            assert h.activator.feed.epoch != old.epoch
            assert snap.load("ns1", "emb").last_request_finished is None
        finally:
            await reader.close()


async def test_rate_gate_spreads_passes() -> None:
    gate = RateGate(100.0)
    t0 = time.monotonic()
    await asyncio.gather(*(gate.wait() for _ in range(20)))
    assert time.monotonic() - t0 >= 0.18  # 20 passes at 100/s: the last after 0.19 s
