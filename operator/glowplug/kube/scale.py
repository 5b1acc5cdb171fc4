"""``spec.replicas`` through the EmbeddingService scale subresource, compare-and-swap.

The one implementation of the scale CAS for both writers (the activator's wake and the
operator's autoscaler): read the scale (replicas and resourceVersion), write it with that
resourceVersion as a precondition; a 409 means someone else wrote in between, so the
caller decides again from a fresh read. Two writers can never both raise (or lower)
from the same value.
"""

from __future__ import annotations

from typing import Any

from glowplug.api.spec import GROUP, PLURAL, VERSION

MERGE = "application/merge-patch+json"


async def read_scale(custom: Any, namespace: str, name: str) -> tuple[int, str] | None:
    """(spec.replicas, resourceVersion), or None when the EmbeddingService is gone.

    ``custom`` is a kubernetes_asyncio ``CustomObjectsApi``.
    """
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        scale = await custom.get_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    replicas = int((scale.get("spec") or {}).get("replicas") or 0)
    return replicas, str(scale["metadata"]["resourceVersion"])


async def write_scale(custom: Any, namespace: str, name: str, replicas: int, rv: str) -> bool:
    """Write ``replicas`` if the scale is still at ``rv``; False on a conflict or 404."""
    from kubernetes_asyncio.client.exceptions import ApiException

    body = {"metadata": {"resourceVersion": rv}, "spec": {"replicas": replicas}}
    try:
        await custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE
        )
    except ApiException as err:
        if err.status in (409, 404):
            return False
        raise
    return True


class ConflictingWrites(RuntimeError):
    pass


async def raise_from_zero(
    custom: Any, namespace: str, name: str, attempts: int = 10, seen_version: str = ""
) -> bool:
    """Make replicas at least 1: True when this call wrote it, False when it already was.

    ``seen_version`` is the resourceVersion at which the caller's watch saw the service
    at zero replicas. The first write is tried with it, without a read: one round trip to
    the API server instead of two when the watch is current (a CRD's scale carries the
    custom resource's own resourceVersion, so the precondition is the same). A 409 means
    the object changed since; the loop below reads and decides again.

    Raises ``ConflictingWrites`` after ``attempts`` lost races, LookupError when the
    EmbeddingService is gone.
    """
    if seen_version and await write_scale(custom, namespace, name, 1, seen_version):
        return True
    for _ in range(attempts):
        scale = await read_scale(custom, namespace, name)
        if scale is None:
            raise LookupError(f"{namespace}/{name}: no such EmbeddingService")
        if scale[0] >= 1:
            return False
        if await write_scale(custom, namespace, name, 1, scale[1]):
            return True
    raise ConflictingWrites(f"scale of {namespace}/{name}: {attempts} conflicting writes")
