"""A small HTTP/1.1 server on asyncio protocols with the httptools parser.

Chosen by measurement over aiohttp's web server (docs/benchmarks.md): the activator's
hot path is mostly HTTP handling, and this costs about half the CPU per request. It does
what the activator needs and no more: keep-alive, pipelined requests answered in order,
Content-Length and chunked request bodies, ``Expect: 100-continue``, a body size limit
(413 before the body is read when Content-Length says so), and handler cancellation
when the client disconnects (a held request leaves its queue at once).

What one client may cost is capped (``Limits``, docs/activator.md): the request line
and headers while they arrive, header, body, keep-alive and write timeouts, open
connections, request body bytes held by all connections together; reading pauses while
the client does not read its answers; answers, ``100 Continue`` and parse errors go out
in request order; HEAD answers carry no body. Kept over uvicorn's httptools protocol by
measurement (docs/benchmarks.md).
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
# While a request's head (request line and headers) is arriving, bytes are fed to the
# parser in steps of this size and counted, so the cap holds while bytes arrive: the
# parser itself buffers a header value until it is complete.
HEAD_STEP = 4096
SWEEP_INTERVAL = 1.0  # how often timeouts are checked
LINGER = 2.0  # seconds an error answer's connection drains input before closing


@dataclass(frozen=True)
class Limits:
    """What one client may cost (docs/activator.md, "Limits")."""

    max_request_line: int = 8 * 1024  # the URL; longer: 414
    max_head: int = 16 * 1024  # request line and headers together; more: 431
    header_timeout: float = 15.0  # first byte to end of headers; slower: 408
    body_timeout: float = 30.0  # end of headers to end of body; slower: 408
    keepalive_timeout: float = 10.0  # idle between requests; then closed
    write_timeout: float = 30.0  # a client that reads none of its answer this long: closed
    max_connections: int = 4096  # more at once: 503 and closed
    # Request bodies held in memory by all connections together (read, queued or in a
    # handler); a body that would go over it: 503 with Retry-After. A held body costs
    # about three times its size (the body, its parsed JSON, the engine's copy): 128 MiB
    # measured 500 MiB of RSS at most under e2e/bench/hostile.py, within the chart's 1 GiB.
    max_held_bytes: int = 128 * 1024 * 1024
    retry_after: int = 2  # seconds, on the 503s above


class _Refuse(Exception):
    """Raised from a parser callback: answer ``status`` and close."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# Where a connection is, for the timeouts.
_IDLE, _HEAD, _BODY = "idle", "head", "body"


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


def encode(resp: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    """The response's bytes; ``head_only`` (HEAD): the same head, no body (RFC 9110 9.3.2)."""
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
    if not head_only:
        head.append(resp.body)
    return b"".join(head)


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    kind = "invalid_request_error" if status < 500 else "service_unavailable"
    err = {"message": message, "type": kind, "param": None, "code": code}
    return Response(status, json.dumps({"error": err}).encode(), headers=headers or {})


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        # Parsed requests, and at most one final answer (an error found while parsing),
        # answered strictly in order.
        self.pending: deque[Request | Response] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.failed = False  # the parser stopped: nothing more is read
        self.eof = False  # the client sent its FIN (the transport then closes)
        self.read_blocks: set[str] = set()  # why reading is paused
        self.can_write: asyncio.Event | None = None  # set while the write buffer is low
        self.write_paused_since = 0.0
        self.phase = _HEAD  # a new connection must send its request within header_timeout
        self.since = time.monotonic()
        self.head_bytes = 0
        self.held = 0  # request body bytes this connection holds (the server's budget)
        self.continue_due = False  # a 100 Continue waits for earlier answers
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.dispatched = False  # this message was handed to the handler already

    # asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        server = self.server
        if len(server.connections) >= self.limits.max_connections:
            server.refused_connections += 1
            self.failed = self.closed = True
            resp = error_response(
                503,
                f"the activator has {len(server.connections)} connections open, its limit;"
                " retry later",
                "too_many_connections",
                {"Retry-After": str(self.limits.retry_after)},
            )
            transport.write(encode(resp, keep_alive=False))  # type: ignore[attr-defined]
            transport.close()
            return
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.pending.clear()
        self._release(self.held)
        if self.can_write is not None:
            self.can_write.set()
        if self.task is not None and not self.task.done():
            # The client is gone: its handler stops (a held request leaves its queue).
            self.task.cancel()

    def eof_received(self) -> bool:
        # A FIN from the client is taken as a disconnect: the transport closes and a
        # handler in progress is cancelled (a held request leaves its hold queue at once),
        # as nginx and Go's net/http do. On the wire a half-close and a full close look the
        # same, and a client that gave up (SDK timeout, then retry) must not keep a place
        # in the queue until the activation timeout. Documented in docs/activator.md.
        self.eof = True
        return False

    def pause_writing(self) -> None:
        # The client does not read what it is sent: stop reading its requests too.
        self.can_write = asyncio.Event()
        self.write_paused_since = time.monotonic()
        self._block("write")

    def resume_writing(self) -> None:
        if self.can_write is not None:
            self.can_write.set()
            self.can_write = None
        self._unblock("write")

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        if self.phase == _IDLE:
            self.phase, self.since = _HEAD, time.monotonic()
        try:
            while data:
                if self.phase == _BODY:
                    step, data = data, b""
                else:
                    step, data = data[:HEAD_STEP], data[HEAD_STEP:]
                    self.head_bytes += len(step)
                    if self.head_bytes > self.limits.max_head:
                        raise _Refuse(
                            431,
                            f"request line and headers are larger than the limit of"
                            f" {self.limits.max_head} bytes",
                            "headers_too_large",
                        )
                self.parser.feed_data(step)
                if self.failed:
                    return
        except _Refuse as err:
            self._fail(err.status, str(err), err.code)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as err:
            cause = err.__context__
            if isinstance(cause, _Refuse):
                self._fail(cause.status, str(cause), cause.code)
            else:
                self._fail(400, f"malformed HTTP request: {err}")

    # httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        if self.phase == _IDLE:
            self.phase, self.since = _HEAD, time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_request_line:
            raise _Refuse(
                414,
                f"request URL is longer than the limit of {self.limits.max_request_line} bytes",
                "uri_too_long",
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self.phase, self.since = _BODY, time.monotonic()
        length = self.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > self.server.max_body:
            # Answer 413 now, without reading the body; the connection closes after it.
            self.too_large = True
            self._dispatch(b"")
            return
        if declared is not None and not self._budget_allows(declared):
            raise self._budget_refusal()
        if self.headers.get("expect", "").lower() == "100-continue":
            if self.task is None and not self.pending:
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            else:
                # Earlier answers first: it goes out when they are written.
                self.continue_due = True

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.size += len(body)
        if self.size > self.server.max_body:
            self.too_large = True
            self._release(sum(len(c) for c in self.chunks))
            self.chunks = []
            return
        if not self._budget_allows(len(body)):
            raise self._budget_refusal()
        self._hold(len(body))
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.phase, self.since = _IDLE, time.monotonic()
        self.head_bytes = 0
        if self.dispatched:
            self._reset()
            return
        body = b"".join(self.chunks)
        self.chunks = []  # the joined copy is the only one kept
        self._dispatch(body)

    def _dispatch(self, body: bytes) -> None:
        self.dispatched = True
        try:
            parsed = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError as err:
            raise _Refuse(400, "malformed request URL", "bad_request") from err
        req = Request(
            method=self.parser.get_method().decode("latin-1"),
            path=(parsed.path or b"/").decode("latin-1"),
            query=(parsed.query or b"").decode("latin-1"),
            headers=self.headers,
            body=body,
            keep_alive=self.parser.should_keep_alive() and not self.too_large,
            too_large=self.too_large,
        )
        self._enqueue(req)

    # ------------------------------------------------------------------------------------

    def _enqueue(self, item: Request | Response) -> None:
        self.pending.append(item)
        if len(self.pending) > MAX_PIPELINED:
            self._block("pipeline")
        if self.task is None and not self.closed:
            self.task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        try:
            while self.pending and not self.closed:
                item = self.pending.popleft()
                if len(self.pending) <= MAX_PIPELINED // 2:
                    self._unblock("pipeline")
                if isinstance(item, Response):
                    # An error found while parsing: the last answer on this connection.
                    self._write(encode(item, keep_alive=False))
                    self._linger()
                    return
                req = item
                try:
                    resp = await self.server.handler(req)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("handler failed for %s %s", req.method, req.path)
                    resp = Response(500, _INTERNAL_ERROR)
                finally:
                    self._release(len(req.body))
                keep_alive = req.keep_alive and not self.server.closing
                if self.closed or self.transport is None:
                    return
                self._write(encode(resp, keep_alive, head_only=req.method == "HEAD"))
                if not keep_alive:
                    # A 413 answered before its body: the client may still be sending it.
                    self._linger() if req.too_large else self._close()
                    return
                if self.can_write is not None:
                    # Backpressure: the next answer waits until the client reads.
                    await self.can_write.wait()
        finally:
            self.task = None
            if self.phase == _IDLE:
                self.since = time.monotonic()
            if not self.closed and self.continue_due and not self.pending:
                self.continue_due = False
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def _linger(self) -> None:
        """Close after an error answer without losing it: closing a socket with unread
        input sends a reset, and a client still sending (a 20 MiB URL) would never read
        the answer. So: FIN after the answer, read and discard for ``LINGER`` seconds
        (``data_received`` drops everything once ``failed``), then close."""
        transport = self.transport
        if transport is None or self.closed:
            return
        self.closed = True  # no more answers
        self.server.connections.discard(self)
        if transport.can_write_eof():
            transport.write_eof()
        self.read_blocks.clear()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER, transport.close)

    def _block(self, reason: str) -> None:
        if not self.read_blocks and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.read_blocks.add(reason)

    def _unblock(self, reason: str) -> None:
        if reason not in self.read_blocks:
            return
        self.read_blocks.discard(reason)
        if not self.read_blocks and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _budget_allows(self, n: int) -> bool:
        return self.server.held_bytes + n <= self.limits.max_held_bytes

    def _budget_refusal(self) -> _Refuse:
        self.server.refused_budget += 1
        return _Refuse(
            503,
            f"the activator holds {self.server.held_bytes} bytes of request bodies, its"
            f" limit is {self.limits.max_held_bytes}; retry later",
            "server_busy",
        )

    def _hold(self, n: int) -> None:
        self.held += n
        self.server.held_bytes += n

    def _release(self, n: int) -> None:
        n = min(n, self.held)
        self.held -= n
        self.server.held_bytes -= n

    def _fail(self, status: int, message: str, code: str = "bad_request") -> None:
        """Stop reading; answer ``status`` after the answers already due, then close."""
        self.failed = True
        self._release(sum(len(c) for c in self.chunks))
        self.chunks = []
        if self.closed or self.transport is None:
            self.closed = True
            return
        headers = {"Retry-After": str(self.limits.retry_after)} if status == 503 else None
        self._enqueue(error_response(status, message, code, headers))

    def expire(self, now: float) -> None:
        """Close the connection if it is past a timeout (called by the sweeper)."""
        lim = self.limits
        if self.closed:
            return
        if self.can_write is not None and now - self.write_paused_since > lim.write_timeout:
            self.server.timeouts += 1
            if self.transport is not None:
                self.transport.abort()  # its unread answers are dropped
            self.closed = True
            return
        if self.failed:
            return
        if self.phase == _IDLE:
            if self.task is None and not self.pending and now - self.since > lim.keepalive_timeout:
                self._close()
        elif self.phase == _HEAD:
            if now - self.since > lim.header_timeout:
                self._timeout(f"request headers did not arrive within {lim.header_timeout:g}s")
        elif now - self.since > lim.body_timeout:
            self._timeout(f"request body did not arrive within {lim.body_timeout:g}s")

    def _timeout(self, message: str) -> None:
        self.server.timeouts += 1
        if self.head_bytes == 0 and self.phase == _HEAD and not self.url:
            self._close()  # never sent a byte of this request: nothing to answer
        else:
            self._fail(408, message, "request_timeout")

    def close_if_idle(self) -> None:
        if self.task is None and not self.pending and self.transport is not None:
            self._close()


class HttpServer:
    """Serves ``handler`` on one address; ``close()`` stops listening, then connections."""

    def __init__(self, handler: Handler, *, max_body: int, limits: Limits | None = None) -> None:
        self.handler = handler
        self.max_body = max_body
        self.limits = limits or Limits()
        self.connections: set[_Connection] = set()
        self.closing = False  # answer with Connection: close
        self.held_bytes = 0  # request body bytes held by all connections
        # Counters for /stats and tests: what the limits refused.
        self.refused_connections = 0
        self.refused_budget = 0
        self.timeouts = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, backlog: int = 1024) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=backlog, reuse_address=True
        )
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.expire(now)
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

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
