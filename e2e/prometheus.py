"""A real Prometheus server for the test bed: Debian's ``prometheus`` binary
(``scripts/install-prometheus.sh``), its scrape configuration, and the checks the
end-to-end suites make against what it scraped.

Used by ``e2e/tests/test_prometheus_cluster.py`` (host processes, static targets),
``e2e/tests/test_e2e_helm.py`` (the chart's pods, found through the API server the way
the chart's PodMonitor asks prometheus-operator to find them; ``e2e/poddiscovery.py``
stands in for the Kubernetes discovery Debian's build lacks), ``make demo
PROMETHEUS=1`` (left running) and ``e2e/bench/panels.py`` (the picture in docs/).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "glowplug"
RULES = CHART / "rules" / "glowplug.rules.yaml"
DASHBOARD = CHART / "dashboards" / "glowplug.json"


class PrometheusError(RuntimeError):
    pass


def install_prometheus() -> str:
    """The prometheus binary's path (extracted from Debian's package once, then cached)."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-prometheus.sh")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise PrometheusError(f"no prometheus: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip().splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- scrape configuration -------------------------------------------------------------------


def static_scrape_configs(targets: Mapping[str, str], interval: str = "1s") -> list[dict[str, Any]]:
    """One job per ``{job: "host:port"}``, scraped every ``interval``."""
    return [
        {
            "job_name": job,
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "static_configs": [{"targets": [target]}],
        }
        for job, target in targets.items()
    ]


def _meta_label(name: str) -> str:
    # Prometheus' Kubernetes SD turns every character outside [a-zA-Z0-9_] into "_".
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def podmonitor_namespaces(monitor: Mapping[str, Any]) -> list[str]:
    """The namespaces a PodMonitor selects pods in (its own when none is named)."""
    spec = monitor["spec"]
    names = (spec.get("namespaceSelector") or {}).get("matchNames")
    return list(names or [monitor["metadata"]["namespace"]])


def podmonitor_scrape_configs(monitor: Mapping[str, Any], targets: Path) -> list[dict[str, Any]]:
    """The scrape jobs prometheus-operator generates for a PodMonitor, for the fields the
    chart's PodMonitor uses (selector.matchLabels, namespaceSelector.matchNames, and per
    endpoint port, path, interval, scrapeTimeout, honorLabels).

    The relabelling (job ``podMonitor/<ns>/<name>/<i>``, a drop of Failed and Succeeded
    pods, a keep per selector label on ``__meta_kubernetes_pod_label_*`` and
    ``..._labelpresent_*``, a keep on the container port name, then the target labels
    namespace, container, pod, job ``<ns>/<name>`` and endpoint, ``honor_labels`` from
    the endpoint) follows prometheus-operator's pkg/prometheus/promcfg.go and its golden
    tests. The target label ``namespace`` is the *pod's* namespace: without honorLabels
    it renames the metrics' own ``namespace`` label (the EmbeddingService's) to
    ``exported_namespace``.

    Where prometheus-operator writes ``kubernetes_sd_configs`` (role pod, the monitor's
    namespaces), these jobs read ``targets``, the file ``e2e/poddiscovery.py`` (a test
    double of that discovery: Debian's Prometheus is built without it) keeps current
    with the same meta labels.
    """
    meta = monitor["metadata"]
    spec = monitor["spec"]
    ns, name = meta["namespace"], meta["name"]
    keeps = []
    for key, value in sorted(((spec.get("selector") or {}).get("matchLabels") or {}).items()):
        label = _meta_label(key)
        keeps.append(
            {
                "action": "keep",
                "source_labels": [
                    f"__meta_kubernetes_pod_label_{label}",
                    f"__meta_kubernetes_pod_labelpresent_{label}",
                ],
                "regex": f"({re.escape(str(value))});true",
            }
        )
    jobs = []
    for i, ep in enumerate(spec.get("podMetricsEndpoints") or []):
        relabel = [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            {
                "action": "drop",
                "source_labels": ["__meta_kubernetes_pod_phase"],
                "regex": "(Failed|Succeeded)",
            },
            *keeps,
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "regex": ep["port"],
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {
                "source_labels": ["__meta_kubernetes_pod_container_name"],
                "target_label": "container",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": f"{ns}/{name}"},
            {"target_label": "endpoint", "replacement": ep["port"]},
        ]
        job: dict[str, Any] = {
            "job_name": f"podMonitor/{ns}/{name}/{i}",
            "honor_labels": bool(ep.get("honorLabels", False)),
            "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            "metrics_path": ep.get("path", "/metrics"),
            "relabel_configs": relabel,
        }
        if ep.get("interval"):
            job["scrape_interval"] = ep["interval"]
        if ep.get("scrapeTimeout"):
            job["scrape_timeout"] = ep["scrapeTimeout"]
        jobs.append(job)
    return jobs


class PodDiscovery:
    """``python -m e2e.poddiscovery`` as a child process (``detach``: left running)."""

    def __init__(
        self, kubeconfig: Path, namespaces: Sequence[str], workdir: Path, *, detach: bool = False
    ) -> None:
        import sys

        workdir.mkdir(parents=True, exist_ok=True)
        self.targets = workdir / "targets.json"
        self.targets.write_text("[]")
        self.log_path = workdir / "poddiscovery.log"
        self.pid_path = workdir / "poddiscovery.pid"
        argv = [sys.executable, "-m", "e2e.poddiscovery", "--kubeconfig", str(kubeconfig),
                "--out", str(self.targets)]  # fmt: skip
        for ns in namespaces:
            argv += ["--namespace", ns]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=detach
            )
        self.pid_path.write_text(f"{self.proc.pid}\n")

    def stop(self) -> None:
        _stop(self.proc, self.pid_path)


# --- the server -----------------------------------------------------------------------------


class Prometheus:
    """One prometheus process on 127.0.0.1 with the chart's recording rules.

    ``detach``: started in its own session and left running when this process exits
    (``make demo PROMETHEUS=1``); its pid is in ``workdir/prometheus.pid``.
    """

    def __init__(
        self,
        binary: str,
        workdir: Path,
        scrape_configs: Sequence[Mapping[str, Any]],
        *,
        port: int = 0,
        detach: bool = False,
        evaluation_interval: str = "1s",
    ) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": evaluation_interval},
            "rule_files": [str(RULES)],
            "scrape_configs": [dict(c) for c in scrape_configs],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self.pid_path = workdir / "prometheus.pid"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=detach,
            )  # fmt: skip
        self.pid_path.write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + 60
        while not self.ready():
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(f"prometheus not ready in 60 s: {self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise PrometheusError(f"prometheus exited ({self.proc.returncode}): {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def get(self, path: str, **params: str) -> Any:
        return api_get(self.url, path, **params)

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return query(self.url, expr, at)

    def stop(self) -> None:
        _stop(self.proc, self.pid_path)


def _stop(proc: subprocess.Popen[bytes], pid_path: Path) -> None:
    """Stop a process this module started (by its own handle) and forget its pid file."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    pid_path.unlink(missing_ok=True)


def stop_detached(workdir: Path) -> bool:
    """Stop a detached Prometheus and pod discovery left in ``workdir`` (by their pid
    files, checked against their command lines); True if one ran."""
    stopped = False
    for pid_name, marker in (
        ("prometheus.pid", str(workdir / "prometheus.yml")),
        ("poddiscovery.pid", str(workdir / "targets.json")),
    ):
        pid_path = workdir / pid_name
        try:
            pid = int(pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            pid_path.unlink(missing_ok=True)
            continue
        pid_path.unlink(missing_ok=True)
        if marker.encode() not in cmdline:
            continue  # the pid was reused by something else
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        stopped = True
    return stopped


def api_get(url: str, path: str, **params: str) -> Any:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise PrometheusError(f"{path} {params}: {body}")
    return body["data"]


def query(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    return list(api_get(url, "/api/v1/query", **params)["result"])


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    data = api_get(
        url,
        "/api/v1/query_range",
        query=expr,
        start=f"{start:.3f}",
        end=f"{end:.3f}",
        step=f"{step:g}",
    )
    return list(data["result"])


# --- what the suites check ------------------------------------------------------------------


def dashboard_queries(namespace: str, window: str) -> list[tuple[str, str]]:
    """(panel title, expression) for every target of the chart's Grafana dashboard, with
    Grafana's variables filled in (``$service``: every service)."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$namespace", namespace)
                .replace("$service", ".*")
                .replace("$__range", window)
                .replace("$__rate_interval", window)
            )
            out.append((panel["title"], expr))
    return out


def empty_panels(prom: Prometheus, namespace: str, window: str) -> list[tuple[str, str]]:
    """The dashboard's queries that return no data."""
    return [(t, e) for t, e in dashboard_queries(namespace, window) if not prom.query(e)]


def minute_rules_evaluated(prom: Prometheus) -> list[Any] | None:
    """The recording rules of the groups on a 1m interval once all have run (None before);
    raises when a group is missing or any rule failed. The 1d group runs every 5m and may
    not have had its first turn yet (promtool's tests cover its rules)."""
    groups = prom.get("/api/v1/rules")["groups"]
    names = {g["name"] for g in groups}
    if not names >= {"glowplug.gpu", "glowplug.savings.1h"}:
        raise PrometheusError(f"recording rule groups missing: {sorted(names)}")
    bad = [r for g in groups for r in g["rules"] if r["health"] == "err"]
    if bad:
        raise PrometheusError(f"recording rules failed: {bad}")
    minute = [r for g in groups if g["interval"] <= 60 for r in g["rules"]]
    return minute if all(r["health"] == "ok" for r in minute) else None


@dataclass(frozen=True)
class LedgerComparison:
    """GPU-seconds used and saved over one window, from Prometheus and from status."""

    used_prometheus: float
    used_status: float
    saved_prometheus: float
    saved_status: float
    unseen_baseline: float  # baseline accrued before Prometheus' first sample of it


def compare_ledger(
    prom: Prometheus, namespace: str, obj: Mapping[str, Any], at: float, window: str
) -> LedgerComparison:
    """Prometheus' ``increase()`` of the ledger counters over ``window`` ending at ``at``
    against the EmbeddingService ``obj``'s status read as of ``at`` (``ledger.totals_at``:
    status + rate x (at - ledgerTime), exact at zero where the operator writes nothing).

    The baseline accrues from the service's creation, a moment before Prometheus first
    scraped its counter; that part (the counter's first sample) is what no increase()
    can see, so it is taken off the status side. Callers make sure the GPU counter was
    scraped at 0 before the first wake, so that increase() counts all of it.
    """
    from glowplug.operator.ledger import totals_at

    def one(expr: str) -> float:
        result = prom.query(expr, at)
        if len(result) != 1:
            raise PrometheusError(f"{expr}: expected one series, got {result}")
        return float(result[0]["value"][1])

    sel = f'{{namespace="{namespace}"}}'
    used = one(f"sum(increase(glowplug_gpu_seconds_total{sel}[{window}]))")
    base = one(f"sum(increase(glowplug_baseline_gpu_seconds_total{sel}[{window}]))")
    unseen = one(f"sum(min_over_time(glowplug_baseline_gpu_seconds_total{sel}[{window}]))")
    totals = totals_at(obj, at)
    return LedgerComparison(
        used_prometheus=used,
        used_status=totals.gpu_seconds,
        saved_prometheus=base - used,
        saved_status=totals.baseline_gpu_seconds - unseen - totals.gpu_seconds,
        unseen_baseline=unseen,
    )


# --- the scenario both suites run -----------------------------------------------------------

UP_FOR = 90.0  # seconds the service holds its GPU, so that 2 % is more than a scrape
AT_ZERO_FOR = 100.0  # seconds at zero afterwards, so that the savings are as large


@dataclass(frozen=True)
class DashboardRun:
    empty: list[tuple[str, str]]  # panels whose queries returned no data
    ledger: LedgerComparison
    status: dict[str, Any]

    def problems(self) -> list[str]:
        """What the run got wrong (both suites assert this is empty): a panel without
        data, or Prometheus' ledger more than 2 % from status' as of the same instant."""
        c, out = self.ledger, []
        if self.empty:
            out.append(f"panels without data: {self.empty}")
        if self.status["gpuSeconds"] <= UP_FOR / 2:
            out.append(f"status gpuSeconds {self.status['gpuSeconds']} after {UP_FOR} s up")
        if c.unseen_baseline >= 0.1 * c.saved_status:
            out.append(f"baseline before Prometheus' first scrape: {c.unseen_baseline}")
        if c.saved_status <= AT_ZERO_FOR / 2:  # as of now, not ledgerTime
            out.append(f"saved {c.saved_status} GPU-s after {AT_ZERO_FOR} s at zero")
        for what, prom, status in (
            ("used", c.used_prometheus, c.used_status),
            ("saved", c.saved_prometheus, c.saved_status),
        ):
            if abs(prom - status) > 0.02 * abs(status):
                out.append(f"{what}: Prometheus {prom} against status {status} GPU-s")
        return out


def run_dashboard_scenario(
    prom: Prometheus,
    namespace: str,
    embed: Callable[..., int],
    read: Callable[[], Mapping[str, Any]],
    *,
    say: Callable[[str], None] = print,
) -> DashboardRun:
    """Drive one EmbeddingService (scale-to-zero, cache enabled, ``spec.model.matryoshka``
    so that a bad ``dimensions`` reaches the engine) through what every panel shows,
    then read the dashboard and the ledger from Prometheus.

    ``embed(text, **body)`` sends one request and returns its HTTP status; ``read()``
    returns the EmbeddingService object. Steps: the GPU counter scraped at 0 (the service
    exists before its traffic), a wake, an engine error (400), ``UP_FOR`` seconds of
    requests, scale to zero, a cached answer at zero, ``AT_ZERO_FOR`` seconds at zero, the
    1m recording rules evaluated. Raises ``Timeout`` or ``PrometheusError``; the caller
    asserts on the result.
    """
    from e2e.helmkit import Timeout, wait_until

    sel = f'namespace="{namespace}"'
    started = time.time()
    # The ledger's counters exist at 0 before the first wake, and Prometheus has seen
    # them so (as for any service that existed before its traffic): increase() then
    # counts from 0, not from the first value it happened to scrape.
    try:
        wait_until(
            lambda: prom.query(f"glowplug_gpu_seconds_total{{{sel}}} == 0"),
            90,
            "the GPU-seconds counter scraped at 0",
        )
    except Timeout as err:
        raise PrometheusError(f"{err}; Prometheus has {scraped_state(prom)}") from err
    say("the ledger's counters are scraped at 0; waking the service")
    expect(embed("hello"), 200, "the first request (wakes it)")
    expect(embed("hello", dimensions=10**6), 400, "a bad dimensions (the engine refuses)")
    end = time.time() + UP_FOR
    while time.time() < end:  # keep it busy for a while, then let it go
        expect(embed(f"text {time.time()}"), 200, "a request while up")
        time.sleep(2)
    say(f"busy for {UP_FOR:.0f} s; waiting for scale to zero")
    wait_until(lambda: (read().get("spec") or {}).get("replicas") == 0, 120, "scale to zero")
    expect(embed("hello"), 200, "a cached answer while at zero")
    wait_until(
        lambda: (
            (read().get("status") or {}).get("readyReplicas", 0) == 0
            and not prom.query(f'glowplug_replicas{{{sel},state="ready"}} > 0')
        ),
        120,
        "no ready replica, scraped",
    )
    # At zero the baseline keeps accruing: savings large enough that 2 % is more than a
    # scrape interval of it.
    say(f"at zero; the baseline accrues for {AT_ZERO_FOR:.0f} s")
    time.sleep(AT_ZERO_FOR)
    wait_until(lambda: minute_rules_evaluated(prom), 150, "every 1m recording rule evaluated")
    wait_until(lambda: prom.query("glowplug:gpus_held:rate5m"), 90, "a recorded series")

    window = f"{int(time.time() - started) + 30}s"
    empty = empty_panels(prom, namespace, window)
    # Prometheus against status read as of the same instant (a second ago, so that the
    # last scrape before it is in). At zero the operator writes nothing: status says the
    # totals at ledgerTime and the rates they grow at from then on.
    at = time.time() - 1.0
    obj = read()
    return DashboardRun(empty, compare_ledger(prom, namespace, obj, at, window), obj["status"])


def scraped_state(prom: Prometheus) -> str:
    """What Prometheus scraped, for an error message: targets and the ledger's series."""
    targets = [
        (t["labels"].get("job"), t["scrapeUrl"], t["health"], t.get("lastError"))
        for t in prom.get("/api/v1/targets")["activeTargets"]
    ]
    series = [r["metric"] for r in prom.query("glowplug_gpu_seconds_total")]
    return f"targets {targets}, glowplug_gpu_seconds_total series {series}"


def expect(got: int, want: int, what: str) -> None:
    if got != want:
        raise PrometheusError(f"{what}: HTTP {got}, expected {want}")
