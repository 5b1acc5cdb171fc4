"""What thousands of routed services cost one activator: memory, /metrics, /v1/models.

``python -m e2e.bench.activator_scale`` (``make bench-activator-scale``; reports, never
fails) starts a real ``glowplug activator --static-config`` process routing N synthetic
EmbeddingServices (the routing table, hold queues and metrics are the real ones; no pod
behind them: the services are at zero) for each N of ``--n`` (default 0, 1,000 and
10,000), and measures:

- resident memory (``VmRSS`` from ``/proc/PID/status``) once it is ready, and per
  thousand services over N=0;
- ``GET /metrics``: bytes, lines, the first scrape (every service rendered) and the
  median of the next ones (what Prometheus sees every interval), and the slowest
  ``/healthz`` answered while scrapes ran (the render runs off the event loop);
- ``GET /metrics`` after 1 % of the services served a request each (re-rendered ones);
- ``GET /v1/models`` the first time (every entry encoded) and cached;
- ``GET /stats`` of every service (a full read), and of the changes since that read
  (``?since=EPOCH:CURSOR&wait=0``: the operator's re-read right before a scale to zero).

``--per-service-histograms`` runs the activator with per-service histograms (opt-in).
Prints one line per N and writes ``e2e/bench/results/activator-scale-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "e2e" / "bench" / "results"
SCRAPES = 7
NAMESPACE = "bench-activator"  # --apiserver: where the synthetic services are created


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def config(n: int, backend: str) -> dict[str, Any]:
    """N services in 100 namespaces, at zero; the first 1 % have a ready endpoint."""
    services = []
    for i in range(n):
        svc: dict[str, Any] = {
            "apiVersion": "glowplug.dev/v1alpha1",
            "kind": "EmbeddingService",
            "metadata": {"name": f"emb-{i}", "namespace": f"team-{i % 100}"},
            "spec": {
                "model": {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}},
                "replicas": 0,
            },
        }
        if i < max(1, n // 100):
            svc["spec"]["replicas"] = 1
            svc["endpoints"] = [backend]
        services.append(svc)
    return {"services": services}


def get(url: str, timeout: float = 120) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
    return time.perf_counter() - t0, body


def post(url: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return int(resp.status)


class Prober:
    """``/healthz`` every 5 ms in a thread: the slowest answer while it ran."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            took, _ = get(f"{self.url}/healthz", timeout=30)
            self.worst = max(self.worst, took)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    n: int,
    per_service_histograms: bool,
    backend_port: int,
    kubeconfig: Path | None = None,
) -> dict[str, Any]:
    """One activator process: fed from a --static-config file, or (``kubeconfig``) by
    its informers from the test-bed API server, where N services already exist."""
    port, internal = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if kubeconfig is None:
            path = Path(tmp) / "services.yaml"
            doc = config(n, f"127.0.0.1:{backend_port}")
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            source = ["--static-config", str(path)]
        else:
            env["KUBECONFIG"] = str(kubeconfig)
            env.pop("KUBERNETES_SERVICE_HOST", None)
            source = ["--namespace", NAMESPACE]
        cmd = [
            sys.executable, "-m", "glowplug.cli", "activator", *source,
            "--host", "127.0.0.1", "--port", str(port), "--internal-port", str(internal),
            "--auth", "off", "--log-level", "WARNING",
        ]  # fmt: skip
        if per_service_histograms:
            cmd.append("--per-service-histograms")
        t_start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        try:
            base, ibase = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{internal}"
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"activator exited with {proc.returncode}")
                try:
                    if get(f"{base}/readyz", timeout=5)[1]:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            ready_s = time.perf_counter() - t_start
            time.sleep(1.0)
            rss = rss_mib(proc.pid)
            with Prober(base) as prober:
                first, body = get(f"{ibase}/metrics")
                steady = [get(f"{ibase}/metrics")[0] for _ in range(SCRAPES)]
            # 1 % of the services (those with an endpoint) serve a request each.
            for i in range(max(1, n // 100) if n and kubeconfig is None else 0):
                post(f"{base}/v1/embeddings", {"model": f"team-{i % 100}/emb-{i}", "input": "x"})
            touched = [get(f"{ibase}/metrics")[0] for _ in range(3)]
            models_first, models = get(f"{base}/v1/models")
            models_cached = statistics.median(get(f"{base}/v1/models")[0] for _ in range(5))
            stats_all, stats_body = get(f"{ibase}/stats")
            doc = json.loads(stats_body)
            since = f"{ibase}/stats?since={doc.get('epoch', '')}:{doc.get('cursor', 0)}&wait=0"
            stats_one = statistics.median(get(since)[0] for _ in range(5))
            rss_after = rss_mib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "services": n,
        "source": "static" if kubeconfig is None else "apiserver",
        "per_service_histograms": per_service_histograms,
        "ready_s": round(ready_s, 2),
        "rss_mib": round(rss, 1),
        "rss_after_scrapes_mib": round(rss_after, 1),
        "metrics_bytes": len(body),
        "metrics_lines": body.count(b"\n"),
        "metrics_first_s": round(first, 4),
        "metrics_steady_median_s": round(statistics.median(steady), 4),
        "metrics_steady_max_s": round(max(steady), 4),
        "metrics_after_1pct_requests_median_s": round(statistics.median(touched), 4),
        "healthz_worst_during_scrapes_s": round(prober.worst, 4),
        "models_bytes": len(models),
        "models_first_s": round(models_first, 4),
        "models_cached_median_s": round(models_cached, 4),
        "stats_all_bytes": len(stats_body),
        "stats_all_s": round(stats_all, 4),
        "stats_changes_median_s": round(stats_one, 4),
    }


def on_apiserver(counts: list[int], per_service_histograms: bool) -> list[dict[str, Any]]:
    """Each N as EmbeddingService objects on the test bed's API server (created with
    server-side apply, so with managedFields, as kubectl leaves them), no operator."""
    from e2e.bench.scale import service
    from e2e.cluster import Cluster, ensure_binaries

    cluster = Cluster(bin_dir=ensure_binaries())
    cluster.attach()
    rows = []
    try:
        cluster.up(started_by="bench-activator-scale")
        for f in sorted((ROOT / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/embeddingservices.glowplug.dev",
        )  # fmt: skip
        tmp = cluster.state_dir / "bench-activator-scale"
        tmp.mkdir(exist_ok=True)
        for n in sorted(counts):
            cluster.kubectl(
                "delete", "namespace", NAMESPACE, "--wait=true", check=False, timeout=900
            )
            cluster.kubectl("create", "namespace", NAMESPACE)
            for i in range(0, n, 500):
                items = []
                for j in range(i, min(n, i + 500)):
                    obj = service(f"emb-{j}")
                    obj["metadata"]["namespace"] = NAMESPACE
                    items.append(obj)
                f = tmp / "services.json"
                f.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
                cluster.kubectl("apply", "--server-side", "-f", str(f), timeout=600)
                print(f"created {min(n, i + 500)}/{n} EmbeddingServices", flush=True)
            rows.append(measure(n, per_service_histograms, 0, cluster.kubeconfig))
            report(rows[-1])
    finally:
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        cluster.release()
    return rows


def backend() -> tuple[subprocess.Popen[bytes], int]:
    """The canned embedding backend (e2e.bench.backend, a test double) for the 1 %."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "e2e.bench.backend", str(port)], cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the backend test double did not start")


def report(row: dict[str, Any]) -> None:
    n = row["services"]
    print(
        f"{row['source']} N={n:>6}: RSS {row['rss_mib']:.0f} MiB;"
        f" /metrics {row['metrics_bytes'] / 1e6:.2f} MB, {row['metrics_lines']} lines,"
        f" first {row['metrics_first_s'] * 1000:.0f} ms,"
        f" then {row['metrics_steady_median_s'] * 1000:.1f} ms (max"
        f" {row['metrics_steady_max_s'] * 1000:.1f}), after 1 % requests"
        f" {row['metrics_after_1pct_requests_median_s'] * 1000:.1f} ms; /healthz worst"
        f" {row['healthz_worst_during_scrapes_s'] * 1000:.1f} ms; /v1/models"
        f" {row['models_bytes'] / 1e6:.2f} MB first {row['models_first_s'] * 1000:.0f} ms,"
        f" cached {row['models_cached_median_s'] * 1000:.1f} ms; /stats all"
        f" {row['stats_all_s'] * 1000:.0f} ms,"
        f" changes {row['stats_changes_median_s'] * 1000:.1f} ms",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[0, 1000, 10000])
    parser.add_argument("--per-service-histograms", action="store_true")
    parser.add_argument(
        "--apiserver",
        action="store_true",
        help="create the services on the test bed's API server (GLOWPLUG_* cluster env)"
        " and let the activator's informers list them, instead of a --static-config file",
    )
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT / "operator"))
    if args.apiserver:
        rows = on_apiserver(args.n, args.per_service_histograms)
        return finish(rows)
    proc, port = backend()
    rows = []
    try:
        for n in args.n:
            print(f"activator with {n} services: starting", flush=True)
            row = measure(n, args.per_service_histograms, port)
            rows.append(row)
            report(row)
    finally:
        proc.terminate()
        proc.wait(10)
    return finish(rows)


def finish(rows: list[dict[str, Any]]) -> int:
    base = next((r for r in rows if r["services"] == 0), None)
    if base is not None:
        for r in rows:
            if r["services"]:
                per_k = (r["rss_mib"] - base["rss_mib"]) / r["services"] * 1000
                r["rss_mib_per_1000_services"] = round(per_k, 2)
                print(f"N={r['services']}: {per_k:.1f} MiB RSS per 1,000 routed services")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"activator-scale-{stamp}.json"
    out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
