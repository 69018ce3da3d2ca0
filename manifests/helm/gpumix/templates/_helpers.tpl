{{/* Labels every object carries (the kustomize manifests' labels plus Helm's own). */}}
{{- define "gpumix.labels" -}}
{{- if not .unnamed }}
app.kubernetes.io/name: gpumix
{{- end }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/part-of: gpumix
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Pod selector of a component (the same as the kustomize manifests'). */}}
{{- define "gpumix.selector" -}}
app.kubernetes.io/name: gpumix
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "gpumix.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end }}

{{/* Exempt namespaces: policy.exemptNamespaces plus the release namespace, once each. */}}
{{- define "gpumix.exemptNamespaces" -}}
{{- $list := list -}}
{{- range .Values.policy.exemptNamespaces -}}
{{- $list = append $list . -}}
{{- end -}}
{{- $list = append $list .Release.Namespace -}}
{{- toJson (uniq $list) -}}
{{- end }}

{{/* failurePolicy: the value, or Fail in enforce mode and Ignore in warn and audit
(modes that never refuse a write should not refuse them during an outage either). */}}
{{- define "gpumix.failurePolicy" -}}
{{- if .Values.webhook.failurePolicy -}}
{{- .Values.webhook.failurePolicy -}}
{{- else if eq .Values.mode "enforce" -}}
Fail
{{- else -}}
Ignore
{{- end -}}
{{- end }}

{{/* Whether the webhook bootstraps its own certificate (and so needs write access). */}}
{{- define "gpumix.selfManagedTLS" -}}
{{- if eq .Values.certificates.mode "self-managed" }}true{{ end -}}
{{- end }}

{{/* The Secret the webhook serves from when it does not manage it itself. */}}
{{- define "gpumix.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "given" -}}
{{- required "certificates.given.secretName is required when certificates.mode is given" .Values.certificates.given.secretName -}}
{{- else -}}
gpumix-webhook-tls
{{- end -}}
{{- end }}

{{/* The policy file both components read (gpumix/kube/policy.py). */}}
{{- define "gpumix.policy" -}}
apiVersion: gpumix.io/v1alpha1
kind: Policy
mode: {{ .Values.mode }}
defaultMaxReplicas: {{ .Values.policy.defaultMaxReplicas }}
hardMaxReplicas: {{ .Values.policy.hardMaxReplicas }}
exemptNamespaces: {{ include "gpumix.exemptNamespaces" . }}
{{- with .Values.policy.gpuNodeLabelKeys }}
gpuNodeLabelKeys: {{ toJson . }}
{{- end }}
{{- with .Values.policy.modelLabelKeys }}
modelLabelKeys: {{ toJson . }}
{{- end }}
{{- with .Values.policy.gpuResourceNames }}
gpuResourceNames: {{ toJson . }}
{{- end }}
{{- end }}

{{/* Checks that templates cannot express in the schema. */}}
{{- define "gpumix.validate" -}}
{{- if gt (int .Values.policy.defaultMaxReplicas) (int .Values.policy.hardMaxReplicas) -}}
{{- fail (printf "policy.defaultMaxReplicas (%v) is above policy.hardMaxReplicas (%v)" .Values.policy.defaultMaxReplicas .Values.policy.hardMaxReplicas) -}}
{{- end -}}
{{- if and (eq .Values.certificates.mode "given") (not .Values.certificates.given.caBundle) -}}
{{- fail "certificates.given.caBundle is required when certificates.mode is given (base64 of the PEM CA that signed the Secret)" -}}
{{- end -}}
{{- end }}
