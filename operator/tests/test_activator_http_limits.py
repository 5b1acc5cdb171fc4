"""The HTTP server's limits, byte by byte over real sockets: caps enforced while bytes
arrive, timeouts, the connection cap, write backpressure, the held-bytes budget, HEAD,
``100 Continue`` order, and a bounded fuzz of malformed requests.

Most tests serve ``HandlerDouble`` (a test double for the activator's handler: it counts
calls, can be gated, and answers a fixed body) so that the HTTP layer alone is judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator

import pytest
from activator_fakes import harness

from glowplug.activator.http import HttpServer, Limits, Request, Response
from glowplug.activator.server import Config


class HandlerDouble:
    """Stands in for the activator: answers ``body``, after ``gate`` when one is set."""

    def __init__(self, body: bytes = b'{"ok": true}') -> None:
        self.body = body
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.seen: list[Request] = []

    async def __call__(self, req: Request) -> Response:
        self.calls += 1
        self.seen.append(req)
        if self.gate is not None:
            await self.gate.wait()
        return Response(200, self.body)


@contextlib.asynccontextmanager
async def serve(
    handler: HandlerDouble, limits: Limits | None = None, max_body: int = 1 << 20
) -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(handler, max_body=max_body, limits=limits)
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.close()


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if head_only or head.startswith(b"HTTP/1.1 100 "):
        return head
    return head + await asyncio.wait_for(reader.readexactly(length), 30)


async def closed_by_server(reader: asyncio.StreamReader, limit_s: float = 30) -> bool:
    """True when the server closes (EOF or reset) within ``limit_s``."""
    try:
        rest = await asyncio.wait_for(reader.read(), limit_s)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return rest == b"" or rest.endswith(b"}")


async def test_request_line_cap_holds_while_bytes_arrive() -> None:
    h = HandlerDouble()
    async with serve(h) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /" + b"a" * 9000)  # no end of line: the cap acts mid-URL
        await writer.drain()
        resp = await read_response(reader)
        assert resp.startswith(b"HTTP/1.1 414 ") and b"uri_too_long" in resp
        assert b"Connection: close" in resp
        writer.close()
        assert h.calls == 0


async def test_header_flood_is_cut_at_the_cap() -> None:
    h = HandlerDouble()
    async with serve(h) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        resp = b""
        # One 20 MiB header value, sent in pieces; the answer comes long before the end.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while sent < 20 * 1024 * 1024:
                writer.write(b"v" * 65536)
                sent += 65536
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    resp = await asyncio.wait_for(read_response(reader), 0.05)
                    break
        if not resp:
            resp = await read_response(reader)
        assert resp.startswith(b"HTTP/1.1 431 "), resp[:200]
        assert sent < 4 * 1024 * 1024  # cut off early, not after the whole header
        assert server.held_bytes == 0
        writer.close()
        # Many small headers: the same cap.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)))
        resp = await read_response(reader)
        assert resp.startswith(b"HTTP/1.1 431 ")
        writer.close()
        assert h.calls == 0


async def test_header_body_and_keepalive_timeouts() -> None:
    limits = Limits(header_timeout=0.5, body_timeout=0.5, keepalive_timeout=0.5)
    h = HandlerDouble()
    async with serve(h, limits) as (server, port):
        # Slowloris: half a request line, then nothing.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
        resp = await read_response(reader)
        assert resp.startswith(b"HTTP/1.1 408 ") and b"headers" in resp
        writer.close()
        # A body that never arrives in full.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        resp = await read_response(reader)
        assert resp.startswith(b"HTTP/1.1 408 ") and b"body" in resp
        writer.close()
        # Keep-alive: answered, then closed when idle.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = await read_response(reader)
        assert resp.startswith(b"HTTP/1.1 200 ")
        assert await closed_by_server(reader)
        writer.close()
        # A connection that never sends a byte is closed without an answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        writer.close()
        assert server.timeouts >= 3
        assert h.calls == 1


async def test_connection_cap_answers_503() -> None:
    h = HandlerDouble()
    async with serve(h, Limits(max_connections=3)) as (server, port):
        opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        resp = await read_response(reader)
        assert resp.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 2" in resp
        assert b"too_many_connections" in resp
        writer.close()
        assert server.refused_connections == 1
        for _, w in opened:
            w.close()
        # Once they are closed, new connections are served again.
        for _ in range(100):
            if len(server.connections) < 3:
                break
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200 ")
        writer.close()


async def test_a_client_that_never_reads_stops_being_read() -> None:
    # Each answer is 256 KiB; the client pipelines 2,000 requests and reads nothing.
    h = HandlerDouble(b"x" * 256 * 1024)
    async with serve(h) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

        async def flood() -> None:
            for _ in range(2000):
                writer.write(req)
                await writer.drain()

        task = asyncio.create_task(flood())
        await asyncio.sleep(2.0)
        calls_while_stuck = h.calls
        [conn] = list(server.connections)
        buffered = conn.transport.get_write_buffer_size() if conn.transport else 0
        # Reading paused once the output buffer filled: only a few answers were made,
        # and the server's buffer holds about one answer, not 2,000.
        assert calls_while_stuck < 100, calls_while_stuck
        assert buffered < 2 * 1024 * 1024, buffered
        # Reading the answers lets everything through.
        for _ in range(2000):
            await read_response(reader)
        await asyncio.wait_for(task, 30)
        assert h.calls == 2000
        writer.close()


async def test_held_bytes_budget_answers_503_with_retry_after() -> None:
    h = HandlerDouble()
    h.gate = asyncio.Event()
    async with serve(h, Limits(max_held_bytes=1000)) as (server, port):
        body = b"y" * 800
        post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 800\r\n\r\n" + body
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(post)
        for _ in range(200):
            if h.calls:
                break
            await asyncio.sleep(0.01)
        assert server.held_bytes == 800
        # Declared length over the budget: refused before the body is read.
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(post)
        resp = await read_response(r2)
        assert resp.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 2" in resp
        assert b"server_busy" in resp
        # Chunked: refused when the chunk arrives.
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)
        w3.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"320\r\n" + body + b"\r\n0\r\n\r\n"
        )
        resp = await read_response(r3)
        assert resp.startswith(b"HTTP/1.1 503 ")
        h.gate.set()
        assert (await read_response(r1)).startswith(b"HTTP/1.1 200 ")
        assert server.held_bytes == 0
        w1.write(post)
        assert (await read_response(r1)).startswith(b"HTTP/1.1 200 ")
        assert server.refused_budget == 2
        for w in (w1, w2, w3):
            w.close()


async def test_head_has_no_body_and_keepalive_stays_in_step() -> None:
    h = HandlerDouble(b'{"hello": "world"}')
    async with serve(h) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await read_response(reader, head_only=True)
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 18" in head
        # The next bytes are the second response, not the first one's body.
        second = await read_response(reader)
        assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b'{"hello": "world"}')
        writer.close()


async def test_100_continue_waits_for_earlier_answers() -> None:
    h = HandlerDouble()
    h.gate = asyncio.Event()
    async with serve(h) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)  # nothing yet
        h.gate.set()
        first = await read_response(reader)
        assert first.startswith(b"HTTP/1.1 200 ")
        cont = await read_response(reader)
        assert cont.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"{}")
        second = await read_response(reader)
        assert second.startswith(b"HTTP/1.1 200 ")
        assert [r.path for r in h.seen] == ["/first", "/second"]
        writer.close()


async def test_parse_error_is_answered_after_earlier_pipelined_answers() -> None:
    h = HandlerDouble()
    h.gate = asyncio.Event()
    async with serve(h) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\x00\r\n\r\n")
        await asyncio.sleep(0.2)
        h.gate.set()
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200 ")
        bad = await read_response(reader)
        assert bad.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in bad
        writer.close()


async def test_deeply_nested_json_is_a_400_not_a_500() -> None:
    async with harness() as h:
        host, port = h.url.removeprefix("http://").split(":")
        for body in (b"[" * 100_000, b'{"input": ' + b"[" * 40 + b"]" * 40 + b"}"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            resp = await read_response(reader)
            assert resp.startswith(b"HTTP/1.1 400 "), resp[:100]
            err = json.loads(resp.split(b"\r\n\r\n", 1)[1])["error"]
            assert "deeper than 32" in err["message"] or "arrays and objects" in err["message"]
            writer.close()


VALID = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 32\r\n\r\n{"model": "emb", "input": "abc"}',
    b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5\r\n{"a":\r\n3\r\n  1\r\n1\r\n}\r\n0\r\n\r\n',
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip a byte
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:  # insert junk
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and b:  # delete a run
            del b[i : i + rng.randint(1, 8)]
        elif op == 3:  # a hostile token
            b[i:i] = rng.choice(
                [b"\r\n", b"\x00", b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n",
                 b"ffffffffffffffff\r\n", b" ", b":", b"\n\n", b"Content-Length: -1\r\n"]
            )  # fmt: skip
        else:  # duplicate a run
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[j : j + rng.randint(1, 32)]
    return bytes(b)


async def test_fuzzed_requests_get_an_answer_or_a_close_and_serving_goes_on() -> None:
    rng = random.Random(13)
    limits = Limits(header_timeout=1.0, body_timeout=1.0, keepalive_timeout=1.0)
    async with harness(limits=limits) as h:
        host, port = h.url.removeprefix("http://").split(":")
        server = h.server
        assert server is not None
        statuses: dict[int, int] = {}
        for _ in range(300):
            data = mutate(rng, rng.choice(VALID))
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
            except (ConnectionError, asyncio.IncompleteReadError):
                line = b""
            if line:
                assert line.startswith(b"HTTP/1.1 "), line
                status = int(line.split()[1])
                assert status < 500 or status in (502, 503, 504), (status, data)
                statuses[status] = statuses.get(status, 0) + 1
            writer.close()
        assert statuses.get(400, 0) > 50  # most mutations are refused as malformed
        # Still serving, and nothing is held.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(VALID[0])
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        assert server.held_bytes == 0


async def test_clients_still_sending_read_their_error_answer() -> None:
    # Closing a socket with unread input sends a reset, which would eat the answer: the
    # server drains for a moment after an error (or an early 413) instead.
    async with harness(Config(max_body_bytes=1000)) as h:
        port = int(h.url.rsplit(":", 1)[1])
        for head, want in (
            (
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n",
                b" 413 ",
            ),
            (b"GET /" + b"u" * 9000, b" 414 "),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            with contextlib.suppress(ConnectionError):
                for _ in range(32):  # 2 MiB more, as a client would keep streaming
                    writer.write(b"z" * 65536)
                    await writer.drain()
            resp = await read_response(reader)
            assert want in resp.split(b"\r\n", 1)[0], resp[:100]
            writer.close()
