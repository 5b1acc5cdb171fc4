"""Install the glowplug chart into a cluster and drive an EmbeddingService through it.

Shared by the Helm end-to-end suite (``e2e/tests/test_e2e_helm.py``) and ``make demo``
(``e2e/demo.py``): kubectl and helm bound to one kubeconfig, the example EmbeddingService,
the activator's ready pod addresses, and small JSON helpers. Plain functions over
``kubectl``/``helm`` processes, so the same code works on the local test bed and on kind.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "glowplug"
ACTIVATOR_PORT = 8000
# On the test bed's real node (e2e/cluster/realnode.py): the label and taint that pick it,
# and the SGLang stand-in's image (a TEST DOUBLE, built from images/standin/Dockerfile).
REAL_NODE_SCHEDULING: dict[str, Any] = {
    "nodeSelector": {"glowplug.dev/node": "real"},
    "tolerations": [
        {"key": "glowplug.dev/real-node", "operator": "Equal", "value": "true",
         "effect": "NoSchedule"}
    ],
}  # fmt: skip


def standin_image() -> str:
    """The SGLang stand-in image (TEST DOUBLE) the test bed builds for its real node."""
    from e2e.cluster.images import version

    return f"docker.io/glowplug-testbed/sglang-standin:{version()}"


T = TypeVar("T")


class CommandFailed(subprocess.CalledProcessError):
    """A kubectl or helm command failed; the message carries its stderr."""

    def __str__(self) -> str:
        words = " ".join(str(a) for a in self.cmd[:4])
        return f"`{words} ...` exited {self.returncode}: {(self.stderr or '').strip()[-2000:]}"


class Timeout(Exception):
    """A wait ran out of time; the message says what it waited for and what it last saw."""


def find_tool(name: str, bin_dir: Path | None = None) -> str | None:
    """``$NAME``, then the test-bed binaries, then ``$PATH``."""
    env = os.environ.get(name.upper())
    if env:
        return env
    dirs = [bin_dir] if bin_dir else []
    if os.environ.get("GLOWPLUG_BIN_DIR"):
        dirs.append(Path(os.environ["GLOWPLUG_BIN_DIR"]))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "glowplug" / "bin"
    dirs += sorted(cache.glob("*"), reverse=True)
    for d in dirs:
        if (d / name).is_file():
            return str(d / name)
    return shutil.which(name)


def wait_until(cond: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``cond()`` until it returns something truthy and return it."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = cond()
        if last is not None and last:
            return last
        time.sleep(interval)
    raise Timeout(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


@dataclass
class Kube:
    """kubectl and helm against one cluster."""

    kubeconfig: Path
    kubectl_bin: str
    helm_bin: str

    @classmethod
    def for_kubeconfig(cls, kubeconfig: Path, bin_dir: Path | None = None) -> Kube:
        kubectl = find_tool("kubectl", bin_dir)
        helm = find_tool("helm", bin_dir)
        if kubectl is None or helm is None:
            missing = [n for n, p in (("kubectl", kubectl), ("helm", helm)) if p is None]
            raise FileNotFoundError(
                f"{', '.join(missing)} not found: run `make binaries` or put it on PATH"
            )
        return cls(kubeconfig, kubectl, helm)

    def _run(
        self, argv: list[str], check: bool, input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        proc = subprocess.run(
            argv, capture_output=True, text=True, input=input, timeout=timeout, env=env
        )
        if check and proc.returncode != 0:
            raise CommandFailed(proc.returncode, proc.args, output=proc.stdout, stderr=proc.stderr)
        return proc

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self._run([self.kubectl_bin, *args], check, input, timeout)

    def helm(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return self._run([self.helm_bin, *args], check, None, timeout)

    def get(self, *args: str) -> Any:
        """``kubectl get ... -o json`` decoded; None when the object does not exist."""
        out = self.kubectl("get", *args, "-o", "json", check=False)
        if out.returncode != 0:
            if "NotFound" in out.stderr or "not found" in out.stderr:
                return None
            raise CommandFailed(out.returncode, out.args, output=out.stdout, stderr=out.stderr)
        return json.loads(out.stdout)

    def items(self, *args: str) -> list[dict[str, Any]]:
        doc = self.get(*args)
        return list(doc.get("items", [])) if doc else []

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


# --- the chart ------------------------------------------------------------------------------


def install_chart(
    kube: Kube,
    release: str,
    namespace: str,
    values: dict[str, Any],
    *,
    upgrade: bool = False,
    timeout_s: int = 300,
) -> subprocess.CompletedProcess[str]:
    """``helm install`` (or ``upgrade``) with --wait: returns once every pod is ready."""
    fd, name = tempfile.mkstemp(prefix=f"glowplug-values-{release}-", suffix=".yaml")
    values_file = Path(name)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(values, f)
    try:
        verb = ["upgrade"] if upgrade else ["install", "--create-namespace"]
        return kube.helm(
            *verb, release, str(CHART), "--namespace", namespace, "--values", str(values_file),
            "--wait", "--timeout", f"{timeout_s}s",
            timeout=timeout_s + 60,
        )  # fmt: skip
    finally:
        values_file.unlink(missing_ok=True)


def chart_podmonitor(
    kube: Kube, release: str, namespace: str, values: dict[str, Any], interval: str = "1s"
) -> dict[str, Any]:
    """The chart's PodMonitor for a release, rendered by ``helm template`` with the
    release's values (the test bed has no prometheus-operator CRDs to install it)."""
    values = json.loads(json.dumps(values))
    values.setdefault("metrics", {})["podMonitor"] = {
        "enabled": True,
        "interval": interval,
        "scrapeTimeout": interval,
    }
    fd, name = tempfile.mkstemp(prefix=f"glowplug-values-{release}-", suffix=".yaml")
    values_file = Path(name)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(values, f)
    try:
        out = kube.helm(
            "template", release, str(CHART), "--namespace", namespace,
            "--values", str(values_file), "--show-only", "templates/podmonitor.yaml",
        )  # fmt: skip
    finally:
        values_file.unlink(missing_ok=True)
    return dict(yaml.safe_load(out.stdout))


def activator_service(release: str) -> str:
    return f"{release}-activator" if "glowplug" in release else f"{release}-glowplug-activator"


def activator_cluster_ip(kube: Kube, namespace: str, release: str) -> str:
    """``ip:port`` of the activator's ClusterIP Service (routed by kube-proxy)."""
    svc = kube.get("service", activator_service(release), "-n", namespace)
    if svc is None:
        raise LookupError(f"no Service {namespace}/{activator_service(release)}")
    port = next(p["port"] for p in svc["spec"]["ports"] if p.get("name") == "http")
    return f"{svc['spec']['clusterIP']}:{port}"


def api_key(kube: Kube, namespace: str, release: str) -> str:
    """The chart's default API key (auth.createDefaultKey), read from its Secret."""
    prefix = release if "glowplug" in release else f"{release}-glowplug"
    secret = wait_until(
        lambda: kube.get("secret", f"{prefix}-default-key", "-n", namespace), 60, "the API key"
    )
    return base64.b64decode(secret["data"]["key"]).decode()


def activator_addresses(kube: Kube, namespace: str, release: str) -> list[str]:
    """``ip:port`` of every ready, non-terminating activator pod (from its EndpointSlices,
    as kube-proxy would pick them)."""
    slices = kube.items(
        "endpointslices", "-n", namespace,
        "-l", f"kubernetes.io/service-name={activator_service(release)}",
    )  # fmt: skip
    out: list[str] = []
    for s in slices:
        ports = [p.get("port") for p in s.get("ports") or [] if p.get("name") == "http"]
        port = ports[0] if ports and ports[0] else ACTIVATOR_PORT
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") and not cond.get("terminating"):
                out += [f"{addr}:{port}" for addr in ep.get("addresses", [])]
    return sorted(out)


# --- the example EmbeddingService --------------------------------------------------------------


def example_service(
    name: str,
    namespace: str,
    *,
    engine: str = "sglang",
    idle_timeout: str = "20s",
    load_delay_s: float = 2.0,
    token_secret: str | None = None,
    real_node: bool = False,
) -> dict[str, Any]:
    """A small EmbeddingService. ``engine="sglang"`` asks for one GPU (the test bed maps the
    SGLang image to its CPU stand-in); ``engine="tei"`` runs Hugging Face
    text-embeddings-inference on CPU (gpus 0), the path for kind. ``real_node``: the
    engine runs on the test bed's real node as a container of the stand-in image (a
    TEST DOUBLE) instead of as a process on the process node."""
    spec: dict[str, Any] = {
        "scaling": {"idleTimeout": idle_timeout, "scaleDownDelay": "5s", "maxReplicas": 1},
        "cost": {"gpuHourlyPrice": 0.80, "baselineReplicas": 1},
    }
    if engine == "vllm":
        # The docs example: all-MiniLM-L6-v2 on vLLM's CPU image, real vectors; the test
        # bed runs the real vLLM server from the model cache (python -m e2e.models).
        from e2e import models

        doc = yaml.safe_load((REPO / "docs" / "examples" / "minilm-vllm-cpu.yaml").read_text())
        doc["metadata"] = {"name": name, "namespace": namespace}
        doc["spec"]["model"]["servedName"] = name
        doc["spec"]["model"]["source"] = {"hostPath": {"path": str(models.cache_root())}}
        doc["spec"]["scaling"].update(spec["scaling"])
        doc["spec"]["cost"] = spec["cost"]
        return dict(doc)
    if engine == "tei":
        spec["model"] = {
            "id": "sentence-transformers/all-MiniLM-L6-v2",
            "servedName": name,
            "source": {"huggingFace": {}},
        }
        spec["engine"] = {"name": "tei"}
        spec["resources"] = {"gpus": 0, "cpu": "1", "memory": "2Gi"}
    else:
        spec["model"] = {
            "id": "Qwen/Qwen3-Embedding-0.6B",
            "servedName": name,
            "source": {"huggingFace": {}},
            "dimensions": 1024,
        }
        spec["engine"] = {
            "name": "sglang",
            # Read by the test bed's SGLang stand-in only: how long "loading weights" takes.
            "env": [{"name": "STANDIN_LOAD_DELAY", "value": str(load_delay_s)}],
        }
        spec["resources"] = {"gpus": 1, "gpuType": "L4", "cpu": "1", "memory": "2Gi"}
        if real_node:
            spec["engine"]["image"] = standin_image()
            # The real node has the machine's 2 cores: leave room for the chart's pods.
            spec["resources"]["cpu"] = "500m"
            spec["resources"]["memory"] = "512Mi"
            spec["resources"]["sharedMemory"] = "64Mi"
            spec["pod"] = json.loads(json.dumps(REAL_NODE_SCHEDULING))
    if token_secret:
        spec["model"]["source"] = {
            "huggingFace": {"tokenSecretRef": {"name": token_secret, "key": "token"}}
        }
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def e2e_engine() -> str:
    """The engine the end-to-end suites use: ``GLOWPLUG_E2E_ENGINE`` (sglang, tei or vllm)."""
    engine = os.environ.get("GLOWPLUG_E2E_ENGINE", "sglang")
    if engine not in ("sglang", "tei", "vllm"):
        raise ValueError(f"GLOWPLUG_E2E_ENGINE must be sglang, tei or vllm, not {engine!r}")
    return engine
