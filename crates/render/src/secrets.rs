//! Secrets at rest: the assets' secret files encrypted with age, so that the assets
//! directory can be committed to git.
//!
//! With `secrets.recipients` in the definition, every secret of an [`AssetSet`] (each
//! file the layout marks secret: private keys, admin.conf, the bootstrap token, the SSH
//! login and host private keys) is written only as `<path>.age`, an ASCII-armored age
//! file (<https://age-encryption.org/v1>) that the `age` and `rage` command-line tools
//! decrypt. The plaintext exists only in memory: render decrypts the existing
//! ciphertexts to reuse what they hold ([`open`]), and [`seal`] keeps an existing
//! ciphertext whenever its plaintext and the recipients are unchanged (age encryption is
//! randomized, so re-encrypting would change every byte of every secret on each render).
//!
//! Identities are looked for the way SOPS-with-age users expect ([`Sources`]).

use std::collections::BTreeMap;

use crate::layout;
use crate::manifest::Manifest;
use crate::render::{Asset, AssetSet, Existing};

pub use hakube_assets::secrets::*;

/// The recipients the manifest among `existing` records (empty when there is none).
pub fn previous_recipients(existing: &Existing) -> Vec<String> {
    Manifest::of_existing(existing).map(|m| m.recipients).unwrap_or_default()
}

/// Whether `existing` holds any ciphertext of the layout.
pub fn has_ciphertexts(existing: &Existing) -> bool {
    existing.keys().any(|p| layout::file(p).is_some_and(|f| f.encrypted))
}

/// The existing assets as render reads them, with every ciphertext decrypted.
#[derive(Default)]
pub struct Opened {
    /// Every file, each `<path>.age` of the layout replaced by `path` and its plaintext (a
    /// plaintext file of the same path, left by a render without recipients, is
    /// overridden: the ciphertext is the newer truth only if there is no plaintext; see
    /// [`open`]).
    pub plain: Existing,
    /// The plaintext of each ciphertext, by the secret's path.
    pub decrypted: BTreeMap<String, Vec<u8>>,
}

/// Decrypts every ciphertext among `existing` (files as read from disk) with
/// `identities`. A plaintext file of the same secret path also present (the recipients
/// were just set, or just removed) wins in [`Opened::plain`] only when there is no
/// ciphertext; the ciphertext is what the manifest last recorded.
///
/// # Errors
///
/// The first [`SecretsError`], naming the file.
pub fn open(existing: &Existing, identities: &Identities) -> Result<Opened, SecretsError> {
    let recipients = previous_recipients(existing);
    let mut opened = Opened { plain: existing.clone(), decrypted: BTreeMap::new() };
    for (path, bytes) in existing {
        let Some(plain_path) = path.strip_suffix(layout::AGE_SUFFIX) else { continue };
        if !layout::file(path).is_some_and(|f| f.encrypted) {
            continue;
        }
        let plaintext = identities.decrypt(bytes, path, &recipients)?;
        opened.plain.remove(path);
        opened.plain.insert(plain_path.to_string(), plaintext.clone());
        opened.decrypted.insert(plain_path.to_string(), plaintext);
    }
    Ok(opened)
}

/// What [`seal`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealReport {
    /// Secrets encrypted anew (new, changed, or every one when the recipients changed).
    pub encrypted: Vec<String>,
    /// Recipients added since the manifest's (canonical texts).
    pub added: Vec<String>,
    /// Recipients removed since the manifest's.
    pub removed: Vec<String>,
    /// Plaintext secrets listed in the `.gitignore` (no recipients).
    pub ignored: Vec<String>,
}

impl SealReport {
    /// Whether the recipients changed, so every secret was re-encrypted.
    pub fn recipients_changed(&self) -> bool {
        !self.added.is_empty() || !self.removed.is_empty()
    }
}

/// Makes `set` what goes to disk: with `recipients`, every secret becomes `<path>.age`
/// (mode 0644: a ciphertext), its ciphertext kept from `existing` when `decrypted` shows
/// the same plaintext and the manifest's recipients are the same, else encrypted anew;
/// without, the secrets stay plaintext (0600). Either way a [`layout::GITIGNORE`] is
/// added that keeps render's temporary files, and any plaintext secret, out of git.
///
/// # Errors
///
/// [`SecretsError::Recipient`] or [`SecretsError::Encrypt`].
pub fn seal(
    set: &mut AssetSet,
    recipients: &[String],
    existing: &Existing,
    decrypted: &BTreeMap<String, Vec<u8>>,
) -> Result<SealReport, SecretsError> {
    let (parsed, canonical) = parse_recipients(recipients)?;
    let previous = previous_recipients(existing);
    let mut report = SealReport::default();
    if !previous.is_empty() && !canonical.is_empty() {
        report.added = canonical.iter().filter(|r| !previous.contains(r)).cloned().collect();
        report.removed = previous.iter().filter(|r| !canonical.contains(r)).cloned().collect();
    }
    let secrets: Vec<String> =
        set.files.iter().filter(|(_, a)| a.secret && !a.encrypted).map(|(p, _)| p.clone()).collect();
    let mut ignore = String::from(
        "# Written by hakube render.\n# Temporary files of an interrupted render (one may hold a secret):\n.hakube-*\n",
    );
    if canonical.is_empty() {
        ignore.push_str("# Plaintext secrets: set secrets.recipients in the cluster definition to keep them\n# encrypted with age instead, so that they can be committed.\n");
        for path in &secrets {
            ignore.push_str(&format!("/{path}\n"));
        }
        report.ignored = secrets;
    } else {
        for path in secrets {
            let asset = set.files.remove(&path).expect("listed above");
            let target = layout::encrypted(&path);
            let reuse = previous == canonical && decrypted.get(&path) == Some(&asset.bytes);
            let bytes = match existing.get(&target) {
                Some(old) if reuse => old.clone(),
                _ => {
                    report.encrypted.push(target.clone());
                    encrypt(&asset.bytes, &parsed, &target)?
                }
            };
            set.files.insert(target, Asset { bytes, mode: 0o644, encrypted: true, ..asset });
        }
    }
    set.files.insert(
        layout::GITIGNORE.into(),
        Asset {
            bytes: ignore.into_bytes(),
            secret: false,
            mode: 0o644,
            nodes: Vec::new(),
            destination: None,
            encrypted: false,
        },
    );
    set.recipients = canonical;
    Ok(report)
}
