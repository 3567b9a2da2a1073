terraform {
  # 1.7 accepts nonsensitive() on a value that is not sensitive (see main.tf).
  required_version = ">= 1.7"

  required_providers {
    # The module uses only helm_release arguments that helm provider 2.x and
    # 3.x share, so callers can stay on either major version.
    helm = {
      source  = "hashicorp/helm"
      version = ">= 2.12, < 4.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.30, < 4.0"
    }
  }
}
