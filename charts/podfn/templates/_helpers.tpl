{{/* Names, labels and the pieces every pod shares. */}}

{{- define "podfn.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "podfn.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: podfn
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: podfn
{{- end -}}

{{/* Selector labels of one component: pass (list $ "api"). */}}
{{- define "podfn.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: podfn
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "podfn.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "podfn.runtimeNamespace" -}}
{{- .Values.runtime.namespace.name | default (printf "%s-runtime" .Release.Namespace) -}}
{{- end -}}

{{- define "podfn.apiServiceAccount" -}}
{{- .Values.serviceAccount.api.name | default (printf "%s-api" (include "podfn.fullname" .)) -}}
{{- end -}}

{{- define "podfn.controllerServiceAccount" -}}
{{- .Values.serviceAccount.controller.name | default (printf "%s-controller" (include "podfn.fullname" .)) -}}
{{- end -}}

{{/* The Secret (release namespace) and key holding the database URL. */}}
{{- define "podfn.databaseSecret" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "podfn.fullname" .)) -}}
{{- end -}}

{{- define "podfn.databaseSecretKey" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecretKey }}{{- else -}}url{{- end -}}
{{- end -}}

{{- define "podfn.tokenSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-api-token" (include "podfn.fullname" .)) -}}
{{- end -}}

{{- define "podfn.tokenSecretKey" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{- define "podfn.postgresqlHost" -}}
{{- printf "%s-postgresql.%s.svc" (include "podfn.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* Exactly one source of the database URL. */}}
{{- define "podfn.checkDatabase" -}}
{{- $sources := 0 -}}
{{- if .Values.database.url }}{{ $sources = add1 $sources }}{{ end -}}
{{- if .Values.database.existingSecret }}{{ $sources = add1 $sources }}{{ end -}}
{{- if .Values.postgresql.enabled }}{{ $sources = add1 $sources }}{{ end -}}
{{- if ne (int $sources) 1 -}}
{{- fail "podfn needs exactly one database: set database.url, database.existingSecret (a Secret with the URL), or postgresql.enabled=true to try it out" -}}
{{- end -}}
{{- end -}}

{{/* Pod- and container-level security contexts: the "restricted" Pod Security Standard. */}}
{{- define "podfn.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . | default 10001 }}
runAsGroup: {{ . | default 10001 }}
fsGroup: {{ . | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "podfn.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* API and controller: the platform role's URL when the chart made the Secret; with
     database.existingSecret, the URL in it (point it at the platform role yourself). */}}
{{- define "podfn.platformDatabaseEnv" -}}
- name: PODFN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "podfn.databaseSecret" . }}
      key: {{ if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}platform-url{{ end }}
{{- end -}}

{{- define "podfn.databaseEnv" -}}
- name: PODFN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "podfn.databaseSecret" . }}
      key: {{ include "podfn.databaseSecretKey" . }}
{{- end -}}
