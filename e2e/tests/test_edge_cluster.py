"""The chart's security edge on the test bed's real API server.

- Least privilege: the chart's ServiceAccounts and RBAC (``helm template``, applied as
  they are) are asked with ``kubectl auth can-i --as=system:serviceaccount:NS:NAME``:
  every permission in ``glowplug.permissions`` (the calls the code makes) is granted
  where the code needs it, and ``FORBIDDEN`` (delete on Deployments and Services, list
  or watch of Secrets by the operator, pods/exec, other resources) is denied, in both
  install modes, each ServiceAccount separately.
- The ValidatingAdmissionPolicy: ``kubectl apply`` of an EmbeddingService with a
  hostPath model source, a hostPath cache volume or an engine image outside the
  allowlist is refused by the API server with a message naming the field.
- API key Secrets are watched by a real activator: keyed once one exists, rotated and
  revoked without a restart.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import Cluster
from e2e.helmkit import CHART
from e2e.tests.helpers import ActivatorProcess, wait_for
from glowplug import permissions as perms

pytestmark = pytest.mark.cluster

RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                 "ValidatingAdmissionPolicyBinding"}  # fmt: skip


@pytest.fixture(scope="module")
def chart_crds(cluster: Cluster, crd_installed: Path) -> None:
    """The chart's CRDs (ours and kopf's peering): ``kubectl auth can-i`` resolves a
    resource through discovery and answers "no" for one the server does not know."""
    for f in sorted((CHART / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev",
    )  # fmt: skip


def helm_template(cluster: Cluster, release: str, namespace: str, *sets: str) -> list[Any]:
    args = [str(cluster.bin_dir / "helm"), "template", release, str(CHART), "-n", namespace]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@contextlib.contextmanager
def applied(cluster: Cluster, docs: list[Any], namespaces: list[str]) -> Iterator[None]:
    """Create ``namespaces``, apply ``docs``; delete both after (cluster-scoped by name)."""
    for ns in namespaces:
        cluster.kubectl("create", "namespace", ns)
    try:
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        yield
    finally:
        for d in docs:
            if d["kind"] in CLUSTER_KINDS:
                cluster.kubectl(
                    "delete", d["kind"], d["metadata"]["name"], "--ignore-not-found", check=False
                )
        for ns in namespaces:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def can_i(cluster: Cluster, sa: str, verb: str, group: str, resource: str, ns: str | None) -> bool:
    base, _, sub = resource.partition("/")
    target = f"{base}.{group}" if group else base
    args = ["auth", "can-i", verb, target, f"--as={sa}"]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["-n", ns] if ns else []
    out = cluster.kubectl(*args, check=False)
    answer = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert answer in ("yes", "no"), (args, out.stdout, out.stderr)
    return answer == "yes"


def check(
    cluster: Cluster,
    sa: str,
    needs: tuple[perms.Need, ...],
    where: dict[str, list[str | None]],
    forbidden: list[tuple[str, str, str, str | None]],
) -> list[str]:
    """Every needed verb granted in each namespace of its scope, every forbidden denied;
    returns the problems (empty: none)."""
    problems = []
    for n in needs:
        for ns in where[n.scope]:
            for verb in sorted(n.verbs):
                if not can_i(cluster, sa, verb, n.group, n.resource, ns):
                    problems.append(f"{sa} cannot {verb} {n.group}/{n.resource} in {ns} ({n.why})")
    for verb, group, resource, ns in forbidden:
        if can_i(cluster, sa, verb, group, resource, ns):
            problems.append(f"{sa} CAN {verb} {group}/{resource} in {ns or 'the cluster'}")
    return problems


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_each_service_account_may_do_exactly_what_the_code_calls(
    cluster: Cluster, chart_crds: None, mode: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    release, rel_ns = f"rb{tag}", f"rbac-{tag}-system"
    watched = [f"rbac-{tag}-a", f"rbac-{tag}-b"]
    other = f"rbac-{tag}-other"  # exists, but glowplug does not serve it in namespaced mode
    sets = [] if mode == "cluster-wide" else [f"watchNamespaces={{{','.join(watched)}}}"]
    docs = [d for d in helm_template(cluster, release, rel_ns, *sets) if d["kind"] in RBAC_KINDS]
    op_sa = f"system:serviceaccount:{rel_ns}:{release}-glowplug-operator"
    act_sa = f"system:serviceaccount:{rel_ns}:{release}-glowplug-activator"
    served: list[str | None] = [*watched, other] if mode == "cluster-wide" else [*watched]
    where: dict[str, list[str | None]] = {
        "watched": served,
        "release": [rel_ns],
        "cluster": [None],
    }
    op_needs = perms.OPERATOR + (
        perms.OPERATOR_CLUSTER_WIDE
        if mode == "cluster-wide"
        else perms.OPERATOR_NAMESPACED + perms.OPERATOR_SCANNING
    )
    key_scope: list[str | None] = [rel_ns] + ([] if mode == "cluster-wide" else [*watched])
    everywhere: list[str | None] = [rel_ns, *watched, other]
    forbidden = [(v, g, r, ns) for g, r, v in perms.FORBIDDEN for ns in everywhere]
    op_forbidden = forbidden + [
        (v, g, r, ns) for g, r, v in perms.OPERATOR_FORBIDDEN for ns in everywhere
    ]
    # The activator's key Secrets: its namespaces only, never another or cluster-wide.
    outside = [ns for ns in everywhere if ns not in key_scope]
    act_forbidden = forbidden + [("list", "", "secrets", ns) for ns in outside]
    act_forbidden += [("get", "", "secrets", ns) for ns in everywhere]
    if mode == "namespaced":
        # Nothing at all in a namespace it does not serve.
        act_forbidden += [("list", "glowplug.dev", "embeddingservices", other)]
        op_forbidden += [("list", "apps", "deployments", other), ("get", "", "secrets", other)]
    with applied(cluster, docs, [rel_ns, *watched, other]):
        act_where = {**where, "release": key_scope}
        problems = check(cluster, op_sa, op_needs, where, op_forbidden)
        problems += check(cluster, act_sa, perms.ACTIVATOR, where, act_forbidden)
        problems += check(cluster, act_sa, (perms.ACTIVATOR_KEYS,), act_where, [])
        # auth.enabled=false: the activator may not read Secrets anywhere.
        off = [
            d
            for d in helm_template(cluster, release, rel_ns, *sets, "auth.enabled=false")
            if d["kind"] in RBAC_KINDS
        ]
        names = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in off}
        dropped = [
            d
            for d in docs
            if (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) not in names
        ]
        assert {d["kind"] for d in dropped} == {"Role", "RoleBinding"}, dropped
        for d in dropped:
            cluster.kubectl(
                "delete", d["kind"], d["metadata"]["name"], "-n", d["metadata"]["namespace"]
            )
        for ns in everywhere:
            # The RBAC authorizer reads roles from an informer: a moment's delay.
            wait_for(
                lambda ns=ns: not can_i(cluster, act_sa, "list", "", "secrets", ns),
                30,
                what=f"the activator to lose Secret access in {ns}",
            )
    assert not problems, "\n".join(problems)


BAD_CASES = {
    "spec.model.source.hostPath": {
        "model": {"id": "m", "source": {"hostPath": {"path": "/models/m"}}},
    },
    "spec.engine.cacheVolume.hostPath": {
        "model": {"id": "m", "source": {"huggingFace": {}}},
        "engine": {"cacheVolume": {"hostPath": {"path": "/var/cache/sglang"}}},
    },
    "spec.engine.image": {
        "model": {"id": "m", "source": {"huggingFace": {}}},
        "engine": {"image": "evil.example/miner:latest"},
    },
}


def embsvc(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "EmbeddingService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_admission_policy_refuses_privileged_fields(
    cluster: Cluster, crd_installed: Path, namespace: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    release = f"vap{tag}"
    docs = helm_template(
        cluster,
        release,
        "glowplug-system",
        f"watchNamespaces={{{namespace}}}",
        "admissionPolicy.allowedImagePrefixes={lmsysorg/sglang:}",
    )
    policy = [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]
    assert len(policy) == 2
    good = embsvc("good", namespace, {"model": {"id": "m", "source": {"huggingFace": {}}}})
    with applied(cluster, policy, []):
        # The API server loads a new policy within a second or so: wait until it acts.
        bad = embsvc("probe", namespace, BAD_CASES["spec.model.source.hostPath"])

        def refused() -> bool:
            out = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
            if out.returncode == 0:
                cluster.kubectl("delete", "embsvc", "probe", "-n", namespace, check=False)
            return out.returncode != 0

        wait_for(refused, 60, what="the admission policy to take effect")
        for i, (field, spec) in enumerate(BAD_CASES.items()):
            obj = embsvc(f"bad-{i}", namespace, spec)
            out = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj), check=False)
            assert out.returncode != 0, f"{field}: accepted"
            assert field in out.stderr and "ValidatingAdmissionPolicy" in out.stderr, out.stderr
        # Allowed: the pinned image (empty), an allowed prefix, PVC sources.
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(good))
        ok = embsvc(
            "ok-image",
            namespace,
            {
                "model": {"id": "m", "source": {"persistentVolumeClaim": {"claimName": "w"}}},
                "engine": {"image": "lmsysorg/sglang:v0.5.23"},
            },
        )
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(ok))
    # Without the policy, the CRD alone accepts a hostPath (what the policy adds).
    obj = embsvc("host-ok", namespace, BAD_CASES["spec.model.source.hostPath"])

    def accepted() -> bool:
        out = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj), check=False)
        return out.returncode == 0

    wait_for(accepted, 60, what="the policy's removal to take effect")


def test_key_secrets_are_watched_and_rotate_without_a_restart(
    cluster: Cluster, crd_installed: Path, namespace: str, tmp_path: Path
) -> None:
    """A real activator (auth auto, keys from its namespace) against the API server:
    open until a key Secret exists, then keyed; an edited key replaces the old one; a
    deleted Secret revokes it."""
    import urllib.error
    import urllib.request

    def models(key: str | None) -> int:
        req = urllib.request.Request(f"{act.url}/v1/models")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def key_secret(key: str) -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "team-a",
                    "namespace": namespace,
                    "labels": {"glowplug.dev/api-key": ""},
                },
                "stringData": {"key": key},
            }
        )

    old, new = "gp-e2e-old-key-0123456789", "gp-e2e-new-key-0123456789"
    act = ActivatorProcess(cluster, namespace, tmp_path / "activator.log")
    act.start()
    try:
        assert models(None) == 200  # auto: no key Secret yet, open
        cluster.kubectl("apply", "-f", "-", input=key_secret(old))
        wait_for(lambda: models(None) == 401, 30, what="the key Secret to be watched")
        assert models(old) == 200
        cluster.kubectl("apply", "-f", "-", input=key_secret(new))
        wait_for(lambda: models(old) == 401, 30, what="the rotation")
        assert models(new) == 200
        cluster.kubectl("delete", "secret", "team-a", "-n", namespace)
        wait_for(lambda: models(None) == 200, 30, what="the revocation")
        assert old not in act.log() and new not in act.log()  # never logged
    finally:
        act.stop()
