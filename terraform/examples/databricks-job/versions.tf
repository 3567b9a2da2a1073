terraform {
  required_version = ">= 1.7"

  required_providers {
    databricks = {
      source  = "databricks/databricks"
      version = ">= 1.50, < 2.0"
    }
  }
}
