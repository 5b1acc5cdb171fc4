"""API calls time out against a silent server, and an outage is logged once (issue 11, 7)."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import pytest
from kubernetes_asyncio import client

from glowplug.kube import client as kubeclient
from glowplug.kube.outage import Outage, is_unreachable


async def test_a_call_without_its_own_timeout_times_out_on_a_silent_api_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listening socket that never answers: what a SIGSTOPped API server looks like
    (the kernel accepts the connection, nobody reads it)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    monkeypatch.setattr(
        kubeclient,
        "DEFAULT_TIMEOUT",
        aiohttp.ClientTimeout(total=None, connect=1, sock_connect=1, sock_read=0.5),
    )
    conf = client.Configuration(host=f"http://127.0.0.1:{port}")
    api = kubeclient.TimeoutApiClient(conf)
    try:
        core = client.CoreV1Api(api)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(core.list_namespaced_pod("default"), 20)
        assert is_unreachable(info.value), repr(info.value)
        assert loop.time() - t0 < 10  # the read timeout ended it, not wait_for's 20 s
    finally:
        await api.close()
        silent.close()


def test_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.outage")
    outage = Outage(log)
    with caplog.at_level(logging.WARNING, logger="test.outage"):
        for _ in range(50):  # 50 loops failing once a second each
            outage.failed(TimeoutError("read timed out"))
        assert outage.down
        outage.ok()
        outage.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unreachable" in lines[0] and "TimeoutError" in lines[0]
    assert "answers again" in lines[1] and "50 failed calls" in lines[1]
    assert not outage.down
    assert not is_unreachable(ValueError("a 400 is an answer"))


def test_outage_ends_when_every_failing_loop_is_back(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage(logging.getLogger("test.outage2"))
    with caplog.at_level(logging.WARNING, logger="test.outage2"):
        outage.failed(TimeoutError(), "EndpointSlice/ns")
        outage.failed(TimeoutError(), "EmbeddingService/ns")
        outage.ok("EndpointSlice/ns")  # one path answers, the other still fails
        assert outage.down
        outage.failed(TimeoutError(), "EmbeddingService/ns")
        outage.forget("EmbeddingService/ns")  # its loop ended (the service was deleted)
        assert not outage.down
    assert len(caplog.records) == 2
