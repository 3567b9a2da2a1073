terraform {
  required_version = ">= 1.7"

  required_providers {
    # provider "helm" below uses the 3.x syntax (kubernetes = { ... }).
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.30, < 4.0"
    }
  }
}
