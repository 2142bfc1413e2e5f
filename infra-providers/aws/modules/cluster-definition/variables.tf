variable "schema" {
  description = "The \"$schema\" value: the path of schema/cluster.schema.json relative to where the definition is written."
  type        = string
}

variable "cluster_name" {
  description = "clusterName: kubeadm's clusterName, an RFC 1123 name."
  type        = string
}

variable "master_load_balancer_address" {
  description = "masterLoadBalancerAddress: the DNS name or IP of the load balancer in front of the masters' port 6443 (kubeadm's controlPlaneEndpoint)."
  type        = string
}

variable "master_fqdns" {
  description = "masterFQDNs: further DNS names of the API server (certificate SANs and kubeconfig contexts)."
  type        = list(string)
  default     = []
}

variable "ssh_login_user" {
  description = "sshLoginUser: the user hakube logs in as (uses sudo when not root)."
  type        = string
}

variable "ssh_login_key" {
  description = "sshLoginKey: path of the private key to log in with; null to use the one `hakube render` generates (assets/ssh/id_ed25519)."
  type        = string
  default     = null
}

variable "host_key_policy" {
  description = "hostKeyPolicy: \"strict\" when the machines carry the host keys render generated, else \"accept-new\"."
  type        = string

  validation {
    condition     = contains(["strict", "accept-new"], var.host_key_policy)
    error_message = "host_key_policy must be \"strict\" or \"accept-new\"."
  }
}

variable "kubernetes_version" {
  description = "kubernetesVersion, MAJOR.MINOR.PATCH."
  type        = string
}

variable "node_network_cidr" {
  description = "nodeNetworkCIDR: the network every privateIP lies in."
  type        = string
}

variable "pod_network_cidr" {
  description = "podNetworkCIDR (kubeadm's networking.podSubnet)."
  type        = string
}

variable "service_cidr" {
  description = "serviceCIDR (kubeadm's networking.serviceSubnet)."
  type        = string
}

variable "masters" {
  description = "The masters in order (the first runs kubeadm init): node name, private IP, public IP (the SSH address) and availability zone."
  type = list(object({
    name       = string
    private_ip = string
    public_ip  = string
    zone       = string
  }))
}

variable "workers" {
  description = "The workers, shaped like masters."
  type = list(object({
    name       = string
    private_ip = string
    public_ip  = string
    zone       = string
  }))
  default = []
}

variable "hooks" {
  description = "hooks: preinstall, cloudProvider and networkProvider fragment names (null leaves one out)."
  type = object({
    preinstall       = optional(string)
    cloud_provider   = optional(string)
    network_provider = optional(string)
  })
}
