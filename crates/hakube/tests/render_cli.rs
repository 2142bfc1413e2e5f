//! `hakube render` and `hakube install --dry-run` / `hakube reset` through the real
//! binary, without machines: exit codes, what render reports, the printed plan.

use std::path::{Path, PathBuf};
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

#[test]
fn render_reports_then_keeps_everything_and_check_passes() {
    let dir = tempfile::tempdir().unwrap();
    let lab = sample("lab-cluster.json");
    let first = hakube(&["render", &lab], dir.path());
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let out = text(&first);
    assert!(out.contains("created assets/pki/ca.key"), "{out}");
    assert!(out.contains("0 changed, 0 kept, 0 removed"), "{out}");
    assert!(out.contains("next: review assets/nodes/*/boot.sh, then run `hakube install"), "{out}");
    let second = hakube(&["render", &lab], dir.path());
    assert!(text(&second).contains(" 0 created, 0 changed,"), "{}", text(&second));
    let check = hakube(&["render", &lab, "--check"], dir.path());
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    // A tampered file makes --check fail and names it; nothing is rewritten.
    let script: PathBuf = dir.path().join("assets/nodes/worker0/boot.sh");
    std::fs::write(&script, "#!/bin/sh\nreboot\n").unwrap();
    let check = hakube(&["render", &lab, "--check"], dir.path());
    assert_eq!(check.status.code(), Some(1));
    assert!(
        text(&check).contains("assets/nodes/worker0/boot.sh: does not match the sha256 in manifest.json"),
        "{}",
        text(&check)
    );
    assert_eq!(std::fs::read_to_string(&script).unwrap(), "#!/bin/sh\nreboot\n");
}

#[test]
fn render_refuses_an_invalid_definition_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"masters": [{"nodeName": "a b", "privateIP": "10.0.0.1"}]}"#).unwrap();
    let out = hakube(&["render", bad.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("masters[0].nodeName"), "{}", text(&out));
    assert!(!dir.path().join("assets").exists());
}

#[test]
fn install_dry_run_prints_the_plan_in_ha_order() {
    let dir = tempfile::tempdir().unwrap();
    let lab = sample("lab-cluster.json");
    assert_eq!(hakube(&["render", &lab], dir.path()).status.code(), Some(0));
    let out = hakube(&["install", &lab, "--dry-run"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan = text(&out);
    let at = |needle: &str| plan.find(needle).unwrap_or_else(|| panic!("{needle:?} not in plan:\n{plan}"));
    assert!(at("ship files") < at("boot.sh prepare"));
    assert!(at("master0                  boot.sh init") < at("master1                  boot.sh join"));
    assert!(at("master2                  boot.sh join") < at("worker0                  boot.sh join"));
    assert!(at("join masters one at a time [one at a time; a failure stops the rest of the phase]") > 0);
    assert!(at("kubeadm init on the first master [one at a time; a failure stops what needs the control plane]") > 0);
    // One worker: the token is checked on a master before it joins; nothing else is touched.
    let out = hakube(&["install", &lab, "worker1", "--dry-run"], dir.path());
    let plan = text(&out);
    assert!(plan.contains("master0                  boot.sh token"), "{plan}");
    assert!(!plan.contains("worker0") && !plan.contains("master1"), "{plan}");
}

#[test]
fn install_without_assets_says_to_render_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = hakube(&["install", &sample("lab-cluster.json")], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("run `hakube render` first"), "{}", text(&out));
}

#[test]
fn reset_needs_confirmation_or_yes() {
    let dir = tempfile::tempdir().unwrap();
    let lab = sample("lab-cluster.json");
    assert_eq!(hakube(&["render", &lab], dir.path()).status.code(), Some(0));
    let out = hakube(&["reset", &lab, "master2"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("refusing to reset master2 without confirmation: pass --yes"), "{}", text(&out));
    let out = hakube(&["reset", &lab, "master2", "--dry-run"], dir.path());
    assert!(text(&out).contains("boot.sh forget master2 (on master0)"), "{}", text(&out));
}

/// Install is a function of the assets (issue 12, item 4): from a directory holding only
/// the assets (as a fresh clone of them would), `--assets-only` plans without any
/// definition; given a definition that changed since render, install refuses and names the
/// node and the field, and a definition that differs only in formatting is not stale.
#[test]
fn install_runs_from_the_assets_alone_and_refuses_stale_ones_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let lab = sample("lab-cluster.json");
    let text_of = |p: &str| std::fs::read_to_string(p).unwrap();
    let copy = dir.path().join("cluster.json");
    std::fs::write(&copy, text_of(&lab)).unwrap();
    let copy = copy.to_str().unwrap();
    assert_eq!(hakube(&["render", copy], dir.path()).status.code(), Some(0));
    let alone = tempfile::tempdir().unwrap();
    let status = Command::new("cp").arg("-a").arg(dir.path().join("assets")).arg(alone.path()).status().unwrap();
    assert!(status.success());
    let out = hakube(&["install", "--assets-only", "--dry-run"], alone.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("master0                  boot.sh init"), "{}", text(&out));
    let out = hakube(&["install", "--assets-only", "worker1", "--dry-run"], alone.path());
    assert!(text(&out).contains("worker1") && !text(&out).contains("worker0"), "{}", text(&out));
    let out = hakube(&["install", "--assets-only", "nosuchnode", "--dry-run"], alone.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nosuchnode"), "{}", text(&out));

    // Reformatted (same values): not stale.
    let value: serde_json::Value = serde_json::from_str(&text_of(copy)).unwrap();
    std::fs::write(copy, serde_json::to_string(&value).unwrap()).unwrap();
    let out = hakube(&["install", copy, "--dry-run"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // worker1's sshPort changed without rendering again: refused, naming node and field.
    let mut changed = value.clone();
    changed["workers"][1]["sshPort"] = serde_json::json!(2222);
    std::fs::write(copy, serde_json::to_string_pretty(&changed).unwrap()).unwrap();
    for command in ["install", "reset"] {
        let out = hakube(&[command, copy, "--dry-run"], dir.path());
        assert_eq!(out.status.code(), Some(1), "{command}: {}", text(&out));
        assert!(
            text(&out).contains("node worker1's sshPort is 2222 in the definition, 22 in the assets"),
            "{}",
            text(&out)
        );
        assert!(text(&out).contains("run `hakube render"), "{}", text(&out));
    }
    // Another change that install does not itself use is still stale, by the hash.
    let mut changed = value.clone();
    changed["podNetworkCIDR"] = serde_json::json!("10.200.0.0/16");
    std::fs::write(copy, serde_json::to_string_pretty(&changed).unwrap()).unwrap();
    let out = hakube(&["install", copy, "--dry-run"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("definitionSha256"), "{}", text(&out));
    // --templates is gone from install.
    let out = hakube(&["install", copy, "--templates", "x", "--dry-run"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// External etcd: each master's etcd step waits for a quorum of members, so installing all
/// three masters one at a time could only time out; install refuses before connecting.
#[test]
fn install_refuses_a_concurrency_below_the_etcd_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let lab = sample("lab-cluster.json");
    assert_eq!(hakube(&["render", &lab], dir.path()).status.code(), Some(0));
    let out = hakube(&["install", &lab, "--concurrency", "1"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("needs 2 of them running their etcd steps at once"), "{}", text(&out));
    assert!(!dir.path().join("logs").exists(), "nothing ran");
}

/// The UTC date of `time`, by humantime (an implementation independent of hakube-render's).
fn utc_day(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()[..10].to_string()
}

/// Time cannot be moved under the real binary, so the assets are: an etcd CA and master0's
/// etcd server certificate as a render 300 days ago left them (a one-year leaf, now in its
/// last third), and a front-proxy CA made eight years ago (ten-year CA, in its last third).
#[test]
fn install_warns_about_certificates_near_expiry_and_render_renews_the_leaf() {
    use hakube_cluster::definition::KeyAlgorithm;
    use hakube_render::pki::{etcd_member_spec, issue_leaf, new_ca, Validity, ETCD_CA, FRONT_PROXY_CA};
    use std::time::{Duration, SystemTime};
    const DAY: Duration = Duration::from_secs(86_400);

    let dir = tempfile::tempdir().unwrap();
    let lab = sample("lab-cluster.json");
    assert_eq!(hakube(&["render", &lab], dir.path()).status.code(), Some(0));
    let assets = dir.path().join("assets");
    let write = |path: &str, text: &str| std::fs::write(assets.join(path), text).unwrap();
    let now = SystemTime::now();
    let past = now - 300 * DAY;
    let etcd_ca = new_ca(ETCD_CA, KeyAlgorithm::EcdsaP256, 3650 * DAY, past - DAY).unwrap();
    let spec = etcd_member_spec("master0", "10.250.0.11".parse().unwrap(), 365 * DAY);
    let server = issue_leaf(&etcd_ca, &spec, KeyAlgorithm::EcdsaP256, past).unwrap();
    let front_proxy = new_ca(FRONT_PROXY_CA, KeyAlgorithm::EcdsaP256, 3650 * DAY, now - 8 * 365 * DAY).unwrap();
    write("pki/etcd/ca.crt", &etcd_ca.cert_pem);
    write("pki/etcd/ca.key", &etcd_ca.key_pem);
    write("pki/etcd/members/master0/server.crt", &server.cert_pem);
    write("pki/etcd/members/master0/server.key", &server.key_pem);
    write("pki/front-proxy-ca.crt", &front_proxy.cert_pem);
    write("pki/front-proxy-ca.key", &front_proxy.key_pem);
    // As that render recorded them in the manifest (install verifies every sha256).
    let manifest_path = assets.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    for (path, entry) in manifest["files"].as_object_mut().unwrap() {
        let bytes = std::fs::read(assets.join(path)).unwrap();
        entry["sha256"] = hakube_render::manifest::sha256_hex(&bytes).into();
    }
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    let leaf_end = utc_day(Validity::of(&server.cert_pem).unwrap().not_after);
    let ca_end = utc_day(Validity::of(&front_proxy.cert_pem).unwrap().not_after);
    assert_eq!(leaf_end, utc_day(past + 365 * DAY));

    let leaf_warning = format!(
        "hakube: warning: assets/pki/etcd/members/master0/server.crt: certificate \"master0\" expires on {leaf_end} (valid from {}, in the last third of its validity since ",
        utc_day(past - Duration::from_secs(300))
    );
    let ca_warning = format!(
        "warning: assets/pki/front-proxy-ca.crt: CA certificate \"front-proxy-ca\" expires on {ca_end} (valid from "
    );
    let out = hakube(&["install", &lab, "--dry-run"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains(&leaf_warning), "{stderr}");
    assert!(stderr.contains("run `hakube render` to renew it, then `hakube install` to ship it"), "{stderr}");
    assert!(stderr.contains(&format!("hakube: {ca_warning}")), "{stderr}");
    assert!(stderr.contains("a rotation, run `hakube render --rotate-secrets`"), "{stderr}");
    assert_eq!(stderr.matches("warning: assets/").count(), 2, "only those two: {stderr}");

    let out = hakube(&["render", &lab], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(&format!(
            " renewed assets/pki/etcd/members/master0/server.crt (it was to expire on {leaf_end}, within the last third of its validity)"
        )),
        "{stdout}"
    );
    assert_eq!(stdout.matches("renewed").count(), 1, "the other etcd leaves were reissued (another CA), not renewed");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains(&ca_warning), "render warns about the CA too: {stderr}");
    assert_eq!(std::fs::read_to_string(assets.join("pki/etcd/members/master0/server.key")).unwrap(), server.key_pem);
    assert_eq!(std::fs::read_to_string(assets.join("pki/front-proxy-ca.crt")).unwrap(), front_proxy.cert_pem);

    let again = hakube(&["render", &lab], dir.path());
    assert!(text(&again).contains(" 0 created, 0 changed,") && !text(&again).contains("renewed"), "{}", text(&again));
    let out = hakube(&["install", &lab, "--dry-run"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.matches("warning: assets/").count(), 1, "only the CA is left: {stderr}");
}

/// Issue 13: render refuses a kubernetesVersion two minors ahead of the assets, naming the
/// chain, and a lower one; one minor ahead renders the upgrade and says nothing is lost.
#[test]
fn render_refuses_a_skipped_minor_and_a_downgrade() {
    let dir = tempfile::tempdir().unwrap();
    let mut def: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sample("lab-cluster.json")).unwrap()).unwrap();
    let path = dir.path().join("c.json");
    let write = |def: &serde_json::Value| std::fs::write(&path, serde_json::to_string_pretty(def).unwrap()).unwrap();
    def["kubernetesVersion"] = "1.34.2".into();
    def["packageRepository"]["url"] = "https://pkgs.k8s.io/core:/stable:/v1.34".into();
    write(&def);
    let c = path.to_str().unwrap();
    assert_eq!(hakube(&["render", c], dir.path()).status.code(), Some(0));
    let manifest = std::fs::read(dir.path().join("assets/manifest.json")).unwrap();
    for (version, needle) in [("1.36.4", "1.34 → 1.35 → 1.36"), ("1.34.1", "lower than 1.34.2")] {
        def["kubernetesVersion"] = version.into();
        write(&def);
        let out = hakube(&["render", c], dir.path());
        assert_eq!(out.status.code(), Some(1), "{version}: {}", text(&out));
        assert!(text(&out).contains(needle), "{version}: {}", text(&out));
        assert_eq!(std::fs::read(dir.path().join("assets/manifest.json")).unwrap(), manifest, "{version} wrote");
    }
    def["kubernetesVersion"] = "1.35.4".into();
    write(&def);
    let out = hakube(&["render", c], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan = hakube(&["upgrade", c, "--dry-run"], dir.path());
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(
        text(&plan).contains("boot.sh upgrade-apply") && text(&plan).contains("copy the etcd snapshot"),
        "{}",
        text(&plan)
    );
}
