"""The embedding cache's keys and its in-memory tier: an LRU with a byte budget.

A key is the SHA-256 of what decides a vector: the service's identity (namespace, name,
uid), the model id and revision, the engine's vector fingerprint (image, command and every
flag that may change vectors, ``Engine.vector_fingerprint``), ``dimensions`` and the text
the engine is sent (so the query instruction, when applied, is part of it). The encoding
is not: base64 and float are two spellings of one float32 vector, and the cache stores
that vector (little-endian float32 bytes).

Memory is bounded twice: each service by its ``spec.cache.maxBytes``, and the activator
as a whole by ``--cache-max-bytes`` (when that is exceeded, the service holding the most
bytes gives up its least recently used entries first). Pure data structure, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from glowplug import engines
from glowplug.api import EmbeddingService

# Python's per-entry cost beyond the vector bytes: the 32-byte key, the bytes objects'
# headers, the OrderedDict node and the entry tuple (measured with sys.getsizeof: ~250).
ENTRY_OVERHEAD = 256
DEFAULT_MAX_BYTES = 256 << 20


def service_fingerprint(svc: EmbeddingService) -> bytes:
    """What every key of ``svc`` shares; a change of any part invalidates its entries."""
    doc = [
        svc.namespace,
        svc.name,
        svc.uid,
        svc.model.id,
        svc.model.revision,
        svc.model.matryoshka,
        engines.get(svc.engine.name).vector_fingerprint(svc),
    ]
    return hashlib.sha256(json.dumps(doc).encode()).digest()


def entry_key(fingerprint: bytes, dimensions: int | None, text: str) -> bytes:
    h = hashlib.sha256(fingerprint)
    h.update(b"d%d\x00" % (dimensions or 0))
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


def pack_vector(values: list[float]) -> bytes:
    arr = array("f", values)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def unpack_vector(data: bytes) -> list[float]:
    arr = array("f")
    arr.frombytes(data)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tolist()


@dataclass
class _ServiceEntries:
    ref: str
    fingerprint: bytes
    entries: OrderedDict[bytes, tuple[bytes, float]]  # key -> (vector, expires at)
    bytes: int = 0


class MemoryCache:
    """Per-service LRUs under one activator-wide byte budget; entries expire by TTL."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._services: dict[str, _ServiceEntries] = {}

    def __len__(self) -> int:
        return sum(len(s.entries) for s in self._services.values())

    def service_bytes(self, ref: str) -> int:
        s = self._services.get(ref)
        return s.bytes if s is not None else 0

    def get(self, ref: str, fingerprint: bytes, key: bytes) -> tuple[bytes, float] | None:
        """The vector and its expiry (monotonic seconds), or None; a hit becomes the newest."""
        s = self._services.get(ref)
        if s is None or s.fingerprint != fingerprint:
            return None
        item = s.entries.get(key)
        if item is None:
            return None
        if item[1] <= self.clock():
            self._remove(s, key)
            return None
        s.entries.move_to_end(key)
        return item

    def put(
        self,
        ref: str,
        fingerprint: bytes,
        key: bytes,
        vector: bytes,
        expires: float,
        service_max_bytes: int,
    ) -> None:
        size = len(vector) + ENTRY_OVERHEAD
        if size > service_max_bytes or size > self.max_bytes:
            return
        s = self._services.get(ref)
        if s is None or s.fingerprint != fingerprint:
            # A new model, revision or vector-changing engine flag: the old entries can
            # never be hit again, so free their memory now.
            self.drop(ref)
            s = self._services[ref] = _ServiceEntries(ref, fingerprint, OrderedDict())
        if key in s.entries:
            self._remove(s, key)
        s.entries[key] = (vector, expires)
        self._services[ref] = s  # again: removing its only entry above unlinked it
        s.bytes += size
        self.bytes += size
        while s.bytes > service_max_bytes:
            self._remove(s, next(iter(s.entries)))
        while self.bytes > self.max_bytes:
            biggest = max(self._services.values(), key=lambda x: x.bytes)
            self._remove(biggest, next(iter(biggest.entries)))

    def drop(self, ref: str) -> None:
        s = self._services.pop(ref, None)
        if s is not None:
            self.bytes -= s.bytes

    def _remove(self, s: _ServiceEntries, key: bytes) -> None:
        vector, _ = s.entries.pop(key)
        size = len(vector) + ENTRY_OVERHEAD
        s.bytes -= size
        self.bytes -= size
        if not s.entries:
            self._services.pop(s.ref, None)
