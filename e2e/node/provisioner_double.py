"""NodeProvisionerDouble: a TEST DOUBLE of a node autoscaler (cluster-autoscaler) for the
test bed. It is not cluster-autoscaler; it does what the operator can observe of one.

It polls (every ``--interval`` s) for Pending pods in ``--namespace`` that ask for
``nvidia.com/gpu`` and that kube-scheduler marked ``PodScheduled=False/Unschedulable``,
and answers each once the way cluster-autoscaler's EventingScaleUpStatusProcessor does
(``cluster-autoscaler/processors/status/eventing_scale_up_processor.go``): a Normal Event
on the pod from component ``cluster-autoscaler`` with

- reason ``TriggeredScaleUp``, message ``pod triggered scale-up: [{<group> 0->1 (max: 1)}]``
  when the pod's nodeSelector is satisfied by the node group's labels (``--pool-label``)
  and ``--mode scale-up``; then, after ``--delay`` seconds, it "adds the node": it starts
  a second process node agent (``e2e.node.agent``) that registers Node ``--node-name``
  with the group's labels and ``nvidia.com/gpu`` capacity and runs the pods bound to it;
- reason ``NotTriggerScaleUp``, message ``pod didn't trigger scale-up: 1 node(s) didn't
  match Pod's node affinity/selector`` otherwise (``--mode refuse``, or no match).

On SIGTERM it stops the agent it started (which stops its pods and removes their
network namespaces) and deletes the Node object. The second agent takes its pod IPs from
``--agent-pod-cidr`` (a range the first agent does not hand out) and shares the host IP.

Run: ``python -m e2e.node.provisioner_double --kubeconfig K --namespace NS
--pool-label glowplug.dev/node-pool=gpu-a --delay 30 --state-dir D ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from e2e.node.api import Api, ApiError
from e2e.node.images import REPO

log = logging.getLogger("node-provisioner-double")

GPU = "nvidia.com/gpu"
COMPONENT = "cluster-autoscaler"  # the Event source cluster-autoscaler records under


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def wants_gpu(pod: dict[str, Any]) -> bool:
    for c in (pod.get("spec") or {}).get("containers") or []:
        limits = (c.get("resources") or {}).get("limits") or {}
        if str(limits.get(GPU, "0")) not in ("", "0"):
            return True
    return False


def unschedulable(pod: dict[str, Any]) -> bool:
    if (pod.get("spec") or {}).get("nodeName"):
        return False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return bool(cond.get("reason") == "Unschedulable")
    return False


def fits(pod: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    return all(labels.get(k) == v for k, v in selector.items())


class NodeProvisionerDouble:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.api = Api.from_kubeconfig(args.kubeconfig)
        self.labels = dict(kv.split("=", 1) for kv in args.pool_label)
        self.answered: set[str] = set()  # pod uids that got their Event
        self.node_at: float | None = None  # when the node is due
        self.agent: subprocess.Popen[bytes] | None = None
        self.stop = asyncio.Event()

    async def event(self, pod: dict[str, Any], reason: str, message: str) -> None:
        meta = pod["metadata"]
        now = _rfc3339(time.time())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{os.urandom(8).hex()}"},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "type": "Normal",
            "reason": reason,
            "message": message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body)
        log.info("%s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)

    async def scan(self) -> None:
        path = f"/api/v1/namespaces/{self.args.namespace}/pods"
        pods = await self.api.get(path + "?fieldSelector=status.phase%3DPending")
        group = self.args.node_name
        for pod in pods.get("items") or []:
            uid = pod["metadata"]["uid"]
            if uid in self.answered or not wants_gpu(pod) or not unschedulable(pod):
                continue
            self.answered.add(uid)
            if self.args.mode == "scale-up" and fits(pod, self.labels):
                await self.event(
                    pod, "TriggeredScaleUp", f"pod triggered scale-up: [{{{group} 0->1 (max: 1)}}]"
                )
                if self.node_at is None:
                    self.node_at = time.monotonic() + self.args.delay
                    log.info("node %s due in %.0f s", group, self.args.delay)
            else:
                await self.event(
                    pod,
                    "NotTriggerScaleUp",
                    "pod didn't trigger scale-up: 1 node(s) didn't match Pod's node"
                    " affinity/selector",
                )

    def start_agent(self) -> None:
        a = self.args
        state = Path(a.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        cmd = [
            sys.executable, "-m", "e2e.node.agent",
            f"--kubeconfig={a.kubeconfig}", f"--state-dir={state}",
            f"--node-name={a.node_name}", f"--host-ip={a.host_ip}",
            f"--pod-cidr={a.agent_pod_cidr}", f"--api-port={a.api_port}",
            f"--gpus={a.gpus}", "--backoff-base=2",
            *(f"--node-label={kv}" for kv in a.pool_label),
        ]  # fmt: skip
        with open(state / "agent.log", "ab") as out:
            self.agent = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
        log.info("node %s: agent started (pid %d)", a.node_name, self.agent.pid)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            while not self.stop.is_set():
                try:
                    await self.scan()
                except (ApiError, OSError, TimeoutError) as err:
                    log.warning("scan failed: %s", err)
                due = self.node_at is not None and time.monotonic() >= self.node_at
                if due and self.agent is None:
                    self.start_agent()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.args.interval)
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.agent.wait, 60)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        if self.agent is not None:
            with contextlib.suppress(ApiError, OSError):
                await self.api.request(
                    "DELETE", f"/api/v1/nodes/{self.args.node_name}", ok_missing=True
                )
        await self.api.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="a TEST DOUBLE of a node autoscaler")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True, help="watch this namespace's pods")
    p.add_argument("--mode", choices=("scale-up", "refuse"), default="scale-up")
    p.add_argument("--pool-label", action="append", default=[], help="node group label k=v")
    p.add_argument("--node-name", default="gpu-pool-1", help="the node (and group) it adds")
    p.add_argument("--delay", type=float, default=30.0, help="seconds until the node registers")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between scans")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--state-dir", required=True, help="the added node's agent state")
    p.add_argument("--host-ip", required=True, help="the test bed's host IP")
    p.add_argument("--agent-pod-cidr", required=True, help="pod IPs of the added node")
    p.add_argument("--api-port", type=int, default=6443)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s node-provisioner-double %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    asyncio.run(NodeProvisionerDouble(parse_args(argv)).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
