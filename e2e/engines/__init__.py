"""Real engines on this machine, for the test bed, the contract suite and the benchmarks.

``engine_env(name)`` returns the engine's Python environment, installing it through
``scripts/engine-env.sh`` (cached outside the repo by the engine's pinned version; a
cached one costs a few milliseconds). ``e2e.engines.vllm_server`` runs the real vLLM
server from that environment as a local process.
"""

from __future__ import annotations

import json
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


# Runs in the sglang environment: every option of sglang's real launch_server parser,
# with the number of values it takes (0 for a switch).
_SGLANG_FLAGS_SNIPPET = """
import argparse, json
from sglang.srt.server_args import ServerArgs
p = argparse.ArgumentParser()
ServerArgs.add_cli_args(p)
out = {}
for a in p._actions:
    n = 0 if a.nargs == 0 else (1 if a.nargs in (None, 1, "?") else a.nargs)
    for o in a.option_strings:
        out[o] = n
print(json.dumps(out))
"""


def sglang_parser_flags() -> dict[str, object]:
    """The options sglang's own parser accepts -> arity (0 switch, 1 one value, or the
    argparse nargs), read from the pinned sglang release (``scripts/engine-env.sh``)."""
    python = engine_env("sglang") / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", _SGLANG_FLAGS_SNIPPET],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=600,  # importing sglang takes 6 s on a quiet machine, minutes on a busy one
    )
    flags: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return flags
