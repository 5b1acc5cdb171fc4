"""The embedding cache's optional shared tier: one Redis for every activator replica.

Values are the float32 vector bytes behind an 8-byte little-endian expiry (Unix seconds),
so an entry copied into a replica's memory keeps its remaining TTL without a second round
trip; Redis expires the key itself (``SET ... PX``). Client: redis-py's asyncio client
(the optional dependency ``glowplug[cache]``), imported only when a URL is configured.

Redis is an optimisation, never a dependency of the request path: every call has a short
timeout, a failure marks the tier down for ``RETRY_SECONDS`` (requests are then served
from memory and the engine), and an outage is logged once when it starts and once when
it ends. Writes go out in the background, bounded in number, so a slow Redis never adds
latency to an answer.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("glowplug.activator.cache")

KEY_PREFIX = b"glowplug:emb:v1:"
TIMEOUT_SECONDS = 0.5
RETRY_SECONDS = 10.0
MAX_PENDING_WRITES = 64
_EXPIRY = struct.Struct("<d")


class SharedCache:
    """The Redis tier. ``get_many``/``put_many`` never raise: Redis down means misses."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        timeout: float = TIMEOUT_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        on_error: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import redis.asyncio as aioredis  # optional dependency: glowplug[cache]

        self.url = url
        self.clock = clock
        self.retry_seconds = retry_seconds
        self.on_error = on_error
        self._client: Any = aioredis.Redis.from_url(
            url,
            password=password or None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._down_until = 0.0  # monotonic; 0: believed up
        self._down = False
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def up(self) -> bool:
        return not self._down

    def _available(self) -> bool:
        return not self._down or time.monotonic() >= self._down_until

    def _failed(self, err: BaseException) -> None:
        if self.on_error is not None:
            self.on_error()
        if not self._down:
            log.warning(
                "shared cache %s is not answering (%s: %s); serving without it, retrying every %gs",
                _redact(self.url),
                type(err).__name__,
                err,
                self.retry_seconds,
            )
        self._down = True
        self._down_until = time.monotonic() + self.retry_seconds

    def _succeeded(self) -> None:
        if self._down:
            log.info("shared cache %s answers again", _redact(self.url))
            self._down = False

    async def ping(self) -> bool:
        """Check the connection now (at startup: a bad URL is a warning, not a crash)."""
        try:
            await self._client.ping()
        except Exception as err:
            self._failed(err)
            return False
        self._succeeded()
        return True

    async def get_many(self, keys: Sequence[bytes]) -> list[tuple[bytes, float] | None]:
        """Per key: (vector, expires at in Unix seconds) or None."""
        if not keys or not self._available():
            return [None] * len(keys)
        try:
            values = await self._client.mget([KEY_PREFIX + k for k in keys])
        except Exception as err:
            self._failed(err)
            return [None] * len(keys)
        self._succeeded()
        now = self.clock()
        out: list[tuple[bytes, float] | None] = []
        for v in values:
            if v is None or len(v) < _EXPIRY.size:
                out.append(None)
                continue
            (expires,) = _EXPIRY.unpack_from(v)
            out.append((bytes(v[_EXPIRY.size :]), expires) if expires > now else None)
        return out

    def put_many(self, items: Sequence[tuple[bytes, bytes]], ttl: float) -> None:
        """Store (key, vector) pairs in the background; dropped when Redis is down or busy."""
        if not items or not self._available() or len(self._pending) >= MAX_PENDING_WRITES:
            return
        task = asyncio.create_task(self._write(items, ttl))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, items: Sequence[tuple[bytes, bytes]], ttl: float) -> None:
        expires = _EXPIRY.pack(self.clock() + ttl)
        px = max(1, int(ttl * 1000))
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, vector in items:
                    pipe.set(KEY_PREFIX + key, expires + vector, px=px)
                await pipe.execute()
        except Exception as err:
            self._failed(err)
            return
        self._succeeded()

    async def flush(self) -> None:
        """Wait for background writes (tests, shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        try:
            await self._client.aclose()
        except Exception as err:  # closing a dead connection must not fail shutdown
            log.debug("closing the shared cache: %s", err)


def _redact(url: str) -> str:
    """The URL without a password (redis://:secret@host -> redis://***@host)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
