"""glowplug.api: parsing, defaults, validation errors that name the field, durations."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from glowplug.api import DurationError, SpecError, format_duration, parse, parse_duration
from glowplug.api.spec import DEFAULTS, EmbeddingService


def raw(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}},
    }
    body.update(spec)
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {
            "name": "qwen3-small",
            "namespace": "search",
            "uid": "u-1",
            "generation": 3,
            "resourceVersion": "42",
        },
        "spec": body,
    }


def errors_of(obj: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse(obj)
    return info.value.errors


def _auto(svc: Any) -> Any:
    auto = parse(raw(scaling={"idleTimeout": "auto"})).scaling.auto_idle
    assert auto is not None and svc.scaling.auto_idle is None
    return auto


# Each DEFAULTS key and how to read it back from a parsed EmbeddingService.
READ_BACK = {
    "model.revision": lambda s: s.model.revision,
    "model.matryoshka": lambda s: s.model.matryoshka,
    "model.minDimensions": lambda s: s.model.min_dimensions,
    "model.queryInstruction": lambda s: s.model.query_instruction,
    "engine.name": lambda s: s.engine.name,
    "engine.image": lambda s: s.engine.image,
    "engine.cuda": lambda s: s.engine.cuda,
    "engine.args": lambda s: list(s.engine.args),
    "engine.env": lambda s: list(s.engine.env),
    "engine.requestTimeout": lambda s: format_duration(s.engine.request_timeout),
    "resources.gpus": lambda s: s.resources.gpus,
    "resources.gpuType": lambda s: s.resources.gpu_type,
    "resources.cpu": lambda s: s.resources.cpu,
    "resources.memory": lambda s: s.resources.memory,
    "resources.sharedMemory": lambda s: s.resources.shared_memory,
    "scaling.autoscale": lambda s: s.scaling.autoscale,
    "scaling.minReplicas": lambda s: s.scaling.min_replicas,
    "scaling.maxReplicas": lambda s: s.scaling.max_replicas,
    "scaling.idleTimeout": lambda s: format_duration(s.scaling.idle_timeout),
    "scaling.scaleDownDelay": lambda s: format_duration(s.scaling.scale_down_delay),
    "scaling.targetConcurrency": lambda s: s.scaling.target_concurrency,
    "scaling.activationTimeout": lambda s: format_duration(s.scaling.activation_timeout),
    "scaling.nodeWaitTimeout": lambda s: format_duration(s.scaling.node_wait_timeout),
    "scaling.maxQueuedRequests": lambda s: s.scaling.max_queued_requests,
    "scaling.prewarm": lambda s: list(s.scaling.prewarm),
    "replicas": lambda s: s.replicas,
    "cost.gpuHourlyPrice": lambda s: s.cost.gpu_hourly_price,
    "cost.baselineReplicas": lambda s: s.cost.baseline_replicas,
    # Read from the same service with idleTimeout: auto (the bounds apply only then).
    "scaling.autoIdleTimeout.min": lambda s: format_duration(_auto(s).min),
    "scaling.autoIdleTimeout.max": lambda s: format_duration(_auto(s).max),
    "scaling.autoIdleTimeout.wakePenalty": lambda s: format_duration(_auto(s).wake_penalty),
    "scaling.autoIdleTimeout.prewarm": lambda s: _auto(s).prewarm,
    "cache.enabled": lambda s: s.cache.enabled,
    "cache.ttl": lambda s: format_duration(s.cache.ttl),
    "cache.maxBytes": lambda s: f"{s.cache.max_bytes >> 20}Mi",
}


def test_parse_applies_every_default() -> None:
    svc = parse(raw())
    spec_defaults = {k: v for k, v in DEFAULTS.items() if not k.startswith("prewarm.")}
    assert set(READ_BACK) == set(spec_defaults)
    for key, read in READ_BACK.items():
        assert read(svc) == DEFAULTS[key], key


def test_prewarm_defaults() -> None:
    svc = parse(raw(scaling={"prewarm": [{"schedule": "0 8 * * 1-5", "duration": "10h"}]}))
    (window,) = svc.scaling.prewarm
    assert window.replicas == DEFAULTS["prewarm.replicas"]
    assert window.time_zone == DEFAULTS["prewarm.timeZone"]
    assert window.duration == 36000.0


def test_identity_and_key() -> None:
    svc = parse(raw())
    assert isinstance(svc, EmbeddingService)
    assert (svc.name, svc.namespace, svc.uid, svc.generation, svc.resource_version) == (
        "qwen3-small",
        "search",
        "u-1",
        3,
        "42",
    )
    assert svc.model.served_name == "qwen3-small"  # defaults to metadata.name
    assert svc.key == "search/qwen3-small"


def test_full_spec() -> None:
    svc = parse(
        raw(
            model={
                "id": "qwen3-4b",
                "servedName": "qwen3-4b",
                "revision": "abc",
                "source": {"persistentVolumeClaim": {"claimName": "models", "subPath": "q"}},
                "matryoshka": True,
                "dimensions": 2560,
                "minDimensions": 64,
                "queryInstruction": "find",
            },
            engine={
                "args": ["--mem-fraction-static", "0.85"],
                "env": [{"name": "A", "value": "1"}],
                "requestTimeout": "90s",
                "cacheVolume": {"persistentVolumeClaim": {"claimName": "cache"}},
            },
            resources={"gpus": 2, "gpuType": "L4", "cpu": 8, "memory": "32Gi"},
            scaling={"minReplicas": 1, "maxReplicas": 4, "idleTimeout": "1h30m"},
            replicas=3,
            pod={"nodeSelector": {"pool": "gpu"}, "priorityClassName": "high"},
            cost={"gpuHourlyPrice": 2, "baselineReplicas": 2},
        )
    )
    assert svc.model.source.kind == "persistentVolumeClaim"
    assert svc.model.source.is_local
    assert (svc.model.source.claim_name, svc.model.source.sub_path) == ("models", "q")
    assert svc.model.dimensions == 2560 and svc.model.min_dimensions == 64
    assert svc.engine.args == ("--mem-fraction-static", "0.85")
    assert svc.engine.request_timeout == 90.0
    assert svc.engine.cache_volume is not None and svc.engine.cache_volume.claim_name == "cache"
    assert svc.resources.cpu == "8"  # int quantities become strings
    assert svc.resources.gpu_label == "L4"
    assert svc.scaling.idle_timeout == 5400.0
    assert svc.scaling.clamp(9) == 4 and svc.scaling.clamp(0) == 1
    assert svc.cost.gpu_hourly_price == 2.0
    assert svc.pod.node_selector == {"pool": "gpu"}


def test_token_secret() -> None:
    svc = parse(
        raw(
            model={
                "id": "x",
                "source": {"huggingFace": {"tokenSecretRef": {"name": "hf"}}},
            }
        )
    )
    assert svc.model.source.token_secret is not None
    assert (svc.model.source.token_secret.name, svc.model.source.token_secret.key) == (
        "hf",
        "token",
    )
    assert not svc.model.source.is_local


# (a spec change, the field its error must name)
BAD_SPECS: list[tuple[dict[str, Any], str]] = [
    ({"scaling": {"minReplicas": 3, "maxReplicas": 2}}, "spec.scaling.minReplicas"),
    ({"scaling": {"maxReplicas": 0}}, "spec.scaling.maxReplicas"),
    ({"scaling": {"minReplicas": -1}}, "spec.scaling.minReplicas"),
    ({"scaling": {"idleTimeout": "5 minutes"}}, "spec.scaling.idleTimeout"),
    ({"scaling": {"scaleDownDelay": "1d"}}, "spec.scaling.scaleDownDelay"),
    ({"scaling": {"activationTimeout": "15"}}, "spec.scaling.activationTimeout"),
    ({"scaling": {"targetConcurrency": 0}}, "spec.scaling.targetConcurrency"),
    ({"scaling": {"maxQueuedRequests": -5}}, "spec.scaling.maxQueuedRequests"),
    ({"scaling": {"prewarm": [{"schedule": "daily", "duration": "1h"}]}}, "prewarm[0].schedule"),
    ({"scaling": {"prewarm": [{"schedule": "0 8 * * *", "duration": "x"}]}}, "prewarm[0].duration"),
    (
        {"scaling": {"prewarm": [{"schedule": "0 8 * * *", "duration": "1h", "replicas": 0}]}},
        "prewarm[0].replicas",
    ),
    ({"engine": {"requestTimeout": "forever"}}, "spec.engine.requestTimeout"),
    # issue 11: bad cron fields, unknown zones and unbounded durations name their field
    (
        {"scaling": {"prewarm": [{"schedule": "99 8 * * funday", "duration": "1h"}]}},
        "prewarm[0].schedule",
    ),
    ({"scaling": {"prewarm": [{"schedule": "0 8 * * 5-1", "duration": "1h"}]}}, "prewarm[0]"),
    (
        {
            "scaling": {
                "prewarm": [{"schedule": "0 8 * * *", "duration": "1h", "timeZone": "Mars/Base"}]
            }
        },
        "spec.scaling.prewarm[0].timeZone",
    ),
    (
        {"scaling": {"prewarm": [{"schedule": "0 8 * * *", "duration": "0s"}]}},
        "prewarm[0].duration",
    ),
    (
        {"scaling": {"prewarm": [{"schedule": "0 8 * * *", "duration": "200h"}]}},
        "prewarm[0].duration",
    ),
    ({"engine": {"requestTimeout": "0s"}}, "spec.engine.requestTimeout"),
    ({"engine": {"requestTimeout": "99999999999999h"}}, "spec.engine.requestTimeout"),
    ({"engine": {"requestTimeout": "2h"}}, "spec.engine.requestTimeout"),
    ({"scaling": {"activationTimeout": "0s"}}, "spec.scaling.activationTimeout"),
    ({"scaling": {"activationTimeout": "0ms"}}, "spec.scaling.activationTimeout"),
    ({"scaling": {"nodeWaitTimeout": "0s"}}, "spec.scaling.nodeWaitTimeout"),
    ({"scaling": {"nodeWaitTimeout": "10 minutes"}}, "spec.scaling.nodeWaitTimeout"),
    ({"engine": {"name": "llamacpp"}}, "spec.engine.name"),
    ({"engine": {"args": ["--x", 1]}}, "spec.engine.args"),
    (
        {"engine": {"cacheVolume": {"hostPath": {"path": "/a"}, "persistentVolumeClaim": {}}}},
        "spec.engine.cacheVolume",
    ),
    (
        {"engine": {"cacheVolume": {"persistentVolumeClaim": {}}}},
        "cacheVolume.persistentVolumeClaim",
    ),
    ({"engine": {"cacheVolume": {"hostPath": {"path": "c"}}}}, "spec.engine.cacheVolume.hostPath"),
    ({"resources": {"gpus": -1}}, "spec.resources.gpus"),
    ({"resources": {"gpus": "one"}}, "spec.resources.gpus"),
    ({"replicas": -1}, "spec.replicas"),
    ({"cost": {"gpuHourlyPrice": -1}}, "spec.cost.gpuHourlyPrice"),
    ({"cost": {"baselineReplicas": -1}}, "spec.cost.baselineReplicas"),
    (
        {"model": {"id": "x", "servedName": "a:b", "source": {"huggingFace": {}}}},
        "spec.model.servedName",
    ),
    ({"model": {"id": "", "source": {"huggingFace": {}}}}, "spec.model.id"),
    ({"model": {"id": "x", "source": {}}}, "spec.model.source"),
    (
        {"model": {"id": "x", "source": {"huggingFace": {}, "hostPath": {"path": "/m"}}}},
        "spec.model.source",
    ),
    ({"model": {"id": "x", "source": {"hostPath": {"path": "rel"}}}}, "spec.model.source.hostPath"),
    (
        {"model": {"id": "x", "source": {"persistentVolumeClaim": {}}}},
        "spec.model.source.persistentVolumeClaim.claimName",
    ),
    (
        {"model": {"id": "x", "source": {"huggingFace": {"tokenSecretRef": {"key": "k"}}}}},
        "tokenSecretRef.name",
    ),
    (
        {"model": {"id": "x", "dimensions": 0, "source": {"huggingFace": {}}}},
        "spec.model.dimensions",
    ),
    ({"model": "qwen"}, "spec.model"),
]


@pytest.mark.parametrize(("change", "field"), BAD_SPECS)
def test_bad_spec_error_names_the_field(change: dict[str, Any], field: str) -> None:
    errors = errors_of(raw(**change))
    assert any(field in e for e in errors), errors


def test_all_errors_are_reported_at_once() -> None:
    errors = errors_of(
        raw(scaling={"minReplicas": 5, "maxReplicas": 2, "idleTimeout": "soon"}, replicas=-1)
    )
    assert len(errors) == 3
    assert str(SpecError(errors)) == "; ".join(errors)


def test_spec_must_be_an_object() -> None:
    obj = raw()
    obj["spec"] = ["x"]
    assert errors_of(obj) == ["spec: must be an object"]


def test_parse_does_not_mutate_input() -> None:
    obj = raw(scaling={"prewarm": [{"schedule": "0 8 * * *", "duration": "1h"}]})
    before = copy.deepcopy(obj)
    parse(obj)
    assert obj == before


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("2h0m5s", 7205.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m", "5 m", "-5m", "5d", "1h 30m", "5M", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.0, 0.25, 1.0, 59.0, 60.0, 90.0, 3600.0, 5400.0, 86400.0])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_duration_is_short() -> None:
    assert format_duration(300) == "5m"
    assert format_duration(5400) == "1h30m"
    assert format_duration(0) == "0s"
    with pytest.raises(DurationError):
        format_duration(-1)
