"""A fast canned embeddings backend for the overhead benchmark (a TEST DOUBLE, not SGLang).

A raw asyncio protocol that answers every request on a keep-alive connection with a
canned /v1/embeddings response, so that what the benchmark measures is the proxy in
front of it, not the backend. ``python -m e2e.bench.backend PORT [small|large]``:
``small`` (default) is one 8-float vector; ``large`` is a realistic batch answer, 32
vectors of 1024 floats (about 700 KB as JSON floats), or the same as base64 float32
(about 175 KB) when the request asks for ``"encoding_format": "base64"``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import struct
import sys

LARGE_INPUTS = 32
LARGE_DIMS = 1024


def _body(vectors: list[list[float]] | list[str]) -> bytes:
    return json.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ],
            "model": "/models/bench-backend",
            "usage": {"prompt_tokens": 3 * len(vectors), "total_tokens": 3 * len(vectors)},
        }
    ).encode()


def _response(body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    return head + str(len(body)).encode() + b"\r\n\r\n" + body


BODY = _body([[0.125] * 8])
RESPONSE = _response(BODY)


def large_responses() -> tuple[bytes, bytes]:
    """(float JSON, base64) answers for 32 inputs x 1024 dims, like a real engine's."""
    rng = random.Random(0)
    vecs = [[rng.uniform(-0.1, 0.1) for _ in range(LARGE_DIMS)] for _ in range(LARGE_INPUTS)]
    b64 = [base64.b64encode(struct.pack(f"<{LARGE_DIMS}f", *v)).decode() for v in vecs]
    return _response(_body(vecs)), _response(_body(b64))


class Backend(asyncio.Protocol):
    def __init__(self, responses: tuple[bytes, bytes] | None = None) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.responses = responses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                length = int(head[i + 15 :].split(b"\r\n", 1)[0])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            request_body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            assert self.transport is not None
            if self.responses is None:
                self.transport.write(RESPONSE)
            elif b'"base64"' in request_body:
                self.transport.write(self.responses[1])
            else:
                self.transport.write(self.responses[0])


async def main(port: int, size: str) -> None:
    loop = asyncio.get_running_loop()
    responses = large_responses() if size == "large" else None
    server = await loop.create_server(lambda: Backend(responses), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "small"))
