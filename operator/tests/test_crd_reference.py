"""docs/crd-reference.md is generated from the CRD; this fails when it is stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import yaml

REPO = Path(__file__).resolve().parents[2]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_crd_reference", REPO / "scripts" / "gen-crd-reference.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crd_reference_is_up_to_date() -> None:
    gen = generator()
    expected = gen.render(yaml.safe_load(gen.CRD.read_text()))
    assert gen.OUT.read_text() == expected, "docs/crd-reference.md is stale: run `make crd-docs`"


def test_crd_reference_lists_every_spec_field() -> None:
    gen = generator()
    crd = yaml.safe_load(gen.CRD.read_text())
    text = gen.OUT.read_text()

    def walk(schema: dict[str, object], path: str) -> None:
        assert f"| `{path}` |" in text, path
        props = schema.get("properties")
        if schema.get("type") == "array":
            items = schema.get("items")
            props = items.get("properties") if isinstance(items, dict) else None
            path += "[]"
        if isinstance(props, dict):
            for name, sub in props.items():
                walk(sub, f"{path}.{name}")

    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    walk(root["spec"], "spec")
    walk(root["status"], "status")
