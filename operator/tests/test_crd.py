"""The CRD file: defaults agree with glowplug.api.DEFAULTS, CEL rules, descriptions, columns."""

from __future__ import annotations

import re
from typing import Any

import pytest
from crd_schema import apply_defaults, cel_regex, defaults_key, load_crd, root_schema, walk

from glowplug.api import cron
from glowplug.api import spec as api
from glowplug.api.durations import BOUNDED_DURATION_REGEX, DURATION_REGEX, parse_duration
from glowplug.api.sizes import SIZE_REGEX


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return load_crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return root_schema(crd)


def crd_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    spec = schema["properties"]["spec"]
    return {defaults_key(path): node["default"] for path, node in walk(spec) if "default" in node}


def test_identity(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"
    assert crd["spec"]["group"] == api.GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert names["kind"] == api.KIND
    assert names["plural"] == api.PLURAL
    assert api.SHORT_NAME in names["shortNames"]
    versions = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == [api.VERSION]
    assert versions[0]["served"] and versions[0]["storage"]


def test_every_crd_default_equals_python_default(schema: dict[str, Any]) -> None:
    found = crd_defaults(schema)
    # Sections default to {} so that their children's defaults apply when the section is
    # omitted; they are not values of their own.
    sections = {k for k, v in found.items() if v == {}}
    assert sections == {
        "engine",
        "resources",
        "scaling",
        "pod",
        "cost",
        "cache",
        "scaling.autoIdleTimeout",
    }
    values = {k: v for k, v in found.items() if k not in sections}
    # key "token" of tokenSecretRef is defaulted by both; it is not in DEFAULTS (a
    # per-reference default, see SecretKeyRef).
    assert values.pop("model.source.huggingFace.tokenSecretRef.key") == api.SecretKeyRef("x").key
    assert values == api.DEFAULTS


def test_defaults_have_the_schema_type(schema: dict[str, Any]) -> None:
    for path, node in walk(schema["properties"]["spec"]):
        if "default" not in node or "type" not in node:
            continue
        expected = {
            "string": str,
            "integer": int,
            "number": (int, float),
            "boolean": bool,
            "array": list,
            "object": dict,
        }[node["type"]]
        assert isinstance(node["default"], expected), path


def test_parse_of_a_minimal_object_matches_the_api_servers_defaulting(
    schema: dict[str, Any],
) -> None:
    """What parse() fills in equals what the API server would have stored."""
    raw = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {
            "model": {"id": "Qwen/Qwen3-Embedding-0.6B", "source": {"huggingFace": {}}},
            "scaling": {"prewarm": [{"schedule": "0 8 * * 1-5", "duration": "10h"}]},
        },
    }
    defaulted = apply_defaults(schema, raw)
    assert defaulted["spec"]["engine"]["requestTimeout"] == "2m"
    assert defaulted["spec"]["scaling"]["prewarm"][0]["timeZone"] == "UTC"
    assert api.parse(defaulted) == api.parse(raw)


def test_every_field_has_a_description(schema: dict[str, Any]) -> None:
    missing = []
    for path, node in walk(schema):
        if path in ("", "metadata") or path.endswith("{}"):
            continue
        # Items of scalar lists (args) are described by their list.
        if path.endswith("[]") and node.get("type") not in ("object", None):
            continue
        if not node.get("description"):
            missing.append(path)
    assert missing == []


# (schema path, a fragment of the rule) for every CEL rule the issue asks for.
REQUIRED_RULES = [
    ("spec.scaling", "self.minReplicas <= self.maxReplicas"),
    ("spec.scaling.maxReplicas", "self >= 1"),
    ("spec.resources.gpus", "self >= 0"),
    ("spec.model.source", "== 1"),
    ("spec.model.servedName", "!self.contains(':')"),
    ("spec.engine.requestTimeout", "matches"),
    ("spec.scaling.idleTimeout", "matches"),
    ("spec.scaling.scaleDownDelay", "matches"),
    ("spec.scaling.activationTimeout", "matches"),
    ("spec.scaling.prewarm[].duration", "matches"),
]


@pytest.mark.parametrize(("path", "fragment"), REQUIRED_RULES)
def test_required_cel_rule_present(schema: dict[str, Any], path: str, fragment: str) -> None:
    nodes = dict(walk(schema))
    rules = [v["rule"] for v in nodes[path].get("x-kubernetes-validations", [])]
    assert any(fragment in r for r in rules), rules


def test_model_source_rule_counts_all_three_kinds(schema: dict[str, Any]) -> None:
    nodes = dict(walk(schema))
    (rule,) = nodes["spec.model.source"]["x-kubernetes-validations"]
    for kind in ("huggingFace", "persistentVolumeClaim", "hostPath"):
        assert f"has(self.{kind})" in rule["rule"]
        assert kind in rule["message"]


def all_rules(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, v) for path, node in walk(schema) for v in node.get("x-kubernetes-validations", [])
    ]


def test_every_rule_message_names_its_field(schema: dict[str, Any]) -> None:
    for path, rule in all_rules(schema):
        field = path or "metadata.name"
        if "fieldPath" in rule:
            field = f"{path}{rule['fieldPath']}"
        # Messages name the field as users write it: list items as [].
        assert field in rule["message"], (path, rule)


def test_field_paths_point_at_existing_fields(schema: dict[str, Any]) -> None:
    nodes = dict(walk(schema))
    for path, rule in all_rules(schema):
        if "fieldPath" in rule:
            assert f"{path}{rule['fieldPath']}" in nodes


def test_duration_rules_use_the_python_regex(schema: dict[str, Any]) -> None:
    durations = [
        (p, r)
        for p, r in all_rules(schema)
        if "matches" in r["rule"] and "a duration" in r["message"]
    ]
    assert len(durations) == 10  # idleTimeout's says "auto or a duration"
    for _, rule in durations:
        assert cel_regex(rule["rule"]) == DURATION_REGEX


def test_size_rule_uses_the_python_regex(schema: dict[str, Any]) -> None:
    nodes = dict(walk(schema))
    (rule,) = nodes["spec.cache.maxBytes"]["x-kubernetes-validations"]
    assert cel_regex(rule["rule"]) == SIZE_REGEX
    ttl_rules = nodes["spec.cache.ttl"]["x-kubernetes-validations"]
    (zero,) = [r for r in ttl_rules if r["rule"].startswith("!")]
    regex = re.compile(cel_regex(zero["rule"][1:]))
    assert regex.match("0s") and regex.match("0m0s") and not regex.match("10s")


def test_served_name_rule_uses_the_python_pattern(schema: dict[str, Any]) -> None:
    nodes = dict(walk(schema))
    rules = nodes["spec.model.servedName"]["x-kubernetes-validations"]
    (pattern,) = [cel_regex(r["rule"]) for r in rules if "matches" in r["rule"]]
    assert pattern == api._SERVED_NAME.pattern


def test_cron_rule_is_the_python_grammar(schema: dict[str, Any]) -> None:
    nodes = dict(walk(schema))
    (rule,) = nodes["spec.scaling.prewarm[].schedule"]["x-kubernetes-validations"]
    assert cel_regex(rule["rule"]) == cron.CRON_REGEX
    regex = re.compile(cel_regex(rule["rule"]))
    for good in (
        "0 8 * * 1-5",
        "*/15 8-10,14 1 jan,Mar-may mon-fri",
        "0 0 */2 * 7",
        "5/20 * * * *",
    ):
        assert regex.match(good), good
        cron.parse_cron(good)  # and the operator's parser agrees
    for bad in (
        "0 8 * *",
        "0 8 * * 1-5 2026",
        "99 8 * * funday",
        "0 24 * * *",
        "0 8 0 * *",
        "0 8 * 13 *",
        "0 8 * * 8",
        "*/0 * * * *",
        "0 8 * * mon/x",
    ):
        assert not regex.match(bad), bad


def test_time_zone_rule_is_the_python_shape(schema: dict[str, Any]) -> None:
    nodes = dict(walk(schema))
    (rule,) = nodes["spec.scaling.prewarm[].timeZone"]["x-kubernetes-validations"]
    assert cel_regex(rule["rule"]) == cron.TIME_ZONE_REGEX
    regex = re.compile(cron.TIME_ZONE_REGEX)
    for good in ("UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5"):
        assert regex.match(good), good
    for bad in ("", "Europe Berlin", "/etc/localtime", "../../x"):
        assert not regex.match(bad), bad


def bounded_rules(schema: dict[str, Any]) -> dict[str, str]:
    return {
        p: r["rule"] for p, r in all_rules(schema) if "duration(self) > duration('0s')" in r["rule"]
    }


def test_bounded_durations_match_the_python_bounds(schema: dict[str, Any]) -> None:
    rules = bounded_rules(schema)
    expected = {
        "spec.engine.requestTimeout": "engine.requestTimeout",
        "spec.scaling.activationTimeout": "scaling.activationTimeout",
        "spec.scaling.nodeWaitTimeout": "scaling.nodeWaitTimeout",
        "spec.scaling.prewarm[].duration": "prewarm.duration",
    }
    assert set(rules) == set(expected)
    for path, key in expected.items():
        rule = rules[path]
        top = re.search(r"duration\(self\) <= duration\('([^']+)'\)", rule)
        assert top is not None, rule
        assert parse_duration(top.group(1)) == api.DURATION_BOUNDS[key], path
        # the overflow guard is the Python one (second matches() in the rule)
        second = rule[rule.index("(self.matches(") + 1 :]
        assert cel_regex(second) == BOUNDED_DURATION_REGEX, path


def test_cel_cost_is_bounded(schema: dict[str, Any]) -> None:
    """Strings checked by a rule and every list carry a bound, so the CEL cost estimate
    stays under the API server's budget."""
    for path, node in walk(schema["properties"]["spec"]):
        if node.get("type") == "string" and node.get("x-kubernetes-validations"):
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path


def test_preserve_unknown_fields_only_where_needed(schema: dict[str, Any]) -> None:
    preserved = {p for p, n in walk(schema) if n.get("x-kubernetes-preserve-unknown-fields")}
    assert preserved == {
        "spec.engine.env[]",
        "spec.pod.tolerations[]",
        "spec.pod.affinity",
        "status.idlePolicy",  # the learned idle timeout's state (idlepolicy.py owns it)
    }


def test_subresources(crd: dict[str, Any]) -> None:
    sub = crd["spec"]["versions"][0]["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_printer_columns(crd: dict[str, Any], schema: dict[str, Any]) -> None:
    cols = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in cols] == [
        "MODEL",
        "ENGINE",
        "READY",
        "DESIRED",
        "PHASE",
        "GPU-HOURS",
        "SAVED",
        "AGE",
    ]
    nodes = dict(walk(schema))
    for col in cols:
        if col["jsonPath"].startswith(".metadata"):
            continue
        path = col["jsonPath"].lstrip(".")
        assert path in nodes, col
        assert nodes[path]["type"] == col["type"], col


STATUS_FIELDS = {
    "idlePolicy",
    "phase",
    "replicas",
    "readyReplicas",
    "selector",
    "observedGeneration",
    "conditions",
    "lastRequestTime",
    "lastWakeSeconds",
    "wake",
    "lastWake",
    "gpuSeconds",
    "baselineGpuSeconds",
    "wakeStartedTime",
    "gpuHours",
    "savedPercent",
    "ledgerTime",
    "gpusHeld",
    "baselineGpus",
}


def test_status_fields(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]
    assert set(status["properties"]) == STATUS_FIELDS
    assert status["properties"]["phase"]["enum"] == ["Idle", "Waking", "Ready", "Failed"]
    cond = status["properties"]["conditions"]
    assert cond["x-kubernetes-list-map-keys"] == ["type"]
    assert set(cond["items"]["properties"]) >= {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
    }


def test_spec_sections_match_design(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert set(spec) == {
        "model",
        "engine",
        "resources",
        "scaling",
        "replicas",
        "pod",
        "cost",
        "cache",
    }
    assert spec["engine"]["properties"]["name"]["enum"] == list(api.ENGINES)
