"""Endpoint tracking: EndpointSlices and pods of each service, reduced to what routing needs.

Pure functions over raw API objects plus ``EndpointTracker``, which keeps every slice
and pod it was told about and answers, per service, the ready addresses and the reason
a wake cannot succeed (if any).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from glowplug.kube import podstate
from glowplug.kube.labels import SERVICE_LABEL as SERVICE_LABEL  # watch.py reads it here

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PORT_NAME = "http"


@dataclass(frozen=True)
class Failure:
    """Why a service cannot become ready."""

    reason: str
    message: str


def _addresses(slice_obj: Mapping[str, Any], ready: bool) -> list[str]:
    """``ip:port`` of the non-terminating endpoints of one EndpointSlice that are ready
    (``ready=True``) or not ready yet (``ready=False``)."""
    port = None
    for p in slice_obj.get("ports") or []:
        if p.get("name") == PORT_NAME or port is None:
            port = p.get("port")
    if port is None:
        return []
    out = []
    for ep in slice_obj.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        # A nil `ready` means ready (EndpointSlice API semantics); terminating pods never.
        if (cond.get("ready") is not False) != ready or cond.get("terminating") is True:
            continue
        for addr in ep.get("addresses") or []:
            host = f"[{addr}]" if ":" in addr else addr
            out.append(f"{host}:{port}")
    return out


def ready_addresses(slice_obj: Mapping[str, Any]) -> list[str]:
    """``ip:port`` of every ready, non-terminating endpoint in one EndpointSlice."""
    return _addresses(slice_obj, ready=True)


def starting_addresses(slice_obj: Mapping[str, Any]) -> list[str]:
    """``ip:port`` of endpoints that are not ready yet and not terminating: pods starting
    up (the readiness prober's candidates)."""
    return _addresses(slice_obj, ready=False)


def pod_failure(pod: Mapping[str, Any]) -> Failure | None:
    """The reason a pod cannot start (ImagePullBackOff, CrashLoopBackOff, OOMKilled, ...).

    The operator's classification (``glowplug.kube.podstate``), except Unschedulable: with a cluster
    autoscaler a pending GPU pod is expected to wait minutes for a node, so that verdict
    is the operator's to make (it arrives as the service's ``Failed`` condition).
    """
    if (pod.get("metadata") or {}).get("deletionTimestamp") or podstate.is_ready(pod):
        return None
    found = podstate.pod_failure(pod)
    if found is None or found.reason == podstate.UNSCHEDULABLE:
        return None
    return Failure(found.reason, found.message)


def condition_failure(obj: Mapping[str, Any]) -> Failure | None:
    """The EmbeddingService's ``Failed`` condition, when its status is True."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            reason = str(cond.get("reason") or "Failed")
            return Failure(reason, str(cond.get("message") or reason))
    return None


class EndpointTracker:
    """Slices and pod failures per service, keyed by ``namespace/name``."""

    def __init__(self) -> None:
        self._slices: dict[str, dict[str, list[str]]] = {}  # ref -> slice name -> addresses
        self._slice_owner: dict[str, str] = {}  # "namespace/slice" -> ref
        self._pods: dict[str, dict[str, Failure]] = {}  # ref -> pod name -> failure
        self._pod_owner: dict[str, str] = {}  # "namespace/pod" -> ref
        self._starting: dict[str, dict[str, list[str]]] = {}  # ref -> slice -> not ready yet
        self._probed: dict[str, set[str]] = {}  # ref -> starting addresses that answered
        # What each informer key ("namespace/<glowplug.dev/service>") held last time.
        self._slice_groups: dict[str, set[str]] = {}
        self._pod_groups: dict[str, set[str]] = {}

    def apply_slice(self, obj: Mapping[str, Any]) -> str | None:
        """Record one slice; return the service ref it belongs to (None if unowned)."""
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace", "")
        slice_key = f"{ns}/{meta.get('name', '')}"
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not svc:
            return self.delete_slice(obj)
        ref = f"{ns}/{svc}"
        self._slice_owner[slice_key] = ref
        self._slices.setdefault(ref, {})[slice_key] = ready_addresses(obj)
        self._starting.setdefault(ref, {})[slice_key] = starting_addresses(obj)
        return ref

    def delete_slice(self, obj: Mapping[str, Any]) -> str | None:
        meta = obj.get("metadata") or {}
        slice_key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        ref = self._slice_owner.pop(slice_key, None)
        if ref is not None:
            slices = self._slices.get(ref, {})
            slices.pop(slice_key, None)
            if not slices:
                self._slices.pop(ref, None)
            starting = self._starting.get(ref, {})
            starting.pop(slice_key, None)
            if not starting:
                self._starting.pop(ref, None)
        return ref

    def set_static(self, ref: str, addresses: list[str]) -> None:
        """Addresses given directly (tests, ``--static-config``), as one synthetic slice."""
        slice_key = f"{ref}-static"
        self._slice_owner[slice_key] = ref
        self._slices.setdefault(ref, {})[slice_key] = list(addresses)

    def addresses(self, ref: str) -> list[str]:
        """Ready addresses, plus starting ones whose engine already answered its probe."""
        seen: dict[str, None] = {}
        for addrs in self._slices.get(ref, {}).values():
            for a in addrs:
                seen[a] = None
        probed = self._probed.get(ref)
        if probed:
            starting = set(self.starting(ref))
            probed &= starting  # forget addresses that left the slice or became ready
            for a in sorted(probed):
                seen[a] = None
        return list(seen)

    def starting(self, ref: str) -> list[str]:
        seen: dict[str, None] = {}
        for addrs in self._starting.get(ref, {}).values():
            for a in addrs:
                seen[a] = None
        return list(seen)

    def mark_probed(self, ref: str, address: str) -> None:
        """The engine at ``address`` answered its readiness endpoint: route to it."""
        if address in self.starting(ref):
            self._probed.setdefault(ref, set()).add(address)

    def apply_pod(self, obj: Mapping[str, Any]) -> str | None:
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace", "")
        pod_key = f"{ns}/{meta.get('name', '')}"
        svc = (meta.get("labels") or {}).get(SERVICE_LABEL)
        if not svc:
            return self.delete_pod(obj)
        ref = f"{ns}/{svc}"
        self._pod_owner[pod_key] = ref
        failure = pod_failure(obj)
        pods = self._pods.setdefault(ref, {})
        if failure is None:
            pods.pop(pod_key, None)
            if not pods:
                self._pods.pop(ref, None)
        else:
            pods[pod_key] = failure
        return ref

    def delete_pod(self, obj: Mapping[str, Any]) -> str | None:
        meta = obj.get("metadata") or {}
        pod_key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        ref = self._pod_owner.pop(pod_key, None)
        if ref is not None:
            pods = self._pods.get(ref, {})
            pods.pop(pod_key, None)
            if not pods:
                self._pods.pop(ref, None)
        return ref

    def pod_failure(self, ref: str) -> Failure | None:
        pods = self._pods.get(ref)
        if not pods:
            return None
        return pods[min(pods)]

    def replace_slices(self, group: str, objs: Iterable[Mapping[str, Any]]) -> set[str]:
        """The slices labelled for one service, all of them now (a slice missing from
        ``objs`` is gone); return the refs whose endpoints may have changed."""
        return _replace(group, objs, self._slice_groups, self.apply_slice, self.delete_slice)

    def replace_pods(self, group: str, objs: Iterable[Mapping[str, Any]]) -> set[str]:
        """The pods labelled for one service, all of them now; return the refs touched."""
        return _replace(group, objs, self._pod_groups, self.apply_pod, self.delete_pod)


def _replace(
    group: str,
    objs: Iterable[Mapping[str, Any]],
    groups: dict[str, set[str]],
    apply: Callable[[Mapping[str, Any]], str | None],
    delete: Callable[[Mapping[str, Any]], str | None],
) -> set[str]:
    refs: set[str] = set()
    now: set[str] = set()
    for obj in objs:
        meta = obj.get("metadata") or {}
        now.add(f"{meta.get('namespace', '')}/{meta.get('name', '')}")
        ref = apply(obj)
        if ref is not None:
            refs.add(ref)
    for key in groups.get(group, set()) - now:
        ns, name = key.split("/", 1)
        ref = delete({"metadata": {"namespace": ns, "name": name}})
        if ref is not None:
            refs.add(ref)
    if now:
        groups[group] = now
    else:
        groups.pop(group, None)
    return refs
