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
//! nodes/<node>/boot.sh  nodes/<node>/kubeadm.yaml  scripts/step.sh
//! nodes/<first master>/kubeadm-join.yaml
//! fingerprints.txt  .gitignore
//! ```
//!
//! With `secrets.recipients` set, every secret path `P` above is written only as `P.age`
//! ([`encrypted`]), its age ciphertext.

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

/// The step runner every node gets at [`crate::steps::STEP_SCRIPT`]: runs each boot.sh
/// step as a transient systemd unit that outlives the SSH session.
pub const STEP_RUNNER: &str = "scripts/step.sh";

/// The kubeadm configuration of `node`.
pub fn kubeadm_config(node: &str) -> String {
    format!("nodes/{node}/kubeadm.yaml")
}

/// The first master's JoinConfiguration, for joining an existing cluster after a reset.
pub fn kubeadm_join_config(node: &str) -> String {
    format!("nodes/{node}/kubeadm-join.yaml")
}

/// The SHA-256 fingerprints of the public halves of the cluster's secrets (the CAs, the
/// service-account key, the SSH keys) and the bootstrap token's id: nothing secret, so a
/// reviewer sees in a diff when a root changes, even with every secret encrypted.
pub const FINGERPRINTS: &str = "fingerprints.txt";
/// Keeps what must not be committed out of git: render's temporary files, and, without
/// recipients, every plaintext secret.
pub const GITIGNORE: &str = ".gitignore";
/// The suffix of an age-encrypted secret.
pub const AGE_SUFFIX: &str = ".age";

/// The path of secret `path`'s age ciphertext, `<path>.age`.
pub fn encrypted(path: &str) -> String {
    format!("{path}{AGE_SUFFIX}")
}

/// Where a first master's `boot.sh upgrade-snapshot` leaves the etcd snapshot (mode 0600)
/// for `hakube upgrade` to copy to the operator's machine; rendered into the boot script.
pub const REMOTE_ETCD_SNAPSHOT: &str = "/var/lib/hakube/upgrade/etcd-snapshot.db";

/// Directory on a node that install ships files into.
pub const REMOTE_DIR: &str = "/etc/hakube";
/// Directory (mode 0700) on a node for secret files.
pub const REMOTE_SECRETS_DIR: &str = "/etc/hakube/secrets";

/// What the layout says about one file of the assets directory: what [`file`] returns for
/// a path render itself produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutFile {
    /// Secret material (private keys, the bootstrap token, the admin kubeconfig): mode
    /// 0600 in 0700 directories, and only read from places no other user can write.
    pub secret: bool,
    /// The Unix permission bits render gives it: 0600 for a secret, 0755 for a boot
    /// script, 0644 otherwise.
    pub mode: u32,
    /// Where it goes on the nodes it ships to (always below [`REMOTE_DIR`]); `None` when
    /// it stays on the workstation.
    pub destination: Option<String>,
    /// The node the path names (`nodes/<node>/...`, `ssh/host-keys/<node>/...`,
    /// `pki/etcd/members/<node>/...`).
    pub node: Option<String>,
    /// An age ciphertext (`<secret path>.age`) of the secret [`LayoutFile::plaintext`]
    /// names: mode 0644 (the ciphertext is safe to read; the plaintext never touches the
    /// disk), shipped decrypted to the plaintext's destination with mode 0600.
    pub encrypted: bool,
}

/// The files directly under `pki/` (and `pki/etcd/`), with kubeadm's names; each ships
/// to the masters below [`REMOTE_SECRETS_DIR`] under the same relative path.
const PKI_FILES: &[&str] = &[
    "ca.crt",
    "ca.key",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "sa.key",
    "sa.pub",
    "etcd/ca.crt",
    "etcd/ca.key",
    "apiserver-etcd-client.crt",
    "apiserver-etcd-client.key",
];

/// The files of an external-etcd member, `pki/etcd/members/<node>/<file>`.
const ETCD_MEMBER_FILES: &[&str] = &["server.crt", "server.key", "peer.crt", "peer.key"];

/// Whether `name` is a node name the definition accepts: an RFC 1123 subdomain as
/// Kubernetes checks it (at most 253 characters, dot-separated labels of lowercase
/// letters, digits and `-`, each 1 to 63 characters, not starting or ending with `-`),
/// the rule hakube-cluster's validation applies to `nodeName`. Such a name is one path
/// component: never empty, `.`, `..`, nor containing `/`.
pub fn is_node_name(name: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label)
}

/// Recognises exactly the paths of the layout above, as render spells them (relative,
/// `/`-separated, normalised: no empty, `.` or `..` component, no leading `/`, node
/// names that [`is_node_name`] accepts), and says what the layout makes of each.
///
/// `None` for anything else, [`MANIFEST`] and [`KNOWN_HOSTS_ACCEPTED`] included (they
/// are not entries of the manifest). This is the rule for untrusted lists of paths:
/// render removes, and install ships, only files this function recognises.
pub fn file(path: &str) -> Option<LayoutFile> {
    if let Some(plain) = path.strip_suffix(AGE_SUFFIX) {
        return plain_file(plain).filter(|f| f.secret).map(|f| LayoutFile { mode: 0o644, encrypted: true, ..f });
    }
    plain_file(path)
}

/// [`file`] for paths that are not ciphertexts.
fn plain_file(path: &str) -> Option<LayoutFile> {
    let secret_tree = || Some(format!("{REMOTE_SECRETS_DIR}/{path}"));
    let make = |secret: bool, destination: Option<String>, node: Option<&str>| {
        let mode = if secret {
            0o600
        } else if path.ends_with(".sh") {
            0o755
        } else {
            0o644
        };
        Some(LayoutFile { secret, mode, destination, node: node.map(str::to_owned), encrypted: false })
    };
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["pki", "etcd", "members", node, file] if is_node_name(node) && ETCD_MEMBER_FILES.contains(file) => {
            make(file.ends_with(".key"), secret_tree(), Some(node))
        }
        ["pki", rest @ ..] if PKI_FILES.contains(&rest.join("/").as_str()) => {
            make(path.ends_with(".key"), secret_tree(), None)
        }
        _ if path == ADMIN_KUBECONFIG => make(true, None, None),
        _ if path == BOOTSTRAP_TOKEN => make(true, Some(format!("{REMOTE_SECRETS_DIR}/bootstrap-token")), None),
        _ if path == DISCOVERY_HASH || path == FINGERPRINTS || path == GITIGNORE => make(false, None, None),
        _ if path == LOGIN_KEY => make(true, None, None),
        _ if path == STEP_RUNNER => make(false, Some(crate::steps::STEP_SCRIPT.to_string()), None),
        _ if path == LOGIN_KEY_PUB || path == KNOWN_HOSTS => make(false, None, None),
        ["ssh", "host-keys", node, "ssh_host_ed25519_key"] if is_node_name(node) => make(true, None, Some(node)),
        ["ssh", "host-keys", node, "ssh_host_ed25519_key.pub"] if is_node_name(node) => make(false, None, Some(node)),
        ["nodes", node, file @ ("boot.sh" | "kubeadm.yaml" | "kubeadm-join.yaml")] if is_node_name(node) => {
            make(false, Some(format!("{REMOTE_DIR}/{file}")), Some(node))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spelled_paths_are_recognised() {
        for (path, secret, dest) in [
            (pki("ca.key"), true, Some("/etc/hakube/secrets/pki/ca.key")),
            (pki("etcd/ca.crt"), false, Some("/etc/hakube/secrets/pki/etcd/ca.crt")),
            (etcd_member("m-0.x", "peer.key"), true, Some("/etc/hakube/secrets/pki/etcd/members/m-0.x/peer.key")),
            (host_key("w1"), true, None),
            (format!("{}.pub", host_key("w1")), false, None),
            (boot_script("w1"), false, Some("/etc/hakube/boot.sh")),
            (kubeadm_config("w1"), false, Some("/etc/hakube/kubeadm.yaml")),
            (kubeadm_join_config("w1"), false, Some("/etc/hakube/kubeadm-join.yaml")),
            (ADMIN_KUBECONFIG.into(), true, None),
            (BOOTSTRAP_TOKEN.into(), true, Some("/etc/hakube/secrets/bootstrap-token")),
            (LOGIN_KEY.into(), true, None),
            (KNOWN_HOSTS.into(), false, None),
            (STEP_RUNNER.into(), false, Some("/etc/hakube/step.sh")),
        ] {
            let f = file(&path).unwrap_or_else(|| panic!("{path} not recognised"));
            assert_eq!((f.secret, f.destination.as_deref()), (secret, dest), "{path}");
        }
        assert_eq!(file("nodes/w1/boot.sh").unwrap().mode, 0o755);
        let age = file(&encrypted(&pki("ca.key"))).unwrap();
        assert_eq!((age.secret, age.encrypted, age.mode), (true, true, 0o644));
        assert_eq!(age.destination.as_deref(), Some("/etc/hakube/secrets/pki/ca.key"));
        assert!(file(&encrypted(&host_key("w1"))).unwrap().encrypted);
        assert!(!file(FINGERPRINTS).unwrap().secret);
    }

    #[test]
    fn anything_else_is_refused() {
        for path in [
            "../victim/x",
            "/abs/path",
            "/etc/cron.d/x",
            "nodes/../boot.sh",
            "nodes/./boot.sh",
            "nodes/w1/../w2/boot.sh",
            "nodes//boot.sh",
            "nodes/w1/boot.sh/",
            "nodes/W1/boot.sh",
            "nodes/a b/boot.sh",
            "nodes/w1/other.sh",
            "pki/etcd/members/../ca.key",
            "pki/x.key",
            "pki/etcd",
            "pki/etcd/members/m0/ca.key",
            "ssh/host-keys/../ssh_host_ed25519_key",
            "./pki/ca.key",
            "pki/ca.key\0",
            "pki/ca.crt.age",
            "nodes/w1/boot.sh.age",
            "pki/ca.key.age.age",
            "fingerprints.txt.age",
            MANIFEST,
            KNOWN_HOSTS_ACCEPTED,
            "",
        ] {
            assert_eq!(file(path), None, "{path:?} recognised");
        }
        assert!(!is_node_name(".."));
        assert!(!is_node_name(&"a".repeat(64)));
        assert!(is_node_name("ip-10-1-0-10.ec2.internal"));
    }
}
