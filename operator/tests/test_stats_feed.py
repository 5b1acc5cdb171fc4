"""The activator's /stats feed over real HTTP: full reads, changes after a cursor, the
long poll, and a restart's new epoch (glowplug.kube.stats is the contract)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from activator_fakes import engines, harness, service_obj

from glowplug.activator.stats import StatsFeed
from glowplug.kube.stats import format_since, parse_reply


async def read(s: aiohttp.ClientSession, url: str, **params: Any) -> dict[str, Any]:
    async with s.get(f"{url}/stats", params={k: str(v) for k, v in params.items()}) as r:
        assert r.status == 200
        body: dict[str, Any] = json.loads(await r.read())
        return body


async def test_idle_services_cost_an_empty_answer_and_a_request_shows_up_at_once() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        for i in range(50):
            h.services.apply_service(service_obj(name=f"svc{i}", replicas=0))
        h.services.apply_service(service_obj(name="warm"))
        h.services.set_endpoints("ns1", "warm", [e.address])
        full = await read(s, h.url)
        assert full["full"] is True and len(full["services"]) == 51
        since = format_since(full["epoch"], full["cursor"])
        empty = await read(s, h.url, since=since)
        assert empty["full"] is False and empty["services"] == {}
        assert empty["cursor"] == full["cursor"]
        # A long poll: held while nothing changes, answered as soon as a request ends.
        poll = asyncio.ensure_future(read(s, h.url, since=since, wait=20))
        await asyncio.sleep(0.3)
        assert not poll.done()
        t0 = time.monotonic()
        async with s.post(f"{h.url}/v1/embeddings", json={"model": "emb", "input": "x"}) as r:
            assert r.status == 404  # no such model: nothing changed
        async with s.post(f"{h.url}/v1/embeddings", json={"model": "ns1/warm", "input": "x"}) as r:
            assert r.status == 200, await r.text()
        delta = await asyncio.wait_for(poll, 5)
        assert time.monotonic() - t0 < 2.0
        assert list(delta["services"]) == ["ns1/warm"]  # in flight, or finished already
        assert delta["cursor"] > full["cursor"]
        while delta["services"]["ns1/warm"]["lastRequestFinished"] is None:
            since = format_since(delta["epoch"], delta["cursor"])
            delta = await read(s, h.url, since=since, wait=5)
            assert list(delta["services"]) == ["ns1/warm"]
        assert delta["services"]["ns1/warm"]["inFlight"] == 0
        # From the new cursor: nothing again, without waiting.
        again = await read(s, h.url, since=format_since(delta["epoch"], delta["cursor"]))
        assert again["services"] == {}


async def test_a_deleted_service_appears_once_with_zeros() -> None:
    async with harness() as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        async with s.post(f"{h.url}/v1/embeddings", json={"model": "emb", "input": "x"}) as r:
            assert r.status == 200
        full = await read(s, h.url)
        assert full["services"]["ns1/emb"]["lastRequestFinished"] is not None
        h.services.delete_service({"metadata": {"namespace": "ns1", "name": "emb"}})
        delta = parse_reply(await read(s, h.url, since=format_since(full["epoch"], full["cursor"])))
        gone = delta.services["ns1/emb"]
        assert (gone.in_flight, gone.last_request_finished) == (0, None)


async def test_another_epoch_or_an_impossible_cursor_gets_a_full_read() -> None:
    async with harness() as h, aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj(replicas=0))
        full = await read(s, h.url)
        for since in ("restarted:0", format_since(full["epoch"], full["cursor"] + 5), "junk"):
            body = await read(s, h.url, since=since, wait=10)
            assert body["full"] is True and "ns1/emb" in body["services"], since


async def test_a_wake_that_ends_without_a_request_is_reported() -> None:
    """Waking changes with no request on the path (the wake's pod became ready after the
    request gave up): the feed keeps looking at services it published as busy."""
    async with harness() as h:
        h.services.apply_service(service_obj(replicas=0))
        feed = h.activator.feed
        state = h.state()
        state.wake_started = time.monotonic()  # a wake in progress, as the waker sets it
        feed.touch(state.ref)
        feed.collect()
        cursor = feed.cursor
        assert feed.busy == {state.ref}
        state.wake_started = None  # the wake ended: no hook tells the feed
        body = await feed.answer(format_since(feed.epoch, cursor), wait=3.0)
        assert body["services"][state.ref]["waking"] is False


async def test_an_idle_feed_looks_at_no_service_between_sweeps() -> None:
    async with harness() as h:
        for i in range(20):
            h.services.apply_service(service_obj(name=f"svc{i}", replicas=0))
        clock = [100.0]
        feed = StatsFeed(h.services, "t", clock=lambda: clock[0])
        feed.full()
        sweeps = feed.sweeps
        clock[0] += 1.0
        feed.collect()
        assert feed.sweeps == sweeps and not feed.busy and not feed.dirty
        clock[0] += 5.0
        feed.collect()
        assert feed.sweeps == sweeps + 1
