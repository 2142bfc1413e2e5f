//! Ed25519 SSH keys in OpenSSH's formats: the installer's login key pair, the
//! pre-generated host key of every node, and the `known_hosts` lines that pin them.
//!
//! Keys are Ed25519 only: generating one costs microseconds, so a key per node is cheap
//! even for a thousand nodes.

use std::fmt;

use openssl::error::ErrorStack;
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey, PublicKey};

/// An Ed25519 key pair in OpenSSH's formats. `Debug` never shows the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct SshKeyPair {
    /// The private key, `-----BEGIN OPENSSH PRIVATE KEY-----` (unencrypted, LF line
    /// endings, trailing newline); a secret.
    pub private_openssh: String,
    /// The public key line, `ssh-ed25519 AAAA... <comment>` (no trailing newline; no
    /// comment field when the comment is empty).
    pub public_line: String,
}

impl fmt::Debug for SshKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshKeyPair")
            .field("private_openssh", &"<redacted>")
            .field("public_line", &self.public_line)
            .finish()
    }
}

/// What went wrong making or reading an SSH key.
#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    /// The CSPRNG failed.
    #[error("failed to generate the ed25519 key {comment:?}")]
    Generate {
        /// The comment of the key being made (it names the key's purpose).
        comment: String,
        /// OpenSSL's error queue.
        #[source]
        source: ErrorStack,
    },
    /// Encoding in OpenSSH format failed.
    #[error("failed to encode the ed25519 key {comment:?} in OpenSSH format")]
    Encode {
        /// The comment of the key being encoded.
        comment: String,
        /// The encoder's error.
        #[source]
        source: ssh_key::Error,
    },
    /// The text is not an OpenSSH private key.
    #[error("failed to parse an OpenSSH private key")]
    Parse(#[source] ssh_key::Error),
}

/// A new Ed25519 key pair: a 32-byte seed from OpenSSL's CSPRNG (`RAND_bytes`), encoded
/// by the `ssh-key` crate. `comment` goes into both halves (OpenSSH shows it, e.g.
/// `hakube@cluster` or `root@node-1`).
///
/// # Errors
///
/// [`SshKeyError::Generate`] when the CSPRNG fails, [`SshKeyError::Encode`] when encoding
/// fails.
pub fn generate_ed25519(comment: &str) -> Result<SshKeyPair, SshKeyError> {
    let mut seed = [0u8; 32];
    openssl::rand::rand_bytes(&mut seed)
        .map_err(|source| SshKeyError::Generate { comment: comment.to_owned(), source })?;
    let keypair = Ed25519Keypair::from_seed(&seed);
    let encode_error = |source| SshKeyError::Encode { comment: comment.to_owned(), source };
    let key = PrivateKey::new(KeypairData::Ed25519(keypair), comment).map_err(encode_error)?;
    let private_openssh = key.to_openssh(LineEnding::LF).map_err(encode_error)?.to_string();
    let public_line = key.public_key().to_openssh().map_err(encode_error)?;
    Ok(SshKeyPair { private_openssh, public_line })
}

/// The public key line (`<type> AAAA... [comment]`) of an OpenSSH private key, as
/// `ssh-keygen -y` prints it; works on encrypted keys too (the public half is stored in
/// the clear). Used to derive `id_ed25519.pub` / a host key's `.pub` from an existing key.
///
/// # Errors
///
/// [`SshKeyError::Parse`] when the text is not an OpenSSH private key.
pub fn public_line_of(private_openssh: &str) -> Result<String, SshKeyError> {
    let key = PrivateKey::from_openssh(private_openssh).map_err(SshKeyError::Parse)?;
    let public: &PublicKey = key.public_key();
    public.to_openssh().map_err(SshKeyError::Parse)
}

/// One `known_hosts` line: the host patterns joined by `,`, then the key type and base64
/// key from `public_line` (its comment dropped), e.g.
/// `203.0.113.5,10.0.0.5,master-1 ssh-ed25519 AAAA...`. Patterns are written as given
/// (not hashed); a `public_line` with fewer than two fields is copied as it is.
pub fn known_hosts_line(host_patterns: &[&str], public_line: &str) -> String {
    let key: Vec<&str> = public_line.split_whitespace().take(2).collect();
    format!("{} {}", host_patterns.join(","), key.join(" "))
}
