"""End to end through the Helm chart: the operator and the activator run as pods with the
chart's own ServiceAccounts and RBAC, and the official OpenAI SDK talks to an activator pod.

    helm install -> kubectl apply an EmbeddingService -> a request wakes it (200) -> it idles
    and scales to zero -> status shows GPU-seconds and savings -> helm upgrade under traffic
    -> helm uninstall leaves nothing behind.

On the local test bed (default) the chart's operator and activator run on the real node
(``e2e/cluster/realnode.py``) as containers of the glowplug image built here, under the
chart's securityContext, resource limits and probes, and requests reach the activator
through its ClusterIP Service (kube-proxy); the engine runs there too, as a container of
the SGLang stand-in image (a TEST DOUBLE). With ``GLOWPLUG_REAL_NODE=0`` everything runs
on the process node instead: the node agent maps ``glowplug/glowplug*`` to the project's
CLI and the SGLang image to its CPU stand-in, and requests go straight to activator pod
IPs, picked from the activator Service's EndpointSlices as kube-proxy would. With
``GLOWPLUG_E2E_KUBECONFIG`` set (``make e2e-kind``) the same suite runs against that
cluster instead, through ``kubectl port-forward``, and ``GLOWPLUG_E2E_ENGINE=tei`` switches
the example to text-embeddings-inference on CPU.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import APIConnectionError, APIStatusError, OpenAI

from e2e.helmkit import (
    REAL_NODE_SCHEDULING,
    Kube,
    Timeout,
    activator_addresses,
    activator_cluster_ip,
    activator_service,
    api_key,
    chart_podmonitor,
    e2e_engine,
    example_service,
    install_chart,
    wait_until,
)
from e2e.prometheus import (
    PodDiscovery,
    Prometheus,
    PrometheusError,
    install_prometheus,
    podmonitor_namespaces,
    podmonitor_scrape_configs,
    run_dashboard_scenario,
)

EXTERNAL = os.environ.get("GLOWPLUG_E2E_KUBECONFIG")
pytestmark = [] if EXTERNAL else [pytest.mark.cluster]

ENGINE = e2e_engine()
# A real TEI pod downloads its model on kind; the stand-in opens its port in seconds.
WAKE_TIMEOUT = 900 if ENGINE == "tei" else 180
IDLE_TIMEOUT_S = 15
GLOWPLUG_KINDS = "deployments,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets"


def chart_values(real_node: bool, **extra: Any) -> dict[str, Any]:
    """Values for the suite's releases; ``GLOWPLUG_E2E_IMAGE`` (repo:tag) picks the image
    (kind: the image `make image` built and `make kind-load` loaded). ``real_node``: both
    components go to the test bed's real node (nodeSelector + toleration)."""
    values: dict[str, Any] = dict(extra)
    image = os.environ.get("GLOWPLUG_E2E_IMAGE", "")
    if image:
        repo, _, tag = image.rpartition(":")
        values["image"] = {"repository": repo, "tag": tag}
    if real_node:
        for comp in ("operator", "activator"):
            values.setdefault(comp, {}).update(REAL_NODE_SCHEDULING)
    return values


@pytest.fixture
def kube(request: pytest.FixtureRequest) -> Kube:
    if EXTERNAL:
        return Kube.for_kubeconfig(Path(EXTERNAL))
    cluster = request.getfixturevalue("cluster")
    request.getfixturevalue("crd_installed")
    return Kube.for_kubeconfig(Path(cluster.kubeconfig), Path(cluster.bin_dir))


@pytest.fixture
def real_node(request: pytest.FixtureRequest) -> bool:
    """True when the chart runs on the test bed's real node (real containers)."""
    if EXTERNAL:
        return False
    return bool(request.getfixturevalue("cluster").has_real_node())


# Run inside a chart container: its uid and gid, a write to /tmp (an emptyDir) and a
# write to the root filesystem, which must fail with EROFS (30).
PROBE_SCRIPT = """
import os
print(os.getuid(), os.getgid())
open("/tmp/probe", "w").write("tmp is writable")
try:
    open("/opt/probe", "w")
    print("root filesystem writable")
except OSError as e:
    print(e.errno)
"""


def assert_real_containers(kube: Kube, namespace: str, release: str) -> None:
    """Every chart pod runs on the real node as a container of the glowplug image, under
    the chart's securityContext (checked from inside: uid, read-only root)."""
    pods = kube.items("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
    assert pods
    for pod in pods:
        name = pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] == "glowplug-realnode", name
        statuses = pod["status"]["containerStatuses"]
        assert all(cs["containerID"].startswith("containerd://") for cs in statuses), name
        out = kube.kubectl("exec", "-n", namespace, name, "--", "python3", "-c", PROBE_SCRIPT)
        uid_gid, errno = out.stdout.split("\n")[:2]
        assert uid_gid == "65532 65532", (name, out.stdout)
        assert errno == "30", (name, out.stdout)  # EROFS: the root filesystem is read-only


@pytest.fixture
def namespaces(kube: Kube) -> Iterator[tuple[str, str]]:
    """(release namespace, application namespace), both fresh, deleted after."""
    suffix = uuid.uuid4().hex[:5]
    names = (f"t-glowplug-system-{suffix}", f"t-search-{suffix}")
    for ns in names:
        kube.kubectl("create", "namespace", ns)
    try:
        yield names
    finally:
        for ns in names:
            kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


class Activators:
    """Base URLs of the activator, as a Service would spread requests over ready pods."""

    def __init__(self, kube: Kube, namespace: str, release: str, via_service: bool = False) -> None:
        self.kube = kube
        self.namespace = namespace
        self.release = release
        # The real node: through the ClusterIP Service, as any in-cluster client would.
        self.via_service = via_service
        self._service = ""
        self._addresses: list[str] = []
        self._lock = threading.Lock()
        self._forward: subprocess.Popen[str] | None = None
        self._forward_url = ""

    def refresh(self) -> list[str]:
        addresses = activator_addresses(self.kube, self.namespace, self.release)
        with self._lock:
            self._addresses = addresses
        return addresses

    def base_url(self) -> str:
        if EXTERNAL:
            return self._port_forward()
        if self.via_service:
            if not self._service:
                self._service = activator_cluster_ip(self.kube, self.namespace, self.release)
            return f"http://{self._service}/v1"
        with self._lock:
            addresses = list(self._addresses)
        if not addresses:
            addresses = wait_until(self.refresh, 60, "a ready activator endpoint")
        return f"http://{random.choice(addresses)}/v1"

    def client(self, timeout: float = 60) -> OpenAI:
        # No SDK retries: every failure counts.
        key = api_key(self.kube, self.namespace, self.release)
        return OpenAI(base_url=self.base_url(), api_key=key, max_retries=0, timeout=timeout)

    def _port_forward(self) -> str:
        """kind: pod IPs are not routable from the host; forward to the Service."""
        if self._forward is not None and self._forward.poll() is None:
            return self._forward_url
        self._forward = subprocess.Popen(
            [
                self.kube.kubectl_bin, "--kubeconfig", str(self.kube.kubeconfig),
                "port-forward", "-n", self.namespace,
                f"svc/{activator_service(self.release)}", ":80",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        assert self._forward.stdout is not None
        line = self._forward.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert m, f"kubectl port-forward said: {line!r}"
        self._forward_url = f"http://127.0.0.1:{m.group(1)}/v1"
        return self._forward_url

    def close(self) -> None:
        if self._forward is not None and self._forward.poll() is None:
            self._forward.terminate()
            self._forward.wait(10)


@contextlib.contextmanager
def diagnose_on_failure(kube: Kube, namespaces: tuple[str, ...]) -> Iterator[None]:
    """On failure print what the cluster looked like, and the pods' logs on the test bed."""
    try:
        yield
    except BaseException:
        for ns in namespaces:
            out = kube.kubectl("get", "all,embeddingservices,events", "-n", ns, check=False)
            print(f"--- {ns} ---\n{out.stdout}{out.stderr}")
        agent_pods = kube.kubeconfig.parent / "agent" / "pods"
        for ns in namespaces:
            for log in sorted(agent_pods.glob(f"{ns}_*/*.log")):
                print(f"--- {log.parent.name}/{log.name} (tail) ---")
                print(log.read_text(errors="replace")[-3000:])
            # Pods on the real node: their logs come through the kubelet.
            for pod in kube.items(
                "pods", "-n", ns, "--field-selector=spec.nodeName=glowplug-realnode"
            ):
                name = pod["metadata"]["name"]
                out = kube.kubectl(
                    "logs", "-n", ns, name, "--all-containers", "--tail=60", check=False
                )
                print(f"--- {ns}/{name} (kubectl logs, tail) ---\n{out.stdout}{out.stderr}")
        raise


def embsvc(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    obj = kube.get("embeddingservice", name, "-n", namespace)
    assert obj is not None, f"EmbeddingService {namespace}/{name} is gone"
    return dict(obj)


def engine_pods(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    return kube.items("pods", "-n", namespace, "-l", f"glowplug.dev/service={name}")


def embed(activators: Activators, model: str, text: str, timeout: float = 60) -> list[float]:
    result = activators.client(timeout).embeddings.create(model=model, input=[text])
    assert result.model == model
    return list(result.data[0].embedding)


class Traffic:
    """Back-to-back requests from a few threads; every outcome is recorded."""

    def __init__(self, activators: Activators, model: str, threads: int = 2) -> None:
        self.activators = activators
        self.model = model
        self.ok = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(threads)]
        self._refresher = threading.Thread(target=self._refresh)

    def __enter__(self) -> Traffic:
        self.activators.refresh()
        self._refresher.start()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in (*self._threads, self._refresher):
            t.join(120)

    def _refresh(self) -> None:
        while not self._stop.wait(0.5):
            # On an error keep the last known endpoints; the next round tries again.
            with contextlib.suppress(subprocess.SubprocessError):
                self.activators.refresh()

    def _loop(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                embed(self.activators, self.model, f"traffic {i} {n}")
                with self._lock:
                    self.ok += 1
            except APIConnectionError as err:
                if EXTERNAL:
                    continue  # the port-forward died with its pod (kind only): reconnect
                with self._lock:
                    self.errors.append(f"{type(err).__name__}: {err}")
            except Exception as err:
                with self._lock:
                    self.errors.append(f"{type(err).__name__}: {err}")
            time.sleep(0.05)


def status_in_phase(kube: Kube, namespace: str, name: str, phase: str) -> dict[str, Any] | None:
    status = embsvc(kube, namespace, name).get("status") or {}
    return dict(status) if status.get("phase") == phase else None


def failed_reason(kube: Kube, namespace: str, name: str) -> str | None:
    for cond in (embsvc(kube, namespace, name).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("reason"))
    return None


def saving(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    status = embsvc(kube, namespace, name).get("status") or {}
    used, baseline = status.get("gpuSeconds", 0), status.get("baselineGpuSeconds", 0)
    return dict(status) if baseline > used > 0 else None


def assert_nothing_left(kube: Kube, namespaces: tuple[str, ...], release: str) -> None:
    try:
        wait_until(lambda: not leftovers(kube, namespaces, release), 180, "no leftovers", 2)
    except Timeout:
        pytest.fail(f"helm uninstall left behind: {leftovers(kube, namespaces, release)}")


def leftovers(kube: Kube, namespaces: tuple[str, ...], release: str) -> list[str]:
    selector = f"app.kubernetes.io/instance={release}"
    found: list[str] = []
    for ns in namespaces:
        for obj in kube.items(GLOWPLUG_KINDS, "-n", ns, "-l", selector):
            found.append(f"{obj['kind']} {ns}/{obj['metadata']['name']}")
        for obj in kube.items("kopfpeerings.kopf.dev", "-n", ns):
            found.append(f"KopfPeering {ns}/{obj['metadata']['name']}")
        for obj in kube.items("pods", "-n", ns):
            found.append(f"Pod {ns}/{obj['metadata']['name']}")
        for obj in kube.items("embeddingservices", "-n", ns):
            found.append(f"EmbeddingService {ns}/{obj['metadata']['name']}")
    for obj in kube.items("clusterroles,clusterrolebindings", "-l", selector):
        found.append(f"{obj['kind']} {obj['metadata']['name']}")
    return found


def test_helm_install_wake_idle_upgrade_uninstall(
    kube: Kube, namespaces: tuple[str, str], real_node: bool
) -> None:
    """Namespaced install mode (Roles): the application namespace differs from the release's."""
    with diagnose_on_failure(kube, namespaces):
        release_ns, app_ns = namespaces
        release, name = "gp", "qwen3-small"
        values = chart_values(real_node, watchNamespaces=[app_ns])
        activators = Activators(kube, release_ns, release, via_service=real_node)
        try:
            started = time.monotonic()
            install_chart(kube, release, release_ns, values)
            print(f"helm install --wait: {time.monotonic() - started:.1f} s")
            if real_node:
                assert_real_containers(kube, release_ns, release)
            # Both components run as pods under their own ServiceAccounts.
            for comp in ("operator", "activator"):
                pods = kube.items(
                    "pods", "-n", release_ns, "-l", f"app.kubernetes.io/component={comp}"
                )
                assert len(pods) == 2, comp
                assert {p["spec"]["serviceAccountName"] for p in pods} == {f"gp-glowplug-{comp}"}

            kube.apply(
                example_service(
                    name,
                    app_ns,
                    engine=ENGINE,
                    idle_timeout=f"{IDLE_TIMEOUT_S}s",
                    token_secret="hf",
                    real_node=real_node,
                )
            )
            # The token Secret is missing: the operator (reading Secrets under the chart's
            # RBAC) reports SecretNotFound, and recovers once the Secret exists.
            failed = wait_until(
                lambda: failed_reason(kube, app_ns, name), 60, "the SecretNotFound condition"
            )
            assert failed == "SecretNotFound"
            kube.kubectl(
                "create", "secret", "generic", "hf", "-n", app_ns, "--from-literal=token=test"
            )
            wait_until(
                lambda: failed_reason(kube, app_ns, name) is None or None,
                60,
                "the Failed condition to clear",
            )
            # The operator renders the Deployment at zero replicas: no GPU held.
            deployment = wait_until(
                lambda: kube.get("deployment", name, "-n", app_ns), 60, "the engine Deployment"
            )
            assert deployment["spec"]["replicas"] == 0
            assert not engine_pods(kube, app_ns, name)

            # The first request wakes the service through the activator and is answered.
            wait_until(activators.refresh, 60, "ready activator endpoints")
            models = [m.id for m in activators.client().models.list().data]
            assert name in models
            started = time.monotonic()
            vector = embed(activators, name, "hello from the helm suite", timeout=WAKE_TIMEOUT)
            print(f"first request (woke the service): {time.monotonic() - started:.1f} s")
            assert len(vector) > 0
            if real_node:
                (pod,) = engine_pods(kube, app_ns, name)
                assert pod["spec"]["nodeName"] == "glowplug-realnode"
                assert pod["status"]["containerStatuses"][0]["image"].endswith(
                    "sglang-standin:" + pod["spec"]["containers"][0]["image"].rsplit(":", 1)[1]
                )
            obj = embsvc(kube, app_ns, name)
            assert obj["spec"]["replicas"] >= 1
            status = wait_until(
                lambda: status_in_phase(kube, app_ns, name, "Ready"), 60, "phase Ready"
            )
            assert status["readyReplicas"] >= 1

            # helm upgrade with changed values: both Deployments roll while requests flow.
            old_pods = {
                p["metadata"]["uid"]
                for p in kube.items("pods", "-n", release_ns, "-l", "app.kubernetes.io/instance=gp")
            }
            for comp in ("activator", "operator"):
                values.setdefault(comp, {})["podAnnotations"] = {"e2e.glowplug.dev/revision": "2"}
            with Traffic(activators, name) as traffic:
                install_chart(kube, release, release_ns, values, upgrade=True)
                time.sleep(3)  # and a little traffic on the new pods alone
            print(
                f"helm upgrade under traffic: {traffic.ok} requests, {len(traffic.errors)} errors"
            )
            assert not traffic.errors, traffic.errors[:5]
            assert traffic.ok > 0
            new_pods = {
                p["metadata"]["uid"]
                for p in kube.items("pods", "-n", release_ns, "-l", "app.kubernetes.io/instance=gp")
                if not p["metadata"].get("deletionTimestamp")  # old ones may still drain
            }
            assert not old_pods & new_pods, "helm upgrade did not roll the pods"

            # Idle: back to zero replicas, no engine pod, and the ledger shows what was saved.
            wait_until(
                lambda: (
                    embsvc(kube, app_ns, name)["spec"].get("replicas") == 0
                    and not engine_pods(kube, app_ns, name)
                ),
                IDLE_TIMEOUT_S + 180,
                "scale to zero after the idle timeout",
                interval=2,
            )
            wait_until(lambda: status_in_phase(kube, app_ns, name, "Idle"), 60, "phase Idle")
            if ENGINE == "tei":
                # The CPU engine (gpus: 0) holds no GPU: nothing to count, nothing saved.
                status = embsvc(kube, app_ns, name).get("status") or {}
                assert status.get("gpuSeconds", 0) == 0
            else:
                # At zero the always-on baseline keeps growing and the GPU-seconds do not;
                # the ledger reaches status at its next checkpoint.
                status = wait_until(lambda: saving(kube, app_ns, name), 90, "savings", 2)
                print(
                    f"ledger: gpuSeconds {status['gpuSeconds']:.1f},"
                    f" baselineGpuSeconds {status['baselineGpuSeconds']:.1f}"
                )

            # Delete the service while the operator still runs: its Deployment goes with it.
            kube.kubectl(
                "delete", "embeddingservice", name, "-n", app_ns, "--wait", "--timeout=120s"
            )
        finally:
            activators.close()
            kube.helm("uninstall", release, "--namespace", release_ns, "--wait", check=False)

        # Nothing left behind but the CRDs (Helm never deletes what crds/ installed).
        assert_nothing_left(kube, namespaces, release)
        assert kube.get("crd", "embeddingservices.glowplug.dev") is not None


def test_helm_cluster_wide_install(
    kube: Kube, namespaces: tuple[str, str], real_node: bool
) -> None:
    """Cluster-wide install mode (ClusterRoles): a service in any namespace is rendered and
    listed; uninstall removes the cluster-scoped objects too."""
    with diagnose_on_failure(kube, namespaces):
        release_ns, app_ns = namespaces
        release, name = "gpc", "minilm"
        activators = Activators(kube, release_ns, release, via_service=real_node)
        try:
            install_chart(kube, release, release_ns, chart_values(real_node))
            if real_node:
                assert_real_containers(kube, release_ns, release)
            assert kube.get("clusterkopfpeering", "glowplug") is not None
            kube.apply(example_service(name, app_ns, engine=ENGINE, real_node=real_node))
            wait_until(
                lambda: kube.get("deployment", name, "-n", app_ns), 60, "the engine Deployment"
            )
            wait_until(activators.refresh, 60, "ready activator endpoints")
            wait_until(
                lambda: name in [m.id for m in activators.client().models.list().data],
                60,
                f"{name} in /v1/models",
            )
            kube.kubectl(
                "delete", "embeddingservice", name, "-n", app_ns, "--wait", "--timeout=120s"
            )
        finally:
            activators.close()
            kube.helm("uninstall", release, "--namespace", release_ns, "--wait", check=False)
        assert_nothing_left(kube, namespaces, release)
        assert kube.get("clusterkopfpeering", "glowplug") is None


def test_helm_prometheus_scrapes_the_chart(
    kube: Kube, namespaces: tuple[str, str], real_node: bool, tmp_path: Path
) -> None:
    """A real Prometheus scrapes the operator and activator pods the chart installed,
    found through the API server as the chart's PodMonitor describes them (the jobs
    prometheus-operator would generate from it; the pod discovery is e2e/poddiscovery.py,
    a TEST DOUBLE of Prometheus' Kubernetes discovery, which Debian's build lacks), loads
    the chart's recording rules, and every dashboard panel's query returns data; GPU-hours
    used and saved agree with the EmbeddingService's status within 2 %."""
    if EXTERNAL:
        pytest.skip("Prometheus runs on the host and scrapes pod IPs: the local test bed only")
    if ENGINE != "sglang":
        pytest.skip("the ledger's check needs a GPU service (the sglang stand-in)")
    try:
        binary = install_prometheus()
    except PrometheusError as err:
        pytest.skip(str(err))
    with diagnose_on_failure(kube, namespaces):
        release_ns, app_ns = namespaces
        release, name = "gpm", "watched"
        values = chart_values(real_node, watchNamespaces=[app_ns])
        activators = Activators(kube, release_ns, release, via_service=real_node)
        prom: Prometheus | None = None
        pods: PodDiscovery | None = None
        try:
            install_chart(kube, release, release_ns, values)
            monitor = chart_podmonitor(kube, release, release_ns, values)
            pods = PodDiscovery(kube.kubeconfig, podmonitor_namespaces(monitor), tmp_path / "sd")
            prom = Prometheus(
                binary, tmp_path / "prometheus", podmonitor_scrape_configs(monitor, pods.targets)
            )
            svc = example_service(name, app_ns, idle_timeout="5s", real_node=real_node)
            svc["spec"]["cache"] = {"enabled": True}
            # As in test_prometheus_cluster: no fixed `dimensions` (the activator would
            # refuse a bad one itself, a rejection), matryoshka so that it reaches the engine,
            # whose 400 is the error the "Errors by code" panel shows.
            svc["spec"]["model"].pop("dimensions", None)
            svc["spec"]["model"]["matryoshka"] = True
            kube.apply(svc)
            wait_until(activators.refresh, 60, "ready activator endpoints")
            wait_until(
                lambda: name in [m.id for m in activators.client().models.list().data],
                60,
                f"{name} in /v1/models",
            )

            def send(text: str, **body: Any) -> int:
                client = activators.client(timeout=WAKE_TIMEOUT)
                try:
                    client.embeddings.create(model=name, input=[text], **body)
                except APIStatusError as err:
                    return int(err.status_code)
                return 200

            run = run_dashboard_scenario(prom, app_ns, send, lambda: embsvc(kube, app_ns, name))
            print(run.ledger)
            assert run.problems() == [], run.ledger
            kube.kubectl(
                "delete", "embeddingservice", name, "-n", app_ns, "--wait", "--timeout=120s"
            )
        finally:
            if prom is not None:
                prom.stop()
            if pods is not None:
                pods.stop()
            activators.close()
            kube.helm("uninstall", release, "--namespace", release_ns, "--wait", check=False)
        assert_nothing_left(kube, namespaces, release)
