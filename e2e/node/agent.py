"""The test bed's node agent: a small kubelet that runs pods as local processes.

It registers one Node (fake ``nvidia.com/gpu: 8`` capacity), keeps it Ready with status
and Lease heartbeats, watches the pods bound to it and runs each one (see ``pod.py``).
On SIGTERM it stops every process it started and removes every network namespace it
made. Started by ``python -m e2e.cluster up``; logs go to ``<state>/../logs``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from e2e.node import netns
from e2e.node.api import Api, ApiError
from e2e.node.images import REPO, ImageMap
from e2e.node.logserver import LogServer
from e2e.node.pod import PodRunner, now_rfc3339

log = logging.getLogger("node-agent")

HEARTBEAT_S = 10.0
LEASE_S = 40


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.api = Api.from_kubeconfig(args.kubeconfig)
        self.state_dir = Path(args.state_dir)
        self.node_name: str = args.node_name
        self.host_ip: str = args.host_ip
        self.api_port: int = args.api_port
        self.backoff_base: float = args.backoff_base
        self.pool = netns.IpPool(args.pod_cidr, args.host_ip)
        self.images = ImageMap.load(Path(args.image_map) if args.image_map else None)
        self.repo = REPO
        self.cpu: str = args.cpu
        self.memory: str = args.memory
        self.gpus: int = args.gpus
        self.labels = dict(kv.split("=", 1) for kv in args.node_label)
        self.kubelet_port: int = args.kubelet_port if args.serving_cert else 0
        self.log_server: LogServer | None = None
        if args.serving_cert:
            self.log_server = LogServer(
                self.state_dir / "pods",
                args.kubelet_port,
                args.serving_cert,
                args.serving_key,
                args.client_ca,
                self.container_running,
            )
        self.pods: dict[str, PodRunner] = {}
        self.finished: set[str] = set()  # uids of pods stopped for good
        self._probe_session: aiohttp.ClientSession | None = None
        self._ip_forward_before: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def probe_session(self) -> aiohttp.ClientSession:
        if self._probe_session is None:
            # Probes must not share keep-alive connections with the pod (as the kubelet).
            self._probe_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0)
            )
        return self._probe_session

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        # Keep a reference until done: the loop holds tasks only weakly.
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def event(
        self, pod: dict[str, Any], etype: str, reason: str, message: str, container: str = ""
    ) -> None:
        """Record a core/v1 Event on the pod as the kubelet would (best effort, async)."""
        meta = pod["metadata"]
        now = datetime_micro()
        ref: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        if container:
            ref["fieldPath"] = f"spec.containers{{{container}}}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{os.urandom(8).hex()}"},
            "involvedObject": ref,
            "type": etype,
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node_name,
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
        }

        async def post() -> None:
            with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                await self.api.request(
                    "POST", f"/api/v1/namespaces/{meta['namespace']}/events", body
                )

        self._background(post())

    def container_running(self, namespace: str, pod: str, container: str) -> bool:
        for r in self.pods.values():
            if r.namespace == namespace and r.name == pod:
                return r.container_running(container)
        return False

    def forget(self, uid: str) -> None:
        self.pods.pop(uid, None)
        self.finished.add(uid)

    # -- node ----------------------------------------------------------------------------------

    def _node_status(self) -> dict[str, Any]:
        now = now_rfc3339()
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": "110",
            "ephemeral-storage": "100Gi",
            "nvidia.com/gpu": str(self.gpus),
        }

        def cond(t: str, s: str, reason: str, msg: str) -> dict[str, str]:
            return {
                "type": t,
                "status": s,
                "reason": reason,
                "message": msg,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._started,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "test bed"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "test bed"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "test bed"),
                cond(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "glowplug test-bed node agent is posting ready status",
                ),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": "glowplug-testbed",
                "systemUUID": "glowplug-testbed",
                "bootID": "glowplug-testbed",
                "kernelVersion": platform.release(),
                "osImage": "glowplug test bed (processes, no containers)",
                "containerRuntimeVersion": "glowplug-testbed://0.1",
                "kubeletVersion": "v1.35.4",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def register(self) -> None:
        self._started = now_rfc3339()
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "glowplug.dev/test-bed": "true",
            **self.labels,
        }
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
            "spec": {"podCIDR": str(self.pool.net), "podCIDRs": [str(self.pool.net)]},
            "status": self._node_status(),
        }
        path = f"/api/v1/nodes/{self.node_name}"
        existing = await self.api.get(path, ok_missing=True)
        if existing is None:
            await self.api.request("POST", "/api/v1/nodes", node)
        else:
            await self.api.merge_patch(path, {"metadata": {"labels": labels}})
        await self.api.merge_patch(path + "/status", {"status": self._node_status()})
        # Admission adds node.kubernetes.io/not-ready at creation; the node lifecycle
        # controller would lift it within seconds of Ready, we lift it at once.
        await self.api.merge_patch(path, {"spec": {"taints": None, "unschedulable": None}})
        log.info("node %s registered and Ready", self.node_name)

    async def heartbeat(self) -> None:
        lease_path = (
            f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        )
        while True:
            try:
                now = datetime_micro()
                lease = await self.api.get(lease_path, ok_missing=True)
                if lease is None:
                    node = await self.api.get(f"/api/v1/nodes/{self.node_name}")
                    await self.api.request(
                        "POST",
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                        {
                            "apiVersion": "coordination.k8s.io/v1",
                            "kind": "Lease",
                            "metadata": {
                                "name": self.node_name,
                                "ownerReferences": [
                                    {
                                        "apiVersion": "v1",
                                        "kind": "Node",
                                        "name": self.node_name,
                                        "uid": node["metadata"]["uid"],
                                    }
                                ],
                            },
                            "spec": {
                                "holderIdentity": self.node_name,
                                "leaseDurationSeconds": LEASE_S,
                                "renewTime": now,
                            },
                        },
                    )
                else:
                    await self.api.merge_patch(lease_path, {"spec": {"renewTime": now}})
                await self.api.merge_patch(
                    f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()}
                )
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                log.warning("heartbeat failed: %s", e)
            await asyncio.sleep(HEARTBEAT_S)

    # -- pods ----------------------------------------------------------------------------------

    def on_pod(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        runner = self.pods.get(uid)
        if runner is not None:
            runner.update(pod)
            return
        if uid in self.finished:
            # Events queued before our own DELETE of a pod we already stopped: never
            # start it again.
            return
        phase = pod.get("status", {}).get("phase")
        if pod["metadata"].get("deletionTimestamp"):
            # Being deleted and not running here (never started, or started by an earlier
            # agent whose processes are gone): only the object is left to remove.
            self._background(self._delete_object(pod))
            return
        if phase in ("Succeeded", "Failed"):
            return
        runner = PodRunner(self, pod)
        self.pods[uid] = runner
        log.info("%s: bound here; starting", runner.ident)
        runner.start()
        runner.update(pod)

    async def _delete_object(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
            await self.api.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    def on_pod_gone(self, uid: str) -> None:
        runner = self.pods.get(uid)
        if runner is not None and not runner.stopped.is_set():
            log.info("%s: object deleted; stopping its processes", runner.ident)
            self._background(runner.kill_now())

    async def watch_pods(self) -> None:
        selector = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    lst = await self.api.request("GET", "/api/v1/pods", params=selector)
                    rv = lst["metadata"]["resourceVersion"]
                    seen = set()
                    for pod in lst.get("items", []):
                        seen.add(pod["metadata"]["uid"])
                        self.on_pod(pod)
                    for uid in list(self.pods):
                        if uid not in seen:
                            self.on_pod_gone(uid)
                params = {
                    **selector,
                    "resourceVersion": rv,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "300",
                }
                async for ev in self.api.watch("/api/v1/pods", params):
                    obj = ev.get("object", {})
                    if ev.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            rv = None  # too old: list again
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if ev["type"] == "BOOKMARK":
                        continue
                    if ev["type"] == "DELETED":
                        self.on_pod_gone(obj["metadata"]["uid"])
                    else:
                        self.on_pod(obj)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("pod watch failed (%s); re-listing", e)
                rv = None
                await asyncio.sleep(1.0)

    # -- run -----------------------------------------------------------------------------------

    async def run(self) -> None:
        self._enable_forwarding()
        # Anything left by an agent that was killed: its namespaces and their processes.
        for line in netns.sweep_recorded(self.state_dir):
            log.info(line)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await self.register()
        if self.log_server is not None:
            await self.log_server.start()
        tasks = [asyncio.create_task(self.heartbeat()), asyncio.create_task(self.watch_pods())]
        await stop.wait()
        log.info("stopping: %d pods", len(self.pods))
        for t in tasks:
            t.cancel()
        await asyncio.gather(
            *(r.kill_now() for r in list(self.pods.values())), return_exceptions=True
        )
        for line in netns.sweep_recorded(self.state_dir):
            log.info(line)
        if self.log_server is not None:
            await self.log_server.stop()
        if self._probe_session is not None:
            await self._probe_session.close()
        await self.api.close()
        self._restore_forwarding()
        log.info("stopped; nothing left behind")

    def _enable_forwarding(self) -> None:
        path = Path("/proc/sys/net/ipv4/ip_forward")
        self._ip_forward_before = path.read_text().strip()
        if self._ip_forward_before != "1":
            path.write_text("1\n")
            (self.state_dir / "ip_forward.before").write_text(self._ip_forward_before)

    def _restore_forwarding(self) -> None:
        saved = self.state_dir / "ip_forward.before"
        if saved.exists():
            Path("/proc/sys/net/ipv4/ip_forward").write_text(saved.read_text().strip() + "\n")
            saved.unlink()


def datetime_micro() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="node-agent", description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--node-name", default="glowplug-testbed")
    p.add_argument("--host-ip", default="10.244.0.1")
    p.add_argument("--pod-cidr", default="10.244.0.0/16")
    p.add_argument("--api-port", type=int, default=6443)
    p.add_argument("--backoff-base", type=float, default=10.0, help="crash-loop back-off base (s)")
    p.add_argument("--image-map", default=None, help="image map YAML (default: images.yaml)")
    p.add_argument("--kubelet-port", type=int, default=10250, help="log endpoint port")
    p.add_argument(
        "--serving-cert", default=None, help="TLS cert of the log endpoint (off if unset)"
    )
    p.add_argument("--serving-key", default=None)
    p.add_argument("--client-ca", default=None, help="CA of the API server's client certificate")
    # Fake capacity: the operator asks for GPUs and may ask for more CPU than this machine has.
    p.add_argument("--cpu", default=os.environ.get("GLOWPLUG_NODE_CPU", "64"))
    p.add_argument("--memory", default=os.environ.get("GLOWPLUG_NODE_MEMORY", "512Gi"))
    p.add_argument("--gpus", type=int, default=int(os.environ.get("GLOWPLUG_NODE_GPUS", "8")))
    p.add_argument(
        "--node-label",
        action="append",
        default=[x for x in os.environ.get("GLOWPLUG_NODE_LABELS", "").split(",") if x],
        help="extra node label k=v (repeatable; GLOWPLUG_NODE_LABELS=k=v,k2=v2)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s node-agent %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    args = parse_args(argv)
    Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    asyncio.run(Agent(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
