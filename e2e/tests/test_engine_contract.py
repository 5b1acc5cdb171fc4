"""One contract, two engines: the SGLang stand-in (a test double) and the REAL vLLM server.

The same tests run against both, so the double cannot drift from a real engine unnoticed:
health and readiness, the /v1/embeddings shape, base64 == float, ``dimensions``, usage,
and the status codes of the errors glowplug passes on. Where SGLang (which the stand-in
models, message for message) and vLLM really differ, the test says so explicitly
(``DIFFERENCES``) instead of papering over it; the activator's own behaviour covers
both (it refuses empty input itself, and rewrites the response ``model``).

vLLM: ``python -m vllm.entrypoints.openai.api_server`` from ``scripts/engine-env.sh vllm``
serving all-MiniLM-L6-v2 (``python -m e2e.models``), started once per session on
loopback: 75-100 s on 2 quiet cores, minutes on a busy machine. ``-m "not real_engine"``
deselects it; ``GLOWPLUG_TEST_VLLM_URL=http://127.0.0.1:PORT`` reuses a server you
started (MiniLM served as ``minilm``) instead.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2e import models
from e2e.cluster import REPO
from e2e.engines.vllm_server import VllmServer, serve_args
from e2e.tests.helpers import free_port
from glowplug.api import parse
from glowplug.engines import sglang as sglang_profile
from glowplug.engines import vllm as vllm_profile

SERVED = "minilm"
DIMS = models.MINILM_DIMS
CONTEXT = 256  # MiniLM's max_seq_length; vLLM reads it from sentence_bert_config.json

# What glowplug relies on is the same for both; these are the places where they are not.
DIFFERENCES = {
    # SGLang refuses empty/whitespace input; vLLM embeds it (special tokens only). The
    # activator refuses it before any engine is called (issue 9, part 6).
    "whitespace_input_status": {"standin": 400, "vllm": 200},
    # SGLang answers with the model path, vLLM with the served name; the activator
    # rewrites it to the served name either way.
    "response_model": {"standin": "path", "vllm": "served"},
    # SGLang ignores the request's model; vLLM 404s an unknown one. The activator routes
    # by model and sends the served name.
    "unknown_model_status": {"standin": 200, "vllm": 404},
}


def readiness_path(engine: str) -> str:
    """The path glowplug's profile for ``engine`` probes for readiness (a CPU service)."""
    svc = parse({
        "apiVersion": "glowplug.dev/v1alpha1", "kind": "EmbeddingService",
        "metadata": {"name": SERVED, "namespace": "contract"},
        "spec": {"model": {"id": "m", "source": {"hostPath": {"path": "/models"}}},
                 "engine": {"name": engine}, "resources": {"gpus": 0}},
    })  # fmt: skip
    profile = sglang_profile.ENGINE if engine == "sglang" else vllm_profile.ENGINE
    return profile.readiness_path(svc)


@dataclass
class Engine:
    kind: str  # "standin" or "vllm"
    url: str
    model_path: str
    readiness_path: str  # what glowplug's engine profile probes for readiness

    def get(self, path: str, timeout: float = 30) -> tuple[int, bytes, float]:
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as resp:
                return int(resp.status), resp.read(), time.monotonic() - t0
        except urllib.error.HTTPError as e:
            return int(e.code), e.read(), time.monotonic() - t0

    def post(self, body: dict[str, Any], timeout: float = 120) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"{self.url}/v1/embeddings",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return int(resp.status), json.load(resp)
        except urllib.error.HTTPError as e:
            return int(e.code), json.loads(e.read() or b"{}")


def error_of(engine: Engine, body: Any) -> dict[str, Any]:
    """The error object: SGLang's is flat, vLLM's is OpenAI's nested one."""
    if engine.kind == "vllm":
        assert set(body) == {"error"}, body
        err = dict(body["error"])
    else:
        assert body.get("object") == "error", body
        err = dict(body)
    assert {"message", "type", "code"} <= set(err), body
    return err


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def standin_engine() -> Iterator[Engine]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2e.standin.sglang", "--model-path", "/models/minilm",
         "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
         "--is-embedding", "--context-length", str(CONTEXT),
         "--standin-dimensions", str(DIMS)],
        cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    eng = Engine("standin", f"http://127.0.0.1:{port}", "/models/minilm",
                 readiness_path("sglang"))  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (_port_open(port) and eng.get("/ready")[0] == 200):
            assert proc.poll() is None, "stand-in exited"
            assert time.monotonic() < deadline, "stand-in did not get ready"
            time.sleep(0.05)
        yield eng
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="session")
def vllm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    reuse = os.environ.get("GLOWPLUG_TEST_VLLM_URL")
    model = models.ensure(models.MINILM)
    if reuse:
        yield Engine("vllm", reuse.rstrip("/"), str(model), readiness_path("vllm"))
        return
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VllmServer(serve_args(model, SERVED, "127.0.0.1", port), log, port)
    server.start()
    try:
        cold = server.wait_healthy()
        print(f"\n[contract] real vLLM (MiniLM) answered /health {cold:.0f} s after start")
        yield Engine("vllm", server.url, str(model), readiness_path("vllm"))
    finally:
        server.stop()


@pytest.fixture(params=["standin", pytest.param("vllm", marks=pytest.mark.real_engine)])
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(f"{request.param}_engine")  # type: ignore[no-any-return]


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


def test_health_and_the_readiness_path_glowplug_probes(engine: Engine) -> None:
    status, _, took = engine.get("/health")
    assert status == 200
    if engine.kind == "standin":
        assert took >= 1.0  # SGLang's /health is a one-token forward, polled every second
    assert engine.get(engine.readiness_path)[0] == 200
    # The profiles differ on purpose: SGLang has a cheap /ready, vLLM has none.
    ready_status = engine.get("/ready")[0]
    assert ready_status == (200 if engine.kind == "standin" else 404)
    status, body, _ = engine.get("/v1/models")
    models_ = json.loads(body)["data"]
    assert status == 200 and models_[0]["id"] == SERVED
    assert models_[0]["max_model_len"] == CONTEXT


def test_embeddings_shape_usage_and_unit_vectors(engine: Engine) -> None:
    texts = ["A man is playing a guitar.", "A man plays the guitar on stage.",
             "Stock markets fell sharply today."]  # fmt: skip
    status, body = engine.post({"model": SERVED, "input": texts})
    assert status == 200, body
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    vecs = [d["embedding"] for d in body["data"]]
    assert all(len(v) == DIMS for v in vecs)
    assert all(abs(norm(v) - 1) < 1e-3 for v in vecs)  # both normalise
    usage = body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > len(texts)
    expected = engine.model_path if DIFFERENCES["response_model"][engine.kind] == "path" else SERVED
    assert body["model"] == expected
    # related sentences are closer than unrelated ones (hashed words in the stand-in,
    # meaning in MiniLM)
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2]) + 0.1


def test_base64_decodes_to_the_float_vectors(engine: Engine) -> None:
    texts = ["hello world", "glow plugs heat the engine"]
    _, f = engine.post({"model": SERVED, "input": texts, "encoding_format": "float"})
    status, b = engine.post({"model": SERVED, "input": texts, "encoding_format": "base64"})
    assert status == 200, b
    for fd, bd in zip(f["data"], b["data"], strict=True):
        raw = base64.b64decode(bd["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)  # little-endian float32
        assert len(decoded) == DIMS
        assert max(abs(x - y) for x, y in zip(decoded, fd["embedding"], strict=True)) < 1e-6


def test_a_batch_of_32_inputs(engine: Engine) -> None:
    texts = [f"sentence number {i} about embeddings" for i in range(32)]
    status, body = engine.post({"model": SERVED, "input": texts})
    assert status == 200, body
    assert len(body["data"]) == 32


def test_dimensions_on_a_model_without_matryoshka_is_a_400(engine: Engine) -> None:
    status, body = engine.post({"model": SERVED, "input": "hello", "dimensions": 64})
    assert status == 400
    err = error_of(engine, body)
    assert err["code"] == 400 and err["type"] == "BadRequestError"
    assert "matryoshka" in err["message"].lower()


def test_input_longer_than_the_context_is_a_400_naming_the_context(engine: Engine) -> None:
    status, body = engine.post({"model": SERVED, "input": "word " * (CONTEXT + 50)})
    assert status == 400
    err = error_of(engine, body)
    assert err["code"] == 400 and err["type"] == "BadRequestError"
    assert str(CONTEXT) in err["message"] and "context length" in err["message"]


def test_empty_and_whitespace_input(engine: Engine) -> None:
    status, body = engine.post({"model": SERVED, "input": []})
    assert status == 400  # both refuse an empty list
    assert error_of(engine, body)["code"] == 400
    status, body = engine.post({"model": SERVED, "input": ["fine", "   "]})
    assert status == DIFFERENCES["whitespace_input_status"][engine.kind], body
    if status == 400:
        msg = error_of(engine, body)["message"]
        assert msg == "Input at index 1 cannot be empty or whitespace only"


def test_unknown_model_name(engine: Engine) -> None:
    status, body = engine.post({"model": "no-such-model", "input": "hello"})
    assert status == DIFFERENCES["unknown_model_status"][engine.kind], body
    if status == 404:
        assert error_of(engine, body)["type"] == "NotFoundError"
