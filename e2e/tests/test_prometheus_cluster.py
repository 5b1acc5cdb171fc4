"""The dashboard against a real Prometheus: Debian's prometheus server (extracted by
scripts/install-prometheus.sh) scrapes the operator and the activator on the test bed,
loads the chart's recording rules, and every panel query of the Grafana dashboard is
evaluated against what it scraped: each returns data, and GPU-hours used and saved agree
with the EmbeddingService's status within 2 %.

Real processes: the test bed, the SGLang stand-in (a test double of SGLang) as the
engine, ``glowplug operator`` (metrics on a loopback port) and ``glowplug activator``
as host processes, and prometheus on 127.0.0.1 scraping both every second.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.tests.conftest import OperatorFactory
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, apply, free_port, wait_for
from glowplug.api import parse_duration

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "glowplug"
NAME = "watched"
UP_FOR = 90.0  # seconds the service holds its GPU, so that 2 % is more than a scrape
AT_ZERO_FOR = 100.0  # seconds at zero afterwards, so that the savings are as large
# Requests carry an API key, so the "GPU-hours by API key" panel has data too.
KEY = "gp-e2e-prometheus-0123456789"


def key_secret(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "dashboard",
            "namespace": namespace,
            "labels": {"glowplug.dev/api-key": ""},
        },
        "stringData": {"key": KEY},
    }


def service() -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {
                "id": "test/stand-in-model",
                "source": {"huggingFace": {}},
                "matryoshka": True,  # lets a bad `dimensions` reach the engine (a 400)
            },
            "resources": {"gpuType": "L4"},
            "scaling": {"minReplicas": 0, "maxReplicas": 1, "idleTimeout": "5s"},
            "cost": {"baselineReplicas": 1, "gpuHourlyPrice": 2.0},
            "cache": {"enabled": True},
        },
    }


class Prometheus:
    def __init__(self, binary: str, workdir: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(CHART / "rules" / "glowplug.rules.yaml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(self.ready, 60, what="prometheus /-/ready")

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("/api/v1/query", **params)
        return list(data["result"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def prometheus_bin() -> str:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/install-prometheus.sh")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"no prometheus: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture
def activator(
    cluster: Cluster, namespace: str, crd_installed: Path, tmp_path: Path
) -> Iterator[ActivatorProcess]:
    if not GLOWPLUG.exists():
        pytest.skip(f"{GLOWPLUG} is missing: run `make install`")
    act = ActivatorProcess(cluster, namespace, tmp_path / "activator.log")
    act.start()
    try:
        yield act
    finally:
        act.stop()


def embed(url: str, **body: Any) -> int:
    data = json.dumps({"model": NAME, "input": "hello", **body}).encode()
    req = urllib.request.Request(
        f"{url}/v1/embeddings",
        data=data,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=180) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def dashboard_queries(namespace: str, window: str) -> list[tuple[str, str]]:
    """(panel title, expression) for every target, Grafana's variables filled in."""
    dash = json.loads((CHART / "dashboards" / "glowplug.json").read_text())
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


def value(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_every_panel_returns_data_and_gpu_hours_match_status(
    cluster: Cluster,
    namespace: str,
    activator: ActivatorProcess,
    operator_factory: OperatorFactory,
    prometheus_bin: str,
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    operator_factory(
        "--standalone", "--namespace", namespace, "--metrics-port", str(metrics_port),
        "--activator-url", activator.url, "--ledger-checkpoint", "1",
    )  # fmt: skip
    prom = Prometheus(
        prometheus_bin,
        tmp_path,
        {"activator": activator.url.split("//")[1], "operator": f"127.0.0.1:{metrics_port}"},
    )
    try:
        started = time.time()
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(key_secret(namespace)))
        apply(cluster, namespace, service())
        wait_for(lambda: activator.stats(NAME) != {}, 30, what=f"{NAME} routed")
        wait_for(
            lambda: "computedInputs" in activator.stats(NAME), 30, what="the key Secret watched"
        )
        # The ledger's counters exist at 0 before the first wake, and Prometheus has seen
        # them so (as for any service that existed before its traffic): increase() then
        # counts from 0, not from the first value it happened to scrape.
        wait_for(
            lambda: prom.query(f'glowplug_gpu_seconds_total{{namespace="{namespace}"}} == 0'),
            30, what="the GPU-seconds counter scraped at 0",
        )  # fmt: skip
        assert embed(activator.url) == 200  # wakes it
        assert embed(activator.url, dimensions=10**6) == 400  # the engine refuses: an error
        end = time.time() + UP_FOR
        while time.time() < end:  # keep it busy for a while, then let it go
            assert embed(activator.url, input=f"text {time.time()}") == 200
            time.sleep(2)
        path = f"/apis/glowplug.dev/v1alpha1/namespaces/{namespace}/embeddingservices/{NAME}"
        wait_for(lambda: cluster.api("GET", path)["spec"].get("replicas") == 0, 90, what="zero")
        assert embed(activator.url) == 200  # a cached answer while at zero
        wait_for(
            lambda: cluster.api("GET", path)["status"].get("readyReplicas", 0) == 0
            and not prom.query(f'glowplug_replicas{{namespace="{namespace}",state="ready"}} > 0'),
            90, what="no ready replica, scraped",
        )  # fmt: skip
        # At zero the baseline keeps accruing: savings large enough that 2 % is more
        # than a scrape interval of it.
        time.sleep(AT_ZERO_FOR)

        # Recording rules loaded and evaluated (interval 1m).
        def rules_healthy() -> list[Any] | None:
            groups = prom.get("/api/v1/rules")["groups"]
            assert {g["name"] for g in groups} >= {"glowplug.gpu", "glowplug.savings.1h"}
            bad = [r for g in groups for r in g["rules"] if r["health"] == "err"]
            assert not bad, bad
            # Groups on a 1m interval have run by now; the 1d group runs every 5m and may
            # not have had its first turn yet (its rules are checked by promtool tests).
            minute = [r for g in groups if g["interval"] <= 60 for r in g["rules"]]
            return minute if all(r["health"] == "ok" for r in minute) else None

        wait_for(rules_healthy, 150, what="every 1m recording rule evaluated")
        wait_for(lambda: prom.query("glowplug:gpus_held:rate5m"), 90, what="a recorded series")

        window = f"{int(time.time() - started) + 30}s"
        empty = [
            (title, expr)
            for title, expr in dashboard_queries(namespace, window)
            if not prom.query(expr)
        ]
        assert not empty, empty

        # GPU-hours used and saved: Prometheus against status, at the ledger's own time.
        status = cluster.api("GET", path)["status"]
        at = parse_time(status["ledgerTime"])
        used = value(prom.query(
            f'sum(increase(glowplug_gpu_seconds_total{{namespace="{namespace}"}}[{window}]))',
            at,
        ))  # fmt: skip
        base = value(prom.query(
            f'sum(increase(glowplug_baseline_gpu_seconds_total{{namespace="{namespace}"}}'
            f"[{window}]))",
            at,
        ))  # fmt: skip
        assert status["gpuSeconds"] > UP_FOR / 2
        assert used == pytest.approx(status["gpuSeconds"], rel=0.02), (used, status)
        # The baseline accrues from the service's creation, a moment before Prometheus
        # first scraped its counter (the GPU counter was scraped at 0, above): the part
        # before the first sample is what no increase() can see, so it is taken off.
        unseen = value(prom.query(
            f'min_over_time(glowplug_baseline_gpu_seconds_total{{namespace="{namespace}"}}'
            f"[{window}])",
            at,
        ))  # fmt: skip
        assert unseen < 0.1 * status["baselineGpuSeconds"], unseen
        saved = status["baselineGpuSeconds"] - unseen - status["gpuSeconds"]
        assert base - used == pytest.approx(saved, rel=0.02), (base, used, unseen, status)
        assert parse_duration(window) > 0
    finally:
        prom.stop()


def parse_time(text: str) -> float:
    from glowplug.kube.timefmt import parse_time as parse

    t = parse(text)
    assert t is not None
    return t
