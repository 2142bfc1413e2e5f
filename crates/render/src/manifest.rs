//! `manifest.json`: every file of the assets directory with its sha256, mode, whether it
//! is secret, the nodes it ships to and where it goes on them.
//!
//! Install reads only this to know what to ship; `hakube render --check` and install
//! both compare file contents against the sha256 recorded here, so a tampered or stale
//! file is noticed before it reaches a machine.

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
    /// Every node, by name: its role and the steps of its boot script, in order.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Every file except the manifest itself, keyed by path relative to the assets
    /// directory (`/`-separated), in path order.
    pub files: BTreeMap<String, ManifestEntry>,
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
}

/// One file of the assets directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestEntry {
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Unix permission bits, as an octal string such as `"0600"`.
    pub mode: String,
    /// Whether the file is secret material (then its mode is 0600, on disk and on nodes).
    pub secret: bool,
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

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = openssl::sha::sha256(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a mode string such as `"0600"`.
pub fn parse_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode, 8).ok()
}
