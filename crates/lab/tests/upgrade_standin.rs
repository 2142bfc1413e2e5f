//! The kubeadm stand-in's `upgrade plan|apply|node` on a real lab: 2 masters and a worker
//! installed by hand with real apt from the mirror's v1.35 repository, `kubeadm init`/`join` by
//! the stand-in, then kubeadm 1.36.4 from the v1.36 repository and the upgrade, failing where
//! kubeadm fails. Needs root; the first run builds the Debian 12 image.
//!
//! The lab here uses prefix `hk7`, bridge `hkbr3` and 10.247.0.0/16, so it never collides with
//! another test binary's lab.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

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

/// What hakube's upgrade steps ask of every Node: name, kubelet version, Ready, unschedulable.
const NODES_JSONPATH: &str = r#"jsonpath={range .items[*]}{.metadata.name}{" "}{.status.nodeInfo.kubeletVersion}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.spec.unschedulable}{"\n"}{end}"#;

/// `kubectl get nodes` with [`NODES_JSONPATH`] on `node`, as the boot scripts run it.
fn node_rows(lab: &Lab, node: &str) -> String {
    ok(lab, node, &format!("kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o '{NODES_JSONPATH}'"))
}

/// The row of `name` in [`node_rows`].
fn node_row(lab: &Lab, node: &str, name: &str) -> String {
    let rows = node_rows(lab, node);
    rows.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("{name}: {rows}")).to_string()
}

const KUBECTL: &str = "kubectl --kubeconfig /etc/kubernetes/admin.conf";
const ETCD_TLS: &str = "--cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/server.crt --key=/etc/kubernetes/pki/etcd/server.key";

/// The last `kubectl` call on `node` whose command line contains `needle`: how long it ran.
fn last_call_took(lab: &Lab, node: &str, needle: &str) -> Duration {
    let calls = lab.calls(node).unwrap();
    let call = calls
        .iter()
        .rev()
        .find(|c| c.name == "kubectl" && c.command_line().contains(needle))
        .unwrap_or_else(|| panic!("no kubectl call with {needle:?}: {calls:?}"));
    call.end.expect("the call ended") - call.start
}

/// cordon, uncordon, drain and its PodDisruptionBudget fault, run on master0 against `target`.
fn cordon_and_drain(lab: &Lab, target: &str) {
    // cordon: the unschedulable column says true; a second cordon changes nothing.
    assert_eq!(ok(lab, "master0", &format!("{KUBECTL} cordon {target}")), format!("node/{target} cordoned\n"));
    assert_eq!(node_row(lab, "master0", target), format!("{target} v1.35.4 True true"));
    assert_eq!(ok(lab, "master0", &format!("{KUBECTL} cordon {target}")), format!("node/{target} already cordoned\n"));
    let table = ok(lab, "master0", &format!("{KUBECTL} get nodes"));
    assert!(table.contains(&format!("{target}\tReady,SchedulingDisabled\t")), "{table}");
    assert_eq!(ok(lab, "master0", &format!("{KUBECTL} uncordon {target}")), format!("node/{target} uncordoned\n"));
    assert_eq!(node_row(lab, "master0", target), format!("{target} v1.35.4 True "));
    assert_eq!(
        ok(lab, "master0", &format!("{KUBECTL} uncordon {target}")),
        format!("node/{target} already uncordoned\n")
    );
    for verb in ["cordon", "uncordon", "drain"] {
        let (code, out, err) = bash(lab, "master0", &format!("{KUBECTL} {verb} nosuchnode"));
        assert_eq!((code, out.as_str()), (1, ""), "{verb}: {err}");
        assert_eq!(err, "Error from server (NotFound): nodes \"nosuchnode\" not found\n", "{verb}");
    }

    // drain without --ignore-daemonsets: kube-proxy's pod (kubeadm's addon) stops it.
    let (code, _, err) = bash(lab, "master0", &format!("{KUBECTL} drain {target} --timeout=60s"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): kube-system/kube-proxy-"
        ),
        "{err}"
    );
    ok(lab, "master0", &format!("{KUBECTL} uncordon {target}"));

    // drain: cordoned, then drained, at once (the flags in any order).
    let started = Instant::now();
    let out = ok(
        lab,
        "master0",
        &format!("{KUBECTL} drain --delete-emptydir-data {target} --grace-period=30 --ignore-daemonsets --force --timeout=5m"),
    );
    assert_eq!(out, format!("node/{target} cordoned\nnode/{target} drained\n"));
    assert!(started.elapsed() < Duration::from_secs(10), "drain took {:?}", started.elapsed());
    assert_eq!(
        node_row(lab, "master0", target),
        format!("{target} v1.35.4 True true"),
        "a drained node stays cordoned"
    );
    assert_eq!(
        ok(
            lab,
            "master0",
            &format!("{KUBECTL} drain {target} --ignore-daemonsets --delete-emptydir-data --timeout=60s")
        ),
        format!("node/{target} already cordoned\nnode/{target} drained\n")
    );
    ok(lab, "master0", &format!("{KUBECTL} uncordon {target}"));

    // A PodDisruptionBudget refuses the eviction (the fault, scoped to target): kubectl's
    // retries until the timeout, exit 1, the node stays cordoned; the stand-in does not wait
    // the 2 minutes.
    lab.add_fault("master0", &Fault::drain_refused(Some(target))).unwrap();
    let started = Instant::now();
    let (code, out, err) = bash(
        lab,
        "master0",
        &format!("{KUBECTL} drain {target} --ignore-daemonsets --delete-emptydir-data --timeout=2m"),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "the refused drain took {:?}", started.elapsed());
    assert!(
        last_call_took(lab, "master0", &format!("drain {target}")) < Duration::from_secs(10),
        "the call record shows the drain waiting"
    );
    assert!(out.starts_with(&format!("node/{target} cordoned\nevicting pod default/web-0\n")), "{out}");
    assert!(!out.contains("drained"), "{out}");
    assert!(
        err.contains("error when evicting pods/\"web-0\" -n \"default\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget.\n"),
        "{err}"
    );
    let reached = "error when evicting pods/\"web-0\" -n \"default\": global timeout reached: 2m0s";
    assert!(
        err.contains(&format!(
            "There are pending pods in node \"{target}\" when an error occurred: {reached}\npod/web-0\n"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "error: unable to drain node \"{target}\" due to error:{reached}, continuing command...\n"
        )),
        "{err}"
    );
    assert!(err.ends_with(&format!("error: {reached}\n")), "{err}");
    assert_eq!(
        node_row(lab, "master0", target),
        format!("{target} v1.35.4 True true"),
        "the refused node stays cordoned"
    );
    // The fault names target: another node drains.
    let out = ok(lab, "master0", &format!("{KUBECTL} drain master1 --ignore-daemonsets --timeout=60s"));
    assert!(out.ends_with("node/master1 drained\n"), "{out}");
    lab.clear_faults("master0").unwrap();
    for node in [target, "master1"] {
        ok(lab, "master0", &format!("{KUBECTL} uncordon {node}"));
    }
}

/// etcdctl through the stacked etcd pods: endpoint health of both members, the unhealthy
/// fault, snapshot save onto the node's /var/lib/etcd.
fn etcd_through_kubectl(lab: &Lab) {
    let addr = |n: &str| lab.node(n).unwrap().address.to_string();
    let (m0, m1) = (addr("master0"), addr("master1"));
    let health = |node: &str, ns: &str, tls_first: bool| {
        let etcdctl = if tls_first {
            format!("--endpoints=https://127.0.0.1:2379 {ETCD_TLS} endpoint health --cluster")
        } else {
            format!("endpoint health --cluster --endpoints=https://127.0.0.1:2379 {ETCD_TLS}")
        };
        bash(lab, node, &format!("{KUBECTL} {ns} exec etcd-{node} -- etcdctl {etcdctl}"))
    };
    let healthy = |a: &str| format!("https://{a}:2379 is healthy: successfully committed proposal: took = 2.1ms\n");
    for (node, ns, tls_first) in [
        ("master0", "-n kube-system", true),
        ("master1", "-n=kube-system", false),
        ("master0", "--namespace kube-system", false),
    ] {
        let (code, out, err) = health(node, ns, tls_first);
        assert_eq!(code, 0, "{node} {ns}: {err}");
        assert_eq!(out, format!("{}{}", healthy(&m0), healthy(&m1)), "{node} {ns}: each master's member");
    }
    // No etcd pod on a worker, none outside kube-system.
    let (code, _, err) = bash(
        lab,
        "master0",
        &format!("{KUBECTL} -n kube-system exec etcd-worker0 -- etcdctl {ETCD_TLS} endpoint health --cluster"),
    );
    assert_eq!(code, 1);
    assert_eq!(err, "Error from server (NotFound): pods \"etcd-worker0\" not found\n");
    let (code, _, err) =
        bash(lab, "master0", &format!("{KUBECTL} exec etcd-master0 -- etcdctl {ETCD_TLS} endpoint health --cluster"));
    assert_eq!(code, 1, "the default namespace has no etcd pod: {err}");

    // master1's member does not answer.
    lab.add_fault("master0", &Fault::etcd_member_unhealthy(Some("master1"))).unwrap();
    let (code, out, err) = health("master0", "-n kube-system", true);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out, healthy(&m0));
    assert!(
        err.contains(&format!("https://{m1}:2379 is unhealthy: failed to commit proposal: context deadline exceeded\nError: unhealthy cluster\n")),
        "{err}"
    );
    lab.clear_faults("master0").unwrap();
    assert_eq!(health("master0", "-n kube-system", true).0, 0, "healthy again once the fault is gone");

    // snapshot save: on the host's /var/lib/etcd (kubeadm's etcd-data hostPath).
    let out = ok(lab, "master0", &format!("{KUBECTL} -n kube-system exec etcd-master0 -- etcdctl {ETCD_TLS} --endpoints=https://127.0.0.1:2379 snapshot save /var/lib/etcd/pre-upgrade.db"));
    assert_eq!(out, "Snapshot saved at /var/lib/etcd/pre-upgrade.db\n");
    let snapshot = lab.node_file("master0", "/var/lib/etcd/pre-upgrade.db").unwrap();
    assert!(fs::metadata(&snapshot).map(|m| m.len() > 0).unwrap_or(false), "{snapshot:?}: a non-empty file");
    assert!(!lab.node_file("master0", "/var/lib/etcd/pre-upgrade.db.part").unwrap().exists());
    let (code, _, err) = bash(
        lab,
        "master0",
        &format!("{KUBECTL} -n kube-system exec etcd-master0 -- etcdctl {ETCD_TLS} snapshot save /root/etcd.db"),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("Error: could not open /root/etcd.db.part (open /root/etcd.db.part: no such file or directory)"),
        "{err}"
    );
    assert!(!lab.node_file("master0", "/root/etcd.db").unwrap().exists());
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

    // Every Node: its kubelet's version, Ready, schedulable (the column empty).
    assert_eq!(
        node_rows(&lab, "master0"),
        "master0 v1.35.4 True \nmaster1 v1.35.4 True \nworker0 v1.35.4 True \n",
        "the jsonpath listing"
    );
    let (code, _, err) =
        bash(&lab, "master0", &format!("{KUBECTL} get nodes -o=jsonpath='{{.items[*].metadata.name}}'"));
    assert_eq!(code, 0);
    assert!(err.contains("no behaviour for"), "another jsonpath is unhandled: {err}");
    assert_eq!(
        ok(&lab, "master0", &format!("{KUBECTL} get nodes -o='{NODES_JSONPATH}'")),
        node_rows(&lab, "master0"),
        "-o=jsonpath=..."
    );
    cordon_and_drain(&lab, "worker0");
    etcd_through_kubectl(&lab);

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
    assert_eq!(node_row(&lab, "master0", "master1"), "master1 v1.35.4 False ", "a stopped kubelet's Node");
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
    // The Node reports the upgraded kubelet, Ready, once the restarted kubelet runs (systemctl
    // restart returns when the service has started, before the kubelet reports: a script
    // waits for Ready, as on a real node); the others stay at 1.35.4.
    let started = Instant::now();
    let mut rows = node_rows(&lab, "master0");
    while !rows.starts_with("master0 v1.36.4 True \n") && started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
        rows = node_rows(&lab, "master0");
    }
    assert_eq!(
        rows, "master0 v1.36.4 True \nmaster1 v1.35.4 True \nworker0 v1.35.4 True \n",
        "after the kubelet upgrade"
    );
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
