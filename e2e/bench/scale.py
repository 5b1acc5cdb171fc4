"""Scale benchmark (``make bench-scale``): N EmbeddingServices at zero, what they cost.

On the test bed (real API server, controller-manager, scheduler, node agent) with
``glowplug operator`` and ``glowplug activator`` as host processes, it creates N
EmbeddingServices at zero replicas in one namespace (concurrent POSTs over kept-alive
connections, progress lines), then reports:

- reconcile-all: seconds from the operator's start until every service's
  ``status.observedGeneration`` equals its generation (a cold start);
- idle API load from glowplug: requests/s by verb and resource over a window, counted
  in the API server's audit log (e2e/cluster/audit.py) by user agent (glowplug's clients
  and kopf's), split per component;
- operator and activator CPU (share of one core over the window) and RSS, and the same
  for the test bed's own control plane (etcd, API server, controller-manager, scheduler,
  node agent with its pods), the machine's load average, and the API server's latency
  for one small GET (a probe every 0.5 s): where the test bed itself limits N;
- the activator's and operator's /metrics: bytes and the time to fetch them (3 fetches);
- a failover: a new operator process takes over; its requests, busiest second, when it
  settles, and when it has re-applied every service's Deployment (its reconcile-all);
- the test bed's Deployment controller catching up (every Deployment synced: after a
  cold start it works through N of them at the controller-manager's client rate);
- a trickle: 1 % of the services (at most ``--trickle-max``: each is an engine process
  on the node agent) get a request every 5 s, so they wake and stay up; what that costs
  the node agent and its pods, glowplug and the API server;
- for a sample of other services at zero, the time from a request to the scale write in
  the audit log (p50/p99): once at idle, before the trickle (the issue's target is for
  idle services), and once more while the trickle runs.

Writes ``e2e/bench/results/scale-<N>-<UTC time>.json`` and prints a table. Reports
only: it never fails on a number. Every phase has a time limit; a phase that runs out
says so in the results (``null``) and the run goes on. A test bed this run started is
stopped at the end (``--keep`` leaves it and the namespace).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
SERVICES_PATH = f"{GROUP_PATH}/namespaces/{NAMESPACE}/embeddingservices"
DEPLOYMENTS_PATH = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
PODS_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def say(msg: str) -> None:
    print(f"[bench-scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


class Api:
    """The admin's API requests over one kept-alive HTTPS connection per thread: creating
    10,000 objects through a new TLS connection each costs the API server more CPU than
    the objects do."""

    def __init__(self, cluster: Cluster) -> None:
        url = urllib.parse.urlsplit(cluster.server)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.token = cluster.token
        self.ctx = cluster._ssl()
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)
            self.local.conn = conn
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        attempts: int = 5,
    ) -> tuple[int, Any]:
        """(status, decoded body); retried on a broken connection, 429 and 5xx."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(attempts):
            try:
                conn = self._conn()
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                self.local.conn = None
                time.sleep(0.5 * (attempt + 1))
                continue
            if resp.status in (429, 500, 502, 503, 504) and attempt + 1 < attempts:
                time.sleep(float(resp.getheader("Retry-After") or 0.5 * (attempt + 1)))
                continue
            try:
                return resp.status, json.loads(raw or b"null")
            except ValueError:
                return resp.status, None
        raise RuntimeError(f"{method} {path}: no answer after {attempts} attempts")


def create_services(api: Api, names: list[str], workers: int) -> dict[str, Any]:
    """POST every EmbeddingService, ``workers`` at a time; a progress line every 10 s."""
    done = Counter[str]()
    lock = threading.Lock()
    t0 = time.monotonic()
    last = [t0]

    def create(name: str) -> None:
        status, body = api.request("POST", SERVICES_PATH, service(name))
        if status not in (201, 409):  # 409: there from an earlier --keep run
            raise RuntimeError(f"creating {name}: HTTP {status}: {body}")
        with lock:
            done["ok"] += 1
            now = time.monotonic()
            if now - last[0] >= 10:
                last[0] = now
                say(
                    f"created {done['ok']}/{len(names)} EmbeddingServices "
                    f"({done['ok'] / (now - t0):.0f}/s)"
                )

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, names))
    seconds = time.monotonic() - t0
    say(f"created {len(names)} EmbeddingServices in {seconds:.1f} s")
    return {"seconds": round(seconds, 1), "per_s": round(len(names) / seconds, 1)}


def list_paged(api: Api, path: str = SERVICES_PATH) -> list[dict[str, Any]]:
    """Every EmbeddingService (or the objects at ``path``) in the bench namespace, 500 a
    page (one 10,000-item page would be a 30 MB answer for the API server to build)."""
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        q = "?limit=500" + (f"&continue={urllib.parse.quote(token)}" if token else "")
        status, out = api.request("GET", path + q)
        if status == 410:  # the continue token expired: start again
            items, token = [], ""
            continue
        if status != 200:
            raise RuntimeError(f"listing {path}: HTTP {status}")
        items.extend(out.get("items") or [])
        token = (out.get("metadata") or {}).get("continue") or ""
        if not token:
            return items


def wait_for_deployment_controller(api: Api, n: int, timeout: float) -> dict[str, Any]:
    """Seconds until the test bed's Deployment controller has synced every Deployment
    (``status.observedGeneration`` = generation: its ReplicaSet exists). After a cold
    start of N services it works through N Deployments at the kube-controller-manager's
    client rate (``--kube-api-qps``, 20 by default); a wake meanwhile waits in its queue,
    so the trickle starts after it (the wait is the test bed's, reported here)."""
    t0 = time.monotonic()
    synced = 0
    while time.monotonic() - t0 < timeout:
        synced = reconciled(list_paged(api, DEPLOYMENTS_PATH))
        say(f"Deployment controller: {synced}/{n} Deployments synced")
        if synced >= n:
            return {"seconds": round(time.monotonic() - t0, 1), "synced": synced}
        time.sleep(10)
    return {"seconds": None, "synced": synced}


def reconciled(items: list[dict[str, Any]]) -> int:
    return sum(
        1
        for o in items
        if (o.get("status") or {}).get("observedGeneration") == o["metadata"].get("generation")
    )


class PidStat:
    """CPU seconds and RSS of one process from /proc; ``tree`` adds its descendants (the
    node agent's pods run as its child processes)."""

    def __init__(self, pid: int, tree: bool = False) -> None:
        self.pid, self.tree = pid, tree

    def _pids(self) -> list[int]:
        if not self.tree:
            return [self.pid]
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, []))
        return out

    def processes(self) -> int:
        return len(self._pids())

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self._pids():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        total = 0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024


class Proc:
    """A glowplug host process."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.popen = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        self.stat = PidStat(self.popen.pid)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def control_plane(cluster: Cluster) -> dict[str, PidStat]:
    """The test bed's own processes, from the pids its state file records."""
    state = cluster._read_state() or {}
    pids = {str(p["name"]): int(p["pid"]) for p in state.get("procs", [])}
    out = {name: PidStat(pids[name]) for name in CONTROL_PLANE if name in pids}
    if "node-agent" in pids:
        out["node-agent+pods"] = PidStat(pids["node-agent"], tree=True)
    return out


def node_gpus(api: Api) -> int:
    """The test bed's GPUs (each trickling service's engine pod takes one)."""
    _, nodes = api.request("GET", "/api/v1/nodes")
    return sum(
        int(((n.get("status") or {}).get("allocatable") or {}).get("nvidia.com/gpu") or 0)
        for n in (nodes or {}).get("items") or []
    )


def fetch(url: str, timeout: float = 300) -> tuple[int, float]:
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        size = len(resp.read())
    return size, time.monotonic() - t0


def embed(url: str, model: str, timeout: float) -> int:
    """One embeddings request; its HTTP status (0: no answer)."""
    body = json.dumps({"model": model, "input": "hello"}).encode()
    req = urllib.request.Request(
        f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def remove_namespace(cluster: Cluster, api: Api, wait: bool) -> None:
    """Delete the bench namespace. kopf puts a finalizer on every EmbeddingService (the
    autoscaler's daemons) and only a running operator removes it: with the operator
    stopped, the bench strips them itself."""
    if cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        return
    with contextlib.suppress(Exception):
        todo = [o for o in list_paged(api) if o["metadata"].get("finalizers")]

        def strip(o: dict[str, Any]) -> None:
            with contextlib.suppress(Exception):
                api.request(
                    "PATCH",
                    f"{SERVICES_PATH}/{o['metadata']['name']}",
                    {"metadata": {"finalizers": None}},
                    content_type="application/merge-patch+json",
                )

        if todo:
            say(f"removing kopf's finalizer from {len(todo)} EmbeddingServices")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(strip, todo))
    cluster.kubectl(
        "delete", "namespace", NAMESPACE, f"--wait={str(wait).lower()}", check=False, timeout=1800
    )


def rates(reqs: list[audit.Request], seconds: float) -> dict[str, float]:
    counts = audit.by_verb_resource(reqs)
    return {k: round(v / seconds, 3) for k, v in counts.most_common()}


def ours(req: audit.Request) -> bool:
    """glowplug's requests about the bench namespace (or cluster-scoped ones): other
    sessions' operators on the same test bed work in other namespaces."""
    return audit.is_glowplug(req) and req.namespace in ("", NAMESPACE)


def component(req: audit.Request) -> str:
    if req.user_agent.startswith("glowplug-activator"):
        return "activator"
    return "operator"  # glowplug-operator/... and kopf/...


def pct(values: list[float], q: float) -> float | None:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3) if s else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class Probe:
    """The API server's latency for one small GET (one EmbeddingService), every 0.5 s,
    from a thread: how the test bed's control plane is doing while glowplug rests."""

    def __init__(self, api: Api, name: str) -> None:
        self.api, self.path = api, f"{SERVICES_PATH}/{name}"
        self.samples: list[float] = []
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            t0 = time.monotonic()
            try:
                status, _ = self.api.request("GET", self.path, attempts=1)
            except RuntimeError:
                status = 0
            if status == 200:
                self.samples.append(time.monotonic() - t0)
            else:
                self.failed += 1

    def result(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join(5)
        return {
            "samples": len(self.samples),
            "failed": self.failed,
            "p50_ms": _ms(pct(self.samples, 0.5)),
            "p99_ms": _ms(pct(self.samples, 0.99)),
        }


def counter(metrics_url: str, name: str) -> float | None:
    """One unlabelled sample from a /metrics page (None: not there, or unreadable)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=300) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def measure_window(
    tail: audit.AuditTail,
    procs: dict[str, Proc],
    testbed: dict[str, PidStat],
    api: Api,
    probe_name: str,
    window: float,
    n: int,
    op_metrics: str = "",
) -> dict[str, Any]:
    """The window's figures; with ``op_metrics`` (the operator's /metrics URL) also its
    service loops' ticks per second and the timers pending at the end."""
    ticks0 = counter(op_metrics, TICKS) if op_metrics else None
    tail.read()  # discard what came before the window
    glowplug = {k: p.stat for k, p in procs.items()}
    everyone = {**glowplug, **testbed}
    cpu0 = {k: s.cpu_seconds() for k, s in everyone.items()}
    load0 = loadavg()
    probe = Probe(api, probe_name)
    t0 = time.monotonic()
    time.sleep(window)
    seconds = time.monotonic() - t0
    reqs = [r for r in tail.read() if ours(r)]
    ticks1 = counter(op_metrics, TICKS) if op_metrics else None
    out: dict[str, Any] = {
        "window_s": round(seconds, 1),
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
        "api_requests_per_s": round(len(reqs) / seconds, 3),
        "api_requests_per_s_per_1000_services": round(len(reqs) / seconds / n * 1000, 3),
        "by_verb_resource": rates(reqs, seconds),
        "apiserver_probe": probe.result(),
    }
    for name, s in glowplug.items():
        mine = [r for r in reqs if component(r) == name]
        out[name] = {
            "cpu_core_share": round((s.cpu_seconds() - cpu0[name]) / seconds, 4),
            "rss_mib": round(s.rss_mib(), 1),
            "api_requests_per_s": round(len(mine) / seconds, 3),
            "by_verb_resource": rates(mine, seconds),
        }
    out["testbed"] = {
        name: {
            "cpu_core_share": round((s.cpu_seconds() - cpu0[name]) / seconds, 4),
            "rss_mib": round(s.rss_mib(), 1),
            **({"processes": s.processes()} if s.tree else {}),
        }
        for name, s in testbed.items()
    }
    if "operator" in out and ticks0 is not None and ticks1 is not None:
        out["operator"]["ticks_per_s"] = round((ticks1 - ticks0) / seconds, 2)
        out["operator"]["timers_pending"] = counter(op_metrics, TIMERS)
    return out


def metrics_sizes(urls: dict[str, str]) -> dict[str, Any]:
    """Each /metrics fetched 3 times: bytes, the fastest and the median fetch (render +
    loopback transfer; the activator renders in a worker thread)."""
    out: dict[str, Any] = {}
    for what, url in urls.items():
        times: list[float] = []
        size = 0
        for _ in range(3):
            try:
                size, secs = fetch(url)
            except OSError as err:
                out[what] = {"error": str(err)}
                break
            times.append(secs)
        if times:
            out[what] = {
                "bytes": size,
                "fetch_s_min": round(min(times), 3),
                "fetch_s_median": round(statistics.median(times), 3),
            }
    return out


def wait_reconciled(api: Api, n: int, t_start: float, timeout: float) -> float | None:
    interval = 5.0 if n <= 2000 else 10.0
    last = -1
    while time.monotonic() - t_start < timeout:
        try:
            done = reconciled(list_paged(api))
        except RuntimeError as err:
            say(f"listing EmbeddingServices failed ({err}); again")
            done = last
        if done == n:
            return time.monotonic() - t_start
        elapsed = time.monotonic() - t_start
        rate = f", {done / elapsed:.1f}/s" if elapsed > 0 and done > 0 else ""
        say(f"reconciled {done}/{n} ({elapsed:.0f} s{rate}; load {loadavg()[0]})")
        last = done
        time.sleep(interval)
    say(f"reconcile-all: not done within {timeout:.0f} s ({last}/{n})")
    return None


def settle(
    tail: audit.AuditTail, reqs: list[audit.Request], timeout: float, quiet_s: float
) -> float | None:
    """Wait until glowplug makes no more than 5 requests in any second for ``quiet_s``;
    appends what it reads to ``reqs``; returns when (monotonic) the last busy second
    ended, or None at the limit."""
    t0 = time.monotonic()
    offset = time.time() - t0  # wall clock minus monotonic
    while time.monotonic() - t0 < timeout:
        time.sleep(2)
        reqs.extend(r for r in tail.read() if ours(r))
        per_second = Counter(int(r.at) for r in reqs if r.at >= t0 + offset - quiet_s)
        busy = [sec for sec, c in per_second.items() if c > 5]
        last_busy = max(busy) + 1 if busy else t0 + offset
        if time.time() - last_busy >= quiet_s:
            return last_busy - offset
    return None


def follow_startup(
    tail: audit.AuditTail, names: set[str], t_wall: float, timeout: float, quiet_s: float
) -> dict[str, Any]:
    """A new operator's start-up as the audit log shows it: its requests, the busiest
    second, when it settles (no second with more than 5 requests for ``quiet_s``), and
    when it has applied every service's Deployment (the failover's reconcile-all)."""
    reqs: list[audit.Request] = []
    applied: dict[str, float] = {}
    t0 = time.monotonic()
    last_say = t0
    while time.monotonic() - t0 < timeout:
        time.sleep(2)
        new = [r for r in tail.read() if ours(r)]
        reqs.extend(new)
        for r in new:
            if r.resource == "deployments" and r.verb == "patch" and r.name in names:
                applied.setdefault(r.name, r.at)
        now = time.time()
        per_second = Counter(int(r.at - t_wall) for r in reqs if r.at >= t_wall)
        busy = [s for s, c in per_second.items() if c > 5]
        last_busy = (max(busy) + 1) if busy else 0
        if now - t_wall > 20 and now - t_wall - last_busy > quiet_s:
            break
        if time.monotonic() - last_say > 15:
            last_say = time.monotonic()
            say(
                f"failover: {len(reqs)} requests, {len(applied)}/{len(names)} Deployments "
                f"re-applied ({now - t_wall:.0f} s)"
            )
    per_second = Counter(int(r.at - t_wall) for r in reqs if r.at >= t_wall)
    busy = [s for s, c in per_second.items() if c > 5]
    return {
        "requests": len(reqs),
        "requests_per_service": round(len(reqs) / max(1, len(names)), 2),
        "peak_per_s": max(per_second.values(), default=0),
        "settled_after_s": (max(busy) + 1) if busy else 0,
        "deployments_reapplied": len(applied),
        "reconcile_all_s": (
            round(max(applied.values()) - t_wall, 1) if len(applied) == len(names) else None
        ),
        "followed_s": round(time.time() - t_wall, 1),
        "by_verb_resource": dict(audit.by_verb_resource(reqs).most_common(10)),
    }


def scale_write_latency(
    tail: audit.AuditTail, act_url: str, names: list[str], every: float = 3.0
) -> dict[str, Any]:
    """Request at zero -> the scale subresource write for that service (audit time), one
    service every ``every`` seconds. Each then lives as a user's would: it wakes, and the
    operator scales it back to zero after its idle timeout (20 s). Forcing it to zero at
    once instead fights the wake that the held request keeps going (the autoscaler raises
    it again) and leaves a storm of writes behind for the next phase to count."""
    lat: list[float] = []
    tail.read()
    for name in names:
        t0 = time.monotonic()
        sent = time.time()
        threading.Thread(target=embed, args=(act_url, name, 2.0), daemon=True).start()
        found = None
        while found is None and time.monotonic() < t0 + 30:
            time.sleep(0.2)
            for r in tail.read():
                if r.resource.endswith("/scale") and r.verb == "patch" and r.name == name:
                    found = r.at
        if found is not None:
            lat.append(found - sent)
        time.sleep(max(0.0, every - (time.monotonic() - t0)))
    return {
        "samples": len(lat),
        "missed": len(names) - len(lat),
        "p50_s": pct(lat, 0.5),
        "p99_s": pct(lat, 0.99),
        "max_s": round(max(lat), 3) if lat else None,
        "mean_s": round(statistics.mean(lat), 3) if lat else None,
    }


def wait_for_no_pods(api: Api, timeout: float) -> float | None:
    """Seconds until the bench namespace has no pods (woken services back at zero)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        status, out = api.request("GET", PODS_PATH)
        if status == 200 and not out.get("items"):
            return round(time.monotonic() - t0, 1)
        time.sleep(2)
    return None


class Trickle:
    """``names`` get a request every 5 s (each in its own thread, 120 s timeout): they
    wake and stay up. Counts the answers per service."""

    def __init__(self, act_url: str, names: list[str]) -> None:
        self.act_url, self.names = act_url, names
        self.answered: dict[str, int] = {}
        self.codes = Counter[int]()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _one(self, name: str) -> None:
        code = embed(self.act_url, name, 120.0)
        with self.lock:
            self.codes[code] += 1
            if code == 200:
                self.answered[name] = self.answered.get(name, 0) + 1

    def _run(self) -> None:
        while not self.stop.is_set():
            for n in self.names:
                threading.Thread(target=self._one, args=(n,), daemon=True).start()
            self.stop.wait(5.0)

    def up(self) -> int:
        with self.lock:
            return len(self.answered)


def phase(
    results: dict[str, Any], key: str, fn: Callable[[], Any], save: Callable[[], None]
) -> Any:
    """Run one phase; a failure is recorded, not raised (the bench reports, never fails)."""
    try:
        results[key] = fn()
    except Exception as err:  # a report, whatever broke
        say(f"{key}: failed: {err!r}")
        results[key] = {"error": repr(err)}
    save()
    return results[key]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="EmbeddingServices (default 300)")
    ap.add_argument("--window", type=float, default=60.0, help="idle window seconds")
    ap.add_argument(
        "--samples", type=int, default=60, help="request-to-scale samples (at idle, then again)"
    )
    ap.add_argument("--trickle-max", type=int, default=100, help="most trickling services")
    ap.add_argument("--create-workers", type=int, default=16, help="concurrent creates")
    ap.add_argument(
        "--reconcile-timeout", type=float, default=0.0,
        help="cold-start limit in seconds (default max(900, 0.4 s per service))",
    )  # fmt: skip
    ap.add_argument("--label", default="", help="a word for the results file (e.g. 'before')")
    ap.add_argument("--keep", action="store_true", help="leave the namespace (and test bed) up")
    args = ap.parse_args()
    reconcile_timeout = args.reconcile_timeout or max(900.0, 0.4 * args.n)

    cluster = Cluster(bin_dir=ensure_binaries())
    cluster.attach()
    procs: dict[str, Proc] = {}
    started = False
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = RESULTS / f"scale-{args.n}{'-' + args.label if args.label else ''}-{stamp}.json"
    results: dict[str, Any] = {
        "n": args.n,
        "label": args.label,
        "code": _git_head(),
        "started_utc": stamp,
        "loadavg_start": loadavg(),
        "cpus": os.cpu_count(),
    }

    def save() -> None:
        out.write_text(json.dumps(results, indent=2) + "\n")

    api: Api | None = None
    trickle: Trickle | None = None
    try:
        # The process node's fake GPU capacity (8 by default) would cap the trickle at 8
        # engine pods: a test bed this run starts gets room for all of them and for the
        # services the request-to-scale samples wake meanwhile (its pod limit, 110, stays).
        os.environ.setdefault("GLOWPLUG_NODE_GPUS", str(args.trickle_max + 10))
        started = cluster.up(started_by="bench-scale")
        api = Api(cluster)
        gpus = node_gpus(api)
        results["node_gpus"] = gpus
        for f in sorted((ROOT / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/embeddingservices.glowplug.dev",
        )  # fmt: skip
        remove_namespace(cluster, api, wait=True)
        cluster.kubectl("create", "namespace", NAMESPACE)
        testbed = control_plane(cluster)
        names = [f"svc-{i:05d}" for i in range(args.n)]
        tmp = cluster.state_dir / "bench-scale"
        tmp.mkdir(exist_ok=True)
        say(f"creating {args.n} EmbeddingServices ({args.create_workers} at a time)")
        results["create"] = create_services(api, names, args.create_workers)
        results["testbed_after_create"] = {
            k: {"rss_mib": round(s.rss_mib(), 1)} for k, s in testbed.items()
        }
        save()

        env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        act_port = free_port()
        act_url = f"http://127.0.0.1:{act_port}"
        procs["activator"] = Proc(
            [str(GLOWPLUG), "activator", "--host", "127.0.0.1", "--port", str(act_port),
             "--namespace", NAMESPACE],
            tmp / "activator.log", env,
        )  # fmt: skip
        t_act = time.monotonic()
        wait_for(lambda: _ok(f"{act_url}/readyz"), 600, what="activator ready")
        results["activator_ready_s"] = round(time.monotonic() - t_act, 1)
        op_metrics = free_port()
        op_url = f"http://127.0.0.1:{op_metrics}/metrics"
        op_args = [
            str(GLOWPLUG), "operator", "--standalone", "--namespace", NAMESPACE,
            "--metrics-port", str(op_metrics), "--activator-url", act_url, "-q",
        ]  # fmt: skip
        tail = audit.AuditTail(cluster.audit_log)
        t_op = time.monotonic()
        procs["operator"] = Proc(op_args, tmp / "operator.log", env)
        cpu_op0 = procs["operator"].stat.cpu_seconds()
        say(f"operator started: cold start (limit {reconcile_timeout:.0f} s)")
        reconcile_s = wait_reconciled(api, args.n, t_op, reconcile_timeout)
        startup_reqs = [r for r in tail.read() if ours(r)]
        # All reconciled is not yet at rest: each service's first autoscaler tick reads
        # its object once (through a rate gate); the idle window starts when that is over.
        settle_limit = min(600.0, max(60.0, 0.1 * args.n))
        say(f"waiting for glowplug's start-up requests to settle (at most {settle_limit:.0f} s)")
        settled_s = settle(tail, startup_reqs, settle_limit, quiet_s=15)
        results["cold_start"] = {
            "reconcile_all_s": None if reconcile_s is None else round(reconcile_s, 1),
            "per_s": None if not reconcile_s else round(args.n / reconcile_s, 1),
            "operator_cpu_s": round(procs["operator"].stat.cpu_seconds() - cpu_op0, 1),
            "operator_rss_mib": round(procs["operator"].stat.rss_mib(), 1),
            "settled_after_s": None if settled_s is None else round(settled_s - t_op, 1),
            "requests": len(startup_reqs),
            "requests_per_service": round(len(startup_reqs) / args.n, 2),
            "by_verb_resource": dict(audit.by_verb_resource(startup_reqs).most_common(10)),
            "loadavg": loadavg(),
        }
        save()
        say(f"reconcile-all: {reconcile_s} s; settled: {results['cold_start']['settled_after_s']}")
        time.sleep(5)

        probe_name = names[0]
        say(f"idle window {args.window:.0f} s (all {args.n} at zero; load {loadavg()[0]})")
        phase(
            results, "idle",
            lambda: measure_window(
                tail, procs, testbed, api, probe_name, args.window, args.n, op_url
            ),
            save,
        )  # fmt: skip
        say("fetching /metrics (3 times each)")
        phase(
            results, "metrics",
            lambda: metrics_sizes({
                "activator": f"{act_url}/metrics",
                "operator": f"http://127.0.0.1:{op_metrics}/metrics",
            }),
            save,
        )  # fmt: skip

        failover_timeout = min(600.0, max(120.0, 0.2 * args.n))
        say(f"failover: a new operator process takes over (at most {failover_timeout:.0f} s)")
        procs["operator"].stop()
        tail.read()
        t_new = time.time()
        procs["operator"] = Proc(op_args, tmp / "operator-2.log", env)
        phase(
            results, "failover",
            lambda: follow_startup(tail, set(names), t_new, failover_timeout, quiet_s=15),
            save,
        )  # fmt: skip

        phase(
            results, "deployment_controller",
            lambda: wait_for_deployment_controller(api, args.n, max(300.0, 0.3 * args.n)),
            save,
        )  # fmt: skip
        rng = random.Random(12)
        k = min(max(1, args.n // 100), args.trickle_max, max(1, gpus - 2))
        trickle_names = rng.sample(names, k)
        samples = min(args.samples, (len(names) - k) // 2)
        at_idle = rng.sample([n for n in names if n not in set(trickle_names)], samples)
        say(f"request-to-scale-write at idle: {samples} services, one every 3 s")
        phase(
            results, "request_to_scale_write_idle",
            lambda: scale_write_latency(tail, act_url, at_idle),
            save,
        )  # fmt: skip
        settled = wait_for_no_pods(api, 180.0)
        say(f"the woken services are back at zero after {settled} s more")
        results["request_to_scale_write_idle"]["back_at_zero_s"] = settled
        save()
        if k < min(max(1, args.n // 100), args.trickle_max):
            say(f"trickle: {k} services only (the node has {gpus} GPUs; a reused test bed?)")
        rest = [n for n in names if n not in set(trickle_names) | set(at_idle)]
        before = {k2: (s.rss_mib(), s.processes()) for k2, s in testbed.items() if s.tree}
        trickle = Trickle(act_url, trickle_names)
        wake_limit = max(120.0, 3.0 * k)
        say(f"trickle: {k} services, a request each every 5 s; waking (limit {wake_limit:.0f} s)")
        t_w = time.monotonic()
        shown = -1
        while trickle.up() < k and time.monotonic() - t_w < wake_limit:
            time.sleep(5)
            if trickle.up() != shown:
                shown = trickle.up()
                say(f"trickle: {shown}/{k} answered ({time.monotonic() - t_w:.0f} s)")
        woke_s = time.monotonic() - t_w if trickle.up() == k else None
        time.sleep(10)
        say(f"trickle window {args.window:.0f} s")
        busy = phase(
            results, "trickle",
            lambda: measure_window(
                tail, procs, testbed, api, probe_name, args.window, args.n, op_url
            ),
            save,
        )  # fmt: skip
        if isinstance(busy, dict) and "testbed" in busy:
            for name, (rss0, procs0) in before.items():
                t = busy["testbed"][name]
                t["rss_mib_added"] = round(t["rss_mib"] - rss0, 1)
                t["processes_added"] = t["processes"] - procs0
            busy.update(
                services=k,
                all_answered_after_s=None if woke_s is None else round(woke_s, 1),
                answered=trickle.up(),
                codes={str(c): v for c, v in trickle.codes.items()},
            )
            save()
        say(f"request-to-scale-write while the trickle runs: {samples} services")
        phase(
            results, "request_to_scale_write",
            lambda: scale_write_latency(tail, act_url, rng.sample(rest, samples)),
            save,
        )  # fmt: skip
        trickle.stop.set()
        results["loadavg_end"] = loadavg()
        save()
        print_table(results)
        print(f"results: {out}")
    finally:
        if trickle is not None:
            trickle.stop.set()
        for p in procs.values():
            p.stop()
        if started and not args.keep:
            others = cluster.detach()
            if others:
                say(f"leaving the test bed up for {len(others)} other session(s)")
            else:
                say("stopping the test bed this run started")
                cluster.down()
        else:
            if not args.keep and api is not None:
                remove_namespace(cluster, api, wait=False)
            cluster.release()


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def print_table(r: dict[str, Any]) -> None:
    idle, busy, cold = r.get("idle") or {}, r.get("trickle") or {}, r.get("cold_start") or {}
    print(f"\n== {r['n']} EmbeddingServices at zero ({r['label'] or r['code']}) ==")
    print(f"load average at start        {r['loadavg_start']}")
    print(f"create                       {_get(r, 'create', 'seconds')} s")
    print(
        f"reconcile-all (cold start)   {cold.get('reconcile_all_s')} s, "
        f"{cold.get('requests_per_service')} requests/service"
    )
    print(f"glowplug API requests/s idle {idle.get('api_requests_per_s')}")
    for k, v in list((idle.get("by_verb_resource") or {}).items())[:8]:
        print(f"    {k:<40} {v}")
    for c in ("operator", "activator"):
        m = idle.get(c) or {}
        print(
            f"{c:<9} idle: {(m.get('cpu_core_share') or 0) * 100:.1f} % core, "
            f"{m.get('rss_mib')} MiB, {m.get('api_requests_per_s')} req/s"
        )
    for c, m in (idle.get("testbed") or {}).items():
        print(f"  test bed {c:<24} {m['cpu_core_share'] * 100:.1f} % core, {m['rss_mib']} MiB")
    print(f"API server probe (one GET)   {idle.get('apiserver_probe')}")
    ticks = [(w.get("operator") or {}).get("ticks_per_s") for w in (idle, busy)]
    print(f"operator ticks/s             idle {ticks[0]}, trickle {ticks[1]} (None: not counted)")
    for c, m in (r.get("metrics") or {}).items():
        print(f"/metrics {c:<9} {m.get('bytes')} bytes in {m.get('fetch_s_median')} s")
    fo = r.get("failover") or {}
    print(
        f"failover: {fo.get('requests')} requests, peak {fo.get('peak_per_s')}/s, "
        f"settled after {fo.get('settled_after_s')} s, reconcile-all {fo.get('reconcile_all_s')} s"
    )
    dc = r.get("deployment_controller") or {}
    print(f"Deployment controller synced every Deployment after {dc.get('seconds')} s more")
    op = busy.get("operator") or {}
    print(
        f"trickle ({busy.get('services')} services): {busy.get('api_requests_per_s')} req/s, "
        f"operator {(op.get('cpu_core_share') or 0) * 100:.1f} % core; "
        f"node agent+pods {_get(busy, 'testbed', 'node-agent+pods')}"
    )
    for key, when in (("_idle", "at idle"), ("", "trickle on")):
        lat = r.get(f"request_to_scale_write{key}") or {}
        print(
            f"request-to-scale-write {when:<10} p50 {lat.get('p50_s')} s p99 {lat.get('p99_s')} s"
            f" max {lat.get('max_s')} s ({lat.get('samples')} samples)"
        )


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
