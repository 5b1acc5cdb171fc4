"""The SGLang stand-in (a test double) on loopback: no cluster needed.

Its strictness (flags, readiness, SGLang's error messages, TEI mode) is what makes the
cluster suites meaningful; e2e/tests/test_standin_contract.py holds its flag list to
sglang's real parser and e2e/tests/test_engine_contract.py holds its HTTP behaviour to
the real vLLM server.
"""

from __future__ import annotations

import base64
import json
import math
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster import REPO
from e2e.tests.helpers import free_port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def status_of(url: str, timeout: float = 10) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


class StandIn:
    """The stand-in on a free loopback port (SGLang mode unless args say ``tei``)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, tei: bool = False) -> None:
        self.port = free_port()
        base = (
            ["--model-id", "org/model", "--hostname", "127.0.0.1", "--port", str(self.port)]
            if tei
            else ["--model-path", "org/model", "--served-model-name", "served",
                  "--host", "127.0.0.1", "--port", str(self.port), "--is-embedding"]
        )  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "e2e.standin.sglang", *base, *args],
            cwd=REPO, env={"PYTHONPATH": str(REPO), "STANDIN_HEALTH_SECONDS": "1", **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def output(self) -> str:
        return self.proc.stdout.read().decode() if self.proc.stdout else ""

    def wait_ready(self, timeout: float = 20.0, path: str = "/ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open(self.port) and status_of(f"http://127.0.0.1:{self.port}{path}") == 200:
                return
            assert self.proc.poll() is None, self.output()
            time.sleep(0.05)
        raise AssertionError(f"stand-in did not answer {path} 200")

    def post(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/embeddings",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(json.load(resp))
        except urllib.error.HTTPError as e:
            return e.code, dict(json.load(e))

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
            body = resp.read()
            return json.loads(body) if body and path != "/metrics" else body.decode()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    s = StandIn("--enable-metrics")
    s.wait_ready()
    yield s
    s.stop()


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_endpoints_and_deterministic_vectors(standin: StandIn) -> None:
    info = standin.get("/model_info")
    assert info["stand_in"] is True and info["model_path"] == "org/model"
    assert standin.get("/v1/models")["data"][0]["id"] == "served"
    status, a = standin.post({"model": "served", "input": ["the cat sat", "dogs bark"]})
    assert status == 200
    assert a["model"] == "org/model"  # SGLang answers with the model path
    assert [d["index"] for d in a["data"]] == [0, 1]
    v0 = a["data"][0]["embedding"]
    assert len(v0) == 1024 and abs(norm(v0) - 1) < 1e-9
    assert a["usage"]["prompt_tokens"] == a["usage"]["total_tokens"] > 0
    _, b = standin.post({"model": "served", "input": "the cat sat"})
    assert b["data"][0]["embedding"] == v0
    assert b["data"][0]["embedding"] != a["data"][1]["embedding"]
    assert "sglang:num_requests_total" in standin.get("/metrics")


def test_base64_encoding_matches_floats(standin: StandIn) -> None:
    _, f = standin.post({"input": "hello", "encoding_format": "float"})
    _, b = standin.post({"input": "hello", "encoding_format": "base64"})
    raw = base64.b64decode(b["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert all(abs(x - y) < 1e-6 for x, y in zip(decoded, f["data"][0]["embedding"], strict=True))


def test_dimensions_refused_without_matryoshka(standin: StandIn) -> None:
    status, body = standin.post({"input": "hello", "dimensions": 64})
    assert status == 400
    assert body == {
        "object": "error",
        "message": "Model 'org/model' does not support matryoshka representation, "
        "changing output dimensions will lead to poor results.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    status, body = standin.post({"input": 7})
    assert status == 400 and body["code"] == 400


def test_empty_and_whitespace_input_get_sglangs_400(standin: StandIn) -> None:
    assert standin.post({"input": ""}) == (
        400,
        {"object": "error", "message": "Input cannot be empty", "type": "BadRequestError",
         "param": None, "code": 400},
    )  # fmt: skip
    status, body = standin.post({"input": ["fine", "  \n"]})
    assert status == 400
    assert body["message"] == "Input at index 1 cannot be empty or whitespace only"
    status, body = standin.post({"input": "x", "encoding_format": "bytes"})
    assert status == 400 and "encoding_format must be either 'float' or 'base64'" in body["message"]


def test_context_length_gives_the_real_400_or_truncates() -> None:
    s = StandIn("--context-length", "16")
    try:
        s.wait_ready()
        assert s.get("/v1/models")["data"][0]["max_model_len"] == 16
        assert s.post({"input": "one two three"})[0] == 200
        status, body = s.post({"input": ["short", " ".join(["word"] * 20)]})
        assert status == 400
        assert body["message"] == (
            "The input (22 tokens) is longer than the model's context length (16 tokens)."
        )
        assert s.post({"input": [1] * 16})[0] == 400  # token ids count as they are
        assert s.post({"input": [1] * 15})[0] == 200
    finally:
        s.stop()
    s = StandIn("--context-length", "16", "--allow-auto-truncate")
    try:
        s.wait_ready()
        status, body = s.post({"input": " ".join(["word"] * 20)})
        assert status == 200 and body["usage"]["prompt_tokens"] == 16
    finally:
        s.stop()


def test_unknown_flag_exits_2_like_sglangs_parser() -> None:
    s = StandIn("--some-unknown-flag", "x")
    assert s.proc.wait(20) == 2
    assert "unrecognized arguments: --some-unknown-flag" in s.output()
    # a flag of the stand-in's own is spelled --standin-*, never a real SGLang spelling
    s = StandIn("--dimensions", "64")
    assert s.proc.wait(20) == 2
    s.output()


def test_ready_503_while_warming_up_and_after_sigterm_health_takes_a_second() -> None:
    s = StandIn("--standin-warmup", "1.5", "--standin-load-delay", "0.3")
    try:
        deadline = time.monotonic() + 20
        while not port_open(s.port):
            assert time.monotonic() < deadline and s.proc.poll() is None, s.output()
            time.sleep(0.02)
        url = f"http://127.0.0.1:{s.port}"
        assert status_of(f"{url}/ready") == 503  # port open, still warming up
        assert status_of(f"{url}/health") == 503
        s.wait_ready()
        t0 = time.monotonic()
        assert status_of(f"{url}/health") == 200
        assert time.monotonic() - t0 >= 1.0  # a one-token forward, polled every second
        # SIGTERM while a request runs: /ready and /health 503 at once, the request and
        # new ones are still answered, then the process exits 0.
        results: list[int] = []

        def long_request() -> None:
            results.append(s.post({"input": "slow one"})[0])

        s.proc.send_signal(signal.SIGTERM)
        assert status_of(f"{url}/ready") == 503
        assert status_of(f"{url}/health") == 503
        t = threading.Thread(target=long_request)
        t.start()
        t.join(10)
        assert results == [200]
        assert s.proc.wait(20) == 0
    finally:
        if s.proc.poll() is None:
            s.stop()


def test_tei_mode_flags_by_version_and_batch_limit() -> None:
    # TEI 1.8 has no --served-model-name: clap exits 2 (the old cpu-1.8 pin crash-looped)
    tei = "ghcr.io/huggingface/text-embeddings-inference"
    s = StandIn("--served-model-name", "x", tei=True, env={"STANDIN_IMAGE": f"{tei}:cpu-1.8"})
    assert s.proc.wait(20) == 2
    assert "--served-model-name" in s.output()
    s = StandIn("--served-model-name", "bge", "--max-client-batch-size", "4", tei=True,
                env={"STANDIN_IMAGE": f"{tei}:cpu-1.9"})  # fmt: skip
    try:
        s.wait_ready(path="/health")
        t0 = time.monotonic()
        assert status_of(f"http://127.0.0.1:{s.port}/health") == 200
        assert time.monotonic() - t0 < 1.0  # TEI's health is not SGLang's slow forward
        status, body = s.post({"model": "bge", "input": ["a", "b", "c", "d"]})
        assert status == 200 and body["model"] == "bge" and len(body["data"]) == 4
        status, body = s.post({"model": "bge", "input": ["a", "b", "c", "d", "e"]})
        assert status == 413
        assert body == {
            "message": "batch size 5 > maximum allowed batch size 4",
            "code": 413,
            "type": "validation",
        }
    finally:
        s.stop()


def test_matryoshka_truncates_then_normalises() -> None:
    s = StandIn(
        "--json-model-override-args", '{"is_matryoshka": true}', "--standin-dimensions", "256"
    )
    try:
        s.wait_ready()
        _, full = s.post({"input": "hello world"})
        status, cut = s.post({"input": "hello world", "dimensions": 32})
        assert status == 200
        v = cut["data"][0]["embedding"]
        assert len(v) == 32 and abs(norm(v) - 1) < 1e-9
        head = full["data"][0]["embedding"][:32]
        assert all(abs(x - y / norm(head)) < 1e-9 for x, y in zip(v, head, strict=True))
        status, body = s.post({"input": "x", "dimensions": 512})
        assert status == 400
        assert (
            body["message"] == "Provided dimensions are greater than max embedding dimension: 256"
        )
    finally:
        s.stop()


def test_port_stays_closed_during_load_delay() -> None:
    s = StandIn(env={"STANDIN_LOAD_DELAY": "1.5"})
    try:
        time.sleep(0.8)
        assert s.proc.poll() is None and not port_open(s.port)  # SGLang loading weights
        s.wait_ready()
    finally:
        s.stop()


def test_fail_hook_exits_non_zero() -> None:
    s = StandIn(env={"STANDIN_FAIL": "1"})
    assert s.proc.wait(20) == 1
    if s.proc.stdout:
        s.proc.stdout.close()


def test_sglang_before_0_5_20_has_no_ready_endpoint() -> None:
    s = StandIn(env={"STANDIN_IMAGE": "lmsysorg/sglang:v0.5.19-cu129"})
    try:
        s.wait_ready(path="/health")
        assert status_of(f"http://127.0.0.1:{s.port}/ready") == 404
    finally:
        s.stop()
