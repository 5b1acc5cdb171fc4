"""The upstream client: one pooled aiohttp session, failures sorted by what may be retried.

- ``ConnectFailed``: nothing reached the engine (refused, unreachable, connect timeout):
  safe to retry on another endpoint until the request's deadline.
- ``DroppedBeforeResponse``: the connection broke after sending, before the response
  status line: embeddings are idempotent, so the caller retries once.
- ``BrokenResponse`` / ``UpstreamTimeout``: the response had started or the engine took
  too long: never retried.
"""

from __future__ import annotations

import asyncio

import aiohttp

CONNECT_TIMEOUT = 3.0
_HEADERS = {"Content-Type": "application/json"}


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


class Forwarder:
    """POSTs request bodies to backends over pooled keep-alive connections."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,  # the hold queue bounds concurrency, per pod
                keepalive_timeout=30,
                ttl_dns_cache=None,
                use_dns_cache=False,  # pod IPs, never names
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                raise_for_status=False,
            )
        return self._session

    def _timeout(self, total: float) -> aiohttp.ClientTimeout:
        t = self._timeouts.get(total)
        if t is None:
            t = aiohttp.ClientTimeout(total=total, sock_connect=self.connect_timeout)
            self._timeouts[total] = t
        return t

    async def post(self, url: str, body: bytes, limit_s: float) -> tuple[int, bytes]:
        """Send one request; return (status, body) or raise an UpstreamError."""
        try:
            resp = await self.session.post(
                url, data=body, headers=_HEADERS, timeout=self._timeout(limit_s)
            )
        except aiohttp.ClientConnectorError as err:
            raise ConnectFailed(str(err)) from None
        except aiohttp.ConnectionTimeoutError as err:
            raise ConnectFailed(f"connect timeout: {err}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as err:
            raise DroppedBeforeResponse(f"{type(err).__name__}: {err}") from None
        except (TimeoutError, aiohttp.ServerTimeoutError) as err:
            raise UpstreamTimeout(f"no response within {limit_s:g}s") from err
        except aiohttp.ClientError as err:
            raise DroppedBeforeResponse(f"{type(err).__name__}: {err}") from None
        try:
            async with resp:
                data = await resp.read()
                return resp.status, data
        except (TimeoutError, aiohttp.ServerTimeoutError) as err:
            raise UpstreamTimeout(f"response not finished within {limit_s:g}s") from err
        except aiohttp.ClientError as err:
            raise BrokenResponse(f"{type(err).__name__}: {err}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await asyncio.sleep(0)
