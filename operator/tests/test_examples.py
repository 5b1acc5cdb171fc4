"""docs/examples: every EmbeddingService parses, renders, and the set covers each source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_schema import apply_defaults, root_schema

from glowplug.api import EmbeddingService, parse
from glowplug.operator import render

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def services() -> list[EmbeddingService]:
    return [
        parse(doc)
        for path in FILES
        for doc in documents(path)
        if doc.get("kind") == "EmbeddingService"
    ]


def test_there_are_examples() -> None:
    assert len(FILES) >= 4


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_example_parses_and_renders(path: Path) -> None:
    docs = [d for d in documents(path) if d.get("kind") == "EmbeddingService"]
    assert docs, f"{path.name} holds no EmbeddingService"
    for doc in docs:
        assert doc["apiVersion"] == "glowplug.dev/v1alpha1"
        svc = parse(doc)
        # What the API server stores (defaults applied) parses to the same thing.
        assert parse(apply_defaults(root_schema(), doc)) == svc
        deployment = render.render_deployment(svc)
        assert deployment["metadata"]["name"] == doc["metadata"]["name"]
        assert render.render_service(svc)["spec"]["selector"]


def test_examples_cover_every_source_and_a_cpu_engine() -> None:
    svcs = services()
    assert {s.model.source.kind for s in svcs} == {
        "huggingFace",
        "persistentVolumeClaim",
        "hostPath",
    }
    assert any(s.engine.name == "tei" and s.resources.gpus == 0 for s in svcs)
    qwen = {s.model.dimensions for s in svcs if s.engine.name == "sglang"}
    assert qwen == {1024, 2560, 4096}


def test_served_names_are_unique() -> None:
    names = [s.model.served_name for s in services()]
    assert len(names) == len(set(names))
