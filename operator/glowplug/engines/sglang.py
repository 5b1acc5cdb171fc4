"""SGLang (sgl-project/sglang) as an embedding server.

Pinned to 0.5.23 (CUDA 13). ``/ready`` exists from 0.5.20; ``/v1/embeddings`` honours
``encoding_format: base64`` since 0.5.19 at least. ``engine.cuda: "12"`` runs the last
CUDA 12 release, 0.5.19, probed on ``/health``. The flags below parse with both releases'
own parsers (e2e/tests/test_engine_parsers.py).
"""

from __future__ import annotations

import json

from glowplug.api.spec import EmbeddingService
from glowplug.engines.base import Engine, HttpProbe, Manifest, Probes

# The one place the SGLang version is written: the image tag and the parser environment
# of the contract tests (scripts/engine-env.sh) both come from it. From 0.5.20 the plain
# tag is the CUDA 13 image (driver R580+); CUDA 12 tags end at v0.5.19-cu129.
VERSION = "0.5.23"
IMAGE = f"lmsysorg/sglang:v{VERSION}"
# For nodes whose driver predates CUDA 13 (below R580): the last CUDA 12 image. Written
# once too: scripts/engine-env.sh sglang-cuda12 installs its parser from it.
CUDA12_VERSION = "0.5.19"
CUDA12_IMAGE = f"lmsysorg/sglang:v{CUDA12_VERSION}-cu129"
PORT = 30000
# SGLang checks Matryoshka support in the model config; Qwen3-Embedding's does not say so.
MATRYOSHKA_OVERRIDE = json.dumps({"is_matryoshka": True})
# Startup is probed every second (a closed port answers at once, so this is cheap) so a
# wake is not delayed by a coarse probe period; 1800 failures = 30 minutes for the
# largest weight loads from slow disks plus graph capture.
STARTUP_PERIOD = 1
STARTUP_FAILURES = 1800


class SGLang(Engine):
    name = "sglang"
    port = PORT
    vector_neutral_flags = frozenset(
        {
            "--host",
            "--port",
            "--served-model-name",
            "--enable-metrics",
            "--mem-fraction-static",
            "--max-running-requests",
            "--max-total-tokens",
            "--max-prefill-tokens",
            "--chunked-prefill-size",
            "--cuda-graph-max-bs",
            "--disable-cuda-graph",
            "--log-level",
            "--log-requests",
            "--watchdog-timeout",
        }
    )

    def default_image(self, svc: EmbeddingService) -> str:
        return CUDA12_IMAGE if svc.engine.cuda == "12" else IMAGE

    def command(self, svc: EmbeddingService) -> list[str]:
        return ["python3", "-m", "sglang.launch_server"]

    def default_args(self, svc: EmbeddingService) -> list[str]:
        args = [
            "--model-path",
            self.model_path(svc),
            "--is-embedding",
            "--host",
            "0.0.0.0",
            "--port",
            str(PORT),
            "--served-model-name",
            svc.model.served_name,
            "--enable-metrics",
        ]
        if svc.resources.gpus > 0:
            args += ["--tp-size", str(svc.resources.gpus)]
        if svc.model.revision and not svc.model.source.is_local:
            args += ["--revision", svc.model.revision]
        if svc.model.matryoshka:
            args += ["--json-model-override-args", MATRYOSHKA_OVERRIDE]
        return args

    def probes(self, svc: EmbeddingService) -> Probes:
        if svc.engine.cuda == "12":
            return self._probes_before_ready()
        return Probes(
            startup=HttpProbe("/ready", period=STARTUP_PERIOD, failure_threshold=STARTUP_FAILURES),
            # /ready is cheap (no forward pass): probe it every second so a woken pod
            # takes traffic as soon as it can, and leaves rotation quickly if paused.
            readiness=HttpProbe("/ready", period=1, failure_threshold=3, timeout=2),
            # /health runs a one-token request with a 20 s internal timeout: a busy pod
            # may answer slowly, so allow 30 s per try and 5 misses (~2.5 min) before a
            # restart, which only a hung scheduler should ever cause.
            liveness=HttpProbe("/health", period=30, failure_threshold=5, timeout=30),
        )

    def _probes_before_ready(self) -> Probes:
        """0.5.19 has no /ready: /health says ready instead (read from the 0.5.19 wheel's
        http_server.py: 503 while starting or shutting down, else a one-token forward
        polled every second, so at least 1 s, that gives up after 20 s). It is slower than
        /ready, so readiness allows 25 s per try (the engine's own check gives up at 20 s)
        and probes every 2 s: a woken pod takes traffic up to 2 s later than with /ready.
        """
        return Probes(
            startup=HttpProbe(
                "/health", period=STARTUP_PERIOD, failure_threshold=STARTUP_FAILURES, timeout=5
            ),
            readiness=HttpProbe("/health", period=2, failure_threshold=3, timeout=25),
            liveness=HttpProbe("/health", period=30, failure_threshold=5, timeout=30),
        )

    def engine_env(self, svc: EmbeddingService) -> list[Manifest]:
        cache = self.cache_dir(svc, "sglang")
        # Triton/Inductor/FlashInfer compile caches on the volume: compiled once, not per wake.
        return [{"name": "SGLANG_CACHE_DIR", "value": cache}] if cache else []


ENGINE = SGLang()
