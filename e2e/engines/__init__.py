"""Real engines on this machine, for the test bed, the contract suite and the benchmarks.

``engine_env(name)`` returns the engine's Python environment, installing it through
``scripts/engine-env.sh`` (cached outside the repo by the engine's pinned version; a
cached one costs a few milliseconds). ``e2e.engines.vllm_server`` runs the real vLLM
server from that environment as a local process.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENGINE_ENV_SCRIPT = REPO / "scripts" / "engine-env.sh"


def engine_env(name: str) -> Path:
    """The installed environment of engine ``name`` (``sglang`` or ``vllm``)."""
    out = subprocess.run(
        ["bash", str(ENGINE_ENV_SCRIPT), name],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{ENGINE_ENV_SCRIPT} {name} printed no path")
    return Path(lines[-1])


def vllm_env() -> Path:
    return engine_env("vllm")
