//! Project automation, run as `cargo xtask <task>` (alias in .cargo/config.toml).
//!
//! - `codegen`: regenerate committed generated files (schema/cluster.schema.json).
//! - `ci`: install the Debian packages the tests need, then run the whole test suite.
//!   README.md's test command and .ci/run both call exactly this.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages the test suite uses, with what for.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("shellcheck", "lints every rendered boot script and provisioning script"),
    ("etcd-server", "a real 3-member etcd cluster for the external-topology certificates"),
    ("etcd-client", "etcdctl, the client of that cluster"),
    ("ruby", "`ruby -c` on the Vagrantfile"),
    ("openssh-client", "ssh-keygen checks the rendered SSH keys; install's transport"),
    ("openssh-server", "a real sshd for every lab node"),
    ("iproute2", "network namespaces for the lab"),
    ("openssl", "independent recomputation of the discovery token CA cert hash"),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    match args.first().map(String::as_str) {
        Some("codegen") => codegen(&root),
        Some("ci") => ci(&root),
        _ => {
            eprintln!("usage: cargo xtask <codegen|ci>\n\n  codegen  regenerate schema/cluster.schema.json\n  ci       install test dependencies (Debian), then run every test");
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
    run(Command::new("cargo").args(["test", "--workspace", "--locked"]).current_dir(root))
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

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
