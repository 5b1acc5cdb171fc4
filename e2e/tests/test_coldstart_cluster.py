"""Cold starts as on a GPU cluster whose GPU node pool is at zero (issue 11).

Real processes: the test bed's API server, scheduler and node agent; ``glowplug
operator`` (scoped to the test's namespace, reading the activator's /stats) and
``glowplug activator`` on 127.0.0.1; the SGLang stand-in (a test double of SGLang) as
the engine; and ``NodeProvisionerDouble`` (``e2e.node.provisioner_double``), a TEST
DOUBLE of cluster-autoscaler that answers Unschedulable GPU pods with cluster-autoscaler's
Events and adds a GPU node (a second process node agent) after a delay.

The services select a node pool no node has yet (``spec.pod.nodeSelector``), so their
pod is Unschedulable exactly as on a cluster whose GPU pool is scaled to zero.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import REPO, Cluster
from e2e.tests.conftest import OperatorFactory, OperatorProcess
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, apply, free_port, get, wait_for

pytestmark = pytest.mark.cluster

POOL_KEY = "glowplug.dev/node-pool"
# The added node's delay: about what a GPU node takes to register on a real cloud
# (a minute or more) scaled down for the test bed; GLOWPLUG_TEST_NODE_DELAY overrides it.
NODE_DELAY = float(os.environ.get("GLOWPLUG_TEST_NODE_DELAY", "30"))


def service(name: str, pool: str, **scaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name},
        "spec": {
            "model": {"id": "test/stand-in-model", "source": {"huggingFace": {}}},
            "engine": {"env": [{"name": "STANDIN_DELAY_MS", "value": "5"}]},
            "scaling": {"maxReplicas": 1, "idleTimeout": "10m", **scaling},
            "pod": {"nodeSelector": {POOL_KEY: pool}},
            "replicas": 0,
        },
    }


class ProvisionerProcess:
    """The node-provisioner TEST DOUBLE as a process; stopped (with its node) by pid."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def provisioner(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., ProvisionerProcess]]:
    started: list[ProvisionerProcess] = []

    def start(
        *, pool: str, mode: str = "scale-up", delay: float = NODE_DELAY
    ) -> ProvisionerProcess:
        cfg = cluster.config
        net = ipaddress.ip_network(cfg.pod_cidr)
        # The last sixteenth of the pod CIDR: the first agent starts at its bottom.
        agent_cidr = list(net.subnets(prefixlen_diff=4))[-1]
        log_path = tmp_path / f"provisioner-{len(started)}.log"
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable, "-m", "e2e.node.provisioner_double",
            f"--kubeconfig={cluster.kubeconfig}", f"--namespace={namespace}",
            f"--mode={mode}", f"--pool-label={POOL_KEY}={pool}",
            f"--node-name={pool}-1", f"--delay={delay}",
            f"--state-dir={tmp_path / f'node-{pool}'}", f"--host-ip={cfg.host_ip}",
            f"--agent-pod-cidr={agent_cidr}", f"--api-port={cfg.apiserver_port}",
        ]  # fmt: skip
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        p = ProvisionerProcess(proc, log_path)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()
            sys.stderr.write(f"\n--- node-provisioner double log ---\n{p.log()[-3000:]}\n")


@pytest.fixture
def stack(
    cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path
) -> Iterator[tuple[ActivatorProcess, OperatorProcess, int]]:
    """An activator and an operator that reads its /stats (the FirstResponse phase) and
    serves its metrics (the phase histograms) on a free port."""
    if not GLOWPLUG.exists():
        pytest.skip(f"{GLOWPLUG} is missing: run `make install`")
    act = ActivatorProcess(cluster, namespace, tmp_path / "activator.log", drain_seconds=0.2)
    act.start()
    metrics_port = free_port()
    op = operator_factory(
        "--standalone", "--namespace", namespace, "--metrics-port", str(metrics_port),
        "--activator-url", act.url,
    )  # fmt: skip
    # The wake's timeline counts from the trigger: start it only once the operator runs.
    wait_for(lambda: "Initial authentication has finished" in op.log(), 90, what="operator up")
    try:
        yield act, op, metrics_port
    finally:
        act.stop()
        print(f"\n--- activator log tail ---\n{act.log()[-3000:]}")


def post(url: str, model: str, timeout: float = 600) -> tuple[int, Any, dict[str, str]]:
    body = json.dumps({"model": model, "input": "hello"}).encode()
    req = urllib.request.Request(
        f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), json.load(resp), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return int(err.code), json.loads(err.read() or b"{}"), dict(err.headers)


class Held:
    """One request in a thread, so the test can watch status while it is held."""

    def __init__(self, url: str, model: str) -> None:
        self.result: tuple[int, Any, dict[str, str]] | None = None
        self.t0 = time.monotonic()
        self.elapsed = 0.0
        self.thread = threading.Thread(target=self._run, args=(url, model), daemon=True)
        self.thread.start()

    def _run(self, url: str, model: str) -> None:
        self.result = post(url, model)
        self.elapsed = time.monotonic() - self.t0

    def wait(self, limit: float) -> tuple[int, Any, dict[str, str]]:
        self.thread.join(limit)
        assert self.result is not None, "the held request never finished"
        return self.result


def wait_routed(act: ActivatorProcess, name: str) -> None:
    def routed() -> bool:
        with urllib.request.urlopen(f"{act.url}/v1/models", timeout=5) as resp:
            return any(m["glowplug"]["name"] == name for m in json.load(resp)["data"])

    wait_for(routed, 30, what=f"{name} in /v1/models")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    path = (
        f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.kind%3D"
        f"EmbeddingService,involvedObject.name%3D{name}"
    )
    return list(cluster.api("GET", path)["items"])


def phase_histogram(port: int, namespace: str, name: str) -> dict[str, tuple[float, float]]:
    """phase -> (count, sum) of glowplug_wake_phase_duration_seconds for one service."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for suffix, idx in (("_count{", 0), ("_sum{", 1)):
            prefix = "glowplug_wake_phase_duration_seconds" + suffix
            if line.startswith(prefix) and f'service="{name}"' in line:
                if f'namespace="{namespace}"' not in line:
                    continue
                phase = line.split('phase="', 1)[1].split('"', 1)[0]
                out.setdefault(phase, [0.0, 0.0])[idx] = float(line.rsplit(" ", 1)[1])
    return {k: (v[0], v[1]) for k, v in out.items()}


def test_held_while_a_node_is_added_then_served_with_the_timeline(
    cluster: Cluster,
    namespace: str,
    stack: tuple[ActivatorProcess, OperatorProcess, int],
    provisioner: Callable[..., ProvisionerProcess],
) -> None:
    act, _op, metrics_port = stack
    pool = f"gpu-{namespace[-5:]}"
    provisioner(pool=pool)
    apply(cluster, namespace, service("coldnode", pool))
    wait_routed(act, "coldnode")
    held = Held(act.url, "coldnode")

    def waiting_for_node() -> dict[str, Any] | None:
        obj = get(cluster, "embsvc", "coldnode", namespace)
        wake = (obj.get("status") or {}).get("wake") or {}
        msg = str(wake.get("message", ""))
        return obj if wake.get("phase") == "WaitingForNode" and "scale-up" in msg else None

    obj = wait_for(waiting_for_node, 60, what="status.wake WaitingForNode with the Event")
    waking = condition(obj, "Waking")
    assert (waking["status"], waking["reason"]) == ("True", "WaitingForNode"), waking
    assert "pod triggered scale-up" in waking["message"]
    assert "didn't match Pod's node affinity/selector" in waking["message"]  # kube-scheduler's
    assert condition(obj, "Failed").get("status") != "True"

    status, body, headers = held.wait(NODE_DELAY + 240)
    assert status == 200, body
    assert headers.get("X-Glowplug-Cold-Start") == "true"
    waited = float(headers["X-Glowplug-Wait-Seconds"])
    assert waited >= NODE_DELAY * 0.8

    def timeline_done() -> list[dict[str, Any]] | None:
        last = (get(cluster, "embsvc", "coldnode", namespace).get("status") or {}).get("lastWake")
        tl = (last or {}).get("timeline") or []
        return tl if tl and tl[-1]["phase"] == "FirstResponse" else None

    timeline = wait_for(timeline_done, 60, what="lastWake ending in FirstResponse")
    phases = [e["phase"] for e in timeline]
    assert phases[0] == "WaitingForNode" and phases[-2:] == ["Ready", "FirstResponse"], phases
    # one Normal Event per phase on the EmbeddingService (kubectl describe shows them)
    reasons = {e["reason"] for e in events(cluster, namespace, "coldnode")}
    assert {"WaitingForNode", "Ready"} <= reasons, reasons
    hist = wait_for(
        lambda: (
            (h := phase_histogram(metrics_port, namespace, "coldnode"))
            and h.get("first_response", (0, 0))[0] >= 1
            and h
        ),
        30,
        what="phase histograms",
    )
    assert hist["node"][0] == 1 and hist["node"][1] >= NODE_DELAY * 0.8, hist
    # The report's phase timings: printed, not asserted.
    start = timeline[0]["time"]
    print(f"\nnode-provisioner scenario (node delay {NODE_DELAY:g} s): held {held.elapsed:.1f} s")
    print(f"  timeline from {start}: {[(e['phase'], e['time']) for e in timeline]}")
    print(f"  histogram (count, sum s): {hist}")


def test_not_trigger_scale_up_is_a_503_within_seconds(
    cluster: Cluster,
    namespace: str,
    stack: tuple[ActivatorProcess, OperatorProcess, int],
    provisioner: Callable[..., ProvisionerProcess],
) -> None:
    act, _op, _port = stack
    provisioner(pool=f"gpu-{namespace[-5:]}", mode="refuse")
    apply(cluster, namespace, service("nogroup", "no-such-pool"))
    wait_routed(act, "nogroup")
    t0 = time.monotonic()
    status, body, headers = post(act.url, "nogroup", timeout=120)
    took = time.monotonic() - t0
    assert status == 503, body
    assert body["error"]["code"] == "NotTriggerScaleUp", body
    assert "pod didn't trigger scale-up" in body["error"]["message"]
    assert headers.get("Retry-After")
    obj = get(cluster, "embsvc", "nogroup", namespace)
    failed = condition(obj, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "NotTriggerScaleUp")
    warnings = [e for e in events(cluster, namespace, "nogroup") if e["type"] == "Warning"]
    assert any(e["reason"] == "NotTriggerScaleUp" for e in warnings), warnings
    print(f"\nNotTriggerScaleUp: 503 after {took:.1f} s")


def test_no_autoscaler_and_no_node_fails_after_node_wait_timeout(
    cluster: Cluster, namespace: str, stack: tuple[ActivatorProcess, OperatorProcess, int]
) -> None:
    act, _op, _port = stack
    apply(cluster, namespace, service("nowhere", "no-such-pool", nodeWaitTimeout="15s"))
    wait_routed(act, "nowhere")
    t0 = time.monotonic()
    status, body, _headers = post(act.url, "nowhere", timeout=300)
    took = time.monotonic() - t0
    assert status == 503, body
    assert body["error"]["code"] == "NodeWaitTimeout", body
    assert "nodeWaitTimeout" in body["error"]["message"]
    # not before the timeout (its start is the whole-second wakeStartedTime: 1 s of slack)
    assert took >= 13, took
    failed = condition(get(cluster, "embsvc", "nowhere", namespace), "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "NodeWaitTimeout")
    print(f"\nNodeWaitTimeout (15 s): 503 after {took:.1f} s")
