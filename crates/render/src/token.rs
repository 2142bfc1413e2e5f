//! The kubeadm bootstrap token nodes join with: `id.secret`.
//!
//! The id is public (it names the token Secret `bootstrap-token-<id>` in kube-system);
//! the secret is not. [`BootstrapToken`] has no `Display` and its `Debug` hides the
//! secret, so the whole token is only ever written out through [`BootstrapToken::expose`].

use std::fmt;

use openssl::error::ErrorStack;

/// The characters of a token, kubeadm's `[a-z0-9]`.
const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// Length of the id, kubeadm's `BootstrapTokenIDBytes`.
const ID_LEN: usize = 6;
/// Length of the secret, kubeadm's `BootstrapTokenSecretBytes`.
const SECRET_LEN: usize = 16;

/// A bootstrap token matching kubeadm's `BootstrapTokenRegexp`,
/// `^[a-z0-9]{6}\.[a-z0-9]{16}$`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

/// What went wrong making or reading a bootstrap token. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The CSPRNG failed.
    #[error("failed to generate a bootstrap token")]
    Generate(#[source] ErrorStack),
    /// The text is not `[a-z0-9]{6}.[a-z0-9]{16}`.
    #[error(
        "failed to parse the bootstrap token: expected 6 characters [a-z0-9], a dot and 16 characters \
         [a-z0-9] (23 characters), got {length} characters that do not match"
    )]
    Parse {
        /// How many characters the rejected text had (the text itself may be a secret).
        length: usize,
    },
}

impl BootstrapToken {
    /// A new random token: 22 characters drawn uniformly from `[a-z0-9]` with OpenSSL's
    /// CSPRNG (`RAND_bytes`), by rejection sampling (bytes >= 252 are dropped, so that
    /// `byte % 36` has no bias).
    ///
    /// # Errors
    ///
    /// [`TokenError::Generate`] when the CSPRNG fails.
    pub fn generate() -> Result<Self, TokenError> {
        let mut chars = random_chars(ID_LEN + SECRET_LEN).map_err(TokenError::Generate)?;
        let secret = chars.split_off(ID_LEN);
        Ok(Self { id: chars, secret })
    }

    /// Reads a token `id.secret`, exactly as kubeadm's `BootstrapTokenRegexp` accepts it
    /// (no surrounding whitespace).
    ///
    /// # Errors
    ///
    /// [`TokenError::Parse`], which never repeats the input.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let valid = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| ALPHABET.contains(&b));
        match text.split_once('.') {
            Some((id, secret)) if valid(id, ID_LEN) && valid(secret, SECRET_LEN) => {
                Ok(Self { id: id.to_owned(), secret: secret.to_owned() })
            }
            _ => Err(TokenError::Parse { length: text.chars().count() }),
        }
    }

    /// The public token id (6 characters).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The token secret (16 characters). Never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The whole token `id.secret`, for writing to the secret file it lives in.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

fn random_chars(count: usize) -> Result<String, ErrorStack> {
    // The largest multiple of 36 that fits in a byte; bytes at or above it are rejected.
    const LIMIT: u8 = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut out = String::with_capacity(count);
    let mut buf = [0u8; 32];
    while out.len() < count {
        openssl::rand::rand_bytes(&mut buf)?;
        for &byte in buf.iter().filter(|&&byte| byte < LIMIT) {
            if out.len() == count {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_limit_is_the_largest_multiple_of_36_in_a_byte() {
        assert_eq!((256 / ALPHABET.len() * ALPHABET.len()) as u8, 252);
    }

    #[test]
    fn parse_error_never_repeats_the_input() {
        let err = BootstrapToken::parse("abcdef.0123456789ABCDEF").unwrap_err();
        assert!(!err.to_string().contains("0123456789"), "{err}");
    }
}
