"""Fast release after a wake: probe a starting pod's engine readiness endpoint directly.

The kubelet probes readiness every ``periodSeconds`` (1 s for SGLang's ``/ready``), the
endpoint then travels kubelet -> API server -> EndpointSlice controller -> the
activator's watch: hundreds of milliseconds to over a second after the engine could
answer. Knative's activator probes a revision's pods itself for the same reason. So while
a service has no ready pod, the activator probes each of its not-yet-ready endpoints
(they are in the EndpointSlice with ``ready: false`` as soon as the pod has an IP) every
``interval`` seconds; the first 200 makes that address routable at once. The slice takes
over when it shows the pod ready; an address that leaves the slice is forgotten.

Probing stops as soon as the service has a ready endpoint, so a warm service (and a
rolling update next to a serving pod) is never probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp

log = logging.getLogger("glowplug.activator.readiness_probe")

PROBE_INTERVAL = 0.1  # seconds between probes of one address (Knative: ~100-200 ms)
PROBE_TIMEOUT = 1.0


class ReadinessProber:
    """One probe task per (service, address) the sources say is starting."""

    def __init__(
        self,
        on_ready: Callable[[str, str], None],
        *,
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._on_ready = on_ready
        self.interval = interval
        self.timeout = timeout
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.probes = 0  # probes sent (tests, debugging)

    def want(self, ref: str, addresses: list[str], path: str) -> None:
        """Probe exactly these addresses of ``ref`` (an empty list stops its probes)."""
        wanted = set(addresses)
        for key in [k for k in self._tasks if k[0] == ref and k[1] not in wanted]:
            self._tasks.pop(key).cancel()
        for addr in wanted:
            key = (ref, addr)
            if key not in self._tasks:
                self._tasks[key] = asyncio.get_running_loop().create_task(
                    self._probe(ref, addr, path)
                )

    def probing(self, ref: str) -> list[str]:
        return sorted(a for r, a in self._tasks if r == ref)

    async def _probe(self, ref: str, addr: str, path: str) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(force_close=True),
            )
        url = f"http://{addr}{path}"
        try:
            while True:
                self.probes += 1
                try:
                    async with self._session.get(url) as resp:
                        await resp.read()
                        if resp.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass  # not listening yet: the engine is still starting
                await asyncio.sleep(self.interval)
        except asyncio.CancelledError:
            return
        self._tasks.pop((ref, addr), None)
        log.info("%s: %s answered %s: routing to it before its kubelet probe", ref, addr, path)
        self._on_ready(ref, addr)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._session is not None:
            await self._session.close()


__all__ = ["PROBE_INTERVAL", "ReadinessProber"]
