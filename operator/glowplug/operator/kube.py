"""The operator's Kubernetes API access: one kubernetes_asyncio client, a few verbs.

Kept small on purpose: server-side apply for what the operator renders, reads of
EmbeddingServices and Secrets, and compare-and-swap status writes. kopf does the
watching; this module does the writing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
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


# How long the object a status write returned is kept to stand in for the body it
# replaced (kopf's watch delivers the new one well within it).
SUPERSEDED_FOR = 60.0


class _StatusWrites:
    """One status write at a time per EmbeddingService, and what the last ones returned.

    Several of the operator's own writers (the reconciler, the service loop's ticks and
    wake tracking, the ledger checkpoint) may write one object's status at once, each
    from the body kopf last delivered. Unserialized, they conflict with each other (a
    wake on the test bed: about 40 % of its status writes answered 409, each followed by
    a GET). Serialized, a later writer's body is often a version an earlier write
    replaced: it is given the object that write returned instead, and needs no read.
    """

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        # (namespace, name) -> (when, the versions our writes replaced, the last returned)
        self._after: OrderedDict[tuple[str, str], tuple[float, tuple[str, ...], Manifest]]
        self._after = OrderedDict()

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        return lock

    def unlock(self, key: tuple[str, str]) -> None:
        lock, users = self._locks[key]
        if users <= 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)

    def freshest(self, key: tuple[str, str], body: Mapping[str, Any]) -> Mapping[str, Any]:
        """``body``, or the object our last write returned where one of our writes
        replaced ``body``'s version (that object is then the newer of the two; the
        write's precondition still catches anyone else's write since)."""
        after = self._after.get(key)
        if after is not None and _rv(body) in after[1]:
            return after[2]
        return body

    def wrote(self, key: tuple[str, str], replaced: str, returned: Manifest) -> None:
        now = time.monotonic()
        _, versions, _ = self._after.pop(key, (0.0, (), {}))
        self._after[key] = (now, (*versions[-15:], replaced), returned)
        while self._after:  # oldest first: drop what kopf's watch has long delivered
            when = next(iter(self._after.values()))[0]
            if now - when <= SUPERSEDED_FOR:
                break
            self._after.popitem(last=False)


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Kube:
    """The handful of API calls the reconciler makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._status = _StatusWrites()

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
        Writes to one object are made one at a time (``_StatusWrites``).
        """
        key = (namespace, name)
        lock = self._status.lock(key)
        try:
            async with lock:
                return await self._update_status(key, mutate, body, attempts)
        finally:
            self._status.unlock(key)

    async def _update_status(
        self,
        key: tuple[str, str],
        mutate: StatusMutation,
        body: Mapping[str, Any] | None,
        attempts: int,
    ) -> Manifest | None:
        namespace, name = key
        current = None if body is None else self._status.freshest(key, body)
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
            rv = _rv(current)
            try:
                returned = await self.custom.patch_namespaced_custom_object_status(  # type: ignore[call-arg]
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
            if isinstance(returned, dict):
                self._status.wrote(key, rv, trim(returned))
            return patch
        log.warning("status of %s/%s: gave up after %d conflicts", namespace, name, attempts)
        return None
