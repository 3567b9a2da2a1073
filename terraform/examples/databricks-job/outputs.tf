output "job_id" {
  description = "ID of the Databricks job."
  value       = databricks_job.anomaly_spark.id
}

output "job_url" {
  description = "URL of the job in the workspace."
  value       = databricks_job.anomaly_spark.url
}

output "parameters" {
  description = "Arguments passed to the anomaly-spark-job entry point."
  value       = local.parameters
}
