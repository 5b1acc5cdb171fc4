"""The Helm chart, checked without a cluster: `helm lint --strict`, `helm template` in both
install modes with every opt-in on and off, the security context of every pod, RBAC rule by
rule, the CRD copies, and the recording rules through promtool.

helm comes from the test-bed binaries (``make binaries``) or $PATH; promtool from Debian's
``prometheus`` package (``make promtool``). Each test that needs one skips, saying why,
when it is missing.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from glowplug import permissions as perms

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "glowplug"

ALL_OPT_INS = (
    "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "dashboards.enabled=true",
    "networkPolicy.enabled=true",
)
OPT_IN_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy", "ConfigMap"}

# (apiGroup, resource) -> verbs: the whole of what each component may do, from the one
# list of the calls the code makes (glowplug.permissions).
Table = dict[tuple[str, str], set[str]]


def table(needs: tuple[perms.Need, ...], scopes: tuple[str, ...]) -> Table:
    out: Table = {}
    for n in needs:
        if n.scope in scopes:
            out.setdefault((n.group, n.resource), set()).update(n.verbs)
    return out


NAMESPACED_OPERATOR = table(perms.OPERATOR, ("watched",))
CLUSTER_OPERATOR = {
    **NAMESPACED_OPERATOR,
    **table(perms.OPERATOR_CLUSTER_WIDE, ("cluster",)),
}
SCANNING = table(perms.OPERATOR_SCANNING, ("cluster",))
ROLE_OPERATOR = {**NAMESPACED_OPERATOR, **table(perms.OPERATOR_NAMESPACED, ("watched",))}
RELEASE_OPERATOR = table(perms.OPERATOR, ("release",))
ACTIVATOR = table(perms.ACTIVATOR, ("watched",))
ACTIVATOR_KEYS = table((perms.ACTIVATOR_KEYS,), ("release",))


def find_tool(name: str) -> str | None:
    env = os.environ.get(name.upper())
    if env:
        return env
    found = shutil.which(name)
    if found:
        return found
    bin_dir = os.environ.get("GLOWPLUG_BIN_DIR")
    candidates = [Path(bin_dir)] if bin_dir else []
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "glowplug"
    candidates.append(cache / "tools")  # scripts/install-promtool.sh
    candidates += sorted((cache / "bin").glob("*"), reverse=True)  # make binaries
    for d in candidates:
        if (d / name).is_file():
            return str(d / name)
    return None


def helm() -> str:
    path = find_tool("helm")
    if path is None:
        pytest.skip("helm not found: run `make binaries` (or put helm on PATH, or set HELM)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)


@functools.cache
def _render(sets: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    args = [helm(), "template", "gp", str(CHART), "--namespace", "glowplug-system"]
    for s in sets:
        args += ["--set", s]
    out = run(*args)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(*sets: str) -> list[dict[str, Any]]:
    return list(_render(tuple(sets)))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def rule_table(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource, *rule["verbs"]), rule
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


# --- CRDs -------------------------------------------------------------------------------


def test_chart_crds_are_byte_identical_copies() -> None:
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert source, "no CRDs in crds/"
    assert chart.keys() == source.keys(), "run `make chart-crds`"
    for name, data in source.items():
        assert chart[name] == data, f"charts/glowplug/crds/{name} is stale: run `make chart-crds`"


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def test_chart_kube_version_allows_only_clusters_that_run_the_pods() -> None:
    """The engine pods use lifecycle.preStop.sleep, beta and on by default from 1.30."""
    from glowplug.api import parse
    from glowplug.engines import REGISTRY

    svc = parse(
        {
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {"model": {"id": "m", "source": {"huggingFace": {}}}},
        }
    )
    for engine in REGISTRY.values():
        assert "sleep" in engine.container(svc)["lifecycle"]["preStop"]
    too_old = run(helm(), "template", "gp", str(CHART), "--kube-version", "1.29.9")
    assert too_old.returncode != 0 and "kubeVersion" in too_old.stderr, too_old.stderr
    for ok in ("1.30.0", "v1.35.4"):
        assert run(helm(), "template", "gp", str(CHART), "--kube-version", ok).returncode == 0


# --- lint and render ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets",
    [(), ALL_OPT_INS, (*ALL_OPT_INS, "watchNamespaces={search,team-b}")],
    ids=["defaults", "cluster-wide-all-opt-ins", "namespaced-all-opt-ins"],
)
def test_helm_lint_strict(sets: tuple[str, ...]) -> None:
    args = [helm(), "lint", "--strict", str(CHART)]
    for s in sets:
        args += ["--set", s]
    out = run(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


def test_schema_refuses_unknown_and_bad_values() -> None:
    for bad in ("operatr.replicas=2", "activator.replicas=0", "image.pullPolicy=Sometimes"):
        out = run(helm(), "template", "gp", str(CHART), "--set", bad)
        assert out.returncode != 0, bad


def test_opt_ins_are_off_by_default() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & OPT_IN_KINDS
    assert kinds == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
        "StatefulSet", "PodDisruptionBudget", "ClusterKopfPeering",
        # On by default (issue 13): the key Secret, its Role, the admission policy.
        "Role", "RoleBinding", "Secret",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    }  # fmt: skip


def test_all_opt_ins_render() -> None:
    docs = render(*ALL_OPT_INS, "networkPolicy.namespaces={search}")
    kinds = {d["kind"] for d in docs}
    assert kinds >= OPT_IN_KINDS


def test_network_policy_needs_namespaces() -> None:
    out = run(helm(), "template", "gp", str(CHART), "--set", "networkPolicy.enabled=true")
    assert out.returncode != 0 and "NetworkPolicies are namespaced" in out.stderr


# --- workloads ----------------------------------------------------------------------------


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    workloads = of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in workloads}


def test_pods_are_locked_down() -> None:
    specs = pod_specs(render())
    assert set(specs) == {"gp-glowplug-operator", "gp-glowplug-activator"}
    for name, spec in specs.items():
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], name
            assert c["image"] == "glowplug/glowplug:0.1.0", name


def test_operator_runs_two_peered_replicas() -> None:
    docs = render()
    op = by_name(docs, "StatefulSet", "gp-glowplug-operator")
    assert op["spec"]["replicas"] == 2
    assert op["spec"]["podManagementPolicy"] == "Parallel"
    [c] = op["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["glowplug"] and c["args"][0] == "operator"
    assert "--peering=glowplug" in c["args"]
    # Replicas with equal kopf priorities all pause: each gets its pod index.
    assert "--priority=$(POD_INDEX)" in c["args"]
    index = {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    assert {"name": "POD_INDEX", "valueFrom": {"fieldRef": index}} in c["env"]
    governing = by_name(docs, "Service", op["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    # /stats is on the activator's internal port, named by its internal Service.
    assert "--activator-service=glowplug-system/gp-glowplug-activator-internal" in c["args"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert "--metrics-port=9090" in c["args"]
    assert by_name(docs, "ClusterKopfPeering", "glowplug")


def test_activator_two_replicas_pdb_service_and_drain() -> None:
    docs = render()
    act = by_name(docs, "Deployment", "gp-glowplug-activator")
    assert act["spec"]["replicas"] == 2
    assert act["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = act["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert c["command"] == ["glowplug"] and c["args"][0] == "activator"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "internal"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "internal"}
    assert c["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "internal", "containerPort": 8001, "protocol": "TCP"},
    ]
    assert "--internal-port=8001" in c["args"] and "--auth=required" in c["args"]
    assert "--keys-namespace=glowplug-system" in c["args"]
    assert c["lifecycle"]["preStop"]
    assert spec["terminationGracePeriodSeconds"] > 30
    pdb = by_name(docs, "PodDisruptionBudget", "gp-glowplug-activator")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == act["spec"]["selector"]["matchLabels"]
    svc = by_name(docs, "Service", "gp-glowplug-activator")
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"] == act["spec"]["selector"]["matchLabels"]
    # The internal port has its own headless Service; the public one does not expose it.
    internal = by_name(docs, "Service", "gp-glowplug-activator-internal")
    assert internal["spec"]["clusterIP"] == "None"
    assert internal["spec"]["ports"] == [
        {"name": "internal", "port": 8001, "targetPort": "internal", "protocol": "TCP"}
    ]
    assert internal["spec"]["selector"] == svc["spec"]["selector"]


def test_image_is_configurable() -> None:
    docs = render("image.repository=registry.example/glowplug", "image.tag=dev")
    for spec in pod_specs(docs).values():
        assert spec["containers"][0]["image"] == "registry.example/glowplug:dev"


# --- RBAC ---------------------------------------------------------------------------------


def test_cluster_wide_rbac_is_exactly_what_each_needs() -> None:
    docs = render()
    roles = {r["metadata"]["name"]: r for r in of_kind(docs, "Role")}
    assert set(roles) == {
        "gp-glowplug-operator-activator-endpoints",
        "gp-glowplug-activator-api-keys",
    }
    assert {r["metadata"]["namespace"] for r in roles.values()} == {"glowplug-system"}
    assert rule_table(roles["gp-glowplug-operator-activator-endpoints"]["rules"]) == (
        RELEASE_OPERATOR
    )
    assert rule_table(roles["gp-glowplug-activator-api-keys"]["rules"]) == ACTIVATOR_KEYS
    # auth.enabled=false: the activator may not read Secrets at all.
    off = render("auth.enabled=false")
    assert "gp-glowplug-activator-api-keys" not in {
        r["metadata"]["name"] for r in of_kind(off, "Role")
    }
    assert not [d for d in off if d["kind"] == "Secret"]
    op = by_name(docs, "ClusterRole", "gp-glowplug-operator")
    act = by_name(docs, "ClusterRole", "gp-glowplug-activator")
    assert rule_table(op["rules"]) == CLUSTER_OPERATOR
    assert rule_table(act["rules"]) == ACTIVATOR
    bindings = {b["metadata"]["name"]: b for b in of_kind(docs, "ClusterRoleBinding")}
    for comp in ("operator", "activator"):
        b = bindings[f"gp-glowplug-{comp}"]
        assert b["roleRef"]["name"] == f"gp-glowplug-{comp}"
        assert b["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": f"gp-glowplug-{comp}",
                "namespace": "glowplug-system",
            }
        ]
    sas = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")}
    assert sas == {"gp-glowplug-operator", "gp-glowplug-activator"}
    for spec in pod_specs(docs).values():
        assert spec["serviceAccountName"] in sas


def test_namespaced_mode_cluster_scanning_is_read_only() -> None:
    docs = render("watchNamespaces={search}")
    [role] = of_kind(docs, "ClusterRole")
    assert role["metadata"]["name"] == "gp-glowplug-operator-scanning"
    assert rule_table(role["rules"]) == SCANNING
    [binding] = of_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == "gp-glowplug-operator"


def test_namespaced_rbac_has_one_role_per_namespace_and_no_cluster_roles() -> None:
    docs = render("watchNamespaces={search,team-b}", "operator.rbac.clusterScanning=false")
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(docs, "Role")}
    for ns in ("search", "team-b"):
        assert rule_table(roles[(ns, "gp-glowplug-operator")]["rules"]) == ROLE_OPERATOR
        assert rule_table(roles[(ns, "gp-glowplug-activator")]["rules"]) == ACTIVATOR
    # The activator Service lives in the release namespace, outside the watched ones.
    endpoints = roles[("glowplug-system", "gp-glowplug-operator-activator-endpoints")]
    assert rule_table(endpoints["rules"]) == RELEASE_OPERATOR
    # API key Secrets: the release namespace and each watched one, a Role each.
    for ns in ("glowplug-system", "search", "team-b"):
        assert rule_table(roles[(ns, "gp-glowplug-activator-api-keys")]["rules"]) == ACTIVATOR_KEYS
    assert len(of_kind(docs, "RoleBinding")) == len(roles)
    peerings = {
        (p["metadata"]["namespace"], p["metadata"]["name"]) for p in of_kind(docs, "KopfPeering")
    }
    assert peerings == {("search", "glowplug"), ("team-b", "glowplug")}
    for spec in pod_specs(docs).values():
        args = spec["containers"][0]["args"]
        assert "--namespace=search" in args and "--namespace=team-b" in args
    for spec in pod_specs(render()).values():
        assert not [a for a in spec["containers"][0]["args"] if a.startswith("--namespace")]


# --- opt-ins ------------------------------------------------------------------------------


def test_monitors_carry_additional_labels() -> None:
    docs = render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.additionalLabels.release=prom",
        "metrics.podMonitor.enabled=true",
        "metrics.podMonitor.additionalLabels.release=prom",
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.additionalLabels.release=prom",
    )
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        [doc] = of_kind(docs, kind)
        assert doc["metadata"]["labels"]["release"] == "prom", kind
    # The ServiceMonitor's operator endpoint is the operator's headless Service.
    svc = by_name(docs, "Service", "gp-glowplug-operator")
    assert svc["spec"]["ports"][0]["name"] == "metrics"


def test_monitors_honor_the_series_namespace_label() -> None:
    # prometheus-operator adds the scraped pod's namespace as a target label; glowplug's
    # series carry the EmbeddingService's. Seen on the test bed without honorLabels: the
    # service's namespace became exported_namespace (test_helm_prometheus_scrapes_the_chart).
    docs = render("metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true")
    [svc_monitor] = of_kind(docs, "ServiceMonitor")
    [pod_monitor] = of_kind(docs, "PodMonitor")
    endpoints = svc_monitor["spec"]["endpoints"] + pod_monitor["spec"]["podMetricsEndpoints"]
    assert len(endpoints) == 4
    assert all(ep["honorLabels"] is True for ep in endpoints), endpoints


def test_prometheus_rule_is_the_rules_file() -> None:
    [rule] = of_kind(render("metrics.prometheusRule.enabled=true"), "PrometheusRule")
    source = yaml.safe_load((CHART / "rules" / "glowplug.rules.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]


def test_dashboard_configmap_is_the_json_file_with_a_configurable_label() -> None:
    docs = render(
        "dashboards.enabled=true",
        "dashboards.label=my_dashboards",
        "dashboards.labelValue=yes",
        "dashboards.namespace=monitoring",
    )
    [cm] = of_kind(docs, "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["my_dashboards"] == "yes"
    dashboard = json.loads((CHART / "dashboards" / "glowplug.json").read_text())
    assert json.loads(cm["data"]["glowplug.json"]) == dashboard
    [cm] = of_kind(render("dashboards.enabled=true"), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_network_policy_admits_only_the_activator() -> None:
    docs = render("networkPolicy.enabled=true", "watchNamespaces={search}")
    np = by_name(docs, "NetworkPolicy", "gp-glowplug-engines")
    assert np["metadata"]["namespace"] == "search"
    assert np["spec"]["podSelector"] == {
        "matchExpressions": [{"key": "glowplug.dev/service", "operator": "Exists"}]
    }
    assert np["spec"]["policyTypes"] == ["Ingress"]
    [rule] = np["spec"]["ingress"]
    [peer] = rule["from"]
    act = by_name(docs, "Deployment", "gp-glowplug-activator")
    assert peer["podSelector"]["matchLabels"] == act["spec"]["selector"]["matchLabels"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "glowplug-system"
    }


def test_activator_network_policy_keeps_the_internal_port_internal() -> None:
    docs = render(
        "networkPolicy.enabled=true",
        "watchNamespaces={search}",
        "networkPolicy.activator.publicFrom[0].namespaceSelector.matchLabels.team=search",
    )
    np = by_name(docs, "NetworkPolicy", "gp-glowplug-activator")
    assert np["metadata"]["namespace"] == "glowplug-system"
    act = by_name(docs, "Deployment", "gp-glowplug-activator")
    op = by_name(docs, "StatefulSet", "gp-glowplug-operator")
    assert np["spec"]["podSelector"]["matchLabels"] == act["spec"]["selector"]["matchLabels"]
    public, internal = np["spec"]["ingress"]
    assert public["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert public["from"] == [{"namespaceSelector": {"matchLabels": {"team": "search"}}}]
    assert internal["ports"] == [{"port": "internal", "protocol": "TCP"}]
    assert internal["from"] == [
        {"podSelector": {"matchLabels": op["spec"]["selector"]["matchLabels"]}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]


def test_admission_policy_refuses_host_paths_unless_allowed() -> None:
    docs = render("admissionPolicy.allowedImagePrefixes={lmsysorg/sglang:}")
    vap = by_name(docs, "ValidatingAdmissionPolicy", "gp-glowplug-privileged-fields")
    exprs = [v["expression"] for v in vap["spec"]["validations"]]
    assert len(exprs) == 3 and "hostPath" in exprs[0] and "cacheVolume.hostPath" in exprs[1]
    assert 'startsWith("lmsysorg/sglang:")' in exprs[2]
    binding = by_name(docs, "ValidatingAdmissionPolicyBinding", "gp-glowplug-privileged-fields")
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"]  # cluster-wide: every namespace
    # Nothing left to check: no policy (one without validations is invalid).
    assert not of_kind(render("admissionPolicy.allowHostPath=true"), "ValidatingAdmissionPolicy")
    docs = render("admissionPolicy.allowHostPath=true", "admissionPolicy.allowedImagePrefixes={a/}")
    vap = by_name(docs, "ValidatingAdmissionPolicy", "gp-glowplug-privileged-fields")
    [only] = vap["spec"]["validations"]
    assert 'startsWith("a/")' in only["expression"]
    docs = render("watchNamespaces={search}")
    binding = by_name(docs, "ValidatingAdmissionPolicyBinding", "gp-glowplug-privileged-fields")
    values = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]
    assert values["values"] == ["search"]


# --- recording rules through promtool ---------------------------------------------------


def promtool() -> str:
    path = find_tool("promtool")
    if path is None:
        pytest.skip("promtool not found: run `make promtool` (or put it on PATH, or set PROMTOOL)")
    return path


def test_promtool_check_rules() -> None:
    out = run(promtool(), "check", "rules", str(CHART / "rules" / "glowplug.rules.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules() -> None:
    out = run(promtool(), "test", "rules", str(CHART / "rules" / "glowplug.rules.test.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={search,team-b}",)], ids=["cluster", "ns"])
def test_rendered_args_parse_with_the_real_commands(sets: tuple[str, ...]) -> None:
    """The flags the chart passes exist in `glowplug operator` and `glowplug activator`."""
    import argparse
    import importlib

    modules = {"operator": "glowplug.operator.main", "activator": "glowplug.activator.main"}
    for spec in pod_specs(render(*sets)).values():
        [c] = spec["containers"]
        module = importlib.import_module(modules[c["args"][0]])
        parser = argparse.ArgumentParser(exit_on_error=False)
        module.add_arguments(parser)
        # The kubelet expands $(VAR) from the container's env; any pod index will do.
        argv = [a.replace("$(POD_INDEX)", "1") for a in c["args"][1:]]
        args = parser.parse_args(argv)
        assert (getattr(args, "namespace", None) or getattr(args, "namespaces", None) or []) == (
            ["search", "team-b"] if sets else []
        )


def test_promtool_check_metrics_on_the_exposition() -> None:
    """The activator's and the operator's /metrics pass `promtool check metrics` (lint)."""
    from glowplug.activator.metrics import Metrics
    from glowplug.operator import servicemetrics

    activator = Metrics()
    activator.service("search", "qwen3")
    # Children in the operator's global tables, removed again for the other tests.
    servicemetrics.REPLICAS.labels("t-promtool", "qwen3", "desired").set(1)
    servicemetrics.GPU_SECONDS.labels("t-promtool", "qwen3", "L4").inc(0)
    try:
        expositions = (activator.render(), servicemetrics.exposition())
    finally:
        servicemetrics.REPLICAS.remove("t-promtool", "qwen3", "desired")
        servicemetrics.GPU_SECONDS.remove("t-promtool", "qwen3", "L4")
    for exposition in expositions:
        out = subprocess.run(
            [promtool(), "check", "metrics"], input=exposition, capture_output=True, timeout=60
        )
        assert out.returncode == 0, (out.stdout + out.stderr).decode()


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={search}",)], ids=["cluster", "ns"])
def test_notes_example_is_a_valid_embedding_service(sets: tuple[str, ...]) -> None:
    """The EmbeddingService NOTES.txt tells users to apply parses (required fields set)."""
    from glowplug.api import parse

    args = [helm(), "install", "gp", str(CHART), "-n", "glowplug-system", "--dry-run=client"]
    for s in sets:
        args += ["--set", s]
    out = run(*args)
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    block = notes.split("<<'YAML'\n", 1)[1].split("   YAML\n", 1)[0]
    obj = yaml.safe_load("\n".join(line.removeprefix("   ") for line in block.splitlines()))
    svc = parse(obj)
    assert svc.model.served_name == "qwen3-small"
    assert (obj["metadata"].get("namespace") == "search") == bool(sets)
    assert "svc/gp-glowplug-activator 8000:80" in notes


def test_image_and_chart_agree() -> None:
    """Not a build (no Docker in CI): the Dockerfile's user, entrypoint and build context
    match what the chart and the package expect."""
    dockerfile = (REPO / "images" / "glowplug" / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert f"USER {uid}:{values['podSecurityContext']['runAsGroup']}" in dockerfile
    assert 'ENTRYPOINT ["glowplug"]' in dockerfile
    assert "FROM ${PYTHON_IMAGE} AS build" in dockerfile  # multi-stage: no compiler at runtime
    assert "ENV PYTHONDONTWRITEBYTECODE=1" in dockerfile  # read-only root filesystem
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:4] == [
        "*",
        "!pyproject.toml",
        "!README.md",
        "!operator/glowplug/",
    ]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["glowplug"] == "glowplug.cli:main"
    assert project["readme"] == "README.md"  # copied into the build stage


# --- the dashboard's queries through promtool ------------------------------------------------

GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__range": "1h",
    "$namespace": ".*",
    "$service": ".*",
}


def dashboard_queries() -> dict[str, str]:
    """title/refId -> PromQL with Grafana's variables replaced as Grafana would."""
    dashboard = json.loads((CHART / "dashboards" / "glowplug.json").read_text())
    out: dict[str, str] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            out[f"{panel['title']}/{target['refId']}"] = expr
    return out


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}:check", "expr": expr}
                    for i, expr in enumerate(dashboard_queries().values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = run(promtool(), "check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_evaluates_the_latency_panels_in_both_histogram_modes(tmp_path: Path) -> None:
    """The request-latency panel with one namespace selected: per-service histograms
    (activator.metrics.perServiceHistograms) give that namespace's p50; aggregated ones
    (the default, no namespace label) give every service's p50 instead of no data."""
    dashboard = json.loads((CHART / "dashboards" / "glowplug.json").read_text())
    [panel] = [p for p in dashboard["panels"] if p["title"] == "Request latency"]
    [p50] = [t["expr"] for t in panel["targets"] if t["expr"].startswith("histogram_quantile(0.5,")]
    expr = (
        p50.replace("$namespace", "team-a")
        .replace("$service", ".*")
        .replace("$__rate_interval", "5m")
    )
    name = "glowplug_request_duration_seconds_bucket"

    def near(value: float) -> dict[str, Any]:  # promtool compares floats exactly
        check = f"abs(({expr}) - {value!r}) < bool 1e-9"
        return {"expr": check, "eval_time": "1h", "exp_samples": [{"value": 1}]}

    def series(labels: str, per_minute: dict[str, int]) -> list[dict[str, str]]:
        return [
            {"series": f'{name}{{{labels}le="{le}",path="warm"}}', "values": f"0+{n}x120"}
            for le, n in per_minute.items()
        ]

    test = {
        "evaluation_interval": "1m",
        "tests": [
            {  # aggregated: 6 of 10 requests per minute under 50 ms -> p50 = 0.05 * 5/6
                "interval": "1m",
                "input_series": series("", {"0.05": 6, "0.1": 10, "+Inf": 10}),
                "promql_expr_test": [near(0.05 * 5 / 6)],
            },
            {  # per service: team-a all in (0.05, 0.1] -> 0.075; team-b all under 0.05
                "interval": "1m",
                "input_series": [
                    *series(
                        'namespace="team-a",service="emb",', {"0.05": 0, "0.1": 10, "+Inf": 10}
                    ),
                    *series(
                        'namespace="team-b",service="emb",', {"0.05": 10, "0.1": 10, "+Inf": 10}
                    ),
                ],
                "promql_expr_test": [near(0.075)],
            },
        ],
    }
    path = tmp_path / "latency.test.yaml"
    path.write_text(yaml.safe_dump(test))
    out = run(promtool(), "test", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_evaluates_the_savings_panels(tmp_path: Path) -> None:
    """The stat panels on the synthetic day of glowplug.rules.test.yaml: a quarter of the
    always-on GPU time at $0.96/h, 240 inputs embedded in the hour."""
    rules_test = yaml.safe_load((CHART / "rules" / "glowplug.rules.test.yaml").read_text())
    series = rules_test["tests"][0]["input_series"]
    queries = dashboard_queries()
    expected = {
        "GPU-hours used/A": 0.25,
        "GPU-hours always-on/A": 1,
        "GPU time saved/A": 0.75,
        "Dollars saved/A": 0.72,
        "Dollars spent/A": 0.24,
        "Cost per 1,000 embeddings/A": 1,
    }
    # Only the qwen3 service: the panels sum over everything the variables select.
    qwen3_series = [s for s in series if 'service="qwen3"' in s["series"]]
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": qwen3_series,
                "promql_expr_test": [
                    {"expr": queries[key], "eval_time": "2h", "exp_samples": [{"value": value}]}
                    for key, value in expected.items()
                ],
            }
        ],
    }
    path = tmp_path / "dashboard.test.yaml"
    path.write_text(yaml.safe_dump(test))
    out = run(promtool(), "test", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_per_service_histograms_value_renders_the_flag() -> None:
    import argparse

    from glowplug.activator import main

    parser = argparse.ArgumentParser(exit_on_error=False)
    main.add_arguments(parser)
    [c] = pod_specs(render())["gp-glowplug-activator"]["containers"]
    assert "--per-service-histograms" not in c["args"]
    assert parser.parse_args(c["args"][1:]).per_service_histograms is False
    docs = render("activator.metrics.perServiceHistograms=true")
    [c] = pod_specs(docs)["gp-glowplug-activator"]["containers"]
    assert "--per-service-histograms" in c["args"]
    assert parser.parse_args(c["args"][1:]).per_service_histograms is True
    out = run(
        helm(), "template", "gp", str(CHART), "--set", "activator.metrics.perServiceHistogram=true"
    )
    assert out.returncode != 0 and "perServiceHistogram" in out.stderr


def test_activator_cache_values_render_flags_and_the_password_secret() -> None:
    [c] = pod_specs(render())["gp-glowplug-activator"]["containers"]
    assert "--cache-max-bytes=256Mi" in c["args"]
    assert not any(a.startswith("--cache-redis-url") for a in c["args"])
    assert "GLOWPLUG_CACHE_REDIS_PASSWORD" not in {e["name"] for e in c["env"]}
    docs = render(
        "activator.cache.maxBytes=1Gi",
        "activator.cache.redis.url=redis://redis.cache.svc:6379/0",
        "activator.cache.redis.passwordSecret.name=redis-auth",
    )
    [c] = pod_specs(docs)["gp-glowplug-activator"]["containers"]
    assert "--cache-max-bytes=1Gi" in c["args"]
    assert "--cache-redis-url=redis://redis.cache.svc:6379/0" in c["args"]
    [env] = [e for e in c["env"] if e["name"] == "GLOWPLUG_CACHE_REDIS_PASSWORD"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "password"}
    # The flags parse with the real command.
    import argparse

    from glowplug.activator import main

    parser = argparse.ArgumentParser(exit_on_error=False)
    main.add_arguments(parser)
    args = parser.parse_args(c["args"][1:])
    assert args.cache_redis_url == "redis://redis.cache.svc:6379/0"
    out = run(helm(), "template", "gp", str(CHART), "--set", "activator.cache.maxBytes=12MB")
    assert out.returncode != 0 and "maxBytes" in out.stderr
