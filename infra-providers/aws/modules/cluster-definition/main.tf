# The hakube cluster definition for machines whose addresses are known, as JSON text.
# No provider, no resource: a pure function of its inputs, so it can be evaluated (and
# tested) without AWS. The root module writes its output with local_file.

terraform {
  required_version = ">= 1.5"
}

locals {
  # Every value goes through jsonencode() in the template, which only lays out the keys.
  json = templatefile("${path.module}/cluster.json.tftpl", {
    schema                       = var.schema
    cluster_name                 = var.cluster_name
    master_load_balancer_address = var.master_load_balancer_address
    master_fqdns                 = var.master_fqdns
    ssh_login_user               = var.ssh_login_user
    ssh_login_key                = var.ssh_login_key
    host_key_policy              = var.host_key_policy
    kubernetes_version           = var.kubernetes_version
    node_network_cidr            = var.node_network_cidr
    pod_network_cidr             = var.pod_network_cidr
    service_cidr                 = var.service_cidr
    masters                      = var.masters
    workers                      = var.workers
    # [JSON key, fragment name] in a fixed order, without the ones left out.
    hooks = [for h in [
      ["preinstall", var.hooks.preinstall],
      ["cloudProvider", var.hooks.cloud_provider],
      ["networkProvider", var.hooks.network_provider],
    ] : h if h[1] != null]
  })
}

output "json" {
  description = "The cluster definition (JSON text, ending in a newline) that `hakube validate` accepts."
  value       = local.json
}
