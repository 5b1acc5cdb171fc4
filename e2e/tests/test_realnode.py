"""The test bed's real node (containerd, runc, kubelet, kube-proxy): what it does that the
process node agent cannot, and that it leaves the host as it found it.

- a container runs under its resource limits (v1 cgroups) and is reached through a
  ClusterIP Service (kube-proxy's iptables rules);
- stopping the node puts back every sysctl, iptables chain, interface, network namespace
  and cgroup it changed (snapshots before ``up`` and after ``down`` compared);
- what a real kubelet surfaces becomes glowplug's wake failure: an engine over its memory
  limit is OOMKilled; an image that is not present cannot be pulled; a hostPath model
  source of the wrong type leaves the pod in ContainerCreating with FailedMount;
- a ``medium: Memory`` /dev/shm is a tmpfs of ``sharedMemory`` whose pages count against
  the pod's memory limit.

Engine pods here run the SGLang stand-in image (a TEST DOUBLE, images/standin/Dockerfile).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.cluster.realnode import HostSnapshot
from e2e.helmkit import REAL_NODE_SCHEDULING, example_service, standin_image
from e2e.tests.conftest import OperatorProcess
from e2e.tests.helpers import wait_for
from glowplug import engines
from glowplug.api.spec import parse

pytestmark = [pytest.mark.cluster]
REAL = "glowplug-realnode"


@pytest.fixture
def real(cluster: Cluster) -> Cluster:
    if not cluster.has_real_node():
        pytest.skip("the test bed runs without its real node (GLOWPLUG_REAL_NODE=0)")
    return cluster


def sglang_readiness_probe() -> dict[str, Any]:
    svc = parse(example_service("probe", "default", real_node=True))
    return engines.get("sglang").probes(svc).readiness.manifest()


def standin_pod(name: str, memory: str = "256Mi", **extra: Any) -> dict[str, Any]:
    """A pod of the stand-in image (TEST DOUBLE) on the real node, serving on port 30000."""
    container: dict[str, Any] = {
        "name": "engine",
        "image": standin_image(),
        "imagePullPolicy": "Never",
        "args": ["--model-path", "test/model", "--host", "0.0.0.0", "--port", "30000"],
        "ports": [{"name": "http", "containerPort": 30000}],
        "resources": {
            "requests": {"cpu": "100m", "memory": memory},
            "limits": {"cpu": "500m", "memory": memory},
        },
        # The readiness probe glowplug renders for SGLang (/ready, 2 s timeout). The
        # stand-in's /health takes a second by design, as SGLang's one-token forward does:
        # under a 1 s probe timeout it times out, and the pod is Ready only by luck.
        "readinessProbe": sglang_readiness_probe(),
    }
    container.update(extra.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [container], "terminationGracePeriodSeconds": 2,
                 **json.loads(json.dumps(REAL_NODE_SCHEDULING)), **extra},
    }  # fmt: skip


def apply(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def get(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return dict(
        json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
    )


def pod_ready(cluster: Cluster, namespace: str, name: str) -> bool:
    conds = get(cluster, namespace, "pod", name).get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def exec_in(cluster: Cluster, namespace: str, pod: str, script: str) -> str:
    return cluster.kubectl("exec", "-n", namespace, pod, "--", "python3", "-c", script).stdout


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return int(resp.status), bytes(resp.read())


def serve_through_cluster_ip(cluster: Cluster, namespace: str, name: str) -> str:
    """A stand-in pod on the real node behind a ClusterIP Service; returns the Service URL."""
    apply(cluster, namespace, standin_pod(name))
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 30000}]},
        },
    )
    wait_for(lambda: pod_ready(cluster, namespace, name), 120, what=f"pod {name} Ready")
    ip = get(cluster, namespace, "service", name)["spec"]["clusterIP"]
    url = f"http://{ip}/health"

    def answered() -> bool:
        try:
            return http_get(url)[0] == 200
        except OSError:
            return False  # kube-proxy has not synced the endpoint yet

    wait_for(answered, 60, what=f"{url} through kube-proxy")
    return url


def test_limits_enforced_and_cluster_ip_routed(real: Cluster, namespace: str) -> None:
    url = serve_through_cluster_ip(real, namespace, "limits")
    pod = get(real, namespace, "pod", "limits")
    assert pod["spec"]["nodeName"] == REAL
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    # The v1 cgroup of the container carries the limits the pod spec asked for.
    out = exec_in(
        real,
        namespace,
        "limits",
        "print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read().strip(),"
        " open('/sys/fs/cgroup/cpu/cpu.cfs_quota_us').read().strip(),"
        " open('/sys/fs/cgroup/cpu/cpu.cfs_period_us').read().strip())",
    )
    memory, quota, period = (int(x) for x in out.split())
    assert memory == 256 * 2**20
    assert quota / period == pytest.approx(0.5)
    # kubectl logs goes API server -> kubelet -> containerd.
    logs = real.kubectl("logs", "-n", namespace, "limits").stdout
    assert logs.strip(), "no container output through kubectl logs"
    assert http_get(url)[0] == 200


def test_down_restores_the_host(real: Cluster, namespace: str) -> None:
    """Stop the session's real node, snapshot the host, start the node, use it (a pod, a
    ClusterIP Service), stop it, snapshot again: the two snapshots are equal."""
    if real.users():
        pytest.skip("another test session uses this test bed: not stopping its real node")
    down_s = real.stop_real_node()
    try:
        before = HostSnapshot.take()
        up_s = real.start_real_node()
        url = serve_through_cluster_ip(real, namespace, "snap")
        assert http_get(url)[0] == 200
        during = HostSnapshot.take()
        changes = before.diff(during)
        # The snapshot sees what the node changed (else comparing it proves nothing).
        assert any(c.startswith("links: + ") for c in changes), changes
        assert any("KUBE-SERVICES" in c for c in changes), changes
        assert any(c.startswith("netns: + cni-") for c in changes), changes
        real.kubectl("delete", "pod,service", "snap", "-n", namespace)
        down2_s = real.stop_real_node()
        after = HostSnapshot.take()
        assert before.diff(after) == []
        print(f"real node: down {down_s:.1f} s, up {up_s:.1f} s, down {down2_s:.1f} s")

        # A crash: containerd, the kubelet and kube-proxy killed while a pod runs. The
        # containers outlive them; down still leaves the host as it was.
        real.start_real_node()
        serve_through_cluster_ip(real, namespace, "crash")
        state = json.loads((real.state_dir / "state.json").read_text())
        for proc in state["procs"]:
            if proc["name"] in ("containerd", "kubelet", "kube-proxy"):
                os.kill(proc["pid"], signal.SIGKILL)
        real.stop_real_node()
        assert before.diff(HostSnapshot.take()) == []
    finally:
        if not real.has_real_node():
            real.start_real_node()


# -- what a real kubelet surfaces ------------------------------------------------------------


def failed_condition(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    obj = get(cluster, namespace, "embeddingservice", name)
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return dict(cond)
    return None


@contextlib.contextmanager
def woken_service(cluster: Cluster, namespace: str, name: str, **spec: Any) -> Iterator[None]:
    """An EmbeddingService on the real node, woken by hand (replicas 1). ``spec`` keys
    are ``section__field`` (``resources__memory="24Mi"``) or a whole ``section``."""
    svc = example_service(name, namespace, real_node=True)
    for key, value in spec.items():
        section, _, field = key.partition("__")
        if field:
            svc["spec"].setdefault(section, {})[field] = value
        else:
            svc["spec"][section] = value
    svc["spec"]["replicas"] = 1
    apply(cluster, namespace, svc)
    try:
        yield
    finally:
        cluster.kubectl("delete", "embeddingservice", name, "-n", namespace, "--wait=false")


def engine_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", f"glowplug.dev/service={name}", "-o", "json"
    ).stdout
    items = json.loads(out)["items"]
    return dict(items[0]) if items else None


def test_oom_killed_engine_is_the_oomkilled_wake_failure(
    real: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    # A TEST DOUBLE of an engine loading its weights into host memory: Python runs
    # sitecustomize.py (from the hostPath model volume, first on PYTHONPATH) before the
    # stand-in starts, and it holds 256 MiB, twice the container's memory limit.
    weights = Path(tempfile.mkdtemp(prefix="glowplug-oom-"))
    try:
        weights.chmod(0o755)  # the engine runs as uid 65532
        (weights / "sitecustomize.py").write_text("HELD = b'x' * (256 * 2**20)\n")
        model = {"id": ".", "servedName": "oom", "source": {"hostPath": {"path": str(weights)}}}
        env = [{"name": "PYTHONPATH", "value": "/models:/opt/standin"}]
        with woken_service(
            real, namespace, "oom", model=model, engine__env=env, resources__memory="128Mi"
        ):
            cond = wait_for(
                lambda: failed_condition(real, namespace, "oom"), 180, what="the Failed condition"
            )
            assert cond["reason"] == "OOMKilled", cond
            assert "too much memory" in cond["message"], cond
            pod = engine_pod(real, namespace, "oom")
            assert pod is not None and pod["spec"]["nodeName"] == REAL
    finally:
        shutil.rmtree(weights, ignore_errors=True)


def test_absent_image_is_the_image_pull_wake_failure(
    real: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    absent = "docker.io/glowplug-testbed/not-built-here:0"
    with woken_service(real, namespace, "noimage", engine__image=absent):
        cond = wait_for(
            lambda: failed_condition(real, namespace, "noimage"), 180, what="the Failed condition"
        )
        assert cond["reason"] == "ImagePullBackOff", cond
        assert absent in cond["message"], cond
        pod = engine_pod(real, namespace, "noimage")
        assert pod is not None
        waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
        # The kubelet's own words: no registry answers, so the pull fails with a message.
        assert waiting["reason"] in ("ErrImagePull", "ImagePullBackOff"), waiting
        assert waiting.get("message"), waiting


def test_host_path_of_wrong_type_is_the_failed_mount_wake_failure(
    real: Cluster, namespace: str, operator_process: OperatorProcess, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "weights.safetensors"
    not_a_dir.write_text("a file where a directory of weights should be")
    model = {
        "id": "qwen3",
        "servedName": "failedmount",
        "source": {"hostPath": {"path": str(not_a_dir)}},
    }
    with woken_service(real, namespace, "failedmount", model=model):
        cond = wait_for(
            lambda: failed_condition(real, namespace, "failedmount"),
            180,
            what="the Failed condition",
        )
        pod = engine_pod(real, namespace, "failedmount")
        assert pod is not None
        waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
        assert waiting["reason"] == "ContainerCreating", waiting
        assert cond["reason"] == "FailedMount", cond
        assert str(not_a_dir) in cond["message"], cond


# Inside the engine container: /dev/shm's size, then the memory cgroup's usage before and
# after writing 32 MiB into /dev/shm, then what writing past its size does.
SHM_SCRIPT = """
import os
st = os.statvfs("/dev/shm")
usage = "/sys/fs/cgroup/memory/memory.usage_in_bytes"
before = int(open(usage).read())
with open("/dev/shm/fill", "wb") as f:
    for _ in range(32):
        f.write(b"x" * 2**20)
after = int(open(usage).read())
try:
    with open("/dev/shm/more", "wb") as f:
        for _ in range(64):
            f.write(b"x" * 2**20)
            f.flush()
    full = "no error"
except OSError as e:
    full = e.errno
os.remove("/dev/shm/fill")
os.remove("/dev/shm/more")
print(st.f_blocks * st.f_frsize, after - before, full)
"""


def test_dev_shm_is_memory_of_the_pod(
    real: Cluster, namespace: str, operator_process: OperatorProcess
) -> None:
    """The engine's ``medium: Memory`` /dev/shm is a tmpfs of ``sharedMemory`` and the
    pod's memory cgroup pays for what is written there."""
    with woken_service(real, namespace, "shm", resources__sharedMemory="64Mi"):

        def ready_pod() -> str | None:
            pod = engine_pod(real, namespace, "shm")
            if pod and pod_ready(real, namespace, pod["metadata"]["name"]):
                return str(pod["metadata"]["name"])
            return None

        name = wait_for(ready_pod, 180, what="the shm engine pod Ready")
        size, charged, full = exec_in(real, namespace, name, SHM_SCRIPT).split()
        assert int(size) == 64 * 2**20
        assert int(charged) >= 30 * 2**20, f"only {charged} bytes charged for 32 MiB in /dev/shm"
        assert full == "28", full  # ENOSPC: the tmpfs is capped at sharedMemory
