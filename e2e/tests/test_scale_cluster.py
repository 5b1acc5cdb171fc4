"""Cheap at rest (DESIGN.md invariant 6): many idle EmbeddingServices cost the API server
almost nothing.

Creates ``GLOWPLUG_SCALE_TEST_N`` (default 500) EmbeddingServices at zero replicas, runs
``glowplug operator`` and ``glowplug activator`` over their namespace, waits until every
one is reconciled, then counts glowplug's own API requests in the test bed's audit log
(e2e/cluster/audit.py: by user agent, in this namespace) over an idle window. The bound
is generous on purpose (a noisy, shared machine): before the event-driven operator, 300
idle services cost about 1.1 requests/s each (a LIST of pods every second, a ledger
checkpoint every 10 s); the bound is 0.02 requests/s per service. On a slow run the
reconcile's tail used to reach into the window: three status reads per service (the
first tick's ledger-restore GET, and a GET for each of the Deployment controller's
status updates after the create), 616 GETs in 60 s at 500; a service at zero now makes
none, however late its reconcile ends. The failure message names the user agents.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster, audit
from e2e.tests.conftest import OperatorFactory
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, wait_for

pytestmark = pytest.mark.cluster

N = int(os.environ.get("GLOWPLUG_SCALE_TEST_N", "500"))
IDLE_WINDOW = 60.0
BOUND_PER_SERVICE = 0.02  # requests/s; before: ~1.1
GROUP_PATH = "/apis/glowplug.dev/v1alpha1"


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name},
        "spec": {
            "model": {"id": "test/stand-in-model", "source": {"huggingFace": {}}},
            "scaling": {"minReplicas": 0, "maxReplicas": 1, "idleTimeout": "20s"},
            "replicas": 0,
        },
    }


def items(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    out = cluster.api("GET", f"{GROUP_PATH}/namespaces/{namespace}/embeddingservices")
    return list(out.get("items") or [])


def strip_finalizers(cluster: Cluster, namespace: str) -> None:
    """kopf's finalizer stays once the operator is stopped: remove it, or the namespace
    the fixture deletes would stay Terminating with N objects in it."""

    def strip(o: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            cluster.api(
                "PATCH",
                f"{GROUP_PATH}/namespaces/{namespace}/embeddingservices/{o['metadata']['name']}",
                {"metadata": {"finalizers": None}},
                content_type="application/merge-patch+json",
            )

    with contextlib.suppress(Exception):
        todo = [o for o in items(cluster, namespace) if o["metadata"].get("finalizers")]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(strip, todo))


def test_idle_services_cost_the_api_server_almost_nothing(
    cluster: Cluster,
    namespace: str,
    crd_installed: Path,
    operator_factory: OperatorFactory,
    tmp_path: Path,
) -> None:
    if not GLOWPLUG.exists():
        pytest.skip(f"{GLOWPLUG} is missing: run `make install`")
    doc = {"apiVersion": "v1", "kind": "List", "items": [service(f"s{i:04d}") for i in range(N)]}
    f = tmp_path / "services.json"
    f.write_text(json.dumps(doc))
    cluster.kubectl("apply", "-n", namespace, "--server-side", "-f", str(f), timeout=600)

    act = ActivatorProcess(cluster, namespace, tmp_path / "activator.log")
    act.start()
    op = operator_factory(
        "--standalone", "--namespace", namespace, "--metrics-port", "0",
        "--activator-url", act.url,
    )  # fmt: skip
    try:

        def all_reconciled() -> bool:
            objs = items(cluster, namespace)
            done = sum(
                1
                for o in objs
                if (o.get("status") or {}).get("observedGeneration")
                == o["metadata"].get("generation")
            )
            print(f"reconciled {done}/{N}", flush=True)
            return done == N

        wait_for(all_reconciled, 900, interval=5, what=f"{N} services reconciled")
        time.sleep(15)  # the first ticks' one-off writes (lastRequestTime) settle

        tail = audit.AuditTail(cluster.audit_log)
        t0 = time.monotonic()
        time.sleep(IDLE_WINDOW)
        seconds = time.monotonic() - t0
        mine = [r for r in tail.read() if audit.is_glowplug(r) and r.namespace == namespace]
        rate = len(mine) / seconds
        by = audit.by_verb_resource(mine)
        agents = Counter(r.user_agent.split("/")[0] for r in mine)
        print(f"{N} idle services: {rate:.2f} glowplug requests/s: {dict(by.most_common(8))}")
        assert op.proc.poll() is None, op.log()[-3000:]
        assert rate <= BOUND_PER_SERVICE * N, (
            f"{rate:.2f} requests/s from glowplug for {N} idle services "
            f"(bound {BOUND_PER_SERVICE * N:.1f}): {dict(by.most_common(8))}, by user agent:"
            f" {dict(agents)}"
        )
    finally:
        op.stop()
        act.stop()
        strip_finalizers(cluster, namespace)
