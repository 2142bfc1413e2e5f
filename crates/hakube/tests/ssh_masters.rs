//! The ControlMasters install opens are bounded and closed on every way out (issue 11):
//! started with `ControlPersist=300s` (the openssh crate's default, `yes`, kept them alive
//! forever after a SIGKILL of hakube), and told to exit (`ssh -O exit`) while their socket
//! still exists, before `execute` returns, after nodes failed and after Ctrl-C.
//!
//! Without the lab: `ssh` on PATH is a script that records its arguments. A master (`-M`)
//! "starts" by succeeding, `-O check` succeeds, `-O exit` is recorded only when the socket's
//! directory still exists (a real ssh cannot reach a removed socket), and a command fails,
//! after waiting for a `release` file when the test asks it to hold the step (the first
//! held command says so through the `started` FIFO, which the test reads before Ctrl-C). PATH is the
//! whole process's, so this file holds one test.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hakube_cluster::HookCatalog;
use hakube_install::{plan, runner, Mode};
use hakube_render::{assets, render, Templates};

const FAKE_SSH: &str = r#"#!/bin/sh
log="$FAKE_SSH_DIR/calls"
sock=""; prev=""; master=no; op=""
for a in "$@"; do
  [ "$prev" = "-S" ] && sock="$a"
  [ "$prev" = "-O" ] && op="$a"
  [ "$a" = "-M" ] && master=yes
  prev="$a"
done
if [ "$master" = yes ]; then
  echo "master $sock $*" >> "$log"; exit 0
fi
case "$op" in
  check) exit 0 ;;
  exit) [ -d "$(dirname "$sock")" ] && echo "exit $sock" >> "$log"; exit 0 ;;
esac
echo "command $*" >> "$log"
if [ -e "$FAKE_SSH_DIR/hold" ]; then
  mkdir "$FAKE_SSH_DIR/first" 2>/dev/null && echo started > "$FAKE_SSH_DIR/started"
  i=0
  while [ ! -e "$FAKE_SSH_DIR/release" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
fi
echo "fake node: no" >&2
exit 1
"#;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (socket of every master started, its arguments), and the sockets told to exit.
fn calls(dir: &Path) -> (Vec<(String, String)>, Vec<String>) {
    let text = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    let mut masters = Vec::new();
    let mut exits = Vec::new();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("master"), Some(sock), Some(args)) => masters.push((sock.to_string(), args.to_string())),
            (Some("exit"), Some(sock), _) => exits.push(sock.to_string()),
            _ => {}
        }
    }
    (masters, exits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_are_bounded_and_closed_on_every_way_out() {
    let scratch = tempfile::tempdir().unwrap();
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let ssh = bin.join("ssh");
    std::fs::write(&ssh, FAKE_SSH).unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fake = scratch.path().join("fake");
    std::fs::create_dir(&fake).unwrap();
    // SAFETY: the only test in this process; set before anything spawns ssh.
    unsafe {
        std::env::set_var("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()));
        std::env::set_var("FAKE_SSH_DIR", &fake);
        std::env::remove_var("XDG_RUNTIME_DIR");
    }

    let templates = Templates::new(None).unwrap();
    let catalog: HookCatalog = templates.hook_catalog();
    let text = std::fs::read_to_string(repo_root().join("samples/single-master.json")).unwrap();
    let def = hakube_cluster::load(&text, "single-master.json", &catalog).unwrap().definition;
    let assets_dir = scratch.path().join("assets");
    let existing = assets::read_existing(&assets_dir).unwrap();
    let options = render::Options { rotate_secrets: false, now: SystemTime::now() };
    let set = render::render(&def, &existing, &templates, &options).unwrap();
    assets::write(&assets_dir, &set, &existing).unwrap();
    let manifest = hakube_install::read_manifest(&assets_dir).unwrap();
    let settings = runner::Settings {
        assets_dir: assets_dir.clone(),
        log_dir: scratch.path().join("logs"),
        concurrency: 4,
        connect_budget: Duration::from_secs(1),
        plaintexts: Default::default(),
        snapshot_dir: None,
    };

    // Every node fails its first step: each master started is told to exit before
    // `execute` returns, while its socket is there.
    let plan = plan::build(&manifest, &[], Mode::Install).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let summary = runner::execute(&manifest, &plan, &settings, tx, runner::Interrupt::default()).await.unwrap();
    assert!(!summary.success() && !summary.interrupted);
    let (masters, exits) = calls(&fake);
    assert!(!masters.is_empty(), "no master started");
    for (sock, args) in &masters {
        assert!(args.contains("-o ControlPersist=300s"), "unbounded master: {args}");
        assert!(args.contains("-o ServerAliveInterval=15"), "{args}");
        assert!(!args.contains("ControlPersist=yes"), "{args}");
        assert!(exits.contains(sock), "master {sock} left running after node failures: {exits:?}");
    }

    // Ctrl-C while steps run: the running steps are stopped and their masters closed too.
    std::fs::remove_file(fake.join("calls")).unwrap();
    std::fs::write(fake.join("hold"), "").unwrap();
    let fifo = fake.join("started");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = runner::Interrupt::default();
    let on_step = cancel.clone();
    let watcher = tokio::task::spawn_blocking(move || {
        // Blocks until a step's command runs over a master, then presses Ctrl-C.
        let said = std::fs::read_to_string(&fifo).unwrap();
        on_step.no_new_steps.cancel();
        on_step.stop_waiting.cancel();
        said
    });
    let summary = runner::execute(&manifest, &plan, &settings, tx, cancel).await.unwrap();
    std::fs::write(fake.join("release"), "").unwrap();
    assert!(summary.interrupted, "not interrupted");
    assert_eq!(watcher.await.unwrap(), "started\n");
    let (masters, exits) = calls(&fake);
    assert!(!masters.is_empty(), "no master started");
    for (sock, _) in &masters {
        assert!(exits.contains(sock), "master {sock} left running after Ctrl-C: {exits:?}");
    }
}
