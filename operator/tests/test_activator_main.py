"""`glowplug activator --static-config` as a real process: wake, serve, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import yaml
from activator_fakes import engines, service_obj, until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(
    session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process
) -> None:
    for _ in range(300):
        assert proc.returncode is None, "activator exited early"
        try:
            async with session.get(f"{url}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("activator never became ready")


async def test_static_config_wake_and_graceful_shutdown(tmp_path: Path) -> None:
    async with engines(2) as (warm, cold):
        warm_svc = {**service_obj("warm", "demo"), "endpoints": [warm.address]}
        cold_svc = {
            **service_obj("cold", "demo", replicas=0),
            "wakeEndpoints": [cold.address],
            "wakeDelaySeconds": 0.3,
        }
        config = tmp_path / "static.yaml"
        config.write_text(yaml.safe_dump({"services": [warm_svc, cold_svc]}))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "glowplug.cli", "activator",
            "--host", "127.0.0.1", "--port", str(port),
            "--static-config", str(config), "--drain-seconds", "0.5",
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as s:
                await wait_ready(s, url, proc)
                async with s.post(
                    f"{url}/v1/embeddings", json={"model": "cold", "input": "x"}
                ) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["model"] == "cold"
                # graceful shutdown: an in-flight request finishes, /readyz fails meanwhile
                warm.gate = asyncio.Event()
                slow = asyncio.create_task(
                    s.post(f"{url}/v1/embeddings", json={"model": "warm", "input": "x"})
                )
                await until(lambda: warm.concurrent > 0)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                async with s.get(f"{url}/readyz") as r:
                    assert r.status == 503
                async with s.get(f"{url}/stats") as r:
                    stats = json.loads(await r.read())
                assert stats["services"]["demo/warm"]["inFlight"] == 1
                await asyncio.sleep(0.5)  # past the drain delay: still waiting for the request
                assert proc.returncode is None
                warm.gate.set()
                resp = await slow
                assert resp.status == 200
                resp.release()
                assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_internal_port_and_keys_from_the_static_config(tmp_path: Path) -> None:
    key = "gp-main-test-key-0123456789"
    async with engines(1) as (e,):
        svc = {**service_obj("warm", "demo"), "endpoints": [e.address]}
        secret = {"metadata": {"name": "k", "namespace": "demo"}, "stringData": {"key": key}}
        config = tmp_path / "static.yaml"
        config.write_text(yaml.safe_dump({"services": [svc], "apiKeys": [secret]}))
        port, internal = free_port(), free_port()
        url, iurl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{internal}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "glowplug.cli", "activator",
            "--host", "127.0.0.1", "--port", str(port), "--internal-port", str(internal),
            "--static-config", str(config), "--auth", "required", "--drain-seconds", "0",
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as s:
                await wait_ready(s, url, proc)
                auth = {"Authorization": f"Bearer {key}"}
                body = {"model": "warm", "input": "x"}
                async with s.post(f"{url}/v1/embeddings", json=body) as r:
                    assert r.status == 401
                async with s.post(f"{url}/v1/embeddings", json=body, headers=auth) as r:
                    assert r.status == 200, await r.text()
                # /stats and /metrics: on the internal port only; probes on both.
                for path in ("/stats", "/metrics"):
                    async with s.get(f"{url}{path}") as r:
                        assert r.status == 404, path
                    async with s.get(f"{iurl}{path}") as r:
                        assert r.status == 200, path
                async with s.get(f"{iurl}/metrics") as r:
                    text = await r.text()
                assert 'glowplug_api_key_requests_total{code="200",key="demo/k"} 1.0' in text
                assert key not in text
                for base in (url, iurl):
                    async with s.get(f"{base}/readyz") as r:
                        assert r.status == 200
                # The API is not on the internal port.
                async with s.post(f"{iurl}/v1/embeddings", json=body, headers=auth) as r:
                    assert r.status == 404
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
