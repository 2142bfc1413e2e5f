//! Runs a [`Plan`]: the dispatcher. It takes the phases in order, starts each node's group
//! of runs with bounded concurrency (one group at a time in a sequential phase), contains
//! failures as each phase's [`crate::plan::OnFailure`] says (a worker's failure stops only
//! that worker; a failed `init`, token check or master join stops what depends on it),
//! carries out Ctrl-C ([`Interrupt`]) and sends [`Event`]s; the executor
//! (`crate::executor`) runs each group on its node through a [`Transport`] ([`OpenSsh`],
//! or a fake in tests).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a connection may sit unused before it is checked (`ssh -O check`) again.
const IDLE_CHECK: Duration = Duration::from_secs(30);

use backon::{ExponentialBuilder, Retryable};
use hakube_assets::layout;
use hakube_assets::manifest::{sha256_hex, Manifest};
use hakube_assets::secrets::Plaintexts;
use hakube_cluster::definition::HostKeyPolicy;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::events::Event;
pub use crate::executor::{judge_versions, VERSION_PROBE};
use crate::executor::{run_group, settle_left_steps};
use crate::plan::{OnFailure, Order, PhaseKind, Plan, Run};
use crate::transport::{Connection, NodeConnection, Target, Transport, TransportError};
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

/// A node's open connection and when it was last used (`None`: to be checked first).
pub(crate) type Cached = (Arc<dyn NodeConnection>, Option<Instant>);

pub(crate) struct Shared {
    /// The run journal in the logs directory.
    pub(crate) journal: crate::journal::Journal,
    /// Cancelled by the first Ctrl-C: no step starts after it (running ones go on).
    pub(crate) no_new_steps: CancellationToken,
    /// This run's id (12 hex digits), part of every unit name it starts.
    pub(crate) run_id: String,
    pub(crate) manifest: Manifest,
    pub(crate) settings: Settings,
    pub(crate) events: UnboundedSender<Event>,
    /// Declared before `transport`, so that, dropped, the masters are told to exit while
    /// their sockets still exist (fields drop in order); [`Shared::close_all`] closes them
    /// before that on every way out of [`execute`].
    /// Each with when it was last used (`None`: to be checked before its next use).
    pub(crate) connections: tokio::sync::Mutex<HashMap<String, Cached>>,
    pub(crate) transport: Arc<dyn Transport>,
    /// What is running right now, node -> step, for the Ctrl-C report.
    pub(crate) running: Mutex<BTreeMap<String, String>>,
    pub(crate) elapsed: Mutex<HashMap<String, Duration>>,
    /// Nodes whose [`VERSIONS`] step refused the run (a version install must not change),
    /// as opposed to failing to reach the node: a refusal stops everything, an unreachable
    /// node fails alone.
    pub(crate) refused: Mutex<std::collections::BTreeSet<String>>,
}

impl Shared {
    pub(crate) fn log_path(&self, node: &str) -> PathBuf {
        self.settings.log_dir.join(log_file_name(node))
    }

    /// Appends to the node's log; the error names the file.
    pub(crate) async fn append_log(&self, node: &str, text: &str) -> Result<(), String> {
        let path = self.log_path(node);
        let write = async { open_log(&path).await?.write_all(text.as_bytes()).await };
        write.await.map_err(|e| format!("cannot write the log file {}: {e}", path.display()))
    }

    /// Closes every node's connection. Called once no task holds one (their tasks were
    /// joined or shut down); one still shared is dropped, which asks its master to exit.
    pub(crate) async fn close_all(&self) {
        let connections: Vec<Arc<dyn NodeConnection>> =
            self.connections.lock().await.drain().map(|(_, (c, _))| c).collect();
        for conn in connections {
            conn.close().await;
        }
    }

    pub(crate) async fn connection(&self, node: &str) -> Result<Arc<dyn NodeConnection>, TransportError> {
        let cached = self.connections.lock().await.get(node).cloned();
        if let Some((c, used)) = cached {
            // A master that exited (idle past ControlPersist, or its node went away) is
            // replaced by a new connection. It is asked (`ssh -O check`) only when it was
            // idle a while or a command on it failed ([`Shared::suspect`]): asking before
            // every command cost an ssh process per step on the hot path.
            if used.is_some_and(|t| t.elapsed() < IDLE_CHECK) || c.is_alive().await {
                self.connections.lock().await.insert(node.into(), (c.clone(), Some(Instant::now())));
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
        self.connections.lock().await.insert(node.into(), (conn.clone(), Some(Instant::now())));
        Ok(conn)
    }

    /// Marks `node`'s connection as one to check before its next use (a command on it
    /// failed, or its output stopped arriving).
    pub(crate) async fn suspect(&self, node: &str) {
        if let Some((_, used)) = self.connections.lock().await.get_mut(node) {
            *used = None;
        }
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

/// Runs `plan` over OpenSSH ([`OpenSsh`]), sending events, and returns what happened to every
/// targeted node. `interrupt` is Ctrl-C ([`Interrupt`]): no new step after the first, no more
/// waiting after the second; steps still running then are reported as left running.
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

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
