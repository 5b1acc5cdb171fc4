"""A fast canned embeddings backend for the overhead benchmark (a TEST DOUBLE, not SGLang).

A raw asyncio protocol that answers every request on a keep-alive connection with the
same small /v1/embeddings response, so that what the benchmark measures is the proxy in
front of it, not the backend. Run: ``python -m e2e.bench.backend PORT``.
"""

from __future__ import annotations

import asyncio
import json
import sys

BODY = json.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.125] * 8}],
        "model": "/models/bench-backend",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class Backend(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

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
            self.buf = self.buf[total:]
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Backend, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
