"""The activator's HTTP/1.1 server at the byte level: pipelining, chunked bodies, limits."""

from __future__ import annotations

import asyncio

from activator_fakes import engines, harness, service_obj

from glowplug.activator.server import Config


async def exchange(url: str, data: bytes, responses: int = 1) -> list[bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    out = []
    try:
        writer.write(data)
        await writer.drain()
        for _ in range(responses):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            out.append(head + await reader.readexactly(length))
    finally:
        writer.close()
    return out


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with harness() as h:
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        first, second = await exchange(h.url, req, 2)
        assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"ok\n")
        assert second.startswith(b"HTTP/1.1 404 ") and b"/nope" in second


async def test_chunked_body_and_expect_continue() -> None:
    async with harness() as h, engines(1) as (e,):
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        body = b'{"model": "emb", "input": "chunked"}'
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
        req = (
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        cont, resp = await exchange(h.url, req, 2)
        assert cont.startswith(b"HTTP/1.1 100 Continue")
        assert resp.startswith(b"HTTP/1.1 200 ")
        assert e.bodies[-1]["input"] == "chunked"


async def test_garbage_and_oversized_bodies() -> None:
    async with harness(Config(max_body_bytes=100)) as h:
        [resp] = await exchange(h.url, b"NOT HTTP AT ALL\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in resp
        big = b"x" * 200
        req = (
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
        )
        [resp] = await exchange(h.url, req)
        assert resp.startswith(b"HTTP/1.1 413 ") and b"100 bytes" in resp
        # Content-Length over the limit: refused before the body is sent
        req = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n"
        [resp] = await exchange(h.url, req)
        assert resp.startswith(b"HTTP/1.1 413 ") and b"999999 bytes" in resp
