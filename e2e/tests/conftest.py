"""Fixtures for tests against the local Kubernetes test bed (``e2e.cluster``).

- ``cluster`` (session): builds or reuses the binaries, starts the cluster or reuses a
  running one, and at the end stops it only if this session started it and no other
  session is still using it. Attributes: ``kubeconfig``, ``server``, ``bin_dir``,
  ``kubectl(*args, check=True)``, ``api(method, path, body)``, ``state_dir``.
- ``namespace``: a fresh namespace per test (with its default ServiceAccount), deleted after.
- ``crd_installed``: the EmbeddingService CRD from ``crds/`` applied and Established.
- ``operator_process``: ``glowplug operator --standalone --namespace <the test's namespace>
  --metrics-port 0`` as a subprocess with KUBECONFIG; stopped by pid after the test.
- ``operator_factory``: ``start(*args)`` runs ``glowplug operator *args`` (e.g. cluster-wide),
  every one stopped by pid after the test.
- ``e2e.tests.helpers``: ``wait_for``, ``apply``, ``get``, ``is_ready``, ``container_pid``,
  ``endpoint_ips``.

Tests that need the cluster carry ``@pytest.mark.cluster``; they are skipped, loudly, when
the Go toolchain is missing (the binaries cannot be built) or when not running as root
(pod network namespaces need it). ``-m "not cluster"`` deselects them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e2e.cluster import REPO, Cluster, cached_bin_dir, ensure_binaries
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, wait_for

CRD_DIR = REPO / "crds"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the test bed needs root (it makes a network namespace per pod)"
    if shutil.which("go") is None and cached_bin_dir() is None:
        return "the Go toolchain (go) is missing, so the test-bed binaries cannot be built"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    if reason is None:
        return
    cluster_items = [i for i in items if i.get_closest_marker("cluster")]
    if not cluster_items:
        return
    banner = f"SKIPPING {len(cluster_items)} CLUSTER TESTS: {reason}"
    sys.stderr.write(f"\n{'!' * len(banner)}\n{banner}\n{'!' * len(banner)}\n")
    for item in cluster_items:
        item.add_marker(pytest.mark.skip(reason=f"cluster test skipped: {reason}"))


@contextlib.contextmanager
def _live_output(config: pytest.Config) -> Iterator[None]:
    """Let progress lines (a cold build takes minutes) reach the terminal uncaptured."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
        return
    with capman.global_and_fixture_disabled():
        yield


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Iterator[Cluster]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with _live_output(pytestconfig):
        bin_dir = ensure_binaries()
    c = Cluster(bin_dir=bin_dir)
    c.attach()
    try:
        with _live_output(pytestconfig):
            c.up(started_by="pytest")
        yield c
    finally:
        with _live_output(pytestconfig):
            c.release()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    base = request.node.name.lower().replace("_", "-")
    name = "t-" + "".join(ch for ch in base if ch.isalnum() or ch == "-")[:40].strip("-")
    name = f"{name}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)

    def sa_ready() -> bool:
        out = cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False)
        return out.returncode == 0

    wait_for(sa_ready, 30, what=f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def crd_installed(cluster: Cluster) -> Path:
    crds = sorted(CRD_DIR.glob("*.yaml"))
    if not crds:
        pytest.skip("no CRD in crds/ yet")
    for f in crds:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/embeddingservices.glowplug.dev",
    )  # fmt: skip
    return crds[0]


class OperatorProcess:
    """``glowplug operator`` running against the test bed; output in ``log_path``."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


OperatorFactory = Callable[..., OperatorProcess]


@pytest.fixture
def operator_factory(
    cluster: Cluster, crd_installed: Path, tmp_path: Path
) -> Iterator[OperatorFactory]:
    """Start ``glowplug operator ARGS...`` (as many as a test needs); all stopped after."""
    exe = REPO / ".venv" / "bin" / "glowplug"
    if not exe.exists():
        pytest.skip(f"{exe} is missing: run `make install`")
    started: list[OperatorProcess] = []

    def start(*args: str) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), PYTHONUNBUFFERED="1")
        env.pop("KUBERNETES_SERVICE_HOST", None)  # never in-cluster config by accident
        log_path = tmp_path / f"operator-{len(started)}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [str(exe), "operator", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        op = OperatorProcess(proc, log_path)
        started.append(op)
        return op

    try:
        yield start
    finally:
        for op in started:
            op.stop()
            sys.stderr.write(f"\n--- operator log ({op.log_path}) tail ---\n{op.log()[-2000:]}\n")


@pytest.fixture
def operator_process(operator_factory: OperatorFactory, namespace: str) -> OperatorProcess:
    """``glowplug operator --standalone`` watching only this test's namespace.

    Scoped to the namespace (and with metrics off) so that test sessions sharing one
    cluster never run two operators over the same objects or ports.
    """
    extra = json.loads(os.environ.get("GLOWPLUG_TEST_OPERATOR_ARGS", "[]"))
    return operator_factory("--standalone", "--namespace", namespace, "--metrics-port", "0", *extra)


@pytest.fixture
def activator(
    cluster: Cluster, namespace: str, crd_installed: Path, tmp_path: Path
) -> Iterator[ActivatorProcess]:
    """One activator process on the test namespace (files that need another shape of
    activator define their own fixture of this name)."""
    if not GLOWPLUG.exists():
        pytest.skip(f"{GLOWPLUG} is missing: run `make install`")
    act = ActivatorProcess(cluster, namespace, tmp_path / "activator.log")
    act.start()
    try:
        yield act
    finally:
        act.stop()
        print(f"\n--- activator log tail ---\n{act.log()[-1500:]}")
