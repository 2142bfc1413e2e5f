//! `hakube install` and `hakube reset`, the real binary, against the local test lab: three
//! masters and two workers, each a real Debian machine (a systemd-nspawn container with
//! systemd, sshd, sudo, apt and dpkg) at an air-gapped site whose mirror serves Debian's
//! packages (containerd, etcd, …) and the Kubernetes package repository; only kubeadm,
//! kubelet and kubectl (packaged as real .deb files) and modprobe are stand-ins
//! (crates/lab/README.md). Asserted from the nodes themselves (systemd, dpkg, etcd), the
//! stand-ins' call logs and the per-node log files. Needs root (as CI runs).
//!
//! One lab serves every scenario, in order, inside one test: they build on each other
//! (install, install again, one worker, a reset, an outage, host keys).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hakube_lab::{Call, Distro, Lab, LabConfig};

mod lab_support;
use lab_support::{bring_up, require_root, World};

impl World {
    fn assets(&self) -> PathBuf {
        self.dir.path().join("assets")
    }
    fn hakube(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_hakube"))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("failed to run hakube");
        let text = text(&out);
        assert!(!text.contains("panicked"), "hakube panicked:\n{text}");
        out
    }
    /// `hakube install` of the lab's definition; when a node fails, the end of its log goes to
    /// the test's output (shown when the test fails).
    fn install(&self, extra: &[&str]) -> Output {
        self.run_logged("install", extra)
    }
    /// `hakube COMMAND` (install, upgrade) of the lab's definition; when a node fails, the
    /// end of its log goes to the test's output (shown when the test fails).
    fn run_logged(&self, command: &str, extra: &[&str]) -> Output {
        // Long enough for a loaded CI machine's sshd, which may close the first connections.
        let mut args = vec![command, self.definition.to_str().unwrap(), "--connect-timeout", "20"];
        args.extend_from_slice(extra);
        let out = self.hakube(&args);
        lab_support::print_failed_logs(&text(&out), &self.logs());
        out
    }
    fn calls(&self, node: &str) -> Vec<Call> {
        self.lab.calls(node).expect("read the node's call log")
    }
    fn kubeadm_calls(&self, node: &str) -> Vec<Call> {
        self.calls(node).into_iter().filter(|c| c.name == "kubeadm").collect()
    }
    /// `etcdctl ARGS` (Debian's, on the operator's machine) against the three masters with
    /// the rendered API server etcd client certificate; its output, after asserting success.
    fn etcdctl(&self, args: &[&str]) -> String {
        let pki = self.assets().join("pki");
        let endpoints: Vec<String> = self
            .lab
            .nodes()
            .iter()
            .filter(|n| n.role == hakube_lab::Role::Master)
            .map(|n| format!("https://{}:2379", n.address))
            .collect();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", pki.join("etcd/ca.crt").display()))
            .arg(format!("--cert={}", pki.join("apiserver-etcd-client.crt").display()))
            .arg(format!("--key={}", pki.join("apiserver-etcd-client.key").display()))
            .args(args)
            .output()
            .expect("etcdctl (Debian package etcd-client) runs");
        assert!(out.status.success(), "etcdctl {args:?}: {}", text(&out));
        text(&out)
    }
    /// Runs `script` on every node of the lab and asserts that it succeeds and prints
    /// `expected` there.
    fn on_every_node(&self, script: &str, expected: &str) {
        for node in self.lab.nodes() {
            let (code, out) = self.on_node(&node.name, script);
            assert_eq!(code, 0, "{}: {out}", node.name);
            assert_eq!(out, expected, "{}", node.name);
        }
    }
    /// Changes the definition's kubernetesVersion (and the package repository to its minor,
    /// as the lab's mirror lays them out) and renders again.
    fn set_version(&self, version: &str) {
        let mut definition: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&self.definition).unwrap()).unwrap();
        let minor = version.rsplit_once('.').unwrap().0;
        let repo = definition["packageRepository"]["url"].as_str().unwrap().to_string();
        let base = repo.rsplit_once("/v").unwrap().0;
        definition["kubernetesVersion"] = version.into();
        definition["packageRepository"]["url"] = format!("{base}/v{minor}").into();
        std::fs::write(&self.definition, serde_json::to_string_pretty(&definition).unwrap()).unwrap();
        assert_code(&self.hakube(&["render", self.definition.to_str().unwrap()]), 0, "render");
    }
    /// Runs a bash script on `node` as root without SSH; (exit code, stdout + stderr).
    fn on_node(&self, node: &str, script: &str) -> (i32, String) {
        let out = self.lab.command(node, "bash").unwrap().arg("-c").arg(script).output().unwrap();
        (out.status.code().unwrap_or(-1), text(&out))
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_code(out: &Output, code: i32, what: &str) {
    assert_eq!(out.status.code(), Some(code), "{what}:\n{}", text(out));
}

/// `(start, end)` of the last kubeadm call whose first argument is `verb`.
fn span(calls: &[Call], verb: &str) -> Option<(Duration, Duration)> {
    calls
        .iter()
        .rev()
        .find(|c| c.args.first().map(String::as_str) == Some(verb))
        .map(|c| (c.start, c.end.expect("kubeadm call did not finish")))
}

fn setup() -> World {
    setup_with("hkt", "hkbr7", [10, 252], "stacked", false, Distro::Debian12, "calico", DEFAULT_VERSION)
}

/// The lab's default Kubernetes release.
const DEFAULT_VERSION: &str = hakube_cluster::definition::DEFAULT_KUBERNETES_VERSION;

/// A lab with its own names and network (tests run side by side), rendered for, and with
/// `sudo_user`, logged into as the lab's non-root user with passwordless sudo; `network` is
/// the network add-on, whose files the lab's mirror serves; `version` one of the mirror's
/// Kubernetes releases.
#[allow(clippy::too_many_arguments)]
fn setup_with(
    prefix: &str,
    bridge: &str,
    subnet_base: [u8; 2],
    etcd: &str,
    sudo_user: bool,
    distro: Distro,
    network: &str,
    version: &str,
) -> World {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // Its own names and network, so it can run while `cargo xtask lab` has a lab up.
    let mut config = LabConfig {
        prefix: prefix.into(),
        bridge: bridge.into(),
        subnet_base,
        distro,
        network_provider: network.into(),
        kubernetes_version: version.into(),
        ..LabConfig::new(3, 2, dir.path().join("lab"))
    };
    if sudo_user {
        config.sudo_user = true;
        config.login_user = hakube_lab::SUDO_USER.into();
    }
    let mut definition = hakube_lab::definition(&config).expect("lab definition");
    definition["etcd"]["topology"] = etcd.into();
    bring_up(dir, config, &definition)
}

#[test]
fn install_reset_and_failures_on_the_lab() {
    let w = setup();
    full_install_runs_in_ha_order(&w);
    containerd_io_runs_on_every_node(&w);
    a_second_install_changes_nothing(&w);
    one_worker_alone(&w);
    one_worker_reset_and_rejoined(&w);
    an_unreachable_worker_fails_alone_and_a_rerun_completes_it(&w);
    no_secret_in_logs_or_process_arguments(&w);
    host_keys_are_checked(&w);
    a_node_without_tar_is_named(&w);
}

/// External etcd: etcd's release (the lab mirror's, at the version and sha256 the lab's
/// definition pins) runs under systemd on every master, the cluster answers
/// `etcdctl endpoint health` with the rendered certificates from the operator's machine, and
/// kubeadm accepts it (its ExternalEtcdVersion preflight check asks etcd itself). A master
/// reset (its member removed through another master) and installed again is added back to
/// the running cluster as a new member and joins.
#[test]
fn external_etcd_runs_for_real_and_a_reset_master_rejoins_it() {
    let w = setup_with("hku", "hkbr6", [10, 254], "external", false, Distro::Debian12, "calico", DEFAULT_VERSION);
    assert_code(&w.install(&[]), 0, "full install, external etcd");
    let version = w.lab.definition()["etcd"]["version"].as_str().unwrap().to_string();
    for node in ["master0", "master1", "master2"] {
        let (code, state) =
            w.on_node(node, "systemctl is-active hakube-etcd; /usr/local/bin/etcd --version | head -n 1");
        assert_eq!(code, 0, "{node}: {state}");
        assert_eq!(state, format!("active\netcd Version: {version}\n"), "{node}: etcd's release runs under systemd");
    }
    let health = w.etcdctl(&["endpoint", "health"]);
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    let init = w.kubeadm_calls("master0").into_iter().find(|c| c.args.first().is_some_and(|v| v == "init"));
    assert_eq!(init.and_then(|c| c.exit), Some(0), "kubeadm accepted etcd {version}");
    // The images step pulled no etcd image: nothing runs one (images.go GetControlPlaneImages).
    for node in ["master0", "master1", "master2"] {
        let (code, held) = w.on_node(node, "ctr -n k8s.io images ls -q | grep -v '^sha256:' | sort");
        assert_eq!(code, 0, "{node}: {held}");
        assert_eq!(held.lines().count(), 6, "{node}: {held}");
        assert!(!held.contains("/etcd:"), "{node}: {held}");
    }

    let out = w.hakube(&["reset", w.definition.to_str().unwrap(), "master2", "--yes"]);
    assert_code(&out, 0, "reset master2");
    let members = w.etcdctl(&["member", "list"]);
    assert!(!members.contains("master2") && members.lines().count() == 2, "master2's member was removed: {members}");
    let out = w.install(&["master2"]);
    assert_code(&out, 0, "install master2 again");
    let members = w.etcdctl(&["member", "list"]);
    assert!(members.contains(", started, master2, ") && members.lines().count() == 3, "{members}");
    assert_eq!(w.etcdctl(&["endpoint", "health"]).matches("is healthy").count(), 3);
    let (_, env) = w.on_node("master2", "cat /etc/etcd/hakube-etcd.env");
    assert_eq!(env, "HAKUBE_ETCD_INITIAL_CLUSTER_STATE=existing\n", "added to the running cluster");
    assert_eq!(w.kubeadm_calls("master2").iter().filter(|c| c.args.first().is_some_and(|v| v == "join")).count(), 2);

    // The first master too: reset and installed alone, it joins the running cluster through
    // master1 (its member removed and added back, the token re-armed there) instead of
    // creating a second cluster with kubeadm init.
    let inits =
        |w: &World| w.kubeadm_calls("master0").iter().filter(|c| c.args.first().is_some_and(|v| v == "init")).count();
    let inits_before = inits(&w);
    let out = w.install(&["master0", "--reset"]);
    assert_code(&out, 0, "install master0 --reset");
    assert_eq!(inits(&w), inits_before, "kubeadm init ran again on the first master");
    let join = w.kubeadm_calls("master0").into_iter().rev().find(|c| c.args.first().is_some_and(|v| v == "join"));
    let join = join.expect("master0 joined the running cluster");
    assert_eq!(join.exit, Some(0));
    let log = std::fs::read_to_string(w.logs().join("master0.log")).unwrap();
    assert!(log.contains("joining it instead of creating one"), "{log}");
    let members = w.etcdctl(&["member", "list"]);
    assert!(members.contains(", started, master0, ") && members.lines().count() == 3, "{members}");
    assert_eq!(w.etcdctl(&["endpoint", "health"]).matches("is healthy").count(), 3);
    let log = std::fs::read_to_string(w.logs().join("master1.log")).unwrap();
    assert!(log.contains("::hakube:: step=token status=done"), "the token was re-armed on master1:\n{log}");
}

/// Retries finish what an interrupted install left, and never skip it: a `kubeadm init` that
/// failed at wait-control-plane (where admin.conf already exists) is reset and run again; a
/// control-plane join that failed in control-plane-join (its etcd phase; kubelet.conf exists
/// and controlPlaneEndpoint answers through the other masters) is reset and joined again; a
/// full install long after the bootstrap token expired re-arms it before a worker joins.
#[test]
fn interrupted_inits_and_joins_are_finished_and_an_expired_token_is_re_armed() {
    // This cluster runs the mirror's 1.35 release, so that a later bump can be refused.
    let w = setup_with("hkr", "hkbr1", [10, 246], "stacked", false, Distro::Debian12, "calico", "1.35.4");
    let verbs = |node: &str| -> Vec<(String, Option<i32>)> {
        w.kubeadm_calls(node)
            .into_iter()
            .filter(|c| c.args.first().is_some_and(|v| v != "version" && v != "config"))
            .map(|c| (c.args[0].clone(), c.exit))
            .collect()
    };
    let fault = |text: &str| hakube_lab::Fault::parse(text).unwrap();
    w.lab.add_fault("master0", &fault("kubeadm.init@wait-control-plane fail")).unwrap();
    w.lab.add_fault("master2", &fault("kubeadm.join@control-plane-join fail")).unwrap();
    let out = w.install(&[]);
    assert_code(&out, 3, "install with init failing at wait-control-plane");
    assert!(
        w.on_node("master0", "test -f /etc/kubernetes/admin.conf").0 == 0,
        "kubeadm wrote admin.conf before failing"
    );
    assert_eq!(verbs("master0"), [("init".to_string(), Some(1))]);
    assert!(verbs("worker0").is_empty(), "nothing joined a cluster whose init failed");

    // The same command again: init is not taken as done; the half-done one is undone first.
    w.lab.clear_faults("master0").unwrap();
    let out = w.install(&[]);
    assert_code(&out, 3, "install with master2's join failing in control-plane-join");
    let expected: Vec<(String, Option<i32>)> =
        [("init", Some(1)), ("reset", Some(0)), ("init", Some(0))].map(|(v, e)| (v.to_string(), e)).to_vec();
    assert_eq!(verbs("master0"), expected);
    let log = std::fs::read_to_string(w.logs().join("master0.log")).unwrap();
    assert!(log.contains("stopped before its control plane came up"), "{log}");
    // kubeadm reset emptied /etc/kubernetes/pki: the cluster's own CA went back before init
    // ran again, so kubeadm made no new one (and the rendered discovery hash still holds).
    let ca = std::fs::read_to_string(w.assets().join("pki/ca.crt")).unwrap();
    assert_eq!(w.on_node("master0", "cat /etc/kubernetes/pki/ca.crt"), (0, ca.clone()));
    assert_eq!(verbs("master2"), [("join".to_string(), Some(1))]);

    // Again: master2's half-done join is reset and joined again, not accepted because the
    // load balancer's other masters answer.
    w.lab.clear_faults("master2").unwrap();
    let out = w.install(&[]);
    assert_code(&out, 0, "install after the faults are gone");
    let expected: Vec<(String, Option<i32>)> =
        [("join", Some(1)), ("reset", Some(0)), ("join", Some(0))].map(|(v, e)| (v.to_string(), e)).to_vec();
    assert_eq!(verbs("master2"), expected);
    assert_eq!(w.on_node("master2", "cat /etc/kubernetes/pki/ca.crt"), (0, ca));
    for node in ["worker0", "worker1"] {
        assert!(span(&w.kubeadm_calls(node), "join").is_some(), "{node} joined the finished cluster");
    }

    // Months later: the token has expired (the token cleaner deleted it) and worker1 is
    // reset; a full install re-arms the token before worker1 joins again.
    let tokens = w.dir.path().join("lab/cluster/tokens");
    let expired: String = std::fs::read_to_string(&tokens)
        .unwrap()
        .lines()
        .map(|l| format!("{} 1000000000\n", l.split_whitespace().next().unwrap()))
        .collect();
    std::fs::write(&tokens, expired).unwrap();
    assert_code(&w.hakube(&["reset", w.definition.to_str().unwrap(), "worker1", "--yes"]), 0, "reset worker1");
    let joins_before =
        w.kubeadm_calls("worker1").iter().filter(|c| c.args.first().is_some_and(|v| v == "join")).count();
    let out = w.install(&[]);
    assert_code(&out, 0, "full install after the token expired");
    // Re-armed where a cluster runs, before init (here master1; master0's init is done).
    let log = std::fs::read_to_string(w.logs().join("master1.log")).unwrap();
    assert!(log.contains("is missing or expiring: creating it again"), "{log}");
    let joins: Vec<Call> =
        w.kubeadm_calls("worker1").into_iter().filter(|c| c.args.first().is_some_and(|v| v == "join")).collect();
    assert_eq!(joins.len(), joins_before + 1);
    assert_eq!(joins.last().unwrap().exit, Some(0), "worker1 joined with the re-armed token");

    // Bumping kubernetesVersion and installing again changes no node's version: that would
    // upgrade kubelets before the API servers (the version skew policy). Install reads the
    // versions first and stops before anything is shipped, naming hakube upgrade.
    let kubeadm_before: Vec<usize> = w.lab.nodes().iter().map(|n| w.kubeadm_calls(&n.name).len()).collect();
    w.set_version("1.36.4");
    let out = w.install(&[]);
    assert_code(&out, 3, "install after bumping kubernetesVersion");
    assert!(text(&out).contains("5 of 5 node(s) did not finish"), "{}", text(&out));
    assert!(
        text(&out).contains("worker0 runs Kubernetes 1.35.4 in a cluster and kubernetesVersion is 1.36.4: hakube install never changes a running node's version")
            && text(&out).contains("`hakube upgrade`"),
        "{}",
        text(&out)
    );
    w.on_every_node(
        "kubelet --version; apt-mark showhold | grep -c kube; grep -c '^readonly KUBERNETES_VERSION=1.35.4$' /etc/hakube/boot.sh",
        "Kubernetes v1.35.4\n3\n1\n",
    );
    let kubeadm_after: Vec<usize> = w.lab.nodes().iter().map(|n| w.kubeadm_calls(&n.name).len()).collect();
    assert_eq!(kubeadm_before, kubeadm_after, "kubeadm ran on a node whose version was refused");
}

/// The whole cluster on Debian 13: its own image, its own containerd and systemd; with
/// flannel, whose manifest comes from the mirror, checked against its pin.
/// Debian 13 with flannel, installed from a git clone of assets whose secrets are
/// encrypted with age (issue 10): the assets are rendered with a recipient, committed and
/// cloned; the clone passes `render --check` without any identity; the nodes get their
/// host keys decrypted by the age CLI (as an infra provider's provisioning would); install
/// runs from the clone with the identity, and no plaintext secret is ever written to the
/// operator's disk by render or install (the clone and the logs hold none).
#[test]
fn a_full_install_on_debian_13_from_a_clone_of_encrypted_assets() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = LabConfig {
        prefix: "hkd".into(),
        bridge: "hkbr4".into(),
        subnet_base: [10, 248],
        distro: Distro::Debian13,
        network_provider: "flannel".into(),
        ..LabConfig::new(3, 2, dir.path().join("lab"))
    };
    let key = dir.path().join("key.txt");
    assert!(
        Command::new("age-keygen").arg("-o").arg(&key).output().unwrap().status.success(),
        "age-keygen (Debian package age)"
    );
    let public = String::from_utf8(Command::new("age-keygen").arg("-y").arg(&key).output().unwrap().stdout).unwrap();
    let mut definition = hakube_lab::definition(&config).expect("lab definition");
    definition["secrets"] = serde_json::json!({ "recipients": [public.trim()] });
    let path = dir.path().join("lab.json");
    std::fs::write(&path, serde_json::to_string_pretty(&definition).unwrap()).unwrap();
    let def = path.to_str().unwrap();
    // A clean environment: no identity but the one given.
    let hakube = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hakube"))
            .args(args)
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env_remove("HAKUBE_AGE_KEY_FILE")
            .env_remove("SOPS_AGE_KEY_FILE")
            .env_remove("SOPS_AGE_KEY")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!text(&out).contains("panicked"), "{}", text(&out));
        out
    };
    assert_code(&hakube(&["render", def]), 0, "render with a recipient");
    let git = |cwd: &std::path::Path, args: &[&str]| {
        let out = Command::new("git")
            .current_dir(cwd)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .output()
            .unwrap();
        assert_code(&out, 0, &format!("git {args:?}"));
    };
    let assets = dir.path().join("assets");
    git(&assets, &["init", "-q"]);
    git(&assets, &["add", "-A"]);
    git(&assets, &["commit", "-qm", "assets"]);
    git(dir.path(), &["clone", "-q", "assets", "clone"]);
    std::fs::remove_dir_all(&assets).unwrap();
    let clone = dir.path().join("clone");
    let check = hakube(&["render", def, "--assets-dir", "clone", "--check"]);
    assert_code(&check, 0, "render --check in the clone without an identity");
    // The provisioning's part: each node's host key, decrypted, outside the assets.
    let provision = dir.path().join("provision");
    for node in ["master0", "master1", "master2", "worker0", "worker1"] {
        let rel = format!("ssh/host-keys/{node}/ssh_host_ed25519_key");
        std::fs::create_dir_all(provision.join(&rel).parent().unwrap()).unwrap();
        let out =
            Command::new("age").arg("-d").arg("-i").arg(&key).arg(clone.join(format!("{rel}.age"))).output().unwrap();
        assert_code(&out, 0, "age -d a host key");
        std::fs::write(provision.join(&rel), &out.stdout).unwrap();
        std::fs::copy(clone.join(format!("{rel}.pub")), provision.join(format!("{rel}.pub"))).unwrap();
    }
    let login = std::fs::read_to_string(clone.join("ssh/id_ed25519.pub")).unwrap();
    let lab =
        Lab::up(LabConfig { host_keys: Some(provision), authorized_key: Some(login.trim().to_string()), ..config })
            .expect("lab up");
    let w = World { lab, dir, definition: path.clone() };
    let out = w.install(&["--assets-dir", "clone", "--identity", key.to_str().unwrap()]);
    assert_code(&out, 0, "full install on Debian 13 from the clone");
    for (rel, _) in walk(&w.dir.path().join("clone")) {
        let secret = hakube_render::layout::file(&rel).is_some_and(|f| f.secret && !f.encrypted);
        assert!(!secret, "{rel}: a plaintext secret in the clone after install");
    }
    let calls = w.calls("master0");
    assert!(
        calls.iter().any(|c| c.name == "kubectl" && c.args.iter().any(|a| a.contains("FLANNELD_IFACE"))),
        "flanneld is bound to each node's registered address"
    );
    w.on_every_node(
        ". /etc/os-release; echo $VERSION_ID; systemctl is-active containerd kubelet; dpkg -S \"$(command -v systemctl)\"; stat -c %a /etc/hakube/secrets/pki/ca.key 2>/dev/null || stat -c %a /etc/hakube/secrets/bootstrap-token",
        "13\nactive\nactive\nsystemd: /usr/bin/systemctl\n600\n",
    );
    containerd_io_runs_on_every_node(&w);
}

/// Every file below `dir` (`.git` skipped), by relative path.
fn walk(dir: &std::path::Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().is_some_and(|n| n == ".git") {
                continue;
            } else if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_str().unwrap().to_string(), p));
            }
        }
    }
    out
}

/// A login user other than root: every command goes through `sudo -n`; with Cilium, whose
/// CLI the boot script downloads from the mirror (checked against its pin) into
/// /usr/local/bin and calls by that path.
#[test]
fn a_non_root_login_user_installs_through_sudo() {
    let w = setup_with("hks", "hkbr5", [10, 249], "stacked", true, Distro::Debian12, "cilium", DEFAULT_VERSION);
    let definition = std::fs::read_to_string(&w.definition).unwrap();
    assert!(definition.contains(&format!("\"sshLoginUser\": \"{}\"", hakube_lab::SUDO_USER)), "{definition}");
    assert_code(&w.install(&[]), 0, "install as a sudo user");
    assert!(span(&w.kubeadm_calls("master0"), "init").is_some());
    assert!(span(&w.kubeadm_calls("worker1"), "join").is_some());
    let cilium = w.calls("master0").into_iter().find(|c| c.name == "cilium").expect("the cilium CLI ran");
    assert_eq!(cilium.args.first().map(String::as_str), Some("install"));
}

fn full_install_runs_in_ha_order(w: &World) {
    let out = w.install(&[]);
    assert_code(&out, 0, "full install");
    let summary = text(&out);
    assert!(summary.contains("5 node(s) done"), "{summary}");
    // Progress names each master as it joins (plain lines: stderr is not a terminal).
    for node in ["master1", "master2", "worker0", "worker1"] {
        assert!(summary.contains(&format!("{node}: join done")), "no progress line for {node}:\n{summary}");
    }
    let init = span(&w.kubeadm_calls("master0"), "init").expect("kubeadm init ran on master0");
    let m1 = span(&w.kubeadm_calls("master1"), "join").expect("master1 joined");
    let m2 = span(&w.kubeadm_calls("master2"), "join").expect("master2 joined");
    let w0 = span(&w.kubeadm_calls("worker0"), "join").expect("worker0 joined");
    let w1 = span(&w.kubeadm_calls("worker1"), "join").expect("worker1 joined");
    assert!(
        init.1 <= m1.0 && init.1 <= m2.0 && init.1 <= w0.0 && init.1 <= w1.0,
        "a join started before init finished"
    );
    assert!(m1.1 <= m2.0 || m2.1 <= m1.0, "master joins overlapped: {m1:?} {m2:?}");
    let masters_done = m1.1.max(m2.1);
    assert!(w0.0 >= masters_done && w1.0 >= masters_done, "a worker joined before the masters finished");
    assert!(w.kubeadm_calls("master0").iter().all(|c| c.args.first().map(String::as_str) != Some("join")));
    // Every master pulled its control-plane images in the parallel preparation: each pull ran
    // before kubeadm init (so before the second master's join), the pulls of the masters
    // overlapped, and no worker pulled any.
    let pulls: Vec<(Duration, Duration)> = ["master0", "master1", "master2"]
        .iter()
        .map(|node| {
            let pulls = spans(w, node, "kubeadm", &["config", "images", "pull"]);
            assert_eq!(pulls.len(), 1, "{node} pulled its images once: {pulls:?}");
            pulls[0]
        })
        .collect();
    for (node, pull) in ["master0", "master1", "master2"].iter().zip(&pulls) {
        assert!(pull.0 < m1.0 && pull.1 <= init.0, "{node} pulled {pull:?}, not before init {init:?} and the joins");
        eprintln!(
            "{node}: kubeadm config images pull took {:.1} s, from {:.1} s after the first pull began to {:.1} s before init",
            (pull.1 - pull.0).as_secs_f64(),
            (pull.0 - pulls.iter().map(|p| p.0).min().unwrap()).as_secs_f64(),
            (init.0 - pull.1).as_secs_f64()
        );
    }
    for (i, a) in pulls.iter().enumerate() {
        for b in &pulls[i + 1..] {
            assert!(a.0 < b.1 && b.0 < a.1, "the masters' pulls did not overlap: {pulls:?}");
        }
    }
    for node in ["worker0", "worker1"] {
        assert!(
            spans(w, node, "kubeadm", &["config", "images", "pull"]).is_empty(),
            "{node} pulled control-plane images"
        );
    }
    // What the images step checked: the real containerd of each master holds every image
    // kubeadm names for the cluster (the stand-in imported them; crates/lab/README.md
    // "Images"), a worker's none.
    for node in w.lab.nodes() {
        // (Without the image ID references, sha256:..., which the CRI plugin adds.)
        let (code, held) = w.on_node(&node.name, "ctr -n k8s.io images ls -q | grep -v '^sha256:' | sort || true");
        assert_eq!(code, 0, "{}: {held}", node.name);
        if node.role == hakube_lab::Role::Master {
            let (code, named) =
                w.on_node(&node.name, "kubeadm config images list --config /var/lib/hakube/kubeadm-images.yaml | sort");
            assert_eq!(code, 0, "{}: {named}", node.name);
            assert_eq!(held, named, "{}", node.name);
            assert_eq!(named.lines().count(), 7, "{}: {named}", node.name);
            assert!(named.contains(&format!("registry.k8s.io/kube-apiserver:v{DEFAULT_VERSION}\n")), "{named}");
        } else {
            assert_eq!(held, "", "{}", node.name);
        }
    }
    for node in ["master0", "worker1"] {
        let log = std::fs::read_to_string(w.logs().join(format!("{node}.log"))).unwrap();
        assert!(log.contains("::hakube:: step=post status=done"), "{node}.log:\n{log}");
    }
    // Real services under real systemd, from real packages, held as the boot script asks.
    w.on_every_node(
        "cat /proc/1/comm; systemctl is-active containerd kubelet; dpkg -S \"$(command -v kubeadm)\"; apt-mark showhold; grep -c 'SystemdCgroup = true' /etc/containerd/config.toml",
        "systemd\nactive\nactive\nkubeadm: /usr/bin/kubeadm\nkubeadm\nkubectl\nkubelet\n1\n",
    );
    // The registry mirror reaches the real containerd: its live configuration names the
    // hosts directory, where registry.k8s.io's hosts.toml points at the lab's mirror
    // (containerd 2.x dumps TOML strings in single quotes, 1.x in double quotes).
    let (code, out) = w.on_node(
        "worker0",
        "containerd config dump | grep -Ec \"config_path = [\\\"']/etc/containerd/certs.d[\\\"']\"; cat /etc/containerd/certs.d/registry.k8s.io/hosts.toml",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "1\nserver = \"https://registry.k8s.io\"\n\n[host.\"http://10.252.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
}

fn a_second_install_changes_nothing(w: &World) {
    // kubeadm calls that change a node (`kubeadm version` and `kubeadm config images list`, the
    // packages and images steps' checks, are only asked).
    let asked = |c: &Call| {
        c.args.first().is_some_and(|v| v == "version")
            || c.args.starts_with(&["config".to_string(), "images".to_string(), "list".to_string()])
    };
    let changes = |n: &str| w.kubeadm_calls(n).iter().filter(|c| !asked(c)).count();
    let before: Vec<usize> = ["master0", "master1", "worker0"].iter().map(|n| changes(n)).collect();
    let out = w.install(&[]);
    assert_code(&out, 0, "second install");
    let after: Vec<usize> = ["master0", "master1", "worker0"].iter().map(|n| changes(n)).collect();
    assert_eq!(before, after, "a second install ran kubeadm again");
    let log = std::fs::read_to_string(w.logs().join("worker0.log")).unwrap();
    assert!(log.contains("::hakube:: step=join status=skipped"), "{log}");
}

fn one_worker_alone(w: &World) {
    let others = ["master1", "master2", "worker0"];
    let before: Vec<usize> = others.iter().map(|n| w.calls(n).len()).collect();
    let worker1_before = w.calls("worker1").len();
    let out = w.install(&["worker1"]);
    assert_code(&out, 0, "install worker1");
    assert!(text(&out).contains("1 node(s) done"), "{}", text(&out));
    let after: Vec<usize> = others.iter().map(|n| w.calls(n).len()).collect();
    assert_eq!(before, after, "installing worker1 touched other nodes");
    assert!(w.calls("worker1").len() > worker1_before, "worker1 was not touched");
    // The token was checked on the first master, and nothing else ran there.
    let log = std::fs::read_to_string(w.logs().join("master0.log")).unwrap();
    assert!(log.contains("::hakube:: step=token status=done"), "{log}");
}

fn one_worker_reset_and_rejoined(w: &World) {
    let before = w.kubeadm_calls("worker1").len();
    let out = w.install(&["worker1", "--reset"]);
    assert_code(&out, 0, "install worker1 --reset");
    let calls = &w.kubeadm_calls("worker1")[before..];
    let verbs: Vec<&str> = calls.iter().filter_map(|c| c.args.first().map(String::as_str)).collect();
    let reset = verbs.iter().position(|v| *v == "reset").expect("kubeadm reset ran on worker1");
    let join = verbs.iter().rposition(|v| *v == "join").expect("worker1 joined again");
    assert!(reset < join, "{verbs:?}");
    assert!(w.kubeadm_calls("worker0").iter().all(|c| c.args.first().map(String::as_str) != Some("reset")));
}

fn an_unreachable_worker_fails_alone_and_a_rerun_completes_it(w: &World) {
    // A fresh worker0: reset it, then take its sshd away before installing again.
    assert_code(&w.hakube(&["reset", w.definition.to_str().unwrap(), "worker0", "--yes"]), 0, "reset worker0");
    w.lab.stop_sshd("worker0").unwrap();
    let out = w.install(&[]);
    assert_code(&out, 3, "install with worker0 down");
    let summary = text(&out);
    let line = summary.lines().find(|l| l.starts_with("worker0")).unwrap_or_default();
    assert!(line.contains("FAILED") && line.contains("worker0.log"), "{summary}");
    for node in ["master0", "master1", "master2", "worker1"] {
        let line = summary.lines().find(|l| l.starts_with(node)).unwrap_or_default();
        assert!(line.contains(" ok "), "{node} did not finish:\n{summary}");
    }
    w.lab.start_sshd("worker0").unwrap();
    let out = w.install(&[]);
    assert_code(&out, 0, "rerun after sshd is back");
    assert!(span(&w.kubeadm_calls("worker0"), "join").is_some());
}

fn no_secret_in_logs_or_process_arguments(w: &World) {
    let token = std::fs::read_to_string(w.assets().join("token/bootstrap-token")).unwrap();
    let secret = token.trim().split('.').nth(1).unwrap().to_string();
    let ca_key = std::fs::read_to_string(w.assets().join("pki/ca.key")).unwrap();
    let key_line = ca_key.lines().nth(1).unwrap().to_string();
    for entry in std::fs::read_dir(w.logs()).unwrap() {
        let path = entry.unwrap().path();
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(!log.contains(&secret), "{} holds the token secret", path.display());
        assert!(!log.contains(&key_line) && !log.contains("PRIVATE KEY"), "{} holds key material", path.display());
    }
    for node in ["master0", "master1", "master2", "worker0", "worker1"] {
        for call in w.calls(node) {
            let args = call.args.join(" ");
            assert!(!args.contains(&secret), "{node}: {} was called with the token secret", call.name);
        }
    }
}

fn host_keys_are_checked(w: &World) {
    // A replaced machine (new host key) is refused under the default strict policy, and
    // the failure names the host key.
    w.lab.replace_host_key("worker1").unwrap();
    let out = w.install(&["worker1"]);
    assert_code(&out, 3, "install to a changed host key");
    assert!(text(&out).contains("host key of worker1"), "{}", text(&out));
    // accept-new never overrides a key render pinned: worker1 is still refused.
    let mut definition: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&w.definition).unwrap()).unwrap();
    definition["hostKeyPolicy"] = "accept-new".into();
    std::fs::write(&w.definition, serde_json::to_string_pretty(&definition).unwrap()).unwrap();
    assert_code(&w.hakube(&["render", w.definition.to_str().unwrap()]), 0, "render for accept-new");
    let out = w.install(&["worker1"]);
    assert_code(&out, 3, "accept-new with the rendered key pinned");
    assert!(text(&out).contains("host key of worker1"), "{}", text(&out));
    // A node whose key the assets do not hold (render makes none under accept-new): its key
    // is recorded on first contact, then pinned.
    std::fs::remove_dir_all(w.assets().join("ssh/host-keys/worker1")).unwrap();
    assert_code(&w.hakube(&["render", w.definition.to_str().unwrap()]), 0, "render without worker1's key");
    let accepted = w.assets().join("ssh/known_hosts.accepted");
    let _ = std::fs::remove_file(&accepted);
    let out = w.install(&["worker1"]);
    assert_code(&out, 0, "accept-new install");
    let recorded = std::fs::read_to_string(&accepted).unwrap();
    assert_eq!(recorded.lines().count(), 1, "accept-new recorded worker1's key and no pinned one: {recorded}");
    w.lab.replace_host_key("worker1").unwrap();
    let out = w.install(&["worker1"]);
    assert_code(&out, 3, "accept-new after the key changed");
    assert!(text(&out).contains("does not match"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&accepted).unwrap(), recorded, "the pinned key was replaced");
}

/// containerRuntime.source `docker` (the default): every node runs the containerd of the
/// `containerd.io` package the mirror serves where Docker's apt repository is (built by the
/// lab from Debian's real containerd and runc binaries, crates/lab/src/containerd.rs), added
/// with Docker's key and suite by the runtime step, which said what it found.
fn containerd_io_runs_on_every_node(w: &World) {
    let repo = w.dir.path().join("lab/mirror/download.docker.com/linux/debian/dists");
    let packages = std::fs::read_dir(&repo)
        .unwrap()
        .flatten()
        .flat_map(|suite| std::fs::read_dir(suite.path().join("stable")).unwrap().flatten())
        .map(|arch| std::fs::read_to_string(arch.path().join("Packages")).unwrap())
        .next()
        .expect("the mirror serves Docker's apt repository");
    let version = packages.lines().find_map(|l| l.strip_prefix("Version: ")).expect("containerd.io's version");
    let release = version.split('-').next().unwrap();
    for node in w.lab.nodes() {
        let (code, out) = w.on_node(
            &node.name,
            "containerd --version; dpkg -S \"$(command -v containerd)\"; dpkg-query -W -f '${Version}\\n' containerd.io; \
             dpkg-query -W -f '${db:Status-Status}\\n' containerd runc 2>/dev/null | grep -c '^installed' || true; \
             cat /etc/apt/sources.list.d/hakube-docker.list; systemctl is-active containerd",
        );
        assert_eq!(code, 0, "{}: {out}", node.name);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("containerd ")
                && lines[0].split_whitespace().nth(2).is_some_and(|v| v.starts_with(release)),
            "{}: containerd --version names the served {release}: {out}",
            node.name
        );
        assert_eq!(lines[1], "containerd.io: /usr/bin/containerd", "{}", node.name);
        assert_eq!(lines[2], version, "{}", node.name);
        assert_eq!(lines[3], "0", "{}: Debian's containerd and runc are not installed beside it", node.name);
        assert!(
            lines[4].starts_with("deb [arch=")
                && lines[4].contains(" signed-by=/etc/apt/keyrings/docker.asc] http://")
                && lines[4].contains("/download.docker.com/linux/debian ")
                && lines[4].ends_with(" stable"),
            "{}: {out}",
            node.name
        );
        assert_eq!(lines[5], "active", "{}", node.name);
        let log = std::fs::read_to_string(w.logs().join(format!("{}.log", node.name))).unwrap();
        assert!(log.contains(&format!("containerd {release} (containerd.io {version})")), "{}.log:\n{log}", node.name);
    }
}

/// containerRuntime.source `distribution` against Debian's real containerd, then the default
/// `docker` on the same node, on one master of each Debian release: Debian 12's 1.6.20 fails
/// the runtime step on 1.36 with the message naming it, containerd's list and the fields to
/// change, and Debian 13's 1.7.24 is tolerated with a warning; then Docker's containerd.io
/// replaces the installed Debian containerd and runc (apt's Conflicts, said in the log), and
/// its containerd runs under its own unit (Debian 13's containerd ships its unit under
/// /usr/lib, containerd.io under /lib, one directory on a merged-/usr system).
#[test]
fn debians_containerd_is_judged_and_dockers_replaces_it() {
    for (distro, prefix, bridge, subnet) in
        [(Distro::Debian12, "hkc", "hkbr11", [10, 243]), (Distro::Debian13, "hke", "hkbr12", [10, 242])]
    {
        let dir = tempfile::tempdir().unwrap();
        let config = LabConfig {
            prefix: prefix.into(),
            bridge: bridge.into(),
            subnet_base: subnet,
            distro,
            network_provider: "calico".into(),
            ..LabConfig::new(1, 0, dir.path().join("lab"))
        };
        let mut definition = hakube_lab::definition(&config).expect("lab definition");
        definition["containerRuntime"]["source"] = "distribution".into();
        let w = bring_up(dir, config, &definition);
        let path = w.definition.clone();
        let log = || std::fs::read_to_string(w.logs().join("master0.log")).unwrap();

        let out = w.install(&[]);
        match distro {
            Distro::Debian12 => {
                assert_code(&out, 3, "Debian 12's containerd on 1.36");
                let log = log();
                assert!(
                    log.contains("boot.sh: error: containerd 1.6.20 (containerd 1.6.20~ds1-1+deb12u3, the distribution's) is not supported for Kubernetes 1.36: containerd lists 2.3.0+, 2.2.0+ for it (containerd RELEASES.md)"),
                    "{log}"
                );
                assert!(log.contains("containerRuntime.source \"docker\""), "{log}");
                assert!(log.contains("::hakube:: step=runtime status=failed"), "{log}");
            }
            _ => {
                assert_code(&out, 0, "Debian 13's containerd on 1.36");
                let log = log();
                assert!(
                    log.contains("boot.sh: warning: containerd 1.7.24 (containerd 1.7.24~ds1-6+deb13u1) is not a release containerd lists for Kubernetes 1.36"),
                    "{log}"
                );
            }
        }
        assert_eq!(w.on_node("master0", "dpkg -S \"$(command -v containerd)\"").1, "containerd: /usr/bin/containerd\n");

        // The default source on the same node: containerd.io replaces Debian's packages.
        let mut definition: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        definition["containerRuntime"].as_object_mut().unwrap().remove("source");
        std::fs::write(&path, serde_json::to_string_pretty(&definition).unwrap()).unwrap();
        assert_code(&w.hakube(&["render", path.to_str().unwrap()]), 0, "render again");
        assert_code(&w.install(&[]), 0, "install with Docker's containerd.io");
        let log = log();
        for package in ["containerd", "runc"] {
            assert!(
                log.contains(&format!("installing containerd.io removes the package {package} (it conflicts with it)")),
                "{log}"
            );
        }
        containerd_io_runs_on_every_node(&w);
        // Every file of containerd.io is there as packaged (`dpkg --verify` names a missing or
        // changed one; the configuration is a conffile hakube rewrites), and systemd runs its
        // unit (found under /usr/lib on Debian 13, where /lib is a link to it).
        let (code, files) = w.on_node(
            "master0",
            "dpkg --verify containerd.io | grep -v ' c /etc/containerd/config.toml$' || true; systemctl cat containerd.service | head -n 1; dpkg -S /lib/systemd/system/containerd.service",
        );
        assert_eq!(code, 0, "{files}");
        let first = match distro {
            Distro::Debian12 => "# /lib/systemd/system/containerd.service",
            _ => "# /usr/lib/systemd/system/containerd.service",
        };
        assert_eq!(files, format!("{first}\ncontainerd.io: /lib/systemd/system/containerd.service\n"), "{distro:?}");
    }
}

/// A machine without tar (Rocky's minimal install has none) fails the ship step with a
/// message that says what to install, not a bare exit code.
fn a_node_without_tar_is_named(w: &World) {
    let (code, out) = w.on_node("worker0", "mv /usr/bin/tar /usr/bin/tar.away");
    assert_eq!(code, 0, "{out}");
    let out = w.install(&["worker0"]);
    assert_code(&out, 3, "install to a node without tar");
    assert!(text(&out).contains("the node has no tar"), "{}", text(&out));
    let (code, out) = w.on_node("worker0", "mv /usr/bin/tar.away /usr/bin/tar");
    assert_eq!(code, 0, "{out}");
}

/// `(start, end)` of every call on `node` of `program` whose arguments begin with `prefix`.
fn spans(w: &World, node: &str, program: &str, prefix: &[&str]) -> Vec<(Duration, Duration)> {
    w.calls(node)
        .into_iter()
        .filter(|c| c.name == program && c.args.len() >= prefix.len() && c.args.iter().zip(prefix).all(|(a, p)| a == p))
        .map(|c| (c.start, c.end.expect("the call finished")))
        .collect()
}

/// When dpkg on `node` last upgraded `package` (its /var/log/dpkg.log, which dpkg writes
/// itself), as time since the Unix epoch, to the second.
fn dpkg_upgraded(w: &World, node: &str, package: &str) -> Option<Duration> {
    let (code, out) = w.on_node(
        node,
        &format!("awk '$3 == \"upgrade\" && index($4, \"{package}:\") == 1 {{ print $1, $2 }}' /var/log/dpkg.log | tail -n 1 | xargs -r -I{{}} date -d {{}} +%s"),
    );
    assert_eq!(code, 0, "{out}");
    out.trim().parse().ok().map(Duration::from_secs)
}

/// Issue 13: a 3-master, 3-worker cluster installed at 1.35, then kubernetesVersion 1.36.4:
/// install refuses before touching any node; `hakube upgrade` made to fail on the second
/// master stops there within the skew policy; run again, it resumes without a second
/// `kubeadm upgrade apply` and finishes: the first master's apply before any `upgrade node`,
/// the other masters one at a time, each worker drained before dpkg changed its kubelet and
/// uncordoned after, never more than upgrade.maxUnavailable (2) workers cordoned at once, no
/// kubelet upgraded before the apply finished; an etcd snapshot was copied off first.
#[test]
fn an_upgrade_goes_one_minor_control_plane_first_and_resumes() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = LabConfig {
        prefix: "hkg".into(),
        bridge: "hkbr13".into(),
        subnet_base: [10, 241],
        kubernetes_version: "1.35.4".into(),
        ..LabConfig::new(3, 3, dir.path().join("lab"))
    };
    let mut definition = hakube_lab::definition(&config).expect("lab definition");
    definition["upgrade"] = serde_json::json!({ "maxUnavailable": 2 });
    let w = bring_up(dir, config, &definition);
    assert_code(&w.install(&[]), 0, "install at 1.35.4");

    w.set_version("1.36.4");
    let out = w.install(&[]);
    assert_code(&out, 3, "install after the version bump");
    assert!(text(&out).contains("hakube upgrade"), "{}", text(&out));
    w.on_every_node("grep -c '^readonly KUBERNETES_VERSION=1.35.4$' /etc/hakube/boot.sh", "1\n");

    let fault = hakube_lab::Fault::parse("kubeadm.upgrade fail").unwrap();
    w.lab.add_fault("master1", &fault).unwrap();
    let upgrade = |w: &World| w.run_logged("upgrade", &[]);
    let out = upgrade(&w);
    assert_code(&out, 3, "upgrade with master1's kubeadm upgrade node failing");
    assert_eq!(spans(&w, "master0", "kubeadm", &["upgrade", "apply"]).len(), 1);
    for node in ["master2", "worker0", "worker1", "worker2"] {
        assert!(spans(&w, node, "kubeadm", &["upgrade"]).is_empty(), "{node} was upgraded after master1 failed");
        assert_eq!(w.on_node(node, "kubelet --version").1, "Kubernetes v1.35.4\n", "{node}");
    }
    let snapshots: Vec<_> =
        std::fs::read_dir(w.dir.path().join("snapshots")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert!(std::fs::metadata(&snapshots[0]).unwrap().len() > 0);

    w.lab.clear_faults("master1").unwrap();
    assert_code(&upgrade(&w), 0, "the same upgrade again");
    let apply = spans(&w, "master0", "kubeadm", &["upgrade", "apply"]);
    assert_eq!(apply.len(), 1, "upgrade apply ran again on resume");
    let apply_end = apply[0].1;
    let (m1, m2) =
        (spans(&w, "master1", "kubeadm", &["upgrade", "node"]), spans(&w, "master2", "kubeadm", &["upgrade", "node"]));
    let (m1, m2) = (*m1.last().unwrap(), *m2.last().unwrap());
    assert!(apply_end <= m1.0 && m1.1 <= m2.0, "masters not one at a time after the apply: {apply:?} {m1:?} {m2:?}");
    for node in ["master0", "master1", "master2", "worker0", "worker1", "worker2"] {
        let kubelet =
            dpkg_upgraded(&w, node, "kubelet").unwrap_or_else(|| panic!("dpkg never upgraded {node}'s kubelet"));
        assert!(kubelet.as_secs() >= apply_end.as_secs(), "{node}'s kubelet changed before the apply finished");
    }
    // Workers, from the first master: drain, then the kubelet package, then uncordon.
    let mut cordoned = Vec::new();
    for worker in ["worker0", "worker1", "worker2"] {
        let drain = spans(&w, "master0", "kubectl", &["--kubeconfig", "/etc/kubernetes/admin.conf", "drain", worker]);
        let uncordon =
            spans(&w, "master0", "kubectl", &["--kubeconfig", "/etc/kubernetes/admin.conf", "uncordon", worker]);
        let (drain, uncordon) = (*drain.last().expect("drained"), *uncordon.last().expect("uncordoned"));
        let kubelet = dpkg_upgraded(&w, worker, "kubelet").unwrap();
        assert!(drain.1.as_secs() <= kubelet.as_secs() && kubelet.as_secs() <= uncordon.0.as_secs() + 1, "{worker}");
        cordoned.push((drain.0, uncordon.1));
    }
    let most = cordoned.iter().map(|(s, _)| cordoned.iter().filter(|(a, b)| a <= s && s < b).count()).max().unwrap();
    assert!(most <= 2, "{most} workers cordoned at once, upgrade.maxUnavailable is 2");
    assert!(
        cordoned[2].0 >= cordoned[0].1.max(cordoned[1].1),
        "worker2 (the second batch) began before the first ended"
    );
    w.on_every_node("kubelet --version; kubeadm version -o short", "Kubernetes v1.36.4\nv1.36.4\n");
    // At the new version, install agrees again.
    assert_code(&w.install(&[]), 0, "install after the upgrade");
}
