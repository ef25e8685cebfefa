{{/* Names, labels, images and the required values of the NeuroViT chart. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "neurovit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: the release name, plus the chart name unless the release holds it. */}}
{{- define "neurovit.fullname" -}}
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

{{/* "<fullname>-<suffix>", kept within 63 characters. */}}
{{- define "neurovit.component" -}}
{{- printf "%s-%s" (include "neurovit.fullname" .root) .suffix | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "neurovit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "neurovit.labels" -}}
helm.sh/chart: {{ include "neurovit.chart" . }}
{{ include "neurovit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: neurovit
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "neurovit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "neurovit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component (minio, minio-bucket). */}}
{{- define "neurovit.componentSelectorLabels" -}}
{{ include "neurovit.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* registry/repository:tag, or @digest when one is given. */}}
{{- define "neurovit.image" -}}
{{- $image := .image -}}
{{- if $image.digest }}
{{- printf "%s/%s@%s" $image.registry $image.repository $image.digest }}
{{- else }}
{{- printf "%s/%s:%s%s" $image.registry $image.repository $image.tag (default "" .suffix) }}
{{- end }}
{{- end }}

{{/* The model server: its ServingRuntime's name, the model format it declares, the port its metrics are on
(TorchServe's own metrics port; KServe's model server serves /metrics beside the API). */}}
{{- define "neurovit.runtimeName" -}}
{{- include "neurovit.component" (dict "root" . "suffix" .Values.runtime) }}
{{- end }}

{{- define "neurovit.modelFormat" -}}
{{- ternary "neurovit" "pytorch" (eq .Values.runtime "kserve") }}
{{- end }}

{{- define "neurovit.metricsPort" -}}
{{- ternary 8080 8082 (eq .Values.runtime "kserve") }}
{{- end }}

{{/* The chosen runtime's image values: image.* with its repository. */}}
{{- define "neurovit.runtimeImageValues" -}}
{{- $repository := ternary .Values.image.kserveRepository .Values.image.repository (eq .Values.runtime "kserve") }}
{{- toYaml (merge (dict "repository" $repository) .Values.image) }}
{{- end }}

{{/* The chosen runtime's image, CPU build: what its ServingRuntime names. */}}
{{- define "neurovit.runtimeImage" -}}
{{- include "neurovit.image" (dict "image" (include "neurovit.runtimeImageValues" . | fromYaml)) }}
{{- end }}

{{/* The serving image of the predictor: the -gpu build on GPU predictors. */}}
{{- define "neurovit.servingImage" -}}
{{- $suffix := ternary .Values.gpu.imageTagSuffix "" .Values.gpu.enabled }}
{{- include "neurovit.image" (dict "image" (include "neurovit.runtimeImageValues" . | fromYaml) "suffix" $suffix) }}
{{- end }}

{{/* Required: the published version to serve. */}}
{{- define "neurovit.storageUri" -}}
{{- required "model.storageUri is required: the s3:// URI of a published version folder, e.g. s3://neurovit/neurovit/v20261125-160000-ab12cd (a pipeline run prints it)" .Values.model.storageUri }}
{{- end }}

{{/* Required: the writer's Secret, for pipeline runs (an existing one, or the chart's from --set keys). */}}
{{- define "neurovit.s3SecretName" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else if and .Values.s3.accessKeyId .Values.s3.secretAccessKey }}
{{- include "neurovit.component" (dict "root" . "suffix" "s3") }}
{{- else }}
{{- required "s3.existingSecret is required: the name of a Secret with the writer's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (README, On Kubernetes), or give s3.accessKeyId and s3.secretAccessKey with --set" "" }}
{{- end }}
{{- end }}

{{/* Required: the reader's Secret, for the predictor (read-only keys). */}}
{{- define "neurovit.s3ReaderSecretName" -}}
{{- if .Values.s3.reader.existingSecret }}
{{- .Values.s3.reader.existingSecret }}
{{- else if and .Values.s3.reader.accessKeyId .Values.s3.reader.secretAccessKey }}
{{- include "neurovit.component" (dict "root" . "suffix" "s3-reader") }}
{{- else }}
{{- required "s3.reader.existingSecret is required: the name of a Secret with the predictor's read-only AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give s3.reader.accessKeyId and s3.reader.secretAccessKey with --set" "" }}
{{- end }}
{{- end }}

{{/* Required with the chart's MinIO: the Secret with its root user (MinIO and the bucket Job only). */}}
{{- define "neurovit.minioRootSecretName" -}}
{{- if .Values.minio.auth.existingSecret }}
{{- .Values.minio.auth.existingSecret }}
{{- else if and .Values.minio.auth.rootUser .Values.minio.auth.rootPassword }}
{{- include "neurovit.component" (dict "root" . "suffix" "minio-root") }}
{{- else }}
{{- required "minio.auth.existingSecret is required with the chart's MinIO: the name of a Secret with MINIO_ROOT_USER and MINIO_ROOT_PASSWORD, or give minio.auth.rootUser and minio.auth.rootPassword with --set" "" }}
{{- end }}
{{- end }}

{{/* MinIO runs when it is enabled and no external endpoint is set. */}}
{{- define "neurovit.minioEnabled" -}}
{{- if and .Values.minio.enabled (not .Values.s3.endpoint) }}true{{ end }}
{{- end }}

{{/* host:port of the store, and whether it speaks TLS ("1"/"0", KServe's annotation values). */}}
{{- define "neurovit.s3Endpoint" -}}
{{- if .Values.s3.endpoint }}
{{- .Values.s3.endpoint }}
{{- else if .Values.minio.enabled }}
{{- printf "%s.%s.svc.cluster.local:9000" (include "neurovit.component" (dict "root" . "suffix" "minio")) .Release.Namespace }}
{{- else }}
{{- required "s3.endpoint is required when minio.enabled is false: host:port of your S3 store" "" }}
{{- end }}
{{- end }}

{{- define "neurovit.s3UseHttps" -}}
{{- if and .Values.s3.endpoint .Values.s3.useHttps }}1{{ else }}0{{ end }}
{{- end }}

{{/* Container security context of every container the chart defines. */}}
{{- define "neurovit.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod security context of the chart's own pods: MinIO and mc run as any user; a high uid stays clear of
host users. */}}
{{- define "neurovit.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}
