"""Two minimal embeddings proxies, to compare HTTP stacks before choosing one.

Both do the same work per request as the activator's hot path, and nothing more: parse
the JSON body, look ``model`` up in a dict, POST to the backend over a pooled keep-alive
connection, parse the JSON answer, rewrite ``model``, reply.

- server ``aiohttp``: aiohttp's web server; ``httptools``: a raw asyncio protocol with the
  httptools parser; ``uvicorn``: uvicorn's httptools protocol (a maintained HTTP core)
  behind a bare ASGI callable, the alternative issue 13 weighed against hardening ours.
- client ``aiohttp``: a pooled ClientSession; ``httptools``: a hand-written pooled
  HTTP/1.1 client on raw asyncio connections with the httptools response parser.

Server and client are chosen separately, to see which half costs what.
Run: ``python -m e2e.bench.stacks SERVER CLIENT PORT BACKEND_HOST:PORT [uvloop]`` with
SERVER ``aiohttp``, ``httptools`` or ``uvicorn``, CLIENT ``aiohttp`` or ``httptools``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

ROUTES: dict[str, str] = {}


def rewrite(body: bytes, model: str) -> bytes:
    doc = json.loads(body)
    doc["model"] = model
    return json.dumps(doc, separators=(",", ":")).encode()


class AiohttpClient:
    def __init__(self, backend: str) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.url = f"http://{backend}/v1/embeddings"

    async def post(self, body: bytes) -> bytes:
        async with self.session.post(
            self.url, data=body, headers={"Content-Type": "application/json"}
        ) as r:
            return await r.read()


async def run_aiohttp(port: int, client: Any) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        req = json.loads(body)
        _ = ROUTES[req["model"]]
        data = await client.post(body)
        return web.Response(body=rewrite(data, req["model"]), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/embeddings", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the backend; one request at a time."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.fut: asyncio.Future[bytes] | None = None
        self.chunks: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError("upstream closed"))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(b"".join(self.chunks))
        self.chunks = []

    async def request(self, head: bytes, body: bytes) -> bytes:
        assert self.transport is not None
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(head + body)
        return await self.fut


class Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Upstream] = []

    async def post(self, body: bytes) -> bytes:
        conn = None
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                conn = c
                break
        if conn is None:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(Upstream, self.host, self.port)
        head = (
            b"POST /v1/embeddings HTTP/1.1\r\nHost: backend\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        data = await conn.request(head, body)
        self.idle.append(conn)
        return data


class Downstream(asyncio.Protocol):
    def __init__(self, pool: Any) -> None:
        import httptools

        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.chunks)
        self.chunks = []
        asyncio.get_running_loop().create_task(self.handle(body))

    async def handle(self, body: bytes) -> None:
        req: Any = json.loads(body)
        _ = ROUTES[req["model"]]
        data = rewrite(await self.pool.post(body), req["model"])
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(data)).encode()
            + b"\r\n\r\n"
            + data
        )


async def run_httptools(port: int, pool: Any) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(pool), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


async def run_uvicorn(port: int, client: Any) -> None:
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        req: Any = json.loads(body)
        _ = ROUTES[req["model"]]
        data = rewrite(await client.post(body), req["model"])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=1024,
    )
    await uvicorn.Server(config).serve()


SERVERS = {"aiohttp": run_aiohttp, "httptools": run_httptools, "uvicorn": run_uvicorn}


def main() -> None:
    server, client, port, backend = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if len(sys.argv) > 5 and sys.argv[5] == "uvloop":
        import uvloop

        uvloop.install()
    ROUTES["bench"] = backend

    async def start() -> None:
        host, bport = backend.rsplit(":", 1)
        up = AiohttpClient(backend) if client == "aiohttp" else Pool(host, int(bport))
        await SERVERS[server](port, up)

    asyncio.run(start())


if __name__ == "__main__":
    main()
