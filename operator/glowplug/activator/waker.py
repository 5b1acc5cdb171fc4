"""The wake: raise ``spec.replicas`` from 0 to 1 through the EmbeddingService scale subresource.

Every write is a compare-and-swap on ``metadata.resourceVersion``: a 409 means someone
else wrote (another activator woke it, or the autoscaler changed it), so the scale is
read again and written only if it is still 0. One wake task runs per service at a time
(``ServiceState.wake_pending``), so a burst of requests makes exactly one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from glowplug.activator.holdqueue import ServiceState
from glowplug.activator.metrics import Metrics
from glowplug.api import GROUP, PLURAL, VERSION
from glowplug.kube import scale
from glowplug.kube.timefmt import now_rfc3339

log = logging.getLogger("glowplug.activator.waker")

MAX_CAS_ATTEMPTS = 10


class Scaler(Protocol):
    async def raise_from_zero(self, namespace: str, name: str, seen_version: str = "") -> bool:
        """Make ``spec.replicas`` at least 1; return True when this call wrote it.
        ``seen_version``: the resourceVersion at which the watch saw it at zero."""
        ...


class KubeScaler:
    """``Scaler`` against the Kubernetes API (kubernetes_asyncio CustomObjectsApi)."""

    def __init__(self, api: Any) -> None:
        self.api = api  # kubernetes_asyncio.client.CustomObjectsApi

    async def raise_from_zero(self, namespace: str, name: str, seen_version: str = "") -> bool:
        wrote = await scale.raise_from_zero(
            self.api, namespace, name, MAX_CAS_ATTEMPTS, seen_version
        )
        if wrote:
            await self._mark_wake_started(namespace, name)
        return wrote

    async def _mark_wake_started(self, namespace: str, name: str) -> None:
        """Best effort: the operator measures wake duration from this stamp."""
        from kubernetes_asyncio.client.exceptions import ApiException

        now = now_rfc3339()
        try:
            await self.api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": {"wakeStartedTime": now}},
                _content_type="application/merge-patch+json",
            )
        except ApiException as err:
            log.info("could not stamp wakeStartedTime on %s/%s: %s", namespace, name, err.reason)


class Waker:
    """Runs one wake task per service; retries API errors while requests still wait."""

    def __init__(self, scaler: Scaler, metrics: Metrics | None = None) -> None:
        self.scaler = scaler
        self.metrics = metrics
        self.writes = 0  # scale writes this activator made (tests and logs)
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, state: ServiceState) -> None:
        task = asyncio.get_running_loop().create_task(self._wake(state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake(self, state: ServiceState) -> None:
        delay = 0.2
        raised = False
        first = True  # the first attempt runs even if its requester already left
        seen = state.seen_version  # the first try writes with the watch's version, unread
        try:
            while first or (state.waiters and not state.has_ready and state.failure is None):
                first = False
                if state.gone:
                    break
                try:
                    wrote = await self.scaler.raise_from_zero(state.namespace, state.name, seen)
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    seen = ""  # a retry reads first: the failed call may have written
                    log.warning("wake of %s failed, retrying: %s", state.ref, err)
                    self._count(state, "error")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                raised = True
                if wrote:
                    self.writes += 1
                    log.info("woke %s: spec.replicas 0 -> 1", state.ref)
                break
        finally:
            state.wake_done(raised=raised)

    def _count(self, state: ServiceState, outcome: str) -> None:
        if self.metrics is not None:
            sm = self.metrics.find(state.namespace, state.name)
            if sm is not None:
                sm.wakes[outcome].inc()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
