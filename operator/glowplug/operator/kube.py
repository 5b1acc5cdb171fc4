"""The operator's Kubernetes API access: one kubernetes_asyncio client, a few verbs.

Kept small on purpose: server-side apply for what the operator renders, reads of
EmbeddingServices and Secrets, and compare-and-swap status writes. kopf does the
watching; this module does the writing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from glowplug.api.spec import GROUP, PLURAL, VERSION
from glowplug.kube import labels
from glowplug.kube.informer import list_objects, trim

log = logging.getLogger(__name__)

FIELD_MANAGER = "glowplug-operator"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"

Manifest = dict[str, Any]
# Given the current object, return the status fields to write (None: nothing to write).
StatusMutation = Callable[[Mapping[str, Any]], Awaitable[Manifest | None] | Manifest | None]


def is_status(err: BaseException, *codes: int) -> bool:
    return isinstance(err, ApiException) and err.status in codes


class Kube:
    """The handful of API calls the reconciler makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def _plain(self, obj: Any) -> Manifest:
        plain: Manifest = self.api.sanitize_for_serialization(obj)
        return plain

    async def apply(self, manifest: Manifest) -> tuple[Manifest, bool]:
        """Server-side apply of a Deployment or a Service: the object as stored, and
        whether this apply created it (201 Created, against 200 for an update: no read
        beforehand to find out, one request per object at a cold start).

        force=True: the operator owns every field it renders (nobody else may scale the
        Deployment), so a conflicting manager is overridden rather than failing the wake.
        """
        meta = manifest["metadata"]
        kwargs: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": APPLY,
        }
        reply: tuple[Any, int, Any]
        if manifest["kind"] == "Deployment":
            reply = await self.apps.patch_namespaced_deployment_with_http_info(
                meta["name"], meta["namespace"], manifest, **kwargs
            )
        elif manifest["kind"] == "Service":
            reply = await self.core.patch_namespaced_service_with_http_info(
                meta["name"], meta["namespace"], manifest, **kwargs
            )
        else:
            raise ValueError(f"cannot apply a {manifest['kind']}")
        obj, code, _headers = reply
        return self._plain(obj), code == 201

    async def list_managed(self, kind: str, namespace: str | None) -> list[Manifest]:
        """Every Deployment or Service glowplug manages (label ``managed-by``), in one
        namespace or all (None): raw JSON, in pages, without managedFields."""
        group = {"Deployment": "/apis/apps/v1", "Service": "/api/v1"}.get(kind)
        if group is None:
            raise ValueError(f"cannot list {kind}s")
        plural = f"{kind.lower()}s"
        path = f"{group}/namespaces/{namespace}/{plural}" if namespace else f"{group}/{plural}"
        selector = f"app.kubernetes.io/managed-by={labels.MANAGED_BY}"
        items, _ = await list_objects(self.api, path, [("labelSelector", selector)])
        return [trim(o) for o in items]  # held until each service's first reconcile

    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The keys of a Secret, or None when it does not exist (values are not kept)."""
        try:
            secret = await self.core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return set((secret.data or {}).keys()) | set((secret.string_data or {}).keys())

    async def get_embsvc(self, namespace: str, name: str) -> Manifest | None:
        try:
            obj: Manifest = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return obj

    async def update_status(
        self,
        namespace: str,
        name: str,
        mutate: StatusMutation,
        *,
        body: Mapping[str, Any] | None = None,
        attempts: int = 5,
    ) -> Manifest | None:
        """Read-modify-write of ``status`` with compare-and-swap on resourceVersion.

        ``mutate`` gets the current object and returns the status keys to merge (a
        merge patch: lists such as conditions are replaced whole, which is why the write
        is conditional). A 409 re-reads and retries. Returns the patch written, or None.
        """
        current: Mapping[str, Any] | None = body
        for _ in range(attempts):
            if current is None:
                current = await self.get_embsvc(namespace, name)
                if current is None:
                    return None
            patch = mutate(current)
            if isinstance(patch, Awaitable):
                patch = await patch
            if not patch:
                return None
            rv = current.get("metadata", {}).get("resourceVersion")
            try:
                await self.custom.patch_namespaced_custom_object_status(  # type: ignore[call-arg]
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    {"metadata": {"resourceVersion": rv}, "status": patch},
                    _content_type=MERGE,
                    field_manager=FIELD_MANAGER,
                )
            except ApiException as err:
                if err.status == 409:
                    current = None
                    continue
                if err.status == 404:
                    return None
                raise
            return patch
        log.warning("status of %s/%s: gave up after %d conflicts", namespace, name, attempts)
        return None
