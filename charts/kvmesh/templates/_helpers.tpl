{{/*
The chart's name (app.kubernetes.io/name).
*/}}
{{- define "kvmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: at most 63 characters (a DNS label). The
release name alone when it already contains the chart name.
*/}}
{{- define "kvmesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
`<fullname>-<component>` within 63 characters: the fullname is shortened,
never the component, so names stay distinct.
Usage: include "kvmesh.componentName" (list . "operator")
*/}}
{{- define "kvmesh.componentName" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $prefix := include "kvmesh.fullname" $ctx | trunc (int (sub 62 (len $component))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix $component }}
{{- end }}

{{- define "kvmesh.operatorName" -}}
{{- include "kvmesh.componentName" (list . "operator") }}
{{- end }}

{{/*
The ClusterRole each pool's router is bound to (cluster-scoped, so named
after the release: two releases do not collide).
*/}}
{{- define "kvmesh.routerClusterRole" -}}
{{- default (include "kvmesh.componentName" (list . "router")) .Values.router.clusterRoleName }}
{{- end }}

{{- define "kvmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvmesh.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Labels every object carries (may change between releases); objects of the
operator itself add `app.kubernetes.io/component: operator`.
*/}}
{{- define "kvmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "kvmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvmesh
{{- end }}

{{/*
The immutable subset that selects the operator's pods (a Deployment's
selector can never change): no version, no chart.
*/}}
{{- define "kvmesh.operatorLabels" -}}
{{ include "kvmesh.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kvmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The image, tagged with the chart's appVersion unless a tag is given.
*/}}
{{- define "kvmesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Labels the operator gives the routers and node caches it creates
(src/operator/builders.rs `labels`): what the PodMonitor selects.
*/}}
{{- define "kvmesh.poolPodSelector" -}}
matchLabels:
  app.kubernetes.io/name: kvmesh
  app.kubernetes.io/managed-by: kvmesh-operator
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: [router, node-cache]
{{- end }}
