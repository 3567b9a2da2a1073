# Install the anomaly-spark chart into a cluster that runs the Kubeflow Spark
# Operator, with a nightly schedule, a PVC for the Delta output and the API
# token in a Kubernetes Secret.
#
#   export TF_VAR_api_token=...   # never put the token in a .tfvars file
#   terraform init
#   terraform apply -var image_repository=ghcr.io/OWNER/anomaly-spark

provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = var.kube_context
}

provider "helm" {
  kubernetes = {
    config_path    = var.kubeconfig_path
    config_context = var.kube_context
  }
}

module "anomaly_spark" {
  source = "../../modules/anomaly-spark-helm"

  release_name     = "anomaly-spark"
  namespace        = var.namespace
  image_repository = var.image_repository
  image_tag        = var.image_tag

  api_token = var.api_token

  job_config = {
    source = {
      path         = var.source_url
      records_path = "data.items"
    }
    api = {
      auth = { type = "bearer" }
    }
    detection = {
      contamination = 0.02
    }
  }
  mode = "simple"

  storage_pvc_claim_name = var.storage_pvc_claim_name
  schedule_cron          = var.schedule_cron

  driver_memory      = "4g"
  executor_instances = 3
  executor_cores     = 2
  executor_memory    = "6g"
}
