# The machines. Each node is created at the private IP the address plan gave it, gets
# its Elastic IP, and, when hakube_assets_dir is set, boots with the SSH host key that
# `hakube render` generated for its node name (cloud-init ssh_keys), so hakube can check
# it strictly from the first connection.

data "aws_ami" "ubuntu" {
  count = var.ami_id == null ? 1 : 0

  most_recent = true
  owners      = ["099720109477"] # Canonical

  filter {
    name   = "name"
    values = ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
  }
  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

locals {
  ami_id     = var.ami_id != null ? var.ami_id : data.aws_ami.ubuntu[0].id
  host_keys  = var.hakube_assets_dir != null
  public_key = pathexpand(var.ssh_public_key_file)
  # Per node: the host key pair render wrote, [private, public] (none without assets).
  host_key_files = { for k, n in local.nodes : k => local.host_keys ? [
    "${var.hakube_assets_dir}/ssh/host-keys/${n.name}/ssh_host_ed25519_key",
    "${var.hakube_assets_dir}/ssh/host-keys/${n.name}/ssh_host_ed25519_key.pub",
  ] : [] }
}

resource "aws_key_pair" "login" {
  key_name   = "${var.cluster_name}-login"
  public_key = fileexists(local.public_key) ? trimspace(file(local.public_key)) : ""

  lifecycle {
    precondition {
      condition     = fileexists(local.public_key)
      error_message = "No public key at ${var.ssh_public_key_file}. Run `hakube render cluster.json` first (it writes assets/ssh/id_ed25519.pub), or point ssh_public_key_file at your own key's .pub."
    }
  }
}

resource "aws_instance" "node" {
  for_each = local.nodes

  ami                         = local.ami_id
  instance_type               = each.value.role == "master" ? var.master_instance_type : var.worker_instance_type
  subnet_id                   = aws_subnet.public[each.value.zone_index].id
  private_ip                  = each.value.private_ip
  associate_public_ip_address = false
  # Calico (VXLANCrossSubnet) routes pod traffic unencapsulated between nodes of the same
  # subnet: EC2 must let instances send and receive packets for pod addresses.
  source_dest_check    = var.network_provider != "calico"
  key_name             = aws_key_pair.login.key_name
  iam_instance_profile = aws_iam_instance_profile.node[each.value.role].name
  vpc_security_group_ids = each.value.role == "master" ? [
    aws_security_group.nodes.id, aws_security_group.masters.id
  ] : [aws_security_group.nodes.id]

  # The host private key is in the user data. EC2 keeps user data readable through the
  # instance metadata service from the node itself: require IMDSv2 tokens and keep the
  # hop limit at 1 so that pods (one hop further) cannot fetch it.
  user_data = local.host_keys && alltrue([for f in local.host_key_files[each.key] : fileexists(f)]) ? sensitive(join("\n", [
    "#cloud-config",
    yamlencode({
      # Remove the image's host keys; with ssh_keys given, cloud-init generates none.
      ssh_deletekeys = true
      ssh_keys = {
        ed25519_private = file(local.host_key_files[each.key][0])
        ed25519_public  = trimspace(file(local.host_key_files[each.key][1]))
      }
    }),
  ])) : null
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  private_dns_name_options {
    hostname_type = "ip-name"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.root_volume_size
    encrypted   = true
  }

  tags = merge(local.cluster_tag, {
    Name          = each.value.name
    "hakube/role" = each.value.role
  })

  lifecycle {
    # A newer Ubuntu image must not replace running nodes; replace one deliberately
    # with `terraform apply -replace='aws_instance.node["worker-0"]'`.
    ignore_changes = [ami]

    precondition {
      condition     = !local.host_keys || alltrue([for f in local.host_key_files[each.key] : fileexists(f)])
      error_message = "No host key for ${each.value.name} in ${coalesce(var.hakube_assets_dir, "-")}/ssh/host-keys/. Run `hakube render cluster.json` (after `terraform apply -target=local_file.cluster_definition`) before creating the nodes, or unset hakube_assets_dir to trust host keys on first contact."
    }
    postcondition {
      condition     = self.private_dns == each.value.name
      error_message = "EC2 named ${each.value.private_ip} ${self.private_dns}, not ${each.value.name}: the node names in cluster.json would not match (custom DHCP options in the VPC?)."
    }
  }
}

resource "aws_eip_association" "node" {
  for_each = aws_instance.node

  instance_id   = each.value.id
  allocation_id = aws_eip.node[each.key].id
}
