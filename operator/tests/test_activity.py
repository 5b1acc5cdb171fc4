"""Reading activators' /stats: parsing, discovery, and real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from activator_fakes import harness, service_obj
from aiohttp import web

from glowplug.operator.activity import (
    LoadReader,
    StaticDiscovery,
    endpoint_urls,
    parse_stats,
)
from glowplug.operator.autoscaler import ActivatorLoad


def stats_body(**services: dict[str, Any]) -> dict[str, Any]:
    return {"activator": "a", "time": 1.0, "services": services}


def test_parse_stats() -> None:
    out = parse_stats(
        stats_body(
            **{
                "ns/svc": {
                    "namespace": "ns",
                    "name": "svc",
                    "inFlight": 3,
                    "queued": 2,
                    "waking": True,
                    "lastRequestFinished": 12.5,
                },
                "ns/idle": {
                    "inFlight": 0,
                    "queued": 0,
                    "waking": False,
                    "lastRequestFinished": None,
                },
            }
        )
    )
    assert out["ns/svc"] == ActivatorLoad(3, 2, True, 12.5)
    assert out["ns/idle"] == ActivatorLoad()
    for bad in (
        {},
        {"services": []},
        {"services": {"x": 1}},
        {"services": {"x": {"inFlight": "many"}}},
    ):
        with pytest.raises(ValueError):
            parse_stats(bad)


def test_endpoint_urls_keep_draining_pods() -> None:
    slices = {
        "items": [
            {
                "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}],
                "endpoints": [
                    {"addresses": ["10.244.0.5"], "conditions": {"ready": True}},
                    {
                        "addresses": ["10.244.0.6"],
                        "conditions": {"ready": False, "serving": True, "terminating": True},
                    },
                    {
                        "addresses": ["10.244.0.7"],
                        "conditions": {"ready": False, "serving": False, "terminating": False},
                    },
                    {"addresses": ["10.244.0.8"], "conditions": {}},
                ],
            },
            {"ports": [], "endpoints": [{"addresses": ["10.244.0.9"]}]},
        ]
    }
    assert endpoint_urls(slices) == [
        "http://10.244.0.5:8000",
        "http://10.244.0.6:8000",
        "http://10.244.0.8:8000",
    ]


class StatsServerDouble:
    """A real HTTP server on 127.0.0.1 that answers /stats with what the test sets."""

    def __init__(self) -> None:
        self.body: Any = stats_body()
        self.status = 200
        self.calls = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, _request: web.Request) -> web.Response:
        self.calls += 1
        if isinstance(self.body, str):
            return web.Response(text=self.body, status=self.status)
        return web.json_response(self.body, status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/stats", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[list[StatsServerDouble]]:
    out = [StatsServerDouble(), StatsServerDouble()]
    for s in out:
        await s.start()
    yield out
    for s in out:
        await s.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_two_activators_are_summed(servers: list[StatsServerDouble]) -> None:
    a, b = servers
    a.body = stats_body(**{"ns/svc": {"inFlight": 5, "queued": 1, "lastRequestFinished": 10.0}})
    b.body = stats_body(**{"ns/svc": {"inFlight": 6, "queued": 0, "lastRequestFinished": 20.0}})
    reader = LoadReader(StaticDiscovery([a.url, b.url + "/"]))
    try:
        load = (await reader.snapshot()).load("ns", "svc")
        assert (load.in_flight, load.queued, load.last_request_finished) == (11, 1, 20.0)
        assert load.unreadable == 0
        # a service an activator does not know is idle there
        assert not (await reader.snapshot()).load("ns", "other").busy
    finally:
        await reader.close()


async def test_snapshot_is_shared_within_max_age(servers: list[StatsServerDouble]) -> None:
    a, _ = servers
    reader = LoadReader(StaticDiscovery([a.url]), max_age=60.0)
    try:
        for _ in range(5):
            await reader.snapshot()
        assert a.calls == 1
        await reader.refresh()
        assert a.calls == 2
    finally:
        await reader.close()


@pytest.mark.parametrize("failure", ["refused", "http-500", "not-json", "malformed"])
async def test_an_unreadable_activator_makes_every_service_busy(
    servers: list[StatsServerDouble], failure: str
) -> None:
    good, bad = servers
    urls = [good.url, bad.url]
    if failure == "refused":
        urls[1] = f"http://127.0.0.1:{free_port()}"
    elif failure == "http-500":
        bad.status = 500
    elif failure == "not-json":
        bad.body = "<html>"
    else:
        bad.body = {"services": "none"}
    errors: list[str] = []
    reader = LoadReader(StaticDiscovery(urls), timeout=2.0, on_error=errors.append)
    try:
        snap = await reader.snapshot()
        assert snap.unreadable == 1
        assert snap.load("ns", "anything").busy
        assert errors == [urls[1]]
    finally:
        await reader.close()


async def test_discovery_failure_counts_as_busy() -> None:
    class BrokenDiscoveryDouble:
        async def urls(self) -> list[str]:
            raise RuntimeError("API down")

    reader = LoadReader(BrokenDiscoveryDouble())
    snap = await reader.snapshot()
    assert snap.load("ns", "svc").busy
    await reader.close()


async def test_re_reads_in_one_turn_share_one_round() -> None:
    """Loops that scale to zero in one turn each re-read right before the write: against
    a real activator they cost one request, not one each; a later call is a new round."""
    async with harness() as h:
        for i in range(300):
            h.services.apply_service(service_obj(f"s{i}"))
        h.services.set_endpoints("ns1", "s3", ["127.0.0.1:9"])
        held = h.services.routes["ns1/s3"].state.try_acquire()  # one request in flight
        assert held is not None
        reader = LoadReader(StaticDiscovery([h.url]), timeout=5.0)
        try:
            snaps = await asyncio.gather(*(reader.refresh() for _ in range(50)))
            assert reader.reads == 1
            assert all(s is snaps[0] for s in snaps)
            assert snaps[0].load("ns1", "s3").busy and snaps[0].load("ns1", "s3").in_flight == 1
            assert not snaps[0].load("ns1", "s4").busy
            h.services.routes["ns1/s3"].state.release(held)
            held = None
            later = await reader.refresh()  # sent after the release: sees it
            assert reader.reads == 2
            assert not later.load("ns1", "s3").busy
        finally:
            await reader.close()
            if held is not None:
                h.services.routes["ns1/s3"].state.release(held)


async def test_a_shared_re_read_of_an_unreadable_activator_is_busy_for_all(
    servers: list[StatsServerDouble],
) -> None:
    good, bad = servers
    bad.status = 500
    reader = LoadReader(StaticDiscovery([good.url, bad.url]), timeout=2.0)
    try:
        snaps = await asyncio.gather(reader.refresh(), reader.refresh())
        assert (good.calls, bad.calls) == (1, 1)
        assert all(s.load("ns", "a").busy and s.load("ns", "b").busy for s in snaps)
    finally:
        await reader.close()
