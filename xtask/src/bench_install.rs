//! `cargo xtask bench install`: a full `hakube install` (release build) on a 50-node lab
//! (3 masters, 47 workers) of real Debian containers, its wall time and peak memory, next to
//! one round of plain parallel `ssh NODE true` to the same nodes — the floor any SSH-based
//! installer stands on. Also the lab's own costs: the time to bring up 5 and 50 nodes (the
//! image cached) and the memory a node takes (proportional set size of its processes).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hakube_lab::{Lab, LabConfig};

const MASTERS: usize = 3;
const WORKERS: usize = 47;

pub fn run(root: &Path) -> Result<()> {
    let status =
        Command::new("cargo").args(["build", "--release", "--quiet", "-p", "hakube"]).current_dir(root).status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    let hakube = root.join("target/release/hakube");
    let work = tempfile::Builder::new().prefix("hakube-bench-install").tempdir()?;
    let config = LabConfig {
        prefix: "hkb".into(),
        bridge: "hkbr8".into(),
        subnet_base: [10, 253],
        ..LabConfig::new(MASTERS, WORKERS, work.path().join("lab"))
    };
    let definition = work.path().join("cluster.json");
    std::fs::write(&definition, serde_json::to_string_pretty(&hakube_lab::definition(&config)?)?)?;
    let out = Command::new(&hakube).arg("render").arg(&definition).current_dir(work.path()).output()?;
    if !out.status.success() {
        bail!("hakube render failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let assets = work.path().join("assets");
    let login = std::fs::read_to_string(assets.join("ssh/id_ed25519.pub"))?;
    // The image first (built once per recipe), then a 5-node lab, then the 50 nodes.
    hakube_lab::image::ensure(&config.image_cache, config.distro).context("the lab image")?;
    let start = Instant::now();
    Lab::up(LabConfig { masters: 3, workers: 2, ..config.clone() }).context("lab up (5 nodes)")?.down()?;
    let up_5 = start.elapsed();
    println!("bringing up a lab of {MASTERS} masters + {WORKERS} workers ...");
    let start = Instant::now();
    let lab =
        Lab::up(LabConfig { host_keys: Some(assets.clone()), authorized_key: Some(login.trim().into()), ..config })
            .context("lab up")?;
    let up_50 = start.elapsed();
    let booted_mib = mean_node_pss_mib(&lab);

    // One round of plain parallel ssh: connect, run `true`, disconnect.
    let start = Instant::now();
    let children: Vec<_> = lab
        .nodes()
        .iter()
        .map(|n| {
            Command::new("ssh")
                .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", assets.join("ssh/known_hosts").display()))
                .arg("-i")
                .arg(assets.join("ssh/id_ed25519"))
                .arg(format!("root@{}", n.address))
                .arg("true")
                .stdin(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let mut ssh_failures = 0;
    for mut child in children {
        if !child.wait()?.success() {
            ssh_failures += 1;
        }
    }
    let ssh_round = start.elapsed();
    if ssh_failures > 0 {
        bail!("{ssh_failures} plain ssh connections failed");
    }

    // The full install, with its peak resident memory read from /proc while it runs
    // (VmHWM only grows, so the last reading is the peak up to that moment).
    let start = Instant::now();
    let mut child = Command::new(&hakube)
        .arg("install")
        .arg(&definition)
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
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
    let install = start.elapsed();
    let installed_mib = mean_node_pss_mib(&lab);
    lab.down()?;
    if !status.success() {
        bail!("hakube install failed ({status}); logs were in {}", work.path().join("logs").display());
    }
    println!("lab (Debian 12 containers, image cached):");
    println!("  up, 5 nodes                            {:>8.2} s", up_5.as_secs_f64());
    println!("  up, {} nodes                           {:>8.2} s", MASTERS + WORKERS, up_50.as_secs_f64());
    println!("  memory per node, booted                {booted_mib:>8.1} MiB (PSS, mean)");
    println!("  memory per node, installed             {installed_mib:>8.1} MiB (PSS, mean; containerd running)");
    println!(
        "{} nodes ({MASTERS} masters + {WORKERS} workers), stand-ins for kubeadm, kubelet and kubectl only:",
        MASTERS + WORKERS
    );
    println!("  one round of plain parallel ssh        {:>8.2} s", ssh_round.as_secs_f64());
    println!(
        "  hakube install (full plan, release)    {:>8.2} s   peak memory {:.1} MiB",
        install.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
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
