"""Measure the test bed: start time, pod bound -> Ready time, memory, stop time.

``python -m e2e.cluster.bench [--pods N] [--json FILE]``. When no cluster is running it
times ``up`` and ``down`` as well; when one is running (others may be using it) it only
measures pods and memory. Reports numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from e2e.cluster import Cluster, ensure_binaries
from e2e.cluster.procs import Proc

STANDIN_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "spec": {
        "containers": [
            {
                "name": "engine",
                "image": "lmsysorg/sglang:bench",
                "args": ["--model-path", "bench", "--host", "0.0.0.0", "--port", "30000"],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 30000}},
                # The agent's own speed: none of the stand-in's simulated loading.
                "env": [
                    {"name": "STANDIN_LOAD_DELAY", "value": "0"},
                    {"name": "STANDIN_WARMUP", "value": "0"},
                ],
            }
        ]
    },
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pod_times(c: Cluster, n: int) -> tuple[list[float], list[float], float]:
    """(create->bound, bound->Ready) per pod, and the RSS of one stand-in pod."""
    ns = f"bench-{uuid.uuid4().hex[:5]}"
    c.kubectl("create", "namespace", ns)
    while c.kubectl("get", "sa", "default", "-n", ns, check=False).returncode:
        time.sleep(0.1)
    bound_s, ready_s, standin_rss = [], [], 0.0
    try:
        for i in range(n):
            pod = {**STANDIN_POD, "metadata": {"name": f"p{i}"}}
            t0 = time.monotonic()
            c.api("POST", f"/api/v1/namespaces/{ns}/pods", pod)
            bound = None
            while True:
                p = c.api("GET", f"/api/v1/namespaces/{ns}/pods/p{i}")
                if bound is None and p["spec"].get("nodeName"):
                    bound = time.monotonic()
                conds = {x["type"]: x["status"] for x in p.get("status", {}).get("conditions", [])}
                if conds.get("Ready") == "True":
                    break
                time.sleep(0.02)
            t1 = time.monotonic()
            assert bound is not None
            bound_s.append(bound - t0)
            ready_s.append(t1 - bound)
            pid = int(p["status"]["containerStatuses"][0]["containerID"].rsplit("/", 1)[-1])
            standin_rss = rss_mb(pid)
            c.kubectl("delete", "pod", f"p{i}", "-n", ns, "--wait=false")
    finally:
        c.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return bound_s, ready_s, standin_rss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m e2e.cluster.bench", description=__doc__)
    ap.add_argument("--pods", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    c = Cluster(bin_dir=ensure_binaries(), log=lambda _: None)
    results: dict[str, Any] = {}
    started = False
    if not c.running():
        t0 = time.monotonic()
        started = c.up(started_by="cli")
        results["up_s"] = round(time.monotonic() - t0, 2)
    bound, ready, standin = pod_times(c, args.pods)
    results["create_to_bound_s"] = [round(x, 3) for x in bound]
    results["bound_to_ready_s"] = [round(x, 3) for x in ready]
    state = json.loads((c.state_dir / "state.json").read_text())
    results["rss_mb"] = {
        p.name: round(rss_mb(p.pid), 1)
        for p in (Proc.from_json(x) for x in state["procs"])
        if p.alive()
    }
    results["rss_mb"]["stand-in pod"] = round(standin, 1)
    if started:
        t0 = time.monotonic()
        c.down()
        results["down_s"] = round(time.monotonic() - t0, 2)

    print(f"{'measure':28} value")
    if "up_s" in results:
        print(f"{'cluster up (warm)':28} {results['up_s']:.1f} s")
    print(f"{'pod create -> bound':28} median {statistics.median(bound):.2f} s")
    print(
        f"{'pod bound -> Ready':28} median {statistics.median(ready):.2f} s, "
        f"max {max(ready):.2f} s ({len(ready)} pods)"
    )
    for name, mb in results["rss_mb"].items():
        print(f"{'RSS ' + name:28} {mb:.0f} MB")
    if "down_s" in results:
        print(f"{'cluster down':28} {results['down_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
