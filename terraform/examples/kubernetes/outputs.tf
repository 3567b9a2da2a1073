output "release_name" {
  description = "Name of the Helm release."
  value       = module.anomaly_spark.release_name
}

output "application_kind" {
  description = "SparkApplication or ScheduledSparkApplication."
  value       = module.anomaly_spark.application_kind
}

output "output_location" {
  description = "Where the job writes its Delta tables and runs."
  value       = module.anomaly_spark.output_location
}

output "status_command" {
  description = "kubectl command that shows the state of the application."
  value       = module.anomaly_spark.status_command
}
