output "cluster_definition_file" {
  description = "The cluster definition written for hakube (hakube render / install it)."
  value       = local_file.cluster_definition.filename
}

output "master_load_balancer_address" {
  description = "masterLoadBalancerAddress: the network load balancer's DNS name, in front of every master's port 6443."
  value       = aws_lb.api.dns_name
}

output "master_fqdns" {
  description = "masterFQDNs: extra API server names; point each at master_load_balancer_address (CNAME)."
  value       = var.api_server_names
}

output "host_key_policy" {
  description = "strict: the nodes boot with the host keys render generated; accept-new: trusted on first contact."
  value       = local.host_keys ? "strict" : "accept-new"
}

output "masters" {
  description = "The masters in definition order: node name, private IP, public IP (SSH), zone."
  value       = [for m in local.masters : local.definition_nodes[m.key]]
}

output "workers" {
  description = "The workers in definition order: node name, private IP, public IP (SSH), zone."
  value       = [for w in local.workers : local.definition_nodes[w.key]]
}
