"""A small HTTP/1.1 server on asyncio protocols with the httptools parser.

Chosen by measurement over aiohttp's web server (docs/benchmarks.md): the activator's
hot path is mostly HTTP handling, and this costs about half the CPU per request. It does
what the activator needs and no more: keep-alive, pipelined requests answered in order,
Content-Length and chunked request bodies, ``Expect: 100-continue``, a body size limit
(413 before the body is read when Content-Length says so), and handler cancellation
when the client disconnects (a held request leaves its queue at once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

log = logging.getLogger("glowplug.activator.http")

MAX_PIPELINED = 32  # requests buffered on one connection before reading pauses
MAX_HEADER_BYTES = 64 * 1024
# A connection with no request being handled for this long is closed (keep-alive idle,
# or a request that never completes).
IDLE_TIMEOUT = 75.0


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    keep_alive: bool = True
    too_large: bool = False  # the body exceeded the limit and was not kept


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]

_STATUS_LINES: dict[int, bytes] = {}
_INTERNAL_ERROR = json.dumps(
    {"error": {"message": "internal error", "type": "server_error", "param": None, "code": None}}
).encode()


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = f"HTTP/1.1 {status} {phrase}\r\n".encode()
        _STATUS_LINES[status] = line
    return line


def encode(resp: Response, keep_alive: bool) -> bytes:
    head = [
        _status_line(resp.status),
        b"Content-Type: ",
        resp.content_type.encode(),
        b"\r\nContent-Length: ",
        str(len(resp.body)).encode(),
        b"\r\n",
    ]
    for name, value in resp.headers.items():
        head.append(f"{name}: {value}\r\n".encode())
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    head.append(resp.body)
    return b"".join(head)


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.paused = False
        self.last_active = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.dispatched = False  # this message was handed to the handler already

    # asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.pending.clear()
        if self.task is not None and not self.task.done():
            # The client is gone: its handler stops (a held request leaves its queue).
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as err:
            self._fail(400, f"malformed HTTP request: {err}")

    # httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.last_active = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("request headers too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body:
            # Answer 413 now, without reading the body; the connection closes after it.
            self.too_large = True
            self._dispatch(b"")
        elif self.headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.size += len(body)
        if self.size > self.server.max_body:
            self.too_large = True
            self.chunks = []
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.dispatched:
            self._reset()
            return
        self._dispatch(b"".join(self.chunks))

    def _dispatch(self, body: bytes) -> None:
        self.dispatched = True
        try:
            parsed = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self._fail(400, "malformed request URL")
            return
        req = Request(
            method=self.parser.get_method().decode("latin-1"),
            path=(parsed.path or b"/").decode("latin-1"),
            query=(parsed.query or b"").decode("latin-1"),
            headers=self.headers,
            body=body,
            keep_alive=self.parser.should_keep_alive() and not self.too_large,
            too_large=self.too_large,
        )
        self.pending.append(req)
        if len(self.pending) > MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve())

    # ------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while self.pending and not self.closed:
                req = self.pending.popleft()
                if self.paused and len(self.pending) <= MAX_PIPELINED // 2:
                    assert self.transport is not None
                    self.transport.resume_reading()
                    self.paused = False
                try:
                    resp = await self.server.handler(req)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("handler failed for %s %s", req.method, req.path)
                    resp = Response(500, _INTERNAL_ERROR)
                keep_alive = req.keep_alive and not self.server.closing
                if self.closed or self.transport is None:
                    return
                self.transport.write(encode(resp, keep_alive))
                if not keep_alive:
                    self.transport.close()
                    self.closed = True
                    return
        finally:
            self.task = None
            self.last_active = time.monotonic()

    def _fail(self, status: int, message: str) -> None:
        if self.transport is not None and not self.closed:
            err = {"message": message, "type": "invalid_request_error", "param": None}
            body = json.dumps({"error": {**err, "code": "bad_request"}}).encode()
            self.transport.write(encode(Response(status, body), keep_alive=False))
            self.transport.close()
        self.closed = True

    def close_if_idle(self, idle_since: float | None = None) -> None:
        idle = self.task is None and not self.pending and self.transport is not None
        if idle and (idle_since is None or self.last_active < idle_since):
            assert self.transport is not None
            self.transport.close()


class HttpServer:
    """Serves ``handler`` on one address; ``close()`` stops listening, then connections."""

    def __init__(self, handler: Handler, *, max_body: int) -> None:
        self.handler = handler
        self.max_body = max_body
        self.connections: set[_Connection] = set()
        self.closing = False  # answer with Connection: close
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, backlog: int = 1024) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=backlog, reuse_address=True
        )
        self._sweeper = loop.call_later(IDLE_TIMEOUT / 5, self._sweep)
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    def _sweep(self) -> None:
        limit = time.monotonic() - IDLE_TIMEOUT
        for conn in list(self.connections):
            conn.close_if_idle(limit)
        self._sweeper = asyncio.get_running_loop().call_later(IDLE_TIMEOUT / 5, self._sweep)

    def stop_listening(self) -> None:
        """No new connections; open ones are served, and closed when idle."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()

    async def close(self) -> None:
        self.stop_listening()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
