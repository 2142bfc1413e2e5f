//! The assets directory layout: the contract between render and install.
//!
//! Paths are relative to the assets directory, `/`-separated. Install finds everything
//! through `manifest.json` ([`crate::manifest`]), which names for each file the nodes
//! it ships to and where it goes on them; these functions are the one place the names
//! are spelled.
//!
//! ```text
//! manifest.json
//! pki/ca.crt ca.key front-proxy-ca.crt front-proxy-ca.key sa.key sa.pub
//! pki/etcd/ca.crt pki/etcd/ca.key
//! pki/apiserver-etcd-client.crt .key                 (external etcd)
//! pki/etcd/members/<node>/server.crt .key peer.crt .key  (external etcd)
//! kubeconfig/admin.conf
//! token/bootstrap-token  token/discovery-token-ca-cert-hash
//! ssh/id_ed25519 ssh/id_ed25519.pub  ssh/known_hosts
//! ssh/host-keys/<node>/ssh_host_ed25519_key .pub
//! nodes/<node>/boot.sh  nodes/<node>/kubeadm.yaml
//! nodes/<first master>/kubeadm-join.yaml
//! ```

/// The manifest listing every other file.
pub const MANIFEST: &str = "manifest.json";
/// The admin kubeconfig (stays on the workstation).
pub const ADMIN_KUBECONFIG: &str = "kubeconfig/admin.conf";
/// The bootstrap token, `id.secret` (secret).
pub const BOOTSTRAP_TOKEN: &str = "token/bootstrap-token";
/// `sha256:<hex>` of the cluster CA's public key (public).
pub const DISCOVERY_HASH: &str = "token/discovery-token-ca-cert-hash";
/// The installer's login private key, when render generates one.
pub const LOGIN_KEY: &str = "ssh/id_ed25519";
/// Its public half, to put in the nodes' authorized_keys.
pub const LOGIN_KEY_PUB: &str = "ssh/id_ed25519.pub";
/// Host keys of every node, in OpenSSH known_hosts format (the pre-generated ones).
pub const KNOWN_HOSTS: &str = "ssh/known_hosts";
/// Host keys install learned under `hostKeyPolicy: accept-new`, pinned from then on.
/// Written by install (by OpenSSH itself), not by render, and not in the manifest.
pub const KNOWN_HOSTS_ACCEPTED: &str = "ssh/known_hosts.accepted";

/// Where the CAs and the service-account key pair live, `pki/<name>`, with kubeadm's
/// file names (`ca.crt`, `etcd/ca.key`, `sa.pub`, ...).
pub fn pki(name: &str) -> String {
    format!("pki/{name}")
}

/// An external-etcd member certificate or key of `node`: `server.crt`, `peer.key`, ...
pub fn etcd_member(node: &str, file: &str) -> String {
    format!("pki/etcd/members/{node}/{file}")
}

/// The pre-generated SSH host private key of `node` (`.pub` appended for the public one).
pub fn host_key(node: &str) -> String {
    format!("ssh/host-keys/{node}/ssh_host_ed25519_key")
}

/// The boot script of `node`.
pub fn boot_script(node: &str) -> String {
    format!("nodes/{node}/boot.sh")
}

/// The kubeadm configuration of `node`.
pub fn kubeadm_config(node: &str) -> String {
    format!("nodes/{node}/kubeadm.yaml")
}

/// The first master's JoinConfiguration, for joining an existing cluster after a reset.
pub fn kubeadm_join_config(node: &str) -> String {
    format!("nodes/{node}/kubeadm-join.yaml")
}

/// Directory on a node that install ships files into.
pub const REMOTE_DIR: &str = "/etc/hakube";
/// Directory (mode 0700) on a node for secret files.
pub const REMOTE_SECRETS_DIR: &str = "/etc/hakube/secrets";
