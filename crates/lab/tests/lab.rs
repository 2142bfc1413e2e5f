//! The lab against the real system: namespaces, overlay roots, a real sshd reached by the real
//! ssh client, and the stand-ins' call records. Needs root (CI runs as root) and the Debian
//! packages iproute2, openssh-server, openssh-client, sudo and shellcheck.
//!
//! Labs here use prefix `hk9`, bridge `hkbr9` and 10.251.0.0/16, so they never collide with
//! `cargo xtask lab` or another test binary's lab; one lab at a time within this binary.

use std::fs;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hakube_lab::{Call, Lab, LabConfig, LabNode, STANDINS, SUDO_USER};

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A lab with a throwaway login key. Fields drop in order: the lab, then its state directory,
/// then the lock.
struct Fixture {
    lab: Lab,
    dir: tempfile::TempDir,
    _lock: MutexGuard<'static, ()>,
}

fn config(dir: &Path, masters: usize, workers: usize) -> LabConfig {
    let mut config = LabConfig::new(masters, workers, dir.join("state"));
    config.prefix = "hk9".into();
    config.bridge = "hkbr9".into();
    config.subnet_base = [10, 251];
    config
}

fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the lab tests need root (network namespaces, mounts); CI runs them as root"
    );
}

fn fixture(masters: usize, workers: usize, adjust: impl FnOnce(&mut LabConfig)) -> Fixture {
    require_root();
    let lock = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "lab-test", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    let mut config = config(dir.path(), masters, workers);
    config.authorized_key = Some(fs::read_to_string(key.with_extension("pub")).unwrap());
    adjust(&mut config);
    let lab = Lab::up(config).unwrap();
    fs::write(dir.path().join("known_hosts"), lab.known_hosts().unwrap()).unwrap();
    Fixture { lab, dir, _lock: lock }
}

impl Fixture {
    fn node(&self, name: &str) -> &LabNode {
        self.lab.node(name).unwrap()
    }

    /// `ssh USER@NODE COMMAND` with the throwaway key, strict host key checking against
    /// `known_hosts` (in the fixture's directory), no user configuration.
    fn ssh_with(&self, user: &str, node: &str, known_hosts: &str, command: &str) -> Output {
        let known_hosts = self.dir.path().join(known_hosts);
        Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(self.dir.path().join("id_ed25519"))
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
            .arg(format!("{user}@{}", self.node(node).address))
            .arg(command)
            .output()
            .unwrap()
    }

    /// Runs `command` on `node` as root over ssh and returns its standard output; fails the
    /// test if it fails.
    fn ssh(&self, node: &str, command: &str) -> String {
        let out = self.ssh_with("root", node, "known_hosts", command);
        assert!(
            out.status.success(),
            "ssh {node} {command:?}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a bash script on `node` without ssh; (exit code, stdout, stderr).
    fn bash(&self, node: &str, script: &str) -> (i32, String, String) {
        let out = self.lab.command(node, "bash").unwrap().arg("-c").arg(script).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn calls(&self, node: &str) -> Vec<Call> {
        self.lab.calls(node).unwrap()
    }
}

/// The content of `path` as the node's mount namespace sees it outside the node's root: where
/// its upper layer is, on disk or on the tmpfs the lab falls back to.
fn upper_layer_file(node: &LabNode, path: &Path) -> String {
    let out = Command::new("nsenter")
        .arg("--target")
        .arg(node.holder_pid.to_string())
        .args(["--mount", "cat"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "cat {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| !r.starts_with('Z')))
}

fn connect(node: &LabNode) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&SocketAddr::from((node.address, 22)), Duration::from_secs(5))
}

#[test]
fn ssh_reaches_every_node_and_stand_ins_record_their_calls() {
    let f = fixture(1, 1, |_| {});
    for node in f.lab.nodes() {
        let out = f.ssh(
            &node.name,
            "kubeadm version -o short && hostname && ip -4 -o addr show eth0 && sha256sum /etc/hostname",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "v1.36.4", "the kubeadm stand-in answers: {out}");
        assert_eq!(lines[1], node.name, "the node has its own hostname");
        assert!(lines[2].contains(&format!("inet {}/16", node.address)), "{out}");
        assert!(lines[3].ends_with("  /etc/hostname"), "the real sha256sum runs: {out}");

        // Only the stand-in is recorded; the real tools (hostname, ip, sha256sum) are not.
        let calls = f.calls(&node.name);
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].command_line(), "kubeadm version -o short");
        assert_eq!(calls[0].exit, Some(0));
        assert!(calls[0].end.unwrap() >= calls[0].start);
    }
    // The definition points at the nodes.
    let definition = f.lab.definition();
    assert_eq!(definition["masters"][0]["privateIP"], "10.251.0.11");
    assert_eq!(definition["workers"][0]["privateIP"], "10.251.1.11");
    assert_eq!(definition["masterLoadBalancerAddress"], "10.251.0.10");
    assert_eq!(definition["nodeNetworkCIDR"], "10.251.0.0/16");
    assert_eq!(definition["sshLoginUser"], "root");
}

#[test]
fn a_nodes_writes_stay_in_that_node() {
    let f = fixture(2, 0, |_| {});
    let marker = format!("hakube-lab-isolation-{}", std::process::id());
    f.ssh(
        "master0",
        &format!("echo written-on-master0 > /etc/{marker} && mkdir -p /etc/kubernetes && : > /etc/kubernetes/{marker}"),
    );

    assert!(!Path::new("/etc").join(&marker).exists(), "the test machine's /etc is untouched");
    assert!(!Path::new("/etc/kubernetes").join(&marker).exists());
    assert_eq!(
        fs::read_to_string(f.lab.node_file("master0", format!("/etc/{marker}")).unwrap()).unwrap(),
        "written-on-master0\n"
    );
    let upper = f.node("master0").dir.join("layers/upper/etc").join(&marker);
    assert_eq!(
        upper_layer_file(f.node("master0"), &upper),
        "written-on-master0\n",
        "the write landed in master0's upper layer"
    );
    assert!(
        !f.lab.node_file("master1", format!("/etc/{marker}")).unwrap().exists(),
        "master1 does not see master0's file"
    );
    assert_eq!(f.ssh("master1", &format!("test -e /etc/{marker} && echo seen || echo absent")), "absent\n");

    // Kernel settings and routes: the node cannot change the host's, nor leave the lab.
    let out = f.ssh_with("root", "master0", "known_hosts", "echo 1 > /proc/sys/net/ipv4/ip_forward");
    assert!(!out.status.success(), "/proc/sys is read-only on a node");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let routes = f.ssh("master0", "ip route");
    assert!(!routes.contains("default"), "no default route: {routes}");
    assert_eq!(f.ssh("master0", "ip -o route get 10.251.0.12 >/dev/null && echo reachable"), "reachable\n");
    assert_eq!(f.ssh("master0", "cat /etc/hostname; hostname"), "master0\nmaster0\n");
}

#[test]
fn sshd_is_stopped_and_started_by_pid() {
    let f = fixture(1, 0, |_| {});
    let node = f.node("master0");
    let pid = f.lab.sshd_pid("master0").unwrap().expect("sshd runs after up");
    assert!(alive(pid));

    f.lab.stop_sshd("master0").unwrap();
    assert!(!alive(pid), "sshd {pid} ended");
    assert_eq!(f.lab.sshd_pid("master0").unwrap(), None);
    assert_eq!(connect(node).map(|_| ()).unwrap_err().kind(), ErrorKind::ConnectionRefused);
    let out = f.ssh_with("root", "master0", "known_hosts", "true");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Connection refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let new_pid = f.lab.start_sshd("master0").unwrap();
    assert_ne!(new_pid, pid);
    assert!(alive(new_pid));
    assert!(connect(node).is_ok());
    assert_eq!(f.ssh("master0", "echo back"), "back\n");
}

#[test]
fn a_replaced_host_key_fails_strict_checking() {
    let f = fixture(1, 0, |_| {});
    let old = f.lab.host_public_key("master0").unwrap();
    let new = f.lab.replace_host_key("master0").unwrap();
    assert_ne!(old, new);
    assert!(new.starts_with("ssh-ed25519 "), "{new}");

    let out = f.ssh_with("root", "master0", "known_hosts", "true");
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") || stderr.contains("Host key verification failed"),
        "{stderr}"
    );

    fs::write(f.dir.path().join("known_hosts.new"), f.lab.known_hosts().unwrap()).unwrap();
    let out = f.ssh_with("root", "master0", "known_hosts.new", "echo ok");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every process of the lab: holders, sshds, and `extra`.
fn lab_pids(lab: &Lab, extra: &[u32]) -> Vec<u32> {
    let mut pids: Vec<u32> = lab.nodes().iter().map(|n| n.holder_pid).collect();
    pids.extend(lab.nodes().iter().filter_map(|n| lab.sshd_pid(&n.name).unwrap()));
    pids.extend_from_slice(extra);
    pids
}

/// Asserts that nothing of a lab is left: no namespace, link, process or mount.
fn assert_nothing_left(pids: &[u32], state_dir: &Path) {
    let namespaces = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    assert!(!namespaces.contains("hk9-"), "namespaces left: {namespaces}");
    let links = String::from_utf8(Command::new("ip").args(["-o", "link", "show"]).output().unwrap().stdout).unwrap();
    assert!(!links.contains("hkbr9") && !links.contains("hk9v"), "links left: {links}");
    for pid in pids {
        assert!(!alive(*pid), "process {pid} is still alive");
    }
    // The node mounts lived in private mount namespaces: look at every process's view.
    let state = state_dir.to_string_lossy().into_owned();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(mounts) = fs::read_to_string(entry.path().join("mountinfo")) {
            assert!(!mounts.contains(&state), "process {:?} still has mounts under {state}", entry.file_name());
        }
    }
}

#[test]
fn down_and_drop_leave_no_namespace_link_process_or_mount() {
    let f = fixture(1, 1, |_| {});
    // A process a script left running on a node is stopped too.
    // ($! on the node is a host PID: nodes share the host's PID namespace.)
    let stray: u32 = f.ssh("worker0", "sleep 600 >/dev/null 2>&1 </dev/null & echo $!").trim().parse().unwrap();
    assert!(alive(stray));
    let pids = lab_pids(&f.lab, &[stray]);
    let state_dir = f.lab.config().state_dir.clone();
    let Fixture { lab, dir, _lock } = f;
    lab.down().unwrap();
    assert_nothing_left(&pids, &state_dir);
    assert!(!state_dir.join("lab.json").exists());

    // Down again (another process's `cargo xtask lab down`) finds nothing and is fine.
    assert!(Lab::attach(&state_dir).unwrap().is_none());
    hakube_lab::clean(&config(dir.path(), 0, 0)).unwrap();

    // Drop does the same.
    let lab = Lab::up(config(dir.path(), 1, 0)).unwrap();
    let pids = lab_pids(&lab, &[]);
    drop(lab);
    assert_nothing_left(&pids, &state_dir);
}

#[test]
fn up_cleans_up_after_a_crashed_run() {
    let f = fixture(2, 0, |_| {});
    let Fixture { lab, dir, _lock } = f;
    let old = lab_pids(&lab, &[]);
    // As if the process had died: nothing torn down.
    lab.detach();
    assert!(old.iter().all(|&pid| alive(pid)));

    // Another process finds it through lab.json...
    let state_dir = dir.path().join("state");
    let found = Lab::attach(&state_dir).unwrap().expect("lab.json describes the running lab");
    assert_eq!(found.nodes().len(), 2);
    assert_eq!(lab_pids(&found, &[]), old);
    found.detach();

    // ...and a new lab with the same names replaces it.
    let lab = Lab::up(config(dir.path(), 1, 0)).unwrap();
    for pid in &old {
        assert!(!alive(*pid) || lab_pids(&lab, &[]).contains(pid), "old process {pid} survived");
    }
    assert_eq!(fs::read_to_string(lab.node_file("master0", "/etc/hostname").unwrap()).unwrap(), "master0\n");
    let namespaces = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    assert!(!namespaces.contains("hk9-master1"), "the earlier run's master1 is gone: {namespaces}");
    let pids = lab_pids(&lab, &[]);
    drop(lab);
    assert_nothing_left(&pids, &state_dir);
}

/// Unmounts a mount point when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn layers_go_to_a_tmpfs_when_the_state_directory_is_on_overlayfs() {
    // As in a container whose root file system is overlayfs: an upper layer there is refused.
    require_root();
    let _lock = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (lower, upper, work, merged) = ("lower", "upper", "work", "merged");
    for d in [lower, upper, work, merged] {
        fs::create_dir(dir.path().join(d)).unwrap();
    }
    let p = |d: &str| dir.path().join(d).display().to_string();
    let status = Command::new("mount")
        .args(["-t", "overlay", "hakube-lab-test", "-o"])
        .arg(format!("lowerdir={},upperdir={},workdir={}", p(lower), p(upper), p(work)))
        .arg(p(merged))
        .status()
        .unwrap();
    assert!(status.success());
    let _unmount = Unmount(dir.path().join(merged));

    let lab = Lab::up(config(&dir.path().join(merged), 1, 0)).unwrap();
    let node = lab.node("master0").unwrap();
    let refused = fs::read_to_string(node.dir.join("overlay-error.log")).unwrap();
    assert!(!refused.is_empty(), "the first overlay attempt (upper layer on overlayfs) fails");
    let out = lab
        .command("master0", "bash")
        .unwrap()
        .args(["-c", "echo x > /etc/hakube-lab-tmpfs-layer && hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "master0\n", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!Path::new("/etc/hakube-lab-tmpfs-layer").exists());
    assert_eq!(upper_layer_file(node, &node.dir.join("layers/upper/etc/hakube-lab-tmpfs-layer")), "x\n");
    assert!(
        !node.dir.join("layers/upper/etc/hakube-lab-tmpfs-layer").exists(),
        "the layer is on the node's tmpfs, not on disk"
    );
    let pids = lab_pids(&lab, &[]);
    let state_dir = lab.config().state_dir.clone();
    drop(lab);
    assert_nothing_left(&pids, &state_dir);
}

#[test]
fn a_sudo_user_logs_in_and_runs_stand_ins_as_root() {
    let f = fixture(1, 0, |c| {
        c.sudo_user = true;
        c.login_user = SUDO_USER.into();
    });
    assert_eq!(f.lab.definition()["sshLoginUser"], SUDO_USER);
    let out =
        f.ssh_with(SUDO_USER, "master0", "known_hosts", "id -un; echo $PATH; sudo -n id -u; sudo -n kubelet --version");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], SUDO_USER);
    assert!(lines[1].starts_with("/usr/local/sbin:"), "stand-ins first in PATH: {}", lines[1]);
    assert_eq!(lines[2], "0");
    assert_eq!(lines[3], "Kubernetes v1.36.4");
    assert_eq!(f.calls("master0").iter().map(Call::command_line).collect::<Vec<_>>(), ["kubelet --version"]);
}

#[test]
fn secrets_in_files_never_reach_the_call_log_and_arguments_always_do() {
    let f = fixture(1, 1, |_| {});
    let secret = "0123456789abcdef";
    f.ssh(
        "master0",
        &format!(
            "install -d -m 0700 /etc/hakube/secrets && printf 'bootstrapTokens:\\n- token: \"abcdef.{secret}\"\\n  ttl: 1h\\nnodeRegistration:\\n  name: master0\\n' > /etc/hakube/secrets/kubeadm.yaml && \
             kubeadm init --config /etc/hakube/secrets/kubeadm.yaml --skip-token-print >/dev/null && \
             kubeadm token list && \
             printf 'apiVersion: v1\\nkind: Secret\\ntype: bootstrap.kubernetes.io/token\\nmetadata:\\n  name: bootstrap-token-ghijkl\\n  namespace: kube-system\\nstringData:\\n  token-id: ghijkl\\n  token-secret: {secret}\\n  expiration: 2099-01-01T00:00:00Z\\n' | kubectl --kubeconfig /etc/kubernetes/admin.conf apply -f -"
        ),
    );
    let tokens = fs::read_to_string(f.lab.config().state_dir.join("cluster/tokens")).unwrap();
    assert!(tokens.contains("abcdef ") && tokens.contains("ghijkl "), "token ids are kept: {tokens}");
    let master_log = fs::read_to_string(f.lab.node_file("master0", "/var/log/hakube-lab/calls.log").unwrap()).unwrap();
    assert!(!master_log.contains(secret), "{master_log}");
    assert!(!tokens.contains(secret));
    let names: Vec<String> = f.calls("master0").iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, ["kubeadm", "kubeadm", "kubectl"]);

    // The worker joins with the token from a file; passing it as an argument shows in the log.
    f.ssh(
        "worker0",
        &format!(
            "install -d -m 0700 /etc/hakube/secrets && printf 'discovery:\\n  bootstrapToken:\\n    token: abcdef.{secret}\\nnodeRegistration:\\n  name: worker0\\n' > /etc/hakube/secrets/kubeadm.yaml && \
             kubeadm join --config /etc/hakube/secrets/kubeadm.yaml >/dev/null && kubeadm token create abcdef.{secret} --ttl 2h >/dev/null"
        ),
    );
    let calls = f.calls("worker0");
    assert_eq!(calls[0].args, ["join", "--config", "/etc/hakube/secrets/kubeadm.yaml"]);
    assert_eq!(calls[0].exit, Some(0));
    assert!(calls[1].args.contains(&format!("abcdef.{secret}")), "an argument is recorded as given: {:?}", calls[1]);
}

#[test]
fn stand_ins_follow_the_order_a_real_node_needs() {
    let f = fixture(2, 1, |_| {});
    let run = |node: &str, script: &str| f.bash(node, script);

    // Packages: kubeadm exists only in the Kubernetes repository, at the versions it offers.
    let (code, _, err) = run("master0", "apt-get -q -y install kubeadm");
    assert_eq!(code, 100, "{err}");
    assert!(err.contains("Unable to locate package kubeadm"), "{err}");
    let (code, out, err) = run(
        "master0",
        "printf 'deb [signed-by=/etc/apt/keyrings/k.gpg] https://pkgs.k8s.io/core:/stable:/v1.35/deb/ /\\n' > /etc/apt/sources.list.d/k.list && \
         apt-cache madison kubeadm | awk 'index($3, \"1.35.2-\") == 1 { print $3; exit }' && \
         apt-get -y install kubeadm=1.35.2-1.1 kubelet=1.35.2-1.1 && apt-mark hold kubeadm >/dev/null && \
         dpkg-query -W -f='${Version}' kubeadm && echo && kubeadm version -o short && \
         { apt-get -y install kubeadm=1.35.3-1.1; echo held=$?; }",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1.35.2-1.1\n1.35.2-1.1\nv1.35.2\nheld=100\n");

    // Units: a masked unit stays down when its package arrives; containerd starts.
    let (code, out, err) = run(
        "master0",
        "systemctl mask --now etcd.service && apt-get -y install etcd-server containerd && \
         { systemctl is-active etcd; systemctl is-active containerd; systemctl enable hakube-nothing; echo enable=$?; }",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "inactive\nactive\nenable=5\n");

    // curl downloads nothing; gpg --dearmor copies; sysctl keeps its values.
    let (code, out, err) = run(
        "master0",
        "curl -fsSLo /tmp/key https://pkgs.k8s.io/core:/stable:/v1.35/deb/Release.key && head -1 /tmp/key && \
         curl -fsSL https://example.com/x | gpg --dearmor -o /tmp/x && cat /tmp/x && \
         { curl -fsS http://169.254.169.254/latest/api/token; echo imds=$?; } && \
         sysctl -w net.bridge.bridge-nf-call-iptables=1 >/dev/null && sysctl -n net.bridge.bridge-nf-call-iptables && \
         containerd config default | grep -c 'SystemdCgroup = false'",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n# hakube-lab: dummy content for https://example.com/x (the lab downloads nothing)\nimds=7\n1\n1\n"
    );

    // kubeadm: no join before init; init writes the control plane and takes its time.
    let config = "printf 'nodeRegistration:\\n  name: %s\\n%b' \"$(hostname)\" \"$EXTRA\" > /tmp/kubeadm.yaml";
    let (code, _, err) = run("worker0", &format!("{config} && kubeadm join --config /tmp/kubeadm.yaml"));
    assert_eq!(code, 1, "join before init fails: {err}");
    let (code, out, err) = run(
        "master0",
        &format!("{config} && kubeadm init --config /tmp/kubeadm.yaml >/dev/null && ls /etc/kubernetes && ls /etc/kubernetes/manifests && kubectl --kubeconfig /etc/kubernetes/admin.conf get --raw /readyz"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "admin.conf\ncontroller-manager.conf\nkubelet.conf\nmanifests\npki\nscheduler.conf\nsuper-admin.conf\netcd.yaml\nkube-apiserver.yaml\nkube-controller-manager.yaml\nkube-scheduler.yaml\nok\n"
    );
    let init = f.calls("master0").into_iter().find(|c| c.name == "kubeadm" && c.args[0] == "init").unwrap();
    assert!(init.end.unwrap() - init.start >= Duration::from_millis(300), "init takes ~0.3 s: {init:?}");

    // A second control-plane join while one holds etcd's learner slot fails (stacked etcd).
    // (The lock file is shared with every node through the bind-mounted cluster directory.)
    let lock = fs::File::create(f.lab.config().state_dir.join("cluster/etcd-learner.lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let (code, _, err) = run(
        "master1",
        &format!("EXTRA='controlPlane: {{}}\\n' && {config} && kubeadm join --config /tmp/kubeadm.yaml"),
    );
    drop(lock);
    assert_eq!(code, 1);
    assert!(err.contains("too many learner members"), "{err}");
    let (code, out, err) = run(
        "master1",
        &format!("EXTRA='controlPlane: {{}}\\n' && {config} && kubeadm join --config /tmp/kubeadm.yaml >/dev/null && ls /etc/kubernetes/manifests | wc -l"),
    );
    assert_eq!((code, out.as_str()), (0, "4\n"), "{err}");

    // The worker joins; the nodes are registered; joining again needs a reset first.
    let (code, _, err) = run("worker0", &format!("{config} && kubeadm join --config /tmp/kubeadm.yaml"));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run("master0", "kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes -o name");
    assert_eq!(out, "node/master0\nnode/master1\nnode/worker0\n");
    let (code, _, err) = run("worker0", "kubeadm join --config /tmp/kubeadm.yaml");
    assert_eq!(code, 1);
    assert!(err.contains("FileAvailable--etc-kubernetes-kubelet.conf"), "{err}");
    let (code, out, err) =
        run("worker0", "kubeadm reset -f >/dev/null && ls /etc/kubernetes && systemctl is-active kubelet");
    assert_eq!((code, out.as_str()), (3, "manifests\npki\ninactive\n"), "{err}");
}

#[test]
fn stand_ins_pass_shellcheck() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = fs::read_dir(root.join("standins")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.push(root.join("src/holder.sh"));
    let out = Command::new("shellcheck")
        .args(["-x", "-s", "bash"])
        .args(&files)
        .current_dir(root.join("standins"))
        .output()
        .expect("shellcheck runs (Debian package shellcheck)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn every_stand_in_is_embedded_and_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let mut on_disk: Vec<String> = fs::read_dir(root.join("standins"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "standin-lib.sh" && n != "cilium")
        .collect();
    on_disk.sort();
    let embedded: Vec<String> = STANDINS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(embedded, on_disk, "STANDINS lists every file in standins/, sorted");
    for name in embedded.iter().chain(std::iter::once(&"cilium".to_string())) {
        assert!(readme.contains(&format!("`{name}`")), "README.md documents the {name} stand-in");
    }
    for (name, script) in STANDINS {
        assert!(script.contains("lab_start \"$@\""), "{name} records its calls");
        assert!(script.contains("exists only in the lab's node image"), "{name} says it is lab-only");
    }
}
