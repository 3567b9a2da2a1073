variable "kubeconfig_path" {
  description = "kubeconfig file of the target cluster."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "kubeconfig context of the target cluster. Null: the current context."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Namespace of the release. The Spark Operator must watch it."
  type        = string
  default     = "anomaly-spark"
}

variable "image_repository" {
  description = "anomaly-spark image, for example ghcr.io/OWNER/anomaly-spark."
  type        = string
}

variable "image_tag" {
  description = "Image tag. Null: the chart's appVersion."
  type        = string
  default     = null
}

variable "api_token" {
  description = "Bearer token of the source API. Set it with TF_VAR_api_token."
  type        = string
  default     = null
  sensitive   = true
}

variable "source_url" {
  description = "URL of the JSON API to analyse."
  type        = string
  default     = "https://api.example.com/v1/readings"
}

variable "storage_pvc_claim_name" {
  description = "Existing ReadWriteMany PersistentVolumeClaim for the Delta output."
  type        = string
  default     = "anomaly-spark-data"
}

variable "schedule_cron" {
  description = "Cron schedule of the runs. Null: one run at apply time."
  type        = string
  default     = "0 2 * * *"
}
