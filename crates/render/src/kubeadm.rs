//! The kubeadm configuration of one node (`nodes/<node>/kubeadm.yaml`), as typed
//! `kubeadm.k8s.io/v1beta4` structures serialised to multi-document YAML.
//!
//! Typed rather than templated because `kubeadm init`/`join` only *warn* about unknown
//! fields, so a misspelt field would be silently ignored on a real node (docs/upstream-facts.md,
//! "kubeadm v1beta4 configuration"). Every struct here denies unknown fields, so
//! [`parse`] reads back exactly what [`kubeadm_config`] writes and nothing else.
//!
//! - the first master gets an `InitConfiguration` and a `ClusterConfiguration`;
//! - the other masters a `JoinConfiguration` with `controlPlane` (no `certificateKey`:
//!   the CAs are pre-provided, so kubeadm skips its download-certs phase);
//! - workers a `JoinConfiguration` without `controlPlane`.
//!
//! The file is public: wherever the bootstrap token belongs it holds
//! [`TOKEN_PLACEHOLDER`], which the boot script replaces on the node with the secret
//! from /etc/hakube/secrets/bootstrap-token.

use std::net::IpAddr;

use hakube_cluster::definition::{EtcdTopology, TaintEffect};
use hakube_cluster::{ClusterDefinition, Node, Role, Version};
use serde::{Deserialize, Serialize};

/// Stands for the bootstrap token (`id.secret`) in the rendered file; the boot script
/// substitutes the real token on the node, with bash builtins only.
pub const TOKEN_PLACEHOLDER: &str = "@HAKUBE_BOOTSTRAP_TOKEN@";

/// containerd's CRI socket, as kubeadm's `nodeRegistration.criSocket` wants it (a URL
/// with the `unix` scheme).
pub const CRI_SOCKET: &str = "unix:///var/run/containerd/containerd.sock";

/// The port every API server binds and the control-plane endpoint forwards
/// (kubeadm's default `bindPort`).
pub const API_SERVER_PORT: u16 = 6443;

/// The group kubeadm gives the default node bootstrap token (docs/upstream-facts.md, "Bootstrap
/// token and discovery").
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// Where kubeadm keeps the cluster's certificates on a node.
pub const PKI_DIR: &str = "/etc/kubernetes/pki";

/// Why a kubeadm configuration could not be rendered or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KubeadmError {
    /// The node is not in the definition.
    #[error("failed to render the kubeadm configuration: node {node:?} is not in the definition")]
    UnknownNode {
        /// The name asked for.
        node: String,
    },
    /// An input that validation or render should have caught (a malformed version,
    /// token id or discovery hash, no master).
    #[error("failed to render the kubeadm configuration of node {node}: {problem}")]
    Invalid {
        /// The node.
        node: String,
        /// What is wrong.
        problem: String,
    },
    /// serde_yaml_ng refused a document.
    #[error("failed to serialise the kubeadm configuration of node {node}")]
    Serialise {
        /// The node.
        node: String,
        /// The YAML error.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A document is not one of the kinds and fields hakube writes.
    #[error("failed to parse kubeadm configuration document {index}: {problem}")]
    Parse {
        /// 0-based index of the YAML document.
        index: usize,
        /// What is wrong (the YAML error, or the unexpected kind).
        problem: String,
    },
}

/// The only `apiVersion` hakube writes (docs/upstream-facts.md, "Versions": v1beta4 since 1.31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiVersion {
    /// `kubeadm.k8s.io/v1beta4`.
    #[serde(rename = "kubeadm.k8s.io/v1beta4")]
    V1Beta4,
}

/// `kind: InitConfiguration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitKind {
    /// The only value.
    InitConfiguration,
}

/// `kind: ClusterConfiguration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterKind {
    /// The only value.
    ClusterConfiguration,
}

/// `kind: JoinConfiguration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinKind {
    /// The only value.
    JoinConfiguration,
}

/// What `kubeadm init` alone reads (the first master).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitConfiguration {
    /// Always v1beta4.
    pub api_version: ApiVersion,
    /// Always InitConfiguration.
    pub kind: InitKind,
    /// Tokens `kubeadm init` creates; hakube lists the one pre-generated token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap_tokens: Vec<BootstrapToken>,
    /// How this node registers.
    pub node_registration: NodeRegistrationOptions,
    /// The address and port this node's API server advertises and binds.
    #[serde(rename = "localAPIEndpoint")]
    pub local_api_endpoint: ApiEndpoint,
}

/// A bootstrap token for `InitConfiguration.bootstrapTokens` (kubeadm's
/// bootstraptoken/v1 type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapToken {
    /// `id.secret`; in rendered files always [`TOKEN_PLACEHOLDER`].
    pub token: String,
    /// Shown by `kubeadm token list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Lifetime after creation, a Go duration (`24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// `signing` and `authentication` for a node-join token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    /// Extra groups the token authenticates as.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// `nodeRegistration`: how a node registers with the API server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRegistrationOptions {
    /// The Node object's name (the definition's nodeName).
    pub name: String,
    /// The container runtime's CRI socket, [`CRI_SOCKET`].
    pub cri_socket: String,
    /// Unset: kubeadm's default (the control-plane taint on masters); `Some([])`: no
    /// taints at all. kubeadm tells the two apart (docs/upstream-facts.md), so `None` is omitted
    /// rather than written as an empty list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taints: Option<Vec<Taint>>,
    /// kubelet flags without leading dashes; a *list* of `{name, value}` in v1beta4.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kubelet_extra_args: Vec<Arg>,
}

/// A core/v1 taint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    /// The taint key.
    pub key: String,
    /// The taint value, omitted when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// NoSchedule, PreferNoSchedule or NoExecute.
    pub effect: TaintEffect,
}

/// A command-line flag for a component: v1beta4's `{name, value}` list entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arg {
    /// The flag name without leading dashes.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// An API server's advertised address and port (`localAPIEndpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiEndpoint {
    /// The node's privateIP.
    pub advertise_address: String,
    /// [`API_SERVER_PORT`].
    pub bind_port: u16,
}

/// Cluster-wide settings, read by `kubeadm init` and stored in the kubeadm-config
/// ConfigMap for every later join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfiguration {
    /// Always v1beta4.
    pub api_version: ApiVersion,
    /// Always ClusterConfiguration.
    pub kind: ClusterKind,
    /// `vMAJOR.MINOR.PATCH`.
    pub kubernetes_version: String,
    /// The cluster's name.
    pub cluster_name: String,
    /// `host:6443`, host being masterLoadBalancerAddress or the single master's IP.
    pub control_plane_endpoint: String,
    /// Pod and service networks, DNS domain.
    pub networking: Networking,
    /// Stacked or external etcd.
    pub etcd: Etcd,
    /// API server settings (extra certificate SANs).
    pub api_server: ApiServer,
    /// Registry of the control-plane images; unset: registry.k8s.io.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repository: Option<String>,
    /// Key algorithm of every key kubeadm generates (`RSA-2048`, `ECDSA-P256`, ...).
    pub encryption_algorithm: String,
    /// Lifetime of the leaf certificates kubeadm issues, a Go duration.
    pub certificate_validity_period: String,
    /// Lifetime of CA certificates kubeadm would issue, a Go duration (hakube
    /// pre-provides the CAs, so this documents their intended lifetime).
    pub ca_certificate_validity_period: String,
}

/// `networking`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Networking {
    /// The pod network CIDR.
    pub pod_subnet: String,
    /// The service network CIDR.
    pub service_subnet: String,
    /// The cluster DNS domain.
    pub dns_domain: String,
}

/// `etcd`: exactly one of `local` (stacked) and `external`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Etcd {
    /// Stacked etcd: kubeadm runs a member as a static pod on every master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalEtcd>,
    /// External etcd: the API servers connect to these members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalEtcd>,
}

/// `etcd.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalEtcd {
    /// Where the member keeps its data (kubeadm's default, written out for reviewers).
    pub data_dir: String,
}

/// `etcd.external` (docs/upstream-facts.md, "etcd (external topology, TLS everywhere)").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalEtcd {
    /// `https://<master privateIP>:2379` for every master.
    pub endpoints: Vec<String>,
    /// The etcd CA certificate.
    pub ca_file: String,
    /// The API server's etcd client certificate.
    pub cert_file: String,
    /// Its key.
    pub key_file: String,
}

/// `apiServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiServer {
    /// Extra subject alternative names of the API server certificate.
    #[serde(rename = "certSANs", default, skip_serializing_if = "Vec::is_empty")]
    pub cert_sans: Vec<String>,
    /// Extra kube-apiserver flags (a list in v1beta4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<Arg>,
}

/// What `kubeadm join` reads (every node but the first master).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinConfiguration {
    /// Always v1beta4.
    pub api_version: ApiVersion,
    /// Always JoinConfiguration.
    pub kind: JoinKind,
    /// How this node registers.
    pub node_registration: NodeRegistrationOptions,
    /// How the node finds and trusts the cluster.
    pub discovery: Discovery,
    /// Set for masters: this node runs a control-plane instance too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<JoinControlPlane>,
}

/// `discovery`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Discovery {
    /// Token-based discovery, pinned to the cluster CA's public key.
    pub bootstrap_token: BootstrapTokenDiscovery,
}

/// `discovery.bootstrapToken`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapTokenDiscovery {
    /// `id.secret`; in rendered files always [`TOKEN_PLACEHOLDER`].
    pub token: String,
    /// `host:port` of the control-plane endpoint.
    pub api_server_endpoint: String,
    /// `sha256:<hex>` pins of the cluster CA's SubjectPublicKeyInfo.
    pub ca_cert_hashes: Vec<String>,
}

/// `controlPlane` of a joining master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinControlPlane {
    /// The address and port this node's API server advertises and binds.
    #[serde(rename = "localAPIEndpoint")]
    pub local_api_endpoint: ApiEndpoint,
}

/// One document of a kubeadm configuration file.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// `kind: InitConfiguration`.
    Init(InitConfiguration),
    /// `kind: ClusterConfiguration`.
    Cluster(Box<ClusterConfiguration>),
    /// `kind: JoinConfiguration`.
    Join(JoinConfiguration),
}

/// Whether the kubelet may set the label `key` on its own Node through
/// `--node-labels`: keys in the `kubernetes.io` and `k8s.io` namespaces (and their
/// subdomains) only when kubelet.kubernetes.io/node.kubernetes.io-namespaced or on
/// the kubelet's allow-list. Any other such key makes the kubelet refuse to start
/// (k8s.io/kubelet/pkg/apis/well_known_labels.go `IsKubeletLabel`, enforced by
/// kubelet flag validation and the NodeRestriction admission plugin), so hakube
/// applies those labels from the first master with admin rights instead.
pub fn kubelet_may_set_label(key: &str) -> bool {
    const ALLOWED: [&str; 11] = [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    ];
    let Some((namespace, _)) = key.split_once('/') else { return true };
    let within = |ns: &str, domain: &str| ns == domain || ns.ends_with(&format!(".{domain}"));
    if !within(namespace, "kubernetes.io") && !within(namespace, "k8s.io") {
        return true;
    }
    ALLOWED.contains(&key) || within(namespace, "kubelet.kubernetes.io") || within(namespace, "node.kubernetes.io")
}

/// `host` as it appears before `:port` or inside a URL: IPv6 addresses in brackets.
pub fn url_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_string(),
    }
}

/// The kubeadm configuration of `node`, as the YAML text of `nodes/<node>/kubeadm.yaml`.
///
/// `discovery_hash` is the cluster CA's `sha256:<64 hex>` pin (it goes into
/// `caCertHashes`); `token_id` is the public half of the bootstrap token (6 of
/// `[a-z0-9]`), named in the header comment so that a reviewer can match it with
/// `kubeadm token list`. The token itself never appears: [`TOKEN_PLACEHOLDER`] stands in
/// for it. `def` must have passed validation.
///
/// # Errors
///
/// [`KubeadmError::UnknownNode`] when `node` is not in `def`; [`KubeadmError::Invalid`]
/// for a malformed kubernetesVersion, hash or token id, or a definition without masters.
pub fn kubeadm_config(
    def: &ClusterDefinition,
    node: &str,
    discovery_hash: &str,
    token_id: &str,
) -> Result<String, KubeadmError> {
    let (role, n) = def.node(node).ok_or_else(|| KubeadmError::UnknownNode { node: node.to_string() })?;
    config_of(def, role, n, discovery_hash, token_id, false)
}

/// [`kubeadm_config`] of a node the caller already holds (one of `def.nodes()`, with its
/// role): no search by name, so rendering every node costs time linear in their number.
///
/// # Errors
///
/// As [`kubeadm_config`], except that the node is not looked up.
pub fn kubeadm_config_of(
    def: &ClusterDefinition,
    role: Role,
    node: &Node,
    discovery_hash: &str,
    token_id: &str,
) -> Result<String, KubeadmError> {
    config_of(def, role, node, discovery_hash, token_id, false)
}

/// The first master's `JoinConfiguration` with `controlPlane`, the YAML text of
/// `nodes/<node>/kubeadm-join.yaml`: a first master reset and installed again while the
/// cluster runs joins it through a running master, as any other master does, instead of
/// creating a new cluster with `kubeadm init`. Arguments as [`kubeadm_config`].
///
/// # Errors
///
/// As [`kubeadm_config`], and [`KubeadmError::Invalid`] when `node` is not the first master.
pub fn first_master_join_config(
    def: &ClusterDefinition,
    node: &str,
    discovery_hash: &str,
    token_id: &str,
) -> Result<String, KubeadmError> {
    if def.first_master().is_none_or(|m| m.node_name != node) {
        return Err(KubeadmError::Invalid { node: node.to_string(), problem: "not the first master".into() });
    }
    let (role, n) = def.node(node).ok_or_else(|| KubeadmError::UnknownNode { node: node.to_string() })?;
    config_of(def, role, n, discovery_hash, token_id, true)
}

/// The configuration of `node`: kubeadm init's for the first master unless `join_existing`,
/// else the JoinConfiguration of its role.
fn config_of(
    def: &ClusterDefinition,
    role: Role,
    n: &Node,
    discovery_hash: &str,
    token_id: &str,
    join_existing: bool,
) -> Result<String, KubeadmError> {
    let node = n.node_name.as_str();
    let invalid = |problem: String| KubeadmError::Invalid { node: node.to_string(), problem };
    if node.chars().any(char::is_control) {
        return Err(invalid("the node name contains a control character".into()));
    }
    if !is_discovery_hash(discovery_hash) {
        return Err(invalid(format!("{discovery_hash:?} is not a discovery hash (sha256:<64 lowercase hex digits>)")));
    }
    if token_id.len() != 6 || !token_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(invalid(format!("{token_id:?} is not a bootstrap token id (6 of [a-z0-9])")));
    }
    let host = def.control_plane_host().ok_or_else(|| invalid("the definition has no master".into()))?;
    let endpoint = format!("{}:{API_SERVER_PORT}", url_host(host));
    let first = role == Role::Master && def.first_master().is_some_and(|m| m.node_name == node) && !join_existing;

    let mut kubelet_args = vec![Arg { name: "node-ip".into(), value: n.private_ip.clone() }];
    let labels: Vec<String> =
        n.labels.iter().filter(|(k, _)| kubelet_may_set_label(k)).map(|(k, v)| format!("{k}={v}")).collect();
    if !labels.is_empty() {
        kubelet_args.push(Arg { name: "node-labels".into(), value: labels.join(",") });
    }
    if def.hooks.cloud_provider.is_some() {
        // Every cloud provider is external since 1.31; the hook installs its controller.
        kubelet_args.push(Arg { name: "cloud-provider".into(), value: "external".into() });
    }
    let registration = NodeRegistrationOptions {
        name: n.node_name.clone(),
        cri_socket: CRI_SOCKET.into(),
        taints: n.taints.as_ref().map(|taints| {
            taints.iter().map(|t| Taint { key: t.key.clone(), value: t.value.clone(), effect: t.effect }).collect()
        }),
        kubelet_extra_args: kubelet_args,
    };
    let local_endpoint = ApiEndpoint { advertise_address: n.private_ip.clone(), bind_port: API_SERVER_PORT };

    let mut text = format!(
        "# kubeadm configuration of node {node} ({}), generated by hakube render; do not edit.\n\
         # {TOKEN_PLACEHOLDER} stands for bootstrap token {token_id}.<secret>: boot.sh puts the secret\n\
         # in on the node (from /etc/hakube/secrets/bootstrap-token), into /etc/hakube/secrets/kubeadm.yaml.\n",
        if first {
            "first master: kubeadm init"
        } else if join_existing {
            "first master: kubeadm join --control-plane, when the cluster already exists"
        } else if role == Role::Master {
            "master: kubeadm join --control-plane"
        } else {
            "worker: kubeadm join"
        },
    );
    if first {
        let version = Version::parse(&def.kubernetes_version)
            .ok_or_else(|| invalid(format!("{:?} is not a Kubernetes version", def.kubernetes_version)))?;
        let init = InitConfiguration {
            api_version: ApiVersion::V1Beta4,
            kind: InitKind::InitConfiguration,
            bootstrap_tokens: vec![BootstrapToken {
                token: TOKEN_PLACEHOLDER.into(),
                description: Some("hakube: nodes join the cluster with this token".into()),
                ttl: Some(def.bootstrap_token.ttl.clone()),
                usages: vec!["signing".into(), "authentication".into()],
                groups: vec![BOOTSTRAP_GROUP.into()],
            }],
            node_registration: registration,
            local_api_endpoint: local_endpoint,
        };
        let cluster = cluster_configuration(def, &version, &endpoint);
        text.push_str(&to_yaml(node, &init)?);
        text.push_str("---\n");
        text.push_str(&to_yaml(node, &cluster)?);
    } else {
        let join = JoinConfiguration {
            api_version: ApiVersion::V1Beta4,
            kind: JoinKind::JoinConfiguration,
            node_registration: registration,
            discovery: Discovery {
                bootstrap_token: BootstrapTokenDiscovery {
                    token: TOKEN_PLACEHOLDER.into(),
                    api_server_endpoint: endpoint,
                    ca_cert_hashes: vec![discovery_hash.to_string()],
                },
            },
            control_plane: (role == Role::Master).then_some(JoinControlPlane { local_api_endpoint: local_endpoint }),
        };
        text.push_str(&to_yaml(node, &join)?);
    }
    Ok(text)
}

/// The configuration a master's boot script gives `kubeadm config images list|pull --config`
/// (its `images` step): an `InitConfiguration` with only this node's registration (its name,
/// [`CRI_SOCKET`]) and API endpoint, no bootstrap token, and the cluster's
/// `ClusterConfiguration`, the very one `kubeadm init` gets and uploads to the kubeadm-config
/// ConfigMap for every control-plane join. So kubeadm names exactly the images init and the
/// joins would pull: the Kubernetes version, `imageRepository`, and no etcd image with the
/// external topology (cmd/kubeadm/app/images/images.go `GetControlPlaneImages`).
///
/// A file, not flags: `config images pull` reads only InitConfiguration and
/// ClusterConfiguration documents (a file with just a JoinConfiguration is refused: "no
/// InitConfiguration or ClusterConfiguration kind was found"), and with `--config` it ignores
/// `--kubernetes-version`, `--image-repository` and `--cri-socket`; its flags alone cannot say
/// "external etcd" (cmd/kubeadm/app/cmd/config.go `newCmdConfigImagesPull`,
/// cmd/kubeadm/app/util/config/initconfiguration.go `LoadOrDefaultInitConfiguration`;
/// docs/upstream-facts.md "Pre-pulling the control-plane images").
///
/// # Errors
///
/// [`KubeadmError::Invalid`] for a node that is not a master, a malformed kubernetesVersion
/// or a definition without masters.
pub fn images_config(def: &ClusterDefinition, role: Role, n: &Node) -> Result<String, KubeadmError> {
    let node = n.node_name.as_str();
    let invalid = |problem: String| KubeadmError::Invalid { node: node.to_string(), problem };
    if role != Role::Master {
        return Err(invalid("only masters pull the control-plane images".into()));
    }
    let host = def.control_plane_host().ok_or_else(|| invalid("the definition has no master".into()))?;
    let endpoint = format!("{}:{API_SERVER_PORT}", url_host(host));
    let version = Version::parse(&def.kubernetes_version)
        .ok_or_else(|| invalid(format!("{:?} is not a Kubernetes version", def.kubernetes_version)))?;
    let init = InitConfiguration {
        api_version: ApiVersion::V1Beta4,
        kind: InitKind::InitConfiguration,
        bootstrap_tokens: Vec::new(),
        node_registration: NodeRegistrationOptions {
            name: n.node_name.clone(),
            cri_socket: CRI_SOCKET.into(),
            taints: None,
            kubelet_extra_args: Vec::new(),
        },
        local_api_endpoint: ApiEndpoint { advertise_address: n.private_ip.clone(), bind_port: API_SERVER_PORT },
    };
    let mut text = format!(
        "# kubeadm config images list|pull of master {node}, generated by hakube render: this cluster's\n\
         # ClusterConfiguration (as kubeadm init gets it) and this node's CRI socket; nothing secret.\n"
    );
    text.push_str(&to_yaml(node, &init)?);
    text.push_str("---\n");
    text.push_str(&to_yaml(node, &cluster_configuration(def, &version, &endpoint))?);
    Ok(text)
}

fn cluster_configuration(def: &ClusterDefinition, version: &Version, endpoint: &str) -> ClusterConfiguration {
    // Every master serves for every name: any of them may answer behind the balancer.
    let mut sans: Vec<String> = Vec::new();
    let names = def.master_fqdns.iter().chain(def.master_load_balancer_address.iter());
    let addresses = def.masters.iter().flat_map(|m| std::iter::once(&m.private_ip).chain(m.public_ip.iter()));
    for san in names.chain(addresses) {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    let etcd = match def.etcd.topology {
        EtcdTopology::Stacked => Etcd { local: Some(LocalEtcd { data_dir: "/var/lib/etcd".into() }), external: None },
        EtcdTopology::External => Etcd {
            local: None,
            external: Some(ExternalEtcd {
                endpoints: def.masters.iter().map(|m| format!("https://{}:2379", url_host(&m.private_ip))).collect(),
                ca_file: format!("{PKI_DIR}/etcd/ca.crt"),
                cert_file: format!("{PKI_DIR}/apiserver-etcd-client.crt"),
                key_file: format!("{PKI_DIR}/apiserver-etcd-client.key"),
            }),
        },
    };
    ClusterConfiguration {
        api_version: ApiVersion::V1Beta4,
        kind: ClusterKind::ClusterConfiguration,
        kubernetes_version: format!("v{version}"),
        cluster_name: def.cluster_name.clone(),
        control_plane_endpoint: endpoint.to_string(),
        networking: Networking {
            pod_subnet: def.pod_network_cidr.clone(),
            service_subnet: def.service_cidr.clone(),
            dns_domain: def.dns_domain.clone(),
        },
        etcd,
        api_server: ApiServer { cert_sans: sans, extra_args: Vec::new() },
        image_repository: def.container_runtime.image_repository.clone(),
        encryption_algorithm: def.pki.key_algorithm.as_kubeadm_str().into(),
        certificate_validity_period: def.pki.certificate_validity_period.clone(),
        ca_certificate_validity_period: def.pki.ca_certificate_validity_period.clone(),
    }
}

fn is_discovery_hash(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Parses a kubeadm configuration file the way hakube writes it: every document must
/// be v1beta4 and one of the three kinds above, with no field the types do not know.
///
/// # Errors
///
/// [`KubeadmError::Parse`] naming the first document that does not fit.
pub fn parse(text: &str) -> Result<Vec<Document>, KubeadmError> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let fail = |problem: String| KubeadmError::Parse { index, problem };
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| fail(e.to_string()))?;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let typed = |e: serde_yaml_ng::Error| fail(format!("{kind}: {e}"));
        out.push(match kind.as_str() {
            "InitConfiguration" => Document::Init(serde_yaml_ng::from_value(value).map_err(typed)?),
            "ClusterConfiguration" => Document::Cluster(Box::new(serde_yaml_ng::from_value(value).map_err(typed)?)),
            "JoinConfiguration" => Document::Join(serde_yaml_ng::from_value(value).map_err(typed)?),
            other => return Err(fail(format!("unexpected kind {other:?}"))),
        });
    }
    Ok(out)
}

fn to_yaml<T: Serialize>(node: &str, value: &T) -> Result<String, KubeadmError> {
    serde_yaml_ng::to_string(value).map_err(|source| KubeadmError::Serialise { node: node.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn definition(extra: &str) -> ClusterDefinition {
        let json = format!(
            r#"{{
              "clusterName": "prod",
              "masterFQDNs": ["api.example.com"],
              "masterLoadBalancerAddress": "10.0.0.100",
              "kubernetesVersion": "1.36.4",
              "masters": [
                {{ "nodeName": "m0", "privateIP": "10.0.0.10", "publicIP": "203.0.113.10",
                   "labels": {{ "topology.kubernetes.io/zone": "a", "node-role.kubernetes.io/infra": "" }} }},
                {{ "nodeName": "m1", "privateIP": "10.0.0.11", "taints": [] }},
                {{ "nodeName": "m2", "privateIP": "10.0.0.12" }}
              ],
              "workers": [
                {{ "nodeName": "w0", "privateIP": "10.0.0.20",
                   "taints": [ {{ "key": "dedicated", "value": "ingress", "effect": "NoSchedule" }} ] }}
              ]
              {extra}
            }}"#
        );
        serde_json::from_str(&json).expect("test definition parses")
    }

    fn render(def: &ClusterDefinition, node: &str) -> (String, Vec<Document>) {
        let text = kubeadm_config(def, node, HASH, "abcdef").expect("renders");
        let docs = parse(&text).expect("parses back strictly");
        (text, docs)
    }

    #[test]
    fn first_master_gets_init_and_cluster_configuration() {
        let def = definition("");
        let (text, docs) = render(&def, "m0");
        let [Document::Init(init), Document::Cluster(cluster)] = docs.as_slice() else {
            panic!("unexpected documents: {docs:?}")
        };

        let token = &init.bootstrap_tokens[0];
        assert_eq!(init.bootstrap_tokens.len(), 1);
        assert_eq!(token.token, TOKEN_PLACEHOLDER);
        assert_eq!(token.ttl.as_deref(), Some("24h"));
        assert_eq!(token.usages, ["signing", "authentication"]);
        assert_eq!(token.groups, [BOOTSTRAP_GROUP]);
        assert_eq!(init.local_api_endpoint, ApiEndpoint { advertise_address: "10.0.0.10".into(), bind_port: 6443 });
        assert_eq!(init.node_registration.name, "m0");
        assert_eq!(init.node_registration.cri_socket, CRI_SOCKET);
        assert_eq!(init.node_registration.taints, None, "unset taints stay unset (kubeadm's default)");
        assert!(!text.contains("taints"));

        assert_eq!(cluster.kubernetes_version, "v1.36.4");
        assert_eq!(cluster.cluster_name, "prod");
        assert_eq!(cluster.control_plane_endpoint, "10.0.0.100:6443");
        assert_eq!(
            cluster.networking,
            Networking {
                pod_subnet: "10.244.0.0/16".into(),
                service_subnet: "10.96.0.0/12".into(),
                dns_domain: "cluster.local".into()
            }
        );
        assert_eq!(
            cluster.api_server.cert_sans,
            ["api.example.com", "10.0.0.100", "10.0.0.10", "203.0.113.10", "10.0.0.11", "10.0.0.12"]
        );
        assert_eq!(cluster.etcd, Etcd { local: Some(LocalEtcd { data_dir: "/var/lib/etcd".into() }), external: None });
        assert_eq!(cluster.encryption_algorithm, "RSA-2048");
        assert_eq!(cluster.certificate_validity_period, "8760h");
        assert_eq!(cluster.ca_certificate_validity_period, "87600h");
        assert_eq!(cluster.image_repository, None);
        assert!(text.contains("abcdef"), "the header names the token id");
    }

    #[test]
    fn the_images_configuration_is_init_s_cluster_configuration_without_secrets() {
        let def = definition(
            r#", "etcd": { "topology": "external" }, "containerRuntime": { "imageRepository": "r.example/k8s" }"#,
        );
        let (_, init_docs) = render(&def, "m0");
        for (role, node) in def.nodes().filter(|(role, _)| *role == Role::Master) {
            let text = images_config(&def, role, node).unwrap();
            let docs = parse(&text).expect("parses back strictly");
            let [Document::Init(init), Document::Cluster(cluster)] = docs.as_slice() else { panic!("{docs:?}") };
            assert_eq!(init.node_registration.name, node.node_name);
            assert_eq!(init.node_registration.cri_socket, CRI_SOCKET);
            assert_eq!(init.local_api_endpoint.advertise_address, node.private_ip);
            assert!(init.bootstrap_tokens.is_empty() && !text.contains(TOKEN_PLACEHOLDER), "{text}");
            assert_eq!(Some(&docs[1]), init_docs.get(1), "init's own ClusterConfiguration");
            assert_eq!(cluster.image_repository.as_deref(), Some("r.example/k8s"));
            assert!(cluster.etcd.external.is_some() && cluster.etcd.local.is_none());
        }
        let (role, worker) = def.nodes().find(|(role, _)| *role == Role::Worker).unwrap();
        assert!(matches!(images_config(&def, role, worker), Err(KubeadmError::Invalid { .. })));
    }

    #[test]
    fn v1beta4_spelling_and_lists() {
        let (text, _) = render(&definition(""), "m0");
        assert!(text.contains("apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\n"));
        assert!(text.contains("\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n"));
        assert!(text.contains("  kubeletExtraArgs:\n  - name: node-ip\n    value: 10.0.0.10\n"), "{text}");
        for field in [
            "localAPIEndpoint:",
            "advertiseAddress:",
            "bindPort: 6443",
            "criSocket:",
            "certSANs:",
            "controlPlaneEndpoint:",
            "podSubnet:",
            "caCertificateValidityPeriod:",
        ] {
            assert!(text.contains(field), "{field} missing in\n{text}");
        }
    }

    #[test]
    fn labels_the_kubelet_may_not_set_are_left_out() {
        let (_, docs) = render(&definition(""), "m0");
        let Document::Init(init) = &docs[0] else { panic!() };
        let args = &init.node_registration.kubelet_extra_args;
        assert_eq!(args[1], Arg { name: "node-labels".into(), value: "topology.kubernetes.io/zone=a".into() });
        assert!(kubelet_may_set_label("example.com/team"));
        assert!(kubelet_may_set_label("plain"));
        assert!(kubelet_may_set_label("node.kubernetes.io/pool"));
        assert!(kubelet_may_set_label("x.kubelet.kubernetes.io/y"));
        assert!(!kubelet_may_set_label("node-role.kubernetes.io/ingress"));
        assert!(!kubelet_may_set_label("node-restriction.kubernetes.io/x"));
        assert!(!kubelet_may_set_label("example.k8s.io/x"));
    }

    #[test]
    fn joining_master_and_worker() {
        let def = definition("");
        let (text, docs) = render(&def, "m1");
        let [Document::Join(join)] = docs.as_slice() else { panic!("{docs:?}") };
        let cp = join.control_plane.as_ref().expect("a master joins the control plane");
        assert_eq!(cp.local_api_endpoint.advertise_address, "10.0.0.11");
        assert!(!text.contains("certificateKey"), "no certificate download: the CAs are pre-provided");
        assert_eq!(join.discovery.bootstrap_token.token, TOKEN_PLACEHOLDER);
        assert_eq!(join.discovery.bootstrap_token.api_server_endpoint, "10.0.0.100:6443");
        assert_eq!(join.discovery.bootstrap_token.ca_cert_hashes, [HASH]);
        assert_eq!(join.node_registration.taints, Some(Vec::new()));
        assert!(text.contains("  taints: []\n"), "an empty list means no taints:\n{text}");

        let (_, docs) = render(&def, "w0");
        let [Document::Join(join)] = docs.as_slice() else { panic!("{docs:?}") };
        assert_eq!(join.control_plane, None);
        assert_eq!(
            join.node_registration.taints,
            Some(vec![Taint {
                key: "dedicated".into(),
                value: Some("ingress".into()),
                effect: TaintEffect::NoSchedule
            }])
        );
    }

    #[test]
    fn no_token_only_the_placeholder() {
        let def = definition("");
        for node in ["m0", "m1", "w0"] {
            let (text, _) = render(&def, node);
            assert!(text.contains(TOKEN_PLACEHOLDER));
            // No `[a-z0-9]{6}.[a-z0-9]{16}` anywhere.
            let bytes = text.as_bytes();
            let token_like = (0..bytes.len().saturating_sub(22)).any(|i| {
                let w = &bytes[i..i + 23];
                let ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
                w[..6].iter().all(ok) && w[6] == b'.' && w[7..].iter().all(ok)
            });
            assert!(!token_like, "{node}: something token-like in\n{text}");
        }
    }

    #[test]
    fn external_etcd_cloud_provider_and_settings() {
        let def = definition(
            r#", "etcd": { "topology": "external" }, "hooks": { "cloudProvider": "aws" },
               "pki": { "keyAlgorithm": "ECDSA-P256", "certificateValidityPeriod": "4380h" },
               "bootstrapToken": { "ttl": "2h" }, "containerRuntime": { "imageRepository": "mirror.example.com/k8s" }"#,
        );
        let (_, docs) = render(&def, "m0");
        let [Document::Init(init), Document::Cluster(cluster)] = docs.as_slice() else { panic!() };
        assert_eq!(init.bootstrap_tokens[0].ttl.as_deref(), Some("2h"));
        assert!(init
            .node_registration
            .kubelet_extra_args
            .contains(&Arg { name: "cloud-provider".into(), value: "external".into() }));
        let external = cluster.etcd.external.as_ref().expect("external etcd");
        assert_eq!(cluster.etcd.local, None);
        assert_eq!(external.endpoints, ["https://10.0.0.10:2379", "https://10.0.0.11:2379", "https://10.0.0.12:2379"]);
        assert_eq!(external.ca_file, "/etc/kubernetes/pki/etcd/ca.crt");
        assert_eq!(external.cert_file, "/etc/kubernetes/pki/apiserver-etcd-client.crt");
        assert_eq!(external.key_file, "/etc/kubernetes/pki/apiserver-etcd-client.key");
        assert_eq!(cluster.encryption_algorithm, "ECDSA-P256");
        assert_eq!(cluster.certificate_validity_period, "4380h");
        assert_eq!(cluster.image_repository.as_deref(), Some("mirror.example.com/k8s"));
    }

    #[test]
    fn single_master_without_balancer_and_ipv6() {
        let def: ClusterDefinition = serde_json::from_str(
            r#"{ "masters": [ { "nodeName": "m0", "privateIP": "fd00::10" } ], "workers": [ { "nodeName": "w0", "privateIP": "fd00::20" } ] }"#,
        )
        .unwrap();
        let (_, docs) = render(&def, "w0");
        let [Document::Join(join)] = docs.as_slice() else { panic!() };
        assert_eq!(join.discovery.bootstrap_token.api_server_endpoint, "[fd00::10]:6443");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let def = definition("");
        assert!(matches!(kubeadm_config(&def, "nope", HASH, "abcdef"), Err(KubeadmError::UnknownNode { .. })));
        assert!(matches!(kubeadm_config(&def, "w0", "sha256:abc", "abcdef"), Err(KubeadmError::Invalid { .. })));
        assert!(matches!(kubeadm_config(&def, "w0", HASH, "ABCDEF"), Err(KubeadmError::Invalid { .. })));
        let message = kubeadm_config(&def, "nope", HASH, "abcdef").unwrap_err().to_string();
        assert!(message.starts_with("failed to render"), "{message}");
    }

    #[test]
    fn parse_is_strict() {
        let (text, _) = render(&definition(""), "w0");
        let typo = text.replace("caCertHashes", "caCertHash");
        let err = parse(&typo).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        let old = text.replace("v1beta4", "v1beta3");
        assert!(parse(&old).is_err(), "v1beta3 is not accepted");
        let map = text.replace(
            "  kubeletExtraArgs:\n  - name: node-ip\n    value: 10.0.0.20\n",
            "  kubeletExtraArgs:\n    node-ip: 10.0.0.20\n",
        );
        assert_ne!(map, text);
        assert!(parse(&map).is_err(), "v1beta3-style maps are not accepted");
    }
}
