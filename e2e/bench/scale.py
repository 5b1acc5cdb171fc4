"""Scale benchmark (``make bench-scale``): N EmbeddingServices at zero, what they cost.

On the test bed (real API server, controller-manager, scheduler, node agent) with
``glowplug operator`` and ``glowplug activator`` as host processes, it creates N
EmbeddingServices at zero replicas in one namespace, then reports:

- reconcile-all: seconds from the operator's start until every service's
  ``status.observedGeneration`` equals its generation (a cold start);
- idle API load from glowplug: requests/s by verb and resource over a window, counted
  in the API server's audit log (e2e/cluster/audit.py) by user agent (glowplug's clients
  and kopf's), split per component;
- operator and activator CPU (share of one core over the window) and RSS;
- the activator's and operator's /metrics: bytes and the time to fetch them;
- with a trickle: 1 % of the services get a request every few seconds (they wake and
  stay up), and for a sample of other services at zero, the time from a request to the
  scale write in the audit log (p50/p99).

Writes ``e2e/bench/results/scale-<N>-<UTC time>.json`` and prints a table. Reports
only: it never fails on a number. ``--n`` (default 300), ``--window`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from e2e.cluster import Cluster, audit, ensure_binaries
from e2e.tests.helpers import GLOWPLUG, free_port, wait_for
from glowplug.metrics import AUTOSCALER_TICKS as TICKS
from glowplug.metrics import AUTOSCALER_TIMERS as TIMERS

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "e2e" / "bench" / "results"
NAMESPACE = "glowplug-scale"
GROUP_PATH = "/apis/glowplug.dev/v1alpha1"


def say(msg: str) -> None:
    print(f"[bench-scale] {msg}", file=sys.stderr, flush=True)


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"id": "test/stand-in-model", "source": {"huggingFace": {}}},
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": 1,
                "idleTimeout": "20s",
                "scaleDownDelay": "5s",
            },
            "replicas": 0,
        },
    }


class Proc:
    """A glowplug host process; CPU and RSS read from /proc."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.popen = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def fetch(url: str, timeout: float = 30) -> tuple[int, float]:
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        size = len(resp.read())
    return size, time.monotonic() - t0


def embed(url: str, model: str, timeout: float) -> None:
    body = json.dumps({"model": model, "input": "hello"}).encode()
    req = urllib.request.Request(
        f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    with (
        contextlib.suppress(OSError, urllib.error.HTTPError),
        urllib.request.urlopen(req, timeout=timeout) as resp,
    ):
        resp.read()


def create_services(cluster: Cluster, names: list[str], tmp: Path) -> None:
    for i in range(0, len(names), 500):
        chunk = names[i : i + 500]
        doc = {"apiVersion": "v1", "kind": "List", "items": [service(n) for n in chunk]}
        f = tmp / "services.json"
        f.write_text(json.dumps(doc))
        cluster.kubectl("apply", "--server-side", "-f", str(f), timeout=600)
        say(f"created {i + len(chunk)}/{len(names)} EmbeddingServices")


def list_services(cluster: Cluster) -> list[dict[str, Any]]:
    for attempt in range(10):  # a loaded test bed answers slowly: try again
        try:
            out = cluster.api("GET", f"{GROUP_PATH}/namespaces/{NAMESPACE}/embeddingservices")
        except (OSError, TimeoutError) as err:
            say(f"listing EmbeddingServices failed ({err}); again")
            time.sleep(2 + attempt)
            continue
        return list(out.get("items") or [])
    raise RuntimeError("cannot list EmbeddingServices")


def reconciled(items: list[dict[str, Any]]) -> int:
    return sum(
        1
        for o in items
        if (o.get("status") or {}).get("observedGeneration") == o["metadata"].get("generation")
    )


def remove_namespace(cluster: Cluster, wait: bool) -> None:
    """Delete the bench namespace. kopf puts a finalizer on every EmbeddingService (the
    autoscaler's daemons) and only a running operator removes it: with the operator
    stopped, the bench strips them itself."""
    from concurrent.futures import ThreadPoolExecutor

    if cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        return
    with contextlib.suppress(Exception):
        items = list_services(cluster)
        base = f"{GROUP_PATH}/namespaces/{NAMESPACE}/embeddingservices/"

        def strip(o: dict[str, Any]) -> None:
            with contextlib.suppress(Exception):
                cluster.api(
                    "PATCH",
                    base + o["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                    content_type="application/merge-patch+json",
                )

        todo = [o for o in items if o["metadata"].get("finalizers")]
        if todo:
            say(f"removing kopf's finalizer from {len(todo)} EmbeddingServices")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(strip, todo))
    cluster.kubectl(
        "delete", "namespace", NAMESPACE, f"--wait={str(wait).lower()}", check=False, timeout=900
    )


def rates(reqs: list[audit.Request], seconds: float) -> dict[str, float]:
    counts = audit.by_verb_resource(reqs)
    return {k: round(v / seconds, 2) for k, v in counts.most_common()}


def burst(reqs: list[audit.Request], t0: float) -> dict[str, Any]:
    """A start-up's requests: how many, the busiest second, when the last busy second was
    (a second with more than 5 requests), by verb and resource."""
    per_second = Counter(int(r.at - t0) for r in reqs if r.at >= t0)
    busy = [s for s, c in per_second.items() if c > 5]
    return {
        "requests": len(reqs),
        "peak_per_s": max(per_second.values(), default=0),
        "settled_after_s": (max(busy) + 1) if busy else 0,
        "by_verb_resource": dict(audit.by_verb_resource(reqs).most_common(8)),
    }


def ours(req: audit.Request) -> bool:
    """glowplug's requests about the bench namespace (or cluster-scoped ones): other
    sessions' operators on the same test bed work in other namespaces."""
    return audit.is_glowplug(req) and req.namespace in ("", NAMESPACE)


def component(req: audit.Request) -> str:
    if req.user_agent.startswith("glowplug-activator"):
        return "activator"
    return "operator"  # glowplug-operator/... and kopf/...


def counter(metrics_url: str, name: str) -> float | None:
    """One unlabelled sample from a /metrics page (None: not there, or unreadable)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=30) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def measure_idle(
    tail: audit.AuditTail, procs: dict[str, Proc], window: float, op_metrics: str = ""
) -> dict[str, Any]:
    tail.read()  # discard what came before the window
    cpu0 = {k: p.cpu_seconds() for k, p in procs.items()}
    ticks0 = counter(op_metrics, TICKS) if op_metrics else None
    t0 = time.monotonic()
    time.sleep(window)
    seconds = time.monotonic() - t0
    ticks1 = counter(op_metrics, TICKS) if op_metrics else None
    reqs = [r for r in tail.read() if ours(r)]
    out: dict[str, Any] = {
        "window_s": round(seconds, 1),
        "api_requests_per_s": round(len(reqs) / seconds, 2),
        "by_verb_resource": rates(reqs, seconds),
    }
    for name, p in procs.items():
        mine = [r for r in reqs if component(r) == name]
        out[name] = {
            "cpu_core_share": round((p.cpu_seconds() - cpu0[name]) / seconds, 3),
            "rss_mib": round(p.rss_mib(), 1),
            "api_requests_per_s": round(len(mine) / seconds, 2),
        }
    if ticks0 is not None and ticks1 is not None:
        out["operator"]["ticks_per_s"] = round((ticks1 - ticks0) / seconds, 2)
    timers = counter(op_metrics, TIMERS) if op_metrics else None
    if timers is not None:
        out["operator"]["timers_pending"] = timers
    return out


def scale_write_latency(
    cluster: Cluster, tail: audit.AuditTail, act_url: str, names: list[str]
) -> dict[str, Any]:
    """Request at zero -> the scale subresource write for that service (audit time)."""
    lat: list[float] = []
    tail.read()
    for name in names:
        sent = time.time()
        threading.Thread(target=embed, args=(act_url, name, 2.0), daemon=True).start()
        deadline = time.monotonic() + 30
        found = None
        while found is None and time.monotonic() < deadline:
            time.sleep(0.2)
            for r in tail.read():
                if r.resource.endswith("/scale") and r.verb == "patch" and r.name == name:
                    found = r.at
        if found is not None:
            lat.append(found - sent)
        # back to zero so the pod goes (and the next sample is another service at zero)
        cluster.kubectl(
            "patch", "embeddingservice", name, "-n", NAMESPACE, "--type=merge",
            "-p", '{"spec":{"replicas":0}}', check=False,
        )  # fmt: skip
    lat.sort()

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None

    return {
        "samples": len(lat),
        "missed": len(names) - len(lat),
        "p50_s": pct(0.5),
        "p99_s": pct(0.99),
        "max_s": round(lat[-1], 3) if lat else None,
        "mean_s": round(statistics.mean(lat), 3) if lat else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="EmbeddingServices (default 300)")
    ap.add_argument("--window", type=float, default=60.0, help="idle window seconds")
    ap.add_argument("--samples", type=int, default=10, help="request-to-scale samples")
    ap.add_argument("--label", default="", help="a word for the results file (e.g. 'before')")
    ap.add_argument("--keep", action="store_true", help="leave the namespace in place")
    args = ap.parse_args()

    cluster = Cluster(bin_dir=ensure_binaries())
    cluster.attach()
    procs: dict[str, Proc] = {}
    try:
        cluster.up(started_by="bench-scale")
        for f in sorted((ROOT / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/embeddingservices.glowplug.dev",
        )  # fmt: skip
        remove_namespace(cluster, wait=True)
        cluster.kubectl("create", "namespace", NAMESPACE)
        names = [f"svc-{i:05d}" for i in range(args.n)]
        tmp = cluster.state_dir / "bench-scale"
        tmp.mkdir(exist_ok=True)
        t_create = time.monotonic()
        create_services(cluster, names, tmp)
        create_s = time.monotonic() - t_create

        env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        act_port = free_port()
        act_url = f"http://127.0.0.1:{act_port}"
        procs["activator"] = Proc(
            [str(GLOWPLUG), "activator", "--host", "127.0.0.1", "--port", str(act_port),
             "--namespace", NAMESPACE],
            tmp / "activator.log", env,
        )  # fmt: skip
        wait_for(lambda: _ok(f"{act_url}/readyz"), 120, what="activator ready")
        op_metrics = free_port()
        t_op = time.monotonic()
        op_args = [
            str(GLOWPLUG), "operator", "--standalone", "--namespace", NAMESPACE,
            "--metrics-port", str(op_metrics), "--activator-url", act_url, "-q",
        ]  # fmt: skip
        procs["operator"] = Proc(op_args, tmp / "operator.log", env)
        tail = audit.AuditTail(cluster.audit_log)
        reconcile_s: float | None = None
        while time.monotonic() - t_op < 900:
            done = reconciled(list_services(cluster))
            if done == args.n:
                reconcile_s = time.monotonic() - t_op
                break
            say(f"reconciled {done}/{args.n} ({time.monotonic() - t_op:.0f} s)")
            time.sleep(5)
        startup_reqs = [r for r in tail.read() if ours(r)]
        say(f"reconcile-all: {reconcile_s} s; settling 20 s")
        time.sleep(20)

        say(f"idle window {args.window:.0f} s (all {args.n} at zero)")
        op_url = f"http://127.0.0.1:{op_metrics}/metrics"
        idle = measure_idle(tail, procs, args.window, op_url)
        sizes: dict[str, Any] = {}
        for what, url in (
            ("activator", f"{act_url}/metrics"),
            ("operator", f"http://127.0.0.1:{op_metrics}/metrics"),
        ):
            with contextlib.suppress(OSError):
                size, secs = fetch(url)
                sizes[what] = {"bytes": size, "fetch_s": round(secs, 3)}

        say("failover: a new operator process takes over (60 s)")
        procs["operator"].stop()
        tail.read()
        t_new = time.time()
        procs["operator"] = Proc(op_args, tmp / "operator-2.log", env)
        time.sleep(60)
        failover = burst([r for r in tail.read() if ours(r)], t_new)

        rng = random.Random(12)
        trickle = rng.sample(names, max(1, args.n // 100))
        stop = threading.Event()

        def trickler() -> None:
            while not stop.is_set():
                for n in trickle:
                    threading.Thread(target=embed, args=(act_url, n, 120.0), daemon=True).start()
                stop.wait(5.0)

        th = threading.Thread(target=trickler, daemon=True)
        th.start()
        say(f"trickle: {len(trickle)} services get a request every 5 s; waking them (60 s)")
        time.sleep(60)
        say(f"trickle window {args.window:.0f} s")
        busy = measure_idle(tail, procs, args.window, op_url)
        rest = [n for n in names if n not in trickle]
        say(f"request-to-scale-write: {args.samples} services")
        latency = scale_write_latency(cluster, tail, act_url, rng.sample(rest, args.samples))
        stop.set()

        results = {
            "n": args.n,
            "label": args.label,
            "code": _git_head(),
            "create_s": round(create_s, 1),
            "reconcile_all_s": None if reconcile_s is None else round(reconcile_s, 1),
            "startup_requests": dict(audit.by_verb_resource(startup_reqs).most_common()),
            "idle": idle,
            "failover": failover,
            "metrics": sizes,
            "trickle": {"services": len(trickle), **busy},
            "request_to_scale_write": latency,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = RESULTS / f"scale-{args.n}{'-' + args.label if args.label else ''}-{stamp}.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print_table(results)
        print(f"results: {out}")
    finally:
        for p in procs.values():
            p.stop()
        if not args.keep:
            remove_namespace(cluster, wait=False)
        cluster.release()


def print_table(r: dict[str, Any]) -> None:
    idle, busy = r["idle"], r["trickle"]
    print(f"\n== {r['n']} EmbeddingServices at zero ({r['label'] or r['code']}) ==")
    print(f"reconcile-all (cold start)   {r['reconcile_all_s']} s")
    print(f"glowplug API requests/s idle {idle['api_requests_per_s']}")
    for k, v in list(idle["by_verb_resource"].items())[:8]:
        print(f"    {k:<40} {v}")
    for c in ("operator", "activator"):
        print(
            f"{c:<9} idle: {idle[c]['cpu_core_share'] * 100:.1f} % core, "
            f"{idle[c]['rss_mib']} MiB, {idle[c]['api_requests_per_s']} req/s"
        )
    ticks = [w["operator"].get("ticks_per_s") for w in (idle, busy)]
    print(f"operator ticks/s: idle {ticks[0]}, trickle {ticks[1]} (None: not counted)")
    for c, m in r["metrics"].items():
        print(f"/metrics {c:<9} {m['bytes']} bytes in {m['fetch_s']} s")
    fo = r["failover"]
    print(
        f"failover: {fo['requests']} requests, peak {fo['peak_per_s']}/s, "
        f"settled after {fo['settled_after_s']} s"
    )
    print(
        f"trickle ({busy['services']} services): {busy['api_requests_per_s']} req/s, "
        f"operator {busy['operator']['cpu_core_share'] * 100:.1f} % core"
    )
    lat = r["request_to_scale_write"]
    print(f"request-to-scale-write p50 {lat['p50_s']} s p99 {lat['p99_s']} s ({lat['samples']})")


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _git_head() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    return out.stdout.strip()


if __name__ == "__main__":
    main()
