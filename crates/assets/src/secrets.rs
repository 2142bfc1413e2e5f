//! Secrets at rest with age: where identities are looked for ([`Sources`], in SOPS's
//! order), decrypting ([`Identities`], [`decrypt_for_install`]) and encrypting
//! ([`encrypt`]) one file. hakube-render seals a whole render with these; hakube install
//! decrypts what it ships in memory.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hakube_cluster::recipients::{self, Recipient};

use crate::layout;
use crate::manifest::Manifest;

/// Why a secret could not be encrypted or decrypted. Messages name the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// No identity that was found decrypts the file.
    #[error("cannot decrypt {path}: no identity found matches its recipients ({}). Searched: {}. Pass --identity FILE (an age identity file, or the SSH private key of an SSH recipient), or set HAKUBE_AGE_KEY_FILE", list_or(.recipients, "unknown: the manifest names none"), .searched.join("; "))]
    NoIdentity {
        /// The ciphertext, relative to the assets directory.
        path: String,
        /// The recipients it was encrypted to (from the manifest).
        recipients: Vec<String>,
        /// Each place looked in and what was there.
        searched: Vec<String>,
    },
    /// The ciphertext is damaged or not an age file.
    #[error("cannot decrypt {path}: {problem}; restore it (e.g. from git)")]
    Corrupt {
        /// The ciphertext, relative to the assets directory.
        path: String,
        /// What age said.
        problem: String,
    },
    /// An identity named by a flag or an environment variable is unusable.
    #[error("identity {source_name}: {problem}")]
    Identity {
        /// `--identity PATH`, `$SOPS_AGE_KEY_FILE (PATH)`, ...
        source_name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A recipient of the definition does not parse (validation normally catches it).
    #[error("secrets.recipients[{index}]: {problem}")]
    Recipient {
        /// Its index in the definition.
        index: usize,
        /// What it is not.
        problem: String,
    },
    /// age failed to encrypt.
    #[error("failed to encrypt {path}: {problem}")]
    Encrypt {
        /// The secret, relative to the assets directory.
        path: String,
        /// What age said.
        problem: String,
    },
}

fn list_or(items: &[String], none: &str) -> String {
    if items.is_empty() {
        none.to_string()
    } else {
        items.join(", ")
    }
}

/// Where identities are looked for, in this order (the order SOPS users know, with
/// hakube's own variable first):
///
/// 1. every `--identity FILE` given;
/// 2. `$HAKUBE_AGE_KEY_FILE`;
/// 3. `$SOPS_AGE_KEY_FILE`;
/// 4. `$SOPS_AGE_KEY` (the identities themselves, one per line);
/// 5. `$XDG_CONFIG_HOME/sops/age/keys.txt`, else `~/.config/sops/age/keys.txt` (where
///    SOPS looks on Linux);
/// 6. when a recipient is an SSH key: `~/.ssh/id_ed25519` and `~/.ssh/id_rsa` (as the age
///    CLI's users pass them with `-i`).
///
/// An identity file holds age X25519 identities (`AGE-SECRET-KEY-1...`, comments allowed,
/// as `age-keygen` writes them) or one unencrypted OpenSSH/PEM private key. A file named
/// by a flag or a variable must be usable; the default places are skipped when absent.
/// Passphrase-protected SSH keys are skipped (say so in the search list): hakube never
/// prompts.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--identity` files, in the order given.
    pub explicit: Vec<PathBuf>,
    /// The environment variables above that are set.
    pub vars: BTreeMap<String, String>,
    /// The user's home directory.
    pub home: Option<PathBuf>,
}

/// The environment variables [`Sources`] reads.
pub const VARIABLES: &[&str] = &["HAKUBE_AGE_KEY_FILE", "SOPS_AGE_KEY_FILE", "SOPS_AGE_KEY", "XDG_CONFIG_HOME"];

impl Sources {
    /// The sources of this process: `explicit` files, its environment and `$HOME`.
    pub fn from_env(explicit: Vec<PathBuf>) -> Sources {
        let vars = VARIABLES
            .iter()
            .filter_map(|v| std::env::var(v).ok().filter(|x| !x.is_empty()).map(|x| (v.to_string(), x)))
            .collect();
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        Sources { explicit, vars, home }
    }
}

/// The identities found, and where they were looked for (for messages).
pub struct Identities {
    found: Vec<Box<dyn age::Identity + Send + Sync>>,
    searched: Vec<String>,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identities").field("found", &self.found.len()).field("searched", &self.searched).finish()
    }
}

/// Parses an identity file's text: age identities, or one SSH private key.
fn parse_identities(text: &str, name: &str) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, String> {
    if text.contains("-----BEGIN") {
        return match age::ssh::Identity::from_buffer(text.as_bytes(), Some(name.to_string())) {
            Ok(age::ssh::Identity::Unencrypted(key)) => Ok(vec![Box::new(age::ssh::Identity::Unencrypted(key))]),
            Ok(age::ssh::Identity::Encrypted(_)) => {
                Err("a passphrase-protected SSH key, which hakube does not prompt for".into())
            }
            Ok(age::ssh::Identity::Unsupported(_)) => Err("an SSH key type age does not support".into()),
            Err(e) => Err(format!("not an SSH private key age can use ({e})")),
        };
    }
    let file =
        age::IdentityFile::from_buffer(text.as_bytes()).map_err(|e| format!("not an age identity file ({e})"))?;
    let ids = file.into_identities().map_err(|e| format!("not an age identity file ({e})"))?;
    if ids.is_empty() {
        return Err("holds no identity".into());
    }
    Ok(ids)
}

impl Identities {
    /// Looks for identities in `sources`; the user's SSH keys only when `want_ssh` (some
    /// recipient is an SSH key).
    ///
    /// # Errors
    ///
    /// [`SecretsError::Identity`] when a file named by `--identity` or a variable is
    /// missing or holds no usable identity.
    pub fn load(sources: &Sources, want_ssh: bool) -> Result<Identities, SecretsError> {
        let mut ids = Identities { found: Vec::new(), searched: Vec::new() };
        let required = |name: String, path: &Path, ids: &mut Identities| -> Result<(), SecretsError> {
            let bad = |problem: String| SecretsError::Identity { source_name: name.clone(), problem };
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let found = parse_identities(&text, &path.display().to_string()).map_err(bad)?;
            ids.searched.push(format!("{name}: {} identit{}", found.len(), if found.len() == 1 { "y" } else { "ies" }));
            ids.found.extend(found);
            Ok(())
        };
        if sources.explicit.is_empty() {
            ids.searched.push("--identity: none given".into());
        }
        for path in &sources.explicit {
            required(format!("--identity {}", path.display()), path, &mut ids)?;
        }
        for var in ["HAKUBE_AGE_KEY_FILE", "SOPS_AGE_KEY_FILE"] {
            match sources.vars.get(var) {
                Some(path) => required(format!("${var} ({path})"), Path::new(path), &mut ids)?,
                None => ids.searched.push(format!("${var}: unset")),
            }
        }
        match sources.vars.get("SOPS_AGE_KEY") {
            Some(text) => {
                let found = parse_identities(text, "$SOPS_AGE_KEY")
                    .map_err(|problem| SecretsError::Identity { source_name: "$SOPS_AGE_KEY".into(), problem })?;
                ids.searched.push(format!("$SOPS_AGE_KEY: {} identities", found.len()));
                ids.found.extend(found);
            }
            None => ids.searched.push("$SOPS_AGE_KEY: unset".into()),
        }
        let config = sources
            .vars
            .get("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| sources.home.as_ref().map(|h| h.join(".config")));
        let mut optional = Vec::new();
        if let Some(config) = config {
            optional.push(config.join("sops/age/keys.txt"));
        }
        if want_ssh {
            if let Some(home) = &sources.home {
                optional.push(home.join(".ssh/id_ed25519"));
                optional.push(home.join(".ssh/id_rsa"));
            }
        }
        for path in optional {
            let shown = path.display().to_string();
            match std::fs::read_to_string(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => ids.searched.push(format!("{shown}: absent")),
                Err(e) => ids.searched.push(format!("{shown}: unreadable ({e})")),
                Ok(text) => match parse_identities(&text, &shown) {
                    Ok(found) => {
                        ids.searched.push(format!("{shown}: {} identities", found.len()));
                        ids.found.extend(found);
                    }
                    Err(problem) => ids.searched.push(format!("{shown}: skipped, {problem}")),
                },
            }
        }
        Ok(ids)
    }

    /// Whether no identity was found at all.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// Each place looked in and what was there.
    pub fn searched(&self) -> &[String] {
        &self.searched
    }

    /// Decrypts the age file `ciphertext` (armored or binary) found at `path` (relative,
    /// for messages), encrypted to `recipients` (from the manifest, for messages).
    ///
    /// # Errors
    ///
    /// [`SecretsError::NoIdentity`] when no identity matches; [`SecretsError::Corrupt`]
    /// when it is not a valid age file or fails authentication.
    pub fn decrypt(&self, ciphertext: &[u8], path: &str, recipients: &[String]) -> Result<Vec<u8>, SecretsError> {
        let corrupt = |e: &dyn fmt::Display| SecretsError::Corrupt { path: path.into(), problem: e.to_string() };
        let decryptor = age::Decryptor::new(age::armor::ArmoredReader::new(ciphertext)).map_err(|e| corrupt(&e))?;
        let mut reader =
            decryptor.decrypt(self.found.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => SecretsError::NoIdentity {
                    path: path.into(),
                    recipients: recipients.to_vec(),
                    searched: self.searched.clone(),
                },
                e => corrupt(&e),
            })?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map_err(|e| corrupt(&e))?;
        Ok(out)
    }
}

/// The definition's recipients, parsed; their canonical texts in the same order.
///
/// # Errors
///
/// [`SecretsError::Recipient`] for one that does not parse.
pub fn parse_recipients(texts: &[String]) -> Result<(Vec<Recipient>, Vec<String>), SecretsError> {
    let mut parsed = Vec::new();
    let mut canonical = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        let r = recipients::parse(text).map_err(|problem| SecretsError::Recipient { index, problem })?;
        canonical.push(r.canonical());
        parsed.push(r);
    }
    Ok((parsed, canonical))
}

/// Encrypts `plaintext` to every recipient as an ASCII-armored age file.
///
/// # Errors
///
/// [`SecretsError::Encrypt`] naming `path` (relative, for messages).
pub fn encrypt(plaintext: &[u8], recipients: &[Recipient], path: &str) -> Result<Vec<u8>, SecretsError> {
    let fail = |e: &dyn fmt::Display| SecretsError::Encrypt { path: path.into(), problem: e.to_string() };
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(Recipient::as_age)).map_err(|e| fail(&e))?;
    let armor =
        age::armor::ArmoredWriter::wrap_output(Vec::new(), age::armor::Format::AsciiArmor).map_err(|e| fail(&e))?;
    let mut writer = encryptor.wrap_output(armor).map_err(|e| fail(&e))?;
    writer.write_all(plaintext).map_err(|e| fail(&e))?;
    writer.finish().and_then(|armor| armor.finish()).map_err(|e| fail(&e))
}

/// Decrypts, for install, each encrypted file of `manifest` that ships to a node or that
/// install itself uses (the SSH login key), from `existing` (files as verified on disk).
/// Keyed by the ciphertext's path.
///
/// # Errors
///
/// The first [`SecretsError`], naming the file.
pub fn decrypt_for_install(
    manifest: &Manifest,
    read: impl Fn(&str) -> Option<Vec<u8>>,
    identities: &Identities,
) -> Result<Plaintexts, SecretsError> {
    let mut out = BTreeMap::new();
    let login = layout::encrypted(layout::LOGIN_KEY);
    for (path, entry) in &manifest.files {
        if !entry.encrypted || (entry.nodes.is_empty() && *path != login) {
            continue;
        }
        let bytes =
            read(path).ok_or_else(|| SecretsError::Corrupt { path: path.clone(), problem: "missing".into() })?;
        out.insert(path.clone(), identities.decrypt(&bytes, path, &manifest.recipients)?);
    }
    Ok(Plaintexts(out))
}

/// Decrypted secrets in memory, by ciphertext path; never printed by `Debug`.
#[derive(Clone, Default)]
pub struct Plaintexts(pub BTreeMap<String, Vec<u8>>);

impl fmt::Debug for Plaintexts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (String, String) {
        let id = age::x25519::Identity::generate();
        (age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_string(), id.to_public().to_string())
    }

    fn sources_with(key_file: &Path) -> Sources {
        Sources { explicit: vec![key_file.to_path_buf()], ..Sources::default() }
    }

    #[test]
    fn encrypts_to_every_recipient_and_decrypts_with_any_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (a_secret, a_public) = key();
        let (b_secret, b_public) = key();
        let (parsed, _) = parse_recipients(&[a_public.clone(), b_public]).unwrap();
        let ct = encrypt(b"ca key", &parsed, "pki/ca.key.age").unwrap();
        assert!(ct.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
        for secret in [&a_secret, &b_secret] {
            let file = dir.path().join("k");
            std::fs::write(&file, format!("# created: now\n{secret}\n")).unwrap();
            let ids = Identities::load(&sources_with(&file), false).unwrap();
            assert_eq!(ids.decrypt(&ct, "x", &[]).unwrap(), b"ca key");
        }
        let (c_secret, _) = key();
        let file = dir.path().join("c");
        std::fs::write(&file, &c_secret).unwrap();
        let ids = Identities::load(&sources_with(&file), false).unwrap();
        let err = ids.decrypt(&ct, "pki/ca.key.age", std::slice::from_ref(&a_public)).unwrap_err().to_string();
        assert!(err.contains("pki/ca.key.age") && err.contains(&a_public) && err.contains("--identity"), "{err}");
        let mut damaged = ct.clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 1;
        assert!(ids.decrypt(&damaged, "x", &[]).is_err());
    }

    #[test]
    fn identities_are_looked_for_in_the_sops_order() {
        let home = tempfile::tempdir().unwrap();
        let (secret, _) = key();
        std::fs::create_dir_all(home.path().join(".config/sops/age")).unwrap();
        std::fs::write(home.path().join(".config/sops/age/keys.txt"), &secret).unwrap();
        let sources = Sources {
            vars: [("SOPS_AGE_KEY".to_string(), key().0)].into(),
            home: Some(home.path().to_path_buf()),
            ..Sources::default()
        };
        let ids = Identities::load(&sources, true).unwrap();
        assert_eq!(ids.found.len(), 2);
        let searched = ids.searched().join("\n");
        let order = [
            "--identity",
            "$HAKUBE_AGE_KEY_FILE: unset",
            "$SOPS_AGE_KEY_FILE: unset",
            "$SOPS_AGE_KEY: 1",
            "keys.txt: 1",
            "id_ed25519: absent",
            "id_rsa: absent",
        ];
        let mut at = 0;
        for what in order {
            let found = searched[at..].find(what).unwrap_or_else(|| panic!("{what} not after {at} in\n{searched}"));
            at += found;
        }
        // A variable naming a missing file is an error that names it.
        let bad = Sources {
            vars: [("SOPS_AGE_KEY_FILE".to_string(), "/nonexistent/k".to_string())].into(),
            ..Sources::default()
        };
        let err = Identities::load(&bad, false).unwrap_err().to_string();
        assert!(err.contains("$SOPS_AGE_KEY_FILE (/nonexistent/k)"), "{err}");
        // SSH keys are only looked at when a recipient is one.
        let ids = Identities::load(&Sources { home: Some(home.path().into()), ..Sources::default() }, false).unwrap();
        assert!(!ids.searched().join(" ").contains("id_ed25519"));
    }
}
