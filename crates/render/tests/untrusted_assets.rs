//! The assets directory as untrusted input (issue 11, "Trust nothing that is read"): a
//! tampered manifest cannot make render remove or write anything outside the layout.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hakube_cluster::{ClusterDefinition, HookCatalog};
use hakube_render::assets::{self, AssetsError};
use hakube_render::manifest::Manifest;
use hakube_render::render::{self, AssetSet, Options};
use hakube_render::{layout, Templates};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn templates() -> Templates {
    Templates::new(None).expect("built-in templates load")
}

fn catalog() -> HookCatalog {
    templates().hook_catalog()
}

fn load(text: &str) -> ClusterDefinition {
    match hakube_cluster::load(text, "test.json", &catalog()) {
        Ok(loaded) => loaded.definition,
        Err(report) => panic!("definition invalid:\n{report}"),
    }
}

fn options() -> Options {
    Options { rotate_secrets: false, now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000) }
}

/// A small cluster with ECDSA keys (fast to render).
const SMALL: &str = r#"{
  "clusterName": "t",
  "pki": { "keyAlgorithm": "ECDSA-P256" },
  "masters": [ { "nodeName": "m0", "privateIP": "10.0.0.10" } ],
  "workers": [ { "nodeName": "w0", "privateIP": "10.0.0.20" } ]
}"#;

fn try_render(dir: &Path) -> Result<(AssetSet, assets::WriteSummary), AssetsError> {
    let existing = assets::read_existing(dir)?;
    let set = render::render(&load(SMALL), &existing, &templates(), &options()).expect("render");
    let summary = assets::write(dir, &set, &existing)?;
    Ok((set, summary))
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(layout::MANIFEST);
    let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

/// Every file render writes, as `(path, bytes)`, following nothing.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                let rel = entry.path().strip_prefix(dir).unwrap().to_str().unwrap().to_string();
                out.push((rel, std::fs::read(entry.path()).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// Item 2: entries `../victim/x` and `/abs/path` (both existing files outside the
/// assets directory, each the only file of its directory) added to manifest.json, with
/// the fields of a real entry. Render refuses before writing anything, naming the entry;
/// both files and their directories survive.
#[test]
fn a_tampered_manifest_cannot_make_render_remove_files_outside_the_assets() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("assets");
    try_render(&dir).unwrap();
    let outside = temp.path().join("abs/path");
    std::fs::create_dir_all(temp.path().join("victim")).unwrap();
    std::fs::create_dir_all(outside.parent().unwrap()).unwrap();
    let victim = temp.path().join("victim/x");
    std::fs::write(&victim, "keep me").unwrap();
    std::fs::write(&outside, "keep me too").unwrap();
    for key in ["../victim/x".to_string(), outside.to_str().unwrap().to_string(), "nodes/../../victim/x".into()] {
        edit_manifest(&dir, |m| {
            let entry = m["files"][layout::DISCOVERY_HASH].clone();
            m["files"][key.as_str()] = entry;
        });
        let before = snapshot(&dir);
        let err = try_render(&dir).expect_err("render accepted a manifest entry outside the layout").to_string();
        assert!(err.contains(&format!("entry {key:?} is not a file hakube renders")), "{err}");
        assert!(err.contains("manifest.json") && err.contains("restore it"), "{err}");
        assert_eq!(snapshot(&dir), before, "render wrote something after refusing");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep me too");
        edit_manifest(&dir, |m| {
            m["files"].as_object_mut().unwrap().remove(&key);
        });
    }
    // Repaired, render is happy again and nothing was removed.
    let (_, summary) = try_render(&dir).unwrap();
    assert!(summary.removed.is_empty(), "{summary:?}");
}

/// The rule and render agree: every file of every sample is a path of the layout with
/// the layout's secrecy, mode and destination, and render's manifest validates.
#[test]
fn the_layout_recognises_exactly_what_render_produces() {
    let mut samples: Vec<PathBuf> = std::fs::read_dir(repo_root().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    samples.sort();
    assert!(samples.len() >= 3, "{samples:?}");
    let external = SMALL.replace(r#""pki""#, r#""etcd": { "topology": "external" }, "pki""#);
    let defs = samples.iter().map(|p| load(&std::fs::read_to_string(p).unwrap())).chain([load(&external)]);
    for def in defs {
        let set = render::render(&def, &Default::default(), &templates(), &options()).unwrap();
        for (path, asset) in &set.files {
            let file = layout::file(path).unwrap_or_else(|| panic!("{path} of {} not in the layout", def.cluster_name));
            assert_eq!(
                (file.secret, file.mode, file.destination.as_ref()),
                (asset.secret, asset.mode, asset.destination.as_ref().filter(|_| !asset.nodes.is_empty())),
                "{path}"
            );
            if let Some(node) = &file.node {
                assert!(asset.nodes.iter().all(|n| n == node), "{path} ships to {:?}", asset.nodes);
            }
        }
        let manifest = Manifest::parse(std::str::from_utf8(&set.manifest().to_bytes()).unwrap()).unwrap();
        manifest.validate().unwrap_or_else(|e| panic!("{}: {e}", def.cluster_name));
    }
}

/// The operator's `~/.ssh` as the audit found it: a key and known_hosts of their own.
fn operators_ssh(home: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("id_ed25519"), "the operator's own key\n").unwrap();
    std::fs::set_permissions(ssh.join("id_ed25519"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(ssh.join("known_hosts"), "the operator's hosts\n").unwrap();
    std::fs::set_permissions(ssh.join("known_hosts"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o750)).unwrap();
    ssh
}

fn assert_untouched(ssh: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(std::fs::read_to_string(ssh.join("id_ed25519")).unwrap(), "the operator's own key\n");
    assert_eq!(std::fs::read_to_string(ssh.join("known_hosts")).unwrap(), "the operator's hosts\n");
    assert_eq!((mode(&ssh.join("id_ed25519")), mode(&ssh.join("known_hosts")), mode(ssh)), (0o600, 0o640, 0o750));
    let mut names: Vec<_> = std::fs::read_dir(ssh).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["id_ed25519", "known_hosts"], "render wrote into the link's target");
}

/// Item 3: `assets/ssh -> ../home/.ssh`, as in the audit. Render refuses, naming the link,
/// both when reading the assets and when the link appears between reading and writing;
/// the operator's key, known_hosts and their modes are untouched.
#[test]
fn a_symlinked_directory_is_refused_not_followed() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("assets");
    let ssh = operators_ssh(&temp.path().join("home"));
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink("../home/.ssh", dir.join("ssh")).unwrap();
    let err = try_render(&dir).expect_err("render followed assets/ssh").to_string();
    let link = dir.join("ssh").display().to_string();
    assert!(err.contains(&format!("{link} is a symbolic link; hakube never follows links")), "{err}");
    assert_untouched(&ssh);

    // The link appears after render read the (empty) directory: the write refuses it too.
    std::fs::remove_file(dir.join("ssh")).unwrap();
    let existing = assets::read_existing(&dir).unwrap();
    let set = render::render(&load(SMALL), &existing, &templates(), &options()).unwrap();
    std::os::unix::fs::symlink("../home/.ssh", dir.join("ssh")).unwrap();
    let err = assets::write(&dir, &set, &existing).expect_err("write followed assets/ssh").to_string();
    assert!(err.contains(&format!("{link} is a symbolic link")), "{err}");
    assert_untouched(&ssh);
    let leftovers: Vec<_> = snapshot(&dir).into_iter().map(|(p, _)| p).filter(|p| p.contains(".hakube-")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Item 3: a file of the assets replaced by a link (to a file outside, or to another
/// asset) is refused by name; neither render nor `--check` reads through it, and the
/// target keeps its bytes and mode.
#[test]
fn a_symlinked_file_is_refused_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("assets");
    try_render(&dir).unwrap();
    let ssh = operators_ssh(&temp.path().join("home"));
    for (file, target) in [
        (layout::KNOWN_HOSTS, "../../home/.ssh/known_hosts"),
        (layout::LOGIN_KEY, "../../home/.ssh/id_ed25519"),
        ("nodes/w0/boot.sh", "../m0/boot.sh"),
        (layout::MANIFEST, "../home/.ssh/known_hosts"),
    ] {
        let path = dir.join(file);
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(target, &path).unwrap();
        let err = try_render(&dir).expect_err("render followed a link").to_string();
        assert!(err.contains(&format!("{} is a symbolic link", path.display())), "{file}: {err}");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink(), "{file} replaced");
        assert_untouched(&ssh);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, saved).unwrap();
        let mode = layout::file(file).map_or(0o644, |f| f.mode);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let (_, summary) = try_render(&dir).unwrap();
    assert!(summary.created.is_empty() && summary.changed.is_empty(), "{summary:?}");
}

/// Item 7: secrets another local user could have swapped in are not reused. The assets
/// directory, a directory on the way to a secret, and a secret itself each made writable by
/// group and others (0777, 0777, 0666): render refuses, naming the secret, the place and
/// `chmod go-w`; a world-writable public file is not a secret and is simply rewritten.
/// As root, a secret owned by another user (uid 65534) is refused with `chown`.
#[test]
fn secrets_other_users_could_write_are_not_reused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("assets");
    try_render(&dir).unwrap();
    let chmod = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    let key = dir.join("pki/ca.key");
    for (place, mode, restore) in
        [(dir.clone(), 0o777, 0o700), (dir.join("pki"), 0o777, 0o700), (key.clone(), 0o666, 0o600)]
    {
        chmod(&place, mode);
        let err = try_render(&dir).expect_err("render reused a secret others can write").to_string();
        let shown = place.display();
        assert!(err.starts_with("refusing to read "), "{err}");
        assert!(err.contains(&format!("{shown} is writable by group or others (mode {mode:04o})")), "{shown}: {err}");
        assert!(err.contains(&format!("run `chmod go-w {shown}`")), "{err}");
        if place == key {
            assert!(err.starts_with(&format!("refusing to read {}: ", key.display())), "{err}");
        }
        chmod(&place, restore);
    }
    // Not a secret: rewritten with its mode, no complaint.
    chmod(&dir.join("nodes/w0/boot.sh"), 0o666);
    let (_, summary) = try_render(&dir).unwrap();
    assert_eq!(summary.changed, ["nodes/w0/boot.sh"], "{summary:?}");

    let me = std::fs::metadata(&key).unwrap().uid();
    if me == 0 {
        std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
        let err = try_render(&dir).expect_err("render reused another user's CA key").to_string();
        assert!(
            err.contains(&format!(
                "refusing to read {0}: {0} is owned by uid 65534, not by the user running hakube (uid 0)",
                key.display()
            )),
            "{err}"
        );
        assert!(err.contains(&format!("`chown 0 {}`", key.display())), "{err}");
        std::os::unix::fs::chown(&key, Some(0), None).unwrap();
    }
    try_render(&dir).unwrap();
}

/// Item 10: temporaries a killed render left (`.hakube-` and random letters and digits,
/// as this render and earlier ones named them; one holding a copy of admin.conf) are
/// removed by the next render and reported. Nothing else is: not a hidden file of another
/// name, not a directory, not a link of that name (nor its target), not inside `.git`.
#[test]
fn stale_temporaries_of_a_killed_render_are_removed() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("assets");
    try_render(&dir).unwrap();
    let admin = std::fs::read(dir.join(layout::ADMIN_KUBECONFIG)).unwrap();
    let stale = ["kubeconfig/.hakube-AbC123", "pki/etcd/.hakube-0123456789abcdef", ".hakube-x1Y2z3"];
    for path in stale {
        std::fs::write(dir.join(path), &admin).unwrap();
    }
    std::fs::write(temp.path().join("outside"), "keep").unwrap();
    std::os::unix::fs::symlink("../../outside", dir.join("nodes/.hakube-link00")).unwrap();
    let kept = [".hakube-notes.txt", "nodes/.hakube-", ".git/.hakube-abc123", "pki/hakube-abc123"];
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    for path in kept {
        std::fs::write(dir.join(path), "not render's").unwrap();
    }
    std::fs::create_dir(dir.join("ssh/.hakube-dir123")).unwrap();
    let (_, summary) = try_render(&dir).unwrap();
    let mut expected: Vec<String> = stale.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(summary.stale, expected);
    for path in stale {
        assert!(!dir.join(path).exists(), "{path} left");
    }
    for path in kept {
        assert_eq!(std::fs::read_to_string(dir.join(path)).unwrap(), "not render's", "{path}");
    }
    assert!(dir.join("ssh/.hakube-dir123").is_dir());
    assert!(std::fs::symlink_metadata(dir.join("nodes/.hakube-link00")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(temp.path().join("outside")).unwrap(), "keep");
    assert!(summary.created.is_empty() && summary.changed.is_empty(), "{summary:?}");
}
