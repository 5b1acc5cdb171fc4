"""A routing source from a YAML file, for tests, benchmarks and demos without an API server.

Format (``--static-config FILE``)::

    services:
      - apiVersion: glowplug.dev/v1alpha1      # an EmbeddingService object, as kubectl shows it
        kind: EmbeddingService
        metadata: {name: qwen3-small, namespace: search}
        spec: {model: {id: Qwen/Qwen3-Embedding-0.6B, source: {huggingFace: {}}}}
        endpoints: ["127.0.0.1:30000"]          # ready pod addresses (host:port)
        wakeEndpoints: ["127.0.0.1:30001"]      # optional: what a wake makes ready
    apiKeys:                                    # optional: key Secrets, as kubectl shows them
      - metadata: {name: team-a, namespace: glowplug-system}
        stringData: {key: "...", models: "qwen3-small"}

``StaticScaler`` stands in for the scale subresource: a wake makes ``wakeEndpoints``
ready after ``wakeDelaySeconds`` (default 0).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from glowplug.activator.apikeys import KeyStore
from glowplug.activator.services import Services


class StaticScaler:
    """Test double for the scale subresource: a wake publishes the configured endpoints."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.wake_endpoints: dict[str, list[str]] = {}
        self.wake_delay: dict[str, float] = {}
        self.writes = 0

    async def raise_from_zero(self, namespace: str, name: str, seen_version: str = "") -> bool:
        ref = f"{namespace}/{name}"
        self.writes += 1
        addresses = self.wake_endpoints.get(ref)
        if addresses is not None:
            delay = self.wake_delay.get(ref, 0.0)

            async def publish() -> None:
                await asyncio.sleep(delay)
                self.services.set_endpoints(namespace, name, addresses)

            asyncio.get_running_loop().create_task(publish())
        return True


def load(
    path: str | Path, services: Services, scaler: StaticScaler, keys: KeyStore | None = None
) -> None:
    doc = yaml.safe_load(Path(path).read_text()) or {}
    items = doc.get("services") or []
    if not isinstance(items, list):
        raise ValueError(f"{path}: 'services' must be a list")
    for item in items:
        apply(item, services, scaler)
    secrets = doc.get("apiKeys") or []
    if not isinstance(secrets, list):
        raise ValueError(f"{path}: 'apiKeys' must be a list")
    if keys is not None:
        keys.resync(secrets)


def apply(item: Mapping[str, Any], services: Services, scaler: StaticScaler) -> None:
    meta = item.get("metadata") or {}
    ns = str(meta.get("namespace") or "default")
    name = str(meta["name"])
    obj = {k: v for k, v in item.items() if k not in ("endpoints", "wakeEndpoints")}
    obj["metadata"] = {**meta, "namespace": ns}
    services.apply_service(obj)
    services.set_endpoints(ns, name, [str(a) for a in item.get("endpoints") or []])
    if item.get("wakeEndpoints") is not None:
        scaler.wake_endpoints[f"{ns}/{name}"] = [str(a) for a in item["wakeEndpoints"]]
        scaler.wake_delay[f"{ns}/{name}"] = float(item.get("wakeDelaySeconds") or 0.0)
