{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "qvg-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name; KubeRay appends "-serve-svc" / "-head-svc", so keep it to 40 characters. */}}
{{- define "qvg-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "qvg-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qvg-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "qvg-serve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "qvg-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "qvg-serve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Name of the Secret with the API keys; empty when there is none. */}}
{{- define "qvg-serve.apiKeysSecret" -}}
{{- if .Values.apiKeys.existingSecret }}
{{- .Values.apiKeys.existingSecret }}
{{- else if .Values.apiKeys.create }}
{{- printf "%s-api-keys" (include "qvg-serve.fullname" .) }}
{{- end }}
{{- end }}

{{/* GPUs per worker pod: one engine replica per pod, ceil(num_gpus). */}}
{{- define "qvg-serve.gpusPerWorker" -}}
{{- .Values.config.deployment.ray_actor_options.num_gpus | default 0 | ceil | int }}
{{- end }}

{{/* Worker pods: fixed num_replicas, or the Serve autoscaling bounds. Prints "replicas min max". */}}
{{- define "qvg-serve.workerCounts" -}}
{{- $d := .Values.config.deployment }}
{{- with $d.autoscaling_config }}
{{- printf "%d %d %d" (.min_replicas | int) (.min_replicas | int) (.max_replicas | int) }}
{{- else }}
{{- printf "%d %d %d" ($d.num_replicas | int) ($d.num_replicas | int) ($d.num_replicas | int) }}
{{- end }}
{{- end }}

{{/* Env of every Ray container: the API keys from the Secret (as a variable, and as a file path
when apiKeys.mountFile), writable cache locations under /tmp (the root filesystem is read-only),
then user env. */}}
{{- define "qvg-serve.env" -}}
{{- $secret := include "qvg-serve.apiKeysSecret" . }}
{{- if and $secret .Values.config.server.api_keys_env }}
- name: {{ .Values.config.server.api_keys_env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.apiKeys.secretKey }}
{{- end }}
{{- if and $secret .Values.apiKeys.mountFile }}
- name: QVG_API_KEYS_FILE
  value: {{ printf "%s/%s" (trimSuffix "/" .Values.apiKeys.mountPath) .Values.apiKeys.secretKey | quote }}
{{- end }}
- {name: XDG_CACHE_HOME, value: /tmp/.cache}
- {name: TRITON_CACHE_DIR, value: /tmp/.triton}
{{- end }}

{{/* Volumes of every Ray pod: the writable /tmp (Ray's session dir /tmp/ray: logs, sockets,
runtime envs; Python temp files; caches) and the API-key Secret when mounted as a file. */}}
{{- define "qvg-serve.volumes" -}}
- name: tmp
  emptyDir: {sizeLimit: {{ .Values.tmpSize }}}
{{- $secret := include "qvg-serve.apiKeysSecret" . }}
{{- if and $secret .Values.apiKeys.mountFile }}
- name: api-keys
  secret:
    secretName: {{ $secret }}
    defaultMode: 0440
    items:
      - {key: {{ .Values.apiKeys.secretKey }}, path: {{ .Values.apiKeys.secretKey }}}
{{- end }}
{{- end }}

{{- define "qvg-serve.volumeMounts" -}}
- {name: tmp, mountPath: /tmp}
{{- if and (include "qvg-serve.apiKeysSecret" .) .Values.apiKeys.mountFile }}
- {name: api-keys, mountPath: {{ .Values.apiKeys.mountPath }}, readOnly: true}
{{- end }}
{{- end }}

{{/* `ray start` parameters of the head: the user's, with num-cpus "0" forced (no replica lands
on the head) and dashboard-host defaulting to 0.0.0.0 (the KubeRay operator deploys and polls
the Serve app through the head Service; the NetworkPolicy limits who reaches it). */}}
{{- define "qvg-serve.headStartParams" -}}
{{- $params := merge (dict "num-cpus" "0") (deepCopy .Values.head.rayStartParams) (dict "dashboard-host" "0.0.0.0") }}
{{- toYaml $params }}
{{- end }}

{{/* Serve's config (serveConfigV2). Serve hashes an application's `args` into its code
version: any change there replaces every replica. So `args` holds only what needs a restart
(engine, server, durability); the scheduler's tunables go in the engine's `user_config`
(reconfigure() in place) and replicas / autoscaling / max_ongoing_requests in its
`deployments:` entry (in place). */}}
{{- define "qvg-serve.serveConfig" -}}
{{- $cfg := .Values.config }}
{{- $d := $cfg.deployment -}}
proxy_location: EveryNode
http_options:
  host: {{ $cfg.server.host | quote }}
  port: {{ $cfg.server.port | int }}
applications:
  - name: {{ .Values.serve.appName }}
    import_path: {{ .Values.serve.importPath }}
    route_prefix: {{ .Values.serve.routePrefix }}
    {{- with .Values.serve.runtimeEnv }}
    runtime_env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- $args := omit $cfg "scheduler" "deployment" }}
    {{- $_ := set $args "deployment" (pick $d "name" "ray_actor_options") }}
    args:
      {{- toYaml $args | nindent 6 }}
    deployments:
      - name: {{ $d.name }}
        max_ongoing_requests: {{ $d.max_ongoing_requests | int }}
        graceful_shutdown_timeout_s: {{ (($cfg.durability | default dict).handover_timeout_s | default 20) }}
        user_config:
          scheduler:
            {{- toYaml ($cfg.scheduler | default dict) | nindent 12 }}
        ray_actor_options:
          {{- toYaml $d.ray_actor_options | nindent 10 }}
        {{- with $d.autoscaling_config }}
        autoscaling_config:
          {{- toYaml . | nindent 10 }}
        {{- else }}
        num_replicas: {{ $d.num_replicas | int }}
        {{- end }}
{{- end }}
