"""Structural checks on the Grafana dashboard and the recording rules in the chart.

Every metric a query names must be one the code exports (``glowplug.metrics``), with the
``_bucket``/``_sum``/``_count`` suffixes only on histograms, or one the recording rules
record. The rules themselves are checked by promtool in ``test_chart_static.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from glowplug import metrics as m

CHART = Path(__file__).resolve().parents[2] / "charts" / "glowplug"
DASHBOARD = CHART / "dashboards" / "glowplug.json"
RULES = CHART / "rules" / "glowplug.rules.yaml"

HISTOGRAMS = {
    m.REQUEST_DURATION,
    m.ACTIVATOR_OVERHEAD,
    m.QUEUE_WAIT,
    m.ACTIVATOR_WAKE_DURATION,
    m.WAKE_DURATION,
    m.WAKE_PHASE_DURATION,
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# PromQL words that look like identifiers but are not metric names.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "rate", "increase", "irate", "histogram_quantile", "label_values", "and",
    "or", "unless", "bool", "offset", "topk", "bottomk", "abs", "clamp_min", "clamp_max",
    "vector", "scalar", "time", "label_replace", "le", "namespace", "service", "code",
    "reason", "outcome", "state", "gpu_type", "path", "inf", "nan",
}  # fmt: skip
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def recorded_names() -> set[str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that name metrics (label matchers, strings,
    ranges and Grafana variables removed first)."""
    expr = re.sub(r"\{[^{}]*\}", "", expr)  # label matchers: {namespace=~"$namespace"}
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors: [$__rate_interval]
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    # "by (a, b)" / "on (a)" list labels, not metrics.
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", expr)
    return {w for w in IDENT.findall(expr) if w not in PROMQL_WORDS and not w[0].isdigit()}


def known(name: str, recorded: set[str]) -> bool:
    if name in recorded:
        return True
    if name in m.ALL_METRICS:
        return name not in HISTOGRAMS  # a histogram is only queried through its suffixes
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return True
    return False


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return [p for p in out if p["type"] != "row"]


def all_exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dash) for t in p["targets"]]


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le) (rate(glowplug_queue_wait_seconds_bucket"
        '{service=~"$service"}[$__rate_interval]))) * on (namespace, service) group_left '
        "glowplug_service_info"
    )
    assert metric_names(expr) == {"glowplug_queue_wait_seconds_bucket", "glowplug_service_info"}


def test_histograms_are_histograms_in_the_code() -> None:
    pytest.importorskip("glowplug.activator.metrics")
    from prometheus_client import Histogram

    from glowplug.activator.metrics import Metrics

    for attr in Metrics().histograms.collectors():
        assert isinstance(attr, Histogram)
        assert attr._name in HISTOGRAMS
    for name, (kind, _labels) in Metrics().families().items():
        assert (kind == "histogram") == (name in HISTOGRAMS), name


def test_dashboard_identity_is_stable() -> None:
    dash = load_dashboard()
    assert dash["uid"] == "glowplug-overview"
    assert dash["id"] is None
    assert "__inputs" not in dash and "__requires" not in dash
    assert "${" not in json.dumps(dash["uid"])


def test_panel_ids_unique_and_layout_fits() -> None:
    dash = load_dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]


def test_template_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert set(variables) >= {"datasource", "namespace", "service"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "service"):
        v = variables[name]
        assert v["datasource"]["uid"] == "${datasource}"
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert m.SERVICE_INFO in query
        assert v["includeAll"] and v["multi"]
    svc_query = variables["service"]["query"]["query"]
    assert '$namespace"' in svc_query  # services follow the namespace selection


def test_every_panel_uses_the_datasource_variable() -> None:
    for p in panels(load_dashboard()):
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_every_panel_has_a_unit() -> None:
    for p in panels(load_dashboard()):
        assert p["fieldConfig"]["defaults"].get("unit"), p["title"]


def test_every_query_filters_by_namespace_and_service() -> None:
    for p in panels(load_dashboard()):
        for t in p["targets"]:
            for selector in re.findall(r"glowplug_\w+\{([^}]*)\}", t["expr"]):
                assert 'namespace=~"$namespace"' in selector, (p["title"], t["expr"])
                assert 'service=~"$service"' in selector, (p["title"], t["expr"])


def test_every_query_names_exported_metrics() -> None:
    recorded = recorded_names()
    for expr in all_exprs(load_dashboard()):
        names = metric_names(expr)
        assert names, expr
        unknown = {n for n in names if not known(n, recorded)}
        assert not unknown, f"{unknown} in {expr}"


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    dash = load_dashboard()
    titles = " | ".join(p["title"].lower() for p in panels(dash))
    for words in (
        "gpu-hours used", "always-on", "saved", "dollars saved", "per 1,000 embeddings",
        "replicas desired and ready", "wakes", "wake latency", "queue depth", "queue wait",
        "request rate by code", "errors", "activator added latency",
        "served at zero by the cache", "cache hit ratio",
    ):  # fmt: skip
        assert words in titles, words
    exprs = "\n".join(all_exprs(dash))
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate({m.WAKE_DURATION}_bucket" in exprs
    # issue 11: the cold-start breakdown, p50 and p95 per phase
    assert "cold-start breakdown by phase" in titles
    for q in ("0.5", "0.95"):
        assert (
            f"histogram_quantile({q}, sum by (le, phase) (increase({m.WAKE_PHASE_DURATION}_bucket"
            in exprs
        )


def test_recording_rules_name_exported_metrics() -> None:
    doc = yaml.safe_load(RULES.read_text())
    recorded = recorded_names()
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert rule["record"].startswith("glowplug:"), rule["record"]
            # level:metric:operations (Prometheus naming practice)
            assert rule["record"].count(":") == 2, rule["record"]
            unknown = {n for n in metric_names(rule["expr"]) if not known(n, recorded)}
            assert not unknown, f"{unknown} in {rule['record']}"


def exported_collectors() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (type, label names) of every collector the code creates."""
    from glowplug.activator.metrics import Metrics
    from glowplug.operator import handlers, servicemetrics

    collectors = [
        *vars(servicemetrics).values(),
        *vars(handlers).values(),
    ]
    # The activator's per-service families are not prometheus_client collectors; its
    # histograms carry namespace and service only with per_service_histograms, and the
    # dashboard's queries must work both ways: the labels of both modes are allowed.
    out: dict[str, tuple[str, tuple[str, ...]]] = dict(Metrics().families())
    for name, (kind, labels) in Metrics(per_service_histograms=True).families().items():
        out[name] = (kind, tuple(dict.fromkeys((*out[name][1], *labels))))
    # The operator's per-service families are glowplug.exposition tables.
    for table in servicemetrics.PER_SERVICE:
        out[table.family.name] = (table.family.type, table.family.labels)
    for c in collectors:
        name, kind = getattr(c, "_name", None), getattr(c, "_type", None)
        if isinstance(name, str) and isinstance(kind, str) and name.startswith(m.PREFIX):
            # prometheus-client drops a counter's _total suffix from _name.
            full = f"{name}_total" if kind == "counter" and not name.endswith("_total") else name
            out[full] = (kind, tuple(c._labelnames))
    return out


def test_every_metric_name_is_exported_with_the_right_type() -> None:
    exported = exported_collectors()
    assert set(exported) == set(m.ALL_METRICS)
    assert {n for n, (kind, _) in exported.items() if kind == "histogram"} == HISTOGRAMS


def test_queries_use_labels_the_metrics_have() -> None:
    exported = exported_collectors()

    def labels_of(metric: str) -> set[str]:
        for suffix in HISTOGRAM_SUFFIXES:
            if metric.endswith(suffix) and metric[: -len(suffix)] in exported:
                extra = {"le"} if suffix == "_bucket" else set()
                return set(exported[metric[: -len(suffix)]][1]) | extra
        return set(exported[metric][1])

    exprs = all_exprs(load_dashboard())
    exprs += [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for expr in exprs:
        raw = {n for n in metric_names(expr) if n in exported or n.rsplit("_", 1)[0] in exported}
        if not raw:
            continue  # built only on recorded series
        available = set().union(*(labels_of(n) for n in raw))
        for metric, matchers in re.findall(r"(glowplug_\w+)\{([^}]*)\}", expr):
            used = set(re.findall(r"(\w+)\s*[=!]~?", matchers))
            assert used <= labels_of(metric), (metric, used - labels_of(metric), expr)
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            used = {w.strip() for w in clause.split(",") if w.strip()}
            assert used <= available, (used - available, expr)
