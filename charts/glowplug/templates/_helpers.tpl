{{/* Names, labels and shared snippets. */}}

{{- define "glowplug.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "glowplug.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "glowplug.operator.fullname" -}}
{{- printf "%s-operator" (include "glowplug.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "glowplug.activator.fullname" -}}
{{- printf "%s-activator" (include "glowplug.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "glowplug.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "glowplug.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "glowplug.activator.serviceAccountName" -}}
{{- if .Values.activator.serviceAccount.create -}}
{{- default (include "glowplug.activator.fullname" .) .Values.activator.serviceAccount.name -}}
{{- else -}}
{{- required "activator.serviceAccount.name is required when activator.serviceAccount.create is false" .Values.activator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "glowplug.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Cluster-wide unless watchNamespaces lists namespaces. */}}
{{- define "glowplug.clusterWide" -}}
{{- if empty .Values.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{- define "glowplug.selectorLabels" -}}
app.kubernetes.io/name: {{ include "glowplug.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "glowplug.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "glowplug.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: glowplug
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Component labels: call with (dict "ctx" $ "component" "operator"). */}}
{{- define "glowplug.componentSelectorLabels" -}}
{{ include "glowplug.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "glowplug.componentLabels" -}}
{{ include "glowplug.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}
