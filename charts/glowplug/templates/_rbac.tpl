{{/*
RBAC rules: the least each component needs, every verb and resource spelled out. The
same rule lists back the ClusterRoles (cluster-wide mode) and the per-namespace Roles
(watchNamespaces mode).
*/}}

{{/* Operator rules for the namespaces it serves. */}}
{{- define "glowplug.operator.namespacedRules" -}}
# The resource it reconciles; patch/update for kopf's finalizer and annotations.
- apiGroups: [glowplug.dev]
  resources: [embeddingservices]
  verbs: [get, list, watch, patch, update]
# status: phase, conditions, ledger. scale: the autoscaler's compare-and-swap writes.
- apiGroups: [glowplug.dev]
  resources: [embeddingservices/status, embeddingservices/scale]
  verbs: [get, patch, update]
# The rendered engine Deployment and Service (owner references cascade deletes).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, update, delete]
# Engine pods: wake failures (Unschedulable, ImagePullBackOff, ...) and the GPU-hour ledger.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Only to check that spec.model.source.huggingFace.tokenSecretRef exists (SecretNotFound):
# one get by name, never a list or watch of every Secret.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on EmbeddingServices (kopf posts through the core API); list: the Events of a
# pod still waiting for a node (cluster-autoscaler's TriggeredScaleUp/NotTriggerScaleUp,
# Karpenter's Nominated), read only during such a wake, and the kubelet's FailedMount
# Events of engine pods stuck in ContainerCreating (wake failure FailedMount).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch, list]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Engine endpoints (readiness) and, in the release namespace, the activator pods.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
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

{{/* The activator reads and wakes; it writes nothing but the scale subresource. */}}
{{- define "glowplug.activator.rules" -}}
- apiGroups: [glowplug.dev]
  resources: [embeddingservices]
  verbs: [get, list, watch]
# Wake: spec.replicas 0 -> 1 through the scale subresource (compare-and-swap).
- apiGroups: [glowplug.dev]
  resources: [embeddingservices/scale]
  verbs: [get, patch, update]
# Wake failures are read from status.conditions; a wake stamps status.wakeStartedTime.
- apiGroups: [glowplug.dev]
  resources: [embeddingservices/status]
  verbs: [get, patch]
# Ready, non-terminating engine endpoints to route to.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
{{- end -}}
