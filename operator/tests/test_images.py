"""Known-bad engine images and spec.engine.cuda: refused by parse() and by the CRD's CEL
rules, with the field named; the CRD's regexes are the Python ones."""

from __future__ import annotations

import re
from typing import Any

import pytest
from crd_schema import cel_regex, load_crd, root_schema

from glowplug.api import SpecError, images, parse


def obj(**engine: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "e", "namespace": "ns"},
        "spec": {
            "model": {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}},
            "engine": engine,
        },
    }


def errors(**engine: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse(obj(**engine))
    return info.value.errors


BAD = [
    # (engine spec, the field named, a fragment of the message)
    ({"image": "lmsysorg/sglang:v0.5.23-cu129"}, "spec.engine.image", "v0.5.19-cu129"),
    ({"image": "lmsysorg/sglang:v0.5.20-cu126"}, "spec.engine.image", "does not exist"),
    ({"image": "lmsysorg/sglang:v0.6.1-cu129", "cuda": "12"}, "spec.engine.image", "CUDA 12"),
    ({"image": "lmsysorg/sglang:v0.5.19-cu129"}, "spec.engine.image", "/ready"),
    ({"image": "lmsysorg/sglang:v0.4.10.post2-cu124"}, "spec.engine.image", "/ready"),
    (
        {"name": "tei", "image": "ghcr.io/huggingface/text-embeddings-inference:cpu-1.8"},
        "spec.engine.image",
        "--served-model-name",
    ),
    ({"name": "tei", "image": "my/text-embeddings-inference:89-1.7.2"}, "spec.engine.image", "1.9"),
    ({"name": "tei", "cuda": "12"}, "spec.engine.cuda", "SGLang build only"),
    ({"name": "vllm", "cuda": "13"}, "spec.engine.cuda", "spec.engine.image"),
    ({"cuda": "11"}, "spec.engine.cuda", "not one of"),
]


@pytest.mark.parametrize(("engine", "field", "fragment"), BAD, ids=[str(b[0]) for b in BAD])
def test_known_bad_combination_names_the_field(
    engine: dict[str, Any], field: str, fragment: str
) -> None:
    (err,) = errors(**engine)
    assert err.startswith(field + ":"), err
    assert fragment in err, err


GOOD = [
    {},
    {"cuda": "12"},
    {"cuda": "13"},
    {"image": "lmsysorg/sglang:v0.5.23"},
    {"image": "lmsysorg/sglang:v0.5.19-cu129", "cuda": "12"},
    {"image": "lmsysorg/sglang:latest"},
    {"image": "registry.example/team/sglang:v0.5.24-custom"},
    {"name": "tei", "image": "ghcr.io/huggingface/text-embeddings-inference:cpu-1.9"},
    {"name": "tei", "image": "my/text-embeddings-inference:hopper-1.10"},
    {"name": "vllm", "image": "vllm/vllm-openai:v0.32.0"},
    # Other engines' image rules do not apply: a TEI-looking tag on sglang is the user's.
    {"image": "my/text-embeddings-inference:1.8"},
]


@pytest.mark.parametrize("engine", GOOD, ids=[str(g) for g in GOOD])
def test_good_combinations_parse(engine: dict[str, Any]) -> None:
    svc = parse(obj(**engine))
    assert svc.engine.cuda == engine.get("cuda", "")


def engine_rules() -> list[dict[str, Any]]:
    spec = root_schema(load_crd())["properties"]["spec"]["properties"]
    rules: list[dict[str, Any]] = spec["engine"]["x-kubernetes-validations"]
    return rules


def test_crd_rules_use_the_python_regexes() -> None:
    found = {cel_regex(r["rule"]) for r in engine_rules() if "matches(" in r["rule"]}
    assert found == {
        images.SGLANG_CUDA12_AFTER_0519,
        images.SGLANG_BEFORE_0520,
        images.TEI_BEFORE_19,
    }
    for regex in found:
        re.compile(regex)


def test_crd_cuda_enum_matches_python() -> None:
    spec = root_schema(load_crd())["properties"]["spec"]["properties"]
    assert spec["engine"]["properties"]["cuda"]["enum"] == list(images.CUDA_VALUES)


def test_crd_rules_name_the_engine_they_apply_to() -> None:
    rules = {r["rule"] for r in engine_rules()}
    by_regex = {cel_regex(r): r for r in rules if "matches(" in r}
    assert "self.name != 'sglang'" in by_regex[images.SGLANG_CUDA12_AFTER_0519]
    assert "self.cuda == '12'" in by_regex[images.SGLANG_BEFORE_0520]
    assert "self.name != 'tei'" in by_regex[images.TEI_BEFORE_19]
