"""API keys: Kubernetes Secrets labelled ``glowplug.dev/api-key``, watched, checked per request.

A key Secret's data (``stringData`` when written by hand):

- ``key`` (required): the bearer token clients send (``Authorization: Bearer <key>``);
- ``models`` (optional): the models it may call, comma- or newline-separated, each a
  ``servedName`` or ``namespace/servedName``; absent or empty: every model in its scope;
- ``wake`` (optional, default ``true``): whether it may wake a service from zero;
- ``requestsPerSecond`` (optional): a token bucket, burst of one second's worth;
- ``maxConcurrent`` (optional): requests in progress at once.

A Secret in the activator's own namespace is a key for every namespace; in namespaced
installs a Secret in a watched namespace is a key for that namespace only. Keys are
stored by their SHA-256 digest (the key itself is not kept, and never logged) and
compared with ``hmac.compare_digest``; a Secret that does not parse is skipped with a
warning naming the Secret and the field. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from glowplug.activator import openai as oai
from glowplug.api import EmbeddingService

log = logging.getLogger("glowplug.activator.apikeys")

KEY_LABEL = "glowplug.dev/api-key"
AUTH_MODES = ("off", "auto", "required")


def wake_not_allowed(svc: EmbeddingService) -> oai.APIError:
    """The refusal for a key without ``wake`` whose request would start a wake."""
    return oai.APIError(
        403,
        f"model {svc.model.served_name!r} is scaled to zero and this API key may not wake it",
        type="permission_error",
        param="model",
        code="wake_not_allowed",
    )


class KeySecretError(ValueError):
    """A key Secret does not parse; the message names the Secret and the field."""


@dataclass
class ApiKey:
    ref: str  # "namespace/name" of the Secret: the key's name in metrics and logs
    digest: bytes
    scope: str | None  # the one namespace it may call, None: every namespace
    models: frozenset[str]  # empty: every model in scope
    wake: bool = True
    rate: float | None = None  # requests per second
    max_concurrent: int | None = None
    # Mutable state: the token bucket and the requests in progress.
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)
    inflight: int = 0

    def allows(self, svc: EmbeddingService) -> bool:
        if self.scope is not None and svc.namespace != self.scope:
            return False
        if not self.models:
            return True
        name = svc.model.served_name
        return name in self.models or f"{svc.namespace}/{name}" in self.models


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_secret(obj: Mapping[str, Any], own_namespace: str | None) -> ApiKey:
    """The key in a Secret; ``own_namespace`` (the activator's) makes it cluster-wide."""
    meta = obj.get("metadata") or {}
    ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    ref = f"{ns}/{name}"
    data: dict[str, str] = {}
    for k, v in (obj.get("data") or {}).items():
        try:
            data[k] = base64.b64decode(v, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            raise KeySecretError(f"Secret {ref}: data.{k} is not base64 of UTF-8 text") from None
    # The API server folds stringData into data; a --static-config file may use either.
    for k, v in (obj.get("stringData") or {}).items():
        data[k] = str(v)
    key = data.get("key", "").strip()
    if not key:
        raise KeySecretError(f"Secret {ref}: data.key is missing or empty")
    if len(key) < 16:
        raise KeySecretError(f"Secret {ref}: data.key is shorter than 16 characters")
    models = frozenset(
        m.strip() for m in data.get("models", "").replace("\n", ",").split(",") if m.strip()
    )
    wake_text = data.get("wake", "true").strip().lower()
    if wake_text not in ("true", "false"):
        raise KeySecretError(f"Secret {ref}: data.wake must be true or false, got {wake_text!r}")
    rate: float | None = None
    if data.get("requestsPerSecond", "").strip():
        try:
            rate = float(data["requestsPerSecond"])
        except ValueError:
            rate = -1.0
        if not (rate > 0 and math.isfinite(rate)):
            raise KeySecretError(f"Secret {ref}: data.requestsPerSecond must be a positive number")
    conc: int | None = None
    if data.get("maxConcurrent", "").strip():
        text = data["maxConcurrent"].strip()
        if not text.isdigit() or int(text) < 1:
            raise KeySecretError(f"Secret {ref}: data.maxConcurrent must be a positive integer")
        conc = int(text)
    scope = None if own_namespace is not None and ns == own_namespace else ns
    k = ApiKey(ref, digest(key), scope, models, wake_text == "true", rate, conc)
    k.tokens = max(1.0, rate or 0.0)
    return k


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(message: str) -> oai.APIError:
    return oai.APIError(
        401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


class KeyStore:
    """The keys known now, fed by the Secret watch (or a static file)."""

    def __init__(self, mode: str = "auto", own_namespace: str | None = None) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"auth mode must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
        self.mode = mode
        self.own_namespace = own_namespace
        self.by_digest: dict[bytes, ApiKey] = {}
        self.by_ref: dict[str, ApiKey] = {}

    @property
    def active(self) -> bool:
        """Whether requests must carry a key: always (required), once one exists (auto)."""
        return self.mode == "required" or (self.mode == "auto" and bool(self.by_ref))

    # --- sources ----------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ref = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        try:
            key = parse_secret(obj, self.own_namespace)
        except KeySecretError as err:
            log.warning("not using API key %s", err)
            self._drop(ref)
            return
        old = self.by_ref.get(ref)
        if old is not None:
            # A rotation or an edit: keep the bucket and the count in progress.
            key.tokens, key.stamp, key.inflight = old.tokens, old.stamp, old.inflight
            self._drop(ref)
        clash = self.by_digest.get(key.digest)
        if clash is not None:
            log.warning("not using API key %s: its key is the same as %s's", ref, clash.ref)
            return
        self.by_ref[ref] = key
        self.by_digest[key.digest] = key

    def delete(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        self._drop(f"{meta.get('namespace', '')}/{meta.get('name', '')}")

    def resync(self, objs: Iterable[Mapping[str, Any]], namespace: str | None = None) -> None:
        seen = set()
        for obj in objs:
            meta = obj.get("metadata") or {}
            seen.add(f"{meta.get('namespace', '')}/{meta.get('name', '')}")
            self.apply(obj)
        for ref in list(self.by_ref):
            if ref not in seen and (namespace is None or ref.startswith(f"{namespace}/")):
                self._drop(ref)

    def _drop(self, ref: str) -> None:
        key = self.by_ref.pop(ref, None)
        if key is not None and self.by_digest.get(key.digest) is key:
            del self.by_digest[key.digest]

    # --- request path -----------------------------------------------------------------

    def authenticate(self, header: str | None) -> ApiKey | None:
        """The caller's key; None when auth is not active. Raises 401 ``APIError``."""
        if not self.active:
            return None
        token = _bearer(header)
        if token is None:
            raise _unauthorized(
                "no API key: send it as 'Authorization: Bearer <key>' (docs/activator.md, API keys)"
            )
        d = digest(token)
        key = self.by_digest.get(d)
        # The dictionary finds the candidate by digest; the comparison is constant-time.
        if key is None or not hmac.compare_digest(key.digest, d):
            raise _unauthorized("invalid API key")
        return key

    def admit(self, key: ApiKey, svc: EmbeddingService, wakes: bool) -> None:
        """Model allowlist, wake permission, rate and concurrency; raises 403 or 429.
        On success the key counts one more request in progress: ``release`` it."""
        name = svc.model.served_name
        if not key.allows(svc):
            raise oai.APIError(
                403,
                f"this API key may not call model {name!r} ({svc.namespace}/{svc.name})",
                type="permission_error",
                param="model",
                code="model_not_allowed",
            )
        if wakes and not key.wake:
            raise wake_not_allowed(svc)
        if key.max_concurrent is not None and key.inflight >= key.max_concurrent:
            raise oai.APIError(
                429,
                f"this API key has {key.inflight} requests in progress, its limit (maxConcurrent)",
                type="rate_limit_error",
                code="rate_limited",
                headers={"Retry-After": "1"},
            )
        if key.rate is not None:
            now = time.monotonic()
            burst = max(1.0, key.rate)
            key.tokens = min(burst, key.tokens + (now - key.stamp) * key.rate)
            key.stamp = now
            if key.tokens < 1.0:
                wait = math.ceil((1.0 - key.tokens) / key.rate)
                raise oai.APIError(
                    429,
                    f"this API key is limited to {key.rate:g} requests per second"
                    " (requestsPerSecond)",
                    type="rate_limit_error",
                    code="rate_limited",
                    headers={"Retry-After": str(max(1, wait))},
                )
            key.tokens -= 1.0
        key.inflight += 1

    def release(self, key: ApiKey) -> None:
        key.inflight = max(0, key.inflight - 1)
