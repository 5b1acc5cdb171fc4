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
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.prometheus import (
    Prometheus,
    PrometheusError,
    compare_ledger,
    empty_panels,
    install_prometheus,
    minute_rules_evaluated,
    static_scrape_configs,
)
from e2e.tests.conftest import OperatorFactory
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, apply, free_port, wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "glowplug"
NAME = "watched"
UP_FOR = 90.0  # seconds the service holds its GPU, so that 2 % is more than a scrape
AT_ZERO_FOR = 100.0  # seconds at zero afterwards, so that the savings are as large


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
        f"{url}/v1/embeddings", data=data, headers={"Content-Type": "application/json"}
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
    try:
        started = time.time()
        apply(cluster, namespace, service())
        wait_for(lambda: activator.stats(NAME) != {}, 30, what=f"{NAME} routed")
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
        wait_for(lambda: minute_rules_evaluated(prom), 150, what="every 1m recording rule")
        wait_for(lambda: prom.query("glowplug:gpus_held:rate5m"), 90, what="a recorded series")

        window = f"{int(time.time() - started) + 30}s"
        empty = empty_panels(prom, namespace, window)
        assert not empty, empty

        # GPU-hours used and saved: Prometheus against status read as of the same instant
        # (a second ago, so that the last scrape before it is in). At zero the operator
        # writes nothing: status says the totals at ledgerTime and the rates from then on.
        at = time.time() - 1.0
        obj = cluster.api("GET", path)
        check = compare_ledger(prom, namespace, obj, at, window)
        print(check)
        assert obj["status"]["gpuSeconds"] > UP_FOR / 2
        assert check.unseen_baseline < 0.1 * check.saved_status, check
        assert check.saved_status > AT_ZERO_FOR * 0.9, (
            check
        )  # status read at `at`, not at ledgerTime
        assert check.used_prometheus == pytest.approx(check.used_status, rel=0.02), check
        assert check.saved_prometheus == pytest.approx(check.saved_status, rel=0.02), check
    finally:
        prom.stop()
