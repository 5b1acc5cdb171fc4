"""SGLang STAND-IN: a CPU TEST DOUBLE that speaks SGLang's embedding HTTP API. Not SGLang.

The local test bed maps ``lmsysorg/sglang*`` images to this server (and TEI images to
its TEI mode). It is fast (no model, hashed vectors) but strict where glowplug depends
on the real engine, so a suite that passes here has met SGLang 0.5.23's behaviour
(facts: ../shared/reference/engines.md and sglang's own sources):

- Command line: only the SGLang flags in ``SGLANG_FLAGS`` (each one checked against
  sglang's real parser by e2e/tests/test_standin_contract.py); anything else exits with
  status 2, as argparse does in ``sglang.launch_server``. Its own knobs are spelled
  ``--standin-*`` (or environment variables) so no real command line can hit one.
- Start: the port stays closed for the load delay (weights loading), then ``/health``
  and ``/ready`` answer 503 while it warms up (``--skip-server-warmup`` skips that).
- ``/health`` takes at least a second (SGLang runs a one-token forward, polled every
  1 s); ``/ready`` is immediate, and absent (404) when ``STANDIN_IMAGE`` names a SGLang
  release before 0.5.20, the first with it (the CUDA 12 line ends at 0.5.19). After
  SIGTERM both answer 503 while in-flight requests drain; requests still arriving are
  served (SGLang does not refuse them); then exit 0.
- Errors are SGLang's flat shape ``{"object":"error","message":...,"type":
  "BadRequestError","param":null,"code":400}`` with SGLang's messages: empty input,
  whitespace-only input at index i, input of at least the context length
  (``--context-length``, default 8192; ``--allow-auto-truncate`` truncates instead),
  ``dimensions`` without a Matryoshka model config (``--json-model-override-args``
  with ``is_matryoshka`` or ``matryoshka_dimensions``), below 1, not in the list, above
  the hidden size; ``encoding_format`` other than float/base64.
- TEI mode (``--standin-engine tei``, or an image named text-embeddings-inference in
  ``STANDIN_IMAGE``, which the test bed's image map sets): TEI's flags (clap: unknown
  argument, exit 2), ``--served-model-name`` only from TEI 1.9 (the version comes from
  the image tag, ``cpu-1.8`` -> 1.8, or ``--standin-tei-version``), and more inputs
  than ``--max-client-batch-size`` (default 32) get TEI's 413.

Vectors are deterministic and content dependent (a hash-seeded whole-text vector plus
hashed word features, so texts sharing words are similar), L2-normalised.

Knobs (flag or environment, since the operator renders the command line):
  --standin-load-delay / STANDIN_LOAD_DELAY   seconds before the port opens (default 0;
                                              the cluster suites' services set one)
  --standin-warmup / STANDIN_WARMUP           seconds of 503 after the port opens (0.5)
  --standin-dimensions / STANDIN_DIMENSIONS   native vector size (default 1024)
  --standin-matryoshka / STANDIN_MATRYOSHKA=1 the model config says Matryoshka
  --standin-engine / STANDIN_ENGINE           sglang (default) or tei
  --standin-tei-version / STANDIN_TEI_VERSION TEI version modelled (default: from
                                              STANDIN_IMAGE's tag, else 1.9)
  STANDIN_HEALTH_SECONDS                      how long /health takes (default 1.0)
  STANDIN_SHUTDOWN_TICK                       seconds after SIGTERM before draining (1.0;
                                              SGLang's watchdog ticks every 5 s)
  STANDIN_DELAY_MS                            added latency per embeddings request
  STANDIN_EXIT_AFTER                          exit with status 1 this many seconds after ready
  STANDIN_FAIL                                exit with status 1 at once (crash-loop tests)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import signal
import struct
import sys
import time
from array import array
from functools import lru_cache
from typing import Any, NoReturn

from aiohttp import web

log = logging.getLogger("sglang-stand-in")

_WORD = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """A crude token count (words and punctuation, plus the two special tokens)."""
    return len(_WORD.findall(text)) + 2


# Each word adds +-1 at this many hashed positions (feature hashing): texts sharing words
# share positions, so they come out similar; cheap enough for long batches in pure Python.
POSITIONS_PER_WORD = 16


def _dense(seed_text: str, dims: int) -> list[float]:
    """A deterministic pseudo-random vector in [-1, 1), from SHAKE-256 (fast, in C)."""
    raw = array("h", hashlib.shake_256(seed_text.encode()).digest(2 * dims))
    return [x / 32768.0 for x in raw]


@lru_cache(maxsize=100_000)
def _word_positions(seed_text: str, dims: int) -> tuple[tuple[int, float], ...]:
    h = hashlib.shake_256(seed_text.encode()).digest(4 * POSITIONS_PER_WORD)
    out = []
    for k in range(POSITIONS_PER_WORD):
        n = int.from_bytes(h[4 * k : 4 * k + 4], "little")
        out.append((n % dims, 1.0 if n & 0x80000000 else -1.0))
    return tuple(out)


def embed(model: str, text: str, dims: int) -> list[float]:
    """Deterministic, content-dependent unit vector of ``dims`` floats."""
    # A whole-text component, so different texts never collide exactly ...
    acc = [0.5 * x for x in _dense(f"{model}\0\0{text}", dims)]
    # ... plus the words, so texts sharing words are close.
    for w in [w.lower() for w in _WORD.findall(text)][:1024]:
        for idx, sign in _word_positions(f"{model}\0{w}", dims):
            acc[idx] += sign
    return normalise(acc)


def normalise(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


def error(status: int, message: str, err_type: str = "BadRequestError") -> web.Response:
    """An error in SGLang's flat shape (not OpenAI's nested ``{"error": {...}}``)."""
    body = {"object": "error", "message": message, "type": err_type, "param": None, "code": status}
    return web.json_response(body, status=status)


def tei_error(status: int, message: str, err_type: str) -> web.Response:
    """An error in TEI's shape: ``{"message", "code", "type"}`` (engines.md)."""
    return web.json_response({"message": message, "code": status, "type": err_type}, status=status)


# SGLang 0.5.23 flags the stand-in accepts: flag -> number of values (0: a switch). Every
# one exists in sglang's parser with that arity (test_standin_contract.py checks it
# against sglang.srt.server_args). The ones it models: model path and name, host, port,
# the Matryoshka override, context length and auto-truncate, warm-up; the rest are
# accepted and ignored (they tune a GPU the stand-in does not have).
SGLANG_FLAGS: dict[str, int] = {
    "--model-path": 1,
    "--model": 1,
    "--served-model-name": 1,
    "--host": 1,
    "--port": 1,
    "--is-embedding": 0,
    "--tp-size": 1,
    "--enable-metrics": 0,
    "--json-model-override-args": 1,
    "--revision": 1,
    "--context-length": 1,
    "--allow-auto-truncate": 0,
    "--skip-server-warmup": 0,
    "--trust-remote-code": 0,
    "--dtype": 1,
    "--device": 1,
    "--mem-fraction-static": 1,
    "--max-running-requests": 1,
    "--chunked-prefill-size": 1,
    "--attention-backend": 1,
    "--log-level": 1,
}

# TEI (text-embeddings-router, clap) flags the stand-in accepts in TEI mode, with the
# first version that has each (engines.md: --served-model-name from 1.9.0).
TEI_FLAGS: dict[str, tuple[int, tuple[int, int]]] = {
    "--model-id": (1, (1, 0)),
    "--revision": (1, (1, 0)),
    "--hostname": (1, (1, 0)),
    "--port": (1, (1, 0)),
    "--huggingface-hub-cache": (1, (1, 0)),
    "--max-client-batch-size": (1, (1, 0)),
    "--prometheus-port": (1, (1, 0)),
    "--dtype": (1, (1, 0)),
    "--pooling": (1, (1, 0)),
    "--max-batch-tokens": (1, (1, 0)),
    "--max-concurrent-requests": (1, (1, 0)),
    "--auto-truncate": (0, (1, 0)),
    "--json-output": (0, (1, 0)),
    "--served-model-name": (1, (1, 9)),
}
TEI_DEFAULT_VERSION = (1, 9)
TEI_DEFAULT_MAX_CLIENT_BATCH = 32
DEFAULT_CONTEXT_LENGTH = 8192
_TEI_TAG_VERSION = re.compile(r"(?:^|-)(\d+)\.(\d+)(?:\.\d+)?$")


_SGLANG_TAG_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def sglang_version_from_image(image: str) -> tuple[int, int, int] | None:
    """``lmsysorg/sglang:v0.5.19-cu129`` -> (0, 5, 19); None without a version tag."""
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    m = _SGLANG_TAG_VERSION.match(tag)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


# /ready first shipped in SGLang 0.5.20 (engines.md): older images answer it 404.
SGLANG_READY_SINCE = (0, 5, 20)


def tei_version_from_image(image: str) -> tuple[int, int] | None:
    """``...text-embeddings-inference:cpu-1.8`` -> (1, 8); None for ``latest`` or no tag."""
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    m = _TEI_TAG_VERSION.search(tag)
    return (int(m.group(1)), int(m.group(2))) if m else None


class Status:
    """SGLang's server_status as the stand-in models it."""

    STARTING = "Starting"
    UP = "Up"
    SHUTTING_DOWN = "ShuttingDown"


class StandIn:
    def __init__(self, args: argparse.Namespace) -> None:
        self.engine: str = args.standin_engine
        self.model_path: str = args.model_path
        self.served_name: str = args.served_model_name or args.model_path
        self.dims: int = args.standin_dimensions
        overrides: dict[str, Any] = {}
        if args.json_model_override_args:
            with contextlib.suppress(ValueError):
                overrides = dict(json.loads(args.json_model_override_args))
        self.matryoshka_dims: list[int] | None = overrides.get("matryoshka_dimensions")
        self.matryoshka: bool = bool(
            args.standin_matryoshka or overrides.get("is_matryoshka") or self.matryoshka_dims
        )
        if self.engine == "tei":
            self.matryoshka = True  # TEI truncates to `dimensions` for any model
        self.context_length: int = args.context_length
        self.auto_truncate: bool = args.allow_auto_truncate
        self.max_client_batch: int = args.max_client_batch_size
        self.metrics_enabled: bool = args.enable_metrics or self.engine == "tei"
        self.delay_s = float(os.environ.get("STANDIN_DELAY_MS", "0")) / 1000.0
        self.health_s = float(os.environ.get("STANDIN_HEALTH_SECONDS", "1.0"))
        version = sglang_version_from_image(os.environ.get("STANDIN_IMAGE", ""))
        self.has_ready = self.engine == "sglang" and (
            version is None or version >= SGLANG_READY_SINCE
        )
        self.status = Status.STARTING
        self.created = int(time.time())
        self.requests_total = 0
        self.prompt_tokens_total = 0
        self.running = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health_generate", self.health)
        if self.has_ready:
            app.router.add_get("/ready", self.ready)
        app.router.add_get("/model_info", self.model_info)
        app.router.add_get("/get_model_info", self.model_info)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/embed", self.tei_embed)  # text-embeddings-inference's routes
        app.router.add_get("/info", self.model_info)
        if self.metrics_enabled:
            app.router.add_get("/metrics", self.metrics)
        return app

    async def health(self, _: web.Request) -> web.Response:
        if self.status != Status.UP:
            return web.Response(status=503)
        if self.engine == "sglang" and self.health_s > 0:
            # SGLang's /health runs a one-token forward and polls for it every second.
            await asyncio.sleep(self.health_s)
            if self.status != Status.UP:
                return web.Response(status=503)
        return web.Response(status=200)

    async def ready(self, _: web.Request) -> web.Response:
        return web.Response(status=200 if self.status == Status.UP else 503)

    async def model_info(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "model_path": self.model_path,
                "tokenizer_path": self.model_path,
                "is_generation": False,
                "preferred_sampling_params": None,
                "weight_version": "default",
                "has_image_understanding": False,
                "has_audio_understanding": False,
                "model_type": "stand-in",
                "architectures": ["SGLangStandIn"],
                "hidden_size": self.dims,
                "is_matryoshka": self.matryoshka,
                "embedding": {
                    "supports_dimensions": self.matryoshka,
                    "matryoshka_dimensions": self.matryoshka_dims,
                },
                "stand_in": True,
            }
        )

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.served_name,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "sglang",
                        "root": self.model_path,
                        "max_model_len": self.context_length,
                    }
                ],
            }
        )

    @staticmethod
    def _validate_input(raw: Any) -> str | None:
        """SGLang's OpenAIServingEmbedding._validate_request, message for message."""
        if not raw:
            return "Input cannot be empty"
        if isinstance(raw, str):
            return None if raw.strip() else "Input cannot be empty or whitespace only"
        if not isinstance(raw, list):
            return "Input must be a string, a list of strings or token ids"
        first = raw[0]
        if isinstance(first, str):
            for i, item in enumerate(raw):
                if not isinstance(item, str):
                    return "All items in input list must be strings"
                if not item.strip():
                    return f"Input at index {i} cannot be empty or whitespace only"
        elif isinstance(first, int):
            for i, item in enumerate(raw):
                if not isinstance(item, int):
                    return "All items in input list must be integers"
                if item < 0:
                    return f"Token ID at index {i} must be non-negative"
        elif not (isinstance(first, list) and all(isinstance(t, int) for x in raw for t in x)):
            return "Input must be a string, a list of strings or token ids"
        return None

    @staticmethod
    def _texts(raw: Any) -> list[tuple[str, int]]:
        """Each input as (text to hash, token count)."""
        if isinstance(raw, str):
            return [(raw, count_tokens(raw))]
        if isinstance(raw[0], int):  # one pre-tokenised input
            return [(" ".join(str(x) for x in raw), len(raw))]
        if isinstance(raw[0], list):
            return [(" ".join(str(t) for t in x), len(x)) for x in raw]
        return [(t, count_tokens(t)) for t in raw]

    def _check_dimensions(self, dims: Any) -> str | None:
        """SGLang's TokenizerManager._validate_for_matryoshka_dim, message for message."""
        if dims is None:
            return None
        if not self.matryoshka:
            return (
                f"Model '{self.model_path}' does not support matryoshka representation, "
                "changing output dimensions will lead to poor results."
            )
        if not isinstance(dims, int) or dims < 1:
            return "Requested dimensions must be greater than 0"
        if self.matryoshka_dims and dims not in self.matryoshka_dims:
            return (
                f"Model '{self.model_path}' only supports {self.matryoshka_dims} matryoshka "
                "dimensions, using other output dimensions will lead to poor results."
            )
        if dims > self.dims:
            return f"Provided dimensions are greater than max embedding dimension: {self.dims}"
        return None

    async def embeddings(self, request: web.Request) -> web.Response:
        if self.engine == "tei":
            return await self.tei_openai(request)
        try:
            body = await request.json()
        except ValueError:
            return error(400, "Invalid JSON body")
        if not isinstance(body, dict):
            return error(400, "Request body must be a JSON object")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return error(
                400, f"encoding_format must be either 'float' or 'base64', got {encoding!r}"
            )
        raw = body.get("input")
        problem = self._validate_input(raw)
        if problem:
            return error(400, problem)
        texts = self._texts(raw)
        for _, n in texts:
            if n >= self.context_length and not self.auto_truncate:
                return error(
                    400,
                    f"The input ({n} tokens) is longer than the model's context length "
                    f"({self.context_length} tokens).",
                )
        dims = body.get("dimensions")
        problem = self._check_dimensions(dims)
        if problem:
            return error(400, problem)
        data, tokens = await self._embed_all(texts, dims, encoding)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": self.model_path,  # SGLang answers with the model path
                "usage": {
                    "prompt_tokens": tokens,
                    "total_tokens": tokens,
                    "completion_tokens": 0,
                    "prompt_tokens_details": None,
                },
            }
        )

    async def _embed_all(
        self, texts: list[tuple[str, int]], dims: int | None, encoding: str
    ) -> tuple[list[dict[str, Any]], int]:
        self.running += 1
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            data = []
            tokens = 0
            for i, (text, n) in enumerate(texts):
                vec = embed(self.model_path, text, self.dims)
                if dims is not None:
                    vec = normalise(vec[:dims])  # truncate, then re-normalise (Matryoshka)
                tokens += min(n, self.context_length)
                emb: list[float] | str = vec
                if encoding == "base64":
                    emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
                data.append({"object": "embedding", "index": i, "embedding": emb})
        finally:
            self.running -= 1
        self.requests_total += 1
        self.prompt_tokens_total += tokens
        return data, tokens

    async def tei_openai(self, request: web.Request) -> web.Response:
        """TEI's OpenAI route: its batch limit (413) and its error shape."""
        try:
            body = await request.json()
        except ValueError:
            return tei_error(422, "Failed to parse the request body as JSON", "validation")
        raw = body.get("input") if isinstance(body, dict) else None
        if self._validate_input(raw) is not None and raw != "":
            return tei_error(422, "`input` cannot be empty", "validation")
        texts = self._texts(raw) if raw else []
        if not texts:
            return tei_error(422, "`input` cannot be empty", "empty")
        if len(texts) > self.max_client_batch:
            return tei_error(
                413,
                f"batch size {len(texts)} > maximum allowed batch size {self.max_client_batch}",
                "validation",
            )
        encoding = body.get("encoding_format") or "float"
        dims = body.get("dimensions")
        data, tokens = await self._embed_all(texts, dims, encoding)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": self.served_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def tei_embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        raw = body.get("inputs")
        if not raw or self._validate_input(raw) is not None:
            return tei_error(422, "`inputs` cannot be empty", "empty")
        texts = self._texts(raw)
        if len(texts) > self.max_client_batch:
            return tei_error(
                413,
                f"batch size {len(texts)} > maximum allowed batch size {self.max_client_batch}",
                "validation",
            )
        return web.json_response([embed(self.model_path, t, self.dims) for t, _ in texts])

    async def metrics(self, _: web.Request) -> web.Response:
        labels = f'model_name="{self.served_name}"'
        text = (
            "# HELP sglang:num_running_reqs The number of running requests (stand-in).\n"
            "# TYPE sglang:num_running_reqs gauge\n"
            f"sglang:num_running_reqs{{{labels}}} {self.running}\n"
            "# HELP sglang:num_queue_reqs The number of queued requests (stand-in).\n"
            "# TYPE sglang:num_queue_reqs gauge\n"
            f"sglang:num_queue_reqs{{{labels}}} 0\n"
            "# HELP sglang:prompt_tokens_total Prompt tokens processed (stand-in).\n"
            "# TYPE sglang:prompt_tokens_total counter\n"
            f"sglang:prompt_tokens_total{{{labels}}} {self.prompt_tokens_total}\n"
            "# HELP sglang:num_requests_total Requests processed (stand-in).\n"
            "# TYPE sglang:num_requests_total counter\n"
            f"sglang:num_requests_total{{{labels}}} {self.requests_total}\n"
        )
        return web.Response(text=text, content_type="text/plain")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")


def _knobs(p: argparse.ArgumentParser) -> None:
    """The stand-in's own settings: ``--standin-*`` flags, defaults from the environment."""
    image = os.environ.get("STANDIN_IMAGE", "")
    engine = os.environ.get("STANDIN_ENGINE") or (
        "tei" if "text-embeddings-inference" in image else "sglang"
    )
    p.add_argument("--standin-engine", choices=["sglang", "tei"], default=engine)
    p.add_argument("--standin-tei-version", default=os.environ.get("STANDIN_TEI_VERSION", ""))
    env_delay = os.environ.get("STANDIN_LOAD_DELAY", "0")
    p.add_argument("--standin-load-delay", type=float, default=float(env_delay))
    p.add_argument(
        "--standin-warmup", type=float, default=float(os.environ.get("STANDIN_WARMUP", "0.5"))
    )
    env_dims = os.environ.get("STANDIN_DIMENSIONS", "1024")
    p.add_argument("--standin-dimensions", type=int, default=int(env_dims))
    p.add_argument(
        "--standin-matryoshka", action="store_true", default=_env_flag("STANDIN_MATRYOSHKA")
    )


def _add_flags(p: argparse.ArgumentParser, flags: dict[str, int]) -> None:
    for flag, nvalues in flags.items():
        dest = "model_path" if flag in ("--model", "--model-path", "--model-id") else None
        kw: dict[str, Any] = {"dest": dest} if dest else {}
        if nvalues == 0:
            p.add_argument(flag, action="store_true", **kw)
        else:
            p.add_argument(flag, **kw)


class _TeiParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # clap's wording for an unknown flag; status 2 like argparse.
        self.exit(2, f"error: {message}\n\nUsage: text-embeddings-router [OPTIONS]\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _knobs(pre)
    known, _ = pre.parse_known_args(argv)
    if known.standin_engine == "tei":
        version = TEI_DEFAULT_VERSION
        raw = known.standin_tei_version or ""
        from_image = tei_version_from_image(os.environ.get("STANDIN_IMAGE", ""))
        if raw:
            major, minor = raw.split(".")[:2]
            version = (int(major), int(minor))
        elif from_image:
            version = from_image
        tei_flags = {f: n for f, (n, since) in TEI_FLAGS.items() if version >= since}
        p: argparse.ArgumentParser = _TeiParser(
            prog="text-embeddings-router (stand-in)", allow_abbrev=False
        )
        _add_flags(p, tei_flags)
        defaults = {"port": "3000", "hostname": "0.0.0.0"}
    else:
        p = argparse.ArgumentParser(
            prog="sglang-stand-in", description=__doc__, allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        _add_flags(p, SGLANG_FLAGS)
        defaults = {"port": "30000", "host": "127.0.0.1"}
    _knobs(p)
    args = p.parse_args(argv)  # an unknown flag exits with status 2, as the real parsers do
    host = getattr(args, "host", None) or getattr(args, "hostname", None) or defaults.get("host")
    args.host = host or defaults.get("hostname")
    args.port = int(args.port or defaults["port"])
    args.model_path = args.model_path or "stand-in"
    for name, default in (
        ("served_model_name", None),
        ("json_model_override_args", None),
        ("enable_metrics", False),
        ("allow_auto_truncate", False),
        ("skip_server_warmup", False),
    ):
        if not hasattr(args, name):
            setattr(args, name, default)
    if getattr(args, "auto_truncate", False):
        args.allow_auto_truncate = True
    ctx = getattr(args, "context_length", None) or os.environ.get("STANDIN_CONTEXT_LENGTH")
    args.context_length = int(ctx or DEFAULT_CONTEXT_LENGTH)
    batch = getattr(args, "max_client_batch_size", None)
    args.max_client_batch_size = int(batch or TEI_DEFAULT_MAX_CLIENT_BATCH)
    return args


async def _stopped_within(stopping: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
    return stopping.is_set()


async def serve(args: argparse.Namespace, stopping: asyncio.Event) -> None:
    standin = StandIn(args)
    if os.environ.get("STANDIN_FAIL"):
        log.error("stand-in: STANDIN_FAIL set, exiting with status 1 (crash test hook)")
        sys.exit(1)
    if args.standin_load_delay > 0:
        log.info(
            "stand-in: simulating weight loading for %.1f s (port closed)", args.standin_load_delay
        )
        if await _stopped_within(stopping, args.standin_load_delay):
            return  # SIGTERM while "loading": nothing to drain
    runner = web.AppRunner(standin.app(), access_log=None, shutdown_timeout=60)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    warmup = 0.0 if (args.skip_server_warmup or standin.engine == "tei") else args.standin_warmup
    if warmup > 0 and await _stopped_within(stopping, warmup):  # 503s meanwhile
        await runner.cleanup()
        return
    standin.status = Status.UP
    log.info(
        "%s stand-in (a test double) serving %s as %r on %s:%d (dims %d, matryoshka %s)",
        "TEI" if standin.engine == "tei" else "SGLang",
        standin.model_path,
        standin.served_name,
        args.host,
        args.port,
        standin.dims,
        standin.matryoshka,
    )
    exit_after = os.environ.get("STANDIN_EXIT_AFTER")
    try:
        if exit_after and not await _stopped_within(stopping, float(exit_after)):
            log.error("stand-in: STANDIN_EXIT_AFTER elapsed, exiting with status 1")
            sys.exit(1)
        await stopping.wait()
        # SGLang on SIGTERM: /health and /ready turn 503 at once, requests drain (new ones
        # are still served), then the server exits.
        standin.status = Status.SHUTTING_DOWN
        log.info("stand-in: SIGTERM, draining %d running requests", standin.running)
        # SGLang's sigterm_watchdog notices the flag on its next 5 s tick; the stand-in
        # ticks faster but likewise keeps serving until then.
        await asyncio.sleep(float(os.environ.get("STANDIN_SHUTDOWN_TICK", "1.0")))
        while standin.running:  # noqa: ASYNC110 (a counter, not an event; 50 ms is plenty)
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s sglang-stand-in %(levelname)s %(message)s"
    )
    args = parse_args(argv)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stopping = asyncio.Event()
    task = loop.create_task(serve(args, stopping))

    def terminate() -> None:
        if stopping.is_set() or task.done():
            task.cancel()  # a second signal ends it at once
        stopping.set()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGINT, terminate)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        log.info("stand-in: terminated")
    finally:
        loop.close()
    log.info("stand-in: exited")
    return 0


if __name__ == "__main__":
    sys.exit(main())
