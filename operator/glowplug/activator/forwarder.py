"""The upstream client: pooled keep-alive HTTP/1.1 connections to pods, built on httptools.

Chosen by measurement (docs/benchmarks.md): aiohttp's ClientSession cost about twice the
CPU per request of this small client, and the activator's hot path is mostly this.
It sends only what the activator needs (``POST /v1/embeddings`` with a Content-Length
body) and reads Content-Length or chunked answers.

Failures are sorted by what may be retried:

- ``ConnectFailed``: nothing reached the engine (refused, unreachable, connect timeout):
  safe to retry on another endpoint until the request's deadline.
- ``DroppedBeforeResponse``: the connection broke after sending, before any response
  byte: embeddings are idempotent, so the caller retries once. Pooled connections idle
  longer than ``IDLE_SECONDS`` or closed by the pod are never reused, so a drop is a
  real one.
- ``BrokenResponse`` / ``UpstreamTimeout``: the response had started, or the engine took
  too long: never retried.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httptools

CONNECT_TIMEOUT = 3.0
# Idle pooled connections are dropped before engines time them out (uvicorn's default
# keep-alive, which SGLang uses, is 5 s), so a reused connection is rarely a dead one.
IDLE_SECONDS = 4.0
MAX_IDLE_PER_ADDRESS = 512


class UpstreamError(Exception):
    pass


class ConnectFailed(UpstreamError):
    pass


class DroppedBeforeResponse(UpstreamError):
    pass


class BrokenResponse(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class _Connection(asyncio.Protocol):
    """One keep-alive connection to one pod; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.status = 0
        self.started = False  # a response byte arrived for the current request
        self.keep_alive = True
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self.waiter
        if w is not None and not w.done():
            kind = BrokenResponse if self.started else DroppedBeforeResponse
            w.set_exception(kind(f"connection closed by the engine{f': {exc}' if exc else ''}"))

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for: the connection cannot be trusted any more.
            self.close()
            return
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self.close()
            if not self.waiter.done():
                self.waiter.set_exception(BrokenResponse(f"bad HTTP from the engine: {err}"))

    # httptools callbacks ----------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        w = self.waiter
        body = b"".join(self.chunks)
        self.chunks = []
        if w is not None and not w.done():
            w.set_result((self.status, body))

    # ------------------------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.started = False
        self.transport.write(data)
        return self.waiter

    def done(self) -> None:
        self.waiter = None
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Forwarder:
    """POSTs request bodies to pods over pooled keep-alive connections."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[str, list[_Connection]] = {}
        self._heads: dict[str, bytes] = {}
        self._closing = False
        self._sweeper: asyncio.TimerHandle | None = None

    def _head(self, address: str) -> bytes:
        head = self._heads.get(address)
        if head is None:
            head = (
                f"POST /v1/embeddings HTTP/1.1\r\nHost: {address}\r\n"
                f"Content-Type: application/json\r\nAccept: application/json\r\n"
                f"Content-Length: "
            ).encode()
            self._heads[address] = head
        return head

    def _pooled(self, address: str) -> _Connection | None:
        idle = self._idle.get(address)
        if not idle:
            return None
        limit = time.monotonic() - IDLE_SECONDS
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > limit:
                return conn
            conn.close()
        return None

    async def _connect(self, address: str) -> _Connection:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Connection, host, int(port))
        except TimeoutError:
            raise ConnectFailed(
                f"connect to {address}: no answer within {self.connect_timeout:g}s"
            ) from None
        except OSError as err:
            raise ConnectFailed(f"connect to {address}: {err.strerror or err}") from None
        return conn

    def _sweep(self) -> None:
        """Close idle connections past IDLE_SECONDS, including those to pods that left."""
        limit = time.monotonic() - IDLE_SECONDS
        for address in list(self._idle):
            keep = []
            for conn in self._idle[address]:
                if conn.closed or conn.idle_since <= limit:
                    conn.close()
                else:
                    keep.append(conn)
            if keep:
                self._idle[address] = keep
            else:
                del self._idle[address]
                self._heads.pop(address, None)
        self._sweeper = None
        if self._idle and not self._closing:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._sweep)

    async def post(self, address: str, body: bytes, limit_s: float) -> tuple[int, bytes]:
        """Send one request; return (status, body) or raise an UpstreamError."""
        if self._sweeper is None and not self._closing:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._sweep)
        data = self._head(address) + str(len(body)).encode() + b"\r\n\r\n" + body
        conn = self._pooled(address) or await self._connect(address)
        try:
            async with asyncio.timeout(limit_s):
                status, payload = await conn.send(data)
        except TimeoutError:
            conn.close()
            raise UpstreamTimeout(f"no complete response within {limit_s:g}s") from None
        except BaseException:
            conn.close()
            raise
        conn.done()
        if conn.keep_alive and not conn.closed and not self._closing:
            idle = self._idle.setdefault(address, [])
            if len(idle) < MAX_IDLE_PER_ADDRESS:
                idle.append(conn)
                return status, payload
        conn.close()
        return status, payload

    async def close(self) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)

    def pooled(self) -> dict[str, Any]:
        return {a: len(c) for a, c in self._idle.items()}
