locals {
  chart = coalesce(var.chart, "${path.module}/../../../helm/anomaly-spark")

  # Whether a token was given is not secret, only its value is.
  create_api_token_secret = nonsensitive(var.api_token != null)
  api_token_secret_name = (
    local.create_api_token_secret || var.use_existing_api_token_secret ? var.api_token_secret_name : ""
  )

  namespace = var.create_namespace ? kubernetes_namespace_v1.this[0].metadata[0].name : var.namespace

  output_location = var.storage_uri != null ? var.storage_uri : var.storage_mount_path

  job_values = merge(
    var.source_path == null ? {} : { source = var.source_path },
    var.source_format == null ? {} : { format = var.source_format },
    var.mode == null ? {} : { mode = var.mode },
    { set = var.config_overrides },
  )

  # Values of helm/anomaly-spark. Helm applies extra_values after these.
  values = {
    image = merge(
      {
        repository  = var.image_repository
        pullSecrets = var.image_pull_secrets
      },
      var.image_tag == null ? {} : { tag = var.image_tag },
    )
    job    = local.job_values
    config = var.job_config
    apiToken = {
      secretName = local.api_token_secret_name
      key        = var.api_token_secret_key
      envName    = var.api_token_env_name
    }
    storage = {
      pvc       = { claimName = var.storage_pvc_claim_name == null ? "" : var.storage_pvc_claim_name }
      mountPath = var.storage_mount_path
      uri       = var.storage_uri == null ? "" : var.storage_uri
    }
    schedule = {
      enabled           = var.schedule_cron != null
      cron              = var.schedule_cron == null ? "" : var.schedule_cron
      concurrencyPolicy = var.schedule_concurrency_policy
    }
    driver = {
      cores          = var.driver_cores
      memory         = var.driver_memory
      serviceAccount = var.driver_service_account
    }
    executor = {
      instances = var.executor_instances
      cores     = var.executor_cores
      memory    = var.executor_memory
    }
    sparkConf  = var.spark_conf
    hadoopConf = var.hadoop_conf
  }
}

resource "kubernetes_namespace_v1" "this" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name = var.namespace
    labels = merge(
      { "app.kubernetes.io/managed-by" = "terraform" },
      var.namespace_labels,
    )
  }
}

resource "kubernetes_secret_v1" "api_token" {
  count = local.create_api_token_secret ? 1 : 0

  metadata {
    name      = var.api_token_secret_name
    namespace = local.namespace
    labels = {
      "app.kubernetes.io/name"       = "anomaly-spark"
      "app.kubernetes.io/instance"   = var.release_name
      "app.kubernetes.io/managed-by" = "terraform"
    }
  }

  type = "Opaque"
  data = {
    (var.api_token_secret_key) = var.api_token
  }
}

resource "helm_release" "this" {
  name       = var.release_name
  namespace  = local.namespace
  chart      = local.chart
  repository = var.chart_repository
  version    = var.chart_version
  timeout    = var.helm_timeout

  # The values contain no secret: the token stays in the Secret above.
  values = [
    yamlencode(local.values),
    yamlencode(var.extra_values),
  ]

  lifecycle {
    precondition {
      condition     = (var.storage_pvc_claim_name == null) != (var.storage_uri == null)
      error_message = "Set exactly one of storage_pvc_claim_name and storage_uri as the output location."
    }
    precondition {
      condition     = !(local.create_api_token_secret && var.use_existing_api_token_secret)
      error_message = "api_token and use_existing_api_token_secret are both set. Give the token or reference an existing Secret, not both."
    }
  }

  depends_on = [kubernetes_secret_v1.api_token]
}
