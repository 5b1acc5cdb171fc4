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
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.prometheus import (
    Prometheus,
    PrometheusError,
    install_prometheus,
    run_dashboard_scenario,
    static_scrape_configs,
)
from e2e.tests.conftest import OperatorFactory
from e2e.tests.helpers import ActivatorProcess, apply, free_port, wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "glowplug"
NAME = "watched"
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


@pytest.fixture
def prometheus_bin() -> str:
    try:
        return install_prometheus()
    except PrometheusError as err:
        pytest.skip(str(err))


def embed(url: str, **body: Any) -> int:
    data = json.dumps({"model": NAME, **body}).encode()
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
        tmp_path / "prometheus",
        static_scrape_configs(
            {"activator": activator.url.split("//")[1], "operator": f"127.0.0.1:{metrics_port}"}
        ),
    )
    path = f"/apis/glowplug.dev/v1alpha1/namespaces/{namespace}/embeddingservices/{NAME}"
    try:
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(key_secret(namespace)))
        apply(cluster, namespace, service())
        wait_for(lambda: activator.stats(NAME) != {}, 30, what=f"{NAME} routed")
        wait_for(
            lambda: "computedInputs" in activator.stats(NAME), 30, what="the key Secret watched"
        )
        run = run_dashboard_scenario(
            prom,
            namespace,
            lambda text, **body: embed(activator.url, input=text, **body),
            lambda: cluster.api("GET", path),
        )
        print(run.ledger)
        assert run.problems() == [], run.ledger
    finally:
        prom.stop()
