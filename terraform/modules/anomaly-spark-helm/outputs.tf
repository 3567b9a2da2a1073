output "release_name" {
  description = "Name of the Helm release."
  value       = helm_release.this.name
}

output "namespace" {
  description = "Namespace of the release."
  value       = helm_release.this.namespace
}

output "release_status" {
  description = "Status of the Helm release, for example deployed."
  value       = helm_release.this.status
}

output "application_kind" {
  description = "Kind of the Spark Operator resource that the chart created."
  value       = var.schedule_cron != null ? "ScheduledSparkApplication" : "SparkApplication"
}

output "output_location" {
  description = "Location of the Delta tables and runs, as passed to the job with --output."
  value       = local.output_location
}

output "api_token_secret_name" {
  description = "Secret the driver reads the API token from. Null when no token is configured."
  value       = local.api_token_secret_name == "" ? null : local.api_token_secret_name
}

output "status_command" {
  description = "kubectl command that shows the state of the application."
  value = format(
    "kubectl get %s %s -n %s",
    var.schedule_cron != null ? "scheduledsparkapplication" : "sparkapplication",
    # The chart uses the release name alone when it contains the chart name.
    strcontains(var.release_name, "anomaly-spark") ? var.release_name : "${var.release_name}-anomaly-spark",
    helm_release.this.namespace,
  )
}
