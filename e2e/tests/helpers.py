"""Small helpers for tests against the test bed: polling and pod/object access."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from e2e.cluster import Cluster

T = TypeVar("T")


def wait_for(
    cond: Callable[[], T | Literal[False] | None],
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "",
) -> T:
    """Poll ``cond()`` until it returns something truthy and return that; else fail."""
    deadline = time.monotonic() + timeout
    last: T | Literal[False] | None = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what or cond}; last: {last!r}"
    )


def get(cluster: Cluster, kind: str, name: str, namespace: str) -> dict[str, Any]:
    out = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json")
    return dict(json.loads(out.stdout))


def apply(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def is_ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conds.get("Ready") == "True"


def container_pid(pod: dict[str, Any], name: str) -> int:
    """The host pid of a running container (the agent reports it in containerID)."""
    for cs in pod["status"]["containerStatuses"]:
        if cs["name"] == name:
            return int(cs["containerID"].rsplit("/", 1)[-1])
    raise KeyError(name)


def endpoint_ips(cluster: Cluster, namespace: str, service: str) -> list[str]:
    """Ready addresses in the Service's EndpointSlices."""
    out = cluster.kubectl(
        "get", "endpointslices", "-n", namespace,
        "-l", f"kubernetes.io/service-name={service}", "-o", "json",
    )  # fmt: skip
    return sorted(
        a
        for s in json.loads(out.stdout)["items"]
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
        for a in e["addresses"]
    )
