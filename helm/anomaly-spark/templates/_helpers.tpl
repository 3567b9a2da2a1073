{{/*
Chart name, truncated to the 63 characters of a Kubernetes label value.
*/}}
{{- define "anomaly-spark.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the release's resources. The release name is used alone when it
already contains the chart name.
*/}}
{{- define "anomaly-spark.fullname" -}}
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

{{- define "anomaly-spark.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "anomaly-spark.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anomaly-spark.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "anomaly-spark.labels" -}}
helm.sh/chart: {{ include "anomaly-spark.chart" . }}
{{ include "anomaly-spark.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "anomaly-spark.configMapName" -}}
{{- printf "%s-config" (include "anomaly-spark.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "anomaly-spark.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
True (non-empty) when the values contain a job configuration file.
*/}}
{{- define "anomaly-spark.hasConfig" -}}
{{- if kindIs "string" .Values.config }}
{{- if trim .Values.config }}true{{ end }}
{{- else if .Values.config }}true{{ end }}
{{- end }}

{{/*
Output location passed to the job as --output: storage.uri, or the mount
path of storage.pvc.claimName. Exactly one of them must be set.
*/}}
{{- define "anomaly-spark.outputLocation" -}}
{{- $pvc := .Values.storage.pvc.claimName | default "" }}
{{- $uri := .Values.storage.uri | default "" }}
{{- if and $pvc $uri }}
{{- fail "storage.pvc.claimName and storage.uri are both set; set only one of them as the output location" }}
{{- else if $uri }}
{{- $uri }}
{{- else if $pvc }}
{{- required "storage.mountPath is required when storage.pvc.claimName is set" .Values.storage.mountPath }}
{{- else }}
{{- fail "no output location: set storage.pvc.claimName (a PersistentVolumeClaim) or storage.uri (for example s3a://bucket/anomaly-spark)" }}
{{- end }}
{{- end }}

{{/*
Checks of values that the Kubernetes API would accept but that break the job.
*/}}
{{- define "anomaly-spark.validate" -}}
{{- if not .Values.image.repository }}
{{- fail "image.repository is required" }}
{{- end }}
{{- if hasKey .Values.apiToken "token" }}
{{- fail "apiToken.token is not supported: store the token in a Kubernetes Secret and set apiToken.secretName and apiToken.key" }}
{{- end }}
{{- if .Values.apiToken.secretName }}
{{- if not .Values.apiToken.key }}
{{- fail "apiToken.key is required when apiToken.secretName is set" }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" (.Values.apiToken.envName | default "")) }}
{{- fail (printf "apiToken.envName %q is not a valid environment variable name (letters, digits and _, not starting with a digit)" (.Values.apiToken.envName | default "")) }}
{{- end }}
{{- end }}
{{- if lt (int .Values.executor.instances) 1 }}
{{- fail (printf "executor.instances must be at least 1, got %v" .Values.executor.instances) }}
{{- end }}
{{- if .Values.schedule.enabled }}
{{- if not .Values.schedule.cron }}
{{- fail "schedule.cron is required when schedule.enabled is true, for example \"0 2 * * *\"" }}
{{- end }}
{{- if not (has .Values.schedule.concurrencyPolicy (list "Allow" "Forbid" "Replace")) }}
{{- fail (printf "schedule.concurrencyPolicy must be Allow, Forbid or Replace, got %q" (toString .Values.schedule.concurrencyPolicy)) }}
{{- end }}
{{- if .Values.job.runId }}
{{- fail "job.runId cannot be set with schedule.enabled: every scheduled run needs its own run id" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Arguments of jobs/run_pipeline.py, which takes the options of "anomaly-spark run".
*/}}
{{- define "anomaly-spark.arguments" -}}
{{- $args := list "--output" (include "anomaly-spark.outputLocation" .) }}
{{- if .Values.job.master }}
{{- $args = concat $args (list "--master" .Values.job.master) }}
{{- end }}
{{- if include "anomaly-spark.hasConfig" . }}
{{- $args = concat $args (list "--config" (printf "%s/config.yaml" (trimSuffix "/" .Values.configMountPath))) }}
{{- end }}
{{- range $option, $value := dict "--source" .Values.job.source "--format" .Values.job.format "--records-path" .Values.job.recordsPath "--mode" .Values.job.mode "--label-column" .Values.job.labelColumn "--run-id" .Values.job.runId }}
{{- if $value }}
{{- $args = concat $args (list $option (toString $value)) }}
{{- end }}
{{- end }}
{{- if kindIs "bool" .Values.job.plots }}
{{- $args = append $args (ternary "--plots" "--no-plots" .Values.job.plots) }}
{{- end }}
{{- if .Values.apiToken.secretName }}
{{- $args = concat $args (list "--set" (printf "api.auth.token_env=%s" .Values.apiToken.envName)) }}
{{- end }}
{{- range .Values.job.set }}
{{- $args = concat $args (list "--set" (toString .)) }}
{{- end }}
{{- range .Values.job.extraArgs }}
{{- $args = append $args (toString .) }}
{{- end }}
{{- toYaml $args }}
{{- end }}

{{/*
A map rendered as YAML with every value as a string, as the operator's
map[string]string fields (sparkConf, hadoopConf) require.
*/}}
{{- define "anomaly-spark.stringMap" -}}
{{- $strings := dict }}
{{- range $key, $value := . }}
{{- $_ := set $strings $key (toString $value) }}
{{- end }}
{{- toYaml $strings }}
{{- end }}

{{/*
Spark settings: the chart's defaults, overridden by .Values.sparkConf.
*/}}
{{- define "anomaly-spark.sparkConf" -}}
{{- $defaults := dict
  "spark.sql.extensions" "io.delta.sql.DeltaSparkSessionExtension"
  "spark.sql.catalog.spark_catalog" "org.apache.spark.sql.delta.catalog.DeltaCatalog"
  "spark.driver.extraClassPath" "/opt/anomaly-spark/jars/*"
  "spark.executor.extraClassPath" "/opt/anomaly-spark/jars/*"
}}
{{- include "anomaly-spark.stringMap" (merge (deepCopy (.Values.sparkConf | default dict)) $defaults) }}
{{- end }}

{{/*
Settings shared by the driver and executor pods.
*/}}
{{- define "anomaly-spark.podCommon" -}}
{{- $root := index . 0 }}
{{- $pod := index . 1 -}}
cores: {{ $pod.cores | int }}
{{- with $pod.coreLimit }}
coreLimit: {{ . | quote }}
{{- end }}
memory: {{ $pod.memory | quote }}
{{- with $pod.memoryOverhead }}
memoryOverhead: {{ . | quote }}
{{- end }}
labels:
  {{- include "anomaly-spark.selectorLabels" $root | nindent 2 }}
  {{- with $pod.labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $pod.annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pod.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pod.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.podSecurityContext }}
podSecurityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
SparkApplicationSpec, the spec of a SparkApplication and the template of a
ScheduledSparkApplication.
*/}}
{{- define "anomaly-spark.sparkApplicationSpec" -}}
{{- $hasConfig := include "anomaly-spark.hasConfig" . }}
{{- $pvc := .Values.storage.pvc.claimName -}}
type: Python
mode: cluster
sparkVersion: {{ .Values.sparkVersion | quote }}
image: {{ include "anomaly-spark.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
mainApplicationFile: {{ .Values.mainApplicationFile | quote }}
arguments:
  {{- include "anomaly-spark.arguments" . | nindent 2 }}
sparkConf:
  {{- include "anomaly-spark.sparkConf" . | nindent 2 }}
{{- with .Values.hadoopConf }}
hadoopConf:
  {{- include "anomaly-spark.stringMap" . | nindent 2 }}
{{- end }}
restartPolicy:
  {{- toYaml .Values.restartPolicy | nindent 2 }}
{{- if not (kindIs "invalid" .Values.timeToLiveSeconds) }}
timeToLiveSeconds: {{ .Values.timeToLiveSeconds | int64 }}
{{- end }}
{{- if or $hasConfig $pvc }}
volumes:
  {{- if $hasConfig }}
  - name: config
    configMap:
      name: {{ include "anomaly-spark.configMapName" . }}
  {{- end }}
  {{- if $pvc }}
  - name: storage
    persistentVolumeClaim:
      claimName: {{ $pvc }}
  {{- end }}
{{- end }}
driver:
  {{- include "anomaly-spark.podCommon" (list . .Values.driver) | nindent 2 }}
  serviceAccount: {{ .Values.driver.serviceAccount | quote }}
  {{- if or .Values.apiToken.secretName .Values.driver.env }}
  env:
    {{- if .Values.apiToken.secretName }}
    - name: {{ .Values.apiToken.envName }}
      valueFrom:
        secretKeyRef:
          name: {{ .Values.apiToken.secretName }}
          key: {{ .Values.apiToken.key }}
    {{- end }}
    {{- with .Values.driver.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- if or $hasConfig $pvc }}
  volumeMounts:
    {{- if $hasConfig }}
    - name: config
      mountPath: {{ .Values.configMountPath }}
      readOnly: true
    {{- end }}
    {{- if $pvc }}
    - name: storage
      mountPath: {{ .Values.storage.mountPath }}
    {{- end }}
  {{- end }}
executor:
  instances: {{ .Values.executor.instances | int }}
  {{- include "anomaly-spark.podCommon" (list . .Values.executor) | nindent 2 }}
  {{- with .Values.executor.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $pvc }}
  volumeMounts:
    - name: storage
      mountPath: {{ .Values.storage.mountPath }}
  {{- end }}
{{- end }}
