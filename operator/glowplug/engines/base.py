"""The engine interface: what the renderer needs to know about a serving engine.

An engine is one module with one ``Engine`` subclass: its pinned image, port, command
line, probes and any engine-specific env. What every engine shares (the model volume,
``/dev/shm``, the Hugging Face token, GPU resources and tolerations, the preStop drain)
lives here, so a new engine is a small module plus one line in the registry.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from glowplug.api.spec import EmbeddingService

# Where a local model source (PVC or hostPath) is mounted; model.id is a path inside it.
MODEL_MOUNT = "/models"
# Where engine.cacheVolume is mounted (compile caches, hub downloads).
CACHE_MOUNT = "/cache"
SHM_VOLUME = "dshm"
MODEL_VOLUME = "model"
CACHE_VOLUME = "cache"
GPU_RESOURCE = "nvidia.com/gpu"
# Seconds the pod keeps serving after it is marked terminating, so every activator sees
# the EndpointSlice change and stops sending to it before the engine gets SIGTERM.
PRESTOP_SLEEP_SECONDS = 10
# Slack on top of the longest request and the preStop sleep before the kubelet kills.
GRACE_MARGIN_SECONDS = 15

Manifest = dict[str, Any]


@dataclass(frozen=True)
class HttpProbe:
    """An HTTP GET probe on the engine port."""

    path: str
    period: int
    failure_threshold: int
    timeout: int = 1
    initial_delay: int = 0

    def manifest(self, port_name: str = "http") -> Manifest:
        probe: Manifest = {
            "httpGet": {"path": self.path, "port": port_name},
            "periodSeconds": self.period,
            "timeoutSeconds": self.timeout,
            "failureThreshold": self.failure_threshold,
            "successThreshold": 1,
        }
        if self.initial_delay:
            probe["initialDelaySeconds"] = self.initial_delay
        return probe


@dataclass(frozen=True)
class Probes:
    startup: HttpProbe
    readiness: HttpProbe
    liveness: HttpProbe


def split_flags(args: list[str] | tuple[str, ...]) -> list[list[str]]:
    """Group a command line into [flag, value...] groups (``--a=b`` is one group)."""
    groups: list[list[str]] = []
    for arg in args:
        if arg.startswith("--") or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    return groups


def flag_name(group: list[str]) -> str:
    return group[0].split("=", 1)[0]


def merge_args(defaults: list[str], user: list[str] | tuple[str, ...]) -> list[str]:
    """The default flags, minus those the user gives, then the user's args as written.

    A user flag replaces the default flag together with its value(s), so
    ``--port 9000`` does not leave a stale ``--port 30000`` before it.
    """
    overridden = {flag_name(g) for g in split_flags(user) if g[0].startswith("--")}
    kept = [g for g in split_flags(defaults) if flag_name(g) not in overridden]
    return [a for g in kept for a in g] + list(user)


def merge_env(base: list[Manifest], user: tuple[Manifest, ...]) -> list[Manifest]:
    """Engine env, then the user's; a user variable replaces an engine one of the same name."""
    names = {e.get("name") for e in user}
    return [e for e in base if e["name"] not in names] + [dict(e) for e in user]


class Engine(ABC):
    """One serving engine. Subclasses set ``name`` and ``port`` and fill in the abstracts."""

    name: str
    port: int
    #: Flags that cannot change a vector (listening address, memory and batching limits,
    #: logging). Every other flag, the image and the command count towards
    #: ``vector_fingerprint``: an unknown flag is assumed to change vectors.
    vector_neutral_flags: frozenset[str] = frozenset()

    # --- engine specific -------------------------------------------------------------
    @abstractmethod
    def default_image(self, svc: EmbeddingService) -> str:
        """The pinned image used when spec.engine.image is empty."""

    @abstractmethod
    def command(self, svc: EmbeddingService) -> list[str]:
        """The container command; empty keeps the image's entrypoint."""

    @abstractmethod
    def default_args(self, svc: EmbeddingService) -> list[str]:
        """The engine's flags before the user's engine.args are merged in."""

    @abstractmethod
    def probes(self, svc: EmbeddingService) -> Probes:
        """Startup, readiness and liveness probes."""

    def engine_env(self, svc: EmbeddingService) -> list[Manifest]:
        """Engine-specific variables (cache directories, for example)."""
        return []

    def max_batch(self, svc: EmbeddingService) -> int | None:
        """The most inputs one request may carry (the activator splits larger ones);
        None when the engine has no such limit."""
        return None

    # --- shared ------------------------------------------------------------------------
    def readiness_path(self, svc: EmbeddingService) -> str:
        """The cheap endpoint that says "ready for traffic": the readiness probe's path
        (the activator probes starting pods on it too)."""
        return self.probes(svc).readiness.path

    def image(self, svc: EmbeddingService) -> str:
        return svc.engine.image or self.default_image(svc)

    def args(self, svc: EmbeddingService) -> list[str]:
        return merge_args(self.default_args(svc), svc.engine.args)

    def vector_fingerprint(self, svc: EmbeddingService) -> str:
        """A hash of what decides the vectors this engine computes (the embedding cache's
        key includes it, so a new image or a vector-changing flag invalidates entries)."""
        groups = [
            g for g in split_flags(self.args(svc)) if flag_name(g) not in self.vector_neutral_flags
        ]
        doc = [self.name, self.image(svc), self.command(svc), sorted(groups)]
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()

    def model_path(self, svc: EmbeddingService) -> str:
        """What the engine loads: the hub id, or the id as a path under the mount."""
        if not svc.model.source.is_local:
            return svc.model.id
        return posixpath.normpath(posixpath.join(MODEL_MOUNT, svc.model.id.lstrip("/")))

    def cache_dir(self, svc: EmbeddingService, sub: str) -> str | None:
        return f"{CACHE_MOUNT}/{sub}" if svc.engine.cache_volume else None

    def env(self, svc: EmbeddingService) -> list[Manifest]:
        env: list[Manifest] = []
        token = svc.model.source.token_secret
        if token is not None:
            env.append(
                {
                    "name": "HF_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}},
                }
            )
        if svc.model.source.is_local:
            # Weights are on a volume: never reach for the hub (no network, no waiting).
            env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
        hf_home = self.cache_dir(svc, "huggingface")
        if hf_home and not svc.model.source.is_local:
            # Hub downloads survive scale to zero, so a wake does not re-download weights.
            env.append({"name": "HF_HOME", "value": hf_home})
        env.extend(self.engine_env(svc))
        return merge_env(env, svc.engine.env)

    def volumes(self, svc: EmbeddingService) -> list[Manifest]:
        vols: list[Manifest] = [
            {
                "name": SHM_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": svc.resources.shared_memory},
            }
        ]
        src = svc.model.source
        if src.kind == "persistentVolumeClaim":
            vols.append(
                {
                    "name": MODEL_VOLUME,
                    "persistentVolumeClaim": {"claimName": src.claim_name, "readOnly": True},
                }
            )
        elif src.kind == "hostPath":
            vols.append(
                {"name": MODEL_VOLUME, "hostPath": {"path": src.host_path, "type": "Directory"}}
            )
        cache = svc.engine.cache_volume
        if cache is not None:
            if cache.claim_name:
                vols.append(
                    {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache.claim_name}}
                )
            else:
                vols.append(
                    {
                        "name": CACHE_VOLUME,
                        "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"},
                    }
                )
        return vols

    def volume_mounts(self, svc: EmbeddingService) -> list[Manifest]:
        mounts: list[Manifest] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
        src = svc.model.source
        if src.is_local:
            mount: Manifest = {"name": MODEL_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": True}
            if src.sub_path:
                mount["subPath"] = src.sub_path
            mounts.append(mount)
        if svc.engine.cache_volume is not None:
            mounts.append({"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT})
        return mounts

    def resources(self, svc: EmbeddingService) -> Manifest:
        r = svc.resources
        # No CPU limit: throttling a tokenizer-bound server only adds latency. Memory
        # request = limit so the pod is not the first evicted under pressure.
        requests: dict[str, Any] = {"cpu": r.cpu, "memory": r.memory}
        limits: dict[str, Any] = {"memory": r.memory}
        if r.gpus > 0:
            requests[GPU_RESOURCE] = r.gpus
            limits[GPU_RESOURCE] = r.gpus
        return {"requests": requests, "limits": limits}

    def tolerations(self, svc: EmbeddingService) -> list[Manifest]:
        if svc.resources.gpus <= 0:
            return []
        return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]

    def lifecycle(self, svc: EmbeddingService) -> Manifest:
        # The kubelet's own sleep action: no shell or sleep binary needed in the image.
        return {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}}

    def termination_grace_seconds(self, svc: EmbeddingService) -> int:
        """Longer than the preStop drain plus the longest request, so none is cut."""
        return math.ceil(svc.engine.request_timeout) + PRESTOP_SLEEP_SECONDS + GRACE_MARGIN_SECONDS

    def container(self, svc: EmbeddingService) -> Manifest:
        """The engine container, named ``engine``."""
        probes = self.probes(svc)
        container: Manifest = {
            "name": "engine",
            "image": self.image(svc),
            "args": self.args(svc),
            "ports": [{"name": "http", "containerPort": self.port, "protocol": "TCP"}],
            "env": self.env(svc),
            "resources": self.resources(svc),
            "volumeMounts": self.volume_mounts(svc),
            "startupProbe": probes.startup.manifest(),
            "readinessProbe": probes.readiness.manifest(),
            "livenessProbe": probes.liveness.manifest(),
            "lifecycle": self.lifecycle(svc),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        command = self.command(svc)
        if command:
            container["command"] = command
        return container
