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
