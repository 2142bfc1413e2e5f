# The cluster definition for these machines, written to cluster.json next to this file.
# It depends only on addresses (load balancer, Elastic IPs, the address plan), not on
# the instances, so `terraform apply -target=local_file.cluster_definition` writes it
# before any node exists and `hakube render` can generate the nodes' host keys first.

locals {
  definition_nodes = { for k, n in local.nodes : k => {
    name       = n.name
    private_ip = n.private_ip
    public_ip  = aws_eip.node[k].public_ip
    zone       = local.zones[n.zone_index]
  } }
}

module "cluster_definition" {
  source = "./modules/cluster-definition"

  schema                       = "../../schema/cluster.schema.json"
  cluster_name                 = var.cluster_name
  master_load_balancer_address = aws_lb.api.dns_name
  master_fqdns                 = var.api_server_names
  ssh_login_user               = "ubuntu"
  ssh_login_key                = var.ssh_login_key
  host_key_policy              = local.host_keys ? "strict" : "accept-new"
  kubernetes_version           = var.kubernetes_version
  node_network_cidr            = var.vpc_cidr
  pod_network_cidr             = var.pod_network_cidr
  service_cidr                 = var.service_cidr
  masters                      = [for m in local.masters : local.definition_nodes[m.key]]
  workers                      = [for w in local.workers : local.definition_nodes[w.key]]
  hooks = {
    preinstall       = "aws"
    cloud_provider   = "aws"
    network_provider = var.network_provider
  }
}

resource "local_file" "cluster_definition" {
  filename             = "${path.module}/cluster.json"
  content              = module.cluster_definition.json
  file_permission      = "0644"
  directory_permission = "0755"
}
