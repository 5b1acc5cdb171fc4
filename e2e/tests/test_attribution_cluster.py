"""GPU-seconds attributed to API keys on the test bed: two keys call one service, the
operator splits the GPU-seconds its ledger counts by each key's share of the inputs the
engine computed for it, and exports glowplug_gpu_seconds_attributed_total.

Real processes: the test bed's API server and node agent, the SGLang stand-in as engine
pods (a test double of SGLang), ``glowplug activator`` on 127.0.0.1 watching the two key
Secrets of the test namespace, and ``glowplug operator`` reading its /stats.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.tests.conftest import OperatorFactory
from e2e.tests.helpers import ActivatorProcess, apply, free_port, replicas_and_pods, wait_for
from glowplug.metrics import GPU_SECONDS_ATTRIBUTED_TOTAL, GPU_SECONDS_TOTAL
from glowplug.operator.attribution import UNATTRIBUTED

pytestmark = pytest.mark.cluster

NAME = "shared"
KEYS = {"team-a": "gp-e2e-attr-a-0123456789", "team-b": "gp-e2e-attr-b-0123456789"}


def service() -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"id": "test/stand-in-model", "source": {"huggingFace": {}}},
            "scaling": {"minReplicas": 0, "maxReplicas": 1, "idleTimeout": "10s"},
        },
    }


def key_secret(name: str, namespace: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"glowplug.dev/api-key": ""},
            },
            "stringData": {"key": KEYS[name]},
        }
    )


def embed(url: str, key: str | None, inputs: list[str]) -> int:
    body = json.dumps({"model": NAME, "input": inputs}).encode()
    req = urllib.request.Request(
        f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=180) as resp:
            json.load(resp)
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def samples(port: int, name: str) -> dict[str, float]:
    """``name``'s samples on the operator's /metrics, by their label text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            out[labels] = float(value)
    return out


def test_two_keys_split_the_gpu_seconds_by_their_computed_inputs(
    cluster: Cluster, namespace: str, activator: ActivatorProcess, operator_factory: OperatorFactory
) -> None:
    port = free_port()
    operator_factory(
        "--standalone", "--namespace", namespace, "--metrics-port", str(port),
        "--activator-url", activator.url,
    )  # fmt: skip
    for name in KEYS:
        cluster.kubectl("apply", "-f", "-", input=key_secret(name, namespace))
    apply(cluster, namespace, service())
    wait_for(lambda: activator.stats(NAME) != {}, 30, what=f"{NAME} routed")
    wait_for(lambda: embed(activator.url, None, ["x"]) == 401, 30, what="keyed activator")

    # team-a wakes the service with 3 inputs, team-b follows with 1; then it goes idle.
    assert embed(activator.url, KEYS["team-a"], ["a1", "a2", "a3"]) == 200
    assert embed(activator.url, KEYS["team-b"], ["b1"]) == 200
    computed = activator.stats(NAME)["computedInputs"]
    assert computed == {f"{namespace}/team-a": 3, f"{namespace}/team-b": 1}, computed
    wait_for(
        lambda: replicas_and_pods(cluster, namespace, NAME) == (0, 0), 120, what="back at zero"
    )

    mine = f'namespace="{namespace}",service="{NAME}"'

    def settled() -> dict[str, float] | None:
        # The residency closes at the first tick without a pod: the split is then final.
        got = {k: v for k, v in samples(port, GPU_SECONDS_ATTRIBUTED_TOTAL).items() if mine in k}
        held = [v for k, v in samples(port, GPU_SECONDS_TOTAL).items() if mine in k]
        if not held or not got or abs(sum(got.values()) - sum(held)) > 1e-6:
            return None
        return {**got, "__held__": sum(held)}

    try:
        got = wait_for(settled, 30, what="the attributed seconds to add up to the ledger's")
    except AssertionError:
        print(samples(port, GPU_SECONDS_ATTRIBUTED_TOTAL), samples(port, GPU_SECONDS_TOTAL))
        raise
    held = got.pop("__held__")
    by_key = {k.split('key="', 1)[1].split('"', 1)[0]: v for k, v in got.items()}
    print(f"GPU-seconds {held:.2f}, attributed {by_key}")
    a, b = by_key[f"{namespace}/team-a"], by_key[f"{namespace}/team-b"]
    assert by_key.get(UNATTRIBUTED, 0.0) == 0.0, by_key  # every second was someone's
    # 3:1 from the first tick that saw both inputs on; team-a alone before that (the wake,
    # held back until the first input, goes with the shares of that first tick).
    assert 0 < b < a, by_key
    assert 0.74 <= a / (a + b) <= 0.95, by_key
    text = json.dumps(samples(port, GPU_SECONDS_ATTRIBUTED_TOTAL))
    assert all(key not in text for key in KEYS.values())  # Secret refs, never the keys
