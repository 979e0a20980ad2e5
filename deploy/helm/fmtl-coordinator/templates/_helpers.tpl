{{- define "fmtl.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fmtl.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fmtl.labels" -}}
app.kubernetes.io/name: {{ include "fmtl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fmtl.selector" -}}
app.kubernetes.io/name: {{ include "fmtl.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fmtl.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "fmtl.blobClaim" -}}
{{- if .Values.blobs.existingClaim -}}{{ .Values.blobs.existingClaim }}{{- else -}}{{ include "fmtl.fullname" . }}-blobs{{- end -}}
{{- end -}}

{{/* Environment shared by every coordinator process. */}}
{{- define "fmtl.env" -}}
- name: FMTL_STATE_DIR
  value: /var/lib/fmtl
{{- if .Values.blobs.s3.url }}
- name: FMTL_BLOB_URL
  value: {{ .Values.blobs.s3.url | quote }}
{{- with .Values.blobs.s3.endpointUrl }}
- name: FMTL_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.blobs.s3.region }}
- name: FMTL_S3_REGION
  value: {{ . | quote }}
{{- end }}
{{- else }}
- name: FMTL_BLOB_DIR
  value: /var/lib/fmtl/blobs
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "fmtl.envFrom" -}}
- secretRef:
    name: {{ .Values.existingSecret }}
{{- end -}}

{{/* Volumes shared by every coordinator pod: blobs (shared, unless they live in S3) and a
writable /tmp (also where S3 uploads spool). */}}
{{- define "fmtl.volumes" -}}
{{- if not .Values.blobs.s3.url }}
- name: blobs
  persistentVolumeClaim:
    claimName: {{ include "fmtl.blobClaim" . }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "fmtl.volumeMounts" -}}
{{- if not .Values.blobs.s3.url }}
- name: blobs
  mountPath: /var/lib/fmtl/blobs
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "fmtl.podSpecCommon" -}}
serviceAccountName: {{ include "fmtl.fullname" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
