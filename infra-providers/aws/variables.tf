variable "region" {
  description = "AWS region to create the cluster in. It needs at least three availability zones."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]+$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "availability_zones" {
  description = "Exactly three availability zones of the region to spread subnets and masters over. Empty: the region's first three that need no opt-in."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.availability_zones) == 0 || length(var.availability_zones) == 3
    error_message = "availability_zones must list exactly three zones, or none."
  }
}

variable "cluster_name" {
  description = "The cluster's name: hakube's clusterName, the prefix of every AWS resource name and the kubernetes.io/cluster/<name> tag the AWS cloud controller manager looks for."
  type        = string
  default     = "hakube"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,22}[a-z0-9])?$", var.cluster_name))
    error_message = "cluster_name must be 1 to 24 lowercase letters, digits and '-', starting with a letter (load balancer names are limited to 32 characters)."
  }
}

variable "kubernetes_version" {
  description = "The Kubernetes version hakube installs (kubernetesVersion), MAJOR.MINOR.PATCH."
  type        = string
  default     = "1.36.4"

  validation {
    condition     = can(regex("^v?1\\.[0-9]+\\.[0-9]+$", var.kubernetes_version))
    error_message = "kubernetes_version must look like 1.36.4."
  }
}

variable "masters" {
  description = "Number of masters (control-plane nodes), spread round-robin over the three zones. Odd, so that etcd keeps a majority."
  type        = number
  default     = 3

  validation {
    condition     = contains([1, 3, 5, 7], var.masters)
    error_message = "masters must be 1, 3, 5 or 7."
  }
}

variable "workers" {
  description = "Number of workers, spread round-robin over the three zones. Every node has an Elastic IP: masters + workers must fit the account's Elastic IP quota (5 per region unless raised)."
  type        = number
  default     = 2

  validation {
    condition     = var.workers >= 0 && var.workers <= 99 && floor(var.workers) == var.workers
    error_message = "workers must be a whole number from 0 to 99."
  }
}

variable "master_instance_type" {
  description = "EC2 instance type of the masters (kubeadm wants at least 2 vCPUs and 2 GiB). The default AMI is amd64: pick an x86_64 type or set ami_id."
  type        = string
  default     = "t3.medium"
}

variable "worker_instance_type" {
  description = "EC2 instance type of the workers."
  type        = string
  default     = "t3.medium"
}

variable "root_volume_size" {
  description = "Size of every node's root volume (gp3, encrypted), in GiB."
  type        = number
  default     = 30

  validation {
    condition     = var.root_volume_size >= 20 && var.root_volume_size <= 1024
    error_message = "root_volume_size must be 20 to 1024 GiB."
  }
}

variable "ami_id" {
  description = "AMI of every node. null: the newest Canonical Ubuntu 24.04 LTS amd64 image (looked up once; later images do not replace running nodes)."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be null or an AMI ID such as ami-0123456789abcdef0."
  }
}

variable "vpc_cidr" {
  description = "The VPC's network, also the definition's nodeNetworkCIDR. A /16: the three subnets are its first three /24s, masters get .10 and up in them, workers .40 and up. Must not overlap pod_network_cidr or service_cidr."
  type        = string
  default     = "10.1.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && endswith(var.vpc_cidr, "/16") && try(cidrsubnet(var.vpc_cidr, 0, 0) == var.vpc_cidr, false)
    error_message = "vpc_cidr must be an IPv4 /16 without host bits, such as 10.1.0.0/16 (the largest VPC AWS allows; the address plan needs /24 subnets)."
  }
}

variable "pod_network_cidr" {
  description = "The pod network (podNetworkCIDR, kubeadm's networking.podSubnet)."
  type        = string
  default     = "10.244.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.pod_network_cidr)) && try(cidrsubnet(var.pod_network_cidr, 0, 0) == var.pod_network_cidr, false)
    error_message = "pod_network_cidr must be an IPv4 CIDR without host bits, such as 10.244.0.0/16."
  }
}

variable "service_cidr" {
  description = "The service network (serviceCIDR, kubeadm's networking.serviceSubnet)."
  type        = string
  default     = "10.96.0.0/12"

  validation {
    condition     = can(cidrnetmask(var.service_cidr)) && try(cidrsubnet(var.service_cidr, 0, 0) == var.service_cidr, false)
    error_message = "service_cidr must be an IPv4 CIDR without host bits, such as 10.96.0.0/12."
  }
}

variable "network_provider" {
  description = "The pod network add-on hakube applies (hooks.networkProvider). The security groups open only the ports it needs between nodes."
  type        = string
  default     = "calico"

  validation {
    condition     = contains(["calico", "cilium", "flannel"], var.network_provider)
    error_message = "network_provider must be calico, cilium or flannel."
  }
}

variable "admin_cidrs" {
  description = "IPv4 networks allowed to reach the nodes' SSH (22) and the API server through the load balancer (6443): where you run hakube and kubectl, e.g. [\"198.51.100.7/32\"]."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && alltrue([for c in var.admin_cidrs : can(cidrnetmask(c))])
    error_message = "admin_cidrs must list at least one IPv4 CIDR, such as 198.51.100.7/32."
  }
}

variable "nodeport_cidrs" {
  description = "IPv4 networks allowed to reach NodePort services (TCP and UDP 30000-32767) on every node. Empty: NodePorts stay closed."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.nodeport_cidrs : can(cidrnetmask(c))])
    error_message = "nodeport_cidrs must hold IPv4 CIDRs only."
  }
}

variable "api_server_names" {
  description = "Extra DNS names of the API server (masterFQDNs), e.g. a name you point at the load balancer with a CNAME. They become certificate SANs and kubeconfig contexts."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for n in var.api_server_names : can(regex("^([a-z0-9]([-a-z0-9]*[a-z0-9])?\\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$", n))])
    error_message = "api_server_names must be lowercase DNS names."
  }
}

variable "ssh_public_key_file" {
  description = "Path of the OpenSSH public key installed for the login user (ubuntu) as the EC2 key pair: assets/ssh/id_ed25519.pub written by `hakube render`, or your own key's .pub (then set ssh_login_key too)."
  type        = string

  validation {
    condition     = endswith(var.ssh_public_key_file, ".pub")
    error_message = "ssh_public_key_file must name a public key file ending in .pub."
  }
}

variable "ssh_login_key" {
  description = "Path of your own private key, written into the definition as sshLoginKey. null: hakube logs in with the key render generated (assets/ssh/id_ed25519)."
  type        = string
  default     = null
}

variable "hakube_assets_dir" {
  description = "The assets directory `hakube render` wrote, e.g. \"assets\". When set, every node boots with the SSH host key render generated for it (cloud-init ssh_keys) and the definition says hostKeyPolicy strict; the host keys must exist when the nodes are created. null: nodes make their own host keys and the definition says accept-new (trusted on first contact, then pinned)."
  type        = string
  default     = null
}
