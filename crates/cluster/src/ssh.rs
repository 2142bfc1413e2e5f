//! The one rule for every value that reaches the OpenSSH client's command line: the
//! bastion (`-J`), node addresses (the destination), login users (`-l`), ports (`-p`) and
//! key paths (`-i`). Validation applies it to the definition with JSON paths; the
//! transport applies it again to each connection before it runs `ssh`.
//!
//! Why a rule and not an escape: OpenSSH clients before 10.3 turn `-J` into a
//! ProxyCommand (`ssh -l USER -p PORT -W '[%h]:%p' HOST`) that they run through `/bin/sh`,
//! so shell syntax in any part of a hop runs on the operator's machine; and a destination
//! starting with `-` is read as an option. Only values of the shapes below reach ssh.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// One ProxyJump hop, `[user@]host[:port]` (ssh_config(5) ProxyJump).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    /// The login user on the bastion; unset: ssh's default (~/.ssh/config or the local user).
    pub user: Option<String>,
    /// An RFC 1123 host name or an IP address.
    pub host: String,
    /// sshd's port on the bastion; unset: 22 or ~/.ssh/config.
    pub port: Option<u16>,
}

impl fmt::Display for JumpHost {
    /// `[user@]host[:port]`, an IPv6 address in brackets, as ProxyJump takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Why a value may not reach ssh's command line. The message says what was wrong; the
/// caller names the field and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshValueError {
    /// Not an RFC 1123 host name nor an IP address.
    #[error("{0:?} is neither an RFC 1123 host name nor an IP address")]
    Host(String),
    /// An IPv6 address written without brackets where a port may follow.
    #[error("{0:?} is an IPv6 address without brackets: write it as [{0}]")]
    UnbracketedIpv6(String),
    /// Not a login name of the accepted shape.
    #[error("{0:?} is not a valid login name")]
    User(String),
    /// Not a port number 1-65535 in decimal digits.
    #[error("{0:?} is not a port (1-65535)")]
    Port(String),
    /// A key path that is empty, starts with `-` or holds a control character.
    #[error("{path:?} {why}")]
    KeyPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A hop of a ProxyJump list that is wrong.
    #[error("hop {hop} is empty")]
    EmptyHop {
        /// 1-based.
        hop: usize,
    },
    /// A hop of a ProxyJump list with a wrong part.
    #[error("hop {hop} ({text:?}): {error}")]
    Hop {
        /// 1-based.
        hop: usize,
        /// The hop as written.
        text: String,
        /// The wrong part.
        error: Box<SshValueError>,
    },
}

/// What to write instead of a wrong `sshBastion`.
pub const JUMP_HOSTS_HELP: &str = "write [user@]host[:port], several separated by commas (OpenSSH ProxyJump, ssh_config(5)): host an RFC 1123 name or an IP address (IPv6 in brackets, [2001:db8::1]), user letters, digits, '_', '-' and '.', port 1-65535; an ssh:// URI or anything else is refused because OpenSSH before 10.3 runs the value through /bin/sh";

/// What to write instead of a wrong login user.
pub const USER_HELP: &str = "use letters, digits, '_', '-' and '.', not starting with '-'";

/// What to write instead of a wrong key path.
pub const KEY_PATH_HELP: &str =
    "give the path of a private key file (`~/` is expanded), not starting with '-' and without control characters";

/// Parses a ProxyJump list: comma-separated hops, each `[user@]host[:port]`
/// (ssh_config(5) ProxyJump; the URI form is not accepted).
///
/// # Errors
///
/// The first hop that is empty or has a wrong user, host or port.
pub fn parse_jump_hosts(text: &str) -> Result<Vec<JumpHost>, SshValueError> {
    if !text.contains(',') {
        return parse_jump_host(text).map(|hop| vec![hop]);
    }
    text.split(',')
        .enumerate()
        .map(|(i, hop)| {
            if hop.is_empty() {
                return Err(SshValueError::EmptyHop { hop: i + 1 });
            }
            parse_jump_host(hop).map_err(|error| SshValueError::Hop {
                hop: i + 1,
                text: hop.to_string(),
                error: Box::new(error),
            })
        })
        .collect()
}

/// One hop, `[user@]host[:port]`: the user is what precedes the last `@` and the host may
/// be an IPv6 address in brackets, as OpenSSH's own parser (`parse_user_host_port`) reads it.
fn parse_jump_host(hop: &str) -> Result<JumpHost, SshValueError> {
    let (user, rest) = match hop.rsplit_once('@') {
        Some((user, rest)) => (Some(user), rest),
        None => (None, hop),
    };
    if let Some(user) = user {
        check_login_user(user)?;
    }
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or_else(|| SshValueError::Host(rest.to_string()))?;
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(SshValueError::Host(addr.to_string()));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| SshValueError::Host(rest.to_string()))?),
        };
        (addr.to_string(), port)
    } else {
        if rest.matches(':').count() > 1 {
            return Err(match rest.parse::<Ipv6Addr>() {
                Ok(_) => SshValueError::UnbracketedIpv6(rest.to_string()),
                Err(_) => SshValueError::Host(rest.to_string()),
            });
        }
        let (host, port) = match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        check_host(host)?;
        (host.to_string(), port)
    };
    let port = port.map(parse_port).transpose()?;
    Ok(JumpHost { user: user.map(str::to_string), host, port })
}

/// A port as decimal digits, 1-65535 (Rust's integer parsing alone would take `+22`).
fn parse_port(text: &str) -> Result<u16, SshValueError> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 && !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(SshValueError::Port(text.to_string())),
    }
}

/// A port for `-p`: 1-65535.
///
/// # Errors
///
/// [`SshValueError::Port`] for 0.
pub fn check_port(port: u16) -> Result<(), SshValueError> {
    match port {
        0 => Err(SshValueError::Port("0".into())),
        _ => Ok(()),
    }
}

/// A host ssh connects to: an IP address (IPv4, or IPv6 without brackets) or an RFC 1123
/// host name (RFC 1123 section 2.1: letters, digits and `-`, dot-separated labels of at most
/// 63 characters, at most 253 in all; case-insensitive), so never an option (`-...`) and
/// never shell syntax.
///
/// # Errors
///
/// [`SshValueError::Host`] otherwise.
pub fn check_host(host: &str) -> Result<(), SshValueError> {
    if host.parse::<IpAddr>().is_ok() || crate::validate::is_dns1123_subdomain(&host.to_ascii_lowercase()) {
        Ok(())
    } else {
        Err(SshValueError::Host(host.to_string()))
    }
}

/// A login user (`sshLoginUser`, a hop's user): letters, digits, `_`, `-` and `.`, not
/// empty and not starting with `-`, so never an option and never shell syntax.
///
/// # Errors
///
/// [`SshValueError::User`] otherwise.
pub fn check_login_user(user: &str) -> Result<(), SshValueError> {
    if user.is_empty()
        || user.starts_with('-')
        || !user.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
    {
        Err(SshValueError::User(user.to_string()))
    } else {
        Ok(())
    }
}

/// A private key path for `-i`: not empty, not starting with `-` (read as an option by
/// programs that take it from the command line), without control characters (a NUL ends
/// the argument; a newline would start another ssh_config line where the path is written
/// into a configuration), and without `%` or `${`, which ssh expands in identity file
/// names (ssh_config(5) IdentityFile: "the tokens described in the TOKENS section and
/// environment variables as described in the ENVIRONMENT VARIABLES section").
///
/// # Errors
///
/// [`SshValueError::KeyPath`] saying which.
pub fn check_key_path(path: &str) -> Result<(), SshValueError> {
    let why = if path.is_empty() {
        "is empty and names no key"
    } else if path.starts_with('-') {
        "starts with '-', which ssh would read as an option"
    } else if path.chars().any(char::is_control) {
        "contains a control character (a NUL, a newline, ...)"
    } else if path.contains('%') || path.contains("${") {
        "contains '%' or '${', which ssh expands in file names (ssh_config(5) TOKENS, ENVIRONMENT VARIABLES)"
    } else {
        return Ok(());
    };
    Err(SshValueError::KeyPath { path: path.to_string(), why })
}

/// A file path as one ssh_config argument (`-o UserKnownHostsFile=...`): the rule of
/// [`check_key_path`], then enclosed in double quotes, which ssh_config(5) requires for an
/// argument containing spaces ("Arguments may optionally be enclosed in double quotes (\")
/// in order to represent arguments containing spaces"; unquoted, UserKnownHostsFile takes
/// each word as a separate file). A `"` or `\` in the path is refused rather than escaped,
/// since OpenSSH releases differ in the escapes they read.
///
/// # Errors
///
/// [`SshValueError::KeyPath`] saying what the path holds.
pub fn quote_config_path(path: &str) -> Result<String, SshValueError> {
    check_key_path(path)?;
    if path.contains(['"', '\\']) {
        return Err(SshValueError::KeyPath {
            path: path.to_string(),
            why: "contains '\"' or '\\', which ssh_config arguments cannot hold reliably",
        });
    }
    Ok(format!("\"{path}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hosts_parse_into_hops() {
        let hops = parse_jump_hosts("jump@bastion.example.com:2222,10.0.0.5,admin@[2001:db8::1]:22,[::1]").unwrap();
        assert_eq!(
            hops,
            vec![
                JumpHost { user: Some("jump".into()), host: "bastion.example.com".into(), port: Some(2222) },
                JumpHost { user: None, host: "10.0.0.5".into(), port: None },
                JumpHost { user: Some("admin".into()), host: "2001:db8::1".into(), port: Some(22) },
                JumpHost { user: None, host: "::1".into(), port: None },
            ]
        );
        let shown: Vec<String> = hops.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["jump@bastion.example.com:2222", "10.0.0.5", "admin@[2001:db8::1]:22", "[::1]"]);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "x$(cd;cd${IFS}..;id>canary)",
            "",
            "a,,b",
            "a,",
            "-oProxyCommand=id",
            "bastion;id",
            "`id`@bastion",
            "u$(id)@bastion",
            "-l@bastion",
            "bastion:0",
            "bastion:+22",
            "bastion:65536",
            "bastion:",
            "bastion:22:33",
            "2001:db8::1",
            "[2001:db8::1",
            "[bastion]:22",
            "[::1]x",
            "ssh://bastion",
            "bastion\n",
            "bas tion",
            "bastion.",
            "@bastion",
        ] {
            assert!(parse_jump_hosts(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_jump_hosts("2001:db8::1").unwrap_err().to_string(),
            "\"2001:db8::1\" is an IPv6 address without brackets: write it as [2001:db8::1]"
        );
        assert_eq!(
            parse_jump_hosts("a,b;c").unwrap_err().to_string(),
            "hop 2 (\"b;c\"): \"b;c\" is neither an RFC 1123 host name nor an IP address"
        );
        assert_eq!(parse_jump_hosts("a,,b").unwrap_err().to_string(), "hop 2 is empty");
    }

    #[test]
    fn hosts_users_ports_and_key_paths() {
        for good in ["10.0.0.1", "2001:db8::1", "Node-1.Example.com", "ip-10-1-0-10.ec2.internal"] {
            assert_eq!(check_host(good), Ok(()), "{good}");
        }
        for bad in ["-oProxyCommand=id", "a;b", "[::1]", "", "a b", "a_b"] {
            assert!(check_host(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_login_user("ubuntu").is_ok() && check_login_user("svc.hakube_1").is_ok());
        for bad in ["", "-oX", "a b", "a;b", "$(id)", "é"] {
            assert!(check_login_user(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_port(0).is_err() && check_port(22).is_ok());
        assert!(check_key_path("~/.ssh/id_ed25519").is_ok() && check_key_path("/a b/key").is_ok());
        for bad in ["", "-oProxyCommand=id", "/k\nProxyCommand id", "/k\0", "/k\r", "%d/.ssh/k", "${HOME}/k"] {
            assert!(check_key_path(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(quote_config_path("/a b/known_hosts").unwrap(), "\"/a b/known_hosts\"");
        for bad in ["/a\"b", "/a\\b", "/a%b", "/a\nb"] {
            assert!(quote_config_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
