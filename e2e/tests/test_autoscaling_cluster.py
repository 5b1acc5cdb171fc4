"""The autoscaler, scale to zero and the GPU-hour ledger on the test bed.

Real processes throughout: the API server and node agent of the test bed, the SGLang
stand-in as engine pods, ``glowplug activator`` as host processes on 127.0.0.1 (they
reach pod IPs directly), and ``glowplug operator`` reading their ``/stats`` through
``--activator-url``. Timeouts are seconds long so a test takes a minute or two.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.tests.conftest import OperatorFactory, OperatorProcess
from e2e.tests.helpers import GLOWPLUG, ActivatorProcess, apply, wait_for
from glowplug.kube.timefmt import parse_time

pytestmark = pytest.mark.cluster

NAME = "embed"


def embedding_service(
    *,
    replicas: int = 0,
    delay_ms: int = 0,
    prewarm: list[dict[str, Any]] | None = None,
    **scaling: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"id": "test/stand-in-model", "source": {"huggingFace": {}}},
            "engine": {"env": [{"name": "STANDIN_DELAY_MS", "value": str(delay_ms)}]},
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "idleTimeout": "4s",
                "scaleDownDelay": "3s",
                "targetConcurrency": 8,
                "prewarm": prewarm or [],
                **scaling,
            },
            "replicas": replicas,
            "cost": {"baselineReplicas": 1},
        },
    }  # fmt: skip


@pytest.fixture
def activators(
    cluster: Cluster, namespace: str, crd_installed: Path, tmp_path: Path
) -> Iterator[Callable[[int], list[ActivatorProcess]]]:
    if not GLOWPLUG.exists():
        pytest.skip(f"{GLOWPLUG} is missing: run `make install`")
    made: list[ActivatorProcess] = []

    def start(n: int) -> list[ActivatorProcess]:
        out = []
        for _ in range(n):
            a = ActivatorProcess(cluster, namespace, tmp_path / f"activator-{len(made)}.log")
            made.append(a)
            a.start()
            out.append(a)
        return out

    try:
        yield start
    finally:
        for a in made:
            a.stop()
            print(f"\n--- activator log {a.log_path} tail ---\n{a.log()[-1500:]}")


def start_operator(
    factory: OperatorFactory, namespace: str, acts: list[ActivatorProcess], *extra: str
) -> OperatorProcess:
    urls = [arg for a in acts for arg in ("--activator-url", a.url)]
    return factory(
        "--standalone", "--namespace", namespace, "--metrics-port", "0",
        "--ledger-checkpoint", "2", *urls, *extra,
    )  # fmt: skip


def embed(url: str, text: str = "hello", timeout: float = 120) -> int:
    body = json.dumps({"model": NAME, "input": text}).encode()
    req = urllib.request.Request(
        f"{url}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            json.load(resp)
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def obj(cluster: Cluster, namespace: str) -> dict[str, Any]:
    path = f"/apis/glowplug.dev/v1alpha1/namespaces/{namespace}/embeddingservices/{NAME}"
    return dict(cluster.api("GET", path))


def desired(cluster: Cluster, namespace: str) -> int:
    return int(obj(cluster, namespace)["spec"].get("replicas") or 0)


def pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{namespace}/pods?labelSelector=glowplug.dev%2Fservice%3D{NAME}"
    return list(cluster.api("GET", path)["items"])


class ReplicaRecorder:
    """Samples spec.replicas every 0.2 s in a thread: (time, replicas) pairs."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append((time.time(), desired(self.cluster, self.namespace)))
            self._stop.wait(0.2)

    def __enter__(self) -> ReplicaRecorder:
        self._thread.start()
        # The state before the test acts is a sample too: on a loaded machine the first
        # kubectl round trip took longer than the wake it should precede ([1, 5, 3, 0]).
        wait_for(lambda: bool(self.samples), 60, what="the first replicas sample")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        # One last sample: a wait that just saw a change may have beaten the sampler to it.
        with contextlib.suppress(Exception):
            self.samples.append((time.time(), desired(self.cluster, self.namespace)))

    def values(self) -> list[int]:
        out: list[int] = []
        for _, r in self.samples:
            if not out or out[-1] != r:
                out.append(r)
        return out

    def first_time(self, value: int, after: float = 0.0) -> float | None:
        return next((t for t, r in self.samples if r == value and t >= after), None)


def wait_replicas(cluster: Cluster, namespace: str, value: int, timeout: float) -> None:
    wait_for(lambda: desired(cluster, namespace) == value, timeout, what=f"replicas={value}")


# --- the tests -----------------------------------------------------------------------------


def test_no_scale_to_zero_before_idle_timeout_and_soon_after(
    cluster: Cluster, namespace: str, activators: Any, operator_factory: OperatorFactory
) -> None:
    [act] = activators(1)
    start_operator(operator_factory, namespace, [act])
    apply(cluster, namespace, embedding_service(idleTimeout="6s"))
    assert embed(act.url) == 200  # wakes it
    assert embed(act.url) == 200
    finished = act.stats(NAME)["lastRequestFinished"]
    assert finished is not None
    with ReplicaRecorder(cluster, namespace) as rec:
        wait_replicas(cluster, namespace, 0, 30)
    zero_at = rec.first_time(0)
    assert zero_at is not None
    # Never before idleTimeout (the operator ticks each second; it may not act early).
    assert zero_at >= finished + 6.0, (zero_at - finished, rec.samples)
    # "Within a few seconds after": the tick, the CAS write and this poll.
    assert zero_at <= finished + 6.0 + 5.0, zero_at - finished
    # Persisted for restarts: the last finish, or a busy tick just after it (the stats
    # snapshot is up to half a second old), never earlier.
    persisted = parse_time(obj(cluster, namespace)["status"].get("lastRequestTime"))
    assert persisted is not None and finished - 0.01 <= persisted <= finished + 1.5


def test_burst_jumps_to_backlog_replicas_and_scale_down_waits(
    cluster: Cluster, namespace: str, activators: Any, operator_factory: OperatorFactory
) -> None:
    [act] = activators(1)
    apply(
        cluster, namespace,
        embedding_service(delay_ms=2500, maxReplicas=5, targetConcurrency=8,
                          scaleDownDelay="8s", idleTimeout="4s"),
    )  # fmt: skip
    with ReplicaRecorder(cluster, namespace) as rec, ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(embed, act.url, f"text {i}") for i in range(40)]
        # The operator starts once all 40 are held (the activator has woken it to 1), so
        # its first decision sees the whole backlog.
        wait_for(lambda: act.stats(NAME).get("queued") == 40, 60, what="40 held requests")
        start_operator(operator_factory, namespace, [act])
        codes = [f.result() for f in futures]
        wait_replicas(cluster, namespace, 0, 60)
    assert codes == [200] * 40
    values = rec.values()
    # 40 held / 8 per replica = 5, straight from the wake's 1 (no 2, 3, 4 on the way up).
    assert 5 in values, values
    assert values[: values.index(5) + 1] == [0, 1, 5], values
    at_five = rec.first_time(5)
    assert at_five is not None
    first_drop = next((t for t, r in rec.samples if t > at_five and r < 5), None)
    assert first_drop is not None, values
    # The write of 5 saw all 40 requests, so demand falls only after it, and a replica
    # goes only after scaleDownDelay (8 s) of lower demand. (The first pod may have been
    # serving since before that write, so its 2.5 s requests give no further margin.)
    # 0.5 s covers the sampler seeing 5 late (0.2 s period plus a kubectl round trip).
    assert first_drop - at_five >= 8.0 - 0.5, (first_drop - at_five, values)


def test_twenty_wake_idle_cycles_with_requests_at_the_scale_to_zero_instant(
    cluster: Cluster, namespace: str, activators: Any, operator_factory: OperatorFactory
) -> None:
    [act] = activators(1)
    start_operator(operator_factory, namespace, [act])
    idle = 2.0
    apply(cluster, namespace, embedding_service(idleTimeout="2s", scaleDownDelay="1s"))
    offsets = [-0.4, -0.2, -0.1, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
    errors: list[tuple[int, int]] = []
    for cycle in range(20):
        wait_replicas(cluster, namespace, 0, 30)
        code = embed(act.url, f"wake {cycle}")  # from zero
        if code != 200:
            errors.append((cycle, code))
        finished = act.stats(NAME)["lastRequestFinished"]
        aim = finished + idle + offsets[cycle % len(offsets)]
        time.sleep(max(0.0, aim - time.time()))
        code = embed(act.url, f"at the edge {cycle}")
        if code != 200:
            errors.append((cycle, code))
    assert errors == []


def test_operator_restart_under_load_keeps_replicas(
    cluster: Cluster, namespace: str, activators: Any, operator_factory: OperatorFactory
) -> None:
    [act] = activators(1)
    op = start_operator(operator_factory, namespace, [act])
    apply(
        cluster, namespace,
        embedding_service(delay_ms=1000, maxReplicas=3, targetConcurrency=2,
                          scaleDownDelay="3s", idleTimeout="3s"),
    )  # fmt: skip
    stop = threading.Event()
    codes: list[int] = []

    def client(i: int) -> None:
        while not stop.is_set():
            codes.append(embed(act.url, f"load {i}"))

    with ThreadPoolExecutor(6) as pool:
        for i in range(6):
            pool.submit(client, i)
        try:
            wait_replicas(cluster, namespace, 3, 60)
            with ReplicaRecorder(cluster, namespace) as rec:
                op.proc.send_signal(signal.SIGKILL)
                op.proc.wait()
                time.sleep(2)
                start_operator(operator_factory, namespace, [act])
                time.sleep(12)  # more than scaleDownDelay and idleTimeout
        finally:
            stop.set()
    assert min(r for _, r in rec.samples) == 3, rec.values()
    assert codes and set(codes) == {200}


def test_activator_restart_causes_no_premature_scale_down(
    cluster: Cluster, namespace: str, activators: Any, operator_factory: OperatorFactory
) -> None:
    [act] = activators(1)
    start_operator(operator_factory, namespace, [act])
    apply(cluster, namespace, embedding_service(idleTimeout="10s"))
    assert embed(act.url) == 200
    finished = act.stats(NAME)["lastRequestFinished"]
    with ReplicaRecorder(cluster, namespace) as rec:
        time.sleep(1)
        act.stop()  # graceful; it forgets its lastRequestFinished
        act.start()
        assert act.stats(NAME).get("lastRequestFinished") is None
        wait_replicas(cluster, namespace, 0, 40)
    zero_at = rec.first_time(0)
    assert zero_at is not None and zero_at >= finished + 10.0, zero_at - finished


def test_two_activators_load_is_summed(
    cluster: Cluster, namespace: str, activators: Any, operator_factory: OperatorFactory
) -> None:
    a, b = activators(2)
    start_operator(operator_factory, namespace, [a, b])
    apply(
        cluster, namespace,
        embedding_service(delay_ms=4000, maxReplicas=3, targetConcurrency=8,
                          idleTimeout="3s", scaleDownDelay="2s"),
    )  # fmt: skip
    with ReplicaRecorder(cluster, namespace) as rec, ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(embed, (a if i % 2 else b).url, f"t{i}") for i in range(16)]
        codes = [f.result() for f in futures]
    assert codes == [200] * 16
    # 8 on each activator: either alone needs 1 replica, together 2 (never 3).
    assert max(r for _, r in rec.samples) == 2, rec.values()


def test_prewarm_window_holds_a_replica_while_open(
    cluster: Cluster, namespace: str, activators: Any, operator_factory: OperatorFactory
) -> None:
    [act] = activators(1)
    now = datetime.now(UTC)
    if now.second > 35:  # leave room for the window inside this minute
        time.sleep(61 - now.second)
        now = datetime.now(UTC)
    opened = now.replace(second=0, microsecond=0)
    duration = now.second + 20  # the window ends 20 s from now
    window = {"schedule": f"{opened.minute} {opened.hour} * * *",
              "duration": f"{duration}s", "replicas": 1, "timeZone": "UTC"}  # fmt: skip
    start_operator(operator_factory, namespace, [act])
    apply(cluster, namespace, embedding_service(idleTimeout="2s", prewarm=[window]))
    closes = opened.timestamp() + duration
    with ReplicaRecorder(cluster, namespace) as rec:
        wait_replicas(cluster, namespace, 1, 15)
        wait_for(lambda: time.time() > closes + 8, 60, what="the window to close")
    up = rec.first_time(1)
    down = rec.first_time(0, after=up or 0)
    assert up is not None and up < closes, rec.values()
    assert all(r == 1 for t, r in rec.samples if up <= t < closes - 0.5), rec.values()
    assert down is not None, rec.values()
    assert closes <= down <= closes + 6, (down - closes, rec.values())


def _gone_times(cluster: Cluster, namespace: str, seen: dict[str, dict[str, float]]) -> None:
    """Record each pod's bound time and when it went: the midpoint of the last poll that
    listed it and the first that did not (polls every 0.2 s, each a few ms long)."""
    asked = time.time()
    listed = pods(cluster, namespace)
    live = set()
    for p in listed:
        uid = p["metadata"]["uid"]
        live.add(uid)
        for c in p["status"].get("conditions") or []:
            if c["type"] == "PodScheduled" and c["status"] == "True":
                bound = parse_time(c.get("lastTransitionTime"))
                if bound is not None:
                    seen.setdefault(uid, {"bound": bound})
        if uid in seen:
            seen[uid]["last_seen"] = asked
    for rec in seen.values():
        if rec.get("last_seen") != asked and "gone" not in rec:
            rec["gone"] = (rec.get("last_seen", asked) + asked) / 2


def test_ledger_matches_scripted_pod_lifetimes_across_an_operator_kill(
    cluster: Cluster, namespace: str, activators: Any, operator_factory: OperatorFactory
) -> None:
    [act] = activators(1)
    op = start_operator(operator_factory, namespace, [act])
    # Replicas driven by the test alone: autoscale off.
    apply(cluster, namespace, embedding_service(replicas=0, autoscale=False, maxReplicas=3))
    created = parse_time(obj(cluster, namespace)["metadata"]["creationTimestamp"])
    assert created is not None
    seen: dict[str, dict[str, float]] = {}

    def hold(seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            _gone_times(cluster, namespace, seen)
            time.sleep(0.2)

    def scale(n: int) -> None:
        cluster.kubectl("scale", f"embsvc/{NAME}", "-n", namespace, f"--replicas={n}")

    scale(1)
    hold(30)
    scale(3)
    hold(15)
    op.proc.send_signal(signal.SIGKILL)  # mid-scenario: nothing may be lost or doubled
    op.proc.wait()
    hold(4)
    start_operator(operator_factory, namespace, [act])
    hold(15)
    scale(1)
    hold(30)
    scale(0)

    def all_gone() -> bool:
        _gone_times(cluster, namespace, seen)
        return not pods(cluster, namespace)

    wait_for(all_gone, 90, what="every pod gone")
    _gone_times(cluster, namespace, seen)
    hold(4)  # a checkpoint (every 2 s) after the last pod went

    expected = sum(r["gone"] - r["bound"] for r in seen.values())
    status = obj(cluster, namespace)["status"]
    print(f"ledger: gpuSeconds {status['gpuSeconds']} vs pod lifetimes {expected:.2f}")
    assert status["gpuSeconds"] == pytest.approx(expected, rel=0.02), (status, seen)
    # The baseline: one always-on replica since creation, plus what ran above it,
    # up to the checkpoint's time (written with the totals).
    ledger_time = parse_time(status.get("ledgerTime"))
    assert ledger_time is not None, status
    edges = sorted(
        [(r["bound"], 1) for r in seen.values()] + [(r["gone"], -1) for r in seen.values()]
    )
    above, level, t = 0.0, 0, edges[0][0]
    for when, change in edges:
        above += max(0, level - 1) * (when - t)
        level, t = level + change, when
    expected_baseline = (ledger_time - created) + above
    assert status["baselineGpuSeconds"] == pytest.approx(expected_baseline, rel=0.02)
    assert status["gpuHours"] == round(status["gpuSeconds"] / 3600, 2)


def test_wake_failure_becomes_failed_condition_and_event_then_clears(
    cluster: Cluster, namespace: str, activators: Any, operator_factory: OperatorFactory
) -> None:
    [act] = activators(1)
    start_operator(operator_factory, namespace, [act])
    svc = embedding_service(idleTimeout="30s")
    svc["spec"]["engine"]["image"] = "example.invalid/nothing:1"  # the test bed cannot pull it
    apply(cluster, namespace, svc)
    assert embed(act.url, timeout=90) != 200  # held, then failed fast with the reason

    def failed() -> dict[str, Any] | None:
        status = obj(cluster, namespace).get("status") or {}
        cond = next((c for c in status.get("conditions") or [] if c["type"] == "Failed"), None)
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for(failed, 60, what="the Failed condition")
    assert cond["reason"] == "ImagePullBackOff", cond
    assert "example.invalid/nothing:1" in cond["message"]
    assert obj(cluster, namespace)["status"]["phase"] == "Failed"
    events = json.loads(
        cluster.kubectl(
            "get", "events", "-n", namespace, "-o", "json",
            "--field-selector", f"involvedObject.name={NAME},type=Warning",
        ).stdout
    )["items"]  # fmt: skip
    assert any(e["reason"] == "ImagePullBackOff" for e in events), events

    # Fixing the spec clears the failure, and the next request wakes a working pod.
    cluster.kubectl(
        "patch", f"embsvc/{NAME}", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"engine": {"image": ""}}}),
    )  # fmt: skip
    wait_for(lambda: failed() is None, 60, what="the Failed condition to clear")

    def old_pods_gone() -> bool:
        return not any(
            c.get("image") == "example.invalid/nothing:1"
            for p in pods(cluster, namespace)
            for c in p["spec"]["containers"]
        )

    # (The activator also reads pods itself: it fails requests while the old pod lives.)
    wait_for(old_pods_gone, 90, what="the failing pod to go")
    assert embed(act.url) == 200
    wake = wait_for(
        lambda: (obj(cluster, namespace).get("status") or {}).get("lastWakeSeconds"),
        30, what="lastWakeSeconds",
    )  # fmt: skip
    assert 0 < wake < 120
