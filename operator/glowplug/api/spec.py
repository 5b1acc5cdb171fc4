"""The EmbeddingService spec as typed Python: parse a raw object, apply defaults, validate.

The CRD in ``crds/`` is the source of truth for what the API server accepts; this module
mirrors its defaults (``DEFAULTS``, checked against the CRD by a unit test) so that the
operator and the activator see the same spec whether or not the API server defaulted it
(for example when an object is read from a file).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from glowplug.api.cron import CronError, check_zone, parse_cron
from glowplug.api.durations import (
    BOUNDED_DURATION_REGEX,
    DurationError,
    format_duration,
    parse_duration,
)
from glowplug.api.images import image_errors
from glowplug.api.sizes import SizeError, parse_size

GROUP = "glowplug.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "EmbeddingService"
PLURAL = "embeddingservices"
SHORT_NAME = "embsvc"

ENGINES = ("sglang", "tei", "vllm")

# Every default the CRD schema declares, by JSON path under .spec. A unit test walks the
# CRD and proves each of its defaults appears here with the same value.
DEFAULTS: dict[str, Any] = {
    "model.revision": "",
    "model.matryoshka": False,
    "model.minDimensions": 32,
    "model.queryInstruction": "",
    "engine.name": "sglang",
    "engine.image": "",
    "engine.cuda": "",
    "engine.args": [],
    "engine.env": [],
    "engine.requestTimeout": "2m",
    "resources.gpus": 1,
    "resources.gpuType": "",
    "resources.cpu": "4",
    "resources.memory": "16Gi",
    "resources.sharedMemory": "2Gi",
    "scaling.autoscale": True,
    "scaling.minReplicas": 0,
    "scaling.maxReplicas": 2,
    "scaling.idleTimeout": "5m",
    "scaling.scaleDownDelay": "1m",
    "scaling.targetConcurrency": 16,
    "scaling.activationTimeout": "15m",
    "scaling.nodeWaitTimeout": "10m",
    "scaling.maxQueuedRequests": 1000,
    "scaling.prewarm": [],
    "scaling.autoIdleTimeout.min": "30s",
    "scaling.autoIdleTimeout.max": "10m",
    "scaling.autoIdleTimeout.wakePenalty": "5m",
    "scaling.autoIdleTimeout.prewarm": True,
    "replicas": 0,
    "cost.gpuHourlyPrice": 0.80,
    "cost.baselineReplicas": 1,
    "cache.enabled": False,
    "cache.ttl": "24h",
    "cache.maxBytes": "256Mi",
    "prewarm.replicas": 1,
    "prewarm.timeZone": "UTC",
}

# Durations that must be positive and have an upper bound, by the same paths: the CRD's
# CEL rules say the same (a unit test compares them). requestTimeout sizes the pod's
# terminationGracePeriodSeconds, so a bound keeps it far from any integer overflow; the
# pre-warm bound is the longest window the timer looks back over (prewarm.last_start).
DURATION_BOUNDS: dict[str, float] = {
    "engine.requestTimeout": 3600.0,
    "scaling.activationTimeout": 3600.0,
    "scaling.nodeWaitTimeout": 3600.0,
    "prewarm.duration": 8 * 86400.0,
}


class SpecError(ValueError):
    """An EmbeddingService spec that cannot be served; ``errors`` name each bad field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str = "token"


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: exactly one of the three kinds is set."""

    kind: str  # "huggingFace" | "persistentVolumeClaim" | "hostPath"
    token_secret: SecretKeyRef | None = None  # huggingFace only
    claim_name: str = ""  # persistentVolumeClaim only
    sub_path: str = ""  # persistentVolumeClaim only
    host_path: str = ""  # hostPath only

    @property
    def is_local(self) -> bool:
        """Weights on a volume: the engine must not look anything up on the hub."""
        return self.kind != "huggingFace"


@dataclass(frozen=True)
class ModelSpec:
    id: str
    served_name: str
    source: ModelSource
    revision: str = ""
    matryoshka: bool = False
    dimensions: int | None = None  # native embedding size; bounds `dimensions` requests
    min_dimensions: int = 32
    query_instruction: str = ""


@dataclass(frozen=True)
class CacheVolume:
    """A persistent volume for the engine's compile caches (SGLANG_CACHE_DIR)."""

    claim_name: str = ""
    host_path: str = ""


@dataclass(frozen=True)
class EngineSpec:
    name: str = "sglang"
    image: str = ""
    # The CUDA major version of the nodes' driver, for engines that publish one image per
    # CUDA line (SGLang); "" takes the engine's default image.
    cuda: str = ""
    args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    request_timeout: float = 120.0
    cache_volume: CacheVolume | None = None


@dataclass(frozen=True)
class ResourcesSpec:
    gpus: int = 1
    gpu_type: str = ""
    cpu: str = "4"
    memory: str = "16Gi"
    shared_memory: str = "2Gi"

    @property
    def gpu_label(self) -> str:
        """The GPU type as a metric label: never empty."""
        return self.gpu_type or "unknown"


@dataclass(frozen=True)
class PrewarmWindow:
    schedule: str  # five-field cron
    duration: float  # seconds
    replicas: int = 1
    time_zone: str = "UTC"


@dataclass(frozen=True)
class AutoIdle:
    """The bounds and price of ``idleTimeout: auto`` (spec.scaling.autoIdleTimeout)."""

    min: float = 30.0
    max: float = 600.0
    wake_penalty: float = 300.0  # GPU-seconds one cold start is worth avoiding
    # Scale to zero early and wake ahead of predicted arrivals when the learned gaps are
    # predictable enough to pay for it (idlepolicy.py); False: keep-alive only.
    prewarm: bool = True


@dataclass(frozen=True)
class ScalingSpec:
    autoscale: bool = True
    min_replicas: int = 0
    max_replicas: int = 2
    idle_timeout: float = 300.0
    scale_down_delay: float = 60.0
    target_concurrency: int = 16
    activation_timeout: float = 900.0
    # How long a wake waits for a node when nothing (no node autoscaler Event, no node
    # able to take the pod) says one is coming: then it fails as NodeWaitTimeout.
    node_wait_timeout: float = 600.0
    max_queued_requests: int = 1000
    prewarm: tuple[PrewarmWindow, ...] = ()
    # idleTimeout: auto -> learned within these bounds (idle_timeout is then auto.max).
    auto_idle: AutoIdle | None = None

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class PodSpec:
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    priority_class_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CostSpec:
    gpu_hourly_price: float = 0.80
    baseline_replicas: int = 1


@dataclass(frozen=True)
class CacheSpec:
    """The activator's embedding cache for this service (docs/activator.md)."""

    enabled: bool = False
    ttl: float = 86400.0  # seconds an entry may be served after it was computed
    max_bytes: int = 256 << 20  # per activator replica


@dataclass(frozen=True)
class EmbeddingService:
    """One EmbeddingService: identity plus its defaulted, validated spec."""

    name: str
    namespace: str
    uid: str
    generation: int
    resource_version: str
    model: ModelSpec
    engine: EngineSpec
    resources: ResourcesSpec
    scaling: ScalingSpec
    replicas: int
    pod: PodSpec
    cost: CostSpec
    cache: CacheSpec = CacheSpec()

    @property
    def key(self) -> str:
        """The unambiguous name clients may use: ``namespace/servedName``."""
        return f"{self.namespace}/{self.model.served_name}"


_SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


class _Reader:
    """Reads typed fields out of a raw mapping, collecting every error by field path."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def section(self, raw: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.errors.append(f"{path}.{key}: must be an object")
            return {}
        return value

    def get(self, raw: Mapping[str, Any], key: str, path: str, typ: type, default: Any) -> Any:
        value = raw.get(key, default)
        if value is None:
            return default
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            self.errors.append(f"{path}.{key}: must be {typ.__name__}, got {value!r}")
            return default
        return value

    def duration(self, raw: Mapping[str, Any], key: str, path: str, default: str) -> float:
        text = self.get(raw, key, path, str, default)
        try:
            return parse_duration(text)
        except DurationError as err:
            self.errors.append(f"{path}.{key}: {err}")
            return parse_duration(default)

    def bounded_duration(
        self, raw: Mapping[str, Any], key: str, path: str, default: str, bound: str
    ) -> float:
        """A duration that must be more than 0 and at most ``DURATION_BOUNDS[bound]``."""
        seconds = self.duration(raw, key, path, default)
        top = DURATION_BOUNDS[bound]
        text = raw.get(key)
        if not 0 < seconds <= top or (
            isinstance(text, str) and not re.match(BOUNDED_DURATION_REGEX, text)
        ):
            self.errors.append(
                f"{path}.{key}: must be more than 0s and at most {format_duration(top)}"
                f" (at most two parts of at most six digits), got {text!r}"
            )
            return parse_duration(default)
        return seconds


def _model_source(r: _Reader, raw: Mapping[str, Any]) -> ModelSource:
    path = "spec.model.source"
    kinds = [
        k for k in ("huggingFace", "persistentVolumeClaim", "hostPath") if raw.get(k) is not None
    ]
    if len(kinds) != 1:
        r.errors.append(
            f"{path}: exactly one of huggingFace, persistentVolumeClaim, hostPath must be set"
            f" (got {', '.join(kinds) or 'none'})"
        )
        return ModelSource(kind="huggingFace")
    kind = kinds[0]
    body = r.section(raw, kind, path)
    if kind == "huggingFace":
        ref = r.section(body, "tokenSecretRef", f"{path}.huggingFace")
        token = None
        if ref:
            token = SecretKeyRef(
                name=r.get(ref, "name", f"{path}.huggingFace.tokenSecretRef", str, ""),
                key=r.get(ref, "key", f"{path}.huggingFace.tokenSecretRef", str, "token"),
            )
            if not token.name:
                r.errors.append(f"{path}.huggingFace.tokenSecretRef.name: required")
        return ModelSource(kind=kind, token_secret=token)
    if kind == "persistentVolumeClaim":
        claim = r.get(body, "claimName", f"{path}.{kind}", str, "")
        if not claim:
            r.errors.append(f"{path}.{kind}.claimName: required")
        return ModelSource(
            kind=kind, claim_name=claim, sub_path=r.get(body, "subPath", f"{path}.{kind}", str, "")
        )
    host = r.get(body, "path", f"{path}.{kind}", str, "")
    if not host.startswith("/"):
        r.errors.append(f"{path}.hostPath.path: must be an absolute path, got {host!r}")
    return ModelSource(kind=kind, host_path=host)


def _prewarm(r: _Reader, items: Any) -> tuple[PrewarmWindow, ...]:
    if not isinstance(items, list):
        r.errors.append("spec.scaling.prewarm: must be a list")
        return ()
    windows = []
    for i, item in enumerate(items):
        path = f"spec.scaling.prewarm[{i}]"
        if not isinstance(item, Mapping):
            r.errors.append(f"{path}: must be an object")
            continue
        schedule = r.get(item, "schedule", path, str, "")
        try:
            parse_cron(schedule)
        except CronError as err:
            r.errors.append(f"{path}.schedule: not a five-field cron schedule: {err}")
        duration = r.bounded_duration(item, "duration", path, "1h", "prewarm.duration")
        replicas = r.get(item, "replicas", path, int, DEFAULTS["prewarm.replicas"])
        if replicas < 1:
            r.errors.append(f"{path}.replicas: must be at least 1")
        time_zone = r.get(item, "timeZone", path, str, DEFAULTS["prewarm.timeZone"])
        try:
            check_zone(time_zone)
        except CronError as err:
            r.errors.append(f"{path}.timeZone: {err}")
        windows.append(
            PrewarmWindow(
                schedule=schedule, duration=duration, replicas=replicas, time_zone=time_zone
            )
        )
    return tuple(windows)


def parse(obj: Mapping[str, Any]) -> EmbeddingService:
    """Parse a raw EmbeddingService object (as the API server returns it).

    Applies the same defaults as the CRD and raises ``SpecError`` listing every bad field.
    """
    r = _Reader()
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise SpecError(["spec: must be an object"])
    name = str(meta.get("name", ""))
    d = DEFAULTS

    m = r.section(spec, "model", "spec")
    model_id = r.get(m, "id", "spec.model", str, "")
    if not model_id:
        r.errors.append("spec.model.id: required (a Hugging Face id or a path in the volume)")
    served = r.get(m, "servedName", "spec.model", str, "") or name
    if ":" in served or not _SERVED_NAME.match(served):
        r.errors.append(
            f"spec.model.servedName: {served!r} must start with a letter or digit and hold no ':'"
        )
    dims = m.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        r.errors.append(f"spec.model.dimensions: must be a positive integer, got {dims!r}")
        dims = None
    model = ModelSpec(
        id=model_id,
        served_name=served,
        source=_model_source(r, r.section(m, "source", "spec.model")),
        revision=r.get(m, "revision", "spec.model", str, d["model.revision"]),
        matryoshka=r.get(m, "matryoshka", "spec.model", bool, d["model.matryoshka"]),
        dimensions=dims,
        min_dimensions=r.get(m, "minDimensions", "spec.model", int, d["model.minDimensions"]),
        query_instruction=r.get(
            m, "queryInstruction", "spec.model", str, d["model.queryInstruction"]
        ),
    )

    e = r.section(spec, "engine", "spec")
    engine_name = r.get(e, "name", "spec.engine", str, d["engine.name"])
    if engine_name not in ENGINES:
        r.errors.append(f"spec.engine.name: {engine_name!r} is not one of {', '.join(ENGINES)}")
    args = r.get(e, "args", "spec.engine", list, [])
    if not all(isinstance(a, str) for a in args):
        r.errors.append("spec.engine.args: must be a list of strings")
        args = []
    env = r.get(e, "env", "spec.engine", list, [])
    cache_raw = r.section(e, "cacheVolume", "spec.engine")
    cache = None
    if cache_raw:
        pvc = r.section(cache_raw, "persistentVolumeClaim", "spec.engine.cacheVolume")
        host = r.section(cache_raw, "hostPath", "spec.engine.cacheVolume")
        has_pvc = cache_raw.get("persistentVolumeClaim") is not None
        if has_pvc == (cache_raw.get("hostPath") is not None):
            r.errors.append(
                "spec.engine.cacheVolume: exactly one of persistentVolumeClaim, hostPath"
            )
        elif has_pvc and not pvc.get("claimName"):
            r.errors.append("spec.engine.cacheVolume.persistentVolumeClaim.claimName: required")
        elif not has_pvc and not str(host.get("path", "")).startswith("/"):
            r.errors.append("spec.engine.cacheVolume.hostPath.path: must be an absolute path")
        cache = CacheVolume(
            claim_name=str(pvc.get("claimName", "")), host_path=str(host.get("path", ""))
        )
    image = r.get(e, "image", "spec.engine", str, d["engine.image"])
    cuda = r.get(e, "cuda", "spec.engine", str, d["engine.cuda"])
    r.errors.extend(image_errors(engine_name, image, cuda))
    engine = EngineSpec(
        name=engine_name,
        image=image,
        cuda=cuda,
        args=tuple(args),
        env=tuple(dict(x) for x in env if isinstance(x, Mapping)),
        request_timeout=r.bounded_duration(
            e, "requestTimeout", "spec.engine", d["engine.requestTimeout"], "engine.requestTimeout"
        ),
        cache_volume=cache,
    )

    res = r.section(spec, "resources", "spec")
    resources = ResourcesSpec(
        gpus=r.get(res, "gpus", "spec.resources", int, d["resources.gpus"]),
        gpu_type=r.get(res, "gpuType", "spec.resources", str, d["resources.gpuType"]),
        cpu=str(res.get("cpu", d["resources.cpu"])),
        memory=str(res.get("memory", d["resources.memory"])),
        shared_memory=str(res.get("sharedMemory", d["resources.sharedMemory"])),
    )
    if resources.gpus < 0:
        r.errors.append("spec.resources.gpus: must be >= 0")

    s = r.section(spec, "scaling", "spec")
    ai = r.section(s, "autoIdleTimeout", "spec.scaling")
    ai_path = "spec.scaling.autoIdleTimeout"
    auto_bounds = AutoIdle(
        min=r.duration(ai, "min", ai_path, d["scaling.autoIdleTimeout.min"]),
        max=r.duration(ai, "max", ai_path, d["scaling.autoIdleTimeout.max"]),
        wake_penalty=r.duration(
            ai, "wakePenalty", ai_path, d["scaling.autoIdleTimeout.wakePenalty"]
        ),
        prewarm=r.get(ai, "prewarm", ai_path, bool, d["scaling.autoIdleTimeout.prewarm"]),
    )
    if auto_bounds.min > auto_bounds.max:
        r.errors.append(f"{ai_path}.min: must be <= {ai_path}.max")
    auto = s.get("idleTimeout") == "auto"
    scaling = ScalingSpec(
        autoscale=r.get(s, "autoscale", "spec.scaling", bool, d["scaling.autoscale"]),
        min_replicas=r.get(s, "minReplicas", "spec.scaling", int, d["scaling.minReplicas"]),
        max_replicas=r.get(s, "maxReplicas", "spec.scaling", int, d["scaling.maxReplicas"]),
        idle_timeout=(
            auto_bounds.max
            if auto
            else r.duration(s, "idleTimeout", "spec.scaling", d["scaling.idleTimeout"])
        ),
        auto_idle=auto_bounds if auto else None,
        scale_down_delay=r.duration(
            s, "scaleDownDelay", "spec.scaling", d["scaling.scaleDownDelay"]
        ),
        target_concurrency=r.get(
            s, "targetConcurrency", "spec.scaling", int, d["scaling.targetConcurrency"]
        ),
        activation_timeout=r.bounded_duration(
            s,
            "activationTimeout",
            "spec.scaling",
            d["scaling.activationTimeout"],
            "scaling.activationTimeout",
        ),
        node_wait_timeout=r.bounded_duration(
            s,
            "nodeWaitTimeout",
            "spec.scaling",
            d["scaling.nodeWaitTimeout"],
            "scaling.nodeWaitTimeout",
        ),
        max_queued_requests=r.get(
            s, "maxQueuedRequests", "spec.scaling", int, d["scaling.maxQueuedRequests"]
        ),
        prewarm=_prewarm(r, s.get("prewarm", [])),
    )
    if scaling.min_replicas < 0:
        r.errors.append("spec.scaling.minReplicas: must be >= 0")
    if scaling.max_replicas < 1:
        r.errors.append("spec.scaling.maxReplicas: must be >= 1")
    if scaling.min_replicas > scaling.max_replicas:
        r.errors.append(
            f"spec.scaling.minReplicas: {scaling.min_replicas} is greater than"
            f" maxReplicas {scaling.max_replicas}"
        )
    if scaling.target_concurrency < 1:
        r.errors.append("spec.scaling.targetConcurrency: must be >= 1")
    if scaling.max_queued_requests < 0:
        r.errors.append("spec.scaling.maxQueuedRequests: must be >= 0")

    replicas = r.get(spec, "replicas", "spec", int, d["replicas"])
    if replicas < 0:
        r.errors.append("spec.replicas: must be >= 0")

    p = r.section(spec, "pod", "spec")
    pod = PodSpec(
        node_selector=dict(r.get(p, "nodeSelector", "spec.pod", dict, {})),
        tolerations=tuple(r.get(p, "tolerations", "spec.pod", list, [])),
        affinity=dict(r.get(p, "affinity", "spec.pod", dict, {})),
        priority_class_name=r.get(p, "priorityClassName", "spec.pod", str, ""),
        labels=dict(r.get(p, "labels", "spec.pod", dict, {})),
        annotations=dict(r.get(p, "annotations", "spec.pod", dict, {})),
    )

    c = r.section(spec, "cost", "spec")
    cost = CostSpec(
        gpu_hourly_price=r.get(c, "gpuHourlyPrice", "spec.cost", float, d["cost.gpuHourlyPrice"]),
        baseline_replicas=r.get(
            c, "baselineReplicas", "spec.cost", int, d["cost.baselineReplicas"]
        ),
    )
    if cost.gpu_hourly_price < 0:
        r.errors.append("spec.cost.gpuHourlyPrice: must be >= 0")
    if cost.baseline_replicas < 0:
        r.errors.append("spec.cost.baselineReplicas: must be >= 0")

    ch = r.section(spec, "cache", "spec")
    max_bytes_text = r.get(ch, "maxBytes", "spec.cache", str, d["cache.maxBytes"])
    try:
        max_bytes = parse_size(max_bytes_text)
    except SizeError as err:
        r.errors.append(f"spec.cache.maxBytes: {err}")
        max_bytes = parse_size(d["cache.maxBytes"])
    cache_spec = CacheSpec(
        enabled=r.get(ch, "enabled", "spec.cache", bool, d["cache.enabled"]),
        ttl=r.duration(ch, "ttl", "spec.cache", d["cache.ttl"]),
        max_bytes=max_bytes,
    )
    if cache_spec.ttl <= 0:
        r.errors.append("spec.cache.ttl: must be longer than zero")

    if r.errors:
        raise SpecError(r.errors)
    return EmbeddingService(
        name=name,
        namespace=str(meta.get("namespace", "default")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0) or 0),
        resource_version=str(meta.get("resourceVersion", "")),
        model=model,
        engine=engine,
        resources=resources,
        scaling=scaling,
        replicas=replicas,
        pod=pod,
        cost=cost,
        cache=cache_spec,
    )


def default_spec_value(path: str) -> Any:
    """A deep copy of one default, so callers cannot mutate the shared table."""
    return copy.deepcopy(DEFAULTS[path])
