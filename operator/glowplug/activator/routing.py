"""The routing table: which EmbeddingService a request's ``model`` names.

Names clients may use:

- ``servedName`` (``spec.model.servedName``, default ``metadata.name``) when exactly one
  routed service uses it;
- ``namespace/servedName``, always unambiguous.

A short name used by services in two namespaces is refused with 400 (code
``model_ambiguous``) listing the unambiguous names of every candidate; a name nobody
uses is 404 (``model_not_found``). Lookups are two dictionary reads.
"""

from __future__ import annotations

from collections.abc import Iterator

from glowplug.activator.openai import APIError
from glowplug.api import EmbeddingService


class RoutingTable:
    """Services by ``namespace/name`` (metadata), plus the name indexes clients resolve."""

    def __init__(self) -> None:
        self._services: dict[str, EmbeddingService] = {}  # "namespace/name" -> spec
        self._by_key: dict[str, str] = {}  # "namespace/servedName" -> "namespace/name"
        self._by_short: dict[str, list[str]] = {}  # servedName -> ["namespace/name", ...]

    def __len__(self) -> int:
        return len(self._services)

    def __iter__(self) -> Iterator[EmbeddingService]:
        return iter(sorted(self._services.values(), key=lambda s: (s.namespace, s.name)))

    def get(self, ref: str) -> EmbeddingService | None:
        """A service by ``namespace/name`` (its metadata name)."""
        return self._services.get(ref)

    def upsert(self, svc: EmbeddingService) -> EmbeddingService | None:
        """Add or replace a service; return the previous version."""
        ref = f"{svc.namespace}/{svc.name}"
        old = self._services.get(ref)
        if old is not None and old.model.served_name != svc.model.served_name:
            self._unindex(old)
        self._services[ref] = svc
        self._by_key[svc.key] = ref
        refs = self._by_short.setdefault(svc.model.served_name, [])
        if ref not in refs:
            refs.append(ref)
            refs.sort()
        return old

    def remove(self, namespace: str, name: str) -> EmbeddingService | None:
        old = self._services.pop(f"{namespace}/{name}", None)
        if old is not None:
            self._unindex(old)
        return old

    def refs_named(self, name: str) -> list[str]:
        """The services a client's ``model: name`` could mean (its short name, or its
        ``namespace/servedName``): whose listing id depends on ``name``'s holders."""
        refs = list(self._by_short.get(name, ()))
        full = self._by_key.get(name)
        if full is not None and full not in refs:
            refs.append(full)
        return refs

    def _unindex(self, svc: EmbeddingService) -> None:
        ref = f"{svc.namespace}/{svc.name}"
        if self._by_key.get(svc.key) == ref:
            del self._by_key[svc.key]
        refs = self._by_short.get(svc.model.served_name)
        if refs and ref in refs:
            refs.remove(ref)
            if not refs:
                del self._by_short[svc.model.served_name]

    def resolve(self, model: str) -> EmbeddingService:
        """The one service ``model`` names, or an OpenAI-shaped 404 / 400 (ambiguous)."""
        refs = self._by_short.get(model)
        if refs is not None and len(refs) == 1:
            ref = refs[0]
            full = self._by_key.get(model)
            if full is None or full == ref:
                return self._services[ref]
        # Served names may contain '/', so "a/b" can be a short name and a full key at once.
        candidates = set(refs or ())
        full = self._by_key.get(model)
        if full is not None:
            candidates.add(full)
        if len(candidates) == 1:
            return self._services[candidates.pop()]
        if not candidates:
            raise APIError(
                404,
                f"The model {model!r} does not exist: no EmbeddingService serves it"
                f" (GET /v1/models lists the models this activator routes)",
                param="model",
                code="model_not_found",
            )
        names = sorted(self._services[r].key for r in candidates)
        raise APIError(
            400,
            f"The model name {model!r} is ambiguous: it is served in several namespaces."
            f" Use one of: {', '.join(names)}",
            param="model",
            code="model_ambiguous",
        )
