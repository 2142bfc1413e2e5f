//! SSH to one node: the `openssh` crate over the system's OpenSSH client, one
//! multiplexed connection (ControlMaster) per node for all its commands, so the user's
//! ~/.ssh/config, ProxyJump and ssh-agent work as they do for `ssh` itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hakube_cluster::definition::HostKeyPolicy;
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

/// How to reach one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node's name (for messages).
    pub node: String,
    /// Address to connect to (publicIP, else privateIP).
    pub host: String,
    /// Login user; commands go through `sudo -n` unless it is root.
    pub user: String,
    /// sshd's port.
    pub port: u16,
    /// Private key to log in with (`IdentitiesOnly`); `None`: the agent and ~/.ssh/config decide.
    pub key: Option<PathBuf>,
    /// The ssh-agent socket to use instead of `$SSH_AUTH_SOCK` (hakube's own agent holding
    /// an encrypted-at-rest login key).
    pub agent: Option<PathBuf>,
    /// ProxyJump destinations, `[user@]host[:port]`.
    pub jump_hosts: Vec<String>,
    /// The known_hosts file host keys are checked against (and, under `accept-new`,
    /// recorded into).
    pub known_hosts: PathBuf,
    /// Strict or accept-new.
    pub policy: HostKeyPolicy,
}

/// Why talking to a node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The node's host key differs from the pinned one. Never retried.
    #[error("host key of {node} ({host}) does not match {known_hosts}: the machine was replaced or someone is in between; if the change is expected, remove its line from that file")]
    HostKeyChanged {
        /// The node.
        node: String,
        /// Its address.
        host: String,
        /// The known_hosts file.
        known_hosts: String,
    },
    /// The node's host key is not known and the policy is strict. Never retried.
    #[error("host key of {node} ({host}) is not in {known_hosts} and hostKeyPolicy is strict: install the host key render generated (ssh/host-keys/{node}/) on the machine, or set hostKeyPolicy to accept-new to trust it on first contact")]
    HostKeyUnknown {
        /// The node.
        node: String,
        /// Its address.
        host: String,
        /// The known_hosts file.
        known_hosts: String,
    },
    /// The server refused our credentials. Never retried.
    #[error("failed to log in to {node} as {user}: {detail}")]
    Auth {
        /// The node.
        node: String,
        /// The login user.
        user: String,
        /// What ssh said.
        detail: String,
    },
    /// The connection could not be made (refused, timed out, dropped); retried with backoff.
    #[error("failed to connect to {node} ({host}:{port}): {detail}")]
    Connect {
        /// The node.
        node: String,
        /// Its address.
        host: String,
        /// Its port.
        port: u16,
        /// What ssh said.
        detail: String,
    },
    /// sudo wanted a password.
    #[error("login user {user} on {node} needs passwordless sudo (sudo -n asked for a password); add a NOPASSWD sudoers rule or log in as root")]
    SudoPassword {
        /// The node.
        node: String,
        /// The login user.
        user: String,
    },
    /// A value of the target would reach ssh's command line in a shape ssh could misread
    /// (an option, shell syntax in a ProxyJump hop, a split path): refused before ssh runs
    /// (the rule of `hakube_cluster::ssh`, which validation applies to the definition).
    /// Never retried.
    #[error("refusing to run ssh for {node}: its {what} {detail}")]
    Refused {
        /// The node.
        node: String,
        /// Which value (`host`, `user`, `port`, `key`, `ProxyJump`, `known_hosts`).
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A command could not be run or its output read.
    #[error("failed to run {what} on {node}: {detail}")]
    Command {
        /// The node.
        node: String,
        /// Which command.
        what: String,
        /// What went wrong.
        detail: String,
    },
}

impl TransportError {
    /// Whether trying again may help (only plain connection failures).
    pub fn is_retryable(&self) -> bool {
        matches!(self, TransportError::Connect { .. })
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How long a node's ControlMaster stays up with no command running over it
/// (`ControlPersist=300s`, ssh_config(5)). The openssh crate's default is `yes`, forever:
/// after a SIGKILL of hakube (nothing closes them then) the masters lived on. With this
/// bound a master left behind exits five minutes after its last command ended; the runner
/// closes every master itself on each way out ([`Connection::close`]) and opens a new one
/// for a node whose master went away in between ([`Connection::is_alive`]).
pub const CONTROL_PERSIST_IDLE: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(300) {
    Some(n) => n,
    None => unreachable!(),
};

/// The interval of ssh's keepalives over the master connection (`ServerAliveInterval`);
/// with OpenSSH's default `ServerAliveCountMax` of 3, a master whose node stopped answering
/// exits after the fourth unanswered probe (ssh_config(5): after `ServerAliveCountMax`
/// probes are missed), about 60 seconds after the last data as the lab measured it, instead
/// of waiting for TCP to give up.
pub const SERVER_ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// An open, multiplexed connection to one node.
pub struct Connection {
    target: Target,
    session: Session,
}

fn error_text(err: &openssh::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The longest runtime directory the control directory goes into: the socket is
/// `DIR/hkXXXXXX/.ssh-connectionXXXXXX/master` (about 40 more bytes), and a Unix socket's
/// path has at most 108 bytes on Linux and 104 on macOS (`sun_path`, unix(7)).
const MAX_RUNTIME_DIR_LEN: usize = 60;

/// A new directory for the ControlMaster sockets: mode 0700 whatever the umask, owned by
/// the caller, in `runtime_dir` (pass `$XDG_RUNTIME_DIR`) when that is a usable private
/// directory (absolute, short enough for a socket path, a path ssh takes as it is, owned by
/// the caller and not open to group or others, as the XDG Base Directory Specification
/// requires of it), else in /tmp. Removed when the returned value is dropped.
///
/// Whoever can write to the directory can replace the socket and read or feed everything
/// sent over the connection, the files install ships included.
///
/// # Errors
///
/// When the directory cannot be created, or is not ours with mode 0700 afterwards.
pub fn control_directory(runtime_dir: Option<&std::ffi::OsStr>) -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let private = |path: &Path| {
        std::fs::metadata(path)
            .is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::getuid().as_raw() && m.mode() & 0o077 == 0)
    };
    let base = runtime_dir
        .map(Path::new)
        .filter(|dir| {
            dir.is_absolute()
                && dir.as_os_str().len() <= MAX_RUNTIME_DIR_LEN
                && dir.to_str().is_some_and(|t| hakube_cluster::ssh::check_key_path(t).is_ok())
                && private(dir)
        })
        .unwrap_or(Path::new("/tmp"));
    let dir =
        tempfile::Builder::new().prefix("hk").permissions(std::fs::Permissions::from_mode(0o700)).tempdir_in(base)?;
    // mkdir's mode is masked by the umask, never widened: set it exactly, then check.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    let meta = std::fs::symlink_metadata(dir.path())?;
    if !meta.is_dir() || meta.uid() != rustix::process::getuid().as_raw() || meta.mode() & 0o7777 != 0o700 {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of mode 0700 owned by this user",
            dir.path().display()
        )));
    }
    Ok(dir)
}

impl Target {
    /// Checks every value that goes onto ssh's command line by the rule validation applies
    /// to the definition (`hakube_cluster::ssh`): the destination is an IP address or an RFC
    /// 1123 name, the user a login name, the port 1-65535, each ProxyJump hop
    /// `[user@]host[:port]`, the key and known_hosts paths free of what ssh would read as an
    /// option, a token or a second argument. Returns the known_hosts file as the quoted
    /// ssh_config argument to pass.
    ///
    /// # Errors
    ///
    /// [`TransportError::Refused`] naming the value.
    pub fn checked(&self) -> Result<String, TransportError> {
        use hakube_cluster::ssh;
        let refuse =
            |what: &'static str, detail: String| TransportError::Refused { node: self.node.clone(), what, detail };
        ssh::check_host(&self.host).map_err(|e| refuse("host", e.to_string()))?;
        ssh::check_login_user(&self.user).map_err(|e| refuse("user", e.to_string()))?;
        ssh::check_port(self.port).map_err(|e| refuse("port", e.to_string()))?;
        for hop in &self.jump_hosts {
            match ssh::parse_jump_hosts(hop) {
                Ok(hops) if hops.len() == 1 => {}
                Ok(_) => return Err(refuse("ProxyJump", format!("hop {hop:?} holds more than one hop"))),
                Err(e) => return Err(refuse("ProxyJump", format!("hop {hop:?}: {e}"))),
            }
        }
        if let Some(key) = &self.key {
            let text = key.to_str().ok_or_else(|| refuse("key", format!("{} is not UTF-8", key.display())))?;
            ssh::check_key_path(text).map_err(|e| refuse("key", e.to_string()))?;
        }
        known_hosts_argument(&self.known_hosts).map_err(|detail| refuse("known_hosts", detail))
    }
}

/// `path` as the value of ssh's `-o UserKnownHostsFile=`: made absolute (ssh would expand a
/// leading `~`), then quoted as ssh_config(5) requires for an argument with spaces
/// (`hakube_cluster::ssh::quote_config_path`).
fn known_hosts_argument(path: &Path) -> Result<String, String> {
    let absolute = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = absolute.to_str().ok_or_else(|| format!("{} is not UTF-8", absolute.display()))?;
    hakube_cluster::ssh::quote_config_path(text)
        .map_err(|e| format!("{e}: use an assets directory whose path has none of them"))
}

impl Connection {
    /// Opens the control connection; `control_dir` holds its socket (keep the path short:
    /// Unix sockets allow ~100 bytes).
    ///
    /// # Errors
    ///
    /// A [`TransportError`] that says whether it was the host key, the login or the
    /// network; only the last is worth retrying. [`TransportError::Refused`], before ssh runs, when a value of the target is not one
    /// ssh may be given ([`Target::checked`]).
    pub async fn connect(target: &Target, control_dir: &Path) -> Result<Connection, TransportError> {
        let known_hosts = target.checked()?;
        let mut builder = SessionBuilder::default();
        builder
            .user(target.user.clone())
            .port(target.port)
            .known_hosts_check(match target.policy {
                HostKeyPolicy::Strict => KnownHosts::Strict,
                HostKeyPolicy::AcceptNew => KnownHosts::Add,
            })
            .user_known_hosts_file(Path::new(&known_hosts))
            .connect_timeout(std::time::Duration::from_secs(10))
            .server_alive_interval(SERVER_ALIVE_INTERVAL)
            .control_persist(ControlPersist::IdleFor(CONTROL_PERSIST_IDLE))
            .control_directory(control_dir);
        if let Some(key) = &target.key {
            builder.keyfile(key);
        }
        if let Some(agent) = &target.agent {
            builder.ssh_auth_sock(agent);
        }
        if !target.jump_hosts.is_empty() {
            builder.jump_hosts(&target.jump_hosts);
        }
        let session = builder.connect(&target.host).await.map_err(|e| classify(target, &e))?;
        Ok(Connection { target: target.clone(), session })
    }

    /// The program and leading arguments that run `program` as root on the node.
    fn root_command(&self, program: &str) -> openssh::OwningCommand<&Session> {
        if self.target.user == "root" {
            self.session.command(program)
        } else {
            let mut cmd = self.session.command("sudo");
            cmd.arg("-n").arg("--").arg(program);
            cmd
        }
    }

    /// Runs `program args...` as root on the node (arguments are escaped for the remote
    /// shell by the openssh crate, never spliced), feeding `stdin` to it and every
    /// output line to `on_line` as it arrives. Returns the exit code (`None` when the
    /// remote process was killed by a signal).
    ///
    /// # Errors
    ///
    /// [`TransportError::SudoPassword`] when sudo asked for a password;
    /// [`TransportError::Command`] when the command could not be run or read.
    pub async fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<Vec<u8>>,
        mut on_line: impl FnMut(Stream, &str),
    ) -> Result<Option<i32>, TransportError> {
        let what = format!("{program} {}", args.join(" "));
        let fail = |detail: String| TransportError::Command {
            node: self.target.node.clone(),
            what: what.trim().to_string(),
            detail,
        };
        let mut cmd = self.root_command(program);
        cmd.args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().await.map_err(|e| fail(error_text(&e)))?;
        let writer = match (child.stdin().take(), stdin) {
            (Some(mut pipe), Some(bytes)) => Some(tokio::spawn(async move {
                let r = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
                r
            })),
            _ => None,
        };
        let stdout = child.stdout().take().ok_or_else(|| fail("no stdout".into()))?;
        let stderr = child.stderr().take().ok_or_else(|| fail("no stderr".into()))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Stream, String)>();
        let pumps = [spawn_lines(stdout, Stream::Stdout, tx.clone()), spawn_lines(stderr, Stream::Stderr, tx)];
        let mut sudo_password = false;
        while let Some((stream, line)) = rx.recv().await {
            if stream == Stream::Stderr
                && self.target.user != "root"
                && line.starts_with("sudo:")
                && line.contains("password")
            {
                sudo_password = true;
            }
            on_line(stream, &line);
        }
        for pump in pumps {
            let _ = pump.await;
        }
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        // The openssh crate turns a remote exit status of 127 (the shell's "command not found")
        // into this error rather than a status (openssh 0.11 process_impl/child.rs `wait`):
        // it is the command's exit code, and the caller names what is missing.
        let status = match child.wait().await {
            Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound && !sudo_password => {
                return Ok(Some(127))
            }
            other => other.map_err(|e| fail(error_text(&e)))?,
        };
        if sudo_password {
            return Err(TransportError::SudoPassword {
                node: self.target.node.clone(),
                user: self.target.user.clone(),
            });
        }
        Ok(status.code())
    }

    /// Runs `program args...` as root on the node and hands its standard output to
    /// `on_bytes` in the chunks it arrives in, unsplit (so a caller can count bytes exactly,
    /// as `step.sh follow` offsets need); standard error comes back as text. Returns the exit
    /// code (`None`: killed by a signal, or the connection dropped before it ended).
    ///
    /// # Errors
    ///
    /// [`TransportError::SudoPassword`]; [`TransportError::Command`] when the command could
    /// not be started.
    pub async fn stream(
        &self,
        program: &str,
        args: &[String],
        mut on_bytes: impl FnMut(&[u8]),
    ) -> Result<(Option<i32>, String), TransportError> {
        use tokio::io::AsyncReadExt;
        let what = format!("{program} {}", args.join(" "));
        let fail = |detail: String| TransportError::Command {
            node: self.target.node.clone(),
            what: what.trim().to_string(),
            detail,
        };
        let mut cmd = self.root_command(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().await.map_err(|e| fail(error_text(&e)))?;
        let mut stdout = child.stdout().take().ok_or_else(|| fail("no stdout".into()))?;
        let mut stderr = child.stderr().take().ok_or_else(|| fail("no stderr".into()))?;
        let errors = tokio::spawn(async move {
            let mut errors = Vec::new();
            let _ = stderr.read_to_end(&mut errors).await;
            errors
        });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => on_bytes(&buf[..n]),
            }
        }
        let errors = String::from_utf8_lossy(&errors.await.unwrap_or_default()).trim().to_string();
        if self.target.user != "root" && errors.starts_with("sudo:") && errors.contains("password") {
            return Err(TransportError::SudoPassword {
                node: self.target.node.clone(),
                user: self.target.user.clone(),
            });
        }
        let code = match child.wait().await {
            Ok(status) => status.code(),
            Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => Some(127),
            Err(_) => None,
        };
        Ok((code, errors))
    }

    /// The bytes of file `path` on the node, read as root (`cat -- PATH`), for files that are
    /// not text (an etcd snapshot); at most `limit` bytes.
    ///
    /// # Errors
    ///
    /// [`TransportError::Command`] when the file cannot be read (the message holds what cat
    /// said), is larger than `limit`, or the command cannot run; [`TransportError::SudoPassword`].
    pub async fn read_file(&self, path: &str, limit: u64) -> Result<Vec<u8>, TransportError> {
        use tokio::io::AsyncReadExt;
        let fail = |detail: String| TransportError::Command {
            node: self.target.node.clone(),
            what: format!("cat {path}"),
            detail,
        };
        let mut cmd = self.root_command("cat");
        cmd.arg("--").arg(path).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().await.map_err(|e| fail(error_text(&e)))?;
        let mut stdout = child.stdout().take().ok_or_else(|| fail("no stdout".into()))?;
        let mut stderr = child.stderr().take().ok_or_else(|| fail("no stderr".into()))?;
        let mut bytes = Vec::new();
        let mut errors = Vec::new();
        let mut limited = (&mut stdout).take(limit + 1);
        let (read, _) = tokio::join!(limited.read_to_end(&mut bytes), stderr.read_to_end(&mut errors));
        read.map_err(|e| fail(e.to_string()))?;
        let errors = String::from_utf8_lossy(&errors).trim().to_string();
        if bytes.len() as u64 > limit {
            return Err(fail(format!("it is larger than {limit} bytes")));
        }
        let status = child.wait().await.map_err(|e| fail(error_text(&e)))?;
        if self.target.user != "root" && errors.starts_with("sudo:") && errors.contains("password") {
            return Err(TransportError::SudoPassword {
                node: self.target.node.clone(),
                user: self.target.user.clone(),
            });
        }
        if !status.success() {
            return Err(fail(if errors.is_empty() { format!("exit status {:?}", status.code()) } else { errors }));
        }
        Ok(bytes)
    }

    /// Whether the control connection still answers (`ssh -O check`); false once the
    /// master exited, after [`CONTROL_PERSIST_IDLE`] or because the node went away.
    pub async fn is_alive(&self) -> bool {
        self.session.check().await.is_ok()
    }

    /// Closes the control connection: the master exits (`ssh -O exit`) and its socket
    /// directory is removed.
    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

fn spawn_lines(
    reader: impl AsyncRead + Unpin + Send + 'static,
    stream: Stream,
    tx: tokio::sync::mpsc::UnboundedSender<(Stream, String)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let _ = tx.send((stream, line.trim_end_matches(['\n', '\r']).to_string()));
                }
            }
        }
    })
}

/// Sorts an ssh failure into host key, login or network trouble, from what ssh printed.
fn classify(target: &Target, err: &openssh::Error) -> TransportError {
    let text = error_text(err);
    let known_hosts = target.known_hosts.display().to_string();
    if text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || text.contains("Host key for") && text.contains("has changed")
    {
        TransportError::HostKeyChanged { node: target.node.clone(), host: target.host.clone(), known_hosts }
    } else if text.contains("Host key verification failed")
        || text.contains("No ED25519 host key is known")
        || text.contains("host key is known")
    {
        TransportError::HostKeyUnknown { node: target.node.clone(), host: target.host.clone(), known_hosts }
    } else if text.contains("Permission denied") || text.contains("Too many authentication failures") {
        TransportError::Auth { node: target.node.clone(), user: target.user.clone(), detail: text }
    } else {
        TransportError::Connect {
            node: target.node.clone(),
            host: target.host.clone(),
            port: target.port,
            detail: text,
        }
    }
}

/// What the runner needs of a way to reach nodes: [`crate::runner::OpenSsh`] over the system's ssh client,
/// or a fake in tests. One call is one attempt; the runner retries a retryable error
/// ([`TransportError::is_retryable`]) with backoff and reports each attempt.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// Opens a connection to `node` (a node of the manifest).
    ///
    /// # Errors
    ///
    /// A [`TransportError`] saying whether it was the host key, the login or the network.
    async fn connect(&self, node: &str) -> Result<Arc<dyn NodeConnection>, TransportError>;
}

/// An open connection to one node: commands run as root there.
#[async_trait::async_trait]
pub trait NodeConnection: Send + Sync {
    /// Runs `program args...` as root, feeding `stdin` and every output line to `on_line`;
    /// the exit code (`None`: killed by a signal). See [`Connection::run`].
    async fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<Vec<u8>>,
        on_line: &mut (dyn for<'l> FnMut(Stream, &'l str) + Send),
    ) -> Result<Option<i32>, TransportError>;
    /// Runs `program args...` as root and hands its standard output to `on_bytes` unsplit;
    /// the exit code (`None`: a signal, or the connection dropped) and standard error. See
    /// [`Connection::stream`].
    async fn stream(
        &self,
        program: &str,
        args: &[String],
        on_bytes: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<(Option<i32>, String), TransportError>;
    /// The bytes of file `path`, at most `limit`. See [`Connection::read_file`].
    async fn read_file(&self, path: &str, limit: u64) -> Result<Vec<u8>, TransportError>;
    /// Whether the connection still answers.
    async fn is_alive(&self) -> bool;
    /// Closes it (the last holder's call closes; others only drop their share).
    async fn close(self: Arc<Self>);
}

#[async_trait::async_trait]
impl NodeConnection for Connection {
    async fn run(
        &self,
        program: &str,
        args: &[String],
        stdin: Option<Vec<u8>>,
        on_line: &mut (dyn for<'l> FnMut(Stream, &'l str) + Send),
    ) -> Result<Option<i32>, TransportError> {
        Connection::run(self, program, args, stdin, |s, l| on_line(s, l)).await
    }

    async fn stream(
        &self,
        program: &str,
        args: &[String],
        on_bytes: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<(Option<i32>, String), TransportError> {
        Connection::stream(self, program, args, |b| on_bytes(b)).await
    }

    async fn read_file(&self, path: &str, limit: u64) -> Result<Vec<u8>, TransportError> {
        Connection::read_file(self, path, limit).await
    }

    async fn is_alive(&self) -> bool {
        Connection::is_alive(self).await
    }

    async fn close(self: Arc<Self>) {
        if let Ok(conn) = Arc::try_unwrap(self) {
            Connection::close(conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            node: "w0".into(),
            host: "10.0.0.20".into(),
            user: "ubuntu".into(),
            port: 22,
            key: Some(PathBuf::from("/home/me/.ssh/id_ed25519")),
            agent: None,
            jump_hosts: vec!["jump@bastion.example.com:2222".into()],
            known_hosts: PathBuf::from("/home/me/assets/ssh/known_hosts"),
            policy: HostKeyPolicy::Strict,
        }
    }

    /// Every value that reaches ssh's command line follows hakube_cluster::ssh's rule, checked
    /// again here before ssh runs, whatever built the target (issue 11, item 1).
    #[tokio::test]
    async fn a_target_with_a_value_ssh_would_misread_is_refused_before_ssh_runs() {
        let control = tempfile::tempdir().unwrap();
        let canary = control.path().join("canary");
        type Change<'a> = Box<dyn Fn(&mut Target) + 'a>;
        let bad: Vec<(&str, Change<'_>)> = vec![
            ("ProxyJump", Box::new(|t| t.jump_hosts = vec![format!("x$(touch {})", canary.display())])),
            ("ProxyJump", Box::new(|t| t.jump_hosts = vec!["a,b".into()])),
            ("host", Box::new(|t| t.host = "-oProxyCommand=id".into())),
            ("user", Box::new(|t| t.user = "-oProxyCommand=id".into())),
            ("port", Box::new(|t| t.port = 0)),
            ("key", Box::new(|t| t.key = Some(PathBuf::from("-oProxyCommand=id")))),
            ("key", Box::new(|t| t.key = Some(PathBuf::from("/k\nProxyCommand id")))),
            ("known_hosts", Box::new(|t| t.known_hosts = PathBuf::from("/a\"b/known_hosts"))),
            ("known_hosts", Box::new(|t| t.known_hosts = PathBuf::from("/a%d/known_hosts"))),
        ];
        for (what, change) in bad {
            let mut t = target();
            change(&mut t);
            let err = Connection::connect(&t, control.path()).await.err().expect("connected");
            assert!(matches!(err, TransportError::Refused { .. }), "{what}: {err}");
            assert!(!err.is_retryable(), "{err}");
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
        assert!(!canary.exists(), "a shell ran the jump host");
    }

    /// An assets directory with a space (issue 11): the known_hosts option is one
    /// double-quoted ssh_config argument (unquoted, ssh_config(5) takes each word of
    /// UserKnownHostsFile as a file of its own), and the system's ssh accepts it.
    #[test]
    fn a_known_hosts_path_with_a_space_reaches_ssh_as_one_quoted_argument() {
        let path = Path::new("/tmp/my assets/ssh/known_hosts");
        let argument = known_hosts_argument(path).unwrap();
        assert_eq!(argument, "\"/tmp/my assets/ssh/known_hosts\"");
        let option = format!("UserKnownHostsFile={argument}");
        let out = std::process::Command::new("ssh").args(["-G", "-o", &option, "10.0.0.20"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let config = String::from_utf8_lossy(&out.stdout);
        assert!(config.contains("\nuserknownhostsfile /tmp/my assets/ssh/known_hosts\n"), "{config}");
        // A relative path is made absolute first (ssh would expand a leading `~`).
        assert!(known_hosts_argument(Path::new("~x/known_hosts")).unwrap().starts_with("\"/"));
    }
}
