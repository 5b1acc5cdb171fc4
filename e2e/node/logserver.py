"""The slice of the kubelet API that ``kubectl logs`` needs: ``/containerLogs``.

The API server proxies ``pods/log`` to the node's InternalIP and kubelet port over HTTPS,
presenting its kubelet client certificate; this server requires that certificate (signed
by the test bed's CA) and answers from the container log files the agent writes.
``follow``, ``tailLines`` and ``limitBytes`` are honoured; ``previous`` is not (a log file
holds every run of the container, each started by a ``--- <time> start:`` line).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

# (namespace, pod, container) -> whether that container's process is running now.
Running = Callable[[str, str, str], bool]


def _tail(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


class LogServer:
    def __init__(
        self, pods_dir: Path, port: int, cert: str, key: str, client_ca: str, running: Running
    ) -> None:
        self.pods_dir = pods_dir
        self.running = running
        self.port = port
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.runner: web.AppRunner | None = None

    def _log_file(self, namespace: str, pod: str, container: str) -> Path | None:
        dirs = sorted(self.pods_dir.glob(f"{namespace}_{pod}_*"), key=lambda d: d.stat().st_mtime)
        for d in reversed(dirs):
            f = d / f"{container}.log"
            if f.exists():
                return f
        return None

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        ns, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        path = self._log_file(ns, pod, container)
        if path is None:
            raise web.HTTPNotFound(text=f"no log for {ns}/{pod}/{container} on this node\n")
        q = request.query
        data = path.read_bytes()
        if "tailLines" in q:
            data = _tail(data, int(q["tailLines"]))
        if "limitBytes" in q:
            data = data[: int(q["limitBytes"])]
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(data)
        if q.get("follow") in ("true", "1"):
            offset = path.stat().st_size
            # Follow while the container runs and the client listens (kubectl logs -f).
            while True:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                running = self.running(ns, pod, container)
                size = path.stat().st_size
                if size > offset:
                    with open(path, "rb") as f:  # noqa: ASYNC230 (small local reads)
                        f.seek(offset)
                        await resp.write(f.read(size - offset))
                    offset = size
                if not running:
                    break
                await asyncio.sleep(0.2)
        await resp.write_eof()
        return resp

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self.container_logs)
        app.router.add_get("/healthz", self.healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        # All addresses: the API server dials the node's InternalIP (the pods' gateway
        # address); only clients holding a certificate from the test bed's CA get in.
        await web.TCPSite(self.runner, "0.0.0.0", self.port, ssl_context=self.ctx).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
