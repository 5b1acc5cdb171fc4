{{/*
RBAC rules: the least each component needs, every verb and resource spelled out. The
same rule lists back the ClusterRoles (cluster-wide mode) and the per-namespace Roles
(watchNamespaces mode).
*/}}

{{/*
Operator rules for the namespaces it serves: exactly the calls listed in
operator/glowplug/permissions.py (checked by the chart tests and, with kubectl auth
can-i, on a real API server). Owner references cascade deletes: no delete verbs.
*/}}
{{- define "glowplug.operator.namespacedRules" -}}
# kopf watches the resource and patches its finalizer on (the autoscaler's per-object
# daemon needs one) and off; one get by name.
- apiGroups: [glowplug.dev]
  resources: [embeddingservices]
  verbs: [get, list, watch, patch]
# status: phase, conditions, ledger (merge patches).
- apiGroups: [glowplug.dev]
  resources: [embeddingservices/status]
  verbs: [patch]
# scale: the autoscaler's compare-and-swap reads and writes.
- apiGroups: [glowplug.dev]
  resources: [embeddingservices/scale]
  verbs: [get, patch]
# The rendered engine Deployment and Service: server-side apply (patch, and create when
# the object does not exist yet), reads, and kopf's watch of the managed ones.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
# Engine pods: one list+watch (glowplug/kube/informer.py) feeds the ledger and the wake.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Only to check that spec.model.source.huggingFace.tokenSecretRef exists (SecretNotFound):
# one get by name, never a list or watch of Secrets.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on EmbeddingServices (kopf posts through the core API); list: the Events of a
# pod still waiting for a node (cluster-autoscaler's TriggeredScaleUp/NotTriggerScaleUp,
# Karpenter's Nominated), read only during such a wake, and the kubelet's FailedMount
# Events of engine pods stuck in ContainerCreating (wake failure FailedMount).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- end -}}

{{/* kopf peering in namespaced mode: one KopfPeering per watched namespace. */}}
{{- define "glowplug.operator.peeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end -}}

{{/* Cluster-scoped extras of cluster-wide mode. */}}
{{- define "glowplug.operator.clusterRules" -}}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{ include "glowplug.operator.crdRules" . }}
{{- end -}}

{{/*
kopf's resource observer watches CRDs to notice resources appearing and going (read
only). Without it kopf retries for about half a minute, then falls back to the start-up
scan with a warning.
*/}}
{{- define "glowplug.operator.crdRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end -}}

{{/*
Namespaced mode: kopf also lists and watches namespaces (to match --namespace patterns
against the namespaces that exist). Cluster-wide mode does not need this.
*/}}
{{- define "glowplug.operator.namespaceRules" -}}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end -}}

{{/* The activator reads and wakes; it writes nothing but the scale subresource and
status.wakeStartedTime. */}}
{{- define "glowplug.activator.rules" -}}
- apiGroups: [glowplug.dev]
  resources: [embeddingservices]
  verbs: [list, watch]
# Wake: spec.replicas 0 -> 1 through the scale subresource (compare-and-swap).
- apiGroups: [glowplug.dev]
  resources: [embeddingservices/scale]
  verbs: [get, patch]
# A wake stamps status.wakeStartedTime (wake failures are read from the watched object).
- apiGroups: [glowplug.dev]
  resources: [embeddingservices/status]
  verbs: [patch]
# Ready, non-terminating engine endpoints to route to, and pods for wake failures.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
{{- end -}}

{{/* auth.enabled: API key Secrets (a Role per namespace, never a ClusterRole). */}}
{{- define "glowplug.activator.keyRules" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, watch]
{{- end -}}
