"""The embedding cache on the request path: look up, forward only the misses, merge.

For a service with ``spec.cache.enabled`` and text input, every input's key
(``cache.entry_key``) is looked up in this replica's memory, then in the shared Redis
when one is configured. All hits: the answer is built here, without the engine, the hold
queue or a wake, so a service at zero answers repeats at zero. Some misses: only the
distinct missing texts are sent (through the normal path: hold, wake, retries), their
vectors are stored, and the answer is merged in input order. ``usage`` counts the tokens
the engine computed for this request; hits count nothing.

Token-id inputs are not cached (they are rare and have no instruction to apply).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from glowplug.activator import openai as oai
from glowplug.activator.cache import (
    MemoryCache,
    entry_key,
    pack_vector,
    service_fingerprint,
    unpack_vector,
)
from glowplug.activator.http import Response
from glowplug.activator.services import Route
from glowplug.activator.sharedcache import SharedCache
from glowplug.api import EmbeddingService

JSON = "application/json"
CACHE_HEADER = "X-Glowplug-Cache"  # hit | partial | miss
HITS_HEADER = "X-Glowplug-Cache-Hits"  # inputs answered from the cache

Forward = Callable[[oai.EmbeddingRequest, Route, list[bytes], float], Awaitable[Response]]


class EmbeddingCache:
    def __init__(self, memory: MemoryCache, shared: SharedCache | None = None) -> None:
        self.memory = memory
        self.shared = shared
        self._fingerprints: dict[str, tuple[EmbeddingService, bytes]] = {}
        # Per service: until when a wake that a cached answer avoided would have kept the
        # service up (monotonic). Hits at zero within that window avoid no further wake.
        self._virtual_warm_until: dict[str, float] = {}

    def forget(self, ref: str) -> None:
        """The service is gone: free its memory."""
        self.memory.drop(ref)
        self._fingerprints.pop(ref, None)
        self._virtual_warm_until.pop(ref, None)

    def _fingerprint(self, ref: str, svc: EmbeddingService) -> bytes:
        known = self._fingerprints.get(ref)
        if known is not None and known[0] is svc:
            return known[1]
        fp = service_fingerprint(svc)
        self._fingerprints[ref] = (svc, fp)
        return fp

    async def serve(
        self, req: oai.EmbeddingRequest, route: Route, t0: float, forward: Forward
    ) -> Response:
        spec = route.spec
        ref = f"{spec.namespace}/{spec.name}"
        sm = route.metrics
        fp = self._fingerprint(ref, spec)
        texts = _engine_texts(req, spec)
        keys = [entry_key(fp, req.dimensions, t) for t in texts]
        vectors: list[bytes | None] = [None] * len(keys)
        now = time.monotonic()
        missing: list[int] = []
        for i, key in enumerate(keys):
            got = self.memory.get(ref, fp, key)
            if got is not None:
                vectors[i] = got[0]
            else:
                missing.append(i)
        n_memory = len(keys) - len(missing)
        n_shared = 0
        if missing and self.shared is not None:
            found = await self.shared.get_many([keys[i] for i in missing])
            wall = self.shared.clock()
            still: list[int] = []
            for i, item in zip(missing, found, strict=True):
                if item is None:
                    still.append(i)
                    continue
                vectors[i] = item[0]
                n_shared += 1
                self.memory.put(
                    ref, fp, keys[i], item[0], now + (item[1] - wall), spec.cache.max_bytes
                )
            missing = still
        if n_memory:
            sm.cache_hits["memory"].inc(n_memory)
        if n_shared:
            sm.cache_hits["shared"].inc(n_shared)
        hits = len(keys) - len(missing)

        usage: dict[str, Any] = {"prompt_tokens": 0, "total_tokens": 0}
        forwarded_headers: dict[str, str] = {}
        if missing:
            sm.cache_misses.inc(len(missing))
            # Distinct texts only: a batch repeating an input computes it once.
            order: dict[str, int] = {}
            for i in missing:
                order.setdefault(texts[i], len(order))
            distinct = list(order)
            sub_raw = {
                k: v
                for k, v in req.raw.items()
                if k not in ("input", "input_type", "encoding_format")
            }
            sub_raw["model"] = spec.model.served_name
            sub_raw["input"] = distinct
            sub = oai.EmbeddingRequest(
                raw=sub_raw,
                model=spec.model.served_name,
                n_inputs=len(distinct),
                text_inputs=True,
                encoding_format="float",
                dimensions=req.dimensions,
                input_type=None,
            )
            payload = json.dumps(sub_raw, ensure_ascii=False).encode()
            # Split like any request when the engine's batch is smaller (TEI).
            payloads = oai.upstream_bodies(sub, spec, payload, route.max_batch)
            resp = await forward(sub, route, payloads, t0)
            if resp.status != 200:
                return resp
            forwarded_headers = resp.headers
            try:
                computed, usage = _vectors(resp.body, len(distinct))
            except oai.UpstreamFormatError as err:
                e = oai.APIError(502, str(err), type="upstream_error", code="upstream_error")
                return Response(e.status, e.body(), JSON, e.headers)
            expires = time.monotonic() + spec.cache.ttl
            to_share: list[tuple[bytes, bytes]] = []
            for i in missing:
                vec = computed[order[texts[i]]]
                vectors[i] = vec
                self.memory.put(ref, fp, keys[i], vec, expires, spec.cache.max_bytes)
                to_share.append((keys[i], vec))
            if self.shared is not None:
                self.shared.put_many(to_share, spec.cache.ttl)
        else:
            self._answered_from_cache(ref, route, now)

        body = _response(vectors, spec.model.served_name, req.encoding_format, usage)
        headers = {
            **forwarded_headers,  # e.g. what the wake cost, when the misses waited for one
            CACHE_HEADER: "hit" if not missing else ("partial" if hits else "miss"),
            HITS_HEADER: str(hits),
        }
        if not missing:
            sm.requests(200, "cache").inc()
            sm.duration["cache"].observe(time.monotonic() - t0)
        return Response(200, body, JSON, headers)

    def _answered_from_cache(self, ref: str, route: Route, now: float) -> None:
        state = route.state
        if state.has_ready:
            return
        sm = route.metrics
        sm.cache_served_at_zero.inc()
        if state.waking:
            return  # someone else's request is waking it: this one avoided no wake
        if now >= self._virtual_warm_until.get(ref, 0.0):
            sm.cache_wakes_avoided.inc()
        self._virtual_warm_until[ref] = now + route.spec.scaling.idle_timeout

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


def _engine_texts(req: oai.EmbeddingRequest, svc: EmbeddingService) -> list[str]:
    """The texts as the engine receives them (query instruction applied)."""
    inp = req.raw["input"]
    texts: list[str] = [inp] if isinstance(inp, str) else list(inp)
    instruction = svc.model.query_instruction
    if req.input_type == "query" and instruction:
        texts = [oai.format_query(instruction, t) for t in texts]
    return texts


def _vectors(body: bytes, n: int) -> tuple[list[bytes], dict[str, Any]]:
    """The engine's vectors in input order (float32 bytes), and its usage."""
    try:
        doc = json.loads(body)
        data = doc["data"]
        if not isinstance(data, list) or len(data) != n:
            raise ValueError(f"expected {n} embeddings, got {len(data)}")
        out: list[bytes | None] = [None] * n
        for pos, item in enumerate(data):
            idx = item.get("index", pos)
            if not isinstance(idx, int) or not 0 <= idx < n:
                raise ValueError(f"embedding index {idx!r} is out of range")
            emb = item["embedding"]
            if isinstance(emb, str):
                out[idx] = pack_vector(oai.base64_to_floats(emb))
            else:
                out[idx] = pack_vector(emb)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise oai.UpstreamFormatError(f"engine response is not an embeddings list: {err}") from None
    if any(v is None for v in out):
        raise oai.UpstreamFormatError("engine response is missing an embedding index")
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        usage = {"prompt_tokens": 0, "total_tokens": 0}
    return [v for v in out if v is not None], usage


def _response(
    vectors: list[bytes | None], served_name: str, encoding_format: str, usage: dict[str, Any]
) -> bytes:
    data = []
    for i, vec in enumerate(vectors):
        assert vec is not None
        # Stored bytes are little-endian float32: exactly what base64 carries.
        emb: Any = (
            base64.b64encode(vec).decode("ascii")
            if encoding_format == "base64"
            else unpack_vector(vec)
        )
        data.append({"object": "embedding", "index": i, "embedding": emb})
    doc = {
        "object": "list",
        "data": data,
        "model": served_name,
        "usage": {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "total_tokens": int(usage.get("total_tokens") or 0),
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()
