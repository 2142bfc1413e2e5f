//! `cargo xtask lab up|down|status`: the local test lab (crates/lab) from the command line.
//!
//! - `lab up [--masters N] [--workers M] [--assets DIR] [--sudo-user]`: tears down an earlier
//!   lab, brings up N masters (default 3) and M workers (default 2) on 10.250.0.0/16 and
//!   leaves them running; writes the lab's cluster definition to target/lab/cluster.json.
//!   With --assets, the nodes get the host keys of DIR/ssh/host-keys/<node>/ and authorize
//!   DIR/ssh/id_ed25519.pub (what `hakube render` wrote), so `hakube install` can log in.
//! - `lab down`: stops every lab process by PID, deletes the namespaces and the bridge.
//! - `lab status`: the nodes, their addresses and whether their sshd runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hakube_lab::{Lab, LabConfig};

const USAGE: &str = "usage: cargo xtask lab up [--masters N] [--workers M] [--assets DIR] [--sudo-user]\n       cargo xtask lab down\n       cargo xtask lab status";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let state_dir = root.join("target/lab");
    match args.first().map(String::as_str) {
        Some("up") => up(&state_dir, &args[1..]),
        Some("down") => down(&state_dir),
        Some("status") => status(&state_dir),
        _ => bail!("{USAGE}"),
    }
}

fn up(state_dir: &Path, args: &[String]) -> Result<()> {
    let mut config = LabConfig::new(3, 2, state_dir);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value\n{USAGE}")).cloned();
        match arg.as_str() {
            "--masters" => config.masters = value("--masters")?.parse().context("--masters needs a number")?,
            "--workers" => config.workers = value("--workers")?.parse().context("--workers needs a number")?,
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
        "a node's files: /proc/<holder>/root/...; its stand-in calls: /proc/<holder>/root/var/log/hakube-lab/calls.log"
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
    println!("{:<10} {:<7} {:<14} {:<14} {:<16} sshd", "node", "role", "address", "netns", "holder");
    for node in lab.nodes() {
        let holder = if Path::new(&format!("/proc/{}", node.holder_pid)).exists() {
            format!("pid {}", node.holder_pid)
        } else {
            format!("pid {} (gone)", node.holder_pid)
        };
        let sshd = match lab.sshd_pid(&node.name) {
            Ok(Some(pid)) if Path::new(&format!("/proc/{pid}")).exists() => format!("pid {pid}"),
            Ok(Some(pid)) => format!("pid {pid} (gone)"),
            _ => "stopped".into(),
        };
        println!(
            "{:<10} {:<7} {:<14} {:<14} {:<16} {sshd}",
            node.name,
            node.role.as_str(),
            node.address,
            node.netns,
            holder
        );
    }
}
