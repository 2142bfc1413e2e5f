//! `cargo xtask bench install`: hakube install (release build) on a 50-node lab (3 masters,
//! 47 workers) of real Debian containers, against the floor any SSH-based installer stands on.
//!
//! On the same booted nodes, in this order:
//!
//! - **C**: one round of plain parallel `ssh NODE true`, a new connection each;
//! - **R**: one round of `ssh -S SOCK NODE true` on every node at once over ControlMasters
//!   opened beforehand (`ssh -M -S SOCK -f -N`, ControlPersist): a command over an existing
//!   connection; the median of [`ROUNDS`] rounds;
//! - the **no-op install**: assets rendered from the same definition with
//!   `--templates xtask/noop-templates`, whose `boot.sh.j2` keeps boot.sh's interface but
//!   makes every step `true` between its two markers (a copy of the assets re-rendered, so
//!   the same CAs, token, host keys and login key: the nodes booted for the real assets
//!   accept it), installed with `--concurrency 50` (every node at once, as the floor assumes);
//!   then once more through an `ssh` wrapper on PATH that records each ssh process hakube
//!   starts, to count the SSH commands per node per step (not timed: the wrapper costs);
//! - the step runner by hand over the ControlMasters: `step.sh start|follow|status|clear`
//!   of one no-op step on every node at once, as four commands and as one;
//! - the **full install** of the real assets, as the definition says (stand-ins for
//!   kubeadm, kubelet and kubectl only), with its peak memory.
//!
//! The floor is `C + R × rounds`: the plan's phases as `hakube install --dry-run` prints
//! them, each parallel phase counted as the longest node's number of runs (a node's runs go
//! in order) and each one-at-a-time phase as its number of runs. Target: no-op install ≤ 1.3
//! × floor. Also the lab's own costs: the time to bring up 5 and 50 nodes (the image cached)
//! and the memory a node takes (proportional set size of its processes).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hakube_lab::{Lab, LabConfig, LabNode};

const MASTERS: usize = 3;
const WORKERS: usize = 47;
/// How many rounds each measurement over open connections takes (the median is used).
const ROUNDS: usize = 5;
/// The target: the no-op install within this factor of the floor.
const TARGET_RATIO: f64 = 1.3;
/// The concurrency of the no-op install: every node at once.
const NOOP_CONCURRENCY: usize = MASTERS + WORKERS;
/// How often the lab is brought up, and the no-op install timed, before the bench gives up.
/// Every lab node's systemd manages the same host cgroups (nspawn puts each container in
/// `payload/` below its own cgroup, and every nspawn of every lab runs in the host's root
/// one), so a unit of one node can lose its cgroup to another node's systemd removing it:
/// now and then a boot ends degraded with logins refused, or a step's unit fails with 219
/// (EXIT_CGROUP). Both are the lab's, not hakube's; each failed attempt is printed.
const LAB_ATTEMPTS: usize = 3;
const INSTALL_ATTEMPTS: usize = 3;
/// The step runner's path on a node (hakube_assets::steps::STEP_SCRIPT).
const STEP_SCRIPT: &str = "/etc/hakube/step.sh";

pub fn run(root: &Path) -> Result<()> {
    let status =
        Command::new("cargo").args(["build", "--release", "--quiet", "-p", "hakube"]).current_dir(root).status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    let hakube = crate::target_dir(root).join("release/hakube");
    let work = tempfile::Builder::new().prefix("hakube-bench-install").tempdir()?;
    let config = LabConfig {
        prefix: "hkb".into(),
        bridge: "hkbr8".into(),
        subnet_base: [10, 253],
        ..LabConfig::new(MASTERS, WORKERS, work.path().join("lab"))
    };
    let definition = work.path().join("cluster.json");
    let value = hakube_lab::definition(&config)?;
    std::fs::write(&definition, serde_json::to_string_pretty(&value)?)?;
    let assets = work.path().join("assets");
    render(&hakube, &definition, &assets, None)?;
    // The no-op assets: a copy of the real ones (CAs, token, host keys, login key) rendered
    // again with the no-op boot.sh.j2, so the nodes booted for the real assets take them.
    let noop_assets = work.path().join("assets-noop");
    run_cmd(Command::new("cp").arg("-a").arg(&assets).arg(&noop_assets))?;
    render(&hakube, &definition, &noop_assets, Some(&root.join("xtask/noop-templates")))?;
    let names: Vec<String> = ["masters", "workers"]
        .iter()
        .flat_map(|role| value[role].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n["nodeName"].as_str().map(String::from))
        .collect();
    check_noop_assets(&assets, &noop_assets, &names)?;
    let plan = dry_run(&hakube, &definition, &noop_assets, work.path())?;
    if plan != dry_run(&hakube, &definition, &assets, work.path())? {
        bail!("the no-op assets plan differently from the real ones");
    }
    let rounds: usize = plan.iter().map(PlanPhase::rounds).sum();
    let boot_runs: usize = plan.iter().flat_map(|p| &p.runs).filter(|(_, what)| what.starts_with("boot.sh ")).count();

    let login = std::fs::read_to_string(assets.join("ssh/id_ed25519.pub"))?;
    // The image first (built once per recipe), then a 5-node lab, then the 50 nodes.
    hakube_lab::image::ensure(&config.image_cache, config.distro).context("the lab image")?;
    let (lab, up_5) = lab_up(LabConfig { masters: 3, workers: 2, ..config.clone() })?;
    lab.down()?;
    println!("bringing up a lab of {MASTERS} masters + {WORKERS} workers ...");
    let config = LabConfig { host_keys: Some(assets.clone()), authorized_key: Some(login.trim().into()), ..config };
    let (lab, up_50) = lab_up(config)?;
    let booted_mib = mean_node_pss_mib(&lab);
    // Each figure is printed as soon as it is measured, so that a later failure loses none.
    println!("lab (Debian 12 containers, image cached):");
    println!("  up, 5 nodes                            {:>8.2} s", up_5.as_secs_f64());
    println!("  up, {} nodes                           {:>8.2} s", MASTERS + WORKERS, up_50.as_secs_f64());
    println!("  memory per node, booted                {booted_mib:>8.1} MiB (PSS, mean)");
    let nodes = lab.nodes();
    let ssh = Ssh { key: assets.join("ssh/id_ed25519"), known_hosts: assets.join("ssh/known_hosts") };
    let other_containers = other_nspawn_machines();
    println!(
        "{} nodes ({MASTERS} masters + {WORKERS} workers), stand-ins for kubeadm, kubelet and kubectl only; {} cores; load average {}; {other_containers} other lab containers running{}",
        MASTERS + WORKERS,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        if other_containers > 0 { " (timings may be disturbed)" } else { "" },
    );
    // What failed without stopping the bench (the run fails at the end).
    let mut failures: Vec<String> = Vec::new();

    // C: one round of plain parallel ssh: connect, run `true`, disconnect.
    let start = Instant::now();
    let children: Vec<_> = nodes
        .iter()
        .map(|n| ssh.command(n).arg("true").stdin(Stdio::null()).spawn())
        .collect::<std::io::Result<_>>()?;
    let mut ssh_failures = 0;
    for mut child in children {
        if !child.wait()?.success() {
            ssh_failures += 1;
        }
    }
    let c_round = start.elapsed().as_secs_f64();
    if ssh_failures > 0 {
        bail!("{ssh_failures} plain ssh connections failed");
    }
    println!("  C  one round of plain parallel ssh (a new connection each)       {c_round:>7.3} s");

    // R: commands over connections that exist.
    let masters = Masters::open(&ssh, &nodes, &work.path().join("cm"))?;
    let mut r_rounds = Vec::new();
    for _ in 0..ROUNDS {
        let round = masters.round(|_| vec!["true".into()])?;
        if let Some(failed) = round.failed.first() {
            bail!("`ssh -S SOCK NODE true` failed on {} node(s): {failed}", round.failed.len());
        }
        r_rounds.push(round.seconds);
    }
    let r_round = median(&r_rounds);
    println!(
        "  R  one round of `ssh -S SOCK NODE true` over open ControlMasters {r_round:>7.3} s (median of {ROUNDS}: {})",
        list(&r_rounds)
    );
    let counted_phases: Vec<String> = plan.iter().map(|p| format!("{} {}", short(&p.title), p.rounds())).collect();
    println!(
        "  rounds of the plan (`hakube install --dry-run`, {} phases; a parallel phase counts its longest node's runs, which go in order, a one-at-a-time phase each of its runs): {} = {rounds}",
        plan.len(),
        counted_phases.join(" + ")
    );
    let floor = c_round + r_round * rounds as f64;
    println!("  floor = C + R × {rounds} = {c_round:.3} + {r_round:.3} × {rounds} = {floor:.3} s");

    // The no-op install, timed; then again through the counting ssh wrapper.
    let noop_args = |logs: &str| -> Vec<OsString> {
        vec![
            "install".into(),
            definition.clone().into(),
            "--assets-dir".into(),
            noop_assets.clone().into(),
            "--log-dir".into(),
            work.path().join(logs).into(),
            "--concurrency".into(),
            NOOP_CONCURRENCY.to_string().into(),
        ]
    };
    let mut noop = install(&hakube, work.path(), &noop_args("logs-noop"), None)?;
    for attempt in 2..=INSTALL_ATTEMPTS {
        let Some(failure) = &noop.failure else { break };
        println!("  the no-op install failed after {:.2} s, timed again (attempt {attempt}): {failure}", noop.wall);
        noop = install(&hakube, work.path(), &noop_args(&format!("logs-noop-{attempt}")), None)?;
    }
    let ratio = noop.wall / floor;
    let verdict = if ratio <= TARGET_RATIO {
        "ok".to_string()
    } else {
        format!(
            "OVER: {:.2} s above {TARGET_RATIO} × floor = {:.2} s, {:.2}x the target",
            noop.wall - TARGET_RATIO * floor,
            TARGET_RATIO * floor,
            ratio / TARGET_RATIO
        )
    };
    println!(
        "  hakube install, no-op steps (--concurrency {NOOP_CONCURRENCY}) {:>8.2} s   peak memory {:.1} MiB   {ratio:.2}x the floor (target ≤ {TARGET_RATIO}): {verdict}; load average {}",
        noop.wall,
        noop.peak_kib as f64 / 1024.0,
        load_average()
    );
    if let Some(failure) = &noop.failure {
        println!("    FAILED: {failure}");
        failures.push("the no-op install failed".into());
    }
    print_phases("no-op install", &plan, &noop, r_round);
    let wrapper = SshWrapper::new(&work.path().join("count"))?;
    let counted = install(&hakube, work.path(), &noop_args("logs-noop-counted"), Some(wrapper.path_env()))?;
    let counts = SshCounts::parse(&std::fs::read_to_string(&wrapper.log)?);
    println!("  (the no-op install through the counting ssh wrapper took {:.2} s; not used above)", counted.wall);
    if let Some(failure) = &counted.failure {
        println!("    FAILED (the counts below include the failed node's runs as far as they went): {failure}");
        failures.push("the counted no-op install failed".into());
    }
    counts.print(boot_runs, nodes.len());

    // The step runner by hand: one no-op step on every node, as hakube runs it (four
    // commands) and as one command.
    let step_cycle = |round: usize, one: bool| {
        let tag = if one { "one" } else { "four" };
        let unit = format!("hakube-bench-{tag}-{round}");
        let key = format!("bench.{tag}.{round}");
        let commands = vec![
            format!("{STEP_SCRIPT} start {unit} {key} post"),
            format!("{STEP_SCRIPT} follow {unit} 0"),
            format!("{STEP_SCRIPT} status {unit}"),
            format!("{STEP_SCRIPT} clear {unit}"),
        ];
        masters.round(|_| if one { vec![commands.join(" && ")] } else { commands.clone() })
    };
    // A node whose unit fails (the lab's 219, see LAB_ATTEMPTS) still counts in the round's
    // time; how many did is said.
    for (label, one) in [("as 4 commands", false), ("as 1 command ", true)] {
        let mut seconds = Vec::new();
        let mut failed = Vec::new();
        for r in 0..ROUNDS {
            let round = step_cycle(r, one)?;
            seconds.push(round.seconds);
            failed.extend(round.failed);
        }
        println!(
            "  step runner by hand over open ControlMasters, one no-op step on every node at once (start, follow, status, clear) {label} {:.3} s (median of {ROUNDS}: {}){}",
            median(&seconds),
            list(&seconds),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; {} node-round(s) failed, e.g. {}", failed.len(), failed[0])
            }
        );
    }
    masters.close();

    // The full install, as the definition says.
    let full_args: Vec<OsString> = vec!["install".into(), definition.clone().into()];
    let full = install(&hakube, work.path(), &full_args, None)?;
    println!(
        "  hakube install, full plan (release)    {:>8.2} s   peak memory {:.1} MiB   {:.2}x the floor; load average {}",
        full.wall,
        full.peak_kib as f64 / 1024.0,
        full.wall / floor,
        load_average()
    );
    if let Some(failure) = &full.failure {
        println!("    FAILED: {failure}");
        failures.push("the full install failed".into());
    }
    print_phases("full install", &plan, &full, r_round);
    let installed_mib = mean_node_pss_mib(&lab);
    println!("  memory per node, installed             {installed_mib:>8.1} MiB (PSS, mean; containerd running)");
    lab.down()?;
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// `Lab::up(config)` up to [`LAB_ATTEMPTS`] times; the lab and the time of the attempt
/// that came up. A failed attempt is printed with the units its nodes' consoles say failed.
fn lab_up(config: LabConfig) -> Result<(Lab, Duration)> {
    let nodes = config.masters + config.workers;
    let mut attempt = 1;
    loop {
        let start = Instant::now();
        match Lab::up(config.clone()) {
            Ok(lab) => return Ok((lab, start.elapsed())),
            Err(e) if attempt < LAB_ATTEMPTS => {
                println!("lab up of {nodes} nodes failed after {:.1} s: {e}", start.elapsed().as_secs_f64());
                for line in failed_units(&config.state_dir) {
                    println!("  {line}");
                }
                println!("  trying again (attempt {})", attempt + 1);
                attempt += 1;
            }
            Err(e) => return Err(e).context(format!("lab up of {nodes} nodes, attempt {attempt}")),
        }
    }
}

/// The `FAILED` lines of every node's console under a lab's state directory.
fn failed_units(state_dir: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(state_dir) else { return Vec::new() };
    let mut lines = Vec::new();
    for entry in dir.flatten() {
        let console = std::fs::read_to_string(entry.path().join("console.log")).unwrap_or_default();
        for line in console.lines().filter(|l| l.contains("FAILED") || l.contains("Failed to")) {
            lines.push(format!("{}: {}", entry.file_name().to_string_lossy(), line.trim()));
        }
    }
    lines.sort();
    lines
}

/// `hakube render DEFINITION --assets-dir ASSETS [--templates DIR]`.
fn render(hakube: &Path, definition: &Path, assets: &Path, templates: Option<&Path>) -> Result<()> {
    let mut cmd = Command::new(hakube);
    cmd.arg("render").arg(definition).arg("--assets-dir").arg(assets);
    if let Some(dir) = templates {
        cmd.arg("--templates").arg(dir);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("hakube render failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The no-op assets hold the real ones' SSH keys (so the same nodes accept them), and each
/// node's no-op boot.sh lists the same steps as its real one.
fn check_noop_assets(assets: &Path, noop: &Path, names: &[String]) -> Result<()> {
    let same = Command::new("diff").arg("-r").arg("-q").arg(assets.join("ssh")).arg(noop.join("ssh")).status()?;
    if !same.success() {
        bail!("the no-op assets' SSH keys differ from the real ones'");
    }
    for name in names {
        let list = |dir: &Path| -> Result<Vec<u8>> {
            let out = Command::new("bash").arg(dir.join("nodes").join(name).join("boot.sh")).arg("--list").output()?;
            if !out.status.success() {
                bail!("boot.sh --list of {name} in {} failed", dir.display());
            }
            Ok(out.stdout)
        };
        if list(assets)? != list(noop)? {
            bail!("the no-op boot.sh of {name} lists other steps than the real one");
        }
    }
    Ok(())
}

/// One phase as `hakube install --dry-run` prints it.
#[derive(Debug, PartialEq)]
struct PlanPhase {
    title: String,
    parallel: bool,
    /// (node, what) in the printed order.
    runs: Vec<(String, String)>,
}

impl PlanPhase {
    /// Rounds of commands it takes at the least: in a parallel phase each node's runs go in
    /// order (the longest node's count); in a one-at-a-time phase every run is a round.
    fn rounds(&self) -> usize {
        if self.parallel {
            let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
            for (node, _) in &self.runs {
                *per_node.entry(node).or_default() += 1;
            }
            per_node.values().copied().max().unwrap_or(0)
        } else {
            self.runs.len()
        }
    }
}

/// The plan `hakube install DEFINITION --assets-dir ASSETS --dry-run` prints:
/// `N. TITLE [parallel|one at a time; FAILURE POLICY]` lines, each followed by `   NODE   WHAT` lines.
fn dry_run(hakube: &Path, definition: &Path, assets: &Path, cwd: &Path) -> Result<Vec<PlanPhase>> {
    let out = Command::new(hakube)
        .arg("install")
        .arg(definition)
        .arg("--assets-dir")
        .arg(assets)
        .arg("--concurrency")
        .arg(NOOP_CONCURRENCY.to_string())
        .arg("--dry-run")
        .current_dir(cwd)
        .output()?;
    if !out.status.success() {
        bail!("hakube install --dry-run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_plan(&String::from_utf8_lossy(&out.stdout))
}

fn parse_plan(text: &str) -> Result<Vec<PlanPhase>> {
    let mut phases: Vec<PlanPhase> = Vec::new();
    for line in text.lines() {
        if let Some(run) = line.strip_prefix("   ") {
            let (node, what) = run.trim().split_once(char::is_whitespace).unwrap_or((run.trim(), ""));
            let phase = phases.last_mut().with_context(|| format!("a run before any phase: {line:?}"))?;
            phase.runs.push((node.to_string(), what.trim().to_string()));
        } else if let Some((number, rest)) = line.split_once(". ") {
            if number.parse::<usize>().is_err() {
                continue;
            }
            // `TITLE [ORDER; FAILURE POLICY]` (the policy after `; `, when printed).
            let bracket = rest.rfind(" [").filter(|_| rest.ends_with(']'));
            let (title, order) = match bracket {
                Some(at) => (&rest[..at], rest[at + 2..rest.len() - 1].split(';').next().unwrap_or_default()),
                None => bail!("a phase line of --dry-run I cannot read: {line:?}"),
            };
            let parallel = match order {
                "parallel" => true,
                "one at a time" => false,
                _ => bail!("a phase line of --dry-run I cannot read: {line:?}"),
            };
            phases.push(PlanPhase { title: title.to_string(), parallel, runs: Vec::new() });
        }
    }
    if phases.is_empty() {
        bail!("hakube install --dry-run printed no phases");
    }
    Ok(phases)
}

/// A short name of a phase title, for one-line listings.
fn short(title: &str) -> &str {
    for (start, name) in [
        ("read the Kubernetes versions", "versions"),
        ("ship files", "ship"),
        ("prepare", "prepare"),
        ("make sure the bootstrap token", "token"),
        ("kubeadm init", "init"),
        ("join masters", "join-masters"),
        ("join workers", "join-workers"),
        ("cluster add-ons", "network"),
        ("post-install", "post"),
    ] {
        if title.starts_with(start) {
            return name;
        }
    }
    title
}

/// ssh to the lab's nodes with the assets' login key and known_hosts.
struct Ssh {
    key: PathBuf,
    known_hosts: PathBuf,
}

impl Ssh {
    /// `ssh OPTIONS root@NODE` (the remote command still to add).
    fn command(&self, node: &LabNode) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(&self.key)
            .arg(format!("root@{}", node.address));
        cmd
    }
}

/// One round of commands over the ControlMasters.
struct Round {
    seconds: f64,
    /// Per failed node, what failed.
    failed: Vec<String>,
}

/// One ControlMaster per node (`ssh -M -S SOCK -f -N`), closed on drop.
struct Masters {
    nodes: Vec<(LabNode, PathBuf)>,
}

impl Masters {
    fn open(ssh: &Ssh, nodes: &[LabNode], dir: &Path) -> Result<Masters> {
        std::fs::create_dir_all(dir)?;
        let masters = Masters { nodes: nodes.iter().map(|n| (n.clone(), dir.join(&n.name))).collect() };
        let children: Vec<_> = masters
            .nodes
            .iter()
            .map(|(n, sock)| {
                // ssh's own options, then the destination: the master's options go before.
                let plain = ssh.command(n);
                Command::new("ssh")
                    .args(["-M", "-f", "-N", "-o", "ControlPersist=300"])
                    .arg("-S")
                    .arg(sock)
                    .args(plain.get_args())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()?;
        for mut child in children {
            if !child.wait()?.success() {
                bail!("a ControlMaster failed to start");
            }
        }
        Ok(masters)
    }

    /// A command over `sock`'s master (its options come from the master).
    fn command(node: &LabNode, sock: &Path) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-S").arg(sock).args(["-o", "BatchMode=yes"]).arg(format!("root@{}", node.address));
        cmd
    }

    /// Runs `commands(node)` on every node at once, each node's in order, each a remote
    /// command line of its own over the node's master; the wall time of it all, and each
    /// node that failed (a command that failed, or a `follow` without a `done` marker: that
    /// node's later commands are left out).
    fn round(&self, commands: impl Fn(&LabNode) -> Vec<String> + Sync) -> Result<Round> {
        let start = Instant::now();
        let results: Vec<Result<Option<String>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .nodes
                .iter()
                .map(|(node, sock)| {
                    let commands = &commands;
                    scope.spawn(move || -> Result<Option<String>> {
                        for line in commands(node) {
                            let out = Masters::command(node, sock).arg(&line).stdin(Stdio::null()).output()?;
                            let stdout = String::from_utf8_lossy(&out.stdout);
                            if !out.status.success() {
                                let err = String::from_utf8_lossy(&out.stderr);
                                return Ok(Some(format!(
                                    "{}: `{line}` failed ({}): {}",
                                    node.name,
                                    out.status,
                                    err.trim()
                                )));
                            }
                            if line.contains(" follow ") && !stdout.contains("status=done") {
                                return Ok(Some(format!("{}: `{line}` printed no done marker", node.name)));
                            }
                        }
                        Ok(None)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked"))))
                .collect()
        });
        let seconds = start.elapsed().as_secs_f64();
        let failed = results.into_iter().collect::<Result<Vec<_>>>()?.into_iter().flatten().collect();
        Ok(Round { seconds, failed })
    }

    /// Every master exits (`ssh -O exit`).
    fn close(self) {}
}

impl Drop for Masters {
    fn drop(&mut self) {
        for (node, sock) in &self.nodes {
            let _ = Masters::command(node, sock)
                .args(["-O", "exit"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// An `ssh` on PATH that appends its arguments to a log, then runs the real ssh.
struct SshWrapper {
    bin: PathBuf,
    log: PathBuf,
}

impl SshWrapper {
    fn new(dir: &Path) -> Result<SshWrapper> {
        let real = which("ssh").context("no ssh on PATH")?;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        let log = dir.join("ssh.log");
        std::fs::write(&log, "")?;
        let script = format!(
            "#!/bin/bash\n# cargo xtask bench install: records each ssh hakube starts, its arguments on one line.\nargs=\"$*\"\nprintf '%s\\n' \"${{args//$'\\n'/ }}\" >>'{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        );
        let path = bin.join("ssh");
        std::fs::write(&path, script)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(SshWrapper { bin, log })
    }

    /// PATH with the wrapper first.
    fn path_env(&self) -> OsString {
        let mut path = OsString::from(&self.bin);
        if let Some(rest) = std::env::var_os("PATH") {
            path.push(":");
            path.push(rest);
        }
        path
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

/// What the ssh processes of one install were, from the wrapper's log.
#[derive(Debug, Default)]
struct SshCounts {
    /// `ssh -M`: connections opened.
    masters: usize,
    /// `ssh -O OP`, by OP.
    controls: BTreeMap<String, usize>,
    /// Remote commands, by program (the step runner's by subcommand: `step.sh start`).
    commands: BTreeMap<String, usize>,
    /// `ssh -O check` right before a remote command (since the connection's previous
    /// command), by that command's kind.
    checks_before: BTreeMap<String, usize>,
}

impl SshCounts {
    fn parse(log: &str) -> SshCounts {
        let mut counts = SshCounts::default();
        // Per connection (control socket): the checks not yet followed by a command.
        let mut pending: BTreeMap<String, usize> = BTreeMap::new();
        for line in log.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |flag: &str| words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).copied();
            let sock = after("-S").unwrap_or("").to_string();
            if words.contains(&"-M") {
                counts.masters += 1;
            } else if let Some(op) = after("-O") {
                *counts.controls.entry(op.to_string()).or_default() += 1;
                if op == "check" {
                    *pending.entry(sock).or_default() += 1;
                }
            } else if let Some(program) = after("--") {
                let kind = if program.ends_with("step.sh") {
                    format!("step.sh {}", after(program).unwrap_or("?"))
                } else {
                    program.rsplit('/').next().unwrap_or(program).to_string()
                };
                *counts.commands.entry(kind.clone()).or_default() += 1;
                *counts.checks_before.entry(kind).or_default() += pending.remove(&sock).unwrap_or(0);
            }
        }
        counts
    }

    fn print(&self, boot_runs: usize, nodes: usize) {
        let step_commands: usize =
            self.commands.iter().filter(|(k, _)| k.starts_with("step.sh")).map(|(_, n)| *n).sum();
        let step_checks: usize =
            self.checks_before.iter().filter(|(k, _)| k.starts_with("step.sh")).map(|(_, n)| *n).sum();
        // Per boot.sh run that started (a node that failed runs none of its later steps).
        let started = self.commands.get("step.sh start").copied().unwrap_or(0);
        let per = |n: usize| n as f64 / started.max(1) as f64;
        let by_kind = |map: &BTreeMap<String, usize>, step: bool| -> String {
            map.iter()
                .filter(|(k, _)| k.starts_with("step.sh") == step)
                .map(|(k, n)| if step { format!("{k} {:.2}", per(*n)) } else { format!("{k} {n}") })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  SSH commands per node per boot.sh step (counted through an ssh wrapper; {started} of the plan's {boot_runs} boot.sh runs started): {:.2} remote commands ({}) + {:.2} `ssh -O check` (a local ssh process asking the master whether it lives, before each use of a connection) = {:.2} ssh processes",
            per(step_commands),
            by_kind(&self.commands, true),
            per(step_checks),
            per(step_commands + step_checks)
        );
        let total: usize = self.masters + self.controls.values().sum::<usize>() + self.commands.values().sum::<usize>();
        println!(
            "  SSH for the whole no-op install, {nodes} nodes: {} connections (ssh -M), {} remote commands ({step_commands} step.sh; the rest: {}), {} control requests ({}): {total} ssh processes, {:.1} a node",
            self.masters,
            self.commands.values().sum::<usize>(),
            by_kind(&self.commands, false),
            self.controls.values().sum::<usize>(),
            self.controls.iter().map(|(k, n)| format!("-O {k} {n}")).collect::<Vec<_>>().join(", "),
            total as f64 / nodes.max(1) as f64
        );
    }
}

/// One timed `hakube install`.
struct InstallRun {
    /// Wall time, seconds.
    wall: f64,
    /// Peak resident memory, KiB.
    peak_kib: u64,
    /// When each phase started (seconds from the start), by 1-based phase number.
    phase_starts: BTreeMap<usize, f64>,
    /// Each boot.sh step's own time as hakube reports it (`NODE: STEP done (N.Ns)`), by phase.
    step_seconds: BTreeMap<usize, Vec<f64>>,
    /// Why it failed (its failed nodes, the end of their logs), when it did.
    failure: Option<String>,
}

/// Runs `hakube ARGS` in `cwd` (PATH = `path` when given), timing it, reading its peak
/// resident memory from /proc while it runs (VmHWM only grows, so the last reading is the
/// peak up to that moment) and the moment each phase starts from its timestamped lines
/// (stderr is no terminal), stamped here as they arrive.
fn install(hakube: &Path, cwd: &Path, args: &[OsString], path: Option<OsString>) -> Result<InstallRun> {
    let mut cmd = Command::new(hakube);
    cmd.args(args).current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lines.push((start.elapsed().as_secs_f64(), line));
        }
        lines
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = start.elapsed().as_secs_f64();
    let lines = reader.join().unwrap_or_default();
    // A failure is told with every failed node's line and the end of its log.
    let failure = (!status.success()).then(|| {
        let mut text = format!("hakube install exited with {status}");
        for (_, line) in lines.iter().filter(|(_, l)| l.contains(": failed in step ")) {
            text.push_str(&format!("\n      {line}"));
            if let Some(log) = line.rsplit_once("; see ").map(|(_, p)| p.trim()) {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(6).collect();
                for l in tail.into_iter().rev() {
                    text.push_str(&format!("\n        | {l}"));
                }
            }
        }
        text
    });
    let mut phase_starts = BTreeMap::new();
    let mut step_seconds: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut phase = 0;
    for (at, line) in &lines {
        // `TIMESTAMP phase N: TITLE (NODES)` or `TIMESTAMP NODE: STEP done (N.Ns)`.
        let Some((_, text)) = line.split_once(' ') else { continue };
        if let Some(n) = text.strip_prefix("phase ").and_then(|r| r.split_once(':')).and_then(|(n, _)| n.parse().ok()) {
            phase = n;
            phase_starts.insert(n, *at);
        } else if let Some((_, rest)) = text.split_once(": ") {
            if let Some(secs) =
                rest.split_once(" done (").and_then(|(_, s)| s.strip_suffix("s)")).and_then(|s| s.parse::<f64>().ok())
            {
                step_seconds.entry(phase).or_default().push(secs);
            }
        }
    }
    Ok(InstallRun { wall, peak_kib, phase_starts, step_seconds, failure })
}

/// Each phase's time (from its start to the next one's, the last to hakube's exit), its
/// rounds, the time per round against R, and the mean of its runs' own times.
fn print_phases(label: &str, plan: &[PlanPhase], run: &InstallRun, r_round: f64) {
    println!("  where the {label}'s {:.2} s go (phase start times as hakube's lines arrive):", run.wall);
    let first = run.phase_starts.values().next().copied().unwrap_or(0.0);
    println!("    {:<14} {:>8.3} s  (start-up: assets verified, before the first phase)", "start", first);
    for (i, phase) in plan.iter().enumerate() {
        let n = i + 1;
        let Some(&from) = run.phase_starts.get(&n) else { continue };
        let to = run.phase_starts.get(&(n + 1)).copied().unwrap_or(run.wall);
        let rounds = phase.rounds().max(1);
        let steps = run.step_seconds.get(&n).map(|s| {
            format!(
                "; runs took {:.2} s on average (min {:.1}, max {:.1})",
                s.iter().sum::<f64>() / s.len() as f64,
                s.iter().copied().fold(f64::INFINITY, f64::min),
                s.iter().copied().fold(0.0, f64::max)
            )
        });
        println!(
            "    {:<14} {:>8.3} s  {rounds} round(s), {:.3} s a round = {:.1} R{}",
            short(&phase.title),
            to - from,
            (to - from) / rounds as f64,
            (to - from) / rounds as f64 / r_round,
            steps.unwrap_or_default()
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn list(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" ")
}

/// The 1, 5 and 15 minute load averages (/proc/loadavg).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// How many systemd-nspawn processes run a machine that is not this bench's (`hkb-`).
fn other_nspawn_machines() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"systemd-nspawn"))
                && args.iter().any(|a| a.starts_with(b"--machine=") && !a.starts_with(b"--machine=hkb-"))
        })
        .count()
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The mean, over the lab's nodes, of the proportional set size of every process in a
/// node's network namespace (`/proc/PID/smaps_rollup`, `Pss:`), in MiB.
fn mean_node_pss_mib(lab: &Lab) -> f64 {
    let nodes = lab.nodes();
    let mut total_kib = 0u64;
    for node in &nodes {
        let pids =
            Command::new("ip").args(["netns", "pids", &node.netns]).output().map(|o| o.stdout).unwrap_or_default();
        for pid in String::from_utf8_lossy(&pids).split_whitespace() {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            total_kib += rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total_kib as f64 / 1024.0 / nodes.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_of_a_plan() {
        let plan = parse_plan(
            "plan for 3 node(s) of cluster \"lab\":\n1. ship files and check them against the manifest [parallel; a failure stops its node]\n   master0   ship files\n   worker0   ship files\n2. prepare nodes [parallel]\n   master0   boot.sh prepare\n   master0   boot.sh pki\n   worker0   boot.sh prepare\n3. join masters one at a time [one at a time; a failure stops the rest of the phase]\n   master1   boot.sh join\n   master2   boot.sh join\n4. cluster add-ons on the first master (cloud provider, network) [one at a time]\n   master0   boot.sh network\n",
        )
        .unwrap();
        assert_eq!(plan.iter().map(PlanPhase::rounds).collect::<Vec<_>>(), [1, 2, 2, 1]);
        assert_eq!(plan[3].title, "cluster add-ons on the first master (cloud provider, network)");
        assert_eq!(plan[1].runs[1], ("master0".to_string(), "boot.sh pki".to_string()));
    }

    #[test]
    fn ssh_processes_are_told_apart() {
        let log = "\
-E /tmp/x/log -S /tmp/x/master -M -f -N -o ControlPersist=300s -o BatchMode=yes root@10.0.0.1
-S /tmp/x/master -o BatchMode=yes -O check none
-S /tmp/x/master -o BatchMode=yes -T -p 9 none -- sh -c 'if v=1; then echo; fi f=x'
-S /tmp/x/master -o BatchMode=yes -O check none
-S /tmp/x/master -o BatchMode=yes -T -p 9 none -- /etc/hakube/step.sh start hakube-a-b b post
-S /tmp/x/master -o BatchMode=yes -O check none
-S /tmp/x/master -o BatchMode=yes -T -p 9 none -- /etc/hakube/step.sh follow hakube-a-b 0
-S /tmp/x/master -o BatchMode=yes -T -p 9 none -- /etc/hakube/step.sh status hakube-a-b
-S /tmp/x/master -o BatchMode=yes -O exit none
";
        let counts = SshCounts::parse(log);
        assert_eq!(counts.masters, 1);
        assert_eq!(counts.controls["check"], 3);
        assert_eq!(counts.controls["exit"], 1);
        assert_eq!(counts.commands["sh"], 1);
        assert_eq!(counts.commands["step.sh start"], 1);
        assert_eq!(counts.checks_before["step.sh follow"], 1);
        assert_eq!(counts.checks_before["step.sh status"], 0);
    }

    #[test]
    fn the_wrapper_logs_one_line_a_process() {
        let dir = tempfile::tempdir().unwrap();
        let wrapper = SshWrapper::new(dir.path()).unwrap();
        let out = Command::new(wrapper.bin.join("ssh")).args(["-V", "two\nlines"]).output().unwrap();
        assert!(!out.stderr.is_empty(), "the real ssh ran");
        assert_eq!(std::fs::read_to_string(&wrapper.log).unwrap(), "-V two lines\n");
    }
}
