"""The SGLang stand-in (a test double) on loopback: no cluster needed."""

from __future__ import annotations

import base64
import json
import math
import socket
import struct
import subprocess
import sys
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


class StandIn:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "e2e.standin.sglang", "--model-path", "org/model",
             "--served-model-name", "served", "--host", "127.0.0.1", "--port", str(self.port),
             "--is-embedding", "--some-unknown-flag", "x", *args],
            cwd=REPO, env={"PYTHONPATH": str(REPO), **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open(self.port):
                return
            assert self.proc.poll() is None, self.proc.stdout.read() if self.proc.stdout else ""
            time.sleep(0.05)
        raise AssertionError("stand-in did not open its port")

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
    assert body["object"] == "error" and "matryoshka" in body["message"]
    status, body = standin.post({"input": 7})
    assert status == 400 and body["code"] == 400


def test_matryoshka_truncates_then_normalises() -> None:
    s = StandIn("--json-model-override-args", '{"is_matryoshka": true}', "--dimensions", "256")
    try:
        s.wait_ready()
        _, full = s.post({"input": "hello world"})
        status, cut = s.post({"input": "hello world", "dimensions": 32})
        assert status == 200
        v = cut["data"][0]["embedding"]
        assert len(v) == 32 and abs(norm(v) - 1) < 1e-9
        head = full["data"][0]["embedding"][:32]
        assert all(abs(x - y / norm(head)) < 1e-9 for x, y in zip(v, head, strict=True))
        assert s.post({"input": "x", "dimensions": 512})[0] == 400
    finally:
        s.stop()


def test_port_stays_closed_during_load_delay() -> None:
    s = StandIn(env={"STANDIN_LOAD_DELAY": "1.5"})
    try:
        time.sleep(0.8)
        assert s.proc.poll() is None and not port_open(s.port)
        s.wait_ready()
    finally:
        s.stop()


def test_fail_hook_exits_non_zero() -> None:
    s = StandIn(env={"STANDIN_FAIL": "1"})
    assert s.proc.wait(20) == 1
    if s.proc.stdout:
        s.proc.stdout.close()
