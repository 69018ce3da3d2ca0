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

{{/* The webhooks' match condition: gpumix/kube/scope.py's cel_expression for the
policy's modelLabelKeys and gpuResourceNames (empty: gpumix/kube/policy.py's defaults).
tests/manifests/test_helm_chart.py holds the two equal for default and custom values. */}}
{{- define "gpumix.scopeExpression" -}}
{{- $models := .Values.policy.modelLabelKeys | default (list "gpumix.io/model" "model.aibrix.ai/name") -}}
{{- $names := .Values.policy.gpuResourceNames | default (list "nvidia.com/gpu" "nvidia.com/mig-*" "amd.com/gpu" "google.com/tpu") -}}
{{- $exact := list -}}
{{- $prefixes := list -}}
{{- range $names -}}
{{- if hasSuffix "*" . -}}
{{- $prefixes = append $prefixes (trimSuffix "*" .) -}}
{{- else -}}
{{- $exact = append $exact . -}}
{{- end -}}
{{- end -}}
{{- $model := toJson $models -}}
{{- $templateKeys := toJson (append $models "gpumix.io/gpu-type") -}}
{{- $accelerator := printf "r in %s || %s.exists(p, r.startsWith(p))" (toJson $exact) (toJson $prefixes) -}}
request.resource.group != "apps" ||
[object, oldObject].exists(o, o != null && (
  (has(o.metadata.labels) && {{ $model }}.exists(k,
    k in o.metadata.labels && o.metadata.labels[k] != "")) ||
  (has(o.spec.template.metadata) && has(o.spec.template.metadata.labels) &&
    {{ $templateKeys }}.exists(k,
    k in o.spec.template.metadata.labels && o.spec.template.metadata.labels[k] != "")) ||
  (has(o.spec.template.spec) && (
    (has(o.spec.template.spec.containers) ? o.spec.template.spec.containers : []) +
    (has(o.spec.template.spec.initContainers) ? o.spec.template.spec.initContainers : [])
  ).exists(c, has(c.resources) && (
    (has(c.resources.limits) && c.resources.limits.exists(r,
      {{ $accelerator }})) ||
    (has(c.resources.requests) && c.resources.requests.exists(r,
      {{ $accelerator }}))))))) ||
(oldObject != null && has(oldObject.spec.selector) && has(oldObject.spec.selector.matchLabels) &&
  "gpumix.io/deployment" in oldObject.spec.selector.matchLabels)
{{ end }}

{{/* The mutating webhook's second match condition: gpumix/kube/scope.py's
mutation_expression (gpumix's own labels and the autoscalers' ceiling fields only, so
no values change it). tests/manifests/test_helm_chart.py holds the two equal. */}}
{{- define "gpumix.mutationExpression" -}}
(request.resource.group == "apps" && (oldObject != null ?
    ((has(oldObject.spec) && has(oldObject.spec.selector) && has(oldObject.spec.selector.matchLabels) && "gpumix.io/deployment" in oldObject.spec.selector.matchLabels) && !(has(object.spec) && has(object.spec.selector) && has(object.spec.selector.matchLabels) && "gpumix.io/deployment" in object.spec.selector.matchLabels)) ||
    ((has(oldObject.spec) && has(oldObject.spec.template) && has(oldObject.spec.template.metadata) && has(oldObject.spec.template.metadata.labels) && "gpumix.io/gpu-type" in oldObject.spec.template.metadata.labels) && !(has(object.spec) && has(object.spec.template) && has(object.spec.template.metadata) && has(object.spec.template.metadata.labels) && "gpumix.io/gpu-type" in object.spec.template.metadata.labels)) ||
    (has(oldObject.spec) && has(oldObject.spec.selector) ? !(has(object.spec) && has(object.spec.selector)) || object.spec.selector != oldObject.spec.selector : has(object.spec) && has(object.spec.selector)) :
    request.operation == "CREATE" && !(has(object.metadata.name) && object.metadata.name.matches("^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$") && size(object.metadata.name) <= 63 && (has(object.spec) && has(object.spec.selector) && has(object.spec.selector.matchLabels) && "gpumix.io/deployment" in object.spec.selector.matchLabels) && object.spec.selector.matchLabels["gpumix.io/deployment"] == object.metadata.name && (has(object.spec) && has(object.spec.template) && has(object.spec.template.metadata) && has(object.spec.template.metadata.labels) && "gpumix.io/deployment" in object.spec.template.metadata.labels) && object.spec.template.metadata.labels["gpumix.io/deployment"] == object.metadata.name && "gpumix.io/gpu-type" in object.spec.template.metadata.labels))) ||
(request.resource.group in ["autoscaling"] && !(has(object.spec) && has(object.spec.maxReplicas) && type(object.spec.maxReplicas) == int && object.spec.maxReplicas != 0)) ||
(request.resource.group in ["keda.sh"] && !(has(object.spec) && has(object.spec.maxReplicaCount) && type(object.spec.maxReplicaCount) == int && object.spec.maxReplicaCount != 0)) ||
(request.resource.group in ["autoscaling.aibrix.ai"] && !(has(object.spec) && has(object.spec.maxReplicas) && type(object.spec.maxReplicas) == int && object.spec.maxReplicas != 0)) ||
!(request.resource.group in ["apps","autoscaling","keda.sh","autoscaling.aibrix.ai"])
{{ end }}
