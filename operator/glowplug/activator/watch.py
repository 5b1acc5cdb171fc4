"""The Kubernetes watches that feed ``Services`` and the ``KeyStore``: EmbeddingServices,
EndpointSlices, pods and API key Secrets, each a shared informer (``glowplug.kube.informer``:
list, then watch from the list's resourceVersion with bookmarks; a 410 Gone or any error
lists again, and a re-list replaces what was known in that scope).

An informer says which service (or Secret) changed; the handlers here hand the
informer's current objects of that one service to ``Services``, so a re-list touches
only the services whose objects changed.

EndpointSlices and pods are selected by the ``glowplug.dev/service`` label, which the
operator puts on each Service (the EndpointSlice controller copies Service labels onto
its slices) and on each pod.
"""

from __future__ import annotations

import asyncio
from typing import Any

from glowplug.activator.apikeys import KEY_LABEL, KeyStore
from glowplug.activator.services import Services
from glowplug.api import GROUP, PLURAL, VERSION
from glowplug.kube.informer import Informer


def _es_path(ns: str | None) -> str:
    scope = f"/namespaces/{ns}" if ns else ""
    return f"/apis/{GROUP}/{VERSION}{scope}/{PLURAL}"


def _slice_path(ns: str | None) -> str:
    scope = f"/namespaces/{ns}" if ns else ""
    return f"/apis/discovery.k8s.io/v1{scope}/endpointslices"


def _pod_path(ns: str | None) -> str:
    scope = f"/namespaces/{ns}" if ns else ""
    return f"/api/v1{scope}/pods"


def _secret_path(ns: str | None) -> str:
    # Always one namespace: the activator's Role grants Secrets in its namespaces only.
    return f"/api/v1/namespaces/{ns}/secrets"


class KubeSource:
    """The activator's informers, wired to ``Services`` (and the ``KeyStore``)."""

    def __init__(
        self,
        api_client: Any,
        services: Services,
        namespaces: list[str] | None = None,
        keys: KeyStore | None = None,
        key_namespaces: list[str] | None = None,
    ) -> None:
        self.services = services
        self.keys = keys
        ns = list(namespaces or [])
        self.embedding_services = Informer(
            api_client, "EmbeddingService", _es_path, ns, label=None, on_change=self._service
        )
        self.slices = Informer(api_client, "EndpointSlice", _slice_path, ns, on_change=self._slice)
        self.pods = Informer(api_client, "Pod", _pod_path, ns, on_change=self._pod)
        self.informers = [self.embedding_services, self.slices, self.pods]
        key_ns = list(dict.fromkeys(key_namespaces or []))
        self.secrets: Informer | None = None
        if keys is not None and key_ns:
            self.secrets = Informer(
                api_client,
                "Secret",
                _secret_path,
                key_ns,
                label=KEY_LABEL,
                on_change=self._secret,
                by_name=True,
            )
            self.informers.append(self.secrets)

    def start(self) -> None:
        for informer in self.informers:
            informer.start()

    async def wait_synced(self) -> None:
        await asyncio.gather(*(i.wait_synced() for i in self.informers))

    async def close(self) -> None:
        await asyncio.gather(*(i.close() for i in self.informers))

    # --- what each informer's change means ------------------------------------------------

    def _service(self, namespace: str, name: str) -> None:
        objs = self.embedding_services.items(namespace, name)
        if objs:
            self.services.apply_service(objs[0])
        else:
            self.services.delete_service({"metadata": {"namespace": namespace, "name": name}})

    def _slice(self, namespace: str, service: str) -> None:
        self.services.sync_slices(namespace, service, self.slices.items(namespace, service))

    def _pod(self, namespace: str, service: str) -> None:
        self.services.sync_pods(namespace, service, self.pods.items(namespace, service))

    def _secret(self, namespace: str, name: str) -> None:
        assert self.keys is not None and self.secrets is not None
        objs = self.secrets.items(namespace, name)
        if objs:
            self.keys.apply(objs[0])
        else:
            self.keys.delete({"metadata": {"namespace": namespace, "name": name}})
