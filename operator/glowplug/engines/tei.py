"""Hugging Face text-embeddings-inference (TEI): embeddings on CPU or GPU.

TEI publishes one CPU image and one CUDA image per GPU architecture; the image is picked
from ``resources.gpus`` (0 = CPU) and ``resources.gpuType`` (architecture), and
``engine.image`` overrides the choice. The images' entrypoint is
``text-embeddings-router``, so only arguments are set.
"""

from __future__ import annotations

from glowplug.api.spec import EmbeddingService
from glowplug.engines.base import Engine, HttpProbe, Manifest, Probes, flag_name, split_flags

# The one place the TEI version is written; every tag below comes from it. 1.9 is the
# first release with --served-model-name (1.8 exits 2 on it).
VERSION = "1.9"
REGISTRY = "ghcr.io/huggingface/text-embeddings-inference"
CPU_IMAGE = f"{REGISTRY}:cpu-{VERSION}"
# Ampere (A100, compute capability 8.0) is TEI's default CUDA build.
GPU_IMAGE = f"{REGISTRY}:{VERSION}"
# gpuType substrings -> the CUDA build for that architecture; first match wins, so more
# specific names come first (L40 before L4, A100 before A10).
GPU_ARCH_IMAGES: tuple[tuple[str, str], ...] = (
    ("H100", f"{REGISTRY}:hopper-{VERSION}"),
    ("H200", f"{REGISTRY}:hopper-{VERSION}"),
    ("H800", f"{REGISTRY}:hopper-{VERSION}"),
    ("GH200", f"{REGISTRY}:hopper-{VERSION}"),
    ("A100", GPU_IMAGE),
    ("A800", GPU_IMAGE),
    ("A30", GPU_IMAGE),
    ("L40", f"{REGISTRY}:89-{VERSION}"),
    ("L4", f"{REGISTRY}:89-{VERSION}"),
    ("RTX4", f"{REGISTRY}:89-{VERSION}"),
    ("A10", f"{REGISTRY}:86-{VERSION}"),
    ("A40", f"{REGISTRY}:86-{VERSION}"),
    ("A6000", f"{REGISTRY}:86-{VERSION}"),
    ("RTX3", f"{REGISTRY}:86-{VERSION}"),
    ("T4", f"{REGISTRY}:turing-{VERSION}"),
)
PORT = 8080
# TEI's --max-client-batch-size default: a request with more inputs gets 413.
MAX_CLIENT_BATCH_SIZE = 32
BATCH_FLAG = "--max-client-batch-size"


def image_for(gpus: int, gpu_type: str) -> str:
    if gpus <= 0:
        return CPU_IMAGE
    normalized = gpu_type.upper().replace(" ", "").replace("NVIDIA-", "")
    for needle, image in GPU_ARCH_IMAGES:
        if needle in normalized:
            return image
    return GPU_IMAGE


class TEI(Engine):
    name = "tei"
    port = PORT

    def default_image(self, svc: EmbeddingService) -> str:
        return image_for(svc.resources.gpus, svc.resources.gpu_type)

    def command(self, svc: EmbeddingService) -> list[str]:
        return []

    def default_args(self, svc: EmbeddingService) -> list[str]:
        args = [
            "--model-id",
            self.model_path(svc),
            "--hostname",
            "0.0.0.0",
            "--port",
            str(PORT),
            "--served-model-name",
            svc.model.served_name,
        ]
        if svc.model.revision and not svc.model.source.is_local:
            args += ["--revision", svc.model.revision]
        cache = self.cache_dir(svc, "huggingface/hub")
        if cache and not svc.model.source.is_local:
            args += ["--huggingface-hub-cache", cache]
        return args

    def probes(self, svc: EmbeddingService) -> Probes:
        # TEI has no separate readiness endpoint: /health is 200 once the model is loaded,
        # and its port stays closed until then.
        return Probes(
            startup=HttpProbe("/health", period=1, failure_threshold=1800),
            readiness=HttpProbe("/health", period=1, failure_threshold=3, timeout=2),
            liveness=HttpProbe("/health", period=30, failure_threshold=5, timeout=30),
        )

    def engine_env(self, svc: EmbeddingService) -> list[Manifest]:
        return []

    def max_batch(self, svc: EmbeddingService) -> int | None:
        """TEI's client batch limit: the user's --max-client-batch-size, else 32."""
        for group in split_flags(self.args(svc)):
            if flag_name(group) != BATCH_FLAG:
                continue
            value = group[0].split("=", 1)[1] if "=" in group[0] else "".join(group[1:2])
            if value.isdigit() and int(value) > 0:
                return int(value)
        return MAX_CLIENT_BATCH_SIZE


ENGINE = TEI()
