//! The kubeadm stand-in's `upgrade plan|apply|node` on a real lab: 2 masters and a worker
//! installed by hand with real apt from the mirror's v1.35 repository, `kubeadm init`/`join` by
//! the stand-in, then kubeadm 1.36.4 from the v1.36 repository and the upgrade, failing where
//! kubeadm fails. Needs root; the first run builds the Debian 12 image.
//!
//! The lab here uses prefix `hk7`, bridge `hkbr3` and 10.247.0.0/16, so it never collides with
//! another test binary's lab.

use std::fs;
use std::process::Command;

use hakube_lab::{Fault, Lab, LabConfig};

const TOKEN: &str = "abcdef.0123456789abcdef";

fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "0", "the lab tests need root");
}

/// Runs a bash script on `node` without ssh; (exit code, stdout, stderr).
fn bash(lab: &Lab, node: &str, script: &str) -> (i32, String, String) {
    let out = lab.command(node, "bash").unwrap().arg("-c").arg(script).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `script` must succeed on `node`; its standard output.
fn ok(lab: &Lab, node: &str, script: &str) -> String {
    let (code, out, err) = bash(lab, node, script);
    assert_eq!(code, 0, "{node}: {script}\n{out}{err}");
    out
}

/// Points apt at the mirror's repository for `minor` (1.35, 1.36), as hakube's packages step
/// does, and installs `packages` (name=version) with real apt, held.
fn install(lab: &Lab, mirror: &str, node: &str, minor: &str, packages: &str) {
    let repo = format!("{mirror}/pkgs.k8s.io/core:/stable:/v{minor}");
    ok(
        lab,
        node,
        &format!(
            "set -euo pipefail; export DEBIAN_FRONTEND=noninteractive
             command -v gpg >/dev/null || {{ apt-get -q update >/dev/null && apt-get -q -y install gpg >/dev/null; }}
             install -d -m 0755 /etc/apt/keyrings
             curl -fsSL '{repo}/deb/Release.key' | gpg --dearmor --batch --yes -o /etc/apt/keyrings/k.gpg
             echo 'deb [signed-by=/etc/apt/keyrings/k.gpg] {repo}/deb/ /' > /etc/apt/sources.list.d/k.list
             apt-get -q update >/dev/null
             apt-get -q -y --allow-change-held-packages --allow-downgrades install {packages} >/dev/null
             apt-mark hold kubelet kubeadm kubectl >/dev/null"
        ),
    );
}

/// The image tag of a static Pod manifest on `node`.
fn manifest_tag(lab: &Lab, node: &str, pod: &str) -> String {
    let text =
        fs::read_to_string(lab.node_file(node, format!("/etc/kubernetes/manifests/{pod}.yaml")).unwrap()).unwrap();
    let image = text.lines().find_map(|l| l.trim().strip_prefix("image: ")).unwrap_or_else(|| panic!("{pod}: {text}"));
    image.rsplit_once(':').unwrap().1.to_string()
}

fn control_plane_tags(lab: &Lab, node: &str) -> Vec<String> {
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler"].iter().map(|p| manifest_tag(lab, node, p)).collect()
}

#[test]
fn kubeadm_upgrade_fails_where_kubeadm_fails() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut config = LabConfig::new(2, 1, dir.path().join("state"));
    config.prefix = "hk7".into();
    config.bridge = "hkbr3".into();
    config.subnet_base = [10, 247];
    config.kubernetes_version = "1.35.4".into();
    let mirror = config.mirror_url();
    let lab = Lab::up(config).unwrap();
    let master0 = lab.node("master0").unwrap().address;

    // The cluster at 1.35.4.
    for node in ["master0", "master1", "worker0"] {
        install(&lab, &mirror, node, "1.35", "kubelet=1.35.4-1.1 kubeadm=1.35.4-1.1 kubectl=1.35.4-1.1");
    }
    let init = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nbootstrapTokens:\n- token: {TOKEN}\nnodeRegistration:\n  name: master0\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.35.4\ncontrolPlaneEndpoint: {master0}:6443\n"
    );
    let join = |name: &str, control_plane: bool| {
        let mut text = format!(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: {master0}:6443\n    token: {TOKEN}\n    unsafeSkipCAVerification: true\nnodeRegistration:\n  name: {name}\n"
        );
        if control_plane {
            text.push_str(
                "controlPlane:\n  certificateKey: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
            );
        }
        text
    };
    // The preflight checks are the init/join tests' business (a bare node has no containerd).
    let run = |node: &str, yaml: &str, command: &str| {
        ok(&lab, node, &format!("cat > /tmp/kubeadm.yaml <<'EOF'\n{yaml}EOF\nkubeadm {command} --config /tmp/kubeadm.yaml --ignore-preflight-errors=all"))
    };
    run("master0", &init, "init");
    run("master1", &join("master1", true), "join");
    run("worker0", &join("worker0", false), "join");
    assert_eq!(
        control_plane_tags(&lab, "master1"),
        ["v1.35.4"; 3],
        "a joined control plane runs the cluster's version"
    );

    // kubeadm 1.36.4 on the masters (kubelets stay at 1.35.4, as the procedure has it).
    for node in ["master0", "master1"] {
        install(&lab, &mirror, node, "1.36", "kubeadm=1.36.4-1.1");
        assert_eq!(ok(&lab, node, "kubeadm version -o short"), "v1.36.4\n");
    }

    // plan: the current version and the upgrade to kubeadm's own.
    let plan = ok(&lab, "master0", "kubeadm upgrade plan");
    assert!(plan.contains("[upgrade/versions] Cluster version: v1.35.4"), "{plan}");
    assert!(plan.contains("\tkubeadm upgrade apply v1.36.4\n"), "{plan}");
    assert!(
        plan.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["kube-apiserver", "master0", "v1.35.4", "v1.36.4"]),
        "kubeadm's table: {plan}"
    );
    assert!(
        plan.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["kubelet", "worker0", "v1.35.4", "v1.36.4"]),
        "{plan}"
    );
    // Not a control-plane node (no admin.conf), and an unhealthy cluster: plan fails.
    let (code, _, err) = bash(&lab, "worker0", "kubeadm upgrade plan");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("couldn't create a Kubernetes client from file \"/etc/kubernetes/admin.conf\""), "{err}");
    ok(&lab, "master1", "systemctl stop kubelet.service");
    let (code, _, err) = bash(&lab, "master0", "kubeadm upgrade plan");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("[ERROR ControlPlaneNodesReady]: there are NotReady control-planes in the cluster: [master1]"),
        "{err}"
    );
    let (code, out, err) = bash(&lab, "master0", "kubeadm upgrade apply -y v1.36.4");
    assert_ne!(code, 0, "apply on an unhealthy cluster: {out}");
    assert!(err.contains("error execution phase preflight") && err.contains("ControlPlaneNodesReady"), "{err}");
    ok(&lab, "master1", "systemctl start kubelet.service");

    // upgrade node before apply: it upgrades to the kubeadm-config ConfigMap's version, which
    // is still the cluster's (cmd/phases/upgrade/node/controlplane.go): nothing moves.
    let out = ok(&lab, "master1", "kubeadm upgrade node");
    assert!(out.contains("to version \"v1.35.4\""), "{out}");
    assert_eq!(control_plane_tags(&lab, "master1"), ["v1.35.4"; 3]);

    // Two minors above the cluster: policy.go's MaximumAllowedMinorVersionUpgradeSkew.
    let (code, out, err) = bash(&lab, "master0", "kubeadm upgrade apply -y v1.37.0");
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("the version argument is invalid due to these fatal errors"), "{err}");
    assert!(
        err.contains("Specified version to upgrade to \"v1.37.0\" is too high; kubeadm can upgrade only 1 minor version at a time"),
        "{err}"
    );
    // A patch above kubeadm's own version: skippable, so it fails without --force.
    let (code, _, err) = bash(&lab, "master0", "kubeadm upgrade apply -y v1.36.5");
    assert_ne!(code, 0);
    assert!(err.contains("is higher than the kubeadm version \"v1.36.4\"") && err.contains("--force"), "{err}");

    // A fault at an apply phase: apply fails there, before the manifests change.
    lab.add_fault("master0", &Fault::parse("kubeadm.upgrade@control-plane fail 4").unwrap()).unwrap();
    let (code, _, err) = bash(&lab, "master0", "kubeadm upgrade apply -y v1.36.4");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("error execution phase control-plane"), "{err}");
    lab.clear_faults("master0").unwrap();
    assert_eq!(control_plane_tags(&lab, "master0"), ["v1.35.4"; 3]);

    // A control-plane kubelet newer than the target (kubelet 1.36.4 on master0, target 1.35.4).
    install(&lab, &mirror, "master0", "1.36", "kubelet=1.36.4-1.1");
    ok(&lab, "master0", "systemctl restart kubelet.service");
    let (code, out, err) = bash(&lab, "master0", "kubeadm upgrade apply -y v1.35.4");
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("[ERROR KubeletVersion]: the kubelet version is higher than the control plane version"),
        "{err}"
    );

    // apply: the manifests at v1.36.4, the cluster at v1.36.4.
    let out = ok(&lab, "master0", "kubeadm upgrade apply -y v1.36.4");
    assert!(out.contains("[upgrade/successful] SUCCESS! Your cluster was upgraded to \"v1.36.4\". Enjoy!"), "{out}");
    assert_eq!(control_plane_tags(&lab, "master0"), ["v1.36.4"; 3]);
    assert_eq!(control_plane_tags(&lab, "master1"), ["v1.35.4"; 3], "apply upgrades only its own node");
    // Again: the version the cluster already has.
    let out = ok(&lab, "master0", "kubeadm upgrade apply -y v1.36.4");
    assert!(out.contains("SUCCESS! Your cluster was upgraded to \"v1.36.4\""), "{out}");
    assert!(out.contains("Current and new manifests of kube-apiserver are equal, skipping upgrade"), "{out}");
    let plan = ok(&lab, "master0", "kubeadm upgrade plan");
    assert!(plan.contains("Cluster version: v1.36.4") && plan.contains("up-to-date"), "{plan}");

    // upgrade node after apply: the second master, then the worker (kubelet configuration only).
    let out = ok(&lab, "master1", "kubeadm upgrade node");
    assert!(out.contains("successfully upgraded"), "{out}");
    assert_eq!(control_plane_tags(&lab, "master1"), ["v1.36.4"; 3]);
    install(&lab, &mirror, "worker0", "1.36", "kubeadm=1.36.4-1.1");
    ok(&lab, "worker0", "rm /var/lib/kubelet/config.yaml");
    let out = ok(&lab, "worker0", "kubeadm upgrade node");
    assert!(out.contains("Skipping phase. Not a control plane node."), "{out}");
    assert!(
        lab.node_file("worker0", "/var/lib/kubelet/config.yaml").unwrap().exists(),
        "the kubelet configuration is rewritten"
    );
    assert!(!lab.node_file("worker0", "/etc/kubernetes/manifests/kube-apiserver.yaml").unwrap().exists());

    // Every call recorded, with its exit code.
    let calls = lab.calls("master0").unwrap();
    let applies: Vec<_> =
        calls.iter().filter(|c| c.name == "kubeadm" && c.args.first().is_some_and(|a| a == "upgrade")).collect();
    assert!(
        applies.iter().any(|c| c.command_line() == "kubeadm upgrade apply -y v1.36.4" && c.exit == Some(0)),
        "{applies:?}"
    );
    assert!(
        applies.iter().any(|c| c.command_line() == "kubeadm upgrade apply -y v1.36.4" && c.exit == Some(4)),
        "{applies:?}"
    );
    lab.down().unwrap();
}
