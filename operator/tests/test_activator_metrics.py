"""The activator's /metrics: bounded series per service, cached rendering, opt-in
per-service histograms. Expositions are parsed with prometheus_client's own parser."""

from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from glowplug import metrics as m
from glowplug.activator.holdqueue import ServiceState
from glowplug.activator.metrics import Metrics

HISTOGRAMS = (m.REQUEST_DURATION, m.ACTIVATOR_OVERHEAD, m.QUEUE_WAIT, m.ACTIVATOR_WAKE_DURATION)


def samples(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for fam in text_string_to_metric_families(metrics.render().decode()):
        for s in fam.samples:
            out.append((s.name, dict(s.labels), s.value))
    return out


def of(metrics: Metrics, namespace: str, service: str) -> dict[tuple[str, str], float]:
    """(sample name, the labels besides namespace/service as text) -> value."""
    out = {}
    for name, labels, value in samples(metrics):
        if labels.get("namespace") == namespace and labels.get("service") == service:
            rest = ",".join(
                f"{k}={v}" for k, v in sorted(labels.items()) if k not in m.SERVICE_LABELS
            )
            out[(name, rest)] = value
    return out


def test_an_idle_service_has_six_series_and_no_histograms() -> None:
    metrics = Metrics()
    metrics.service("team-a", "emb")
    assert of(metrics, "team-a", "emb") == {
        (m.REQUESTS_TOTAL, "code=200,path=cold"): 0,
        (m.REQUESTS_TOTAL, "code=200,path=warm"): 0,
        (m.EMBEDDINGS_TOTAL, ""): 0,
        (m.ACTIVATOR_WAKES_TOTAL, "outcome=ready"): 0,
        (m.QUEUED_REQUESTS, ""): 0,
        (m.INFLIGHT_REQUESTS, ""): 0,
    }
    # The histograms exist once, for all services: no namespace or service label.
    for name, labels, _ in samples(metrics):
        if any(name.startswith(h) for h in HISTOGRAMS):
            assert not set(labels) & set(m.SERVICE_LABELS), (name, labels)


def test_the_cache_series_exist_only_for_services_with_the_cache() -> None:
    metrics = Metrics()
    metrics.service("team-a", "plain")
    cached = metrics.service("team-a", "cached", cache=True)
    cached.bind_cache_bytes(lambda: 4096.0)
    assert not any(k[0].startswith("glowplug_cache") for k in of(metrics, "team-a", "plain"))
    got = of(metrics, "team-a", "cached")
    assert got[(m.CACHE_BYTES, "")] == 4096
    assert got[(m.CACHE_HITS_TOTAL, "tier=memory")] == 0
    assert got[(m.REQUESTS_TOTAL, "code=200,path=cache")] == 0
    # Turned on later (a spec update): the series appear at zero.
    plain = metrics.find("team-a", "plain")
    assert plain is not None
    plain.enable_cache()
    assert of(metrics, "team-a", "plain")[(m.CACHE_MISSES_TOTAL, "")] == 0


def test_changes_show_up_on_the_next_render_and_removal_drops_every_line() -> None:
    metrics = Metrics()
    sms = [metrics.service("ns", f"s{i}") for i in range(50)]
    first = metrics.render()
    assert metrics.render() == first  # nothing changed: the same bytes
    sms[7].requests(200, "warm").inc()
    sms[7].embeddings.inc(32)
    sms[7].requests(429, "warm").inc()  # a code first seen now
    sms[7].rejected["queue_full"].inc()
    sms[9].wakes["failed"].inc()
    got = of(metrics, "ns", "s7")
    assert got[(m.REQUESTS_TOTAL, "code=200,path=warm")] == 1
    assert got[(m.REQUESTS_TOTAL, "code=429,path=warm")] == 1
    assert got[(m.EMBEDDINGS_TOTAL, "")] == 32
    assert got[(m.REJECTED_TOTAL, "reason=queue_full")] == 1
    assert of(metrics, "ns", "s9")[(m.ACTIVATOR_WAKES_TOTAL, "outcome=failed")] == 1
    assert (m.REJECTED_TOTAL, "reason=queue_full") not in of(metrics, "ns", "s8")
    sms[7].remove()
    assert of(metrics, "ns", "s7") == {}
    assert of(metrics, "ns", "s6")  # the others stay
    # The same name again starts from zero.
    metrics.service("ns", "s7")
    assert of(metrics, "ns", "s7")[(m.REQUESTS_TOTAL, "code=200,path=warm")] == 0


async def test_the_queue_gauges_follow_requests_between_scrapes() -> None:
    metrics = Metrics()
    state = ServiceState("ns", "emb", limit=1, max_queue=10, replicas=1)
    sm = metrics.service("ns", "emb")
    sm.bind_gauges(lambda: float(state.queued), lambda: float(state.inflight))
    state.on_activity = sm.touch
    state.set_endpoints(["10.0.0.1:8000"])
    assert of(metrics, "ns", "emb")[(m.INFLIGHT_REQUESTS, "")] == 0
    b = state.try_acquire()
    assert b is not None
    assert of(metrics, "ns", "emb")[(m.INFLIGHT_REQUESTS, "")] == 1
    # Still in flight at the next scrape: still read.
    assert of(metrics, "ns", "emb")[(m.INFLIGHT_REQUESTS, "")] == 1
    state.release(b)
    assert of(metrics, "ns", "emb")[(m.INFLIGHT_REQUESTS, "")] == 0


def test_per_service_histograms_are_opt_in() -> None:
    metrics = Metrics(per_service_histograms=True)
    sm = metrics.service("team-a", "emb")
    sm.duration["warm"].observe(0.02)
    sm.queue_wait.observe(1.5)
    got = of(metrics, "team-a", "emb")
    assert got[(f"{m.REQUEST_DURATION}_count", "path=warm")] == 1
    assert got[(f"{m.QUEUE_WAIT}_count", "")] == 1
    sm.remove()
    assert of(metrics, "team-a", "emb") == {}
    # Aggregated: every service's observations land in one series.
    agg = Metrics()
    for name in ("a", "b"):
        agg.service("ns", name).duration["warm"].observe(0.02)
    counts = [
        (labels, v)
        for n, labels, v in samples(agg)
        if n == f"{m.REQUEST_DURATION}_count" and labels.get("path") == "warm"
    ]
    assert counts == [({"path": "warm"}, 2.0)]


def test_renders_while_another_thread_counts_lose_nothing() -> None:
    """The render runs in a worker thread while the event loop increments: every
    increment made before the last render is in it."""
    metrics = Metrics()
    sms = [metrics.service("ns", f"s{i}") for i in range(200)]
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            metrics.render()

    t = threading.Thread(target=scrape)
    t.start()
    try:
        for _ in range(20):
            for sm in sms:
                sm.requests(200, "warm").inc()
    finally:
        stop.set()
        t.join()
    values = [
        v
        for n, labels, v in samples(metrics)
        if n == m.REQUESTS_TOTAL and labels.get("path") == "warm" and labels.get("code") == "200"
    ]
    assert values == [20.0] * 200
