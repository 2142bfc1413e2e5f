# The address plan, fixed before anything exists so that the cluster definition (and
# `hakube render`) can come before the machines:
#   subnet z (z = 0, 1, 2)   cidrsubnet(vpc_cidr, 8, z), one per availability zone
#   master i                 subnet i % 3, host 10 + floor(i / 3)
#   worker j                 subnet j % 3, host 40 + floor(j / 3)
# Node names are the names EC2 gives those addresses (IP-based naming,
# ip-10-1-0-10.ec2.internal), which the AWS cloud controller manager requires.

data "aws_availability_zones" "available" {
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  zones        = length(var.availability_zones) == 3 ? var.availability_zones : slice(data.aws_availability_zones.available.names, 0, min(3, length(data.aws_availability_zones.available.names)))
  subnet_cidrs = [for z in range(3) : cidrsubnet(var.vpc_cidr, 8, z)]
  dns_suffix   = var.region == "us-east-1" ? "ec2.internal" : "${var.region}.compute.internal"

  masters = [for i in range(var.masters) : {
    key        = "master-${i}"
    role       = "master"
    zone_index = i % 3
    private_ip = cidrhost(local.subnet_cidrs[i % 3], 10 + floor(i / 3))
  }]
  workers = [for j in range(var.workers) : {
    key        = "worker-${j}"
    role       = "worker"
    zone_index = j % 3
    private_ip = cidrhost(local.subnet_cidrs[j % 3], 40 + floor(j / 3))
  }]
  # Every node by key ("master-0", "worker-1", ...), with its node name.
  nodes = { for n in concat(local.masters, local.workers) : n.key => merge(n, {
    name = "ip-${replace(n.private_ip, ".", "-")}.${local.dns_suffix}"
  }) }

  # The tag the AWS cloud controller manager uses to find the cluster's instances,
  # subnets and (one) security group.
  cluster_tag = { "kubernetes.io/cluster/${var.cluster_name}" = "owned" }

  # Pod, service and node networks must be disjoint (hakube validate checks it too, but
  # only after the VPC exists). Two CIDRs overlap when they agree on the shorter prefix.
  networks = { vpc_cidr = var.vpc_cidr, pod_network_cidr = var.pod_network_cidr, service_cidr = var.service_cidr }
  prefixes = { for k, c in local.networks : k => tonumber(split("/", c)[1]) }
  overlaps = [for p in [["vpc_cidr", "pod_network_cidr"], ["vpc_cidr", "service_cidr"], ["pod_network_cidr", "service_cidr"]] :
    "${p[0]} ${local.networks[p[0]]} overlaps ${p[1]} ${local.networks[p[1]]}"
    if cidrhost("${cidrhost(local.networks[p[0]], 0)}/${min(local.prefixes[p[0]], local.prefixes[p[1]])}", 0) == cidrhost("${cidrhost(local.networks[p[1]], 0)}/${min(local.prefixes[p[0]], local.prefixes[p[1]])}", 0)
  ]
}

resource "aws_vpc" "main" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = var.cluster_name }

  lifecycle {
    precondition {
      condition     = length(local.overlaps) == 0
      error_message = "The networks must be disjoint: ${join("; ", local.overlaps)}."
    }
    precondition {
      condition     = length(local.zones) == 3
      error_message = "${var.region} offers ${length(local.zones)} availability zones without opt-in; hakube's AWS layout needs three (set availability_zones or pick another region)."
    }
  }
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = var.cluster_name }
}

# Public subnets: nodes reach the internet (packages, images) through their Elastic IPs,
# so no NAT gateway is needed. Only the security groups decide what reaches them.
resource "aws_subnet" "public" {
  count = 3

  vpc_id                              = aws_vpc.main.id
  cidr_block                          = local.subnet_cidrs[count.index]
  availability_zone                   = local.zones[count.index]
  map_public_ip_on_launch             = false
  private_dns_hostname_type_on_launch = "ip-name"

  tags = merge(local.cluster_tag, {
    Name = "${var.cluster_name}-${local.zones[count.index]}"
    # Where the cloud controller manager puts internet-facing load balancers.
    "kubernetes.io/role/elb" = "1"
  })
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.main.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.main.id
  }

  tags = merge(local.cluster_tag, { Name = "${var.cluster_name}-public" })
}

resource "aws_route_table_association" "public" {
  count = 3

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

# One Elastic IP per node, allocated before the node exists: the definition can name
# every publicIP up front, and a node that is replaced keeps its address.
resource "aws_eip" "node" {
  for_each = local.nodes

  domain = "vpc"
  tags   = { Name = each.value.name }

  depends_on = [aws_internet_gateway.main]
}
