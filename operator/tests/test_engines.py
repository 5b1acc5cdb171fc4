"""Engine profiles: every flag, probe, env var, volume, resource and toleration."""

from __future__ import annotations

import json
from typing import Any

import pytest

from glowplug import engines
from glowplug.api import EmbeddingService, parse
from glowplug.engines import base, sglang, tei, vllm


def svc(name: str = "qwen3-small", **spec: Any) -> EmbeddingService:
    body: dict[str, Any] = {
        "model": {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}},
    }
    body.update(spec)
    return parse({"metadata": {"name": name, "namespace": "ns"}, "spec": body})


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- registry --------------------------------------------------------------------------


def test_registry_covers_every_engine_the_api_accepts() -> None:
    from glowplug.api.spec import ENGINES

    assert set(engines.REGISTRY) == set(ENGINES)
    for name, engine in engines.REGISTRY.items():
        assert engine.name == name
        assert isinstance(engine, base.Engine)
    assert engines.get("sglang") is sglang.ENGINE


def test_unknown_engine_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="sglang, tei, vllm"):
        engines.get("llamacpp")


# --- args merging ------------------------------------------------------------------------


def test_merge_args_user_flag_replaces_default_and_its_value() -> None:
    merged = base.merge_args(
        ["--model-path", "m", "--port", "30000", "--enable-metrics"],
        ["--port", "9000", "--mem-fraction-static", "0.85"],
    )
    assert merged[:3] == ["--model-path", "m", "--enable-metrics"]
    assert merged[3:] == ["--port", "9000", "--mem-fraction-static", "0.85"]


def test_merge_args_equals_form_and_boolean_flags() -> None:
    merged = base.merge_args(["--tp-size", "2", "--enable-metrics"], ["--tp-size=4"])
    assert merged == ["--enable-metrics", "--tp-size=4"]
    merged = base.merge_args(["--a=1", "--b"], ["--a", "2", "--b"])
    assert merged == ["--a", "2", "--b"]


def test_merge_args_keeps_multi_value_flags_whole() -> None:
    merged = base.merge_args(["--x", "1", "2", "--y"], ["--x", "3"])
    assert merged == ["--y", "--x", "3"]


def test_merge_env_user_wins() -> None:
    merged = base.merge_env(
        [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
        ({"name": "A", "value": "9"},),
    )
    assert merged == [{"name": "B", "value": "2"}, {"name": "A", "value": "9"}]


# --- SGLang ----------------------------------------------------------------------------


def test_sglang_image_pinned_and_overridable() -> None:
    assert sglang.IMAGE == "lmsysorg/sglang:v0.5.23"
    assert sglang.ENGINE.container(svc())["image"] == sglang.IMAGE
    own = svc(engine={"image": "registry.example/sglang:dev"})
    assert sglang.ENGINE.container(own)["image"] == "registry.example/sglang:dev"


def test_sglang_command_line() -> None:
    c = sglang.ENGINE.container(svc(resources={"gpus": 2}))
    assert c["command"] == ["python3", "-m", "sglang.launch_server"]
    args = c["args"]
    assert flag_value(args, "--model-path") == "Qwen/Qwen3-Embedding-0.6B"
    assert "--is-embedding" in args
    assert flag_value(args, "--host") == "0.0.0.0"
    assert flag_value(args, "--port") == "30000"
    assert flag_value(args, "--served-model-name") == "qwen3-small"
    assert "--enable-metrics" in args
    assert flag_value(args, "--tp-size") == "2"
    assert "--revision" not in args
    assert "--json-model-override-args" not in args
    assert c["ports"] == [{"name": "http", "containerPort": 30000, "protocol": "TCP"}]


def test_sglang_served_name_and_revision() -> None:
    s = svc(
        model={
            "id": "Qwen/Qwen3-Embedding-0.6B",
            "servedName": "small",
            "revision": "c54f2e6",
            "source": {"huggingFace": {}},
        }
    )
    args = sglang.ENGINE.args(s)
    assert flag_value(args, "--served-model-name") == "small"
    assert flag_value(args, "--revision") == "c54f2e6"


def test_sglang_matryoshka_override() -> None:
    s = svc(
        model={"id": "m", "matryoshka": True, "source": {"huggingFace": {}}},
    )
    args = sglang.ENGINE.args(s)
    assert json.loads(flag_value(args, "--json-model-override-args")) == {"is_matryoshka": True}


def test_sglang_user_args_come_last_and_override() -> None:
    s = svc(engine={"args": ["--mem-fraction-static", "0.85", "--port", "31000"]})
    args = sglang.ENGINE.args(s)
    assert args[-4:] == ["--mem-fraction-static", "0.85", "--port", "31000"]
    assert args.count("--port") == 1


def test_sglang_no_tp_size_on_cpu() -> None:
    assert "--tp-size" not in sglang.ENGINE.args(svc(resources={"gpus": 0}))


def test_sglang_probes() -> None:
    c = sglang.ENGINE.container(svc())
    startup, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
    assert startup["httpGet"] == {"path": "/ready", "port": "http"}
    # At least 30 minutes for a large model load.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert ready["httpGet"] == {"path": "/ready", "port": "http"}
    assert 1 <= ready["periodSeconds"] <= 2
    assert live["httpGet"] == {"path": "/health", "port": "http"}
    # /health runs a forward pass with a 20 s internal timeout: never kill a busy pod fast.
    assert live["timeoutSeconds"] > 20
    assert live["periodSeconds"] * live["failureThreshold"] >= 120
    assert sglang.ENGINE.readiness_path(svc()) == "/ready"


def test_sglang_env_hugging_face_with_token() -> None:
    s = svc(
        model={
            "id": "m",
            "source": {"huggingFace": {"tokenSecretRef": {"name": "hf", "key": "tok"}}},
        }
    )
    env = env_of(sglang.ENGINE.container(s))
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "tok"}}
    assert "HF_HUB_OFFLINE" not in env
    assert "SGLANG_CACHE_DIR" not in env


def test_sglang_env_local_weights_offline() -> None:
    s = svc(model={"id": "qwen3-4b", "source": {"persistentVolumeClaim": {"claimName": "m"}}})
    env = env_of(sglang.ENGINE.container(s))
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "HF_TOKEN" not in env


def test_sglang_cache_volume_env() -> None:
    s = svc(engine={"cacheVolume": {"persistentVolumeClaim": {"claimName": "sglang-cache"}}})
    c = sglang.ENGINE.container(s)
    env = env_of(c)
    assert env["SGLANG_CACHE_DIR"] == "/cache/sglang"
    assert env["HF_HOME"] == "/cache/huggingface"
    assert {"name": "cache", "mountPath": "/cache"} in c["volumeMounts"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "sglang-cache"}} in (
        sglang.ENGINE.volumes(s)
    )


def test_cache_volume_host_path() -> None:
    s = svc(engine={"cacheVolume": {"hostPath": {"path": "/var/cache/glowplug"}}})
    assert {
        "name": "cache",
        "hostPath": {"path": "/var/cache/glowplug", "type": "DirectoryOrCreate"},
    } in sglang.ENGINE.volumes(s)


def test_user_env_appended_and_overrides() -> None:
    s = svc(
        engine={
            "env": [
                {"name": "HF_HUB_OFFLINE", "value": "0"},
                {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ]
        },
        model={"id": "m", "source": {"hostPath": {"path": "/mnt/m"}}},
    )
    env = sglang.ENGINE.container(s)["env"]
    assert [e["name"] for e in env][-2:] == ["HF_HUB_OFFLINE", "X"]
    assert env_of({"env": env})["HF_HUB_OFFLINE"] == "0"


def test_shm_volume() -> None:
    s = svc(resources={"sharedMemory": "8Gi"})
    assert sglang.ENGINE.volumes(s)[0] == {
        "name": "dshm",
        "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"},
    }
    assert {"name": "dshm", "mountPath": "/dev/shm"} in sglang.ENGINE.volume_mounts(s)


def test_pvc_model_source() -> None:
    s = svc(
        model={
            "id": ".",
            "source": {"persistentVolumeClaim": {"claimName": "models", "subPath": "qwen3-4b"}},
        }
    )
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in sglang.ENGINE.volumes(s)
    assert {
        "name": "model",
        "mountPath": "/models",
        "readOnly": True,
        "subPath": "qwen3-4b",
    } in sglang.ENGINE.volume_mounts(s)
    assert flag_value(sglang.ENGINE.args(s), "--model-path") == "/models"


def test_host_path_model_source() -> None:
    s = svc(model={"id": "Qwen3-Embedding-8B", "source": {"hostPath": {"path": "/mnt/models"}}})
    assert {
        "name": "model",
        "hostPath": {"path": "/mnt/models", "type": "Directory"},
    } in sglang.ENGINE.volumes(s)
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in (
        sglang.ENGINE.volume_mounts(s)
    )
    assert flag_value(sglang.ENGINE.args(s), "--model-path") == "/models/Qwen3-Embedding-8B"


def test_model_path_cannot_escape_the_mount_with_a_leading_slash() -> None:
    s = svc(model={"id": "/q", "source": {"hostPath": {"path": "/mnt/models"}}})
    assert sglang.ENGINE.model_path(s) == "/models/q"


def test_revision_ignored_for_local_weights() -> None:
    s = svc(model={"id": "q", "revision": "abc", "source": {"hostPath": {"path": "/m"}}})
    assert "--revision" not in sglang.ENGINE.args(s)


def test_hugging_face_source_has_no_model_volume() -> None:
    names = [v["name"] for v in sglang.ENGINE.volumes(svc())]
    assert names == ["dshm"]


def test_gpu_resources_and_toleration() -> None:
    s = svc(resources={"gpus": 2, "cpu": "8", "memory": "32Gi"})
    assert sglang.ENGINE.resources(s) == {
        "requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": 2},
    }
    assert sglang.ENGINE.tolerations(s) == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_no_gpu_no_gpu_limit_no_toleration() -> None:
    s = svc(resources={"gpus": 0, "cpu": "2", "memory": "4Gi"})
    res = sglang.ENGINE.resources(s)
    assert "nvidia.com/gpu" not in res["requests"]
    assert "nvidia.com/gpu" not in res["limits"]
    assert sglang.ENGINE.tolerations(s) == []


def test_prestop_and_grace_period_cover_the_longest_request() -> None:
    s = svc(engine={"requestTimeout": "5m"})
    c = sglang.ENGINE.container(s)
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep == base.PRESTOP_SLEEP_SECONDS > 0
    grace = sglang.ENGINE.termination_grace_seconds(s)
    assert grace > 300 + sleep
    assert sglang.ENGINE.termination_grace_seconds(svc(engine={"requestTimeout": "1.5s"})) == (
        2 + sleep + base.GRACE_MARGIN_SECONDS
    )


def test_container_is_named_engine() -> None:
    assert sglang.ENGINE.container(svc())["name"] == "engine"


# --- TEI -------------------------------------------------------------------------------


def tei_svc(**spec: Any) -> EmbeddingService:
    spec.setdefault("engine", {"name": "tei"})
    return svc(**spec)


def test_tei_cpu_image_when_no_gpu() -> None:
    s = tei_svc(resources={"gpus": 0, "cpu": "2", "memory": "4Gi"})
    c = tei.ENGINE.container(s)
    assert c["image"] == "ghcr.io/huggingface/text-embeddings-inference:cpu-1.9"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert tei.ENGINE.tolerations(s) == []


@pytest.mark.parametrize(
    ("gpu_type", "tag"),
    [
        ("", "1.9"),
        ("A100-80GB", "1.9"),
        ("nvidia-l4", "89-1.9"),
        ("L40S", "89-1.9"),
        ("A10G", "86-1.9"),
        ("RTX 3090", "86-1.9"),
        ("RTX4090", "89-1.9"),
        ("H100", "hopper-1.9"),
        ("NVIDIA-H200", "hopper-1.9"),
        ("T4", "turing-1.9"),
    ],
)
def test_tei_gpu_image_by_architecture(gpu_type: str, tag: str) -> None:
    s = tei_svc(resources={"gpus": 1, "gpuType": gpu_type})
    assert tei.ENGINE.image(s) == f"ghcr.io/huggingface/text-embeddings-inference:{tag}"
    assert tei.ENGINE.resources(s)["limits"]["nvidia.com/gpu"] == 1
    assert tei.ENGINE.tolerations(s)[0]["key"] == "nvidia.com/gpu"


def test_tei_image_override() -> None:
    s = tei_svc(engine={"name": "tei", "image": "my/tei:1"})
    assert tei.ENGINE.image(s) == "my/tei:1"


def test_tei_command_line() -> None:
    s = tei_svc(
        model={
            "id": "BAAI/bge-small-en-v1.5",
            "servedName": "bge",
            "revision": "v1",
            "source": {"huggingFace": {"tokenSecretRef": {"name": "hf"}}},
        },
        engine={"name": "tei", "args": ["--max-client-batch-size", "128"]},
    )
    c = tei.ENGINE.container(s)
    assert "command" not in c  # keeps the image's text-embeddings-router entrypoint
    args = c["args"]
    assert flag_value(args, "--model-id") == "BAAI/bge-small-en-v1.5"
    assert flag_value(args, "--port") == "8080"
    assert flag_value(args, "--hostname") == "0.0.0.0"
    assert flag_value(args, "--served-model-name") == "bge"
    assert flag_value(args, "--revision") == "v1"
    assert args[-2:] == ["--max-client-batch-size", "128"]
    assert c["ports"][0] == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    env = env_of(c)
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_tei_local_weights() -> None:
    s = tei_svc(model={"id": "bge", "source": {"hostPath": {"path": "/mnt/models"}}})
    c = tei.ENGINE.container(s)
    assert flag_value(c["args"], "--model-id") == "/models/bge"
    assert env_of(c)["HF_HUB_OFFLINE"] == "1"


def test_tei_cache_volume_holds_hub_downloads() -> None:
    s = tei_svc(engine={"name": "tei", "cacheVolume": {"hostPath": {"path": "/var/cache/tei"}}})
    assert flag_value(tei.ENGINE.args(s), "--huggingface-hub-cache") == "/cache/huggingface/hub"


def test_tei_probes_on_health() -> None:
    c = tei.ENGINE.container(tei_svc())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 1800
    assert c["readinessProbe"]["periodSeconds"] == 1
    assert c["livenessProbe"]["timeoutSeconds"] >= 10


# --- vLLM ------------------------------------------------------------------------------


def vllm_svc(**spec: Any) -> EmbeddingService:
    spec.setdefault("engine", {"name": "vllm"})
    return svc(**spec)


MINILM = {"id": "all-minilm-l6-v2", "source": {"hostPath": {"path": "/var/lib/models"}}}


def test_vllm_is_registered() -> None:
    assert engines.get("vllm") is vllm.ENGINE
    assert vllm.VERSION == "0.32.0"
    assert vllm.IMAGE == "vllm/vllm-openai:v0.32.0"
    assert vllm.CPU_IMAGE == "vllm/vllm-openai-cpu:v0.32.0"


def test_vllm_gpu_command_line() -> None:
    s = vllm_svc(model={"id": "BAAI/bge-base-en-v1.5", "source": {"huggingFace": {}}})
    c = vllm.ENGINE.container(s)
    assert c["image"] == vllm.IMAGE
    assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = c["args"]
    assert flag_value(args, "--model") == "BAAI/bge-base-en-v1.5"
    assert flag_value(args, "--runner") == "pooling"
    assert flag_value(args, "--served-model-name") == "qwen3-small"
    assert flag_value(args, "--host") == "0.0.0.0"
    assert flag_value(args, "--port") == "8000"
    # An encoder keeps the pooling its own config declares; one GPU needs no TP flag;
    # GPUs keep the model's dtype.
    for absent in ("--convert", "--pooler-config", "--tensor-parallel-size", "--dtype"):
        assert absent not in args
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "VLLM_CPU_KVCACHE_SPACE" not in env_of(c)


def test_vllm_qwen3_pools_the_last_token() -> None:
    c = vllm.ENGINE.container(vllm_svc())  # Qwen/Qwen3-Embedding-0.6B
    args = c["args"]
    assert flag_value(args, "--convert") == "embed"
    assert json.loads(flag_value(args, "--pooler-config")) == {"seq_pooling_type": "LAST"}


def test_vllm_decoder_detected_from_a_local_path() -> None:
    s = vllm_svc(
        model={
            "id": ".",
            "source": {
                "persistentVolumeClaim": {"claimName": "m", "subPath": "Qwen3-Embedding-4B"}
            },
        }
    )
    assert vllm.is_decoder_embedder(s)
    assert flag_value(vllm.ENGINE.args(s), "--model") == "/models"
    assert not vllm.is_decoder_embedder(vllm_svc(model=MINILM))


def test_vllm_matryoshka_revision_and_tensor_parallel() -> None:
    s = vllm_svc(
        model={
            "id": "Qwen/Qwen3-Embedding-8B",
            "matryoshka": True,
            "revision": "abc123",
            "source": {"huggingFace": {}},
        },
        resources={"gpus": 4},
    )
    args = vllm.ENGINE.args(s)
    assert json.loads(flag_value(args, "--hf-overrides")) == {"is_matryoshka": True}
    assert flag_value(args, "--revision") == "abc123"
    assert flag_value(args, "--tensor-parallel-size") == "4"


def test_vllm_cpu_pod() -> None:
    s = vllm_svc(model=MINILM, resources={"gpus": 0, "cpu": "2", "memory": "4Gi"})
    c = vllm.ENGINE.container(s)
    assert c["image"] == vllm.CPU_IMAGE
    assert flag_value(c["args"], "--dtype") == "float32"
    assert flag_value(c["args"], "--model") == "/models/all-minilm-l6-v2"
    assert "--revision" not in c["args"]
    env = env_of(c)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert vllm.ENGINE.tolerations(s) == []


def test_vllm_token_and_cache_volume() -> None:
    s = vllm_svc(
        model={
            "id": "Qwen/Qwen3-Embedding-0.6B",
            "source": {"huggingFace": {"tokenSecretRef": {"name": "hf-token"}}},
        },
        engine={"name": "vllm", "cacheVolume": {"hostPath": {"path": "/var/cache/vllm"}}},
    )
    env = env_of(vllm.ENGINE.container(s))
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert env["HF_HOME"] == "/cache/huggingface"
    assert env["VLLM_CACHE_ROOT"] == "/cache/vllm"
    assert "HF_HUB_OFFLINE" not in env


def test_vllm_user_args_replace_defaults() -> None:
    s = vllm_svc(
        engine={
            "name": "vllm",
            "args": ["--pooler-config", '{"seq_pooling_type":"MEAN"}', "--port=9000"],
        }
    )
    args = vllm.ENGINE.args(s)
    assert args[-3:] == ["--pooler-config", '{"seq_pooling_type":"MEAN"}', "--port=9000"]
    assert args.count("--pooler-config") == 1
    assert "--port" not in args
    assert flag_value(args, "--convert") == "embed"


def test_vllm_probes_on_health() -> None:
    c = vllm.ENGINE.container(vllm_svc())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 1800
    assert c["readinessProbe"]["periodSeconds"] == 1
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] >= 120
    assert vllm.ENGINE.readiness_path(vllm_svc()) == "/health"


# --- CUDA 12 nodes, batch limits -------------------------------------------------------


def test_sglang_cuda12_runs_the_last_cuda12_image_probed_on_health() -> None:
    assert sglang.CUDA12_IMAGE == "lmsysorg/sglang:v0.5.19-cu129"
    c = sglang.ENGINE.container(svc(engine={"cuda": "12"}))
    assert c["image"] == sglang.CUDA12_IMAGE
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    # The activator's fast release probes starting pods on the same path.
    assert sglang.ENGINE.readiness_path(svc(engine={"cuda": "12"})) == "/health"
    # /health runs a forward pass (>= 1 s, engine timeout 20 s): readiness must wait longer.
    assert c["readinessProbe"]["timeoutSeconds"] > 20
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 1800
    # The same flags: they parse with 0.5.19's own parser too (test_engine_parsers).
    assert c["args"] == sglang.ENGINE.args(svc())
    assert sglang.ENGINE.container(svc(engine={"cuda": "13"}))["image"] == sglang.IMAGE


def test_sglang_cuda12_with_an_image_override_keeps_the_image() -> None:
    s = svc(engine={"cuda": "12", "image": "lmsysorg/sglang:v0.5.18-cu129"})
    c = sglang.ENGINE.container(s)
    assert c["image"] == "lmsysorg/sglang:v0.5.18-cu129"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize(
    ("args", "limit"),
    [
        ([], 32),
        (["--max-client-batch-size", "128"], 128),
        (["--max-client-batch-size=8"], 8),
        (["--max-client-batch-size", "0"], 32),
    ],
)
def test_tei_batch_limit_from_its_flag(args: list[str], limit: int) -> None:
    s = tei_svc(engine={"name": "tei", "args": args})
    assert tei.ENGINE.max_batch(s) == limit


def test_sglang_and_vllm_have_no_batch_limit() -> None:
    assert sglang.ENGINE.max_batch(svc()) is None
    assert vllm.ENGINE.max_batch(vllm_svc()) is None
