"""The operator's /metrics with thousands of EmbeddingServices: size and render time.

``python -m e2e.bench.operator_metrics`` (``make bench-operator-metrics``; reports, never
fails). One process holds the operator's real per-service series (``ServiceSeries`` for
N parsed EmbeddingServices at zero, their ledgers accrued with the default baseline of
one GPU, so every scrape brings N baseline counters up to its time; ``glowplug_replicas``
and ``glowplug_service_info``; 1 % of them woke once, with their wake histograms) and
serves them with ``servicemetrics.serve`` on loopback, as ``glowplug operator`` does.
For each N of ``--n`` (default 1,000, 5,000 and 10,000) it prints the bytes, the median
of ``--scrapes`` ``GET /metrics`` over HTTP (by curl) and of the render alone, and,
measured in the same run, what prometheus_client's ``generate_latest`` takes for the
same children (the operator's rendering before glowplug.exposition): the ratio is the
figure to compare across runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from glowplug import metrics as m
from glowplug.api import parse
from glowplug.operator import servicemetrics as sm
from glowplug.operator.ledger import Delta, Rates


def body(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": f"embed-{i:05d}", "namespace": f"team-{i % 100:03d}"},
        "spec": {
            "model": {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}},
            "resources": {"gpuType": "L4"},
        },
    }


class OldRegistry:
    """The same per-service children as prometheus_client collectors (the old way)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ledger = ("namespace", "service", "gpu_type")
        self.gpu = Counter(m.GPU_SECONDS_TOTAL, "h", ledger, registry=r)
        self.baseline = Counter(m.BASELINE_GPU_SECONDS_TOTAL, "h", ledger, registry=r)
        self.price = Gauge(m.GPU_HOURLY_PRICE, "h", ledger, registry=r)
        self.wakes = Counter(m.WAKES_TOTAL, "h", ("namespace", "service", "outcome"), registry=r)
        self.replicas = Gauge(m.REPLICAS, "h", ("namespace", "service", "state"), registry=r)
        self.info = Gauge(m.SERVICE_INFO, "h", sm.SERVICE_INFO.family.labels, registry=r)
        self.wake = Histogram(
            m.WAKE_DURATION, "h", ("namespace", "service"), buckets=m.WAKE_BUCKETS, registry=r
        )
        self.phase = Histogram(
            m.WAKE_PHASE_DURATION,
            "h",
            ("namespace", "service", "phase"),
            buckets=m.WAKE_PHASE_BUCKETS,
            registry=r,
        )

    def woke(self, ns: str, name: str) -> None:
        self.wake.labels(ns, name).observe(42.0)
        for phase in m.WAKE_PHASE_LABELS:
            self.phase.labels(ns, name, phase).observe(10.0)

    def add(self, ns: str, name: str, gpu: str, model: str) -> None:
        self.gpu.labels(ns, name, gpu)
        self.baseline.labels(ns, name, gpu).inc(1.5)
        self.price.labels(ns, name, gpu).set(0.8)
        for outcome in ("ready", "failed"):
            self.wakes.labels(ns, name, outcome)
        for state in ("desired", "ready"):
            self.replicas.labels(ns, name, state).set(0)
        self.info.labels(ns, name, model, "sglang", gpu).set(1)


def scrape(url: str) -> tuple[float, int]:
    """One GET by curl (another process: this one's GIL belongs to the server)."""
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    return float(out[0]), int(out[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[1000, 5000, 10000])
    p.add_argument("--scrapes", type=int, default=7)
    args = p.parse_args()
    server = sm.serve(0, "127.0.0.1")
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    old = OldRegistry()
    series: list[sm.ServiceSeries] = []
    try:
        for n in sorted(args.n):
            while len(series) < n:
                i = len(series)
                svc = parse(body(i))
                s = sm.ServiceSeries(svc)
                s.accrue(Delta(0.0, 1.5), time.time(), Rates(0.0, 1.0))
                ns, name, gpu = svc.namespace, svc.name, svc.resources.gpu_label
                for state in ("desired", "ready"):
                    sm.REPLICAS.labels(ns, name, state).set(0)
                sm.SERVICE_INFO.labels(ns, name, svc.model.id, svc.engine.name, gpu).set(1)
                old.add(ns, name, gpu, svc.model.id)
                if i % 100 == 0:  # 1 % woke once
                    s.wake_began()
                    s.wake("ready", 42.0)
                    for phase in m.WAKE_PHASE_LABELS:
                        s.phase(phase, 10.0)
                    old.woke(ns, name)
                series.append(s)
            scrape(url)  # the first scrape renders every line once
            times, size = [], 0
            for _ in range(args.scrapes):
                seconds, size = scrape(url)
                times.append(seconds)
            render_times = []
            for _ in range(args.scrapes):
                start = time.perf_counter()
                sm.exposition()
                render_times.append(time.perf_counter() - start)
            old_times = []
            for _ in range(3):
                start = time.perf_counter()
                old_size = len(generate_latest(old.registry))
                old_times.append(time.perf_counter() - start)
            now_ms = statistics.median(times) * 1000
            old_ms = statistics.median(old_times) * 1000
            render_ms = statistics.median(render_times) * 1000
            print(
                f"N={n:>6}: /metrics {size / 1e6:.2f} MB, median {now_ms:.0f} ms over HTTP"
                f" (rendered in {render_ms:.0f} ms)"
                f" ({size / n:.0f} B/service); prometheus_client for the per-service part"
                f" alone: {old_size / 1e6:.2f} MB in {old_ms:.0f} ms"
                f" ({old_ms / render_ms:.1f}x the render)",
                flush=True,
            )
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
