"""glowplug.exposition: per-service families written by glowplug, read back by
prometheus_client's own parser, and the operator's /metrics over real HTTP."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from glowplug.exposition import Family, FamilyTable, render


def parsed(text: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def test_a_table_renders_what_the_parser_reads_back() -> None:
    table = FamilyTable(Family("t_requests_total", "counter", 'Help with "quotes"', ("b", "a")))
    table.labels("two", 'odd "value"\\n').inc(3)
    table.labels("one", "x").inc()
    table.labels("one", "x").inc(0.5)
    gauges = FamilyTable(Family("t_level", "gauge", "A gauge", ("a",)))
    gauges.labels("inf").set(float("inf"))
    gauges.labels("neg").set(-2.25)
    samples = parsed(render((table, gauges)))
    assert sorted(samples["t_requests_total"], key=lambda s: s[1]) == [
        ({"b": "one", "a": "x"}, 1.5),
        ({"b": "two", "a": 'odd "value"\\n'}, 3.0),
    ]
    assert dict((s[0]["a"], s[1]) for s in samples["t_level"]) == {
        "inf": float("inf"),
        "neg": -2.25,
    }


def test_a_changed_value_is_written_again_and_a_removed_child_is_gone() -> None:
    table = FamilyTable(Family("t_seconds_total", "counter", "h", ("svc",)))
    child = table.labels("a")
    table.labels("b")
    assert parsed(render([table]))["t_seconds_total"] == [({"svc": "a"}, 0.0), ({"svc": "b"}, 0.0)]
    child.inc(7)
    table.remove("b")
    table.remove("never-there")
    assert parsed(render([table]))["t_seconds_total"] == [({"svc": "a"}, 7.0)]
    assert table.get("a") == 7.0 and table.get("b") is None
    table.remove("a")
    assert render([table]) == b""  # no children: not even the header


def test_a_family_is_written_again_only_after_a_child_changes() -> None:
    """An unchanged family's text is the last scrape's (the same object); a set to a new
    value, an increment, an observation, a new child or a removal is written next time."""
    from glowplug.exposition import HistogramTable

    table = FamilyTable(Family("t_idle", "gauge", "h", ("svc",)))
    child = table.labels("a")
    first = table.render()
    child.set(0.0)  # the value it has: nothing to write
    child.inc(0)
    assert table.render() is first
    child.set(4.0)
    assert parsed(table.render())["t_idle"] == [({"svc": "a"}, 4.0)]
    table.labels("b")
    assert len(parsed(table.render())["t_idle"]) == 2
    table.remove("b")
    assert parsed(table.render())["t_idle"] == [({"svc": "a"}, 4.0)]
    hist = HistogramTable(Family("t_wait_seconds", "histogram", "h", ("svc",)), (1.0,))
    hist.labels("a")
    before = hist.render()
    assert hist.render() is before
    hist.labels("a").observe(0.5)
    assert ({"svc": "a"}, 1.0) in parsed(hist.render())["t_wait_seconds_count"]


def test_bad_input_is_refused() -> None:
    table = FamilyTable(Family("t_total", "counter", "h", ("a", "b")))
    with pytest.raises(ValueError, match="labels"):
        table.labels("only-one")
    with pytest.raises(ValueError, match="only go up"):
        table.labels("a", "b").inc(-1)


def test_rendering_while_children_come_and_go_in_another_thread() -> None:
    """The event loop adds and removes children while the metrics thread renders."""
    table = FamilyTable(Family("t_churn_total", "counter", "h", ("svc",)))
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        i = 0
        while not stop.is_set():
            table.labels(f"s{i % 500}").inc()
            table.remove(f"s{(i + 250) % 500}")
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(200):
            try:
                parsed(render([table]))
            except BaseException as err:
                errors.append(err)
    finally:
        stop.set()
        worker.join()
    assert errors == []


def test_the_operator_serves_its_exposition_over_http() -> None:
    from glowplug.operator import servicemetrics

    servicemetrics.REPLICAS.labels("t-serve", "svc", "ready").set(2)
    server = servicemetrics.serve(0, "127.0.0.1")
    port = server.server_address[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            samples = parsed(resp.read())
        assert ({"namespace": "t-serve", "service": "svc", "state": "ready"}, 2.0) in samples[
            "glowplug_replicas"
        ]
        assert "glowplug_autoscaler_ticks_total" in samples  # prometheus_client's part too
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=10)
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
        servicemetrics.REPLICAS.remove("t-serve", "svc", "ready")


def test_a_histogram_reads_back_as_prometheus_clients_own() -> None:
    """The same observations in a HistogramTable and in a prometheus_client Histogram
    parse to the same samples (less prometheus_client's _created)."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from glowplug.exposition import HistogramTable

    buckets = (0.5, 1, 10)
    ours = HistogramTable(Family("t_wait_seconds", "histogram", "h", ("svc", "phase")), buckets)
    registry = CollectorRegistry()
    theirs = Histogram("t_wait_seconds", "h", ("svc", "phase"), buckets=buckets, registry=registry)
    ours.labels("a", "node")  # created at zero, as a wake's histograms are
    theirs.labels("a", "node")
    for value in (0.5, 0.7, 3, 99, 10):
        ours.labels("b", "image").observe(value)
        theirs.labels("b", "image").observe(value)
    want = {k: v for k, v in parsed(generate_latest(registry)).items() if "_created" not in k}
    got = parsed(render([ours]))
    assert got == want
    assert ours.labels("b", "image").count == 5
    ours.remove("b", "image")
    assert [labels for labels, _ in parsed(render([ours]))["t_wait_seconds_count"]] == [
        {"svc": "a", "phase": "node"}
    ]
