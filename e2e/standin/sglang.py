"""SGLang STAND-IN: a CPU test double that speaks SGLang's embedding HTTP API. Not SGLang.

The local test bed maps ``lmsysorg/sglang*`` images to this server. It accepts SGLang's
``launch_server`` command line (``--model-path``, ``--host``, ``--port``,
``--served-model-name``, ``--is-embedding``, ``--tp-size``, ``--enable-metrics``,
``--json-model-override-args``, ``--revision``; unknown flags are tolerated) and serves
``/health``, ``/ready``, ``/model_info``, ``/v1/models``, ``/v1/embeddings`` and, with
``--enable-metrics``, ``/metrics``. Like SGLang loading weights, its port stays closed
for the load delay.

Vectors are deterministic and content dependent (a hash-seeded whole-text vector plus
hashed word features, so texts sharing words are similar), L2-normalised. No model is
loaded.

Knobs (flag or environment, since the operator renders the command line):
  --load-delay / STANDIN_LOAD_DELAY     seconds before the port opens (default 0)
  --dimensions / STANDIN_DIMENSIONS     native vector size (default 1024)
  --matryoshka / STANDIN_MATRYOSHKA=1   accept ``dimensions`` (also when the JSON override
                                        sets ``is_matryoshka`` or ``matryoshka_dimensions``)
  STANDIN_DELAY_MS                      added latency per embeddings request
  STANDIN_EXIT_AFTER                    exit with status 1 this many seconds after ready
  STANDIN_FAIL                          exit with status 1 at once (crash-loop tests)
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
import struct
import sys
import time
from array import array
from functools import lru_cache
from typing import Any

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
    """An error in SGLang's (OpenAI-style) shape."""
    body = {"object": "error", "message": message, "type": err_type, "param": None, "code": status}
    return web.json_response(body, status=status)


class StandIn:
    def __init__(self, args: argparse.Namespace) -> None:
        self.model_path: str = args.model_path
        self.served_name: str = args.served_model_name or args.model_path
        self.dims: int = args.dimensions
        overrides: dict[str, Any] = {}
        if args.json_model_override_args:
            with contextlib.suppress(ValueError):
                overrides = dict(json.loads(args.json_model_override_args))
        self.matryoshka_dims: list[int] | None = overrides.get("matryoshka_dimensions")
        self.matryoshka: bool = bool(
            args.matryoshka or overrides.get("is_matryoshka") or self.matryoshka_dims
        )
        self.metrics_enabled: bool = args.enable_metrics
        self.delay_s = float(os.environ.get("STANDIN_DELAY_MS", "0")) / 1000.0
        self.created = int(time.time())
        self.requests_total = 0
        self.prompt_tokens_total = 0
        self.running = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health_generate", self.health)
        app.router.add_get("/ready", self.health)
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
        return web.Response(status=200)

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
                        "max_model_len": 8192,
                    }
                ],
            }
        )

    def _inputs(self, raw: Any) -> list[str] | None:
        if isinstance(raw, str):
            return [raw]
        if isinstance(raw, list) and raw:
            if all(isinstance(x, str) for x in raw):
                return list(raw)
            if all(isinstance(x, int) for x in raw):  # one pre-tokenised input
                return [" ".join(str(x) for x in raw)]
            if all(isinstance(x, list) and all(isinstance(t, int) for t in x) for x in raw):
                return [" ".join(str(t) for t in x) for x in raw]
        return None

    async def embeddings(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "Invalid JSON body")
        if not isinstance(body, dict):
            return error(400, "Request body must be a JSON object")
        texts = self._inputs(body.get("input"))
        if texts is None:
            return error(400, "Input must be a string, a list of strings or token ids")
        if any(t == "" for t in texts):
            return error(400, "Input cannot be empty")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return error(400, f"Unsupported encoding_format: {encoding!r}")
        dims = body.get("dimensions")
        if dims is not None:
            if not self.matryoshka:
                return error(
                    400,
                    f"Model '{self.served_name}' does not support matryoshka representation, "
                    "changing output dimensions will lead to poor results.",
                )
            if not isinstance(dims, int) or dims < 1:
                return error(400, "Requested dimensions must be greater than 0")
            if dims > self.dims:
                return error(
                    400, f"Requested dimensions {dims} exceeds the model's hidden size {self.dims}"
                )
            if self.matryoshka_dims and dims not in self.matryoshka_dims:
                return error(
                    400,
                    f"Model '{self.served_name}' only supports {self.matryoshka_dims} "
                    f"matryoshka dimensions, using other output dimensions will lead to "
                    "poor results.",
                )
        self.running += 1
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            data = []
            tokens = 0
            for i, text in enumerate(texts):
                vec = embed(self.model_path, text, self.dims)
                if dims is not None:
                    vec = normalise(vec[:dims])  # truncate, then re-normalise (Matryoshka)
                tokens += count_tokens(text)
                emb: list[float] | str = vec
                if encoding == "base64":
                    emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
                data.append({"object": "embedding", "index": i, "embedding": emb})
        finally:
            self.running -= 1
        self.requests_total += 1
        self.prompt_tokens_total += tokens
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

    async def tei_embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        texts = self._inputs(body.get("inputs"))
        if texts is None:
            return web.json_response(
                {"error": "invalid inputs", "error_type": "Validation"}, status=422
            )
        return web.json_response([embed(self.model_path, t, self.dims) for t in texts])

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sglang-stand-in", description=__doc__)
    p.add_argument("--model-path", "--model", "--model-id", dest="model_path", default="stand-in")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", "--hostname", dest="host", default="127.0.0.1")  # TEI: --hostname
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--is-embedding", action="store_true")
    p.add_argument("--tp-size", "--tp", type=int, default=1)
    p.add_argument("--enable-metrics", action="store_true")
    p.add_argument("--json-model-override-args", default=None)
    p.add_argument("--revision", default=None)
    p.add_argument(
        "--load-delay", type=float, default=float(os.environ.get("STANDIN_LOAD_DELAY", "0"))
    )
    p.add_argument(
        "--dimensions", type=int, default=int(os.environ.get("STANDIN_DIMENSIONS", "1024"))
    )
    p.add_argument(
        "--matryoshka",
        action="store_true",
        default=os.environ.get("STANDIN_MATRYOSHKA", "") not in ("", "0", "false"),
    )
    args, unknown = p.parse_known_args(argv)
    if unknown:
        log.info("stand-in: ignoring SGLang flags it does not model: %s", " ".join(unknown))
    return args


async def serve(args: argparse.Namespace) -> None:
    standin = StandIn(args)
    if os.environ.get("STANDIN_FAIL"):
        log.error("stand-in: STANDIN_FAIL set, exiting with status 1 (crash test hook)")
        sys.exit(1)
    if args.load_delay > 0:
        log.info("stand-in: simulating weight loading for %.1f s (port closed)", args.load_delay)
        await asyncio.sleep(args.load_delay)
    runner = web.AppRunner(standin.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    log.info(
        "SGLang stand-in (not SGLang) serving %s as %r on %s:%d (dims %d, matryoshka %s)",
        standin.model_path,
        standin.served_name,
        args.host,
        args.port,
        standin.dims,
        standin.matryoshka,
    )
    exit_after = os.environ.get("STANDIN_EXIT_AFTER")
    try:
        if exit_after:
            await asyncio.sleep(float(exit_after))
            log.error("stand-in: STANDIN_EXIT_AFTER elapsed, exiting with status 1")
            sys.exit(1)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s sglang-stand-in %(levelname)s %(message)s"
    )
    args = parse_args(argv)
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(args))
    import signal

    # SIGTERM ends the server like SGLang's does: stop accepting, then exit 0.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        log.info("stand-in: terminated")
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
