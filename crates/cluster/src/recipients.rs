//! age recipients as the definition's `secrets.recipients` names them: the one parser
//! validation and render both use, so a recipient that validates is one render can
//! encrypt to.
//!
//! The age format (<https://age-encryption.org/v1>, and the age crate that implements it)
//! defines X25519 recipients, Bech32 strings `age1...`, and the SSH recipient types
//! `ssh-ed25519` and `ssh-rsa` (an RSA modulus of at least 2048 bits), given as an
//! authorized_keys line whose trailing comment is ignored.

use std::str::FromStr;

/// One parsed recipient.
pub enum Recipient {
    /// An X25519 public key, `age1...`.
    X25519(age::x25519::Recipient),
    /// An SSH public key (`ssh-ed25519` or `ssh-rsa`).
    Ssh(age::ssh::Recipient),
}

impl Recipient {
    /// Whether it is an SSH key (then the user's SSH private keys are among the identities
    /// looked for).
    pub fn is_ssh(&self) -> bool {
        matches!(self, Recipient::Ssh(_))
    }

    /// As the age crate encrypts to it.
    pub fn as_age(&self) -> &dyn age::Recipient {
        match self {
            Recipient::X25519(r) => r,
            Recipient::Ssh(r) => r,
        }
    }

    /// The canonical text: `age1...`, or `<type> <base64>` without the comment.
    pub fn canonical(&self) -> String {
        match self {
            Recipient::X25519(r) => r.to_string(),
            Recipient::Ssh(r) => r.to_string(),
        }
    }
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// Parses one recipient.
///
/// # Errors
///
/// A sentence saying what the text is not (for a diagnostic at its JSON path).
pub fn parse(text: &str) -> Result<Recipient, String> {
    let text = text.trim();
    if text.starts_with("age1") {
        return age::x25519::Recipient::from_str(text)
            .map(Recipient::X25519)
            .map_err(|e| format!("not an age X25519 recipient: {e}"));
    }
    if text.starts_with("ssh-") {
        use age::ssh::ParseRecipientKeyError as E;
        return age::ssh::Recipient::from_str(text).map(Recipient::Ssh).map_err(|e| match e {
            E::RsaModulusTooSmall => "an ssh-rsa key under 2048 bits, which age refuses".to_string(),
            E::RsaModulusTooLarge => "an ssh-rsa key larger than age supports".to_string(),
            E::Unsupported(kind) => format!("a {kind} key; age encrypts to ssh-ed25519 and ssh-rsa keys only"),
            E::Ignore | E::Invalid(_) => "not a valid SSH public key".to_string(),
            _ => "not a usable SSH public key".to_string(),
        });
    }
    Err("neither an age recipient (age1...) nor an SSH public key (ssh-ed25519 AAAA..., ssh-rsa AAAA...)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_parses_and_garbage_is_named() {
        let x = age::x25519::Identity::generate().to_public().to_string();
        assert!(!parse(&x).unwrap().is_ssh());
        assert_eq!(parse(&format!(" {x} ")).unwrap().canonical(), x);
        // An ed25519 public key as ssh-keygen prints it, with a comment.
        let ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH1lPLvQHRoBXITQYyL6KLVGpgdO1pZySgqGuh1oBpSo ops@example";
        let r = parse(ssh).unwrap();
        assert!(r.is_ssh());
        assert!(!r.canonical().contains("ops@example"));
        assert!(parse("age1notbech32").unwrap_err().contains("X25519"));
        assert!(parse("ssh-ed25519 AAAA").unwrap_err().contains("SSH public key"));
        assert!(parse("ssh-dss AAAAB3NzaC1kc3MAAACBAP").is_err());
        assert!(parse("AGE-SECRET-KEY-1XYZ").unwrap_err().contains("neither"));
    }
}
