//! The cluster definition: the JSON document a user writes, as serde + schemars types.
//!
//! The format is a superset of hakube-installer's (2018): every field that tool read is
//! accepted here, and the ones that no longer apply are kept as deprecated fields that
//! validation turns into warnings. Field names are camelCase, as in hakube-installer and
//! in kubeadm's own configuration.
//!
//! Defaults live in the `default_*` functions below so that serde, the JSON Schema
//! (`"default"` keywords) and the documentation agree.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Kubernetes version used when the definition names none: a current 1.36 patch release.
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.36.4";

/// A highly available Kubernetes cluster on existing machines: who the nodes are, how to
/// reach them over SSH, and how kubeadm should set the cluster up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "hakube cluster definition", deny_unknown_fields)]
pub struct ClusterDefinition {
    /// The JSON Schema this document follows (lets editors complete and check it).
    /// Ignored by hakube.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,

    /// The cluster's name: kubeadm's `clusterName`, and the cluster and context name in the
    /// admin kubeconfig. An RFC 1123 subdomain.
    #[serde(default = "default_cluster_name")]
    pub cluster_name: String,

    /// DNS names through which the API server is reached (for example a public load
    /// balancer's name). Each becomes a subject alternative name of the API server
    /// certificate (`apiServer.certSANs`) and a context in the admin kubeconfig.
    #[serde(default, rename = "masterFQDNs")]
    pub master_fqdns: Vec<String>,

    /// kubeadm's `controlPlaneEndpoint`: a stable IP address or DNS name, usually a load
    /// balancer that forwards TCP 6443 to every master. Required with more than one master;
    /// with a single master it defaults to that master's privateIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_load_balancer_address: Option<String>,

    /// The user hakube logs in as over SSH. When it is not root, hakube runs the boot
    /// scripts through passwordless `sudo`. A node may override it.
    #[serde(default = "default_ssh_login_user")]
    pub ssh_login_user: String,

    /// Path to the private SSH key to log in with (`~` is expanded). When unset, `hakube
    /// render` generates an ed25519 login key pair in the assets (ssh/id_ed25519) and the
    /// user's ssh-agent and ~/.ssh/config still apply. A node may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_login_key: Option<String>,

    /// TCP port of sshd on the nodes. A node may override it.
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,

    /// A bastion to reach the nodes through, as OpenSSH's ProxyJump takes it:
    /// `[user@]host[:port]`, several separated by commas. Unset: connect directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_bastion: Option<String>,

    /// How install checks the nodes' SSH host keys against the assets' known_hosts.
    #[serde(default)]
    pub host_key_policy: HostKeyPolicy,

    /// How many nodes install works on at the same time.
    #[serde(default = "default_install_concurrency")]
    pub install_concurrency: u32,

    /// The Kubernetes version to install: `MAJOR.MINOR.PATCH` (a leading `v` is allowed).
    /// 1.31 or newer (kubeadm.k8s.io/v1beta4).
    #[serde(default = "default_kubernetes_version")]
    pub kubernetes_version: String,

    /// The pod network (kubeadm's `networking.podSubnet`), a CIDR. The network provider
    /// is configured with it.
    #[serde(default = "default_pod_network_cidr", rename = "podNetworkCIDR")]
    pub pod_network_cidr: String,

    /// The service network (kubeadm's `networking.serviceSubnet`), a CIDR. Its first
    /// address is the `kubernetes` service's cluster IP.
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    pub service_cidr: String,

    /// The network the nodes' private IPs are on, a CIDR. Optional: when set, every
    /// privateIP must lie inside it, and it must not overlap the pod or service network.
    #[serde(default, rename = "nodeNetworkCIDR", skip_serializing_if = "Option::is_none")]
    pub node_network_cidr: Option<String>,

    /// The cluster's DNS domain (kubeadm's `networking.dnsDomain`).
    #[serde(default = "default_dns_domain")]
    pub dns_domain: String,

    /// Where etcd runs.
    #[serde(default)]
    pub etcd: EtcdSettings,

    /// Keys and validity of the certificates `hakube render` issues (and kubeadm then
    /// issues from the same CAs).
    #[serde(default)]
    pub pki: PkiSettings,

    /// The bootstrap token that nodes join with.
    #[serde(default)]
    pub bootstrap_token: BootstrapTokenSettings,

    /// The container runtime (containerd) on every node.
    #[serde(default)]
    pub container_runtime: ContainerRuntimeSettings,

    /// Where kubelet, kubeadm and kubectl packages come from.
    #[serde(default)]
    pub package_repository: PackageRepository,

    /// Where files the boot scripts download (the etcd release, network add-on manifests
    /// and tools) come from.
    #[serde(default)]
    pub downloads: Downloads,
    /// Encryption at rest of the assets' secrets (keys, admin.conf, the bootstrap token):
    /// with recipients, each secret is written only as `<name>.age`, encrypted with age to
    /// every recipient, so the assets directory can be committed to git.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// How `hakube upgrade` upgrades the cluster.
    #[serde(default, skip_serializing_if = "UpgradeSettings::is_default")]
    pub upgrade: UpgradeSettings,
    /// What the prepare step does on a node where firewalld runs: `open` opens exactly the
    /// ports the node's role and network add-on need (permanently, in firewalld's default
    /// zone, then reloads it), `refuse` stops with an error that lists the closed ones (for
    /// sites whose firewall is managed elsewhere). Nodes without a running firewalld are left
    /// alone. Default `open`.
    #[serde(default)]
    pub firewall: FirewallMode,

    /// The control-plane nodes. The first one runs `kubeadm init`; the others join it
    /// one at a time. Three or another odd number keeps etcd's quorum.
    pub masters: Vec<Node>,

    /// The worker nodes.
    #[serde(default)]
    pub workers: Vec<Node>,

    /// Named fragments that customise the boot scripts.
    #[serde(default)]
    pub hooks: Hooks,

    // hakube-installer fields that no longer apply: accepted so that an old definition
    // works unchanged, each with a warning (see `legacy_fields`). Kept inline rather than
    // `#[serde(flatten)]`, which would hide unknown fields from validation.
    /// Deprecated (hakube-installer): Docker is no longer used; see containerRuntime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub docker_version: Option<serde_json::Value>,
    /// Deprecated (hakube-installer): kubeadm picks the etcd version that matches
    /// kubernetesVersion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub etcd_version: Option<serde_json::Value>,
    /// Deprecated (hakube-installer): the assets layout is fixed (pki/etcd/).
    #[serde(default, rename = "etcdPKIDir", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub etcd_pki_dir: Option<serde_json::Value>,
    /// Deprecated (hakube-installer): the etcd CA's common name is kubeadm's `etcd-ca`.
    #[serde(default, rename = "etcdCACommonName", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub etcd_ca_common_name: Option<serde_json::Value>,
    /// Deprecated (hakube-installer): the etcd client certificate is kubeadm's
    /// `kube-apiserver-etcd-client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub etcd_client_common_name: Option<serde_json::Value>,
    /// Deprecated (hakube-installer): see pki.caCertificateValidityPeriod.
    #[serde(default, rename = "etcdCACertExpiry", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub etcd_ca_cert_expiry: Option<serde_json::Value>,
    /// Deprecated (hakube-installer): the assets layout is fixed (ssh/).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub ssh_keys_dir: Option<serde_json::Value>,
    /// Deprecated (hakube-installer): the assets layout is fixed (nodes/NAME/boot.sh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub scripts_dir: Option<serde_json::Value>,
    /// Deprecated (hakube-installer, 2018): a single name; use masterFQDNs.
    #[serde(default, rename = "masterFQDN", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub master_fqdn: Option<String>,
    /// Deprecated (hakube-installer, 2018): use masterLoadBalancerAddress.
    #[serde(default, rename = "masterLoadBalancerIP", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub master_load_balancer_ip: Option<String>,
    /// Deprecated (hakube-installer, 2018): use masterLoadBalancerAddress.
    #[serde(default, rename = "masterLoadBalancerFQDN", skip_serializing_if = "Option::is_none")]
    #[schemars(extend("deprecated" = true))]
    pub master_load_balancer_fqdn: Option<String>,
}

/// One machine of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Node {
    /// The node's name in Kubernetes (`nodeRegistration.name`). An RFC 1123 subdomain:
    /// lowercase letters, digits, `-` and `.`; it ends up in shell scripts, file names
    /// and certificates. Unique across masters and workers.
    pub node_name: String,

    /// The address the node uses inside the cluster (the kubelet's node IP, the API
    /// server's advertise address, etcd's peer address). Unique.
    #[serde(rename = "privateIP")]
    pub private_ip: String,

    /// The address hakube connects to over SSH. Defaults to privateIP. Unique.
    #[serde(default, rename = "publicIP", skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,

    /// Overrides the cluster's sshLoginKey for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_login_key: Option<String>,

    /// Overrides the cluster's sshLoginUser for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_login_user: Option<String>,

    /// Overrides the cluster's sshPort for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,

    /// Labels the kubelet registers the node with (`--node-labels`). Keys are
    /// Kubernetes qualified names, values label values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Taints the node registers with (`nodeRegistration.taints`). Unset: kubeadm's
    /// default (the control-plane taint on masters, none on workers); `[]`: no taints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taints: Option<Vec<Taint>>,
}

/// A Kubernetes taint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Taint {
    /// The taint key, a Kubernetes qualified name.
    pub key: String,
    /// The taint value (may be empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What the taint does to pods that do not tolerate it.
    pub effect: TaintEffect,
}

/// A taint's effect, as Kubernetes names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TaintEffect {
    /// Do not schedule new pods.
    NoSchedule,
    /// Avoid scheduling new pods.
    PreferNoSchedule,
    /// Evict running pods too.
    NoExecute,
}

/// How install treats a node's SSH host key (OpenSSH's `StrictHostKeyChecking`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// The key must already be in the assets' known_hosts (render writes the host keys it
    /// generated there; an infra provider installs them on the machines).
    #[default]
    Strict,
    /// A host not yet in known_hosts is trusted on first contact and its key recorded, so
    /// it is pinned from then on. A changed key is still refused.
    AcceptNew,
}

/// The prepare step's handling of firewalld (see `firewall`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FirewallMode {
    /// Open the ports the node needs.
    #[default]
    Open,
    /// Stop with an error naming the closed ports.
    Refuse,
}

impl FirewallMode {
    /// `open` or `refuse`, as the definition spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FirewallMode::Open => "open",
            FirewallMode::Refuse => "refuse",
        }
    }
}

/// Where etcd runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct EtcdSettings {
    /// `stacked`: kubeadm runs an etcd member as a static pod on every master.
    /// `external`: hakube runs etcd as a system service on every master, with certificates
    /// render issues, and kubeadm points the API servers at it (`etcd.external`).
    #[serde(default)]
    pub topology: EtcdTopology,
    /// External topology: the etcd release (`MAJOR.MINOR.PATCH`) downloaded from etcd's
    /// GitHub releases (or `downloads.mirror`) onto every master. Unset: the release hakube
    /// pairs with kubernetesVersion's minor (3.6.14 for 1.35 and 1.36, 3.5.33 for 1.34). At
    /// least kubeadm's minimum external etcd (3.5.24 for 1.32 to 1.36). Not used with the
    /// stacked topology, whose etcd image kubeadm picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// sha256 of `etcd-vVERSION-linux-ARCH.tar.gz` by architecture (`amd64`, `arm64`), checked
    /// on every master before anything is unpacked. Unset: the sums etcd published for
    /// `version`, which hakube knows for the releases it pairs; required for any other.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sha256: BTreeMap<String, String>,
}

/// The etcd topology, in kubeadm's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EtcdTopology {
    /// etcd members as static pods next to each API server (kubeadm's default).
    #[default]
    Stacked,
    /// etcd members run outside kubeadm, on the masters, with pre-issued certificates.
    External,
}

/// Certificate keys and lifetimes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PkiSettings {
    /// Key algorithm of every key hakube and kubeadm generate (kubeadm's
    /// `encryptionAlgorithm`).
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
    /// Lifetime of the CA certificates, a Go duration such as `87600h` (kubeadm's
    /// `caCertificateValidityPeriod`; default 10 years).
    #[serde(default = "default_ca_validity")]
    pub ca_certificate_validity_period: String,
    /// Lifetime of leaf certificates, a Go duration such as `8760h` (kubeadm's
    /// `certificateValidityPeriod`; default 1 year).
    #[serde(default = "default_leaf_validity")]
    pub certificate_validity_period: String,
}

impl Default for PkiSettings {
    fn default() -> Self {
        Self {
            key_algorithm: KeyAlgorithm::default(),
            ca_certificate_validity_period: default_ca_validity(),
            certificate_validity_period: default_leaf_validity(),
        }
    }
}

/// A key algorithm, spelled as kubeadm's `ClusterConfiguration.encryptionAlgorithm`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KeyAlgorithm {
    /// RSA, 2048-bit modulus (kubeadm's default).
    #[default]
    #[serde(rename = "RSA-2048")]
    Rsa2048,
    /// RSA, 3072-bit modulus.
    #[serde(rename = "RSA-3072")]
    Rsa3072,
    /// RSA, 4096-bit modulus.
    #[serde(rename = "RSA-4096")]
    Rsa4096,
    /// ECDSA on NIST P-256.
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
    /// ECDSA on NIST P-384.
    #[serde(rename = "ECDSA-P384")]
    EcdsaP384,
}

impl KeyAlgorithm {
    /// The spelling kubeadm's `encryptionAlgorithm` uses, e.g. `RSA-2048`.
    pub fn as_kubeadm_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa2048 => "RSA-2048",
            KeyAlgorithm::Rsa3072 => "RSA-3072",
            KeyAlgorithm::Rsa4096 => "RSA-4096",
            KeyAlgorithm::EcdsaP256 => "ECDSA-P256",
            KeyAlgorithm::EcdsaP384 => "ECDSA-P384",
        }
    }
}

/// The bootstrap token nodes join with. hakube never renders a token that does not expire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct BootstrapTokenSettings {
    /// How long the token lives after `kubeadm init` creates it (or install re-creates it),
    /// a Go duration greater than zero and at most `168h` (kubeadm's default is `24h`).
    #[serde(default = "default_token_ttl")]
    pub ttl: String,
}

impl Default for BootstrapTokenSettings {
    fn default() -> Self {
        Self { ttl: default_token_ttl() }
    }
}

/// containerd, configured with `SystemdCgroup = true` as the kubelet expects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ContainerRuntimeSettings {
    /// Where containerd comes from. `docker` (the default): Docker's `containerd.io`
    /// package, which carries containerd 2.x and its own runc, from
    /// `https://download.docker.com/linux/<debian|ubuntu>/` (apt, suite = the release's
    /// codename, component `stable`, key `<base>/gpg`; docs.docker.com "Install Docker Engine
    /// on Debian") or `https://download.docker.com/linux/<centos|fedora>/` (dnf); it replaces
    /// an installed `containerd` or `runc` package (its Conflicts/Replaces, docker/packaging
    /// `pkg/containerd/deb/control`). `distribution`: the distribution's own `containerd`
    /// package (apt; Debian 12 has 1.6.20, Debian 13 1.7.24, too old for current Kubernetes:
    /// the runtime step fails or warns, see docs/upstream-facts.md "Container runtime"); on dnf
    /// only Fedora has one, and the runtime step fails on RHEL, Rocky and AlmaLinux, which
    /// ship none.
    #[serde(default, skip_serializing_if = "ContainerRuntimeSource::is_default")]
    pub source: ContainerRuntimeSource,
    /// The containerd package version to pin (`2.2.1`, or the package manager's whole
    /// version, `2.2.1-1~debian.12~bookworm`); the newest package version it is a prefix of
    /// (up to a `.`, `-`, `~` or `+`) is installed and held. Unset: the newest the source
    /// offers. Validation warns when containerd does not list it for kubernetesVersion's
    /// minor (containerd's RELEASES.md, crates/cluster/src/releases.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The pause (sandbox) image containerd uses. Unset: the one kubeadm expects for
    /// kubernetesVersion, from registry.k8s.io (or `imageRepository`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_image: Option<String>,
    /// Registry that control-plane and pause images are pulled from (kubeadm's
    /// `imageRepository`). Unset: registry.k8s.io.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repository: Option<String>,
    /// Pull-through mirrors, by registry host (`registry.k8s.io`, `docker.io`, `quay.io`,
    /// `host:port`): containerd pulls every image of that registry from the mirror URL
    /// first, then from the registry itself (containerd's `hosts.toml` under
    /// `/etc/containerd/certs.d/<registry>/`, enabled with the CRI registry's
    /// `config_path`). For air-gapped sites, where the fallback fails.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_mirrors: BTreeMap<String, String>,
}

/// Where containerd comes from (containerRuntime.source).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContainerRuntimeSource {
    /// Docker's `containerd.io` package from download.docker.com.
    #[default]
    Docker,
    /// The distribution's own `containerd` package.
    Distribution,
}

impl ContainerRuntimeSource {
    /// `docker` or `distribution`, as the definition writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerRuntimeSource::Docker => "docker",
            ContainerRuntimeSource::Distribution => "distribution",
        }
    }
    fn is_default(&self) -> bool {
        *self == ContainerRuntimeSource::Docker
    }
}

/// Where downloaded files come from; each file's sha256 is pinned by render.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Downloads {
    /// A mirror of the upstream download sites, laid out over the same paths with the host
    /// name as the first path segment: `https://github.com/etcd-io/etcd/releases/...` is
    /// fetched as `<mirror>/github.com/etcd-io/etcd/releases/...`. For air-gapped sites.
    /// Unset: the upstream URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// sha256 (64 lowercase hex digits) of downloaded files, by upstream URL as
    /// `hakube render --list-downloads` prints it. The boot script checks every download
    /// against its pin before using it. hakube knows the sums of the releases it pairs
    /// (etcd's and the cilium CLI's archives, Calico's and flannel's manifests); set one here
    /// for another release or file (validation warns about a download nothing pins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sha256: BTreeMap<String, String>,
}

/// `hakube upgrade`'s settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct UpgradeSettings {
    /// How many workers are drained and upgraded at once: a count (`2`) or a percentage of
    /// the workers (`"25%"`, rounded down, as Kubernetes scales maxUnavailable), at least
    /// one. Unset: one node or 10 % of the workers, whichever is larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<MaxUnavailable>,
}

impl UpgradeSettings {
    fn is_default(&self) -> bool {
        *self == UpgradeSettings::default()
    }
}

/// A number of nodes or a percentage, as Kubernetes' IntOrString.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MaxUnavailable {
    /// A number of nodes.
    Count(u32),
    /// A percentage of the workers, `"N%"` with N from 1 to 100.
    Percent(String),
}

/// Who can decrypt the assets' secrets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Secrets {
    /// age recipients: X25519 public keys (`age1...`, as `age-keygen` prints them) and SSH
    /// public keys (`ssh-ed25519 AAAA...`, `ssh-rsa AAAA...` of at least 2048 bits, as in an
    /// authorized_keys line), the recipient types the age format defines
    /// (<https://age-encryption.org/v1>). Every secret is encrypted to all of them; any one
    /// of their identities decrypts it. Empty: secrets are plaintext files of mode 0600,
    /// kept out of git by the `.gitignore` render writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

impl Secrets {
    fn is_empty(&self) -> bool {
        self.recipients.is_empty()
    }
}

/// The Kubernetes package repository.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PackageRepository {
    /// Base URL laid out like `https://pkgs.k8s.io/core:/stable:/v1.MINOR/`: apt uses
    /// `<url>/deb/` (key `<url>/deb/Release.key`), dnf `<url>/rpm/` (key
    /// `<url>/rpm/repodata/repomd.xml.key`). Unset: pkgs.k8s.io for kubernetesVersion's
    /// minor. Set it to a mirror for air-gapped sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Named fragments under templates/hooks/ that customise the boot scripts. A name may be
/// given with or without hakube-installer's `.sh.j2` suffix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Hooks {
    /// A fragment run first on every node (templates/hooks/preinstall/NAME.sh.j2),
    /// e.g. `aws`.
    #[serde(default)]
    pub preinstall: Option<String>,
    /// A cloud provider (templates/hooks/cloud-provider/NAME.sh.j2), e.g. `aws`. Since
    /// Kubernetes 1.31 every provider is external: the kubelet runs with
    /// `--cloud-provider=external` and the hook installs the provider's cloud controller
    /// manager.
    #[serde(default)]
    pub cloud_provider: Option<String>,
    /// The cloud provider's configuration file (templates/hooks/cloud-config/NAME.j2),
    /// placed at /etc/kubernetes/cloud-config. Most providers need none.
    #[serde(default)]
    pub cloud_provider_config: Option<String>,
    /// The pod network add-on the first master applies (templates/hooks/network/NAME.sh.j2):
    /// `calico`, `cilium`, `flannel`, or `weave` for old definitions. Absent: `calico`;
    /// `null`: none (bring your own CNI after install).
    #[serde(default = "default_network_provider")]
    pub network_provider: Option<String>,
    /// The release of the network add-on (its project's tag, e.g. `v3.31.4` for Calico, the
    /// cilium CLI's for Cilium). Unset: the release hakube pairs with kubernetesVersion's
    /// minor from the project's compatibility statement; required for another minor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_provider_version: Option<String>,
    /// The release of the cloud provider's cloud controller manager (its image tag, e.g.
    /// `v1.36.1` for AWS). Unset: the published release hakube pairs with
    /// kubernetesVersion's minor; required for another minor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_provider_version: Option<String>,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            preinstall: None,
            cloud_provider: None,
            cloud_provider_config: None,
            network_provider: default_network_provider(),
            network_provider_version: None,
            cloud_provider_version: None,
        }
    }
}

impl ClusterDefinition {
    /// Every hakube-installer field that is set but no longer applies, as `(JSON field
    /// name, what replaces it or why it is ignored)`, in a fixed order.
    pub fn legacy_fields(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        let mut note = |set: bool, field: &'static str, why: &'static str| {
            if set {
                out.push((field, why));
            }
        };
        note(self.docker_version.is_some(), "dockerVersion",
            "ignored (hakube-installer field): hakube installs containerd, not Docker; pin it with containerRuntime.version");
        note(
            self.etcd_version.is_some(),
            "etcdVersion",
            "ignored (hakube-installer field): kubeadm runs the etcd version that matches kubernetesVersion",
        );
        note(
            self.etcd_pki_dir.is_some(),
            "etcdPKIDir",
            "ignored (hakube-installer field): the assets layout is fixed; etcd certificates live in pki/etcd/",
        );
        note(
            self.etcd_ca_common_name.is_some(),
            "etcdCACommonName",
            "ignored (hakube-installer field): the etcd CA's common name is kubeadm's `etcd-ca`",
        );
        note(
            self.etcd_client_common_name.is_some(),
            "etcdClientCommonName",
            "ignored (hakube-installer field): the etcd client certificate is kubeadm's `kube-apiserver-etcd-client`",
        );
        note(
            self.etcd_ca_cert_expiry.is_some(),
            "etcdCACertExpiry",
            "ignored (hakube-installer field): set pki.caCertificateValidityPeriod instead",
        );
        note(
            self.ssh_keys_dir.is_some(),
            "sshKeysDir",
            "ignored (hakube-installer field): the assets layout is fixed; SSH keys live in ssh/",
        );
        note(self.scripts_dir.is_some(), "scriptsDir",
            "ignored (hakube-installer field): the assets layout is fixed; boot scripts live in nodes/<nodeName>/boot.sh");
        note(
            self.master_fqdn.is_some(),
            "masterFQDN",
            "renamed (hakube-installer field): use the list masterFQDNs; its value is used as masterFQDNs[0]",
        );
        note(
            self.master_load_balancer_ip.is_some(),
            "masterLoadBalancerIP",
            "renamed (hakube-installer field): use masterLoadBalancerAddress; its value is used as that",
        );
        note(
            self.master_load_balancer_fqdn.is_some(),
            "masterLoadBalancerFQDN",
            "renamed (hakube-installer field): use masterLoadBalancerAddress; its value is used as that",
        );
        out
    }
}

impl ClusterDefinition {
    /// Every node, masters first, in definition order, with its role.
    pub fn nodes(&self) -> impl Iterator<Item = (Role, &Node)> {
        self.masters.iter().map(|n| (Role::Master, n)).chain(self.workers.iter().map(|n| (Role::Worker, n)))
    }

    /// The node called `name`, with its role, if there is one.
    pub fn node(&self, name: &str) -> Option<(Role, &Node)> {
        self.nodes().find(|(_, n)| n.node_name == name)
    }

    /// The first master: the one that runs `kubeadm init`. `None` only for a definition
    /// that failed validation (validation requires at least one master).
    pub fn first_master(&self) -> Option<&Node> {
        self.masters.first()
    }

    /// kubeadm's `controlPlaneEndpoint` host: masterLoadBalancerAddress, or the single
    /// master's privateIP when it is unset.
    pub fn control_plane_host(&self) -> Option<&str> {
        self.master_load_balancer_address.as_deref().or_else(|| self.masters.first().map(|m| m.private_ip.as_str()))
    }
}

impl Node {
    /// The address hakube connects to over SSH: publicIP, else privateIP.
    pub fn ssh_address(&self) -> &str {
        self.public_ip.as_deref().unwrap_or(&self.private_ip)
    }
}

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A control-plane node (kubeadm's term; hakube-installer called it a master).
    Master,
    /// A worker node.
    Worker,
}

impl Role {
    /// `master` or `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

/// Parses a Go duration (`87600h`, `90m`, `1h30m`) as kubeadm's configuration fields take
/// it (Go's `time.ParseDuration`, see [`crate::duration`]). `None` when it does not parse
/// or is negative. Validation has already rejected both for a loaded definition.
pub fn parse_go_duration(text: &str) -> Option<std::time::Duration> {
    crate::duration::parse_go_duration(text).ok()
}

impl PkiSettings {
    /// `(CA validity, leaf validity)`; kubeadm's defaults (10 years, 1 year) for values
    /// that do not parse (validation rejects those before rendering).
    pub fn validities(&self) -> (std::time::Duration, std::time::Duration) {
        const HOUR: u64 = 3600;
        (
            parse_go_duration(&self.ca_certificate_validity_period)
                .unwrap_or(std::time::Duration::from_secs(87600 * HOUR)),
            parse_go_duration(&self.certificate_validity_period).unwrap_or(std::time::Duration::from_secs(8760 * HOUR)),
        )
    }
}

fn default_cluster_name() -> String {
    "kubernetes".into()
}
fn default_ssh_login_user() -> String {
    "ubuntu".into()
}
fn default_ssh_port() -> u16 {
    22
}
fn default_install_concurrency() -> u32 {
    50
}
fn default_kubernetes_version() -> String {
    DEFAULT_KUBERNETES_VERSION.into()
}
fn default_pod_network_cidr() -> String {
    "10.244.0.0/16".into()
}
fn default_service_cidr() -> String {
    "10.96.0.0/12".into()
}
fn default_dns_domain() -> String {
    "cluster.local".into()
}
fn default_ca_validity() -> String {
    "87600h".into()
}
fn default_leaf_validity() -> String {
    "8760h".into()
}
fn default_token_ttl() -> String {
    "24h".into()
}
fn default_network_provider() -> Option<String> {
    Some("calico".into())
}
