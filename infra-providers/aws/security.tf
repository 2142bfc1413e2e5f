# Security groups that open only what the cluster needs:
#   nodes   (every node)  SSH from admin_cidrs; kubelet 10250 and the network provider's
#                         ports between nodes (for calico also pod addresses, which it
#                         routes unencapsulated within a subnet); NodePorts from
#                         nodeport_cidrs if any.
#   masters (masters)     API server 6443 from the load balancer and the nodes; etcd
#                         2379-2380 between masters. kube-scheduler (10259) and
#                         kube-controller-manager (10257) listen on 127.0.0.1 only.
#   lb      (the NLB)     6443 from admin_cidrs and from the nodes' Elastic IPs (nodes
#                         reach the API server through the load balancer's public name).
# Every group allows all outbound traffic but the lb group, which only talks to masters.

locals {
  # Node-to-node ports of each network provider, as hakube's hooks install it
  # (templates/hooks/network/) and its documented network requirements say.
  network_provider_rules = {
    # Tigera operator: BGP between nodes, VXLAN across subnets (VXLANCrossSubnet), Typha.
    calico = [
      { name = "calico-bgp", ip_protocol = "tcp", from_port = 179, to_port = 179, cidr = null },
      { name = "calico-vxlan", ip_protocol = "udp", from_port = 4789, to_port = 4789, cidr = null },
      { name = "calico-typha", ip_protocol = "tcp", from_port = 5473, to_port = 5473, cidr = null },
      # Within a subnet pod traffic is routed as is, from pod addresses (see nodes.tf).
      { name = "calico-pods", ip_protocol = "-1", from_port = null, to_port = null, cidr = var.pod_network_cidr },
    ]
    # cilium install defaults: VXLAN tunnel, health checks over TCP and ICMP echo
    # (type 8, code 0). Hubble Relay, if you enable it, also needs 4244/tcp.
    cilium = [
      { name = "cilium-vxlan", ip_protocol = "udp", from_port = 8472, to_port = 8472, cidr = null },
      { name = "cilium-health", ip_protocol = "tcp", from_port = 4240, to_port = 4240, cidr = null },
      { name = "cilium-ping", ip_protocol = "icmp", from_port = 8, to_port = 0, cidr = null },
    ]
    # The VXLAN backend.
    flannel = [
      { name = "flannel-vxlan", ip_protocol = "udp", from_port = 8472, to_port = 8472, cidr = null },
    ]
  }

  node_ingress = merge(
    { for c in var.admin_cidrs : "ssh-${c}" => { description = "SSH from an admin network", ip_protocol = "tcp", from_port = 22, to_port = 22, cidr = c, group = null } },
    { kubelet = { description = "kubelet API from the nodes (API server, metrics)", ip_protocol = "tcp", from_port = 10250, to_port = 10250, cidr = null, group = aws_security_group.nodes.id } },
    { for r in local.network_provider_rules[var.network_provider] : r.name => { description = "${var.network_provider} between nodes", ip_protocol = r.ip_protocol, from_port = r.from_port, to_port = r.to_port, cidr = r.cidr, group = r.cidr == null ? aws_security_group.nodes.id : null } },
    { for c in var.nodeport_cidrs : "nodeport-tcp-${c}" => { description = "NodePort services (TCP)", ip_protocol = "tcp", from_port = 30000, to_port = 32767, cidr = c, group = null } },
    { for c in var.nodeport_cidrs : "nodeport-udp-${c}" => { description = "NodePort services (UDP)", ip_protocol = "udp", from_port = 30000, to_port = 32767, cidr = c, group = null } },
  )

  master_ingress = {
    apiserver-lb    = { description = "API server from the load balancer (traffic and health checks)", from_port = 6443, to_port = 6443, group = aws_security_group.lb.id }
    apiserver-nodes = { description = "API server from the nodes (kubernetes service endpoints)", from_port = 6443, to_port = 6443, group = aws_security_group.nodes.id }
    etcd            = { description = "etcd client and peer between masters", from_port = 2379, to_port = 2380, group = aws_security_group.masters.id }
  }
}

# The only group tagged for the cloud controller manager: it adds rules here for
# LoadBalancer services and refuses instances with more than one tagged group.
resource "aws_security_group" "nodes" {
  name        = "${var.cluster_name}-nodes"
  description = "hakube ${var.cluster_name}: every node"
  vpc_id      = aws_vpc.main.id
  tags        = merge(local.cluster_tag, { Name = "${var.cluster_name}-nodes" })
}

resource "aws_security_group" "masters" {
  name        = "${var.cluster_name}-masters"
  description = "hakube ${var.cluster_name}: control-plane nodes"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${var.cluster_name}-masters" }
}

resource "aws_security_group" "lb" {
  name        = "${var.cluster_name}-api-lb"
  description = "hakube ${var.cluster_name}: API server load balancer"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${var.cluster_name}-api-lb" }
}

resource "aws_vpc_security_group_ingress_rule" "nodes" {
  for_each = local.node_ingress

  security_group_id            = aws_security_group.nodes.id
  description                  = each.value.description
  ip_protocol                  = each.value.ip_protocol
  from_port                    = each.value.from_port
  to_port                      = each.value.to_port
  cidr_ipv4                    = each.value.cidr
  referenced_security_group_id = each.value.group
}

resource "aws_vpc_security_group_ingress_rule" "masters" {
  for_each = local.master_ingress

  security_group_id            = aws_security_group.masters.id
  description                  = each.value.description
  ip_protocol                  = "tcp"
  from_port                    = each.value.from_port
  to_port                      = each.value.to_port
  referenced_security_group_id = each.value.group
}

resource "aws_vpc_security_group_ingress_rule" "lb" {
  for_each = merge(
    { for c in var.admin_cidrs : "admin-${c}" => { description = "API server from an admin network", cidr = c } },
    { for k, eip in aws_eip.node : "node-${k}" => { description = "API server from ${local.nodes[k].name}", cidr = "${eip.public_ip}/32" } },
  )

  security_group_id = aws_security_group.lb.id
  description       = each.value.description
  ip_protocol       = "tcp"
  from_port         = 6443
  to_port           = 6443
  cidr_ipv4         = each.value.cidr
}

resource "aws_vpc_security_group_egress_rule" "lb" {
  security_group_id = aws_security_group.lb.id
  description       = "to the masters' API servers"
  ip_protocol       = "tcp"
  from_port         = 6443
  to_port           = 6443
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_egress_rule" "all" {
  for_each = { nodes = aws_security_group.nodes.id, masters = aws_security_group.masters.id }

  security_group_id = each.value
  description       = "anything outbound (packages, images, AWS APIs)"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}
