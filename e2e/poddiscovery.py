"""A TEST DOUBLE of Prometheus' Kubernetes pod discovery, for Debian's Prometheus.

Debian's ``prometheus`` package is built without the Kubernetes service discovery
(its 2.42 refuses ``kubernetes_sd_configs``: "field kubernetes_sd_configs not found in
type config.ScrapeConfig"). This process stands in for ``role: pod``: every
``--interval`` seconds it lists the pods of each ``--namespace`` through the API server
(kubectl with ``--kubeconfig``) and writes them to ``--out`` as ``file_sd_configs``
target groups carrying the meta labels the real discovery sets (one target per
declared container port, pods without an IP left out, as the real one does):

    __address__                                 podIP:containerPort
    __meta_kubernetes_namespace                 the pod's namespace
    __meta_kubernetes_pod_name                  its name
    __meta_kubernetes_pod_phase                 status.phase
    __meta_kubernetes_pod_ready                 the Ready condition (true/false)
    __meta_kubernetes_pod_ip                    status.podIP
    __meta_kubernetes_pod_label_<name>          each label (name sanitized to [a-zA-Z0-9_])
    __meta_kubernetes_pod_labelpresent_<name>   "true" for each label
    __meta_kubernetes_pod_container_name        the container
    __meta_kubernetes_pod_container_port_name   the port's name
    __meta_kubernetes_pod_container_port_number the port's number

(https://prometheus.io/docs/prometheus/latest/configuration/configuration/#pod), so
the relabelling prometheus-operator generates from a PodMonitor applies unchanged.
The file is replaced atomically; Prometheus re-reads it on change.

    python -m e2e.poddiscovery --kubeconfig K --namespace NS --out targets.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def target_groups(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``file_sd`` target groups for ``pods`` (as the API server returns them)."""
    groups = []
    for pod in pods:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        ip = status.get("podIP")
        if not ip:
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        labels = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_phase": str(status.get("phase", "")),
            "__meta_kubernetes_pod_ready": "true" if ready else "false",
            "__meta_kubernetes_pod_ip": ip,
        }
        for key, value in (meta.get("labels") or {}).items():
            labels[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = str(value)
            labels[f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"] = "true"
        for container in spec.get("containers") or []:
            for port in container.get("ports") or []:
                groups.append(
                    {
                        "targets": [f"{ip}:{port['containerPort']}"],
                        "labels": {
                            **labels,
                            "__meta_kubernetes_pod_container_name": container["name"],
                            "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                            "__meta_kubernetes_pod_container_port_number": str(
                                port["containerPort"]
                            ),
                        },
                    }
                )
    return groups


def list_pods(kubectl: str, kubeconfig: Path, namespace: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "get", "pods", "-n", namespace, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return list(json.loads(out.stdout).get("items") or [])


def write_atomically(path: Path, groups: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(groups, indent=1, sort_keys=True))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    from e2e.helmkit import find_tool

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--namespace", action="append", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    kubectl = find_tool("kubectl")
    if kubectl is None:
        print("poddiscovery: kubectl not found (make binaries)", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    last = None
    while not stop.is_set():
        try:
            pods = [p for ns in args.namespace for p in list_pods(kubectl, args.kubeconfig, ns)]
        except (subprocess.SubprocessError, OSError, ValueError) as err:
            print(f"poddiscovery: listing pods failed: {err}", file=sys.stderr, flush=True)
        else:
            groups = target_groups(pods)
            if groups != last:
                write_atomically(args.out, groups)
                print(f"poddiscovery: {len(groups)} targets", flush=True)
                last = groups
        stop.wait(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
