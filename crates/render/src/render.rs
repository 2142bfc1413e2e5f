//! The render model: a definition plus the existing assets -> the full set of files.
//!
//! [`render`] is a pure function of its inputs except for the randomness of secrets it
//! has to create: given the same definition and the secrets it produced last time, it
//! returns byte-identical files. It never replaces an existing CA, key, token or SSH
//! key unless asked to rotate; leaf certificates are reissued from the same CA only when
//! their subject or SANs no longer match the definition (with a new key), or renewed
//! (same key, new dates and serial) once they are in the last third of their validity
//! or expired ([`pki::leaf_verdict`]). A CA is never renewed: render reports one in its
//! last third ([`AssetSet::expiring`]) and `--rotate-secrets` replaces it. Writing the
//! result to disk is [`crate::assets`]' job.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use hakube_cluster::definition::EtcdTopology;
use hakube_cluster::ClusterDefinition;

use crate::kubeadm::url_host;
use crate::kubeconfig;
use crate::layout;
use crate::manifest::{sha256_hex, Manifest, ManifestEntry, NodeEntry, FORMAT_VERSION};
use crate::pki::{self, Expiry, Issued, LeafSpec, LeafVerdict, Validity};
use crate::sshkeys;
use crate::templates::{Templates, Upgrade};
use crate::token::BootstrapToken;

/// A boxed error from one of the building blocks, kept as the source of a [`RenderError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The files of the assets directory as they were before this render, by relative path.
/// Empty for a first render.
pub use hakube_assets::Existing;

/// One file of the assets directory.
#[derive(Clone, PartialEq, Eq)]
pub struct Asset {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Secret material: mode 0600, its directory 0700, never printed.
    pub secret: bool,
    /// Unix permission bits: 0600 for secrets, 0755 for boot scripts, 0644 otherwise.
    pub mode: u32,
    /// The nodes install ships it to (empty: it stays on the workstation).
    pub nodes: Vec<String>,
    /// Where it goes on those nodes.
    pub destination: Option<String>,
    /// An age ciphertext of a secret ([`crate::secrets::seal`]); `bytes` are the
    /// ciphertext.
    pub encrypted: bool,
}

impl std::fmt::Debug for Asset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asset")
            .field("bytes", &if self.secret { "<secret>".to_string() } else { format!("{} bytes", self.bytes.len()) })
            .field("mode", &format_args!("{:04o}", self.mode))
            .field("nodes", &self.nodes)
            .field("destination", &self.destination)
            .finish()
    }
}

/// Every file render produces, by path relative to the assets directory (the manifest
/// is derived from them by [`AssetSet::manifest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetSet {
    /// The cluster's name (recorded in the manifest).
    pub cluster_name: String,
    /// Every node's role and boot-script steps (recorded in the manifest).
    pub nodes: BTreeMap<String, NodeEntry>,
    /// The files, in path order.
    pub files: BTreeMap<String, Asset>,
    /// The leaf certificates this render renewed because of their dates, in the order
    /// rendered (not part of the manifest).
    pub renewed: Vec<Renewal>,
    /// The certificates among [`AssetSet::files`] render could not help: CAs in the last
    /// third of their validity (render never renews a CA) and leaves that already end
    /// with their CA. See [`expiring_certificates`]; not part of the manifest.
    pub expiring: Vec<ExpiryWarning>,
    /// The recipients the secrets are encrypted to (recorded in the manifest); set by
    /// [`crate::secrets::seal`].
    pub recipients: Vec<String>,
    /// The definition's kubernetesVersion (recorded in the manifest).
    pub kubernetes_version: String,
    /// The upgrade the boot scripts carry, if any (recorded in the manifest).
    pub upgrade: Option<Upgrade>,
    /// The definition's hash ([`hakube_assets::manifest::definition_sha256`]; recorded in
    /// the manifest).
    pub definition_sha256: String,
    /// The nodes in the definition's order (recorded in the manifest).
    pub node_order: Vec<String>,
    /// The definition's install settings (recorded in the manifest).
    pub install: hakube_assets::manifest::InstallEntry,
    /// The install phases and their steps (recorded in the manifest).
    pub phases: Vec<hakube_assets::manifest::PhaseEntry>,
}

/// A leaf certificate render renewed from the same CA because it was in the last third
/// of its validity or had expired (the definition still asks for it as it is).
///
/// Displays as `PATH (it was to expire on YYYY-MM-DD, within the last third of its
/// validity)` or `PATH (it expired on YYYY-MM-DD)`, dates in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The file holding the certificate, relative to the assets directory
    /// (`kubeconfig/admin.conf` for the admin client certificate).
    pub path: String,
    /// The old certificate's validity.
    pub old: Validity,
    /// Whether the old certificate had expired at [`Options::now`] (otherwise it was in
    /// the last third of its validity).
    pub expired: bool,
    /// Whether the private key was kept (as `kubeadm certs renew` does); false when the
    /// old key was missing or did not belong to the certificate, and a new one was made.
    pub kept_key: bool,
}

impl fmt::Display for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let it = if self.path == layout::ADMIN_KUBECONFIG { "its client certificate" } else { "it" };
        let date = pki::utc_date(self.old.not_after);
        if self.expired {
            write!(f, "{} ({it} expired on {date})", self.path)
        } else {
            write!(f, "{} ({it} was to expire on {date}, within the last third of its validity)", self.path)
        }
    }
}

/// A certificate in the assets that is in the last third of its validity or expired.
///
/// Displays as one line starting with the path, saying when it expires (UTC,
/// `YYYY-MM-DD`) and what to run: `hakube render` for a leaf, `hakube render
/// --rotate-secrets` for a CA or for a leaf that cannot outlive its CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryWarning {
    /// The file, relative to the assets directory (`kubeconfig/admin.conf` for the admin
    /// client certificate).
    pub path: String,
    /// The certificate's subject CN.
    pub common_name: String,
    /// Whether it is a CA.
    pub is_ca: bool,
    /// Its validity.
    pub validity: Validity,
    /// [`Expiry::LastThird`] or [`Expiry::Expired`].
    pub expiry: Expiry,
    /// For a leaf: the path of the CA among the files that issued it, when the leaf
    /// already ends when that CA does (a renewed leaf could not end later).
    pub bounded_by: Option<String>,
}

impl fmt::Display for ExpiryWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (self.is_ca, self.path == layout::ADMIN_KUBECONFIG) {
            (true, _) => "CA certificate",
            (false, true) => "client certificate",
            (false, false) => "certificate",
        };
        let (path, cn) = (&self.path, &self.common_name);
        let end = pki::utc_date(self.validity.not_after);
        match self.expiry {
            Expiry::Expired => write!(f, "{path}: {kind} {cn:?} expired on {end}")?,
            Expiry::LastThird | Expiry::Valid => write!(
                f,
                "{path}: {kind} {cn:?} expires on {end} (valid from {}, in the last third of its validity since {})",
                pki::utc_date(self.validity.not_before),
                pki::utc_date(self.validity.renew_from()),
            )?,
        }
        match (&self.bounded_by, self.is_ca) {
            (_, true) => write!(
                f,
                "; render never renews a CA: replacing it is a rotation, run `hakube render --rotate-secrets` (new CAs, and every certificate issued from them)"
            ),
            (Some(ca), false) => write!(
                f,
                "; it cannot outlive its CA ({ca}): run `hakube render --rotate-secrets` to replace the CAs"
            ),
            (None, false) => write!(f, "; run `hakube render` to renew it, then `hakube install` to ship it"),
        }
    }
}

/// Whether the file at `path` (relative to the assets directory) holds a certificate
/// [`expiring_certificates`] looks at: a `.crt` file or the admin kubeconfig.
pub fn holds_certificate(path: &str) -> bool {
    path.ends_with(".crt") || path == layout::ADMIN_KUBECONFIG
}

/// The certificates among `files` (`(path relative to the assets directory, bytes)`)
/// that are in the last third of their validity or expired at `now`, in the order given.
///
/// Looks at every file [`holds_certificate`] names: a `.crt` file's PEM certificate, the
/// admin kubeconfig's client certificate. Files that do not parse are skipped (`render
/// --check` reports tampered files). For a leaf, [`ExpiryWarning::bounded_by`] names the
/// CA among `files` that issued it when the leaf ends no earlier than that CA.
pub fn expiring_certificates<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    now: SystemTime,
) -> Vec<ExpiryWarning> {
    let certificates: Vec<(&str, String, pki::CertificateInfo)> = files
        .into_iter()
        .filter(|(path, _)| holds_certificate(path))
        .filter_map(|(path, bytes)| {
            let text = std::str::from_utf8(bytes).ok()?;
            let pem = if path == layout::ADMIN_KUBECONFIG { client_of_kubeconfig(text)?.cert_pem } else { text.into() };
            let info = pki::inspect(&pem).ok()?;
            Some((path, pem, info))
        })
        .collect();
    let mut out = Vec::new();
    for (path, pem, info) in &certificates {
        let expiry = info.validity.expiry(now);
        if expiry == Expiry::Valid {
            continue;
        }
        let bounded_by = (!info.is_ca)
            .then(|| {
                certificates.iter().find(|(_, ca_pem, ca)| {
                    ca.is_ca && pki::issued_by(pem, ca_pem) && info.validity.not_after >= ca.validity.not_after
                })
            })
            .flatten()
            .map(|(ca_path, _, _)| ca_path.to_string());
        out.push(ExpiryWarning {
            path: path.to_string(),
            common_name: info.common_name.clone(),
            is_ca: info.is_ca,
            validity: info.validity,
            expiry,
            bounded_by,
        });
    }
    out
}

impl AssetSet {
    /// The manifest describing [`AssetSet::files`].
    pub fn manifest(&self) -> Manifest {
        let files = self
            .files
            .iter()
            .map(|(path, a)| {
                let entry = ManifestEntry {
                    sha256: sha256_hex(&a.bytes),
                    mode: format!("{:04o}", a.mode),
                    secret: a.secret,
                    encrypted: a.encrypted,
                    nodes: a.nodes.clone(),
                    destination: a.destination.clone(),
                };
                (path.clone(), entry)
            })
            .collect();
        Manifest {
            format: FORMAT_VERSION,
            cluster_name: self.cluster_name.clone(),
            kubernetes_version: self.kubernetes_version.clone(),
            upgrade_from: self.upgrade.map(|u| u.from.to_string()),
            nodes: self.nodes.clone(),
            files,
            recipients: self.recipients.clone(),
            definition_sha256: self.definition_sha256.clone(),
            node_order: self.node_order.clone(),
            install: self.install.clone(),
            phases: self.phases.clone(),
        }
    }
}

/// How to render.
#[derive(Debug, Clone)]
pub struct Options {
    /// Replace the CAs, the service-account key pair, the bootstrap token and every
    /// certificate issued from the CAs (`--rotate-secrets`). SSH keys are kept: the
    /// machines trust them.
    pub rotate_secrets: bool,
    /// The time certificates are issued at.
    pub now: SystemTime,
}

/// Why render failed. Messages are lowercase and name the file or node involved.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// An existing secret in the assets is unusable; render never silently replaces one.
    #[error("failed to reuse {path}: {problem}; restore it (e.g. from git) or pass --rotate-secrets to replace the cluster's secrets")]
    BrokenSecret {
        /// Path relative to the assets directory.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Creating or checking key material failed.
    #[error("failed to create {what}")]
    Crypto {
        /// Which file or certificate.
        what: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// kubernetesVersion changed in a way hakube does not upgrade (a downgrade, a skipped
    /// minor), compared with the version the existing assets were rendered for.
    #[error("{problem}")]
    Version {
        /// What is wrong and what to do.
        problem: String,
    },
    /// Rendering a node's boot script or kubeadm configuration failed.
    #[error("failed to render {what} for node {node}")]
    Node {
        /// The node.
        node: String,
        /// `boot.sh`, `kubeadm.yaml`, `kubeadm-join.yaml` or `etcd certificates`.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

fn crypto(what: impl Into<String>) -> impl FnOnce(BoxError) -> RenderError {
    let what = what.into();
    move |source| RenderError::Crypto { what, source }
}

const SECRET: u32 = 0o600;
const PUBLIC: u32 = 0o644;

struct Builder<'a> {
    def: &'a ClusterDefinition,
    existing: &'a Existing,
    options: &'a Options,
    files: BTreeMap<String, Asset>,
    renewed: Vec<Renewal>,
}

impl Builder<'_> {
    fn text(&self, path: &str) -> Option<&str> {
        self.existing.get(path).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// An existing secret to reuse, unless rotating.
    fn reusable(&self, path: &str) -> Option<&str> {
        if self.options.rotate_secrets {
            None
        } else {
            self.text(path)
        }
    }

    fn add(&mut self, path: String, bytes: impl Into<Vec<u8>>, secret: bool, ships: Ships) {
        let (nodes, destination) = match ships {
            Ships::Nowhere => (Vec::new(), None),
            Ships::To(nodes, dest) => (nodes, Some(dest)),
        };
        // The layout's rule (0600 secret, 0755 script, 0644 otherwise), the one install
        // ships by; a path outside the layout (none is rendered) gets the safe default.
        let mode = layout::file(&path).map_or(if secret { SECRET } else { PUBLIC }, |f| f.mode);
        self.files.insert(path, Asset { bytes: bytes.into(), secret, mode, nodes, destination, encrypted: false });
    }

    fn masters(&self) -> Vec<String> {
        self.def.masters.iter().map(|n| n.node_name.clone()).collect()
    }

    fn all_nodes(&self) -> Vec<String> {
        self.def.nodes().map(|(_, n)| n.node_name.clone()).collect()
    }

    /// A CA under `pki/<base>.crt/.key`: reused when both exist and match, created when
    /// neither exists, an error when only one exists or they do not belong together.
    fn load_or_new_ca(&self, base: &str, common_name: &str) -> Result<Issued, RenderError> {
        let (crt_path, key_path) = (layout::pki(&format!("{base}.crt")), layout::pki(&format!("{base}.key")));
        Ok(match (self.reusable(&crt_path), self.reusable(&key_path)) {
            (Some(cert), Some(key)) => {
                let ok = pki::is_ca_pair(cert, key).map_err(|e| crypto(&crt_path)(e.into()))?;
                if !ok {
                    return Err(RenderError::BrokenSecret {
                        path: crt_path,
                        problem: format!("it is not a CA certificate matching {key_path}"),
                    });
                }
                Issued { cert_pem: cert.to_string(), key_pem: key.to_string() }
            }
            (None, None) => {
                let (ca_validity, _) = self.def.pki.validities();
                pki::new_ca(common_name, self.def.pki.key_algorithm, ca_validity, self.options.now)
                    .map_err(|e| crypto(&crt_path)(e.into()))?
            }
            (Some(_), None) => {
                return Err(RenderError::BrokenSecret {
                    path: key_path,
                    problem: format!("it is missing while {crt_path} exists"),
                })
            }
            (None, Some(_)) => {
                return Err(RenderError::BrokenSecret {
                    path: crt_path,
                    problem: format!("it is missing while {key_path} exists"),
                })
            }
        })
    }

    /// Adds a CA's certificate and key, shipped to the masters.
    fn add_ca(&mut self, base: &str, issued: &Issued) {
        let (crt_path, key_path) = (layout::pki(&format!("{base}.crt")), layout::pki(&format!("{base}.key")));
        let masters = self.masters();
        self.add(crt_path.clone(), issued.cert_pem.clone(), false, Ships::secret_tree(&crt_path, masters.clone()));
        self.add(key_path.clone(), issued.key_pem.clone(), true, Ships::secret_tree(&key_path, masters));
    }

    /// The existing service-account private key, or a new one.
    fn load_or_new_sa_key(&self) -> Result<String, RenderError> {
        let path = layout::pki("sa.key");
        match self.reusable(&path) {
            Some(key) => Ok(key.to_string()),
            None => {
                Ok(pki::service_account_key_pair(self.def.pki.key_algorithm).map_err(|e| crypto(&path)(e.into()))?.0)
            }
        }
    }

    /// The existing certificate and key at `crt_path` and `key_path`, unless rotating.
    fn reusable_pair(&self, crt_path: &str, key_path: &str) -> Option<Issued> {
        match (self.reusable(crt_path), self.reusable(key_path)) {
            (Some(cert), Some(key)) => Some(Issued { cert_pem: cert.to_string(), key_pem: key.to_string() }),
            _ => None,
        }
    }

    /// A leaf certificate for `spec` from `ca`, given the one at `path` (if any): kept
    /// when it still matches and is not in the last third of its validity, renewed with
    /// its key when it matches but is (recorded in `renewed`), issued with a new key
    /// otherwise ([`pki::leaf_verdict`]).
    fn leaf(
        &mut self,
        path: &str,
        existing: Option<Issued>,
        ca: &Issued,
        spec: &LeafSpec,
    ) -> Result<Issued, RenderError> {
        let (algorithm, now) = (self.def.pki.key_algorithm, self.options.now);
        let verdict = existing.as_ref().map_or(LeafVerdict::Reissue, |old| {
            pki::leaf_verdict(&old.cert_pem, ca, spec, now).unwrap_or(LeafVerdict::Reissue)
        });
        match (verdict, existing) {
            (LeafVerdict::Keep, Some(old)) => Ok(old),
            (LeafVerdict::Renew(validity), Some(old)) => {
                let renewed = pki::renew_leaf(ca, spec, &old, algorithm, now).map_err(|e| crypto(path)(e.into()))?;
                self.renewed.push(Renewal {
                    path: path.to_owned(),
                    old: validity,
                    expired: validity.expiry(now) == Expiry::Expired,
                    kept_key: renewed.key_pem == old.key_pem,
                });
                Ok(renewed)
            }
            _ => pki::issue_leaf(ca, spec, algorithm, now).map_err(|e| crypto(path)(e.into())),
        }
    }
}

/// The contents of [`layout::FINGERPRINTS`]: for each CA certificate its SHA-256
/// fingerprint as `openssl x509 -noout -fingerprint -sha256` prints it, for the
/// service-account public key the sha256 of its file, for every SSH public key its
/// fingerprint as `ssh-keygen -l` prints it, and the bootstrap token's id (public: it
/// names the token's Secret, `bootstrap-token-<id>`). Nothing secret; one line per file,
/// in path order.
fn fingerprints(files: &BTreeMap<String, Asset>, token_id: &str) -> String {
    let mut out = String::from(
        "# The cluster's roots of trust, for review: a changed line means a new CA or key.\n# Nothing here is secret (hakube render writes this file).\n",
    );
    for (path, asset) in files {
        let line = if path.ends_with("ca.crt") {
            openssl::x509::X509::from_pem(&asset.bytes)
                .ok()
                .and_then(|c| c.digest(openssl::hash::MessageDigest::sha256()).ok())
                .map(|d| {
                    let hex: Vec<String> = d.iter().map(|b| format!("{b:02X}")).collect();
                    format!("sha256 Fingerprint={}", hex.join(":"))
                })
        } else if path == &layout::pki("sa.pub") {
            Some(format!("sha256:{}", sha256_hex(&asset.bytes)))
        } else if path.ends_with(".pub") {
            std::str::from_utf8(&asset.bytes)
                .ok()
                .and_then(|t| ssh_key::PublicKey::from_openssh(t.trim()).ok())
                .map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string())
        } else {
            None
        };
        if let Some(line) = line {
            out.push_str(&format!("{path} {line}\n"));
        }
    }
    out.push_str(&format!("{} id {token_id}\n", layout::BOOTSTRAP_TOKEN));
    out
}

/// The upgrade a render of `def` carries, given the manifest among `existing`: none on a
/// first render or when the manifest records no version; from the manifest's version when
/// kubernetesVersion differs from it ([`crate::templates::check_upgrade`] decides whether
/// that is allowed); the manifest's own `upgradeFrom` when the version is unchanged (so a
/// re-render keeps the upgrade steps and changes no byte).
///
/// # Errors
///
/// [`RenderError::Version`] for a downgrade or a skipped minor.
pub fn upgrade_of(def: &ClusterDefinition, existing: &Existing) -> Result<Option<Upgrade>, RenderError> {
    use hakube_cluster::Version;
    let Some(to) = Version::parse(&def.kubernetes_version) else { return Ok(None) };
    let Some(previous) = Manifest::of_existing(existing) else {
        return Ok(None);
    };
    let Some(from) = Version::parse(&previous.kubernetes_version) else { return Ok(None) };
    let from = match (from == to, previous.upgrade_from.as_deref().and_then(Version::parse)) {
        (true, Some(carried)) => carried,
        (true, None) => return Ok(None),
        (false, _) => from,
    };
    crate::templates::check_upgrade(from, to).map_err(|problem| RenderError::Version { problem })?;
    Ok((from != to).then_some(Upgrade { from, to }))
}

/// The API servers the admin kubeconfig names, as [`kubeconfig::admin_kubeconfig`] takes
/// them: the control-plane endpoint first, then each of `masterFQDNs`, all on port 6443.
pub fn admin_servers(def: &ClusterDefinition) -> Vec<(String, String)> {
    let host = def.control_plane_host().unwrap_or_default();
    let mut servers = vec![(String::new(), format!("https://{}:6443", url_host(host)))];
    servers.extend(def.master_fqdns.iter().map(|f| (f.clone(), format!("https://{}:6443", url_host(f)))));
    servers
}

/// Where a file goes.
enum Ships {
    Nowhere,
    To(Vec<String>, String),
}

impl Ships {
    /// Into /etc/hakube/secrets/<path> on `nodes`.
    fn secret_tree(path: &str, nodes: Vec<String>) -> Ships {
        Ships::To(nodes, format!("{}/{path}", layout::REMOTE_SECRETS_DIR))
    }
}

/// The client certificate and key embedded in a kubeconfig's first user, if any.
fn client_of_kubeconfig(text: &str) -> Option<Issued> {
    use base64::Engine as _;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    let user = doc.get("users")?.get(0)?.get("user")?;
    let decode = |field: &str| -> Option<String> {
        let data = base64::engine::general_purpose::STANDARD.decode(user.get(field)?.as_str()?).ok()?;
        String::from_utf8(data).ok()
    };
    Some(Issued { cert_pem: decode("client-certificate-data")?, key_pem: decode("client-key-data")? })
}

/// Renders every file of the assets directory.
///
/// `existing` holds the current files of the assets directory (empty on a first render);
/// secrets found there are reused (see [`Options::rotate_secrets`]). `def` must have
/// passed [`hakube_cluster::load`].
///
/// # Errors
///
/// [`RenderError::BrokenSecret`] when an existing secret is unusable (half of a key pair,
/// a certificate that does not match its key, an unparsable token); other variants when
/// key generation or a template fails, naming the file or node.
pub fn render(
    def: &ClusterDefinition,
    existing: &Existing,
    templates: &Templates,
    options: &Options,
) -> Result<AssetSet, RenderError> {
    // Before anything is generated: a version change hakube does not upgrade stops here.
    let upgrade = upgrade_of(def, existing)?;
    let mut b = Builder { def, existing, options, files: BTreeMap::new(), renewed: Vec::new() };
    let (_, leaf_validity) = def.pki.validities();

    // The CAs (kubeadm's names and common names; docs/upstream-facts.md "PKI kubeadm lays out") and
    // the service-account key, generated side by side: RSA key generation dominates a first
    // render.
    let (cluster_ca, front_proxy_ca, etcd_ca, sa_key) = std::thread::scope(|s| {
        let builder = &b;
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Issued, RenderError>>| {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        };
        let cluster = s.spawn(move || builder.load_or_new_ca("ca", "kubernetes"));
        let front = s.spawn(move || builder.load_or_new_ca("front-proxy-ca", "front-proxy-ca"));
        let etcd = s.spawn(move || builder.load_or_new_ca("etcd/ca", "etcd-ca"));
        let sa = builder.load_or_new_sa_key();
        (join(cluster), join(front), join(etcd), sa)
    });
    let (cluster_ca, front_proxy_ca, etcd_ca, sa_key) = (cluster_ca?, front_proxy_ca?, etcd_ca?, sa_key?);
    b.add_ca("ca", &cluster_ca);
    b.add_ca("front-proxy-ca", &front_proxy_ca);
    b.add_ca("etcd/ca", &etcd_ca);

    // sa.pub is derived from sa.key, so it is byte-stable.
    let sa_key_path = layout::pki("sa.key");
    let sa_pub = pki::public_key_pem_of(&sa_key).map_err(|e| RenderError::BrokenSecret {
        path: sa_key_path.clone(),
        problem: format!("it is not a private key ({e})"),
    })?;
    let masters = b.masters();
    b.add(sa_key_path.clone(), sa_key, true, Ships::secret_tree(&sa_key_path, masters.clone()));
    let sa_pub_path = layout::pki("sa.pub");
    b.add(sa_pub_path.clone(), sa_pub, false, Ships::secret_tree(&sa_pub_path, masters.clone()));

    // The bootstrap token and the discovery hash.
    let token = match b.reusable(layout::BOOTSTRAP_TOKEN) {
        Some(text) => BootstrapToken::parse(text.trim())
            .map_err(|e| RenderError::BrokenSecret { path: layout::BOOTSTRAP_TOKEN.into(), problem: e.to_string() })?,
        None => BootstrapToken::generate().map_err(|e| crypto(layout::BOOTSTRAP_TOKEN)(e.into()))?,
    };
    b.add(
        layout::BOOTSTRAP_TOKEN.into(),
        format!("{}\n", token.expose()),
        true,
        Ships::To(b.all_nodes(), format!("{}/bootstrap-token", layout::REMOTE_SECRETS_DIR)),
    );
    b.add(
        layout::STEP_RUNNER.into(),
        crate::templates::step_runner(),
        false,
        Ships::To(b.all_nodes(), hakube_assets::steps::STEP_SCRIPT.to_string()),
    );
    let hash = pki::discovery_token_ca_cert_hash(&cluster_ca.cert_pem)
        .map_err(|e| crypto(layout::DISCOVERY_HASH)(e.into()))?;
    b.add(layout::DISCOVERY_HASH.into(), format!("{hash}\n"), false, Ships::Nowhere);

    // External etcd: a server and a peer certificate per master, and the API server's client.
    if def.etcd.topology == EtcdTopology::External {
        let client_spec = pki::apiserver_etcd_client_spec(leaf_validity);
        let (crt, key) = (layout::pki("apiserver-etcd-client.crt"), layout::pki("apiserver-etcd-client.key"));
        let old = b.reusable_pair(&crt, &key);
        let client = b.leaf(&crt, old, &etcd_ca, &client_spec)?;
        b.add(crt.clone(), client.cert_pem, false, Ships::secret_tree(&crt, masters.clone()));
        b.add(key.clone(), client.key_pem, true, Ships::secret_tree(&key, masters.clone()));
        for master in &def.masters {
            let name = &master.node_name;
            let Ok(address) = master.private_ip.parse::<IpAddr>() else {
                return Err(RenderError::Node {
                    node: name.clone(),
                    what: "etcd certificates",
                    source: format!("privateIP {:?} is not an IP address", master.private_ip).into(),
                });
            };
            let spec = pki::etcd_member_spec(name, address, leaf_validity);
            for kind in ["server", "peer"] {
                let (crt, key) = (
                    layout::etcd_member(name, &format!("{kind}.crt")),
                    layout::etcd_member(name, &format!("{kind}.key")),
                );
                let old = b.reusable_pair(&crt, &key);
                let issued = b.leaf(&crt, old, &etcd_ca, &spec)?;
                b.add(crt.clone(), issued.cert_pem, false, Ships::secret_tree(&crt, vec![name.clone()]));
                b.add(key.clone(), issued.key_pem, true, Ships::secret_tree(&key, vec![name.clone()]));
            }
        }
    }

    // The admin kubeconfig, issued from the cluster CA (its client certificate is reused,
    // or renewed, like the other leaves).
    let admin_spec = kubeconfig::admin_client_spec(leaf_validity);
    let old_admin = b.reusable(layout::ADMIN_KUBECONFIG).and_then(client_of_kubeconfig);
    let admin = b.leaf(layout::ADMIN_KUBECONFIG, old_admin, &cluster_ca, &admin_spec)?;
    let kubeconfig = kubeconfig::admin_kubeconfig(&def.cluster_name, &admin_servers(def), &cluster_ca.cert_pem, &admin)
        .map_err(|e| crypto(layout::ADMIN_KUBECONFIG)(e.into()))?;
    b.add(layout::ADMIN_KUBECONFIG.into(), kubeconfig, true, Ships::Nowhere);

    // SSH: the installer's login key (unless the definition names one) and host keys.
    if def.ssh_login_key.is_none() {
        let private = match b.text(layout::LOGIN_KEY) {
            Some(key) => key.to_string(),
            None => {
                sshkeys::generate_ed25519(&format!("hakube@{}", def.cluster_name))
                    .map_err(|e| crypto(layout::LOGIN_KEY)(e.into()))?
                    .private_openssh
            }
        };
        let public = sshkeys::public_line_of(&private).map_err(|e| RenderError::BrokenSecret {
            path: layout::LOGIN_KEY.into(),
            problem: format!("it is not an OpenSSH private key ({e})"),
        })?;
        b.add(layout::LOGIN_KEY.into(), private, true, Ships::Nowhere);
        b.add(layout::LOGIN_KEY_PUB.into(), format!("{public}\n"), false, Ships::Nowhere);
    }
    let mut known_hosts = String::new();
    for (_, node) in def.nodes() {
        let path = layout::host_key(&node.node_name);
        let private = match b.text(&path) {
            Some(key) => key.to_string(),
            // accept-new says no rendered host key is installed on the machines: a key made
            // now would be pinned, and install checks a pinned key strictly, so none is made.
            // One the assets already hold stays pinned.
            None if def.host_key_policy == hakube_cluster::definition::HostKeyPolicy::AcceptNew => continue,
            None => {
                sshkeys::generate_ed25519(&format!("root@{}", node.node_name))
                    .map_err(|e| crypto(&path)(e.into()))?
                    .private_openssh
            }
        };
        let public = sshkeys::public_line_of(&private).map_err(|e| RenderError::BrokenSecret {
            path: path.clone(),
            problem: format!("it is not an OpenSSH private key ({e})"),
        })?;
        let port = node.ssh_port.unwrap_or(def.ssh_port);
        let mut patterns: Vec<String> = Vec::new();
        for host in [node.ssh_address(), node.private_ip.as_str(), node.node_name.as_str()] {
            let pattern = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") };
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        known_hosts.push_str(&sshkeys::known_hosts_line(&refs, &public));
        known_hosts.push('\n');
        b.add(path.clone(), private, true, Ships::Nowhere);
        b.add(format!("{path}.pub"), format!("{public}\n"), false, Ships::Nowhere);
    }
    b.add(layout::KNOWN_HOSTS.into(), known_hosts, false, Ships::Nowhere);

    // Per node: kubeadm configuration and boot script.
    // Each node is handed over with its role, never looked up by name, and the template
    // context every node shares is built once: time linear in the number of nodes.
    let mut nodes = BTreeMap::new();
    let shared = crate::templates::SharedContext::new(def);
    for (role, node) in def.nodes() {
        let first_master = def.first_master().is_some_and(|m| m.node_name == node.node_name);
        let steps = crate::templates::boot_steps_of(def, role, &node.node_name).into_iter().map(String::from).collect();
        let upgrade_steps = crate::templates::upgrade_steps(def, &node.node_name, upgrade.as_ref())
            .into_iter()
            .map(String::from)
            .collect();
        let ssh = hakube_assets::manifest::ssh_entry(def, node);
        nodes.insert(node.node_name.clone(), NodeEntry { role, first_master, steps, upgrade_steps, ssh });
        let name = &node.node_name;
        let config = crate::kubeadm::kubeadm_config_of(def, role, node, &hash, token.id())
            .map_err(|e| RenderError::Node { node: name.clone(), what: "kubeadm.yaml", source: e.into() })?;
        let script = templates
            .boot_script_of(def, &shared, role, node, upgrade.as_ref())
            .map_err(|e| RenderError::Node { node: name.clone(), what: "boot.sh", source: e.into() })?;
        b.add(
            layout::kubeadm_config(name),
            config,
            false,
            Ships::To(vec![name.clone()], format!("{}/kubeadm.yaml", layout::REMOTE_DIR)),
        );
        b.add(
            layout::boot_script(name),
            script,
            false,
            Ships::To(vec![name.clone()], hakube_assets::steps::BOOT_SCRIPT.to_string()),
        );
        if first_master {
            let join = crate::kubeadm::first_master_join_config(def, name, &hash, token.id())
                .map_err(|e| RenderError::Node { node: name.clone(), what: "kubeadm-join.yaml", source: e.into() })?;
            b.add(
                layout::kubeadm_join_config(name),
                join,
                false,
                Ships::To(vec![name.clone()], format!("{}/kubeadm-join.yaml", layout::REMOTE_DIR)),
            );
        }
    }

    let listing = fingerprints(&b.files, token.id());
    b.add(layout::FINGERPRINTS.into(), listing, false, Ships::Nowhere);

    // What render cannot fix by itself: a CA in its last third, a leaf that ends with its CA.
    let expiring = expiring_certificates(b.files.iter().map(|(p, a)| (p.as_str(), a.bytes.as_slice())), options.now)
        .into_iter()
        .filter(|w| w.is_ca || w.bounded_by.is_some())
        .collect();
    let node_order: Vec<String> = def.nodes().map(|(_, n)| n.node_name.clone()).collect();
    let phases = crate::templates::phases(&node_order, &nodes);
    Ok(AssetSet {
        cluster_name: def.cluster_name.clone(),
        definition_sha256: hakube_assets::manifest::definition_sha256(def),
        install: hakube_assets::manifest::install_entry(def),
        node_order,
        phases,
        nodes,
        files: b.files,
        renewed: b.renewed,
        expiring,
        recipients: Vec::new(),
        kubernetes_version: def.kubernetes_version.clone(),
        upgrade,
    })
}
