//! Runs a [`Plan`]: connects to nodes, ships files, runs boot.sh steps, writes logs and
//! sends [`Event`]s. Failures are contained as the plan's phases say: a worker's failure
//! stops only that worker; a failed `init`, token check or master join stops what
//! depends on it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use hakube_assets::dir::AssetsDir;
use hakube_assets::layout;
use hakube_assets::manifest::{sha256_hex, Manifest, ManifestEntry};
use hakube_assets::secrets::Plaintexts;
use hakube_assets::steps;
use hakube_cluster::definition::HostKeyPolicy;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, StepOutcome};
use crate::plan::{OnFailure, Order, PhaseKind, Plan, Run, FETCH_SNAPSHOT, PURGE, SHIP, VERSIONS, VERSIONS_INSTALL};
use crate::transport::{Connection, NodeConnection, Stream, Target, Transport, TransportError};
use crate::InstallError;

/// Everything an install or reset needs besides the plan.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The assets directory render wrote.
    pub assets_dir: PathBuf,
    /// Where `<node>.log` files go.
    pub log_dir: PathBuf,
    /// How many nodes run at once in parallel phases.
    pub concurrency: usize,
    /// How long to keep retrying a connection that fails for network reasons.
    pub connect_budget: Duration,
    /// The plaintext of every encrypted file that ships (and of the encrypted SSH login
    /// key), decrypted in memory before the run (`hakube_assets::secrets::decrypt_for_install`);
    /// shipped only inside the SSH stream, never written to the operator's disk.
    pub plaintexts: Arc<Plaintexts>,
    /// Where `hakube upgrade` puts the etcd snapshot it copies off the first master
    /// (`<dir>/<cluster>-etcd-<unix time>.db`, or `.db.age` encrypted to the manifest's
    /// recipients; mode 0600 in a 0700 directory). `None`: no snapshot is expected.
    pub snapshot_dir: Option<PathBuf>,
}

/// How Ctrl-C stops a run (issue 12, item 2). The steps run detached on the nodes, so
/// stopping hakube never stops a step: `no_new_steps` (the first Ctrl-C) lets the running
/// steps finish, hakube still following them, and starts nothing after them;
/// `stop_waiting` (the second) stops following at once, leaving them running on the nodes,
/// where the next `hakube install` with the same assets attaches to them.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    /// Start no new step.
    pub no_new_steps: CancellationToken,
    /// Stop waiting for the running ones.
    pub stop_waiting: CancellationToken,
}

/// How a node ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeOutcome {
    /// Every step it was planned for finished.
    Done,
    /// A step failed.
    Failed {
        /// The step (`ship`, `join`, ...).
        step: String,
        /// The exit code, when the step ran and exited.
        exit_code: Option<i32>,
        /// What went wrong.
        message: String,
    },
    /// It did not run (all of) its steps because something it depends on failed.
    Skipped {
        /// Why.
        reason: String,
    },
    /// The run was interrupted (Ctrl-C) before it finished.
    Interrupted {
        /// The step that was running on it and may still be running there.
        running: Option<String>,
    },
}

/// One node's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    /// The node.
    pub node: String,
    /// How it ended.
    pub outcome: NodeOutcome,
    /// Its log file.
    pub log: PathBuf,
    /// Time spent running its steps.
    pub elapsed: Duration,
}

/// The result of a run, node by node in plan order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Every targeted node.
    pub nodes: Vec<NodeSummary>,
    /// Whether Ctrl-C stopped the run.
    pub interrupted: bool,
}

impl Summary {
    /// Whether every targeted node finished.
    pub fn success(&self) -> bool {
        !self.interrupted && self.nodes.iter().all(|n| n.outcome == NodeOutcome::Done)
    }
}

/// The connection details of `node`, from the manifest (what render recorded of the
/// definition: address, port, user, login key, bastion, host-key policy) and the assets; its
/// host key is checked as [`host_key_check`] decides. The login key is the one the manifest
/// names (the node's or the definition's `sshLoginKey`), else render's `ssh/id_ed25519`,
/// else, when render's key is encrypted, the one held by `agent` (the socket of a
/// [`LoginAgent`]). `None` for a node the manifest does not list.
pub fn target(manifest: &Manifest, assets_dir: &Path, node: &str, agent: Option<&Path>) -> Option<Target> {
    let ssh = &manifest.nodes.get(node)?.ssh;
    let key = ssh.login_key.as_deref().map(expand_home).or_else(|| {
        let generated = assets_dir.join(layout::LOGIN_KEY);
        generated.exists().then_some(generated)
    });
    let agent = if key.is_none() { agent.map(Path::to_path_buf) } else { None };
    let (host, port) = (ssh.address.clone(), ssh.port);
    // A file that cannot be read pins nothing; under strict ssh then refuses the unknown key.
    let rendered = std::fs::read_to_string(assets_dir.join(layout::KNOWN_HOSTS)).unwrap_or_default();
    let policy = host_key_check(manifest.install.host_key_policy, &rendered, &host, port);
    let known_hosts = match policy {
        HostKeyPolicy::Strict => assets_dir.join(layout::KNOWN_HOSTS),
        HostKeyPolicy::AcceptNew => assets_dir.join(layout::KNOWN_HOSTS_ACCEPTED),
    };
    Some(Target {
        node: node.to_string(),
        host,
        user: ssh.user.clone(),
        port,
        key,
        agent,
        jump_hosts: manifest.install.bastion.clone(),
        known_hosts,
        policy,
    })
}

/// A private ssh-agent holding render's SSH login key when it is encrypted at rest, so
/// ssh can log in with it without the key ever being written to the operator's disk.
///
/// It is `ssh-agent -a SOCKET sh -c '...; exec cat'` (ssh-agent(1): with a command, the
/// agent exits when the command does): the command is `cat` reading a pipe only this
/// process holds, so when hakube ends, however it ends, the pipe closes, `cat` exits and
/// the agent exits with the key. The socket lives in the 0700 control directory; the key
/// reaches it through `ssh-add -` on a pipe, never as a file or an argument.
pub struct LoginAgent {
    socket: PathBuf,
    _child: tokio::process::Child,
}

impl LoginAgent {
    /// Starts the agent with its socket in `dir` and adds `key` (an OpenSSH private key).
    ///
    /// # Errors
    ///
    /// What failed: starting ssh-agent (it comes with the OpenSSH client) or adding the key.
    pub async fn start(dir: &Path, key: &[u8]) -> Result<LoginAgent, String> {
        use tokio::io::AsyncBufReadExt;
        let socket = dir.join("agent");
        let mut child = tokio::process::Command::new("ssh-agent")
            .arg("-a")
            .arg(&socket)
            .args(["sh", "-c", "echo ready; exec cat >/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("failed to run ssh-agent (part of the OpenSSH client): {e}"))?;
        // The agent binds its socket before it runs the command, so "ready" means it is there.
        let stdout = child.stdout.take().ok_or("ssh-agent gave no output")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout).read_line(&mut line).await.map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err("ssh-agent did not start".into());
        }
        let mut add = tokio::process::Command::new("ssh-add")
            .args(["-q", "-"])
            .env("SSH_AUTH_SOCK", &socket)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("failed to run ssh-add: {e}"))?;
        let mut stdin = add.stdin.take().ok_or("ssh-add has no stdin")?;
        stdin.write_all(key).await.map_err(|e| format!("failed to pass the key to ssh-add: {e}"))?;
        drop(stdin);
        let out = add.wait_with_output().await.map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("ssh-add refused the login key: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(LoginAgent { socket, _child: child })
    }

    /// The agent's socket (for `SSH_AUTH_SOCK`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// The host key check a node gets: strict whenever `rendered` (the assets' known_hosts,
/// render's pins) holds a key for the address and port ssh connects to, whatever `policy`
/// says, so that `accept-new` can never trust another key for a node whose key render made
/// (issue 11: it trusted an unrelated key on first contact and shipped the secrets);
/// `policy` for a node render pinned no key for. Entries are matched as render writes them:
/// unhashed patterns, `host` for port 22 and `[host]:port` otherwise (sshd(8), "SSH_KNOWN_HOSTS
/// FILE FORMAT"); comment lines and marked lines (`@cert-authority`, `@revoked`) pin nothing.
pub fn host_key_check(policy: HostKeyPolicy, rendered: &str, host: &str, port: u16) -> HostKeyPolicy {
    let wanted = if port == 22 { host.to_string() } else { format!("[{host}]:{port}") };
    let pinned =
        rendered.lines().map(str::trim_start).filter(|l| !l.is_empty() && !l.starts_with(['#', '@'])).any(|line| {
            let mut fields = line.split_whitespace();
            let patterns = fields.next().unwrap_or_default();
            fields.next().is_some() && fields.next().is_some() && patterns.split(',').any(|p| p == wanted)
        });
    if pinned {
        HostKeyPolicy::Strict
    } else {
        policy
    }
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Creates the logs directory (and its parents) and makes it mode 0700 whatever the umask,
/// an existing one included: the logs hold everything the boot scripts print.
///
/// # Errors
///
/// When it cannot be created or its mode set.
pub fn create_log_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Opens a log file for appending, created with mode 0600; one left by an earlier run with
/// a wider mode is made 0600.
///
/// # Errors
///
/// When it cannot be opened or its mode set.
pub async fn open_log(path: &Path) -> std::io::Result<tokio::fs::File> {
    use std::os::unix::fs::PermissionsExt;
    let file = tokio::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).await?;
    if file.metadata().await?.permissions().mode() & 0o7777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).await?;
    }
    Ok(file)
}

/// The longest file name Linux file systems take (`NAME_MAX`, in bytes).
const NAME_MAX: usize = 255;

/// The file name of a node's log in the logs directory: `<node>.log`, or, when that would
/// be longer than the 255 bytes a file name may have (`NAME_MAX`; a node name may be a
/// 253-character RFC 1123 subdomain, as Kubernetes allows), the name's first 200 bytes,
/// `-`, the first 16 hex digits of the name's sha256 and `.log` (221 bytes). The same node
/// always gets the same file, and two long names that share their first 200 bytes get
/// different ones.
pub fn log_file_name(node: &str) -> String {
    const SUFFIX: &str = ".log";
    if node.len() + SUFFIX.len() <= NAME_MAX {
        return format!("{node}{SUFFIX}");
    }
    let mut cut = 200;
    while !node.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{}{SUFFIX}", &node[..cut], &sha256_hex(node.as_bytes())[..16])
}

/// Creates `path` empty with mode 0600 unless it exists, and makes an existing one 0600;
/// its contents are kept (`known_hosts.accepted`, which ssh then appends to).
///
/// # Errors
///
/// When it cannot be created or its mode set.
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    if file.metadata()?.permissions().mode() & 0o7777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

struct Shared {
    /// The run journal in the logs directory.
    journal: crate::journal::Journal,
    /// Cancelled by the first Ctrl-C: no step starts after it (running ones go on).
    no_new_steps: CancellationToken,
    /// This run's id (12 hex digits), part of every unit name it starts.
    run_id: String,
    manifest: Manifest,
    settings: Settings,
    events: UnboundedSender<Event>,
    /// Declared before `transport`, so that, dropped, the masters are told to exit while
    /// their sockets still exist (fields drop in order); [`Shared::close_all`] closes them
    /// before that on every way out of [`execute`].
    connections: tokio::sync::Mutex<HashMap<String, Arc<dyn NodeConnection>>>,
    transport: Arc<dyn Transport>,
    /// What is running right now, node -> step, for the Ctrl-C report.
    running: Mutex<BTreeMap<String, String>>,
    elapsed: Mutex<HashMap<String, Duration>>,
    /// Nodes whose [`VERSIONS`] step refused the run (a version install must not change),
    /// as opposed to failing to reach the node: a refusal stops everything, an unreachable
    /// node fails alone.
    refused: Mutex<std::collections::BTreeSet<String>>,
}

impl Shared {
    fn log_path(&self, node: &str) -> PathBuf {
        self.settings.log_dir.join(log_file_name(node))
    }

    /// Appends to the node's log; the error names the file.
    async fn append_log(&self, node: &str, text: &str) -> Result<(), String> {
        let path = self.log_path(node);
        let write = async { open_log(&path).await?.write_all(text.as_bytes()).await };
        write.await.map_err(|e| format!("cannot write the log file {}: {e}", path.display()))
    }

    /// Closes every node's connection. Called once no task holds one (their tasks were
    /// joined or shut down); one still shared is dropped, which asks its master to exit.
    async fn close_all(&self) {
        let connections: Vec<Arc<dyn NodeConnection>> = self.connections.lock().await.drain().map(|(_, c)| c).collect();
        for conn in connections {
            conn.close().await;
        }
    }

    async fn connection(&self, node: &str) -> Result<Arc<dyn NodeConnection>, TransportError> {
        let cached = self.connections.lock().await.get(node).cloned();
        if let Some(c) = cached {
            // A master that exited (idle past ControlPersist, or its node went away) is
            // replaced by a new connection.
            if c.is_alive().await {
                return Ok(c);
            }
            self.connections.lock().await.remove(node);
        }
        let attempt = std::sync::atomic::AtomicU32::new(1);
        let _ = self.events.send(Event::Connecting { node: node.into(), attempt: 1, last_error: None });
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(5))
            .with_total_delay(Some(self.settings.connect_budget))
            .without_max_times();
        let conn = (|| self.transport.connect(node))
            .retry(backoff)
            .when(TransportError::is_retryable)
            .notify(|err, _| {
                let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let _ = self.events.send(Event::Connecting {
                    node: node.into(),
                    attempt: n,
                    last_error: Some(err.to_string()),
                });
            })
            .await?;
        self.connections.lock().await.insert(node.into(), conn.clone());
        Ok(conn)
    }
}

/// The [`Transport`] of a real install: one multiplexed OpenSSH connection per node
/// ([`Connection`]) to the target [`target`] derives from the manifest, its control sockets
/// in a private directory, an encrypted login key held by a [`LoginAgent`].
pub struct OpenSsh {
    manifest: Manifest,
    assets_dir: PathBuf,
    /// Holds the login key when it is encrypted at rest (its socket is in `control_dir`).
    agent: Option<LoginAgent>,
    control_dir: tempfile::TempDir,
}

impl OpenSsh {
    /// The transport for `manifest`'s nodes, with the assets in `assets_dir`; `login_key`
    /// is the plaintext of render's encrypted login key, when it is encrypted.
    ///
    /// # Errors
    ///
    /// [`InstallError::Assets`] when the control directory cannot be made or the agent
    /// cannot hold the key.
    pub async fn new(
        manifest: &Manifest,
        assets_dir: &Path,
        login_key: Option<&[u8]>,
    ) -> Result<OpenSsh, InstallError> {
        let control_dir = crate::transport::control_directory(std::env::var_os("XDG_RUNTIME_DIR").as_deref())
            .map_err(|e| InstallError::Assets(format!("failed to create a directory for SSH control sockets: {e}")))?;
        let agent = match login_key {
            Some(key) => Some(LoginAgent::start(control_dir.path(), key).await.map_err(|e| {
                InstallError::Assets(format!("failed to hold the login key {} in memory: {e}", layout::LOGIN_KEY))
            })?),
            None => None,
        };
        Ok(OpenSsh { manifest: manifest.clone(), assets_dir: assets_dir.to_path_buf(), agent, control_dir })
    }
}

#[async_trait::async_trait]
impl Transport for OpenSsh {
    async fn connect(&self, node: &str) -> Result<Arc<dyn NodeConnection>, TransportError> {
        let agent = self.agent.as_ref().map(LoginAgent::socket);
        let target = target(&self.manifest, &self.assets_dir, node, agent).ok_or_else(|| TransportError::Command {
            node: node.into(),
            what: "connect".into(),
            detail: "the node is not in manifest.json".into(),
        })?;
        if target.policy == HostKeyPolicy::AcceptNew {
            create_private_file(&target.known_hosts).map_err(|e| TransportError::Command {
                node: node.into(),
                what: "connect".into(),
                detail: format!("failed to create {}: {e}", target.known_hosts.display()),
            })?;
        }
        Ok(Arc::new(Connection::connect(&target, self.control_dir.path()).await?))
    }
}

/// The result of one run.
enum RunResult {
    Ok,
    Skipped,
    Failed { exit_code: Option<i32>, message: String },
}

/// Verifies the assets before anything connects ([`hakube_assets::dir::verify`]: only
/// the layout's files and destinations, every file's sha256 and mode as recorded, no link
/// followed), so a stale or tampered asset never reaches a machine; `manifest` must be the
/// one on disk. `nodes` are the targeted nodes (every file is checked, whoever it ships to).
///
/// # Errors
///
/// [`InstallError::Assets`] naming the file and saying to run `hakube render`.
pub fn check_local_assets(assets_dir: &Path, manifest: &Manifest, nodes: &[String]) -> Result<(), InstallError> {
    let verified = hakube_assets::dir::verify(assets_dir).map_err(|e| InstallError::Assets(e.to_string()))?;
    if verified != *manifest {
        return Err(InstallError::Assets(format!(
            "{} changed since install read it; run `hakube render`, then install again",
            assets_dir.join(layout::MANIFEST).display()
        )));
    }
    if let Some(node) = nodes.iter().find(|n| !manifest.nodes.contains_key(*n)) {
        return Err(InstallError::Assets(format!(
            "{} lists no node {node}; run `hakube render`",
            assets_dir.join(layout::MANIFEST).display()
        )));
    }
    Ok(())
}

/// Opens the assets directory for reading (see [`AssetsDir`]).
fn open_assets(assets_dir: &Path) -> Result<AssetsDir, InstallError> {
    AssetsDir::open(assets_dir).map_err(|e| InstallError::Assets(e.to_string()))?.ok_or_else(|| {
        InstallError::Assets(format!("{} does not exist; run `hakube render` first", assets_dir.display()))
    })
}

/// A destination on the node and the sha256 (lowercase hex) of what was shipped there.
type ShippedSum = (String, String);

/// Builds the tar stream of `node`'s files at their destinations (directories 0700), and
/// the sha256 each destination must then have. Each file is read through [`AssetsDir`]
/// (never following a link) and must still match the manifest's sha256 when it is read;
/// an age ciphertext ships as its plaintext from `plaintexts` (mode 0600).
fn ship_archive(
    assets_dir: &Path,
    files: &[(&str, &ManifestEntry)],
    plaintexts: &Plaintexts,
) -> Result<(Vec<u8>, Vec<ShippedSum>), String> {
    let assets = open_assets(assets_dir).map_err(|e| e.to_string())?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (_, entry) in files {
        let dest = entry.destination.as_deref().unwrap_or_default();
        let mut p = Path::new(dest).parent();
        while let Some(d) = p.filter(|d| d.starts_with(layout::REMOTE_DIR)) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    let failed = |e: std::io::Error| format!("failed to build the archive: {e}");
    for dir in &dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o700);
        header.set_size(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        builder.append_data(&mut header, dir.strip_prefix("/").unwrap_or(dir), std::io::empty()).map_err(failed)?;
    }
    let mut sums = Vec::new();
    for (path, entry) in files {
        let mut bytes = assets.read(path).map_err(|e| e.to_string())?;
        if sha256_hex(&bytes) != entry.sha256 {
            return Err(format!(
                "{} changed since install checked it: it does not match the sha256 in manifest.json; run `hakube render`",
                assets.shown(path).display()
            ));
        }
        if entry.encrypted {
            bytes = plaintexts
                .0
                .get(*path)
                .cloned()
                .ok_or_else(|| format!("{} was not decrypted before the run", assets.shown(path).display()))?;
        }
        let dest = entry.destination.as_deref().unwrap_or_default();
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        // The manifest's mode, the layout's rule (validated): 0755 for a script, 0644 for
        // other public files, 0600 for a secret, and for the plaintext of a ciphertext.
        let mode =
            if entry.encrypted { 0o600 } else { hakube_assets::manifest::parse_mode(&entry.mode).unwrap_or(0o600) };
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        builder.append_data(&mut header, dest.trim_start_matches('/'), bytes.as_slice()).map_err(failed)?;
        sums.push((dest.to_string(), sha256_hex(&bytes)));
    }
    Ok((builder.into_inner().map_err(failed)?, sums))
}

async fn run_one(shared: &Shared, run: &Run) -> RunResult {
    let conn = match shared.connection(&run.host).await {
        Ok(c) => c,
        Err(e) => return RunResult::Failed { exit_code: None, message: e.to_string() },
    };
    let host_log = shared.log_path(&run.host);
    let log_line = |stream: Stream, line: &str| {
        let prefix = if stream == Stream::Stderr { "! " } else { "" };
        format!("{prefix}{line}\n")
    };
    let mut lines: Vec<String> = Vec::new();
    let mut skipped = false;
    let result = match run.step.as_str() {
        SHIP => {
            let files: Vec<(&str, &ManifestEntry)> = shared.manifest.files_for(&run.node).collect();
            let (archive, expected) =
                match ship_archive(&shared.settings.assets_dir, &files, &shared.settings.plaintexts) {
                    Ok(a) => a,
                    Err(message) => return RunResult::Failed { exit_code: None, message },
                };
            let code = conn
                .run(
                    "tar",
                    &["-x".into(), "-f".into(), "-".into(), "-C".into(), "/".into(), "--no-same-owner".into()],
                    Some(archive),
                    &mut |s, l| lines.push(log_line(s, l)),
                )
                .await;
            match code {
                Ok(Some(0)) => {
                    let dests: Vec<String> = files.iter().filter_map(|(_, e)| e.destination.clone()).collect();
                    let mut args = vec!["--".to_string()];
                    args.extend(dests.iter().cloned());
                    let mut sums = Vec::new();
                    match conn
                        .run("sha256sum", &args, None, &mut |s, l| {
                            if s == Stream::Stdout {
                                sums.push(l.to_string())
                            } else {
                                lines.push(log_line(s, l))
                            }
                        })
                        .await
                    {
                        Ok(Some(0)) => verify_sums(&expected, &sums),
                        Ok(code) => Err((code, "sha256sum failed on the node".to_string())),
                        Err(e) => Err((None, e.to_string())),
                    }
                }
                // A minimal image may lack tar (Rocky's minimal install does); the boot
                // scripts install what they need, but they arrive through it.
                Ok(code) if code == Some(127) || lines.iter().any(|l| l.contains("tar: command not found") || l.contains("tar: not found")) => Err((
                    code,
                    "unpacking the files failed: the node has no tar, which hakube ships files with; install it (apt-get install tar, dnf install -y tar) and run again".to_string(),
                )),
                Ok(code) => Err((code, "unpacking the files failed".to_string())),
                Err(e) => Err((None, e.to_string())),
            }
        }
        VERSIONS => {
            let mut out = Vec::new();
            match conn
                .run("sh", &["-c".into(), VERSION_PROBE.into()], None, &mut |s, l| match s {
                    Stream::Stdout => out.push(l.to_string()),
                    Stream::Stderr => lines.push(log_line(s, l)),
                })
                .await
            {
                Ok(Some(0)) => {
                    lines.extend(out.iter().map(|l| format!("{l}\n")));
                    let (expected, check) = (run.args.first().cloned().unwrap_or_default(), run.args.get(1).cloned());
                    judge_versions(&run.node, &out, &expected, check.as_deref() == Some(VERSIONS_INSTALL)).map_err(
                        |m| {
                            if let Ok(mut refused) = shared.refused.lock() {
                                refused.insert(run.node.clone());
                            }
                            (None, m)
                        },
                    )
                }
                Ok(code) => Err((code, "reading the Kubernetes versions failed".to_string())),
                Err(e) => Err((None, e.to_string())),
            }
        }
        FETCH_SNAPSHOT => match conn.read_file(layout::REMOTE_ETCD_SNAPSHOT, MAX_SNAPSHOT_BYTES).await {
            Ok(bytes) => match save_snapshot(&shared.settings, &shared.manifest, &bytes) {
                Ok(path) => {
                    lines.push(format!("etcd snapshot ({} bytes) saved to {}\n", bytes.len(), path.display()));
                    Ok(())
                }
                Err(message) => Err((None, message)),
            },
            Err(e) => Err((None, e.to_string())),
        },
        PURGE => match conn
            .run(
                "rm",
                &[
                    "-rf".into(),
                    "--".into(),
                    layout::REMOTE_DIR.into(),
                    steps::STATE_ROOT.into(),
                    steps::STEP_LOG_DIR.into(),
                ],
                None,
                &mut |s, l| lines.push(log_line(s, l)),
            )
            .await
        {
            Ok(Some(0)) => Ok(()),
            Ok(code) => Err((code, "removing hakube's files failed".to_string())),
            Err(e) => Err((None, e.to_string())),
        },
        _ => {
            // Lines go to the log file as they arrive; nothing is kept in memory.
            let file = match open_log(&host_log).await {
                Ok(file) => file,
                Err(e) => {
                    let message = format!("cannot write the log file {}: {e}", host_log.display());
                    return RunResult::Failed { exit_code: None, message };
                }
            };
            drop(conn);
            match run_detached(shared, run, file).await {
                Ok(was_skipped) => {
                    skipped = was_skipped;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    let logged = if lines.is_empty() { Ok(()) } else { shared.append_log(&run.host, &lines.concat()).await };
    let result = match (result, logged) {
        (Ok(()), Err(message)) => Err((None, message)),
        (result, _) => result,
    };
    match result {
        Ok(()) if skipped => RunResult::Skipped,
        Ok(()) => RunResult::Ok,
        Err((exit_code, message)) => RunResult::Failed { exit_code, message },
    }
}

/// How long a step's output may stay unreachable (the connection dropped, the node's link
/// down, a laptop asleep) before hakube stops waiting for it; the step goes on running on
/// the node and the next `hakube install` attaches to it again.
const REATTACH_BUDGET: Duration = Duration::from_secs(600);

/// A detached step's failure: the exit code (when known) and what happened.
type StepError = (Option<i32>, String);

/// Runs one boot.sh step detached on its node (issue 12, item 1), through the step runner
/// (`step.sh`, [`steps::STEP_SCRIPT`]): `step.sh start` makes it a transient systemd unit
/// named after the run and the step ([`steps::unit_name`]), or attaches to the unit of an
/// earlier run still running the same step ([`steps::Started::Attached`]: nothing new
/// starts; its log goes on from the offset the run journal has). Then [`follow_unit`]. The
/// exit code is the one boot.sh reported in its `::hakube:: step=NAME status=failed exit=N`
/// marker ([`steps::parse_marker`]), else the unit's (`step.sh status`). Whether the step
/// was skipped (already done) is the marker's.
async fn run_detached(shared: &Shared, run: &Run, mut log: tokio::fs::File) -> Result<bool, StepError> {
    let key = steps::step_key(&run.step, &run.args);
    let unit = steps::unit_name(&shared.run_id, &key);
    let mut command = vec!["run".to_string(), unit.clone(), key, run.step.clone()];
    command.extend(run.args.iter().cloned());
    let entry = crate::journal::Entry { node: run.node.clone(), step: run.step.clone(), offset: 0 };
    shared.journal.record(&run.host, &unit, entry.clone()).map_err(|e| (None, e))?;
    // One command when nothing goes wrong: start, follow from byte 0, status, clear.
    let conn = shared.connection(&run.host).await.map_err(|e| (None, e.to_string()))?;
    let mut tracker = LogTracker::default();
    let (streamed, written) = stream_into(shared, &*conn, &run.host, &unit, &command, &mut tracker, &mut log).await;
    drop(conn);
    written?;
    let (code, errors) = streamed.map_err(|e| (None, e.to_string()))?;
    let said =
        |word: &str| errors.lines().find_map(|l| l.strip_prefix("step.sh: unit ")?.strip_prefix(word).map(str::trim));
    let (marker, status, followed) = match (said("attached "), said("started "), said("exited ")) {
        (Some(earlier), _, _) => {
            shared.journal.remove(&run.host, &unit).map_err(|e| (None, e))?;
            let earlier = earlier.to_string();
            let offset = shared.journal.offset(&run.host, &earlier).unwrap_or(0);
            let line = format!(
                "==> attached to {earlier}: boot.sh {} of an earlier run still runs on the node; its log goes on from byte {offset}\n",
                run.step
            );
            log.write_all(line.as_bytes()).await.map_err(|e| (None, format!("cannot write the log file: {e}")))?;
            shared
                .journal
                .record(&run.host, &earlier, crate::journal::Entry { offset, ..entry })
                .map_err(|e| (None, e))?;
            let (marker, status) = follow_unit(shared, &run.host, &earlier, offset, &mut log)
                .await
                .map_err(|e| left_running(run, &earlier, e))?;
            (marker, status, earlier)
        }
        (None, Some(_), Some(exited)) if code == Some(0) => {
            log.flush().await.map_err(|e| (None, format!("cannot write the log file: {e}")))?;
            shared.journal.remove(&run.host, &unit).map_err(|e| (None, e))?;
            (tracker.marker, steps::parse_status(&format!("exited {exited}")), unit)
        }
        // The step runner refused (a usage error, boot.sh missing): nothing started.
        (None, None, _) if matches!(code, Some(1..=2)) => {
            shared.journal.remove(&run.host, &unit).map_err(|e| (None, e))?;
            return Err((code, format!("the step runner could not start boot.sh {}: {}", run.step, errors.trim())));
        }
        // The connection dropped somewhere between starting and the end: reattach to our
        // unit from the byte we have (follow finds no log when it never started: then start
        // it again, once).
        _ => match follow_unit(shared, &run.host, &unit, tracker.offset, &mut log).await {
            Ok((marker, status)) => (tracker.marker.clone().or(marker), status, unit),
            Err(e) if e.1.starts_with(NO_LOG) && tracker.offset == 0 => {
                shared.journal.remove(&run.host, &unit).map_err(|e| (None, e))?;
                return Box::pin(run_detached(shared, run, log)).await;
            }
            Err(e) => return Err(left_running(run, &unit, e)),
        },
    };
    verdict(&run.step, &followed, marker, status)
}

/// A step's failure to follow it to its end, saying it may still run and how to attach.
fn left_running(run: &Run, unit: &str, (code, e): StepError) -> StepError {
    (
        code,
        format!(
            "{e}; boot.sh {} may still be running on the node as {unit}, and `hakube install` again attaches to it",
            run.step
        ),
    )
}

/// How a step ended, from the last marker line of its log and its unit's status: boot.sh's
/// `failed exit=N` first; else the unit's exit status; a unit already cleared (status
/// `unknown`, after `step.sh run` cleared it) by its log's `done` or `skipped` marker.
/// `Ok(true)` when boot.sh skipped it (already done).
fn verdict(
    step: &str,
    unit: &str,
    marker: Option<steps::Marker>,
    status: Option<steps::UnitStatus>,
) -> Result<bool, StepError> {
    let skipped = matches!(marker, Some(steps::Marker::Skipped(_)));
    match (&marker, status) {
        (Some(steps::Marker::Failed(_, code)), _) => Err((Some(*code), format!("boot.sh {step} failed"))),
        (_, Some(steps::UnitStatus::Exited(0))) => Ok(skipped),
        (_, Some(steps::UnitStatus::Exited(code))) => Err((Some(code), format!("boot.sh {step} failed"))),
        (Some(steps::Marker::Done(_) | steps::Marker::Skipped(_)), Some(steps::UnitStatus::Unknown)) => Ok(skipped),
        (_, other) => Err((None, format!("the step runner reported {other:?} for {unit} after its log ended"))),
    }
}

/// What [`stream_into`] has seen of a unit's log: the bytes written, the last marker.
#[derive(Default)]
struct LogTracker {
    offset: u64,
    pending: Vec<u8>,
    marker: Option<steps::Marker>,
}

/// The start of the error [`follow_unit`] gives when the node has no log of the unit.
const NO_LOG: &str = "the node has no log of";

/// Runs `command` (a step runner call) on `conn`, its standard output (the unit's log from
/// `tracker.offset`) written to `log` as it arrives, `tracker` advanced (offset, last marker)
/// and the journal's offset of `unit` after each chunk. The command's result, and whether
/// writing worked.
async fn stream_into(
    shared: &Shared,
    conn: &dyn NodeConnection,
    host: &str,
    unit: &str,
    command: &[String],
    tracker: &mut LogTracker,
    log: &mut tokio::fs::File,
) -> (Result<(Option<i32>, String), TransportError>, Result<(), StepError>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    // The sender moves into the stream's future, so the writer below ends when it does.
    let streamed = async move {
        let mut sink = move |bytes: &[u8]| {
            let _ = tx.send(bytes.to_vec());
        };
        conn.stream(steps::STEP_SCRIPT, command, &mut sink).await
    };
    let writer = async {
        while let Some(bytes) = rx.recv().await {
            tracker.pending.extend_from_slice(&bytes);
            while let Some(at) = tracker.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = tracker.pending.drain(..=at).collect();
                if let Some(m) = steps::parse_marker(&String::from_utf8_lossy(&line)) {
                    tracker.marker = Some(m);
                }
            }
            log.write_all(&bytes).await.map_err(|e| (None, format!("cannot write the log file: {e}")))?;
            tracker.offset += bytes.len() as u64;
            shared.journal.advance(host, unit, tracker.offset).map_err(|e| (None, e))?;
        }
        Ok::<(), StepError>(())
    };
    tokio::join!(streamed, writer)
}

/// Follows `unit` on `host` to its end: `step.sh follow UNIT OFFSET` streams its log from the
/// byte hakube has into `log` (`LOG_DIR/<node>.log`), the journal's offset advanced after
/// each chunk is written; when the connection drops, hakube reconnects with backoff (for up
/// to [`REATTACH_BUDGET`]) and follows on from the same offset, so the log is complete and
/// the step runs once. Then `step.sh status` and `step.sh clear`, and the journal forgets
/// it. The last marker line of the log and the unit's status.
async fn follow_unit(
    shared: &Shared,
    host: &str,
    unit: &str,
    offset: u64,
    log: &mut tokio::fs::File,
) -> Result<(Option<steps::Marker>, Option<steps::UnitStatus>), StepError> {
    let mut tracker = LogTracker { offset, ..LogTracker::default() };
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let conn = match shared.connection(host).await {
            Ok(conn) => conn,
            Err(e) if e.is_retryable() && unreachable_since.is_none_or(|t| t.elapsed() < REATTACH_BUDGET) => {
                unreachable_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err((None, e.to_string())),
        };
        let follow = ["follow".to_string(), unit.to_string(), tracker.offset.to_string()];
        let (streamed, written) = stream_into(shared, &*conn, host, unit, &follow, &mut tracker, log).await;
        drop(conn);
        written?;
        match streamed {
            Ok((Some(0), _)) => break,
            Ok((Some(3), errors)) => return Err((None, format!("{NO_LOG} {unit}: {errors}"))),
            Ok((Some(2), errors)) => return Err((None, format!("the step runner refused to follow {unit}: {errors}"))),
            // The connection dropped (or the follow was cut): reattach from the same offset.
            _ => {
                unreachable_since.get_or_insert_with(Instant::now);
                let line =
                    format!("lost the connection while following {unit} at byte {}; reattaching", tracker.offset);
                let _ = shared.events.send(Event::Connecting {
                    node: host.to_string(),
                    attempt: 0,
                    last_error: Some(line),
                });
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    log.flush().await.map_err(|e| (None, format!("cannot write the log file: {e}")))?;
    // The unit's own exit status, and then its state is forgotten (the log stays on the node).
    let conn = shared.connection(host).await.map_err(|e| (None, e.to_string()))?;
    let mut status = None;
    let _ = conn
        .run(steps::STEP_SCRIPT, &["status".to_string(), unit.to_string()], None, &mut |s, l| {
            if s == Stream::Stdout {
                status = steps::parse_status(l);
            }
        })
        .await;
    if matches!(status, Some(steps::UnitStatus::Exited(_) | steps::UnitStatus::Unknown)) {
        if matches!(status, Some(steps::UnitStatus::Exited(_))) {
            let _ = conn.run(steps::STEP_SCRIPT, &["clear".to_string(), unit.to_string()], None, &mut |_, _| {}).await;
        }
        shared.journal.remove(host, unit).map_err(|e| (None, e))?;
    }
    Ok((tracker.marker, status))
}

/// The steps an earlier run left in the journal on the nodes of this run (issue 12, item 2):
/// one still running stays in the journal (its step, when the plan reaches it, attaches to it
/// and goes on from the journal's offset); one that ended while hakube was away has the rest
/// of its log appended to its node's log and is reported with its exit code
/// ([`Event::EndedWhileAway`]). A node that cannot be reached keeps its entries.
async fn settle_left_steps(shared: &Shared, involved: &[String]) -> Result<(), InstallError> {
    for (host, units) in shared.journal.left() {
        if !involved.contains(&host) {
            continue;
        }
        let Ok(conn) = shared.connection(&host).await else { continue };
        for (unit, entry) in units {
            let mut status = None;
            let _ = conn
                .run(steps::STEP_SCRIPT, &["status".to_string(), unit.clone()], None, &mut |s, l| {
                    if s == Stream::Stdout {
                        status = steps::parse_status(l);
                    }
                })
                .await;
            // Running: the plan attaches to it. Ended, or cleared (the log's markers tell).
            if matches!(status, Some(steps::UnitStatus::Running) | None) {
                continue;
            }
            let path = shared.log_path(&host);
            let mut log = open_log(&path)
                .await
                .map_err(|e| InstallError::Logs(format!("cannot write the log file {}: {e}", path.display())))?;
            let line = format!("==> {unit} (boot.sh {} of an earlier run) ended while hakube was away; the rest of its log from byte {}:\n", entry.step, entry.offset);
            let _ = log.write_all(line.as_bytes()).await;
            let exit_code = match follow_unit(shared, &host, &unit, entry.offset, &mut log).await {
                Ok((marker, status)) => match verdict(&entry.step, &unit, marker, status) {
                    Ok(_) => Some(0),
                    Err((code, _)) => code,
                },
                Err((_, e)) if e.starts_with(NO_LOG) => {
                    shared.journal.remove(&host, &unit).map_err(InstallError::Logs)?;
                    continue;
                }
                Err(_) => None,
            };
            let _ = shared.events.send(Event::EndedWhileAway {
                node: entry.node.clone(),
                step: entry.step.clone(),
                exit_code,
                log: path,
            });
        }
    }
    Ok(())
}

/// What [`VERSIONS`] runs on a node (`sh -c`, as root): `kubelet vX.Y.Z` when a kubelet is
/// installed, `joined` when the node is in a cluster (kubeadm wrote its kubelet.conf), and
/// `apiserver vX.Y.Z` on a master whose API server static Pod exists (its image tag, which
/// kubeadm init and upgrade write). Reads only.
pub const VERSION_PROBE: &str = r#"if v=$(kubelet --version 2>/dev/null); then echo "kubelet ${v#Kubernetes }"; fi
if [ -f /etc/kubernetes/kubelet.conf ]; then echo joined; fi
f=/etc/kubernetes/manifests/kube-apiserver.yaml
if [ -f "$f" ]; then sed -n 's/^ *image: .*kube-apiserver:\(v[^ ]*\)$/apiserver /p' "$f"; fi"#;

/// Judges what [`VERSION_PROBE`] printed on `node` against the manifest's version
/// `expected`: a kubelet or API server newer than it is a downgrade, refused always; an API
/// server at another version means the cluster runs another version, which only `hakube
/// upgrade` changes (one minor at a time, control plane first: the version skew policy); and
/// for an install (`install`), a node in a cluster whose kubelet runs another version is
/// refused the same way. A node without a kubelet, or not in a cluster, passes.
///
/// # Errors
///
/// The sentence naming the node, both versions and `hakube upgrade`.
pub fn judge_versions(node: &str, probe: &[String], expected: &str, install: bool) -> Result<(), String> {
    use hakube_cluster::Version;
    let Some(want) = Version::parse(expected) else { return Ok(()) };
    let field = |key: &str| probe.iter().find_map(|l| l.strip_prefix(key)).and_then(|v| Version::parse(v.trim()));
    let (kubelet, apiserver) = (field("kubelet "), field("apiserver "));
    let joined = probe.iter().any(|l| l == "joined");
    for (what, found) in [("kubelet", kubelet), ("API server", apiserver)] {
        if let Some(found) = found.filter(|f| *f > want) {
            return Err(format!(
                "{node}'s {what} runs Kubernetes {found}, newer than kubernetesVersion {want}: Kubernetes does not support a downgrade and hakube never does one (set kubernetesVersion to {found} and render again)"
            ));
        }
    }
    let upgrade = "`hakube upgrade` changes a running cluster's version, one minor at a time, control plane first; nothing was changed";
    if let Some(found) = apiserver.filter(|a| *a != want) {
        return Err(format!(
            "{node}'s API server runs Kubernetes {found} and kubernetesVersion is {want}: hakube install never changes the version of a running cluster; {upgrade}"
        ));
    }
    if let (true, true, Some(found)) = (install, joined, kubelet.filter(|k| *k != want)) {
        return Err(format!(
            "{node} runs Kubernetes {found} in a cluster and kubernetesVersion is {want}: hakube install never changes a running node's version (its kubelet would be upgraded before the API servers); {upgrade}"
        ));
    }
    Ok(())
}

/// The largest etcd snapshot [`FETCH_SNAPSHOT`] copies: etcd's suggested maximum storage
/// quota (8 GiB, etcd docs "Space quota").
const MAX_SNAPSHOT_BYTES: u64 = 8 << 30;

/// Writes an etcd snapshot into `settings.snapshot_dir` (created 0700): mode 0600, encrypted
/// to the manifest's recipients when it has any; its path.
fn save_snapshot(settings: &Settings, manifest: &Manifest, bytes: &[u8]) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = settings.snapshot_dir.as_ref().ok_or("no directory for etcd snapshots was given")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
    let name = format!("{}-etcd-{}.db", manifest.cluster_name, unix_now());
    let (path, data) = if manifest.recipients.is_empty() {
        (dir.join(&name), bytes.to_vec())
    } else {
        let (recipients, _) =
            hakube_assets::secrets::parse_recipients(&manifest.recipients).map_err(|e| e.to_string())?;
        let sealed = hakube_assets::secrets::encrypt(bytes, &recipients, &name).map_err(|e| e.to_string())?;
        (dir.join(format!("{name}{}", layout::AGE_SUFFIX)), sealed)
    };
    hakube_assets::dir::write_atomic(&path, 0o600, &data).map_err(|e| e.to_string())?;
    Ok(path)
}

fn verify_sums(expected: &[ShippedSum], sums: &[String]) -> Result<(), (Option<i32>, String)> {
    let on_node: HashMap<&str, &str> =
        sums.iter().filter_map(|l| l.split_once("  ")).map(|(sum, path)| (path, sum)).collect();
    for (dest, sum) in expected {
        if on_node.get(dest.as_str()) != Some(&sum.as_str()) {
            return Err((None, format!("{dest} on the node does not match what was shipped (sha256)")));
        }
    }
    Ok(())
}

/// Runs `plan`, sending events, and returns what happened to every targeted node.
/// Cancelling `cancel` (Ctrl-C) starts no new step; steps already running are reported
/// as left running.
///
/// # Errors
///
/// Only for problems before any node is touched (the log directory cannot be created,
/// the assets do not match their manifest); node failures are in the [`Summary`].
pub async fn execute(
    manifest: &Manifest,
    plan: &Plan,
    settings: &Settings,
    events: UnboundedSender<Event>,
    interrupt: Interrupt,
) -> Result<Summary, InstallError> {
    let login = settings.plaintexts.0.get(&layout::encrypted(layout::LOGIN_KEY)).map(Vec::as_slice);
    let transport = OpenSsh::new(manifest, &settings.assets_dir, login).await?;
    execute_with(Arc::new(transport), manifest, plan, settings, events, interrupt).await
}

/// [`execute`] through any [`Transport`] (the tests' fake, or [`OpenSsh`]).
///
/// # Errors
///
/// As [`execute`].
pub async fn execute_with(
    transport: Arc<dyn Transport>,
    manifest: &Manifest,
    plan: &Plan,
    settings: &Settings,
    events: UnboundedSender<Event>,
    interrupt: Interrupt,
) -> Result<Summary, InstallError> {
    let cancel = interrupt.stop_waiting.clone();
    let no_new = interrupt.no_new_steps.clone();
    let mut involved: Vec<String> = plan.targets.clone();
    for phase in &plan.phases {
        for r in phase.runs.iter().flatten() {
            if !involved.contains(&r.host) {
                involved.push(r.host.clone());
            }
        }
    }
    check_local_assets(&settings.assets_dir, manifest, &plan.targets)?;
    create_log_dir(&settings.log_dir).map_err(|e| {
        InstallError::Assets(format!("failed to create log directory {} (mode 0700): {e}", settings.log_dir.display()))
    })?;
    let shared = Arc::new(Shared {
        journal: crate::journal::Journal::open(&settings.log_dir),
        run_id: new_run_id(),
        no_new_steps: no_new.clone(),
        manifest: manifest.clone(),
        settings: settings.clone(),
        events: events.clone(),
        transport,
        connections: tokio::sync::Mutex::new(HashMap::new()),
        running: Mutex::new(BTreeMap::new()),
        elapsed: Mutex::new(HashMap::new()),
        refused: Mutex::new(Default::default()),
    });
    for node in &involved {
        // A line an earlier run was cut in (hakube killed while a step printed) is ended
        // first, so this run's lines start on their own.
        let cut = ends_mid_line(&shared.log_path(node));
        shared
            .append_log(
                node,
                &format!("{}==> hakube run started at unix time {}\n", if cut { "\n" } else { "" }, unix_now()),
            )
            .await
            .map_err(InstallError::Logs)?;
    }
    settle_left_steps(&shared, &involved).await?;

    let mut state: BTreeMap<String, NodeOutcome> = BTreeMap::new();
    let mut blocked: Option<String> = None; // why dependent phases cannot run
    let mut stopped: Option<String> = None; // why no later phase runs at all
    let mut interrupted = false;
    let semaphore = Arc::new(Semaphore::new(settings.concurrency.max(1)));

    'phases: for (index, phase) in plan.phases.iter().enumerate() {
        if no_new.is_cancelled() || cancel.is_cancelled() {
            interrupted = true;
            break;
        }
        let depends_on_control_plane = phase.kind.needs_control_plane();

        let runnable: Vec<&Vec<Run>> = phase
            .runs
            .iter()
            .filter(|runs| {
                let r = &runs[0];
                !state.contains_key(&r.node) && (r.host == r.node || !state.contains_key(&r.host))
            })
            .collect();
        // After a stop, nothing runs; after a failed init (and the like), nothing that needs
        // the control plane: every node of the phase not already decided is skipped.
        let skip = stopped.as_ref().or(blocked.as_ref().filter(|_| depends_on_control_plane));
        if let Some(reason) = skip {
            for runs in &phase.runs {
                let node = &runs[0].node;
                if !state.contains_key(node) {
                    let _ = events.send(Event::NodeSkipped { node: node.clone(), reason: reason.clone() });
                    state.insert(node.clone(), NodeOutcome::Skipped { reason: reason.clone() });
                }
            }
            continue;
        }
        if runnable.is_empty() {
            continue;
        }
        let _ = events.send(Event::PhaseStarted {
            index,
            title: phase.title.clone(),
            nodes: runnable.iter().map(|r| r[0].node.clone()).collect(),
        });
        let mut set = tokio::task::JoinSet::new();
        let mut tasks: HashMap<tokio::task::Id, (String, String)> = HashMap::new();
        let sequential = phase.order == Order::Sequential;
        let mut queue: std::collections::VecDeque<Vec<Run>> = runnable.into_iter().cloned().collect();
        loop {
            // Start what may start: everything (bounded) in parallel, one group at a time otherwise.
            while (!sequential || set.is_empty()) && !no_new.is_cancelled() {
                let Some(runs) = queue.pop_front() else { break };
                let shared = shared.clone();
                let semaphore = semaphore.clone();
                let first_step = runs[0].step.clone();
                let node = runs[0].node.clone();
                let task = set.spawn(async move {
                    let _permit = semaphore.acquire_owned().await;
                    run_group(&shared, &runs).await
                });
                tasks.insert(task.id(), (node, first_step));
            }
            if set.is_empty() {
                if no_new.is_cancelled() {
                    interrupted = true;
                }
                break;
            }
            tokio::select! {
                joined = set.join_next_with_id() => {
                    let (node, result) = match joined {
                        Some(Ok((_, done))) => done,
                        // A node task that panicked (a bug) is that node's failure, with the
                        // panic's message, never an "ok"; the step is the one it was on.
                        Some(Err(e)) if e.is_panic() => {
                            let (node, first) = tasks.get(&e.id()).cloned().unwrap_or_default();
                            let step = shared.running.lock().ok().and_then(|r| r.get(&node).cloned()).unwrap_or(first);
                            if let Ok(mut r) = shared.running.lock() {
                                r.remove(&node);
                            }
                            let payload = e.into_panic();
                            let what = payload
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| payload.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "no message".into());
                            (node, Err((step, None, format!("hakube's task for this node panicked: {what}"))))
                        }
                        _ => continue,
                    };
                    if let Err((step, exit_code, message)) = result {
                        let log = shared.log_path(&node);
                        let code = exit_code.map_or("no exit code".to_string(), |c| format!("exit code {c}"));
                        let text = format!("{message} ({code}); see {}", log.display());
                        let _ = events.send(Event::NodeFailed { node: node.clone(), step: step.clone(), message: text.clone(), log });
                        state.insert(node.clone(), NodeOutcome::Failed { step: step.clone(), exit_code, message });
                        match phase.on_failure {
                            OnFailure::Node => {}
                            OnFailure::ControlPlane => {
                                blocked = Some(if phase.kind == PhaseKind::Init {
                                    format!("kubeadm init failed on {node}")
                                } else {
                                    format!("the bootstrap token check failed on {node}")
                                })
                            }
                            OnFailure::RefusalStopsEverything
                                if !shared.refused.lock().is_ok_and(|r| r.contains(&node)) => {}
                            OnFailure::RefusalStopsEverything | OnFailure::Everything => {
                                let reason = if phase.on_failure == OnFailure::RefusalStopsEverything {
                                    format!("the versions {node} runs stopped the install before anything changed")
                                } else {
                                    format!("the upgrade stopped at {node} ({step} failed)")
                                };
                                skip_queued(&mut queue, &events, &mut state, &reason);
                                stopped = Some(reason);
                            }
                            OnFailure::RestOfPhase => {
                                let reason = format!("{step} failed on master {node}");
                                skip_queued(&mut queue, &events, &mut state, &reason);
                            }
                        }
                    }
                }
                _ = cancel.cancelled() => {
                    interrupted = true;
                    // The running steps' tasks are aborted and awaited, so that nothing
                    // holds a connection when they are closed below.
                    set.shutdown().await;
                    break 'phases;
                }
            }
        }
        if interrupted {
            break;
        }
    }

    let running = shared.running.lock().map(|r| r.clone()).unwrap_or_default();
    let elapsed = shared.elapsed.lock().map(|e| e.clone()).unwrap_or_default();
    let nodes = plan
        .targets
        .iter()
        .map(|node| {
            let outcome = match state.get(node) {
                Some(o) => o.clone(),
                None if interrupted => NodeOutcome::Interrupted { running: running.get(node).cloned() },
                None => NodeOutcome::Done,
            };
            NodeSummary {
                node: node.clone(),
                outcome,
                log: shared.log_path(node),
                elapsed: elapsed.get(node).copied().unwrap_or_default(),
            }
        })
        .collect();
    shared.close_all().await;
    Ok(Summary { nodes, interrupted })
}

/// Skips every group still queued in a phase, for `reason`.
fn skip_queued(
    queue: &mut std::collections::VecDeque<Vec<Run>>,
    events: &UnboundedSender<Event>,
    state: &mut BTreeMap<String, NodeOutcome>,
    reason: &str,
) {
    for runs in queue.drain(..) {
        let n = runs[0].node.clone();
        let _ = events.send(Event::NodeSkipped { node: n.clone(), reason: reason.to_string() });
        state.insert(n, NodeOutcome::Skipped { reason: reason.to_string() });
    }
}

type GroupResult = (String, Result<(), (String, Option<i32>, String)>);

/// Runs one node's runs of a phase in order, stopping at the first failure.
async fn run_group(shared: &Shared, runs: &[Run]) -> GroupResult {
    let node = runs[0].node.clone();
    for run in runs {
        if shared.no_new_steps.is_cancelled() {
            break;
        }
        let _ = shared.events.send(Event::StepStarted { node: node.clone(), step: run.step.clone() });
        if let Ok(mut r) = shared.running.lock() {
            r.insert(node.clone(), run.step.clone());
        }
        let on = if run.host == run.node { String::new() } else { format!(" for {}", run.node) };
        let start = Instant::now();
        let result = match shared
            .append_log(&run.host, &format!("==> step {}{on} started at unix time {}\n", run.step, unix_now()))
            .await
        {
            Ok(()) => run_one(shared, run).await,
            Err(message) => RunResult::Failed { exit_code: None, message },
        };
        let elapsed = start.elapsed();
        if let Ok(mut r) = shared.running.lock() {
            r.remove(&node);
        }
        if let Ok(mut e) = shared.elapsed.lock() {
            *e.entry(node.clone()).or_default() += elapsed;
        }
        let result = match result {
            RunResult::Ok | RunResult::Skipped => {
                let word = if matches!(result, RunResult::Skipped) { "already done, skipped" } else { "finished" };
                let line = format!("==> step {} {word} after {:.1}s\n", run.step, elapsed.as_secs_f64());
                match shared.append_log(&run.host, &line).await {
                    Ok(()) => result,
                    Err(message) => RunResult::Failed { exit_code: None, message },
                }
            }
            failed => failed,
        };
        match result {
            RunResult::Ok | RunResult::Skipped => {
                let outcome =
                    if matches!(result, RunResult::Skipped) { StepOutcome::Skipped } else { StepOutcome::Done };
                let _ = shared.events.send(Event::StepFinished {
                    node: node.clone(),
                    step: run.step.clone(),
                    outcome,
                    elapsed,
                });
            }
            RunResult::Failed { exit_code, mut message } => {
                if let Err(e) =
                    shared.append_log(&run.host, &format!("==> step {} FAILED: {message}\n", run.step)).await
                {
                    if !message.contains(&e) {
                        message = format!("{message}; {e}");
                    }
                }
                let _ = shared.events.send(Event::StepFinished {
                    node: node.clone(),
                    step: run.step.clone(),
                    outcome: StepOutcome::Failed(exit_code),
                    elapsed,
                });
                return (node, Err((run.step.clone(), exit_code, message)));
            }
        }
    }
    (node, Ok(()))
}

/// Whether the file at `path` exists and its last byte is not a newline (read alone).
fn ends_mid_line(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut last = [0u8; 1];
    std::fs::File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::End(-1)).and_then(|_| f.read_exact(&mut last)))
        .is_ok_and(|()| last[0] != b'\n')
}

/// A fresh run id: 12 lowercase hex digits of the sha256 of the time, the process id and a
/// random hasher seed; unit names of different runs differ by it.
fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    sha256_hex(&h.finish().to_le_bytes())[..12].to_string()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: &[u8]) -> ManifestEntry {
        ManifestEntry {
            sha256: sha256_hex(bytes),
            mode: "0644".into(),
            secret: false,
            encrypted: false,
            nodes: vec!["w0".into()],
            destination: Some("/etc/hakube/kubeadm.yaml".into()),
        }
    }

    /// A node name may be a 253-character RFC 1123 subdomain; `<node>.log` would be 257
    /// bytes, past NAME_MAX, and its log went missing. The name is shortened with a hash,
    /// stays the same for the same node and differs for names sharing a prefix.
    #[tokio::test]
    async fn a_253_character_node_name_gets_a_log_file() {
        let label = "a".repeat(63);
        let long = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(long.len(), 253);
        let other = format!("{}c", &long[..252]);
        let name = log_file_name(&long);
        assert!(name.len() <= 255 && name.ends_with(".log") && name.starts_with(&long[..200]), "{name}");
        assert_eq!(name, log_file_name(&long), "stable");
        assert_ne!(name, log_file_name(&other), "two long names, one file");
        assert_eq!(log_file_name("w0"), "w0.log");
        let short = "x".repeat(251);
        assert_eq!(log_file_name(&short), format!("{short}.log"), "255 bytes still fit");
        let dir = tempfile::tempdir().unwrap();
        let too_long = open_log(&dir.path().join(format!("{long}.log"))).await.expect_err("NAME_MAX");
        assert_eq!(too_long.raw_os_error(), Some(rustix::io::Errno::NAMETOOLONG.raw_os_error()), "{too_long}");
        open_log(&dir.path().join(&name)).await.unwrap();
        assert!(dir.path().join(&name).is_file());
    }

    /// Issue 11, item 3: a file of the assets replaced by a link to a file with the same
    /// bytes elsewhere (so its sha256 still matches) is refused by name, not shipped.
    #[test]
    fn a_linked_asset_is_refused_not_shipped() {
        let temp = tempfile::tempdir().unwrap();
        let assets = temp.path().join("assets");
        std::fs::create_dir_all(assets.join("nodes")).unwrap();
        std::fs::create_dir_all(temp.path().join("elsewhere")).unwrap();
        std::fs::write(temp.path().join("elsewhere/kubeadm.yaml"), b"kind: x\n").unwrap();
        let e = entry(b"kind: x\n");
        let files = [("nodes/w0/kubeadm.yaml", &e)];
        std::os::unix::fs::symlink("../elsewhere", assets.join("nodes/w0")).unwrap();
        let err = ship_archive(&assets, &files, &Plaintexts::default()).expect_err("shipped through a link");
        assert!(err.contains(&format!("{} is a symbolic link", assets.join("nodes/w0").display())), "{err}");
        std::fs::remove_file(assets.join("nodes/w0")).unwrap();
        std::fs::create_dir(assets.join("nodes/w0")).unwrap();
        std::os::unix::fs::symlink("../../elsewhere/kubeadm.yaml", assets.join("nodes/w0/kubeadm.yaml")).unwrap();
        let err = ship_archive(&assets, &files, &Plaintexts::default()).expect_err("shipped a linked file");
        assert!(err.contains("nodes/w0/kubeadm.yaml is a symbolic link"), "{err}");
        std::fs::remove_file(assets.join("nodes/w0/kubeadm.yaml")).unwrap();
        std::fs::write(assets.join("nodes/w0/kubeadm.yaml"), b"kind: x\n").unwrap();
        assert!(ship_archive(&assets, &files, &Plaintexts::default()).is_ok());
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    fn probe(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn versions_are_judged_by_the_skew_policy() {
        let fresh = probe(&[]);
        assert!(judge_versions("w0", &fresh, "1.36.4", true).is_ok(), "a fresh node");
        let same = probe(&["kubelet v1.36.4", "joined", "apiserver v1.36.4"]);
        assert!(judge_versions("m0", &same, "1.36.4", true).is_ok());
        let older = probe(&["kubelet v1.35.4", "joined", "apiserver v1.35.4"]);
        let err = judge_versions("m0", &older, "1.36.4", true).unwrap_err();
        assert!(err.contains("m0's API server runs Kubernetes 1.35.4") && err.contains("hakube upgrade"), "{err}");
        let worker = probe(&["kubelet v1.35.4", "joined"]);
        assert!(judge_versions("w0", &worker, "1.36.4", true)
            .unwrap_err()
            .contains("w0 runs Kubernetes 1.35.4 in a cluster"));
        assert!(judge_versions("w0", &worker, "1.36.4", false).is_ok(), "a node about to be reset");
        let not_joined = probe(&["kubelet v1.35.4"]);
        assert!(judge_versions("w0", &not_joined, "1.36.4", true).is_ok(), "packages only, no cluster");
        let newer = probe(&["kubelet v1.36.4"]);
        for install in [true, false] {
            let err = judge_versions("w0", &newer, "1.35.4", install).unwrap_err();
            assert!(err.contains("downgrade"), "{err}");
        }
    }
}

#[cfg(test)]
mod host_key_tests {
    use super::*;

    const RENDERED: &str =
        "# render's\n203.0.113.5,10.0.0.5,m0 ssh-ed25519 AAAAm0\n[10.0.0.6]:2222,w0 ssh-ed25519 AAAAw0\n";

    /// A node whose host key render pinned is checked strictly against it under either
    /// policy; accept-new applies only to a node without one (issue 11, item 6).
    #[test]
    fn a_node_with_a_rendered_host_key_is_always_checked_strictly() {
        use HostKeyPolicy::{AcceptNew, Strict};
        for policy in [Strict, AcceptNew] {
            assert_eq!(host_key_check(policy, RENDERED, "203.0.113.5", 22), Strict, "{policy:?}");
            assert_eq!(host_key_check(policy, RENDERED, "10.0.0.5", 22), Strict, "{policy:?}");
            assert_eq!(host_key_check(policy, RENDERED, "10.0.0.6", 2222), Strict, "{policy:?}");
        }
        // Not pinned by render (another address, or another port than the pinned one).
        assert_eq!(host_key_check(AcceptNew, RENDERED, "10.0.0.7", 22), AcceptNew);
        assert_eq!(host_key_check(AcceptNew, RENDERED, "10.0.0.6", 22), AcceptNew);
        assert_eq!(host_key_check(AcceptNew, RENDERED, "10.0.0.5", 2222), AcceptNew);
        assert_eq!(host_key_check(AcceptNew, "", "10.0.0.5", 22), AcceptNew);
        assert_eq!(host_key_check(Strict, "", "10.0.0.5", 22), Strict);
    }

    #[test]
    fn the_target_checks_rendered_nodes_against_the_rendered_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ssh")).unwrap();
        std::fs::write(dir.path().join(layout::KNOWN_HOSTS), "10.0.0.10 ssh-ed25519 AAAAm0\n").unwrap();
        let mut manifest: Manifest =
            Manifest::parse(r#"{ "format": 2, "clusterName": "t", "nodes": {}, "files": {} }"#).unwrap();
        manifest.install.host_key_policy = HostKeyPolicy::AcceptNew;
        for (name, address) in [("m0", "10.0.0.10"), ("w0", "10.0.0.20")] {
            let ssh = hakube_assets::manifest::SshEntry {
                address: address.into(),
                port: 22,
                user: "root".into(),
                login_key: None,
            };
            let entry = hakube_assets::NodeEntry {
                role: hakube_cluster::Role::Master,
                first_master: false,
                steps: Vec::new(),
                upgrade_steps: Vec::new(),
                ssh,
            };
            manifest.nodes.insert(name.into(), entry);
        }
        let m0 = target(&manifest, dir.path(), "m0", None).unwrap();
        assert_eq!((m0.policy, m0.known_hosts), (HostKeyPolicy::Strict, dir.path().join(layout::KNOWN_HOSTS)));
        let w0 = target(&manifest, dir.path(), "w0", None).unwrap();
        assert_eq!(
            (w0.policy, w0.known_hosts),
            (HostKeyPolicy::AcceptNew, dir.path().join(layout::KNOWN_HOSTS_ACCEPTED))
        );
    }
}
