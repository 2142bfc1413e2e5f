//! `hakube install` and `hakube reset`: plan, run, draw events, print the summary.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use hakube_assets::Manifest;
use hakube_install::plan::{self, Mode};
use hakube_install::{Event, NodeOutcome, Settings, StepOutcome, Summary};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Exit code when one or more nodes failed.
pub const EXIT_NODES_FAILED: u8 = 3;
/// Exit code after Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The options `install` and `reset` share.
pub struct Request<'a> {
    /// The definition to compare the assets with (`None`: `--assets-only`, the assets alone).
    pub definition: Option<&'a Path>,
    pub nodes: &'a [String],
    pub assets_dir: &'a Path,
    pub log_dir: &'a Path,
    pub concurrency: Option<usize>,
    pub connect_timeout: Duration,
    pub dry_run: bool,
    /// `hakube upgrade --snapshot-dir`: where the etcd snapshot goes.
    pub snapshot_dir: &'a Path,
    /// `--identity` files, for the secrets encrypted at rest.
    pub identities: &'a [std::path::PathBuf],
    pub mode: Mode,
    /// `--yes`: reset without asking.
    pub assume_yes: bool,
}

/// With the external etcd topology, each targeted master's etcd step waits until its member
/// answers, which needs a quorum (more than half of all masters) running: the masters that
/// are not targeted are assumed to run, and enough targeted ones must run their steps at the
/// same time. Refuses a `concurrency` below that before anything starts, rather than let the
/// steps wait for each other until they time out.
///
/// Errors: the concurrency needed, the masters and the flag or field to raise.
fn check_etcd_quorum(manifest: &Manifest, targets: &[String], concurrency: usize) -> Result<()> {
    if manifest.install.etcd_topology != hakube_cluster::definition::EtcdTopology::External {
        return Ok(());
    }
    let masters: Vec<&String> =
        manifest.nodes.iter().filter(|(_, n)| n.role == hakube_cluster::Role::Master).map(|(name, _)| name).collect();
    let targeted = masters.iter().filter(|m| targets.contains(m)).count();
    let quorum = masters.len() / 2 + 1;
    let needed = quorum.saturating_sub(masters.len() - targeted);
    if concurrency < needed {
        bail!(
            "installing {targeted} of {} masters with external etcd needs {needed} of them running their etcd steps at once (a quorum is {quorum} members), but the concurrency is {concurrency}: pass --concurrency {needed} or more (or raise installConcurrency)",
            masters.len()
        );
    }
    Ok(())
}

/// Refuses assets rendered from another definition than `path`'s: each difference that
/// changes what install does is named (a node's address or port, the version, ...), and
/// the fix is to render again. The definition is read as render reads it, except that any
/// hook name is accepted (render already checked them against its templates).
fn check_fresh(path: &Path, assets_dir: &Path, manifest: &Manifest) -> Result<bool> {
    let Some(loaded) = crate::load_definition(path, &hakube_cluster::HookCatalog::any())? else {
        return Ok(false);
    };
    let stale = manifest.stale_against(&loaded.definition);
    if !stale.is_empty() {
        bail!(
            "{} is stale for {}:\n  {}\nrun `hakube render {}` first (or install from the assets alone with --assets-only)",
            assets_dir.join(hakube_assets::layout::MANIFEST).display(),
            path.display(),
            stale.join("\n  "),
            path.display()
        );
    }
    Ok(true)
}

/// The plaintexts of the encrypted files install ships or uses, decrypted in memory before
/// anything connects, so a missing identity stops the run before it touches a node.
fn decrypt_secrets(
    assets_dir: &Path,
    manifest: &Manifest,
    identities: &[std::path::PathBuf],
) -> Result<hakube_render::secrets::Plaintexts> {
    use hakube_render::secrets;
    if !manifest.files.values().any(|e| e.encrypted) {
        return Ok(secrets::Plaintexts::default());
    }
    let ids = secrets::Identities::load(
        &secrets::Sources::from_env(identities.to_vec()),
        crate::render::any_ssh(&manifest.recipients),
    )?;
    let assets = hakube_render::assets::AssetsDir::open(assets_dir)?
        .with_context(|| format!("{} does not exist", assets_dir.display()))?;
    let plaintexts = secrets::decrypt_for_install(manifest, |rel| assets.read(rel).ok(), &ids)
        .with_context(|| format!("failed to decrypt the secrets of {}", assets_dir.display()))?;
    Ok(plaintexts)
}

pub fn run(req: Request<'_>) -> Result<ExitCode> {
    // Untrusted until verified: only the layout's files, destinations and sha256s (issue 11);
    // what install needs besides the files is in the manifest too.
    let manifest = hakube_render::assets::verify(req.assets_dir)?;
    if let Some(path) = req.definition {
        if !check_fresh(path, req.assets_dir, &manifest)? {
            return Ok(ExitCode::from(1));
        }
    }
    let plan = match req.mode {
        Mode::Upgrade => plan::build_upgrade(&manifest, req.nodes)?,
        mode => plan::build(&manifest, req.nodes, mode)?,
    };
    if req.mode != Mode::Reset {
        for warning in expiring_certificates(req.assets_dir, &manifest, SystemTime::now()) {
            eprintln!("hakube: warning: {warning}");
        }
    }
    if req.dry_run {
        println!("plan for {} node(s) of cluster {:?}:", plan.targets.len(), manifest.cluster_name);
        print!("{plan}");
        return Ok(ExitCode::SUCCESS);
    }
    if req.mode == Mode::Reset && !req.assume_yes && !confirm_reset(&plan.targets)? {
        eprintln!("hakube: reset cancelled");
        return Ok(ExitCode::from(1));
    }
    let concurrency = req.concurrency.unwrap_or(manifest.install.concurrency as usize);
    if req.mode == Mode::Install {
        check_etcd_quorum(&manifest, &plan.targets, concurrency)?;
    }
    let plaintexts = decrypt_secrets(req.assets_dir, &manifest, req.identities)?;
    let settings = Settings {
        assets_dir: req.assets_dir.to_path_buf(),
        log_dir: req.log_dir.to_path_buf(),
        concurrency,
        connect_budget: req.connect_timeout,
        plaintexts: std::sync::Arc::new(plaintexts),
        snapshot_dir: (req.mode == Mode::Upgrade).then(|| req.snapshot_dir.to_path_buf()),
    };
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    let summary = runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // The first Ctrl-C starts nothing new and waits for the running steps (they run
        // detached on the nodes); the second stops waiting and leaves them running there.
        let interrupt = hakube_install::Interrupt::default();
        let on_ctrl_c = interrupt.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_ctrl_c.no_new_steps.cancel();
                eprintln!("\nhakube: Ctrl-C: no new step starts; waiting for the running ones, which run on the nodes whatever hakube does (Ctrl-C again to stop waiting: they keep running, and `hakube install` again attaches to them)");
                if tokio::signal::ctrl_c().await.is_ok() {
                    on_ctrl_c.stop_waiting.cancel();
                }
            }
        });
        let reporter = tokio::spawn(report(rx, plan.targets.clone()));
        let result = hakube_install::execute(&manifest, &plan, &settings, tx, interrupt).await;
        let _ = reporter.await;
        result
    })?;
    print_summary(&summary);
    Ok(ExitCode::from(exit_code(&summary)))
}

/// The exit code of a run that reached the nodes: 0 when every targeted node finished, 130
/// after Ctrl-C, 3 when nodes failed.
fn exit_code(summary: &Summary) -> u8 {
    if summary.success() {
        0
    } else if summary.interrupted {
        EXIT_INTERRUPTED
    } else {
        EXIT_NODES_FAILED
    }
}

/// The certificates in the assets (every `.crt` file the manifest lists, and the admin
/// kubeconfig's client certificate) that are in the last third of their validity or
/// expired at `now`, each as one line naming the file (under `assets_dir`), its dates
/// (UTC, `YYYY-MM-DD`) and what to run. A file that cannot be read (a link below the
/// assets directory is never followed) is skipped: shipping reports it.
fn expiring_certificates(assets_dir: &Path, manifest: &Manifest, now: SystemTime) -> Vec<String> {
    let Ok(Some(assets)) = hakube_render::assets::AssetsDir::open(assets_dir) else { return Vec::new() };
    let files: Vec<(&str, Vec<u8>)> = manifest
        .files
        .keys()
        .filter(|path| hakube_render::render::holds_certificate(path))
        .filter_map(|path| Some((path.as_str(), assets.read(path).ok()?)))
        .collect();
    hakube_render::render::expiring_certificates(files.iter().map(|(path, bytes)| (*path, bytes.as_slice())), now)
        .iter()
        .map(|warning| format!("{}/{warning}", assets_dir.display()))
        .collect()
}

fn confirm_reset(targets: &[String]) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to reset {} without confirmation: pass --yes", targets.join(", "));
    }
    eprint!("This runs `kubeadm reset` and removes hakube's files on: {}\nType yes to continue: ", targets.join(", "));
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// Draws events: a live display on a terminal, timestamped lines otherwise.
async fn report(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>, nodes: Vec<String>) {
    if std::io::stderr().is_terminal() {
        live(&mut rx, &nodes).await
    } else {
        while let Some(event) = rx.recv().await {
            if let Some(line) = plain(&event) {
                eprintln!("{} {line}", humantime::format_rfc3339_seconds(SystemTime::now()));
            }
        }
    }
}

fn plain(event: &Event) -> Option<String> {
    Some(match event {
        Event::PhaseStarted { index, title, nodes } => format!("phase {}: {title} ({})", index + 1, nodes.join(", ")),
        Event::Connecting { attempt: 1, .. } => return None,
        // Attempt 0: a step's log stopped arriving and hakube reattaches to it.
        Event::Connecting { node, attempt: 0, last_error } => {
            format!("{node}: {}", last_error.as_deref().unwrap_or("reattaching"))
        }
        Event::Connecting { node, attempt, last_error } => {
            format!("{node}: connecting, attempt {attempt} ({})", last_error.as_deref().unwrap_or(""))
        }
        Event::StepStarted { node, step } => format!("{node}: {step} started"),
        Event::StepFinished { node, step, outcome, elapsed } => {
            let how = match outcome {
                StepOutcome::Done => "done".to_string(),
                StepOutcome::Skipped => "already done".to_string(),
                StepOutcome::Failed(Some(code)) => format!("FAILED with exit code {code}"),
                StepOutcome::Failed(None) => "FAILED".to_string(),
            };
            format!("{node}: {step} {how} ({:.1}s)", elapsed.as_secs_f64())
        }
        Event::NodeFailed { node, step, message, .. } => format!("{node}: failed in step {step}: {message}"),
        Event::NodeSkipped { node, reason } => format!("{node}: skipped: {reason}"),
        Event::EndedWhileAway { node, step, exit_code, log } => {
            let code = exit_code.map_or("an unknown exit code".to_string(), |c| format!("exit code {c}"));
            format!(
                "{node}: {step}, started by an earlier run, ended while hakube was away with {code}; its log is in {}",
                log.display()
            )
        }
    })
}

/// What the live display shows, kept apart from the terminal so that it renders from
/// events alone (and is tested so): the header (the phase) and one message per node (its
/// running step with the seconds it has run, or what last happened to it).
struct LiveView {
    header: String,
    width: usize,
    rows: Vec<(String, String)>,
    current: HashMap<String, (String, Instant)>,
}

impl LiveView {
    fn new(nodes: &[String]) -> LiveView {
        LiveView {
            header: String::new(),
            width: nodes.iter().map(String::len).max().unwrap_or(4),
            rows: nodes.iter().map(|n| (n.clone(), "waiting".to_string())).collect(),
            current: HashMap::new(),
        }
    }

    fn set(&mut self, node: &str, message: String) {
        if let Some(row) = self.rows.iter_mut().find(|(n, _)| n == node) {
            row.1 = message;
        }
    }

    /// Takes in one event at time `now`.
    fn apply(&mut self, event: &Event, now: Instant) {
        match event {
            Event::PhaseStarted { index, title, .. } => self.header = format!("phase {}: {title}", index + 1),
            Event::StepStarted { node, step } => {
                self.current.insert(node.clone(), (step.clone(), now));
            }
            Event::StepFinished { node, .. } => {
                self.current.remove(node);
            }
            _ => {}
        }
        let node = match event {
            Event::Connecting { node, .. }
            | Event::StepFinished { node, .. }
            | Event::NodeFailed { node, .. }
            | Event::NodeSkipped { node, .. }
            | Event::EndedWhileAway { node, .. } => Some(node),
            _ => None,
        };
        if let (Some(node), Some(line)) = (node, plain(event)) {
            let text = line.split_once(": ").map_or(line.as_str(), |(_, rest)| rest).to_string();
            self.set(node, text);
        }
        self.tick(now);
    }

    /// Brings the running steps' seconds up to `now`.
    fn tick(&mut self, now: Instant) {
        let running: Vec<(String, String)> = self
            .current
            .iter()
            .map(|(node, (step, since))| (node.clone(), format!("{step} ({}s)", now.duration_since(*since).as_secs())))
            .collect();
        for (node, message) in running {
            self.set(&node, message);
        }
    }

    /// The display as text: the header, then `  NODE MESSAGE` per node.
    #[cfg(test)]
    fn text(&self) -> String {
        let mut out = format!("{}\n", self.header);
        for (node, message) in &self.rows {
            out.push_str(&format!("  {node:<width$} {message}\n", width = self.width));
        }
        out
    }
}

async fn live(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>, nodes: &[String]) {
    let multi = MultiProgress::new();
    let header = multi.add(ProgressBar::new_spinner());
    header.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("static template"));
    header.enable_steady_tick(Duration::from_millis(120));
    let mut view = LiveView::new(nodes);
    let style =
        ProgressStyle::with_template(&format!("  {{prefix:<{}}} {{msg}}", view.width)).expect("static template");
    let bars: Vec<ProgressBar> = nodes
        .iter()
        .map(|node| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(node.clone());
            bar
        })
        .collect();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                view.apply(&event, Instant::now());
            }
            _ = ticker.tick() => view.tick(Instant::now()),
        }
        header.set_message(view.header.clone());
        for (bar, (_, message)) in bars.iter().zip(&view.rows) {
            bar.set_message(message.clone());
        }
    }
    header.finish_and_clear();
    for bar in &bars {
        bar.finish();
    }
}

fn print_summary(summary: &Summary) {
    print!("{}", summary_text(summary));
}

/// The closing table: one row per node (result, time, what to do), then one line overall.
fn summary_text(summary: &Summary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let width = summary.nodes.iter().map(|n| n.node.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(out, "{:<width$}  {:<12} {:>8}  DETAIL", "NODE", "RESULT", "TIME");
    for n in &summary.nodes {
        let (result, detail) = match &n.outcome {
            NodeOutcome::Done => ("ok".to_string(), String::new()),
            NodeOutcome::Failed { step, exit_code, message } => {
                let code = exit_code.map_or(String::new(), |c| format!(", exit code {c}"));
                ("FAILED".to_string(), format!("step {step}{code}: {message}; log {}", n.log.display()))
            }
            NodeOutcome::Skipped { reason } => ("skipped".to_string(), reason.clone()),
            NodeOutcome::Interrupted { running: Some(step) } => (
                "interrupted".to_string(),
                format!("step {step} was left running on the node; `hakube install` again attaches to it"),
            ),
            NodeOutcome::Interrupted { running: None } => ("interrupted".to_string(), "not started".to_string()),
        };
        let _ = writeln!(out, "{:<width$}  {:<12} {:>7.1}s  {}", n.node, result, n.elapsed.as_secs_f64(), detail);
    }
    let failed = summary.nodes.iter().filter(|n| n.outcome != NodeOutcome::Done).count();
    if summary.interrupted {
        let _ = writeln!(out, "interrupted: {} of {} node(s) did not finish", failed, summary.nodes.len());
    } else if failed > 0 {
        let _ = writeln!(
            out,
            "{failed} of {} node(s) did not finish; fix the cause and run the same command again",
            summary.nodes.len()
        );
    } else {
        let _ = writeln!(out, "{} node(s) done", summary.nodes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A run as the runner reports it: a phase, a step done, one failed, one skipped, one
    /// reconnecting, one still running.
    fn events() -> Vec<Event> {
        let nodes = ["master0", "worker0", "worker1"].map(String::from).to_vec();
        vec![
            Event::PhaseStarted { index: 0, title: "prepare nodes".into(), nodes: nodes.clone() },
            Event::StepStarted { node: "master0".into(), step: "prepare".into() },
            Event::StepStarted { node: "worker0".into(), step: "prepare".into() },
            Event::StepStarted { node: "worker1".into(), step: "prepare".into() },
            Event::StepFinished {
                node: "master0".into(),
                step: "prepare".into(),
                outcome: StepOutcome::Done,
                elapsed: Duration::from_millis(4200),
            },
            Event::Connecting { node: "worker1".into(), attempt: 2, last_error: Some("connection refused".into()) },
            Event::StepFinished {
                node: "worker0".into(),
                step: "prepare".into(),
                outcome: StepOutcome::Failed(Some(7)),
                elapsed: Duration::from_secs(3),
            },
            Event::NodeFailed {
                node: "worker0".into(),
                step: "prepare".into(),
                message: "boot.sh prepare failed (exit code 7); see logs/worker0.log".into(),
                log: PathBuf::from("logs/worker0.log"),
            },
            Event::PhaseStarted {
                index: 1,
                title: "kubeadm init on the first master".into(),
                nodes: vec!["master0".into()],
            },
            Event::StepStarted { node: "master0".into(), step: "init".into() },
            Event::NodeSkipped { node: "worker0".into(), reason: "kubeadm init failed on master0".into() },
        ]
    }

    #[test]
    fn plain_lines_render_from_events() {
        let lines: Vec<String> = events().iter().filter_map(plain).collect();
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn the_live_view_renders_from_events() {
        let start = Instant::now();
        let mut view = LiveView::new(&["master0".into(), "worker0".into(), "worker1".into()]);
        for (i, event) in events().iter().enumerate() {
            view.apply(event, start + Duration::from_secs(i as u64));
        }
        view.tick(start + Duration::from_secs(40));
        insta::assert_snapshot!(view.text());
    }

    #[test]
    fn the_summary_lists_what_was_left_running_and_ctrl_c_exits_130() {
        let node = |node: &str, outcome: NodeOutcome| hakube_install::NodeSummary {
            node: node.into(),
            outcome,
            log: PathBuf::from(format!("logs/{node}.log")),
            elapsed: Duration::from_millis(12_300),
        };
        let summary = Summary {
            nodes: vec![
                node("master0", NodeOutcome::Done),
                node(
                    "worker0",
                    NodeOutcome::Failed {
                        step: "join".into(),
                        exit_code: Some(7),
                        message: "boot.sh join failed".into(),
                    },
                ),
                node("worker1", NodeOutcome::Interrupted { running: Some("join".into()) }),
                node("worker2", NodeOutcome::Interrupted { running: None }),
            ],
            interrupted: true,
        };
        insta::assert_snapshot!(summary_text(&summary));
        assert_eq!(exit_code(&summary), 130);
        assert_eq!(exit_code(&Summary { interrupted: false, ..summary.clone() }), 3);
        let done = Summary { nodes: vec![node("master0", NodeOutcome::Done)], interrupted: false };
        assert_eq!(exit_code(&done), 0);
    }
}
