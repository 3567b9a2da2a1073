variable "databricks_host" {
  description = "Workspace URL, for example https://adb-1234567890123456.7.azuredatabricks.net. Null: DATABRICKS_HOST or the profile."
  type        = string
  default     = null
}

variable "databricks_profile" {
  description = "Profile in ~/.databrickscfg. Null: environment variables only."
  type        = string
  default     = null
}

variable "job_name" {
  description = "Name of the Databricks job."
  type        = string
  default     = "anomaly-spark"
}

variable "wheel_path" {
  description = "Location of the anomaly-spark wheel built with python -m build, for example dbfs:/anomaly-spark/wheels/anomaly_spark-0.1.0-py3-none-any.whl or /Volumes/main/default/artifacts/anomaly_spark-0.1.0-py3-none-any.whl."
  type        = string

  validation {
    condition     = endswith(var.wheel_path, ".whl")
    error_message = "wheel_path must point to a .whl file."
  }
}

variable "spark_version" {
  description = "Databricks Runtime version of the job cluster. The package needs Spark 4.0 (Databricks Runtime 17.x) and Scala 2.13."
  type        = string
  default     = "17.3.x-scala2.13"
}

variable "node_type_id" {
  description = "Node type of the driver and workers. Null: the smallest type with a local disk and at least 4 cores."
  type        = string
  default     = null
}

variable "num_workers" {
  description = "Number of worker nodes of the job cluster."
  type        = number
  default     = 2

  validation {
    condition     = var.num_workers >= 1 && floor(var.num_workers) == var.num_workers
    error_message = "num_workers must be a whole number of at least 1."
  }
}

variable "source_path" {
  description = "Input passed as --source: a path (dbfs:/, /Volumes/, s3://, abfss://) or an http(s) URL of a JSON API."
  type        = string
  default     = "dbfs:/data/input.parquet"
}

variable "output_path" {
  description = "Folder of the Delta tables and runs, passed as --output."
  type        = string
  default     = "dbfs:/anomaly-spark/output"
}

variable "mode" {
  description = "Detector mode passed as --mode: simple or complex."
  type        = string
  default     = "simple"

  validation {
    condition     = contains(["simple", "complex"], var.mode)
    error_message = "mode must be simple or complex."
  }
}

variable "config_overrides" {
  description = "Config overrides, each passed as --set KEY=VALUE (for example detection.contamination=0.02)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for item in var.config_overrides : can(regex("^[^=]+=", item))])
    error_message = "Each config_overrides entry must have the form KEY=VALUE."
  }
}

variable "extra_parameters" {
  description = "Further arguments appended to the job's parameters, for example [\"--no-plots\"]."
  type        = list(string)
  default     = []
}

variable "api_token_secret_scope" {
  description = "Databricks secret scope that holds the API token."
  type        = string
  default     = "anomaly-spark"
}

variable "api_token_secret_key" {
  description = "Key of the API token in api_token_secret_scope. Null: the job gets no token."
  type        = string
  default     = null
}

variable "api_token_env_name" {
  description = "Environment variable that receives the token. The job reads it through api.auth.token_env."
  type        = string
  default     = "ANOMALY_SPARK_API_TOKEN"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]*$", var.api_token_env_name))
    error_message = "api_token_env_name must contain only letters, digits and '_', and must not start with a digit."
  }
}

variable "quartz_cron_expression" {
  description = "Schedule in Quartz cron syntax (seconds first), for example \"0 0 2 * * ?\" for 02:00 every day."
  type        = string
  default     = "0 0 2 * * ?"

  validation {
    condition     = length(split(" ", trimspace(var.quartz_cron_expression))) >= 6
    error_message = "quartz_cron_expression needs at least 6 fields (seconds minutes hours day-of-month month day-of-week)."
  }
}

variable "timezone_id" {
  description = "Java time zone ID of the schedule, for example UTC or Europe/Berlin."
  type        = string
  default     = "UTC"
}

variable "schedule_paused" {
  description = "Create the schedule paused."
  type        = bool
  default     = false
}

variable "timeout_seconds" {
  description = "Maximum duration of one run in seconds. 0: no limit."
  type        = number
  default     = 7200
}

variable "failure_emails" {
  description = "Addresses notified when a run fails."
  type        = list(string)
  default     = []
}
