{{- define "fmtl-agent.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fmtl-agent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fmtl-agent.labels" -}}
app.kubernetes.io/name: {{ include "fmtl-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fmtl-agent.selector" -}}
app.kubernetes.io/name: {{ include "fmtl-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "fmtl-agent.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "fmtl-agent.stateClaim" -}}
{{- if .Values.state.existingClaim -}}{{ .Values.state.existingClaim }}{{- else -}}{{ include "fmtl-agent.fullname" . }}-state{{- end -}}
{{- end -}}

{{/* The identity key's passphrase from the identity secret (when the key is encrypted). */}}
{{- define "fmtl-agent.passphraseEnv" -}}
{{- if .Values.identity.passphraseKey -}}
- name: FMTL_AGENT_KEY_PASSPHRASE
  valueFrom:
    secretKeyRef:
      name: {{ .Values.identity.existingSecret }}
      key: {{ .Values.identity.passphraseKey }}
{{- end }}
{{- end -}}

{{- define "fmtl-agent.volumeMounts" -}}
- name: config
  mountPath: /etc/fmtl
  readOnly: true
- name: identity
  mountPath: /etc/fmtl-identity
  readOnly: true
- name: state
  mountPath: /var/lib/fmtl-agent
- name: data
  mountPath: /data
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.caBundle.configMap }}
- name: ca
  mountPath: /etc/fmtl-ca
  readOnly: true
{{- end }}
{{- end -}}
