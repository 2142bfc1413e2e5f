# Inputs as the root module passes them for terraform.tfvars.example plus one
# api_server_names entry, with made-up addresses (203.0.113.0/24 is a documentation
# range). ../../cluster.example.json is the output: crates/hakube/tests/infra_providers.rs
# checks that they agree and that hakube validates it.
schema                       = "../../schema/cluster.schema.json"
cluster_name                 = "hakube"
master_load_balancer_address = "hakube-api-0123456789abcdef.elb.us-east-1.amazonaws.com"
master_fqdns                 = ["kube-api.example.com"]
ssh_login_user               = "ubuntu"
host_key_policy              = "strict"
kubernetes_version           = "1.36.4"
node_network_cidr            = "10.1.0.0/16"
pod_network_cidr             = "10.244.0.0/16"
service_cidr                 = "10.96.0.0/12"
masters = [
  { name = "ip-10-1-0-10.ec2.internal", private_ip = "10.1.0.10", public_ip = "203.0.113.10", zone = "us-east-1a" },
  { name = "ip-10-1-1-10.ec2.internal", private_ip = "10.1.1.10", public_ip = "203.0.113.11", zone = "us-east-1b" },
  { name = "ip-10-1-2-10.ec2.internal", private_ip = "10.1.2.10", public_ip = "203.0.113.12", zone = "us-east-1c" },
]
workers = [
  { name = "ip-10-1-0-40.ec2.internal", private_ip = "10.1.0.40", public_ip = "203.0.113.40", zone = "us-east-1a" },
  { name = "ip-10-1-1-40.ec2.internal", private_ip = "10.1.1.40", public_ip = "203.0.113.41", zone = "us-east-1b" },
]
hooks = {
  preinstall       = "aws"
  cloud_provider   = "aws"
  network_provider = "calico"
}
