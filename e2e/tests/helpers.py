"""Small helpers for tests against the test bed: polling, pod/object access, and
``glowplug activator`` as a host process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from e2e.cluster import REPO, Cluster

GLOWPLUG = REPO / ".venv" / "bin" / "glowplug"

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


def replicas_and_pods(cluster: Cluster, namespace: str, name: str) -> tuple[int, int]:
    """An EmbeddingService's spec.replicas, and how many pods it has."""
    obj = cluster.api(
        "GET", f"/apis/glowplug.dev/v1alpha1/namespaces/{namespace}/embeddingservices/{name}"
    )
    pods = cluster.api(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods?labelSelector=glowplug.dev%2Fservice%3D{name}",
    )["items"]
    return int(obj["spec"].get("replicas") or 0), len(pods)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ActivatorProcess:
    """``glowplug activator`` as a host process on 127.0.0.1 with KUBECONFIG (it reaches
    pod IPs directly); restartable on the same port, stopped by pid."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        log_path: Path,
        *,
        drain_seconds: float = 0.5,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.extra_args = extra_args
        self.extra_env = env or {}
        self.namespace = namespace
        self.drain_seconds = drain_seconds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ, KUBECONFIG=str(self.cluster.kubeconfig), PYTHONUNBUFFERED="1")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.update(self.extra_env)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(GLOWPLUG), "activator", "--host", "127.0.0.1", "--port", str(self.port),
                 "--namespace", self.namespace, "--drain-seconds", str(self.drain_seconds),
                 *self.extra_args],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            )  # fmt: skip
        self.starts += 1
        wait_for(self.ready, timeout, what=f"activator on {self.url}")

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log()
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stats(self, name: str) -> dict[str, Any]:
        """This activator's ``/stats`` entry for one EmbeddingService of its namespace."""
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as resp:
            body: dict[str, Any] = json.load(resp)
        return dict(body["services"].get(f"{self.namespace}/{name}") or {})

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
