//! The lab against the real system: Debian containers booted by systemd-nspawn, reached by
//! the real ssh client, installing from the lab's mirror with real apt, and the stand-ins'
//! call records. Needs root (CI runs as root) and the Debian packages `cargo xtask ci`
//! installs (systemd-container, debootstrap, …); the first run builds the Debian 12 image.
//!
//! Labs here use prefix `hk9`, bridge `hkbr9` and 10.251.0.0/16, so they never collide with
//! `cargo xtask lab` or another test binary's lab; one lab at a time within this binary.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hakube_lab::{Call, Fault, Lab, LabConfig, LabNode, PACKAGED_STANDINS, SUDO_USER};

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
        "the lab tests need root (network namespaces, mounts, containers); CI runs them as root"
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
    fn node(&self, name: &str) -> LabNode {
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

    /// What hakube's packages step does on Debian (templates/steps/packages.sh.j2), by hand:
    /// gpg from the Debian mirror, the Kubernetes repository's key and source, the three
    /// packages at `version`, held.
    fn install_kubernetes_packages(&self, node: &str, version: &str) {
        let repo = self.lab.definition()["packageRepository"]["url"].as_str().unwrap().to_string();
        let script = format!(
            "set -euo pipefail; export DEBIAN_FRONTEND=noninteractive
             apt-get -q update >/dev/null && apt-get -q -y install gpg >/dev/null
             install -d -m 0755 /etc/apt/keyrings
             curl -fsSL '{repo}/deb/Release.key' | gpg --dearmor --batch --yes -o /etc/apt/keyrings/k.gpg
             echo 'deb [signed-by=/etc/apt/keyrings/k.gpg] {repo}/deb/ /' > /etc/apt/sources.list.d/k.list
             apt-get -q update >/dev/null
             apt-get -q -y install kubelet={version}-1.1 kubeadm={version}-1.1 kubectl={version}-1.1 >/dev/null
             apt-mark hold kubelet kubeadm kubectl >/dev/null"
        );
        let (code, _, err) = self.bash(node, &script);
        assert_eq!(code, 0, "installing the Kubernetes packages on {node}: {err}");
    }
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| !r.starts_with('Z')))
}

fn connect(node: &LabNode) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&SocketAddr::from((node.address, 22)), Duration::from_secs(3))
}

#[test]
fn nodes_are_real_debian_machines_that_install_from_the_mirror() {
    let f = fixture(1, 1, |_| {});
    for node in f.lab.nodes() {
        let out = f.ssh(&node.name, "cat /proc/1/comm; hostname; ip -4 -o addr show eth0; . /etc/os-release; echo $VERSION_ID; command -v kubeadm || echo no-kubeadm; cat /etc/machine-id");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "systemd", "systemd is PID 1: {out}");
        assert_eq!(lines[1], node.name, "the node has its own hostname");
        assert!(lines[2].contains(&format!("inet {}/16", node.address)), "{out}");
        assert_eq!(lines[3], "12", "Debian 12 by default: {out}");
        assert_eq!(lines[4], "no-kubeadm", "a fresh machine has no Kubernetes packages: {out}");
        assert_eq!(lines[5].len(), 32, "a machine id of its own: {out}");
    }
    let ids: Vec<String> = ["master0", "worker0"].iter().map(|n| f.ssh(n, "cat /etc/machine-id")).collect();
    assert_ne!(ids[0], ids[1], "every node has its own machine id");
    // Every node's systemd manages a cgroup tree of its own (same-named units of two nodes
    // took each other's cgroup when all shared the host's root one).
    if Path::new("/sys/fs/cgroup/systemd/cgroup.procs").exists() {
        for node in f.lab.nodes() {
            let text = std::fs::read_to_string(format!("/proc/{}/cgroup", node.leader_pid)).unwrap();
            let own = format!("/hakube-lab/hk9-{}/payload/", node.name);
            let line = text.lines().find(|l| l.contains(":name=systemd:")).unwrap_or_default();
            assert!(line.contains(&own), "{}'s PID 1 is not in its own cgroup: {text}", node.name);
        }
    }
    // Debian's own programs: bookworm's dpkg database still lists systemctl under /bin
    // (the usrmerge layout), so ask for that name; trixie's lists /usr/bin/systemctl.
    assert!(f.ssh("master0", "dpkg -S /bin/systemctl").starts_with("systemd: "));
    assert!(f.ssh("master0", "dpkg -S \"$(command -v sshd)\"").starts_with("openssh-server: "));
    assert!(f.ssh("master0", "systemctl is-system-running --wait || true").starts_with("running"));
    let routes = f.ssh("master0", "ip route");
    assert!(!routes.contains("default"), "no default route: {routes}");

    f.install_kubernetes_packages("master0", "1.36.4");
    let out = f.ssh(
        "master0",
        "dpkg -S \"$(command -v kubeadm)\"; kubeadm version -o short; kubelet --version; apt-mark showhold; \
         systemctl cat kubelet.service | grep -c 10-kubeadm.conf; dpkg-query -W -f='${Version}\\n' containerd 2>/dev/null || echo no-containerd",
    );
    assert_eq!(
        out, "kubeadm: /usr/bin/kubeadm\nv1.36.4\nKubernetes v1.36.4\nkubeadm\nkubectl\nkubelet\n1\nno-containerd\n",
        "the stand-ins come as real packages, with kubeadm's kubelet drop-in"
    );
    // A held package stays where it is: apt refuses to change it without being told to.
    let out = f.ssh_with(
        "root",
        "master0",
        "known_hosts",
        "DEBIAN_FRONTEND=noninteractive apt-get -q -y install kubeadm=1.35.4-1.1 2>&1",
    );
    assert_eq!(out.status.code(), Some(100), "{}", String::from_utf8_lossy(&out.stdout));
    // Only the stand-ins are recorded; the real tools (apt, dpkg, hostname) are not.
    let names: Vec<String> = f.calls("master0").iter().map(|c| c.name.clone()).collect();
    assert!(names.iter().all(|n| n == "kubeadm" || n == "kubelet" || n == "kubectl"), "{names:?}");
    assert_eq!(
        f.calls("master0").iter().find(|c| c.name == "kubeadm").unwrap().command_line(),
        "kubeadm version -o short"
    );

    // The definition points at the nodes and at the mirror.
    let definition = f.lab.definition();
    assert_eq!(definition["masters"][0]["privateIP"], "10.251.0.11");
    assert_eq!(definition["workers"][0]["privateIP"], "10.251.1.11");
    assert_eq!(definition["masterLoadBalancerAddress"], "10.251.0.10");
    assert_eq!(definition["nodeNetworkCIDR"], "10.251.0.0/16");
    assert_eq!(definition["packageRepository"]["url"], "http://10.251.0.1/pkgs.k8s.io/core:/stable:/v1.36");
    let index = fs::read_to_string(f.lab.config().state_dir.join("mirror/index.txt")).unwrap();
    assert!(index.contains("kubeadm_1.36.4-1.1_") && index.contains("containerd_"), "{index}");
}

#[test]
fn a_boot_script_that_needs_a_tool_the_image_lacks_fails() {
    let f = fixture(1, 0, |_| {});
    let repo = f.lab.definition()["packageRepository"]["url"].as_str().unwrap().to_string();
    // As a boot script that forgot to install gpg would: on a minimal machine it fails, as
    // on a real one, and works once gpg comes from the site's mirror.
    let script = format!("set -o pipefail; curl -fsSL '{repo}/deb/Release.key' | gpg --dearmor -o /tmp/k.gpg");
    let (code, _, err) = f.bash("master0", &script);
    assert_eq!(code, 127, "gpg is not on a fresh machine: {err}");
    assert!(err.contains("gpg: command not found"), "{err}");
    let (code, _, err) =
        f.bash("master0", "apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q -y install gpg");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = f.bash("master0", &script);
    assert_eq!(code, 0, "{err}");
    // Nothing beyond the lab network (asked of the routing table, so no packet is sent), and
    // no package the mirror does not have.
    let (code, _, err) = f.bash("master0", "ip route get 192.0.2.1");
    assert_ne!(code, 0, "no route out of the lab");
    assert!(err.contains("Network is unreachable"), "{err}");
    let (code, _, err) = f.bash("master0", "DEBIAN_FRONTEND=noninteractive apt-get -q -y install jq");
    assert_eq!(code, 100, "{err}");
}

#[test]
fn a_nodes_writes_stay_in_its_own_layer() {
    let f = fixture(2, 0, |_| {});
    let marker = format!("hakube-lab-isolation-{}", std::process::id());
    f.ssh("master0", &format!("echo written-on-master0 > /etc/{marker}"));
    assert!(!Path::new("/etc").join(&marker).exists(), "the test machine's /etc is untouched");
    assert_eq!(
        fs::read_to_string(f.node("master0").dir.join("upper/etc").join(&marker)).unwrap(),
        "written-on-master0\n",
        "the write landed in master0's own layer"
    );
    assert_eq!(f.ssh("master1", &format!("test -e /etc/{marker} && echo seen || echo absent")), "absent\n");
    // The kernel: the node's own network sysctls are writable, the rest read-only.
    assert_eq!(f.ssh("master0", "sysctl -w net.ipv4.ip_forward=1 >/dev/null && sysctl -n net.ipv4.ip_forward"), "1\n");
    assert_eq!(f.ssh("master1", "sysctl -n net.ipv4.ip_forward"), "0\n", "master0's sysctl is its own");
    let out = f.ssh_with("root", "master0", "known_hosts", "sysctl -w vm.swappiness=10");
    assert!(!out.status.success(), "vm.* is read-only on a node");
    // Kernel modules cannot be loaded: the modprobe stand-in answers for what the kernel has.
    assert_eq!(f.ssh("master0", "modprobe br_netfilter && modprobe overlay && echo loaded"), "loaded\n");
    let out = f.ssh_with("root", "master0", "known_hosts", "modprobe hakube-no-such-module");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found in directory /lib/modules/"));
}

#[test]
fn sshd_links_and_reboots_behave_as_on_a_site() {
    let f = fixture(1, 0, |_| {});
    let node = f.node("master0");
    assert!(f.lab.sshd_listening("master0").unwrap());
    f.lab.stop_sshd("master0").unwrap();
    assert_eq!(connect(&node).map(|_| ()).unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
    let out = f.ssh_with("root", "master0", "known_hosts", "true");
    assert_eq!(out.status.code(), Some(255));
    f.lab.start_sshd("master0").unwrap();
    assert_eq!(f.ssh("master0", "echo back"), "back\n");

    // A cut link: connections time out (nothing refuses them); restored, they work again.
    f.lab.set_link("master0", false).unwrap();
    let err = connect(&node).map(|_| ()).unwrap_err();
    assert_ne!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    f.lab.set_link("master0", true).unwrap();
    assert_eq!(f.ssh("master0", "echo linked"), "linked\n");

    // A reboot: what was written to disk survives, /run does not, and the units and timers
    // enabled before it start at boot again.
    f.ssh(
        "master0",
        "echo kept > /etc/hakube-lab-reboot; echo lost > /run/hakube-lab-reboot
         printf '[Service]\\nType=oneshot\\nExecStart=/bin/sh -c \\\"echo booted > /run/hakube-lab-booted\\\"\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/hakube-lab-boot.service
         printf '[Timer]\\nOnCalendar=hourly\\n[Install]\\nWantedBy=timers.target\\n' > /etc/systemd/system/hakube-lab-boot.timer
         systemctl daemon-reload && systemctl enable hakube-lab-boot.service hakube-lab-boot.timer 2>/dev/null",
    );
    let before = f.node("master0").leader_pid;
    f.lab.reboot("master0").unwrap();
    assert_ne!(f.node("master0").leader_pid, before);
    assert_eq!(
        f.ssh(
            "master0",
            "cat /etc/hakube-lab-reboot; test -e /run/hakube-lab-reboot && echo run-kept || echo run-gone; \
             systemctl is-system-running --wait >/dev/null; cat /run/hakube-lab-booted; systemctl is-active hakube-lab-boot.timer"
        ),
        "kept\nrun-gone\nbooted\nactive\n"
    );
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

/// Every process of the lab (nspawn and each container's PID 1), and `extra`.
fn lab_pids(lab: &Lab, extra: &[u32]) -> Vec<u32> {
    let mut pids: Vec<u32> = lab.nodes().iter().flat_map(|n| [n.nspawn_pid, n.leader_pid]).collect();
    pids.extend_from_slice(extra);
    pids
}

/// The mirror server's PID, found by its command line.
fn mirror_pid(state_dir: &Path) -> u32 {
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(state_dir.join("lab.json")).unwrap()).unwrap();
    saved["mirror_pid"].as_u64().unwrap() as u32
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
    let state = state_dir.to_string_lossy().into_owned();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&state), "mounts left under {state}");
}

#[test]
fn down_and_drop_leave_no_namespace_link_process_or_mount() {
    let f = fixture(1, 1, |_| {});
    // A process a script left running on a node is stopped too: its PID as the host sees it.
    f.ssh("worker0", "systemd-run --unit hakube-lab-stray sleep 600 >/dev/null 2>&1");
    let (_, out, _) = f.bash("worker0", "systemctl show -p MainPID --value hakube-lab-stray");
    let inner: u32 = out.trim().parse().unwrap();
    assert!(inner > 1, "{out}");
    let state_dir = f.lab.config().state_dir.clone();
    let pids = lab_pids(&f.lab, &[mirror_pid(&state_dir)]);
    let Fixture { lab, dir, _lock } = f;
    lab.down().unwrap();
    assert_nothing_left(&pids, &state_dir);
    assert!(!state_dir.join("lab.json").exists());
    assert!(Lab::attach(&state_dir).unwrap().is_none());
    hakube_lab::clean(&config(dir.path(), 0, 0)).unwrap();

    // Drop does the same.
    let lab = Lab::up(config(dir.path(), 1, 0)).unwrap();
    let pids = lab_pids(&lab, &[mirror_pid(&state_dir)]);
    drop(lab);
    assert_nothing_left(&pids, &state_dir);
}

#[test]
fn up_cleans_up_after_a_crashed_run() {
    let f = fixture(2, 0, |_| {});
    let Fixture { lab, dir, _lock } = f;
    let state_dir = dir.path().join("state");
    let old = lab_pids(&lab, &[mirror_pid(&state_dir)]);
    // As if the process had died: nothing torn down.
    lab.detach();
    assert!(old.iter().all(|&pid| alive(pid)));
    let found = Lab::attach(&state_dir).unwrap().expect("lab.json describes the running lab");
    assert_eq!(found.nodes().len(), 2);
    found.detach();

    // A new lab with the same names replaces it.
    let lab = Lab::up(config(dir.path(), 1, 0)).unwrap();
    for pid in &old {
        assert!(!alive(*pid), "old process {pid} survived");
    }
    assert_eq!(fs::read_to_string(lab.node_file("master0", "/etc/hostname").unwrap()).unwrap(), "master0\n");
    let namespaces = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    assert!(!namespaces.contains("hk9-master1"), "the earlier run's master1 is gone: {namespaces}");
    let pids = lab_pids(&lab, &[mirror_pid(&state_dir)]);
    drop(lab);
    assert_nothing_left(&pids, &state_dir);
}

#[test]
fn a_sudo_user_gets_debians_secure_path() {
    let f = fixture(1, 0, |c| {
        c.sudo_user = true;
        c.login_user = SUDO_USER.into();
    });
    assert_eq!(f.lab.definition()["sshLoginUser"], SUDO_USER);
    let out = f.ssh_with(SUDO_USER, "master0", "known_hosts", "id -un; sudo -n id -u; sudo -n sh -c 'echo $PATH'");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{SUDO_USER}\n0\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
        "sudo's secure_path is Debian's, from its /etc/sudoers"
    );
}

#[test]
fn kubeadm_fails_where_kubeadm_fails() {
    let f = fixture(1, 0, |_| {});
    f.install_kubernetes_packages("master0", "1.36.4");
    let config = "printf 'apiVersion: kubeadm.k8s.io/v1beta4\\nkind: InitConfiguration\\nnodeRegistration:\\n  name: master0\\n' > /tmp/kubeadm.yaml";
    // A machine nobody prepared: no container runtime, no IP forwarding.
    let (code, out, err) = f.bash(
        "master0",
        &format!("{config} && sysctl -qw net.ipv4.ip_forward=0 && kubeadm init --config /tmp/kubeadm.yaml"),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("[ERROR CRI]"), "{err}");
    assert!(err.contains("[ERROR FileContent--proc-sys-net-ipv4-ip_forward]"), "{err}");
    assert!(err.contains("error execution phase preflight"), "{err}");
    // The kubelet, run by systemd, exits until kubeadm writes its configuration (so
    // kubelet.service crash-loops before init, as on a real machine).
    let (code, _, err) =
        f.bash("master0", "systemd-run --wait --pipe --quiet /usr/bin/kubelet --config=/var/lib/kubelet/config.yaml");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed to load kubelet config file"), "{err}");
    // An injected fault: the phase fails with the code asked for.
    f.lab.add_fault("master0", &Fault::parse("kubeadm.init@preflight fail 3").unwrap()).unwrap();
    let (code, _, err) = f.bash("master0", &format!("{config} && kubeadm init --config /tmp/kubeadm.yaml"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("error execution phase preflight"), "{err}");
    f.lab.clear_faults("master0").unwrap();
    assert!(!f.lab.node_file("master0", hakube_lab::FAULTS_FILE).unwrap().exists());
}

#[test]
fn stand_ins_pass_shellcheck() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> =
        fs::read_dir(root.join("standins")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
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
    let names = |dir: &Path| {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&root.join("standins")),
        ["cilium", "kubeadm", "kubectl", "kubelet", "modprobe", "network", "standin-lib.sh"],
        "stand-ins only for what cannot run here"
    );
    // The network add-ons' manifests stand in for files this machine cannot download.
    let mut manifests: Vec<&str> = hakube_lab::network::NETWORK_MANIFESTS.iter().map(|(n, _)| *n).collect();
    manifests.sort_unstable();
    assert_eq!(names(&root.join("standins/network")), manifests);
    assert!(readme.contains("standins/network/"), "README.md documents the manifest stand-ins");
    let packaged: Vec<&str> = PACKAGED_STANDINS.iter().map(|(n, _)| *n).collect();
    assert_eq!(packaged, ["kubeadm", "kubectl", "kubelet"]);
    for name in ["kubeadm", "kubectl", "kubelet", "modprobe", "cilium"] {
        assert!(readme.contains(&format!("`{name}`")), "README.md documents the {name} stand-in");
    }
    for (name, script) in PACKAGED_STANDINS.iter().chain([&("modprobe", hakube_lab::MODPROBE)]) {
        assert!(script.contains("lab_start \"$@\""), "{name} records its calls");
    }
}
