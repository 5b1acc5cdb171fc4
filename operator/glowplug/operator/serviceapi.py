"""The cluster as the per-service loop sees it: a small interface, and its implementation.

``ServiceAPI`` is what ``ServiceLoop`` calls (a test double implements it too);
``KubeServiceAPI`` does it on kubernetes_asyncio, reading pods from the shared pod
informer (no API request) and writing the scale through ``glowplug.kube.scale``'s
compare-and-swap; ``GatedServiceAPI`` spreads the one object read per service before
its first ledger checkpoint over time (``RateGate``), so a start-up or a failover does
not stampede.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from glowplug.api.spec import GROUP, PLURAL, VERSION
from glowplug.kube import scale
from glowplug.kube.informer import Informer
from glowplug.kube.labels import SERVICE_LABEL

MERGE = "application/merge-patch+json"


class ServiceAPI(Protocol):
    async def read_object(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def write_ledger(self, namespace: str, name: str, fields: dict[str, Any]) -> None: ...

    async def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]: ...

    async def read_scale(self, namespace: str, name: str) -> tuple[int, str] | None: ...

    async def write_scale(self, namespace: str, name: str, replicas: int, rv: str) -> bool: ...

    async def update_status(
        self,
        namespace: str,
        name: str,
        mutate: Callable[[Mapping[str, Any]], dict[str, Any] | None],
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Compare-and-swap of status; ``body``: the object as last seen (a stale one
        costs a 409 and a read), None: read it first."""
        ...

    def warn(self, body: Mapping[str, Any], reason: str, message: str) -> None: ...

    def info(self, body: Mapping[str, Any], reason: str, message: str) -> None: ...

    async def list_pod_events(
        self, namespace: str, pods: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]: ...


class KubeServiceAPI:
    """``ServiceAPI`` on kubernetes_asyncio, reusing the operator's Kube for status."""

    def __init__(self, api_client: Any, pods: Informer | None = None) -> None:
        from kubernetes_asyncio import client

        from glowplug.operator.kube import FIELD_MANAGER, Kube

        self.field_manager = FIELD_MANAGER
        self.api_client = api_client
        self.pods = pods  # the shared pod cache; None: LIST per call (tests of this class)
        self.kube = Kube(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    async def read_object(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.kube.get_embsvc(namespace, name)

    async def write_ledger(self, namespace: str, name: str, fields: dict[str, Any]) -> None:
        """The ledger checkpoint: one merge patch of the fields only the ledger writes.

        No precondition: the fields are written together and nobody else writes them.
        """
        kwargs: dict[str, Any] = {"_content_type": MERGE, "field_manager": self.field_manager}
        await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": fields}, **kwargs
        )

    async def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        if self.pods is not None:
            await self.pods.wait_synced()
            return self.pods.items(namespace, name)  # the watch cache: no API request
        pods = await self.core.list_namespaced_pod(
            namespace, label_selector=f"{SERVICE_LABEL}={name}"
        )
        plain: dict[str, Any] = self.api_client.sanitize_for_serialization(pods)
        return list(plain.get("items") or [])

    async def read_scale(self, namespace: str, name: str) -> tuple[int, str] | None:
        return await scale.read_scale(self.custom, namespace, name)

    async def write_scale(self, namespace: str, name: str, replicas: int, rv: str) -> bool:
        # False: someone else wrote (or it is gone): decide again next tick
        return await scale.write_scale(self.custom, namespace, name, replicas, rv)

    async def update_status(
        self,
        namespace: str,
        name: str,
        mutate: Callable[[Mapping[str, Any]], dict[str, Any] | None],
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        return await self.kube.update_status(namespace, name, mutate, body=body)

    def warn(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        import kopf

        target: Any = dict(body)
        kopf.warn(target, reason=reason, message=message)

    def info(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        import kopf

        target: Any = dict(body)
        kopf.info(target, reason=reason, message=message)

    async def list_pod_events(
        self, namespace: str, pods: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """The Events of each named pod (only pods still waiting for a node: one or two)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            events = await self.core.list_namespaced_event(
                namespace, field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod}"
            )
            plain: dict[str, Any] = self.api_client.sanitize_for_serialization(events)
            out[pod] = list(plain.get("items") or [])
        return out


class RateGate:
    """At most ``rate`` passes per second, in arrival order (a start-up spreads out)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate
        self.clock = clock
        self.next = 0.0

    async def wait(self) -> None:
        now = self.clock()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class GatedServiceAPI(KubeServiceAPI):
    """``KubeServiceAPI`` whose object reads (one per service, before its first
    checkpoint) pass a ``RateGate``: a restart or failover with N services costs N/rate
    seconds of reads, not N requests at once.

    ``answered`` counts calls the API server answered: a tick served from the watch
    caches alone is no evidence that an outage ended (the daemon reports the end of an
    outage only after a real answer)."""

    def __init__(self, api_client: Any, pods: Informer | None, gate: RateGate) -> None:
        super().__init__(api_client, pods)
        self.gate = gate
        self.answered = 0

    async def read_object(self, namespace: str, name: str) -> dict[str, Any] | None:
        await self.gate.wait()
        out = await super().read_object(namespace, name)
        self.answered += 1
        return out

    async def write_ledger(self, namespace: str, name: str, fields: dict[str, Any]) -> None:
        await super().write_ledger(namespace, name, fields)
        self.answered += 1

    async def read_scale(self, namespace: str, name: str) -> tuple[int, str] | None:
        out = await super().read_scale(namespace, name)
        self.answered += 1
        return out

    async def write_scale(self, namespace: str, name: str, replicas: int, rv: str) -> bool:
        out = await super().write_scale(namespace, name, replicas, rv)
        self.answered += 1
        return out

    async def update_status(
        self,
        namespace: str,
        name: str,
        mutate: Callable[[Mapping[str, Any]], dict[str, Any] | None],
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        out = await super().update_status(namespace, name, mutate, body)
        self.answered += 1
        return out

    async def list_pod_events(
        self, namespace: str, pods: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        out = await super().list_pod_events(namespace, pods)
        self.answered += 1
        return out
