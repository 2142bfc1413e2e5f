//! `manifest.json`: every file of the assets directory with its sha256, mode, whether it
//! is secret, the nodes it ships to and where it goes on them.
//!
//! Install reads only this to know what to ship; `hakube render --check` and install
//! both compare file contents against the sha256 recorded here, so a tampered or stale
//! file is noticed before it reaches a machine.
//!
//! A manifest read from disk is untrusted input: anyone who can write the assets
//! directory can write it. Before render removes or install ships anything it names,
//! [`Manifest::validate`] checks that it lists only what render itself produces.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the manifest format; bumped on incompatible changes. Format 2 added what
/// install needs to run from the assets alone (SSH targets, node order, install settings,
/// phases, the definition's hash).
pub const FORMAT_VERSION: u32 = 2;

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the hakube that wrote it.
    pub format: u32,
    /// The cluster's name, from the definition.
    pub cluster_name: String,
    /// The definition's kubernetesVersion (`1.36.4`): what every node runs once installed
    /// (or upgraded); `hakube install` refuses to change a node that runs another.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kubernetes_version: String,
    /// The version the assets were rendered for before kubernetesVersion changed, when the
    /// boot scripts carry an upgrade from it (`hakube upgrade`); kept across renders of the
    /// same version so that re-rendering changes no byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_from: Option<String>,
    /// Every node, by name: its role and the steps of its boot script, in order.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Every file except the manifest itself, keyed by path relative to the assets
    /// directory (`/`-separated), in path order.
    pub files: BTreeMap<String, ManifestEntry>,
    /// The age recipients every secret is encrypted to (canonical text, the definition's
    /// order); empty when secrets are plaintext. Render compares it with the definition's
    /// to know when to re-encrypt; error messages name it when no identity decrypts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// Lowercase hex sha256 of the definition render read, as canonical JSON after defaults
    /// and legacy fields were applied ([`definition_sha256`]): install, given the definition,
    /// refuses assets rendered from another one.
    #[serde(default)]
    pub definition_sha256: String,
    /// Every node, in the definition's order (masters first): the order install plans in.
    #[serde(default)]
    pub node_order: Vec<String>,
    /// The definition's install settings.
    #[serde(default)]
    pub install: InstallEntry,
    /// The install phases and the boot.sh steps each holds, in install order: every node's
    /// [`NodeEntry::steps`] are in exactly one of them.
    #[serde(default)]
    pub phases: Vec<PhaseEntry>,
}

/// What the definition says about running install, recorded so install needs only the assets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallEntry {
    /// How many nodes work at once in parallel phases (`installConcurrency`, at least 1).
    pub concurrency: u32,
    /// `hostKeyPolicy`: how a node's SSH host key is checked when render pinned none.
    pub host_key_policy: hakube_cluster::definition::HostKeyPolicy,
    /// `sshBastion`'s hops, each `[user@]host[:port]` (ProxyJump), in order; empty: direct.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bastion: Vec<String>,
    /// The etcd topology (`etcd.topology`): with `external`, install refuses a concurrency
    /// below what an etcd quorum needs.
    pub etcd_topology: hakube_cluster::definition::EtcdTopology,
    /// How many workers `hakube upgrade` takes out at once (`upgrade.maxUnavailable`
    /// applied to the workers; at least 1).
    pub upgrade_batch: u32,
}

/// One install phase and its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PhaseEntry {
    /// The phase.
    pub phase: crate::steps::InstallPhase,
    /// The boot.sh steps that run in it, in boot.sh's order.
    pub steps: Vec<String>,
}

/// How install reaches a node over SSH: the node's own values, else the definition's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshEntry {
    /// The address ssh connects to (`sshAddress`, else `publicIP`, else `privateIP`).
    pub address: String,
    /// `sshPort`.
    pub port: u16,
    /// `sshLoginUser`.
    pub user: String,
    /// `sshLoginKey` (a path on the operator's machine, `~/` allowed); unset: render's
    /// generated key, `ssh/id_ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_key: Option<String>,
}

/// A node as install needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeEntry {
    /// `master` or `worker`.
    pub role: hakube_cluster::Role,
    /// Whether it runs `kubeadm init` (the first master).
    pub first_master: bool,
    /// The steps `boot.sh` runs when called without arguments, in order
    /// (`boot.sh --list` prints the same).
    pub steps: Vec<String>,
    /// The upgrade steps of its boot script (`boot.sh upgrade-STEP`), when the render
    /// carries an upgrade ([`Manifest::upgrade_from`]); `boot.sh --list` prints them after
    /// [`NodeEntry::steps`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrade_steps: Vec<String>,
    /// How install reaches it.
    #[serde(default)]
    pub ssh: SshEntry,
}

/// One file of the assets directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestEntry {
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Unix permission bits, as an octal string such as `"0600"`.
    pub mode: String,
    /// Whether the file is secret material (then its mode is 0600, on disk and on nodes;
    /// when [`ManifestEntry::encrypted`], 0600 on nodes only).
    pub secret: bool,
    /// Whether the file is an age ciphertext (`<path>.age`): `sha256` is the ciphertext's,
    /// install decrypts it in memory and ships the plaintext.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// Names of the nodes install ships it to (empty: it stays on the workstation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Absolute path on those nodes (set exactly when `nodes` is not empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

impl Manifest {
    /// Parses manifest.json.
    ///
    /// # Errors
    ///
    /// The serde_json error (with line and column) when it is not a manifest.
    pub fn parse(text: &str) -> Result<Manifest, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The manifest among the existing assets (`existing`, by relative path), when there is
    /// one that parses; unvalidated ([`Manifest::validate`] is the caller's step when it
    /// acts on the entries).
    pub fn of_existing(existing: &crate::Existing) -> Option<Manifest> {
        existing
            .get(crate::layout::MANIFEST)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| Manifest::parse(t).ok())
    }

    /// Checks that the manifest describes only files render itself produces, as
    /// [`crate::layout::file`] recognises them: every key a relative, normalised path of
    /// the layout; its `secret` and `mode` the layout's; a lowercase hex SHA-256; the nodes
    /// it ships to valid node names listed in [`Manifest::nodes`] (a file of one node,
    /// `nodes/<node>/...`, only to that node); and a destination exactly when it ships
    /// somewhere, the one the layout gives it (always below [`crate::layout::REMOTE_DIR`]).
    ///
    /// # Errors
    ///
    /// The first [`ManifestError`], naming the entry (or node) and what is wrong with it.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT_VERSION {
            return Err(ManifestError::Format { found: self.format });
        }
        if let Some(name) = self.nodes.keys().find(|n| !crate::layout::is_node_name(n)) {
            return Err(ManifestError::NodeName(name.clone()));
        }
        self.validate_install()?;
        for (path, entry) in &self.files {
            let Some(layout) = crate::layout::file(path) else {
                return Err(ManifestError::UnknownFile(path.clone()));
            };
            let problem = |problem: String| Err(ManifestError::Entry { path: path.clone(), problem });
            if entry.sha256.len() != 64
                || !entry.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return problem(format!("sha256 {:?} is not 64 lowercase hex digits", entry.sha256));
            }
            if entry.secret != layout.secret {
                return problem(format!(
                    "it is {}marked secret, but hakube renders it as {}secret",
                    if entry.secret { "" } else { "not " },
                    if layout.secret { "" } else { "not " }
                ));
            }
            if entry.encrypted != layout.encrypted {
                return problem(format!(
                    "it is {}marked encrypted, but hakube renders it as {}an age ciphertext",
                    if entry.encrypted { "" } else { "not " },
                    if layout.encrypted { "" } else { "not " }
                ));
            }
            if parse_mode(&entry.mode) != Some(layout.mode) {
                return problem(format!("mode {:?}, but hakube renders it as {:04o}", entry.mode, layout.mode));
            }
            for (i, node) in entry.nodes.iter().enumerate() {
                if !self.nodes.contains_key(node) {
                    return problem(format!("it ships to {node:?}, which is not a node of the manifest"));
                }
                if entry.nodes[..i].contains(node) {
                    return problem(format!("it lists node {node:?} twice"));
                }
                if layout.node.as_ref().is_some_and(|own| own != node) {
                    return problem(format!(
                        "it belongs to node {:?} but ships to {node:?}",
                        layout.node.as_deref().unwrap_or_default()
                    ));
                }
            }
            match (&entry.destination, entry.nodes.is_empty()) {
                (None, true) => {}
                (Some(dest), false) if Some(dest) == layout.destination.as_ref() => {}
                (Some(dest), false) => {
                    return problem(match &layout.destination {
                        Some(own) => format!("destination {dest:?}, but hakube ships it to {own:?}"),
                        None => format!("destination {dest:?}, but hakube never ships it"),
                    })
                }
                (Some(dest), true) => return problem(format!("destination {dest:?} without nodes to ship it to")),
                (None, false) => return problem("it ships to nodes but has no destination".to_string()),
            }
        }
        Ok(())
    }

    /// The install half of [`Manifest::validate`]: the node order lists every node once;
    /// every SSH value passes the rule ssh's command line gets (`hakube_cluster::ssh`, the one
    /// validation applies to the definition); the settings are in range; every step name is
    /// one [`crate::steps::is_step_name`] accepts, and each node's steps are each in exactly
    /// one phase, no phase twice.
    fn validate_install(&self) -> Result<(), ManifestError> {
        use hakube_cluster::ssh;
        let bad = |field: String, problem: String| Err(ManifestError::Install { field, problem });
        if self.definition_sha256.len() != 64 || !self.definition_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("definitionSha256".into(), "is not 64 hex digits".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in &self.node_order {
            if !self.nodes.contains_key(name) || !seen.insert(name) {
                return bad("nodeOrder".into(), format!("{name:?} is not a node of the manifest, or is listed twice"));
            }
        }
        if seen.len() != self.nodes.len() {
            return bad("nodeOrder".into(), "does not list every node".into());
        }
        if self.install.concurrency == 0 || self.install.upgrade_batch == 0 {
            return bad("install".into(), "concurrency and upgradeBatch must be at least 1".into());
        }
        for (i, hop) in self.install.bastion.iter().enumerate() {
            if let Err(e) = ssh::parse_jump_hosts(hop).and_then(|h| {
                if h.len() == 1 {
                    Ok(())
                } else {
                    Err(ssh::SshValueError::Host(hop.clone()))
                }
            }) {
                return bad(format!("install.bastion[{i}]"), e.to_string());
            }
        }
        let mut phase_of = BTreeMap::new();
        for (i, p) in self.phases.iter().enumerate() {
            if self.phases[..i].iter().any(|q| q.phase == p.phase) {
                return bad("phases".into(), format!("{:?} is listed twice", p.phase));
            }
            for step in &p.steps {
                if !crate::steps::is_step_name(step) || phase_of.insert(step.as_str(), p.phase).is_some() {
                    return bad("phases".into(), format!("step {step:?} is not a step name, or is in two phases"));
                }
            }
        }
        for (name, node) in &self.nodes {
            let field = |f: &str| format!("nodes.{name}.{f}");
            for step in node.steps.iter().chain(&node.upgrade_steps) {
                if !crate::steps::is_step_name(step) {
                    return bad(field("steps"), format!("{step:?} is not a step name"));
                }
            }
            if let Some(step) = node.steps.iter().find(|s| !phase_of.contains_key(s.as_str())) {
                return bad(field("steps"), format!("step {step:?} is in no phase"));
            }
            let ssh_entry = &node.ssh;
            if let Err(e) = ssh::check_host(&ssh_entry.address) {
                return bad(field("ssh.address"), e.to_string());
            }
            if let Err(e) = ssh::check_port(ssh_entry.port) {
                return bad(field("ssh.port"), e.to_string());
            }
            if let Err(e) = ssh::check_login_user(&ssh_entry.user) {
                return bad(field("ssh.user"), e.to_string());
            }
            if let Some(Err(e)) = ssh_entry.login_key.as_deref().map(ssh::check_key_path) {
                return bad(field("ssh.loginKey"), e.to_string());
            }
        }
        Ok(())
    }

    /// The steps of `node` that run in `phase`, in boot.sh's order (none for an unknown node).
    pub fn steps_in<'a>(&'a self, node: &str, phase: crate::steps::InstallPhase) -> Vec<&'a str> {
        let Some(in_phase) = self.phases.iter().find(|p| p.phase == phase) else { return Vec::new() };
        let Some(entry) = self.nodes.get(node) else { return Vec::new() };
        entry.steps.iter().filter(|s| in_phase.steps.contains(s)).map(String::as_str).collect()
    }

    /// The files that ship to `node`, as `(path, entry)`, in path order.
    pub fn files_for<'a>(&'a self, node: &'a str) -> impl Iterator<Item = (&'a str, &'a ManifestEntry)> + 'a {
        self.files.iter().filter(move |(_, e)| e.nodes.iter().any(|n| n == node)).map(|(p, e)| (p.as_str(), e))
    }

    /// The manifest as written to disk: pretty JSON with a trailing newline, byte-stable.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = serde_json::to_string_pretty(self).expect("a manifest always serialises");
        text.push('\n');
        text.into_bytes()
    }
}

/// Why a manifest read from disk cannot be trusted ([`Manifest::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Written by a hakube with another manifest format.
    #[error("format {found} is not {FORMAT_VERSION}, the format this hakube writes")]
    Format {
        /// The manifest's `format`.
        found: u32,
    },
    /// A key of `nodes` is not a valid node name.
    #[error("node {0:?} is not a valid node name")]
    NodeName(String),
    /// A key of `files` is not a path of the layout (`../x`, `/etc/cron.d/x`, a file
    /// render never writes).
    #[error("entry {0:?} is not a file hakube renders")]
    UnknownFile(String),
    /// What install needs (node order, SSH targets, settings, phases) is missing or out
    /// of range.
    #[error("{field}: {problem}")]
    Install {
        /// The manifest's field (`nodes.w0.ssh.port`, `nodeOrder`, ...).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An entry of the layout whose fields are not what render writes.
    #[error("entry {path:?}: {problem}")]
    Entry {
        /// The entry's key.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The [`Manifest::definition_sha256`] of a definition: lowercase hex sha256 of its
/// canonical JSON (serde's serialisation of the parsed, normalised definition, so
/// formatting, comments and key order do not change it).
pub fn definition_sha256(def: &hakube_cluster::ClusterDefinition) -> String {
    sha256_hex(&serde_json::to_vec(def).unwrap_or_default())
}

/// Parses a mode string such as `"0600"`.
pub fn parse_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode, 8).ok()
}

/// How install reaches `node` of `def`: the node's own `sshPort`, `sshLoginUser` and
/// `sshLoginKey`, else the definition's; the address `Node::ssh_address` gives.
pub fn ssh_entry(def: &hakube_cluster::ClusterDefinition, node: &hakube_cluster::definition::Node) -> SshEntry {
    SshEntry {
        address: node.ssh_address().to_string(),
        port: node.ssh_port.unwrap_or(def.ssh_port),
        user: node.ssh_login_user.clone().unwrap_or_else(|| def.ssh_login_user.clone()),
        login_key: node.ssh_login_key.clone().or_else(|| def.ssh_login_key.clone()),
    }
}

/// The install settings of `def` as the manifest records them. A bastion that does not
/// parse (validation refuses it) is kept whole, for [`Manifest::validate`] to refuse.
pub fn install_entry(def: &hakube_cluster::ClusterDefinition) -> InstallEntry {
    let bastion = match def.ssh_bastion.as_deref().map(hakube_cluster::ssh::parse_jump_hosts) {
        None => Vec::new(),
        Some(Ok(hops)) => hops.iter().map(ToString::to_string).collect(),
        Some(Err(_)) => def.ssh_bastion.iter().cloned().collect(),
    };
    InstallEntry {
        concurrency: def.install_concurrency,
        host_key_policy: def.host_key_policy,
        bastion,
        etcd_topology: def.etcd.topology,
        upgrade_batch: upgrade_batch(def.workers.len(), def.upgrade.max_unavailable.as_ref()) as u32,
    }
}

/// The batch size of a worker upgrade for `workers` workers and `upgrade.maxUnavailable`:
/// a count as it is, a percentage of the workers rounded down (as Kubernetes scales a
/// maxUnavailable percentage, intstr.GetScaledValueFromIntOrPercent without rounding up);
/// at least 1. Unset: one node or 10 %, whichever is larger.
pub fn upgrade_batch(workers: usize, max_unavailable: Option<&hakube_cluster::definition::MaxUnavailable>) -> usize {
    use hakube_cluster::definition::MaxUnavailable;
    let n = match max_unavailable {
        Some(MaxUnavailable::Count(c)) => *c as usize,
        Some(MaxUnavailable::Percent(p)) => workers * p.trim_end_matches('%').parse::<usize>().unwrap_or(0) / 100,
        None => workers / 10,
    };
    n.max(1)
}

impl Manifest {
    /// What differs between these assets and definition `def` (the one the operator gave
    /// install): one sentence per difference that changes what install does (a node added
    /// or removed, a node's SSH address, port, user or key, the Kubernetes version, the
    /// install settings), or, when only other fields changed, one saying the definition's
    /// hash differs. Empty when the assets were rendered from `def`.
    pub fn stale_against(&self, def: &hakube_cluster::ClusterDefinition) -> Vec<String> {
        let mut out = Vec::new();
        if definition_sha256(def) == self.definition_sha256 {
            return out;
        }
        let order: Vec<String> = def.nodes().map(|(_, n)| n.node_name.clone()).collect();
        for name in order.iter().filter(|n| !self.nodes.contains_key(*n)) {
            out.push(format!("node {name} is in the definition but not in the assets"));
        }
        for name in self.nodes.keys().filter(|n| !order.contains(n)) {
            out.push(format!("node {name} is in the assets but no longer in the definition"));
        }
        if out.is_empty() && order != self.node_order {
            out.push("the order of the nodes changed".into());
        }
        for (role, node) in def.nodes() {
            let Some(entry) = self.nodes.get(&node.node_name) else { continue };
            let name = &node.node_name;
            if entry.role != role {
                out.push(format!("node {name} is a {role:?} in the definition, a {:?} in the assets", entry.role));
            }
            let (now, then) = (ssh_entry(def, node), &entry.ssh);
            if now.address != then.address {
                out.push(format!(
                    "node {name}'s SSH address is {} in the definition, {} in the assets",
                    now.address, then.address
                ));
            }
            if now.port != then.port {
                out.push(format!(
                    "node {name}'s sshPort is {} in the definition, {} in the assets",
                    now.port, then.port
                ));
            }
            if now.user != then.user {
                out.push(format!(
                    "node {name}'s sshLoginUser is {} in the definition, {} in the assets",
                    now.user, then.user
                ));
            }
            if now.login_key != then.login_key {
                out.push(format!("node {name}'s sshLoginKey changed"));
            }
        }
        if def.kubernetes_version != self.kubernetes_version {
            out.push(format!(
                "kubernetesVersion is {} in the definition, {} in the assets",
                def.kubernetes_version, self.kubernetes_version
            ));
        }
        let (now, then) = (install_entry(def), &self.install);
        if now.concurrency != then.concurrency {
            out.push(format!(
                "installConcurrency is {} in the definition, {} in the assets",
                now.concurrency, then.concurrency
            ));
        }
        if now.host_key_policy != then.host_key_policy {
            out.push("hostKeyPolicy changed".into());
        }
        if now.bastion != then.bastion {
            out.push("sshBastion changed".into());
        }
        if now.etcd_topology != then.etcd_topology {
            out.push("etcd.topology changed".into());
        }
        if now.upgrade_batch != then.upgrade_batch {
            out.push("upgrade.maxUnavailable changed".into());
        }
        if out.is_empty() {
            out.push("the definition changed since the assets were rendered (its sha256 differs from manifest.json's definitionSha256)".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrade_batch_follows_max_unavailable() {
        use hakube_cluster::definition::MaxUnavailable::{Count, Percent};
        assert_eq!(upgrade_batch(10, None), 1, "one node or 10 %, whichever is larger");
        assert_eq!(upgrade_batch(25, None), 2);
        assert_eq!(upgrade_batch(10, Some(&Percent("25%".into()))), 2, "rounded down");
        assert_eq!(upgrade_batch(3, Some(&Percent("10%".into()))), 1, "at least one");
        assert_eq!(upgrade_batch(5, Some(&Count(3))), 3);
    }
}
