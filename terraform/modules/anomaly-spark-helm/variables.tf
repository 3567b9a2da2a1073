variable "release_name" {
  description = "Name of the Helm release. The chart names its SparkApplication or ScheduledSparkApplication after it."
  type        = string
  default     = "anomaly-spark"

  validation {
    # Helm limits release names to 53 characters of DNS-1123 label syntax.
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be 1 to 53 lowercase letters, digits or '-', starting and ending with a letter or digit."
  }
}

variable "namespace" {
  description = "Kubernetes namespace of the release and the token Secret. The Spark Operator must watch it."
  type        = string
  default     = "anomaly-spark"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS-1123 label: 1 to 63 lowercase letters, digits or '-'."
  }
}

variable "create_namespace" {
  description = "Create the namespace. Set to false when it already exists."
  type        = bool
  default     = true
}

variable "namespace_labels" {
  description = "Labels of the created namespace."
  type        = map(string)
  default     = {}
}

variable "chart" {
  description = "Chart to install: a local path or a chart name in chart_repository. Null installs helm/anomaly-spark of this repository."
  type        = string
  default     = null
}

variable "chart_repository" {
  description = "Helm repository URL or OCI registry of the chart. Null: chart is a local path."
  type        = string
  default     = null
}

variable "chart_version" {
  description = "Chart version to install from chart_repository. Null: the latest."
  type        = string
  default     = null
}

variable "image_repository" {
  description = "Image of the driver and executors, built from the repository's Dockerfile (for example ghcr.io/OWNER/anomaly-spark)."
  type        = string
}

variable "image_tag" {
  description = "Image tag. Null: the chart's appVersion."
  type        = string
  default     = null
}

variable "image_pull_secrets" {
  description = "Names of docker-registry Secrets in the namespace used to pull the image."
  type        = list(string)
  default     = []
}

variable "api_token" {
  description = "Token of the source API. When set, the module stores it in the Kubernetes Secret api_token_secret_name. Pass it with TF_VAR_api_token, not in a .tfvars file."
  type        = string
  default     = null
  sensitive   = true
}

variable "api_token_secret_name" {
  description = "Name of the Secret that contains the API token. The module creates it when api_token is set. With use_existing_api_token_secret it must already exist."
  type        = string
  default     = "anomaly-spark-api-token"

  validation {
    condition     = can(regex("^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$", var.api_token_secret_name))
    error_message = "api_token_secret_name must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.'."
  }
}

variable "use_existing_api_token_secret" {
  description = "Reference the existing Secret api_token_secret_name instead of creating one from api_token."
  type        = bool
  default     = false
}

variable "api_token_secret_key" {
  description = "Key of the token inside the Secret."
  type        = string
  default     = "token"
}

variable "api_token_env_name" {
  description = "Environment variable of the driver that receives the token. The chart passes --set api.auth.token_env=<this name> to the job."
  type        = string
  default     = "ANOMALY_SPARK_API_TOKEN"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]*$", var.api_token_env_name))
    error_message = "api_token_env_name must contain only letters, digits and '_', and must not start with a digit."
  }
}

variable "job_config" {
  description = "Configuration file of the job as an object (the YAML keys of conf/default.yaml). It is stored in a ConfigMap and passed as --config. Empty: no file."
  type        = any
  default     = {}
}

variable "source_path" {
  description = "Input path or http(s) URL of a JSON API, passed as --source. Null: the config or the bundled sample decides."
  type        = string
  default     = null
}

variable "source_format" {
  description = "Input format passed as --format. Null: the config decides."
  type        = string
  default     = null

  validation {
    condition     = var.source_format == null || contains(["auto", "csv", "json", "parquet", "delta"], coalesce(var.source_format, "auto"))
    error_message = "source_format must be auto, csv, json, parquet or delta."
  }
}

variable "mode" {
  description = "Detector mode passed as --mode: simple (default parameters) or complex (a parameter search). Null: the config decides."
  type        = string
  default     = null

  validation {
    condition     = var.mode == null || contains(["simple", "complex"], coalesce(var.mode, "simple"))
    error_message = "mode must be simple or complex."
  }
}

variable "config_overrides" {
  description = "Single config overrides, each passed to the job as --set KEY=VALUE (for example detection.contamination=0.02)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for item in var.config_overrides : can(regex("^[^=]+=", item))])
    error_message = "Each config_overrides entry must have the form KEY=VALUE."
  }
}

variable "storage_pvc_claim_name" {
  description = "PersistentVolumeClaim (ReadWriteMany) mounted at storage_mount_path for the Delta output. Set this or storage_uri."
  type        = string
  default     = null
}

variable "storage_mount_path" {
  description = "Mount path of storage_pvc_claim_name in the driver and executors, where the job writes its output."
  type        = string
  default     = "/data/anomaly-spark"
}

variable "storage_uri" {
  description = "Object store URI of the Delta output, for example s3a://bucket/anomaly-spark. Set this or storage_pvc_claim_name."
  type        = string
  default     = null
}

variable "schedule_cron" {
  description = "Cron schedule (for example \"0 2 * * *\"). Set: a ScheduledSparkApplication runs the job on it. Null: one SparkApplication runs once."
  type        = string
  default     = null
}

variable "schedule_concurrency_policy" {
  description = "What happens when a scheduled run is due while the previous one still runs: Allow, Forbid or Replace."
  type        = string
  default     = "Forbid"

  validation {
    condition     = contains(["Allow", "Forbid", "Replace"], var.schedule_concurrency_policy)
    error_message = "schedule_concurrency_policy must be Allow, Forbid or Replace."
  }
}

variable "driver_cores" {
  description = "CPU cores of the driver."
  type        = number
  default     = 1

  validation {
    condition     = var.driver_cores >= 1 && floor(var.driver_cores) == var.driver_cores
    error_message = "driver_cores must be a whole number of at least 1."
  }
}

variable "driver_memory" {
  description = "Heap memory of the driver in Spark's notation, for example 2g or 512m."
  type        = string
  default     = "2g"

  validation {
    condition     = can(regex("^[0-9]+[kmgt]?$", var.driver_memory))
    error_message = "driver_memory must be a number with an optional k, m, g or t suffix, for example 2g."
  }
}

variable "executor_instances" {
  description = "Number of executor pods."
  type        = number
  default     = 2

  validation {
    condition     = var.executor_instances >= 1 && floor(var.executor_instances) == var.executor_instances
    error_message = "executor_instances must be a whole number of at least 1."
  }
}

variable "executor_cores" {
  description = "CPU cores of each executor."
  type        = number
  default     = 1

  validation {
    condition     = var.executor_cores >= 1 && floor(var.executor_cores) == var.executor_cores
    error_message = "executor_cores must be a whole number of at least 1."
  }
}

variable "executor_memory" {
  description = "Heap memory of each executor in Spark's notation, for example 4g."
  type        = string
  default     = "2g"

  validation {
    condition     = can(regex("^[0-9]+[kmgt]?$", var.executor_memory))
    error_message = "executor_memory must be a number with an optional k, m, g or t suffix, for example 4g."
  }
}

variable "driver_service_account" {
  description = "Service account of the driver, allowed to create executor pods. The Spark Operator 2.x chart, installed as release spark-operator, creates spark-operator-spark in its job namespaces."
  type        = string
  default     = "spark-operator-spark"
}

variable "spark_conf" {
  description = "Extra Spark settings. They override the chart's Delta and class path defaults."
  type        = map(string)
  default     = {}
}

variable "hadoop_conf" {
  description = "Hadoop settings, for example the object store's endpoint. The operator adds the spark.hadoop. prefix."
  type        = map(string)
  default     = {}
}

variable "extra_values" {
  description = "Further chart values, merged over the values this module sets (see helm/anomaly-spark/values.yaml)."
  type        = any
  default     = {}
}

variable "helm_timeout" {
  description = "Seconds Helm waits for the release's operations."
  type        = number
  default     = 300
}
