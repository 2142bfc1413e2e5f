//! `cargo xtask lab ...`: the local test lab (crates/lab) from the command line.
//!
//! - `lab up [--masters N] [--workers M] [--distro debian12|debian13] [--assets DIR]
//!   [--sudo-user] [--network calico|cilium|flannel|weave]`: tears down an earlier lab, brings up N masters (default 3) and M workers
//!   (default 2) on 10.250.0.0/16 and leaves them running; writes the lab's cluster
//!   definition (every download pointed at the lab's mirror) to target/lab/cluster.json.
//!   With --assets, the nodes get the host keys of DIR/ssh/host-keys/<node>/ and authorize
//!   DIR/ssh/id_ed25519.pub (what `hakube render` wrote), so `hakube install` can log in.
//! - `lab exec NODE -- CMD...`: runs CMD on NODE as root without SSH; its exit code.
//! - `lab link NODE down|up`: cuts or restores NODE's link to the lab network.
//! - `lab sshd NODE stop|start`, `lab reboot NODE`: what a site's machines do.
//! - `lab fault NODE kubeadm[.SUBCOMMAND][@PHASE] fail [CODE] | hang | delay SECONDS | clear`:
//!   makes the kubeadm stand-in on NODE fail, hang or take longer; `lab fault NODE
//!   kubectl.drain[@NODE2] fail` and `kubectl.etcd-health[@MEMBER] fail`: NODE's kubectl drain
//!   refused by a PodDisruptionBudget, an etcd member unhealthy (`clear` removes every fault of
//!   NODE).
//! - `lab status`: the nodes, their addresses, PIDs and whether their sshd listens.
//! - `lab down`: stops everything the lab started, by PID.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hakube_lab::{Lab, LabConfig};

const USAGE: &str =
    "usage: cargo xtask lab up [--masters N] [--workers M] [--distro debian12|debian13] [--assets DIR] [--sudo-user]
                           [--network calico|cilium|flannel|weave]
       cargo xtask lab exec NODE -- CMD...
       cargo xtask lab link NODE down|up
       cargo xtask lab sshd NODE stop|start
       cargo xtask lab reboot NODE
       cargo xtask lab fault NODE kubeadm[.SUBCOMMAND][@PHASE] fail [CODE]|hang|delay SECONDS|clear
       cargo xtask lab fault NODE kubectl.drain[@NODE2]|kubectl.etcd-health[@MEMBER] fail
       cargo xtask lab status
       cargo xtask lab down";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let state_dir = root.join("target/lab");
    match args.first().map(String::as_str) {
        Some("up") => up(&state_dir, &args[1..]),
        Some("down") => down(&state_dir),
        Some("status") => status(&state_dir),
        Some("exec") => exec(&state_dir, &args[1..]),
        Some("link") => with_node(&state_dir, &args[1..], |lab, node, rest| match rest {
            [state] if state == "down" || state == "up" => Ok(lab.set_link(node, state == "up")?),
            _ => bail!("{USAGE}"),
        }),
        Some("sshd") => with_node(&state_dir, &args[1..], |lab, node, rest| match rest {
            [verb] if verb == "stop" => Ok(lab.stop_sshd(node)?),
            [verb] if verb == "start" => Ok(lab.start_sshd(node)?),
            _ => bail!("{USAGE}"),
        }),
        Some("reboot") => with_node(&state_dir, &args[1..], |lab, node, rest| match rest {
            [] => Ok(lab.reboot(node)?),
            _ => bail!("{USAGE}"),
        }),
        Some("fault") => with_node(&state_dir, &args[1..], |lab, node, rest| {
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            if rest == ["clear"] {
                return Ok(lab.clear_faults(node)?);
            }
            let fault = hakube_lab::Fault::parse(&rest.join(" ")).map_err(|e| anyhow::anyhow!("{e}\n{USAGE}"))?;
            Ok(lab.add_fault(node, &fault)?)
        }),
        _ => bail!("{USAGE}"),
    }
}

/// Runs `f(lab, NODE, rest)` on the running lab, for `args` = `NODE rest...`.
fn with_node(state_dir: &Path, args: &[String], f: impl FnOnce(&Lab, &str, &[String]) -> Result<()>) -> Result<()> {
    let Some((node, rest)) = args.split_first() else { bail!("{USAGE}") };
    let lab =
        Lab::attach(state_dir)?.with_context(|| format!("no lab is up ({} has no lab.json)", state_dir.display()))?;
    let result = f(&lab, node, rest);
    lab.detach();
    result
}

fn exec(state_dir: &Path, args: &[String]) -> Result<()> {
    let (node, command) = match args {
        [node, dashes, command @ ..] if dashes == "--" && !command.is_empty() => (node, command),
        _ => bail!("{USAGE}"),
    };
    let lab =
        Lab::attach(state_dir)?.with_context(|| format!("no lab is up ({} has no lab.json)", state_dir.display()))?;
    let status = lab.command(node, &command[0]).map(|mut cmd| cmd.args(&command[1..]).status());
    lab.detach();
    let status = status?.with_context(|| format!("failed to run {} on {node}", command[0]))?;
    std::process::exit(status.code().unwrap_or(128 + 9));
}

fn up(state_dir: &Path, args: &[String]) -> Result<()> {
    let mut config = LabConfig::new(3, 2, state_dir);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value\n{USAGE}")).cloned();
        match arg.as_str() {
            "--masters" => config.masters = value("--masters")?.parse().context("--masters needs a number")?,
            "--workers" => config.workers = value("--workers")?.parse().context("--workers needs a number")?,
            "--distro" => config.distro = value("--distro")?.parse()?,
            "--network" => config.network_provider = value("--network")?,
            "--assets" => {
                let assets = PathBuf::from(value("--assets")?);
                let key = assets.join("ssh/id_ed25519.pub");
                if key.exists() {
                    config.authorized_key = Some(
                        std::fs::read_to_string(&key).with_context(|| format!("failed to read {}", key.display()))?,
                    );
                }
                config.host_keys = Some(assets);
            }
            "--sudo-user" => {
                config.sudo_user = true;
                config.login_user = hakube_lab::SUDO_USER.into();
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if let Some(lab) = Lab::attach(state_dir)? {
        lab.down().context("failed to tear down the running lab")?;
    }
    let started = std::time::Instant::now();
    let lab = Lab::up(config)?;
    let definition = state_dir.join("cluster.json");
    std::fs::write(&definition, serde_json::to_string_pretty(&lab.definition())? + "\n")
        .with_context(|| format!("failed to write {}", definition.display()))?;
    print_nodes(&lab);
    println!("lab up in {:.1} s; cluster definition: {}", started.elapsed().as_secs_f64(), definition.display());
    println!(
        "a node's files: {}/<node>/root/...; its stand-in calls: .../root/var/log/hakube-lab/calls.log; the mirror: {}",
        lab.config().state_dir.display(),
        lab.config().mirror_url()
    );
    lab.detach();
    Ok(())
}

fn down(state_dir: &Path) -> Result<()> {
    match Lab::attach(state_dir)? {
        Some(lab) => lab.down()?,
        // No saved lab: still remove what a crashed run may have left under the default names.
        None => hakube_lab::clean(&LabConfig::new(0, 0, state_dir))?,
    }
    println!("lab down");
    Ok(())
}

fn status(state_dir: &Path) -> Result<()> {
    let Some(lab) = Lab::attach(state_dir)? else {
        println!("no lab is up ({} has no lab.json)", state_dir.display());
        return Ok(());
    };
    print_nodes(&lab);
    lab.detach();
    Ok(())
}

fn print_nodes(lab: &Lab) {
    println!("{:<10} {:<7} {:<14} {:<14} {:<22} sshd", "node", "role", "address", "netns", "nspawn / PID 1");
    for node in lab.nodes() {
        let pids = if node.leader_pid != 0 && Path::new(&format!("/proc/{}", node.leader_pid)).exists() {
            format!("{} / {}", node.nspawn_pid, node.leader_pid)
        } else {
            "not running".into()
        };
        let sshd = if lab.sshd_listening(&node.name).unwrap_or(false) { "listening" } else { "not listening" };
        println!(
            "{:<10} {:<7} {:<14} {:<14} {:<22} {sshd}",
            node.name,
            node.role.as_str(),
            node.address,
            node.netns,
            pids
        );
    }
}
