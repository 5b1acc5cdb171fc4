"""``make demo``: install glowplug, wake an embedding service with one request, watch it go
back to zero, and print the GPU-hours it used and saved.

With no ``KUBECONFIG`` it brings up the local test bed (``make cluster-up``: a real
control plane, a real node, and a process node agent). On the test bed's real node the
chart's operator and activator run as containers of the glowplug image built here, the
engine as a container of the SGLang stand-in image (a CPU TEST DOUBLE, not SGLang), and
the demo talks to the activator through its ClusterIP Service (kube-proxy). Without a
real node (``GLOWPLUG_REAL_NODE=0``) the node agent runs them as processes and the demo
uses an activator pod IP. With a ``KUBECONFIG``, it uses that cluster (the glowplug image
must be pullable there: set ``GLOWPLUG_IMAGE=repo:tag``; ``GLOWPLUG_E2E_ENGINE=tei`` serves
on CPU). ``make demo ENGINE=vllm`` (``GLOWPLUG_E2E_ENGINE=vllm``) serves
docs/examples/minilm-vllm-cpu.yaml with the REAL vLLM server on the process node's CPU:
real all-MiniLM-L6-v2 vectors, and a cold start of 75-100 s on 2 quiet cores (minutes on
a busy machine). The cluster and the release are left up for exploring; the last lines
say how to tear them down.

``make demo PROMETHEUS=1`` (``GLOWPLUG_DEMO_PROMETHEUS=1``, local test bed only) also
starts Debian's Prometheus on the host (``scripts/install-prometheus.sh``) with the
chart's recording rules, scraping the chart's operator and activator pods as the chart's
PodMonitor describes them, and leaves it running on 127.0.0.1:19090
(``GLOWPLUG_DEMO_PROMETHEUS_PORT``); the last lines print its URL, how to draw the key
panels from it (``e2e/bench/panels.py``) and how to stop it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from e2e.helmkit import (
    CHART,
    REAL_NODE_SCHEDULING,
    Kube,
    Timeout,
    activator_addresses,
    activator_cluster_ip,
    api_key,
    e2e_engine,
    example_service,
    wait_until,
)

RELEASE = "glowplug"
RELEASE_NS = "glowplug-system"
APP_NS = "glowplug-demo"
# The service the demo wakes: the real MiniLM on vLLM, or the stand-in's "Qwen3".
SERVICE = "minilm" if os.environ.get("GLOWPLUG_E2E_ENGINE") == "vllm" else "qwen3-small"
IDLE_TIMEOUT_S = 15
# After scale to zero the demo waits this long so the ledger (checkpointed into status
# about every 10 s) shows the always-on baseline growing while glowplug holds nothing.
SHOW_ZERO_S = 30
# The demo's Prometheus (PROMETHEUS=1): left running between demos, one at a time.
PROMETHEUS = os.environ.get("GLOWPLUG_DEMO_PROMETHEUS", "") not in ("", "0")
PROMETHEUS_PORT = int(os.environ.get("GLOWPLUG_DEMO_PROMETHEUS_PORT", "19090"))
PROMETHEUS_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "glowplug" / "demo-prometheus"
)


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)


def local_cluster() -> tuple[Path, Path | None]:
    """The local test bed's kubeconfig (starting it if needed) and its binaries."""
    from e2e.cluster import Cluster, ensure_binaries

    print("No KUBECONFIG: bringing up the local test bed (make cluster-up) ...", flush=True)
    cluster = Cluster(bin_dir=ensure_binaries())
    cluster.up(started_by="cli")
    return Path(cluster.kubeconfig), Path(cluster.bin_dir)


def has_real_node(kube: Kube) -> bool:
    """True on the local test bed with its real node (containerd + kubelet)."""
    return bool(kube.items("nodes", "-l", "glowplug.dev/node=real"))


def install(kube: Kube, clock: Clock, real_node: bool) -> None:
    image = os.environ.get("GLOWPLUG_IMAGE", "")
    sets = [f"watchNamespaces={{{APP_NS}}}"]
    if image:
        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        sets += [f"image.repository={repo}"] + ([f"image.tag={tag}"] if tag else [])
    kube.kubectl("create", "namespace", APP_NS, check=False)
    where = " on the real node (containers)" if real_node else ""
    clock.say(
        f"helm upgrade --install {RELEASE} charts/glowplug -n {RELEASE_NS}{where} (waits for pods)"
    )
    args = ["upgrade", "--install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace"]
    for s in sets:
        args += ["--set", s]
    if real_node:
        for comp in ("operator", "activator"):
            for key, value in REAL_NODE_SCHEDULING.items():
                args += ["--set-json", f"{comp}.{key}={json.dumps(value)}"]
    kube.helm(*args, "--wait", "--timeout", "300s", timeout=400)
    for comp in ("operator", "activator"):
        pods = kube.items("pods", "-n", RELEASE_NS, "-l", f"app.kubernetes.io/component={comp}")
        nodes = sorted({p["spec"].get("nodeName", "?") for p in pods})
        clock.say(f"{comp}: {len(pods)} pods ready on {', '.join(nodes)}")


def start_prometheus(kube: Kube, clock: Clock, on_testbed: bool) -> str | None:
    """PROMETHEUS=1: a detached Prometheus scraping the release (replacing the previous
    demo's); its URL, or None when not asked for or not possible here."""
    if not PROMETHEUS:
        return None
    if not on_testbed:
        clock.say("PROMETHEUS=1: skipped (it scrapes pod IPs from this host: local test bed only)")
        return None
    import shutil

    from e2e.helmkit import chart_podmonitor
    from e2e.prometheus import (
        PodDiscovery,
        Prometheus,
        PrometheusError,
        install_prometheus,
        podmonitor_namespaces,
        podmonitor_scrape_configs,
        stop_detached,
    )

    if stop_detached(PROMETHEUS_DIR):
        clock.say("stopped the previous demo's Prometheus")
    shutil.rmtree(PROMETHEUS_DIR / "data", ignore_errors=True)
    try:
        binary = install_prometheus()
        monitor = chart_podmonitor(kube, RELEASE, RELEASE_NS, {})
        pods = PodDiscovery(
            kube.kubeconfig, podmonitor_namespaces(monitor), PROMETHEUS_DIR, detach=True
        )
        prom = Prometheus(
            binary,
            PROMETHEUS_DIR,
            podmonitor_scrape_configs(monitor, pods.targets),
            port=PROMETHEUS_PORT,
            detach=True,
        )
    except PrometheusError as err:
        clock.say(f"PROMETHEUS=1: not started: {err}")
        return None
    clock.say(
        f"Prometheus at {prom.url} (pid {prom.proc.pid}): the chart's pods as its PodMonitor"
        " selects them, every 1 s, with the chart's recording rules"
    )
    return prom.url


def base_url(
    kube: Kube, on_testbed: bool, real_node: bool
) -> tuple[str, subprocess.Popen[str] | None]:
    """The activator's address: its ClusterIP on the test bed's real node (kube-proxy
    routes it), a pod IP on the process node, a port-forward elsewhere."""
    if real_node:
        return f"http://{activator_cluster_ip(kube, RELEASE_NS, RELEASE)}/v1", None
    if on_testbed:
        addrs = wait_until(
            lambda: activator_addresses(kube, RELEASE_NS, RELEASE), 60, "activator endpoints"
        )
        return f"http://{addrs[0]}/v1", None
    proc = subprocess.Popen(
        [
            kube.kubectl_bin, "--kubeconfig", str(kube.kubeconfig), "port-forward",
            "-n", RELEASE_NS, f"svc/{RELEASE}-activator", ":80",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    m = re.search(r"127\.0\.0\.1:(\d+)", proc.stdout.readline())
    if not m:
        proc.terminate()
        raise RuntimeError("kubectl port-forward to the activator failed")
    return f"http://127.0.0.1:{m.group(1)}/v1", proc


def snapshot(kube: Kube) -> dict[str, str]:
    """What the progress lines report: desired replicas, phase, and each pod's state."""
    obj = kube.get("embeddingservice", SERVICE, "-n", APP_NS) or {}
    status = obj.get("status") or {}
    state = {
        "replicas": str((obj.get("spec") or {}).get("replicas", 0)),
        "phase": str(status.get("phase", "-")),
    }
    for pod in kube.items("pods", "-n", APP_NS, "-l", f"glowplug.dev/service={SERVICE}"):
        name = pod["metadata"]["name"]
        phase = pod.get("status", {}).get("phase", "Pending")
        if pod["metadata"].get("deletionTimestamp"):
            phase = "Terminating"
        else:
            conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            if phase == "Pending" and conds.get("PodScheduled") == "True":
                phase = "Pending (scheduled: holds its GPU)"
            if conds.get("Ready") == "True":
                phase = "Ready"
        state[f"pod {name}"] = phase
    return state


def report_changes(clock: Clock, before: dict[str, str], after: dict[str, str]) -> None:
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if new is None:
            clock.say(f"{key}: gone")
        elif key == "replicas":
            clock.say(f"replicas {old} -> {new}")
        elif old is None:
            clock.say(f"{key}: {new}")
        else:
            clock.say(f"{key}: {old} -> {new}")


def watch_until(
    kube: Kube,
    clock: Clock,
    state: dict[str, str],
    done: threading.Event | None,
    stop_when: Any,
) -> None:
    """Print every change until ``done`` is set or ``stop_when(state)``; ``state`` is
    updated in place so the next watch continues where this one stopped."""
    while True:
        new = snapshot(kube)
        report_changes(clock, state, new)
        state.clear()
        state.update(new)
        if (done is not None and done.is_set()) or (stop_when is not None and stop_when(state)):
            return
        time.sleep(0.5)


def main() -> int:
    from openai import OpenAI

    clock = Clock()
    env_kubeconfig = os.environ.get("KUBECONFIG")
    if env_kubeconfig:
        kubeconfig, bin_dir = Path(env_kubeconfig.split(os.pathsep)[0]), None
        on_testbed = "glowplug/cluster" in str(kubeconfig)
        print(f"Using the cluster in KUBECONFIG={env_kubeconfig}", flush=True)
    else:
        kubeconfig, bin_dir = local_cluster()
        on_testbed = True
    kube = Kube.for_kubeconfig(kubeconfig, bin_dir)
    engine = e2e_engine()
    real_node = on_testbed and has_real_node(kube)

    install(kube, clock, real_node)
    prometheus_url = start_prometheus(kube, clock, on_testbed)
    svc = example_service(
        SERVICE,
        APP_NS,
        engine=engine,
        idle_timeout=f"{IDLE_TIMEOUT_S}s",
        load_delay_s=5,
        real_node=real_node,
    )
    svc["spec"]["cache"] = {"enabled": True}  # the first text is answered again at zero
    kube.apply(svc)
    where = " on the real node: the SGLang stand-in image, a TEST DOUBLE" if real_node else ""
    clock.say(f"applied EmbeddingService {APP_NS}/{SERVICE} (engine {engine}{where})")
    wait_until(lambda: kube.get("deployment", SERVICE, "-n", APP_NS), 60, "the engine Deployment")
    clock.say("the operator rendered its Deployment at 0 replicas: no GPU held")

    state = snapshot(kube)
    clock.say(f"replicas {state['replicas']}, phase {state['phase']}")
    url, forward = base_url(kube, on_testbed, real_node)
    # The chart turns auth on and creates a first key (auth.createDefaultKey).
    key = api_key(kube, RELEASE_NS, RELEASE)
    client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=900)
    path = (
        f" (ClusterIP of Service {RELEASE_NS}/{RELEASE}-activator, routed by kube-proxy)"
        if real_node
        else ""
    )
    clock.say(f"activator at {url}{path}; models: {[m.id for m in client.models.list().data]}")

    result: dict[str, Any] = {}
    done = threading.Event()

    def request() -> None:
        t = time.monotonic()
        try:
            resp = client.embeddings.create(model=SERVICE, input=["a glow plug heats the engine"])
            result["dims"] = len(resp.data[0].embedding)
        except Exception as err:  # reported below
            result["error"] = f"{type(err).__name__}: {err}"
        result["seconds"] = time.monotonic() - t
        done.set()

    clock.say(f'POST /v1/embeddings model="{SERVICE}" (held by the activator while it wakes)')
    threading.Thread(target=request, daemon=True).start()
    watch_until(kube, clock, state, done, None)
    if "error" in result:
        clock.say(f"request failed: {result['error']}")
        return 1
    clock.say(
        f"first response: 200, a {result['dims']}-dimension vector after {result['seconds']:.1f}s"
    )
    warm = time.monotonic()
    client.embeddings.create(model=SERVICE, input=["and now it is warm"])
    clock.say(f"second request (warm): {1000 * (time.monotonic() - warm):.0f} ms")

    clock.say(f"idle: waiting for scale to zero (idleTimeout {IDLE_TIMEOUT_S}s) ...")
    watch_until(
        kube,
        clock,
        state,
        None,
        lambda s: s["replicas"] == "0" and s["phase"] == "Idle" and len(s) == 2,
    )
    cached = time.monotonic()
    client.embeddings.create(model=SERVICE, input=["a glow plug heats the engine"])
    replicas = (kube.get("embeddingservice", SERVICE, "-n", APP_NS) or {}).get("spec", {})
    clock.say(
        f"the first text again, at zero: answered by the activator's cache in"
        f" {1000 * (time.monotonic() - cached):.0f} ms, replicas still"
        f" {replicas.get('replicas', 0)} (no wake)"
    )
    clock.say(f"at zero: no GPU held; watching the ledger for {SHOW_ZERO_S}s ...")
    time.sleep(SHOW_ZERO_S)
    if forward is not None:
        forward.terminate()

    # Status as of now: at zero the operator writes nothing, and status says the totals
    # at ledgerTime and the rates they grow at from then on (ledger.totals_at).
    from glowplug.operator.ledger import totals_at

    obj = kube.get("embeddingservice", SERVICE, "-n", APP_NS) or {}
    totals = totals_at(obj, time.time())
    used = totals.gpu_seconds / 3600
    base = totals.baseline_gpu_seconds / 3600
    price = 0.80
    print(flush=True)
    print(f"GPU-hours used:        {used:.4f}", flush=True)
    print(f"GPU-hours always-on:   {base:.4f}  (baselineReplicas 1 since creation)", flush=True)
    if base > 0:
        saved = base - used
        print(f"GPU-hours saved:       {saved:.4f}  ({100 * saved / base:.0f}%)", flush=True)
        print(f"dollars saved:         ${saved * price:.4f} at ${price:.2f}/GPU-hour", flush=True)
    print(flush=True)
    print("Left running for you to explore:", flush=True)
    print(f"  export KUBECONFIG={kubeconfig}", flush=True)
    print(f"  kubectl get embsvc -n {APP_NS}        # READY, DESIRED, PHASE, GPU-HOURS, SAVED")
    print(f"  kubectl describe embsvc {SERVICE} -n {APP_NS}")
    if prometheus_url:
        pid = (PROMETHEUS_DIR / "prometheus.pid").read_text().strip()
        print(f"  Prometheus: {prometheus_url}  (graph: {prometheus_url}/graph)", flush=True)
        print(
            f"  draw the key panels: .venv/bin/python -m e2e.bench.panels"
            f" --prometheus {prometheus_url} --namespace {APP_NS} --out panels.png",
            flush=True,
        )
        sd = (PROMETHEUS_DIR / "poddiscovery.pid").read_text().strip()
        print(f"  stop Prometheus: kill {pid} {sd}  (data in {PROMETHEUS_DIR})", flush=True)
    print(f"Remove glowplug: helm uninstall {RELEASE} -n {RELEASE_NS}")
    if on_testbed:
        print("Tear the local cluster down: make cluster-down", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Timeout, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or ""
        print(f"demo failed: {err}\n{detail}", file=sys.stderr)
        sys.exit(1)
