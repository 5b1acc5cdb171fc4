"""Every Kubernetes API permission glowplug's two components use, and where the code uses it.

One source of truth for least privilege (DESIGN.md invariant 7): the chart's RBAC
(charts/glowplug/templates/_rbac.tpl) grants exactly these, which
operator/tests/test_chart_static.py checks rule by rule, and
e2e/tests/test_rbac_cluster.py asks a real API server (``kubectl auth can-i --as``) that
each is granted and that ``FORBIDDEN`` is not, in both install modes.

Scopes: ``watched``: the namespaces glowplug serves (every namespace in cluster-wide
mode, each of ``watchNamespaces`` otherwise); ``release``: the release namespace only;
``cluster``: cluster-scoped resources.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Need:
    group: str
    resource: str
    verbs: frozenset[str]
    scope: str  # watched | release | cluster
    why: str  # the code that makes the call


def _need(group: str, resource: str, verbs: str, scope: str, why: str) -> Need:
    return Need(group, resource, frozenset(verbs.split()), scope, why)


OPERATOR: tuple[Need, ...] = (
    _need(
        "glowplug.dev",
        "embeddingservices",
        "get list watch patch",
        "watched",
        "kopf watch (handlers.py); kopf's finalizer for the daemon.py daemons (patch);"
        " Kube.get_embsvc",
    ),
    _need(
        "glowplug.dev",
        "embeddingservices/status",
        "patch",
        "watched",
        "Kube.update_status, serviceloop.py status patches",
    ),
    _need(
        "glowplug.dev",
        "embeddingservices/scale",
        "get patch",
        "watched",
        "kube/scale.py read_scale / write_scale (compare-and-swap)",
    ),
    # Server-side apply: patch, and create when the object does not exist yet.
    _need(
        "apps",
        "deployments",
        "get list watch create patch",
        "watched",
        "Kube.apply (server-side apply); kopf watch of managed Deployments",
    ),
    _need(
        "",
        "services",
        "get list watch create patch",
        "watched",
        "Kube.apply (server-side apply); kopf watch of managed Services",
    ),
    _need(
        "",
        "pods",
        "list watch",
        "watched",
        "kube/informer.py: one list+watch of the engine pods (ledger, wake failures, phases)",
    ),
    _need(
        "",
        "secrets",
        "get",
        "watched",
        "Kube.secret_keys: the tokenSecretRef exists (one get by name)",
    ),
    _need(
        "",
        "events",
        "create list",
        "watched",
        "kopf event posting (kopf.event); serviceapi.py list_namespaced_event (a waiting"
        " pod's node-autoscaler Events, wake phases; a creating pod's FailedMount Events)",
    ),
    _need(
        "discovery.k8s.io",
        "endpointslices",
        "list watch",
        "release",
        "activity.py: the activator Service's endpoints (one informer)",
    ),
)
# kopf's peering and observers, by install mode.
OPERATOR_CLUSTER_WIDE: tuple[Need, ...] = (
    _need("kopf.dev", "clusterkopfpeerings", "get list watch patch", "cluster", "kopf peering"),
    _need(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "get list watch",
        "cluster",
        "kopf resource observer",
    ),
)
OPERATOR_NAMESPACED: tuple[Need, ...] = (
    _need("kopf.dev", "kopfpeerings", "get list watch patch", "watched", "kopf peering"),
)
# operator.rbac.clusterScanning (namespaced mode): kopf's observers, read-only.
OPERATOR_SCANNING: tuple[Need, ...] = (
    _need(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "get list watch",
        "cluster",
        "kopf resource observer",
    ),
    _need("", "namespaces", "list watch", "cluster", "kopf namespace observer"),
)

ACTIVATOR: tuple[Need, ...] = (
    _need(
        "glowplug.dev",
        "embeddingservices",
        "list watch",
        "watched",
        "watch.py informer (kube/informer.py)",
    ),
    _need(
        "glowplug.dev",
        "embeddingservices/scale",
        "get patch",
        "watched",
        "waker.py KubeScaler.raise_from_zero",
    ),
    _need(
        "glowplug.dev",
        "embeddingservices/status",
        "patch",
        "watched",
        "waker.py: status.wakeStartedTime",
    ),
    _need(
        "discovery.k8s.io",
        "endpointslices",
        "list watch",
        "watched",
        "watch.py informer (kube/informer.py)",
    ),
    _need("", "pods", "list watch", "watched", "watch.py informer (wake failures)"),
)
# auth.enabled: API key Secrets, in the release namespace (and in namespaced mode each
# watched namespace), never cluster-wide.
ACTIVATOR_KEYS = _need("", "secrets", "list watch", "release", "watch.py Secret informer")

# What neither component may do anywhere (checked in every namespace the test creates).
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("apps", "deployments", "delete"),
    ("", "services", "delete"),
    ("glowplug.dev", "embeddingservices", "delete"),
    ("", "pods", "delete"),
    ("", "pods/exec", "create"),
    ("", "secrets", "create"),
    ("", "configmaps", "get"),
    ("", "serviceaccounts/token", "create"),
    ("rbac.authorization.k8s.io", "roles", "create"),
    ("admissionregistration.k8s.io", "validatingadmissionpolicies", "get"),
)
# The operator never lists or watches Secrets (its one get names the token Secret).
OPERATOR_FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
)
