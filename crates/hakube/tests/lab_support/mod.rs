//! What the lab tests of the binary share (lab_install.rs, lab_resilience.rs): the world a
//! test works in, the root check, a lab brought up with render's keys, and the end of each
//! failed node's log.

use std::path::{Path, PathBuf};
use std::process::Command;

use hakube_lab::{Lab, LabConfig};

/// A lab, the test's scratch directory (assets/, logs/ and the definition below it) and the
/// definition's path.
pub struct World {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    pub definition: PathBuf,
}

impl World {
    /// `LOG_DIR`, hakube's default `./logs` of the scratch directory.
    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }
}

pub fn require_root() {
    assert!(
        Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")),
        "the lab needs root (network namespaces, overlay mounts); CI runs as root"
    );
}

/// Writes `definition` to `dir/lab.json`, renders it, and brings the lab of `config` up with
/// render's host keys and login key (the lab installs the rendered host keys and authorizes
/// the login key, so render comes first).
pub fn bring_up(dir: tempfile::TempDir, config: LabConfig, definition: &serde_json::Value) -> World {
    let path = dir.path().join("lab.json");
    std::fs::write(&path, serde_json::to_string_pretty(definition).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hakube"))
        .args(["render", path.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "render:\n{}", String::from_utf8_lossy(&out.stderr));
    let login = std::fs::read_to_string(dir.path().join("assets/ssh/id_ed25519.pub")).unwrap();
    let lab = Lab::up(LabConfig {
        host_keys: Some(dir.path().join("assets")),
        authorized_key: Some(login.trim().to_string()),
        ..config
    })
    .expect("lab up");
    assert_eq!(lab.definition()["workers"], definition["workers"], "the lab's addressing differs from its definition");
    World { lab, dir, definition: path }
}

/// For each node hakube's closing summary names FAILED (its rows: `NODE  FAILED  TIME
/// DETAIL`), the end of its log in `logs` goes to the test's output (shown when it fails);
/// those nodes.
pub fn print_failed_logs<'a>(output: &'a str, logs: &Path) -> Vec<&'a str> {
    let mut failed = Vec::new();
    for line in output.lines().filter(|l| l.split_whitespace().nth(1) == Some("FAILED")) {
        let node = line.split_whitespace().next().unwrap_or_default();
        let log = std::fs::read_to_string(logs.join(format!("{node}.log"))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- end of {node}.log\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        failed.push(node);
    }
    failed
}
