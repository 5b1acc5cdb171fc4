"""Real engines' own argument parsers, run from glowplug's tests.

Each engine environment is installed by ``scripts/engine-env.sh`` (``make engine-envs``),
cached outside the repo by version. ``parse_all`` sends every command line to one
subprocess of that environment's python running ``e2e/engine_parser_probe.py``, because
importing an engine takes several seconds and parsing one argv well under one.

``accepted_flags("sglang")`` lists every option string SGLang's parser accepts, so a test
double (the strict SGLang stand-in) can be held to the real flag set.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "engine-env.sh"
PROBE = Path(__file__).resolve().parent / "engine_parser_probe.py"
# What engine-env.sh installs, by target; "sglang-cuda12" is SGLang's CUDA12_VERSION.
TARGETS = ("sglang", "sglang-cuda12", "vllm")
# Importing torch and an engine on a busy 2-core machine has taken over two minutes.
PROBE_TIMEOUT = 900


class EngineEnvMissing(RuntimeError):
    """The engine's environment is not installed (``make engine-envs``)."""


@dataclass(frozen=True)
class ParseResult:
    argv: tuple[str, ...]
    ok: bool
    exit_code: int | None
    error: str
    seconds: float
    parsed: dict[str, Any] | None


@dataclass(frozen=True)
class ParseRun:
    version: str
    import_seconds: float
    results: tuple[ParseResult, ...]
    flags: frozenset[str]  # every option string the parser accepts
    valueless: frozenset[str]  # those that take no value


def env_python(target: str) -> Path:
    """The python of an installed engine environment; EngineEnvMissing if not installed."""
    if target not in TARGETS:
        raise ValueError(f"unknown engine environment {target!r}; known: {', '.join(TARGETS)}")
    out = subprocess.run(
        ["bash", str(SCRIPT), "--cached", target],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if out.returncode != 0:
        raise EngineEnvMissing(
            f"{target}: {out.stderr.strip() or 'not installed'}; run `make engine-envs`"
        )
    return Path(out.stdout.strip().splitlines()[-1]) / "bin" / "python"


def engine_of(target: str) -> str:
    return target.split("-", 1)[0]


def _probe(target: str, request: dict[str, Any]) -> dict[str, Any]:
    python = env_python(target)
    out = subprocess.run(
        [str(python), str(PROBE)],
        input=json.dumps({"engine": engine_of(target), **request}),
        capture_output=True,
        text=True,
        check=False,
        timeout=PROBE_TIMEOUT,
        # No GPU here; keep the engines from probing for one or writing to $HOME caches.
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"},
    )
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(
            f"{target} parser probe failed (exit {out.returncode}):\n{out.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def parse_all(target: str, argvs: list[list[str]]) -> ParseRun:
    """Parse every argv with the engine's own parser, in one subprocess."""
    raw = _probe(target, {"mode": "parse", "argvs": argvs})
    results = tuple(
        ParseResult(
            argv=tuple(argv),
            ok=bool(r["ok"]),
            exit_code=r["exit_code"],
            error=str(r["error"]),
            seconds=float(r["seconds"]),
            parsed=r["parsed"],
        )
        for argv, r in zip(argvs, raw["results"], strict=True)
    )
    return ParseRun(
        version=str(raw["version"]),
        import_seconds=float(raw["import_seconds"]),
        results=results,
        flags=frozenset(raw["flags"]),
        valueless=frozenset(raw["store_true"]),
    )


def parse_many(jobs: dict[str, list[list[str]]]) -> dict[str, ParseRun | Exception]:
    """``parse_all`` for several environments at once (imports overlap: each spends much
    of its time reading files); a target whose environment is missing or whose probe
    failed maps to the exception."""

    def one(target: str) -> ParseRun | Exception:
        try:
            return parse_all(target, jobs[target])
        except (EngineEnvMissing, RuntimeError, subprocess.TimeoutExpired) as err:
            return err

    with ThreadPoolExecutor(max_workers=len(jobs) or 1) as pool:
        return dict(zip(jobs, pool.map(one, jobs), strict=True))


@functools.cache
def _flags(target: str) -> dict[str, Any]:
    return _probe(target, {"mode": "flags"})


def accepted_flags(target: str = "sglang") -> frozenset[str]:
    """Every option string (``--model-path``, ``--tp-size``, ...) the engine's parser accepts."""
    return frozenset(_flags(target)["flags"])


def valueless_flags(target: str = "sglang") -> frozenset[str]:
    """The accepted flags that take no value (``--is-embedding``, ``--enable-metrics``)."""
    return frozenset(_flags(target)["store_true"])


def main(argv: list[str]) -> int:
    """``python -m e2e.engine_parsers flags [sglang|vllm]``: print the accepted flags."""
    if len(argv) >= 1 and argv[0] == "flags":
        target = argv[1] if len(argv) > 1 else "sglang"
        for flag in sorted(accepted_flags(target)):
            print(flag)
        return 0
    print("usage: python -m e2e.engine_parsers flags [sglang|sglang-cuda12|vllm]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
