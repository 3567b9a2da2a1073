# A Databricks job that runs the anomaly-spark wheel on a job cluster on a
# cron schedule. The provider reads its credentials from the environment
# (DATABRICKS_HOST and DATABRICKS_TOKEN) or from a ~/.databrickscfg profile.
#
#   python -m build --wheel        # dist/anomaly_spark-<version>-py3-none-any.whl
#   databricks fs cp dist/anomaly_spark-0.1.0-py3-none-any.whl dbfs:/anomaly-spark/wheels/
#   terraform init
#   terraform apply -var wheel_path=dbfs:/anomaly-spark/wheels/anomaly_spark-0.1.0-py3-none-any.whl

provider "databricks" {
  host    = var.databricks_host
  profile = var.databricks_profile
}

data "databricks_node_type" "default" {
  local_disk = true
  min_cores  = 4
}

locals {
  node_type_id = var.node_type_id != null ? var.node_type_id : data.databricks_node_type.default.id

  # Options of "anomaly-spark run", read by the anomaly-spark-job entry point.
  parameters = concat(
    ["--source", var.source_path, "--output", var.output_path, "--mode", var.mode],
    flatten([for override in var.config_overrides : ["--set", override]]),
    var.api_token_secret_key == null ? [] : ["--set", "api.auth.token_env=${var.api_token_env_name}"],
    var.extra_parameters,
  )

  # Databricks resolves {{secrets/SCOPE/KEY}} when the cluster starts, so the
  # token never appears in the job definition.
  spark_env_vars = var.api_token_secret_key == null ? {} : {
    (var.api_token_env_name) = "{{secrets/${var.api_token_secret_scope}/${var.api_token_secret_key}}}"
  }
}

resource "databricks_job" "anomaly_spark" {
  name                = var.job_name
  max_concurrent_runs = 1
  timeout_seconds     = var.timeout_seconds

  job_cluster {
    job_cluster_key = "anomaly_spark"

    new_cluster {
      spark_version  = var.spark_version
      node_type_id   = local.node_type_id
      num_workers    = var.num_workers
      spark_env_vars = local.spark_env_vars
    }
  }

  task {
    task_key        = "run"
    job_cluster_key = "anomaly_spark"

    python_wheel_task {
      package_name = "anomaly_spark"
      entry_point  = "anomaly-spark-job"
      parameters   = local.parameters
    }

    # NOTE: the wheel depends on pyspark and delta-spark from PyPI, while
    # Databricks Runtime brings its own builds of both. The PyPI pyspark may
    # shadow the runtime's copy, and this job has not been run on a workspace.
    library {
      whl = var.wheel_path
    }
  }

  schedule {
    quartz_cron_expression = var.quartz_cron_expression
    timezone_id            = var.timezone_id
    pause_status           = var.schedule_paused ? "PAUSED" : "UNPAUSED"
  }

  dynamic "email_notifications" {
    for_each = length(var.failure_emails) > 0 ? [1] : []
    content {
      on_failure = var.failure_emails
    }
  }
}
