//! Project automation, run as `cargo xtask <task>` (alias in .cargo/config.toml).
//!
//! - `codegen`: regenerate committed generated files (schema/cluster.schema.json).
//! - `ci`: install the Debian packages the tests need, then run the whole test suite.
//!   README.md's test command and .ci/run both call exactly this.
//! - `bench install`: a full install on a 50-node lab (wall time, peak memory) next to one
//!   round of plain parallel `ssh`.
//! - `bench render`: time `hakube render` (release build) for 5 masters + 1000 workers,
//!   a first render and a re-render. Target: under 1 s each on a 2-core machine.
//! - `lab up|exec|link|sshd|reboot|fault|status|down`: the local test lab (crates/lab; see
//!   xtask/src/lab.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod bench_install;
mod lab;

/// Debian packages the test suite uses, with what for.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("shellcheck", "lints every rendered boot script and provisioning script"),
    ("etcd-server", "a real 3-member etcd cluster for the external-topology certificates"),
    ("etcd-client", "etcdctl, the client of that cluster"),
    ("ruby", "`ruby -c` on the Vagrantfile"),
    ("openssh-client", "ssh-keygen checks the rendered SSH keys; install's transport"),
    ("openssh-server", "a real sshd on 127.0.0.1 for the transport tests"),
    ("iproute2", "network namespaces and the bridge of the lab"),
    ("systemd-container", "systemd-nspawn: every lab node is a booted Debian container"),
    ("debootstrap", "builds the lab's Debian 12 and 13 images from this machine's Debian mirror"),
    ("python3", "the lab mirror's HTTP server (http.server)"),
    ("gnupg", "signs the lab mirror's apt repositories"),
    ("dpkg-dev", "dpkg-scanpackages for the lab mirror's package indexes"),
    ("apt-utils", "apt-ftparchive for the lab mirror's Release files"),
    ("openssl", "independent recomputation of the discovery token CA cert hash"),
    ("age", "the age CLI decrypts the encrypted assets, as users' own tools would"),
    ("git", "assets committed, cloned and grepped for secrets"),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    match args.first().map(String::as_str) {
        Some("codegen") => codegen(&root),
        Some("ci") => ci(&root),
        Some("lab") => lab::run(&root, &args[1..]),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("render") => bench_render(&root),
            Some("install") => bench_install::run(&root),
            _ => bail!("usage: cargo xtask bench render|install"),
        },
        _ => {
            eprintln!("usage: cargo xtask <codegen|ci|bench render|lab up|down|status>\n\n  codegen       regenerate schema/cluster.schema.json\n  ci            install test dependencies (Debian), then run every test\n  bench render  time rendering 5 masters + 1000 workers\n  bench install time a full install on a 50-node lab next to plain parallel ssh\n  lab           the local test lab: up [--masters N] [--workers M] [--distro debian12|debian13] [--assets DIR] [--sudo-user], exec, link, sshd, reboot, fault, status, down");
            bail!("unknown or missing task")
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn codegen(root: &Path) -> Result<()> {
    let path = root.join("schema/cluster.schema.json");
    let schema = hakube_cluster::schema();
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old == schema {
        println!("{}: up to date", path.display());
    } else {
        std::fs::write(&path, schema).with_context(|| format!("failed to write {}", path.display()))?;
        println!("{}: regenerated", path.display());
    }
    Ok(())
}

fn ci(root: &Path) -> Result<()> {
    install_packages()?;
    // cargo test's own output goes through as it comes; its per-binary results are added up
    // into one closing line, so the last line says how many tests ran in all.
    let mut child = Command::new("cargo")
        .args(["test", "--workspace", "--locked", "--no-fail-fast"])
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("failed to start cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse::<u64>().ok())
            };
            passed += count("passed").unwrap_or(0);
            failed += count("failed").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

/// Installs the missing [`TEST_PACKAGES`] with apt-get (root on Debian/Ubuntu), so a
/// fresh Debian 12 machine runs the whole suite. Elsewhere it only says what is missing.
fn install_packages() -> Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !Command::new("dpkg").args(["-s", p]).output().is_ok_and(|o| o.status.success()))
        .collect();
    if missing.is_empty() {
        println!("xtask ci: test packages present");
        return Ok(());
    }
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root || Command::new("apt-get").arg("--version").output().is_err() {
        for (p, why) in TEST_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
            eprintln!("xtask ci: missing Debian package {p} ({why})");
        }
        bail!("install the packages above (as root: apt-get install {}), then run again", missing.join(" "));
    }
    println!("xtask ci: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// A definition with `masters` masters and `workers` workers on 10.20.0.0/16.
fn big_definition(masters: usize, workers: usize) -> serde_json::Value {
    let node = |name: String, i: usize| serde_json::json!({ "nodeName": name, "privateIP": format!("10.20.{}.{}", i / 250, i % 250 + 1) });
    serde_json::json!({
        "clusterName": "bench",
        "masterLoadBalancerAddress": "10.20.255.1",
        "nodeNetworkCIDR": "10.20.0.0/16",
        "masters": (0..masters).map(|i| node(format!("master{i}"), i)).collect::<Vec<_>>(),
        "workers": (0..workers).map(|i| node(format!("worker{i}"), masters + i)).collect::<Vec<_>>(),
    })
}

fn bench_render(root: &Path) -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "--quiet", "-p", "hakube"]).current_dir(root))?;
    let hakube = root.join("target/release/hakube");
    // Once on a memory file system (the cost of rendering), once on the project's disk
    // (plus the cost of creating ~4000 inodes there).
    let mut places = vec![("memory (/dev/shm)", PathBuf::from("/dev/shm"))];
    places.push(("disk (target/)", root.join("target")));
    println!("hakube render, 5 masters + 1000 workers, release build; target: under 1 s");
    for (label, base) in places {
        if !base.is_dir() {
            continue;
        }
        let work = base.join(format!("hakube-bench-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let definition = work.join("cluster.json");
        std::fs::write(&definition, serde_json::to_string_pretty(&big_definition(5, 1000))?)?;
        let assets = work.join("assets");
        for run_label in ["first render (new PKI)", "re-render (nothing changes)"] {
            let start = std::time::Instant::now();
            let out = Command::new(&hakube).arg("render").arg(&definition).arg("--assets-dir").arg(&assets).output()?;
            let elapsed = start.elapsed();
            if !out.status.success() {
                bail!("hakube render failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let verdict = if elapsed.as_secs_f64() < 1.0 { "ok" } else { "over 1 s" };
            println!(
                "  {label:<20} {run_label:<30} {:>7.3} s  {verdict}  ({} files)",
                elapsed.as_secs_f64(),
                walk_count(&assets)
            );
        }
        std::fs::remove_dir_all(&work)?;
    }
    Ok(())
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { walk_count(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
