"""Faults on the test bed (issue 11, 7): the API server black-holed (SIGSTOP) during warm
traffic and during a wake, the API server restarted, an activator killed under load, the
operator killed during a wake. Each test stops by itself and puts back what it broke.

Real processes throughout: the test bed's API server, scheduler and node agent, ``glowplug
operator`` and ``glowplug activator`` as host processes, the SGLang stand-in (a test double
of SGLang) as the engine, and for the operator test the node-provisioner TEST DOUBLE
(``e2e.node.provisioner_double``) so that the wake waits long enough to be interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.cluster.procs import Proc, launch
from e2e.tests import test_coldstart_cluster as cold
from e2e.tests.conftest import OperatorFactory, OperatorProcess
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, apply, get, wait_for
from e2e.tests.test_coldstart_cluster import ProvisionerProcess, post, wait_routed
from e2e.tests.test_coldstart_cluster import service as pool_service

pytestmark = pytest.mark.cluster

# The cold-start suite's node-provisioner fixture, found by pytest in this namespace.
provisioner = cold.provisioner

BLACKOUT_S = float(os.environ.get("GLOWPLUG_TEST_BLACKOUT", "40"))


def service(name: str, *, replicas: int = 0, **scaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name},
        "spec": {
            "model": {"id": "test/stand-in-model", "source": {"huggingFace": {}}},
            "engine": {"env": [{"name": "STANDIN_DELAY_MS", "value": "2"}]},
            "scaling": {"maxReplicas": 2, "idleTimeout": "10m", **scaling},
            "replicas": replicas,
        },
    }


def apiserver(cluster: Cluster) -> Proc:
    state = json.loads((cluster.state_dir / "state.json").read_text())
    (found,) = [Proc.from_json(p) for p in state["procs"] if p["name"] == "kube-apiserver"]
    assert found.alive()
    return found


@contextlib.contextmanager
def black_hole(cluster: Cluster) -> Iterator[None]:
    """SIGSTOP the API server: connections are accepted by the kernel and never answered,
    like a network that drops packets. SIGCONT on the way out, whatever happens."""
    proc = apiserver(cluster)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def restart_apiserver(cluster: Cluster) -> None:
    """Stop the API server (SIGTERM) and start it again with the same command line and
    environment, recording the new process where ``cluster down`` will find it."""
    proc = apiserver(cluster)
    argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    env_raw = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    env = dict(e.decode().split("=", 1) for e in env_raw if b"=" in e)
    proc.stop()
    new = launch(
        "kube-apiserver",
        [a.decode() for a in argv],
        cluster.state_dir / "logs" / "kube-apiserver.log",
        env=env,
    )
    with cluster._lock():
        state = json.loads((cluster.state_dir / "state.json").read_text())
        state["procs"] = [
            new.to_json() if p["name"] == "kube-apiserver" else p for p in state["procs"]
        ]
        cluster._write_state(state)


def api_ready(cluster: Cluster) -> bool:
    out = cluster.kubectl("get", "--raw", "/readyz", check=False)
    return out.returncode == 0


class Traffic:
    """Sequential requests from N threads until stopped: statuses and latencies."""

    def __init__(self, urls: list[str], model: str, threads: int = 2, retry: bool = False):
        self.urls = urls
        self.model = model
        self.retry = retry
        self.stop = threading.Event()
        self.results: list[tuple[int, float]] = []  # (status or 0, seconds)
        self.connection_errors = 0
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]
        for t in self.threads:
            t.start()

    def _one(self, url: str) -> int:
        body = json.dumps({"model": self.model, "input": "hello"}).encode()
        req = urllib.request.Request(
            f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def _run(self, i: int) -> None:
        n = i
        while not self.stop.is_set():
            t0 = time.monotonic()
            status = 0
            for attempt in range(len(self.urls) if self.retry else 1):
                url = self.urls[(n + attempt) % len(self.urls)]
                try:
                    status = self._one(url)
                    break
                except OSError:
                    with self.lock:
                        self.connection_errors += 1
            n += 1
            with self.lock:
                self.results.append((status, time.monotonic() - t0))
            time.sleep(0.02)

    def finish(self) -> tuple[int, int, float]:
        self.stop.set()
        for t in self.threads:
            t.join(150)
        ok = sum(1 for s, _ in self.results if s == 200)
        worst = max((d for _, d in self.results), default=0.0)
        return ok, len(self.results), worst


@pytest.fixture
def activator(
    cluster: Cluster, namespace: str, operator_factory: OperatorFactory, tmp_path: Path
) -> Iterator[tuple[ActivatorProcess, OperatorProcess]]:
    if not GLOWPLUG.exists():
        pytest.skip(f"{GLOWPLUG} is missing: run `make install`")
    act = ActivatorProcess(cluster, namespace, tmp_path / "activator.log", drain_seconds=0.2)
    act.start()
    op = operator_factory(
        "--standalone", "--namespace", namespace, "--metrics-port", "0",
        "--activator-url", act.url,
    )  # fmt: skip
    try:
        yield act, op
    finally:
        act.stop()
        print(f"\n--- activator log tail ---\n{act.log()[-3000:]}")


def warm(cluster: Cluster, namespace: str, act: ActivatorProcess, name: str) -> None:
    apply(cluster, namespace, service(name, replicas=1))
    wait_routed(act, name)
    wait_for(lambda: post(act.url, name, timeout=60)[0] == 200, 120, what=f"{name} warm")


def outage_lines(log: str) -> tuple[int, int]:
    return log.count("the API server is unreachable"), log.count("the API server answers again")


def test_api_server_black_holed_during_warm_traffic(
    cluster: Cluster, namespace: str, activator: tuple[ActivatorProcess, OperatorProcess]
) -> None:
    act, op = activator
    warm(cluster, namespace, act, "warmfault")
    traffic = Traffic([act.url], "warmfault")
    time.sleep(2)
    with black_hole(cluster):
        time.sleep(BLACKOUT_S)
    wait_for(lambda: api_ready(cluster), 60, what="API server ready again")
    time.sleep(5)  # the operator's ticks notice the recovery
    ok, total, worst = traffic.finish()
    print(
        f"\nAPI server stopped {BLACKOUT_S:g} s, warm traffic: {ok}/{total} 200, max {worst:.3f} s"
    )
    assert total > 0 and ok == total
    # the outage is logged once and its end once, not per service per second
    down, up = outage_lines(op.log())
    assert down <= 1 and up == down, (down, up)
    down, up = outage_lines(act.log())
    assert down <= 1 and up == down, (down, up)


def test_api_server_black_holed_during_a_wake(
    cluster: Cluster, namespace: str, activator: tuple[ActivatorProcess, OperatorProcess]
) -> None:
    act, _op = activator
    apply(cluster, namespace, service("wakefault"))
    wait_routed(act, "wakefault")
    result: list[tuple[int, Any, dict[str, str]]] = []
    t0 = time.monotonic()
    thread = threading.Thread(target=lambda: result.append(post(act.url, "wakefault")))
    with black_hole(cluster):
        thread.start()  # the wake's scale write meets a silent API server
        time.sleep(BLACKOUT_S)
    thread.join(300)
    took = time.monotonic() - t0
    assert result, "the held request never finished"
    status, body, _ = result[0]
    print(f"\nwake during a {BLACKOUT_S:g} s API outage: {status} after {took:.1f} s")
    assert status == 200, body


def test_api_server_restart(
    cluster: Cluster, namespace: str, activator: tuple[ActivatorProcess, OperatorProcess]
) -> None:
    act, op = activator
    warm(cluster, namespace, act, "restartfault")
    traffic = Traffic([act.url], "restartfault")
    time.sleep(1)
    op_before, act_before = len(op.log()), len(act.log())  # count from the restart on
    restart_apiserver(cluster)
    wait_for(lambda: api_ready(cluster), 120, what="API server back")
    # the watches resume: a service created after the restart is routed and wakes
    apply(cluster, namespace, service("afterrestart"))
    wait_routed(act, "afterrestart")
    status, body, _ = post(act.url, "afterrestart", timeout=180)
    ok, total, worst = traffic.finish()
    print(f"\nAPI server restart: warm {ok}/{total} 200 (max {worst:.3f} s); new service {status}")
    assert status == 200, body
    assert total > 0 and ok == total
    for log in (op.log()[op_before:], act.log()[act_before:]):
        down, up = outage_lines(log)
        assert down <= 1 and up == down, (down, up)
    # the restart is one outage, not a failure per watch
    assert "watch failed" not in act.log()[act_before:]


def test_activator_killed_under_load(
    cluster: Cluster,
    namespace: str,
    activator: tuple[ActivatorProcess, OperatorProcess],
    tmp_path: Path,
) -> None:
    """Two activator replicas behind a client that retries on another replica when a
    connection fails (as clients do through a Service with several endpoints)."""
    act, _op = activator
    second = ActivatorProcess(cluster, namespace, tmp_path / "activator-2.log", drain_seconds=0.2)
    second.start()
    try:
        warm(cluster, namespace, act, "killfault")
        wait_routed(second, "killfault")
        traffic = Traffic([act.url, second.url], "killfault", threads=4, retry=True)
        time.sleep(3)
        assert second.proc is not None
        second.proc.send_signal(signal.SIGKILL)
        second.proc.wait(30)
        time.sleep(3)
        ok, total, worst = traffic.finish()
        print(
            f"\nactivator killed under load: {ok}/{total} 200 after retries,"
            f" {traffic.connection_errors} killed/refused connections retried, max {worst:.3f} s"
        )
        assert total > 0 and ok == total
    finally:
        second.stop()


def test_operator_killed_during_a_wake(
    cluster: Cluster,
    namespace: str,
    operator_factory: OperatorFactory,
    provisioner: Callable[..., ProvisionerProcess],
    tmp_path: Path,
) -> None:
    act = ActivatorProcess(cluster, namespace, tmp_path / "activator.log", drain_seconds=0.2)
    act.start()
    args = ("--standalone", "--namespace", namespace, "--metrics-port", "0",
            "--activator-url", act.url)  # fmt: skip
    try:
        first = operator_factory(*args)
        pool = f"gpu-{namespace[-5:]}"
        provisioner(pool=pool, delay=20)
        apply(cluster, namespace, pool_service("opkill", pool))
        wait_routed(act, "opkill")
        result: list[tuple[int, Any, dict[str, str]]] = []
        thread = threading.Thread(target=lambda: result.append(post(act.url, "opkill")))
        thread.start()

        def waiting() -> bool:
            wake = (get(cluster, "embsvc", "opkill", namespace).get("status") or {}).get("wake")
            return bool(wake and wake.get("phase") == "WaitingForNode")

        wait_for(waiting, 60, what="WaitingForNode")
        first.proc.send_signal(signal.SIGKILL)  # no cleanup, no goodbye
        first.proc.wait(30)
        operator_factory(*args)  # a new one takes over mid-wake
        thread.join(300)
        assert result and result[0][0] == 200, result

        def finished() -> list[str] | None:
            last = (get(cluster, "embsvc", "opkill", namespace).get("status") or {}).get("lastWake")
            phases = [e["phase"] for e in (last or {}).get("timeline") or []]
            return phases if phases and phases[-1] in ("Ready", "FirstResponse") else None

        phases = wait_for(finished, 60, what="lastWake after the restart")
        # the new operator continued the same wake: its timeline starts where it was
        assert phases[0] == "WaitingForNode", phases
        assert get(cluster, "embsvc", "opkill", namespace)["spec"]["replicas"] == 1
    finally:
        act.stop()
        print(f"\n--- activator log tail ---\n{act.log()[-2000:]}")
