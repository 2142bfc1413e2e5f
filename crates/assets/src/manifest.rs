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

/// Version of the manifest format; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

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

/// Parses a mode string such as `"0600"`.
pub fn parse_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode, 8).ok()
}
