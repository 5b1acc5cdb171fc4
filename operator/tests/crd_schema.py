"""Helpers that read the EmbeddingService CRD for the unit tests (no API server needed)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "glowplug.dev_embeddingservices.yaml"


def load_crd() -> dict[str, Any]:
    with CRD_PATH.open() as f:
        crd: dict[str, Any] = yaml.safe_load(f)
    return crd


def root_schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    crd = crd or load_crd()
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, node) of a schema; array items appear as ``<path>[]``."""
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from walk(extra, f"{path}{{}}")


def defaults_key(path: str) -> str:
    """Map a schema path under ``spec`` to its ``glowplug.api.DEFAULTS`` key.

    Fields inside list items are keyed by the list's name: ``scaling.prewarm[].replicas``
    -> ``prewarm.replicas``.
    """
    if "[]" in path:
        head, _, tail = path.rpartition("[]")
        return f"{head.rsplit('.', 1)[-1]}{tail}"
    return path


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural-schema defaulting as the API server does it (objects present or defaulted)."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], v) for v in value]
    return value


def cel_regex(rule: str) -> str:
    """The regex of a ``self.matches('...')`` rule, with CEL's string escapes undone."""
    start = rule.index("matches('") + len("matches('")
    end = rule.index("')", start)
    return rule[start:end].replace("\\\\", "\\")
