"""``GET /v1/models``: the body kept encoded and rebuilt only after a change.

A listing of 10,000 services encoded on every call costs tens of milliseconds on the
event loop; clients (SDKs, UIs, health checks) call it often. Each service's entry is
encoded once and again only when it changes: the service was added, its spec changed,
it was removed, it became ready or stopped being ready (``ServiceState``'s
``on_ready_change``), or another service took or freed its short name (an entry's
``id`` is the short name only while it is unambiguous). Whole bodies are cached per API
key (a key lists the models it may call) until the next change.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from glowplug.activator.apikeys import ApiKey
from glowplug.activator.openai import APIError
from glowplug.activator.routing import RoutingTable
from glowplug.api import EmbeddingService

_HEAD = b'{"object": "list", "data": ['
_TAIL = b"]}"


class ModelList:
    """Encoded /v1/models entries per service, and whole bodies per API key."""

    def __init__(self, table: RoutingTable, ready: Callable[[str], bool]) -> None:
        self._table = table
        self._ready = ready  # "namespace/name" -> has a ready endpoint
        self.version = 0  # bumped by every change (tests, logs)
        self._entries: dict[str, bytes] = {}
        self._order: list[str] | None = None  # refs sorted by (namespace, name)
        self._dirty: set[str] = set()
        self._bodies: dict[str | None, tuple[int, ApiKey | None, bytes]] = {}
        self.builds = 0  # bodies encoded (tests: a cached call builds nothing)

    def changed(self, ref: str, names: tuple[str, ...] = ()) -> None:
        """``ref`` was added, changed or removed, or its readiness changed; ``names``:
        the short names and keys it had and has, whose holders' ids may change too."""
        self.version += 1
        self._dirty.add(ref)
        for name in names:
            self._dirty.update(self._table.refs_named(name))
        if (ref in self._entries) != (self._table.get(ref) is not None):
            self._order = None  # membership changed

    def body(self, key: ApiKey | None = None) -> bytes:
        """The JSON body: every model, or those ``key`` may call."""
        slot = key.ref if key is not None else None
        cached = self._bodies.get(slot)
        if cached is not None and cached[0] == self.version and cached[1] is key:
            return cached[2]
        self._refresh()
        if self._order is None:
            self._order = sorted(self._entries, key=lambda r: tuple(r.split("/", 1)))
        refs = self._order
        if key is not None:
            refs = [r for r in refs if (svc := self._table.get(r)) and key.allows(svc)]
        body = _HEAD + b", ".join(self._entries[r] for r in refs) + _TAIL
        self.builds += 1
        if len(self._bodies) > 64:  # keys are few; a churn of keys must not grow this
            self._bodies.clear()
        self._bodies[slot] = (self.version, key, body)
        return body

    def _refresh(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for ref in dirty:
            svc = self._table.get(ref)
            if svc is None:
                self._entries.pop(ref, None)
            else:
                self._entries[ref] = json.dumps(self._entry(svc, ref)).encode()

    def _entry(self, svc: EmbeddingService, ref: str) -> dict[str, object]:
        short = svc.model.served_name
        try:
            unique = self._table.resolve(short) is svc
        except APIError:
            unique = False
        return {
            "id": short if unique else svc.key,
            "object": "model",
            "created": 0,
            "owned_by": svc.namespace,
            "glowplug": {
                "namespace": svc.namespace,
                "name": svc.name,
                "servedName": short,
                "unambiguousName": svc.key,
                "model": svc.model.id,
                "matryoshka": svc.model.matryoshka,
                "dimensions": svc.model.dimensions,
                "ready": self._ready(ref),
            },
        }
