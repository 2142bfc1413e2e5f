//! A running lab: its mirror, its nodes (containers) and tearing it all down.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::image::{self, generate_host_key, pub_path, write};
use crate::network::{ensure_network_files, ServedFile};
use crate::node::{self, NODE_PATH};
use crate::sys::{self, alive, kill, run, wait_for, wait_for_within};
use crate::{mirror, parse_calls, Call, LabConfig, LabError, LabNode, Role, MAX_NODES_PER_ROLE, SUDO_USER};

/// How long a node may take to boot until its sshd listens (50 nodes boot at once on a
/// 2-core machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Restarts every unit that failed at boot (`systemctl --failed`), as root on a node.
const RESTART_FAILED_UNITS: &str =
    "for u in $(systemctl --failed --no-legend --plain | awk '{print $1}'); do systemctl reset-failed \"$u\"; systemctl restart \"$u\"; done";

/// How long a node may take to power off after SIGTERM to its nspawn process before the
/// lab kills it.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

/// The saved state of a lab, `state_dir/lab.json`: enough for another process to find,
/// inspect and tear down the lab (`cargo xtask lab status|down`).
#[derive(Serialize, Deserialize)]
struct Saved {
    config: LabConfig,
    nodes: Vec<LabNode>,
    mirror_pid: u32,
    etcd: image::EtcdArchive,
    #[serde(default)]
    network: Vec<ServedFile>,
}

/// A process the lab started: our child (reaped by us), or one found in `lab.json`.
struct Proc {
    pid: u32,
    child: Option<Child>,
}

/// A running lab (see the crate documentation). Dropping it tears it down, as
/// [`Lab::down`] does; [`Lab::detach`] leaves it running instead.
pub struct Lab {
    config: LabConfig,
    nodes: Mutex<Vec<LabNode>>,
    nspawns: Mutex<Vec<Option<Proc>>>,
    mirror: Option<Proc>,
    etcd: image::EtcdArchive,
    network: Vec<ServedFile>,
    detached: bool,
}

impl Lab {
    /// Brings up a lab: cleans up what an earlier run with the same names left (containers,
    /// mounts, network namespaces `<prefix>-master*|worker*`, links, the bridge, the mirror
    /// server, the state directory's entries); builds or reuses the image of
    /// [`LabConfig::distro`] ([`image::ensure`]); builds the mirror and serves it on the
    /// bridge; gives each node its namespace, veth pair, overlay root and identity, boots
    /// them all and returns once every node's sshd listens. Saves `state_dir/lab.json`.
    ///
    /// Errors: [`LabError::NotRoot`], [`LabError::MissingProgram`], [`LabError::Config`] for
    /// a configuration that cannot work, and any failure of the steps (a half-built lab is
    /// torn down before the error returns).
    pub fn up(mut config: LabConfig) -> Result<Lab, LabError> {
        check_config(&config)?;
        check_environment(&config)?;
        image::mkdir(&config.state_dir)?;
        config.state_dir = fs::canonicalize(&config.state_dir).map_err(|source| LabError::Io {
            action: "resolve",
            path: config.state_dir.clone(),
            source,
        })?;
        clean(&config)?;
        clear_state_dir(&config.state_dir)?;
        raise_inotify_instances()?;
        // systemd-nspawn keeps per-container state there and, without systemd as the host's
        // PID 1, nothing else creates it.
        image::mkdir(Path::new("/run/systemd/nspawn"))?;
        image::mkdir(&config.state_dir.join("cluster"))?;
        let image = image::ensure(&config.image_cache, config.distro)?;
        let etcd = image::ensure_etcd_archive(&config.image_cache)?;
        let network = ensure_network_files(&config.image_cache, &etcd.arch)?;
        let built = mirror::build(&config.state_dir, &image, &etcd, &network)?;

        let nodes = plan(&config);
        let mut lab = Lab {
            nspawns: Mutex::new(nodes.iter().map(|_| None).collect()),
            nodes: Mutex::new(nodes),
            mirror: None,
            config,
            etcd,
            network,
            detached: false,
        };
        lab.create_network()?;
        lab.mirror = Some(lab.start_mirror(&built.root)?);
        let nodes = lab.nodes();
        for node in &nodes {
            node::mount_root(node, &image)?;
            node::customize(&lab.config, node, &nodes, &built)?;
        }
        // Every container at once, then wait for each: 50 nodes boot in parallel.
        for i in 0..nodes.len() {
            lab.boot(i)?;
        }
        for i in 0..nodes.len() {
            lab.wait_booted(i)?;
        }
        lab.save()?;
        Ok(lab)
    }

    /// The lab saved in `state_dir/lab.json` by [`Lab::up`] in this or another process, or
    /// `None` when there is none. Dropping the returned lab tears it down; call
    /// [`Lab::detach`] to only look.
    ///
    /// Errors: [`LabError::Io`] or [`LabError::State`] for an unreadable `lab.json`.
    pub fn attach(state_dir: &Path) -> Result<Option<Lab>, LabError> {
        let Some(saved) = read_saved(state_dir)? else { return Ok(None) };
        let nspawns = saved
            .nodes
            .iter()
            .map(|n| (n.nspawn_pid != 0).then_some(Proc { pid: n.nspawn_pid, child: None }))
            .collect();
        Ok(Some(Lab {
            config: saved.config,
            nodes: Mutex::new(saved.nodes),
            nspawns: Mutex::new(nspawns),
            mirror: (saved.mirror_pid != 0).then_some(Proc { pid: saved.mirror_pid, child: None }),
            etcd: saved.etcd,
            network: saved.network,
            detached: false,
        }))
    }

    /// The configuration the lab runs with (its `state_dir` made absolute).
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// The nodes, as they are now: masters first, then workers, each in index order.
    pub fn nodes(&self) -> Vec<LabNode> {
        self.nodes_mut().clone()
    }

    /// The node called `name`, as it is now. Errors: [`LabError::UnknownNode`].
    pub fn node(&self, name: &str) -> Result<LabNode, LabError> {
        let i = self.index(name)?;
        Ok(self.nodes_mut()[i].clone())
    }

    /// The cluster definition of this lab; see [`definition`].
    pub fn definition(&self) -> serde_json::Value {
        definition_of(&self.config, &self.nodes_mut(), &self.etcd, &self.network)
    }

    /// Whether `node`'s sshd listens on port 22. Errors: [`LabError::UnknownNode`].
    pub fn sshd_listening(&self, node: &str) -> Result<bool, LabError> {
        let node = self.node(node)?;
        Ok(node.leader_pid != 0 && sys::listening(node.leader_pid, 22))
    }

    /// Stops `node`'s sshd as its administrator would, `systemctl stop ssh.service`, and
    /// waits until nothing listens on port 22: new connections are refused; established
    /// sessions go on (Debian's unit kills only the listener).
    ///
    /// Errors: [`LabError::UnknownNode`], [`LabError::Command`] when systemctl fails,
    /// [`LabError::Start`] when port 22 is still open after 10 s.
    pub fn stop_sshd(&self, node: &str) -> Result<(), LabError> {
        self.systemctl(node, &["stop", "ssh.service"])?;
        let leader = self.node(node)?.leader_pid;
        if wait_for(|| !sys::listening(leader, 22)) {
            Ok(())
        } else {
            Err(LabError::Start {
                node: node.into(),
                what: "sshd",
                detail: "still listening 10 s after it was stopped".into(),
            })
        }
    }

    /// Starts `node`'s sshd again (`systemctl start ssh.service`) and waits until it listens.
    ///
    /// Errors: [`LabError::UnknownNode`], [`LabError::Command`], [`LabError::Start`] when
    /// it does not listen within 10 s.
    pub fn start_sshd(&self, node: &str) -> Result<(), LabError> {
        self.systemctl(node, &["start", "ssh.service"])?;
        let leader = self.node(node)?.leader_pid;
        if wait_for(|| sys::listening(leader, 22)) {
            Ok(())
        } else {
            Err(LabError::Start {
                node: node.into(),
                what: "sshd",
                detail: "not listening 10 s after it was started".into(),
            })
        }
    }

    /// Gives `node` a fresh ed25519 host key and restarts its sshd with it (for "the host
    /// key changed" tests); the new public key line (`ssh-ed25519 AAAA... root@<node>`).
    ///
    /// Errors: as [`Lab::stop_sshd`] and [`Lab::start_sshd`], and ssh-keygen failing.
    pub fn replace_host_key(&self, node: &str) -> Result<String, LabError> {
        let key = self.node_file(node, "/etc/ssh/ssh_host_ed25519_key")?;
        self.stop_sshd(node)?;
        generate_host_key(&key, node)?;
        self.start_sshd(node)?;
        self.host_public_key(node)
    }

    /// `node`'s current host public key line, from its `/etc/ssh/ssh_host_ed25519_key.pub`.
    ///
    /// Errors: [`LabError::UnknownNode`], [`LabError::Io`].
    pub fn host_public_key(&self, node: &str) -> Result<String, LabError> {
        let path = pub_path(&self.node_file(node, "/etc/ssh/ssh_host_ed25519_key")?);
        fs::read_to_string(&path).map(|s| s.trim().to_string()).map_err(|source| LabError::Io {
            action: "read the host key",
            path,
            source,
        })
    }

    /// A known_hosts file for the lab: one line per node, `<address>,<name> <type> <key>`.
    ///
    /// Errors: as [`Lab::host_public_key`].
    pub fn known_hosts(&self) -> Result<String, LabError> {
        let mut out = String::new();
        for node in self.nodes() {
            let key = self.host_public_key(&node.name)?;
            let key: Vec<&str> = key.split_whitespace().take(2).collect();
            out.push_str(&format!("{},{} {}\n", node.address, node.name, key.join(" ")));
        }
        Ok(out)
    }

    /// The stand-in calls recorded on `node` so far, in the order they started (see [`Call`]).
    ///
    /// Errors: [`LabError::UnknownNode`], [`LabError::Io`], [`LabError::CallLog`].
    pub fn calls(&self, node: &str) -> Result<Vec<Call>, LabError> {
        let path = self.node_file(node, "/var/log/hakube-lab/calls.log")?;
        let text = fs::read_to_string(&path).map_err(|source| LabError::Io { action: "read", path, source })?;
        parse_calls(node, &text)
    }

    /// The host's path to `path` (absolute, as seen on the node) inside `node`'s root:
    /// `state_dir/<node>/root/<path>`. Valid while the lab is up. Errors:
    /// [`LabError::UnknownNode`].
    pub fn node_file(&self, node: &str, path: impl AsRef<Path>) -> Result<PathBuf, LabError> {
        let path = path.as_ref();
        Ok(self.node(node)?.root().join(path.strip_prefix("/").unwrap_or(path)))
    }

    /// A command that runs `program` on `node` without SSH: in every namespace of the
    /// node's PID 1 (`nsenter --target <leader> --all`), as root, with a clean environment
    /// (Debian's root `PATH`, `HOME=/root`, `LC_ALL=C`). Add arguments, then run it.
    ///
    /// Errors: [`LabError::UnknownNode`]; [`LabError::Start`] when the node is not running.
    pub fn command(&self, node: &str, program: &str) -> Result<Command, LabError> {
        let node = self.node(node)?;
        if node.leader_pid == 0 || !alive(node.leader_pid) {
            return Err(LabError::Start { node: node.name, what: "the container", detail: "it is not running".into() });
        }
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(node.leader_pid.to_string())
            .args(["--all", "--", program])
            .env_clear()
            .env("PATH", NODE_PATH)
            .env("HOME", "/root")
            .env("LC_ALL", "C");
        Ok(cmd)
    }

    /// Adds `fault` to `node`'s [`FAULTS_FILE`](crate::FAULTS_FILE): the kubeadm stand-in
    /// there acts on it from its next phase on, the kubectl stand-in from its next drain or
    /// etcd health check (e.g. `lab.add_fault("master0", &Fault::drain_refused(Some("worker0")))`
    /// makes master0's `kubectl drain worker0` fail).
    ///
    /// Errors: [`LabError::UnknownNode`], [`LabError::Io`].
    pub fn add_fault(&self, node: &str, fault: &crate::Fault) -> Result<(), LabError> {
        let path = self.node_file(node, crate::FAULTS_FILE)?;
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        text.push_str(&format!("{fault}\n"));
        write(&path, 0o644, text.as_bytes())
    }

    /// Removes every fault of `node`. Errors: [`LabError::UnknownNode`], [`LabError::Io`].
    pub fn clear_faults(&self, node: &str) -> Result<(), LabError> {
        let path = self.node_file(node, crate::FAULTS_FILE)?;
        match fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                Err(LabError::Io { action: "remove", path, source })
            }
            _ => Ok(()),
        }
    }

    /// Cuts (`up == false`) or restores `node`'s link to the lab network: the host end of
    /// its veth pair goes down or up. The node keeps running; its connections time out.
    ///
    /// Errors: [`LabError::UnknownNode`], `ip` failing.
    pub fn set_link(&self, node: &str, up: bool) -> Result<(), LabError> {
        let node = self.node(node)?;
        let veth = veth_name(&self.config.prefix, &node);
        run(Command::new("ip").args(["link", "set", &veth, if up { "up" } else { "down" }]))?;
        Ok(())
    }

    /// Reboots `node`: powers it off (SIGTERM to its nspawn process: systemd shuts down),
    /// then boots it again on the same layer, and waits until its sshd listens. What the
    /// node wrote to disk survives; what was in memory, `/run` and `/tmp` does not.
    ///
    /// Errors: [`LabError::UnknownNode`], [`LabError::Stuck`], [`LabError::Start`].
    pub fn reboot(&self, node: &str) -> Result<(), LabError> {
        let i = self.index(node)?;
        self.power_off(i)?;
        self.boot(i)?;
        self.wait_booted(i)?;
        self.save()
    }

    /// Tears the lab down: powers every node off (SIGTERM to its nspawn process, SIGKILL
    /// after 30 s), kills anything left in the nodes' network namespaces, unmounts their
    /// roots, stops the mirror server, deletes the namespaces, veth pairs and bridge, and
    /// `lab.json`. The state directory's files stay for inspection (the next `up` replaces
    /// them). Running it again, or on a lab already down, does nothing.
    ///
    /// Errors: [`LabError::Stuck`] when processes survive SIGKILL for 10 s, `ip` or
    /// `umount` failing.
    pub fn down(mut self) -> Result<(), LabError> {
        self.detached = true;
        self.teardown()
    }

    /// Leaves the lab running past this value (for `cargo xtask lab up`): nothing is torn
    /// down; [`Lab::attach`] finds it again through `lab.json`.
    pub fn detach(mut self) {
        self.detached = true;
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        let mut first_error = None;
        let count = self.nodes_mut().len();
        // Power off in parallel: each node takes a moment to shut down.
        for i in 0..count {
            let root = self.nodes_mut()[i].root();
            if let Some(proc) = self.nspawns_mut()[i].as_ref() {
                if proc.child.is_some() || sys::is_nspawn_of(proc.pid, &root) {
                    sys::signal_term(proc.pid);
                }
            }
        }
        for i in 0..count {
            if let Err(e) = self.power_off(i) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(mut proc) = self.mirror.take() {
            if let Err(e) = stop_mirror(&mut proc, &self.config.state_dir) {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = clean(&self.config) {
            first_error.get_or_insert(e);
        }
        let saved = self.config.state_dir.join("lab.json");
        if let Err(source) = fs::remove_file(&saved) {
            if source.kind() != std::io::ErrorKind::NotFound {
                first_error.get_or_insert(LabError::Io { action: "remove", path: saved, source });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn index(&self, node: &str) -> Result<usize, LabError> {
        self.nodes_mut().iter().position(|n| n.name == node).ok_or_else(|| LabError::UnknownNode(node.to_string()))
    }

    fn nodes_mut(&self) -> MutexGuard<'_, Vec<LabNode>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn nspawns_mut(&self) -> MutexGuard<'_, Vec<Option<Proc>>> {
        self.nspawns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self) -> Result<(), LabError> {
        let saved = Saved {
            config: self.config.clone(),
            nodes: self.nodes(),
            mirror_pid: self.mirror.as_ref().map_or(0, |p| p.pid),
            etcd: self.etcd.clone(),
            network: self.network.clone(),
        };
        let text = serde_json::to_string_pretty(&saved)
            .map_err(|source| LabError::State { path: self.config.state_dir.join("lab.json"), source })?;
        write(&self.config.state_dir.join("lab.json"), 0o644, text.as_bytes())
    }

    /// `systemctl ARGS` on `node`, without SSH.
    fn systemctl(&self, node: &str, args: &[&str]) -> Result<(), LabError> {
        run(self.command(node, "systemctl")?.args(args))?;
        Ok(())
    }

    /// The bridge, and per node its namespace, veth pair (host end on the bridge, `eth0` in
    /// the node) and address. No default route: a node reaches the lab and loopback only.
    fn create_network(&self) -> Result<(), LabError> {
        let c = &self.config;
        let mut root = format!(
            "link add {bridge} type bridge\naddr add {gateway}/16 dev {bridge}\nlink set {bridge} up\n",
            bridge = c.bridge,
            gateway = c.gateway()
        );
        let nodes = self.nodes();
        for node in &nodes {
            let veth = veth_name(&c.prefix, node);
            root.push_str(&format!(
                "netns add {ns}\nlink add {veth} type veth peer name eth0 netns {ns}\nlink set {veth} master {bridge} up\n",
                ns = node.netns,
                bridge = c.bridge
            ));
        }
        sys::ip_batch(None, &root)?;
        for node in &nodes {
            sys::ip_batch(
                Some(&node.netns),
                &format!("addr add {}/16 dev eth0\nlink set eth0 up\nlink set lo up\n", node.address),
            )?;
        }
        Ok(())
    }

    /// Serves `root` at `http://<gateway>:80/` with Python's http.server, and waits until it
    /// listens.
    fn start_mirror(&self, root: &Path) -> Result<Proc, LabError> {
        let gateway = self.config.gateway();
        let log = log_file(&self.config.state_dir.join("mirror.log"))?;
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "http.server", "80", "--bind"]).arg(gateway.to_string()).arg("--directory").arg(root);
        let mut proc = spawn(cmd, log)?;
        let ready = wait_for(|| exited(&mut proc) || sys::listening_on(std::process::id(), gateway, 80));
        if ready && !exited(&mut proc) {
            return Ok(proc);
        }
        let _ = stop_mirror(&mut proc, &self.config.state_dir);
        Err(LabError::Start {
            node: "(none)".into(),
            what: "the mirror",
            detail: log_tail(&self.config.state_dir.join("mirror.log")),
        })
    }

    /// Starts node `i`'s container (`systemd-nspawn -b`), logging its console to
    /// `console.log`.
    fn boot(&self, i: usize) -> Result<(), LabError> {
        let node = self.nodes_mut()[i].clone();
        let log = log_file(&node.dir.join("console.log"))?;
        let mut cmd = node::in_own_cgroup(&self.config, &node, node::nspawn(&self.config, &node));
        let out = log.try_clone().map_err(|source| LabError::Io {
            action: "open",
            path: node.dir.join("console.log"),
            source,
        })?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(log);
        let child = cmd.spawn().map_err(|e| LabError::Command {
            command: sys::command_line(&cmd),
            detail: format!("cannot start it: {e}"),
        })?;
        let pid = child.id();
        self.nspawns_mut()[i] = Some(Proc { pid, child: Some(child) });
        let mut nodes = self.nodes_mut();
        nodes[i].nspawn_pid = pid;
        nodes[i].leader_pid = 0;
        Ok(())
    }

    /// Waits until node `i`'s container has a PID 1 and its sshd listens.
    fn wait_booted(&self, i: usize) -> Result<(), LabError> {
        let node = self.nodes_mut()[i].clone();
        let mut leader = 0;
        let mut gone = false;
        let ready = wait_for_within(BOOT_TIMEOUT, || {
            let mut nspawns = self.nspawns_mut();
            if nspawns[i].as_mut().is_none_or(exited) {
                gone = true;
                return true;
            }
            // nspawn forks an intermediate child before the container's PID 1: ask each time.
            leader = sys::first_child(node.nspawn_pid).unwrap_or(0);
            leader != 0 && sys::listening(leader, 22)
        });
        if ready && !gone {
            self.nodes_mut()[i].leader_pid = leader;
            // Up means booted, as an operator would see it: systemd has finished starting
            // units (`running`, or `degraded` when one failed), not merely sshd listening,
            // which early in boot may still close connections.
            let state = self.command(&node.name, "systemctl")?.args(["is-system-running", "--wait"]).output();
            let state = state.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
            // And logins are allowed: pam_nologin refuses every user but root while
            // /run/nologin exists (systemd's tmpfiles create it at boot, until
            // systemd-user-sessions.service removes it); the lab saw a first login of the
            // sudo user refused so ("Access denied ... by PAM account configuration").
            let logins = || {
                self.command(&node.name, "test")
                    .is_ok_and(|mut c| c.args(["!", "-e", "/run/nologin"]).status().is_ok_and(|s| s.success()))
            };
            let booted = state == "running" || state == "degraded";
            // A degraded boot gets 30 s to allow logins before its failed units are restarted.
            let first = if state == "degraded" { Duration::from_secs(30) } else { BOOT_TIMEOUT };
            if booted && wait_for_within(first, logins) {
                return Ok(());
            }
            // Every node's systemd manages cgroups of the one host tree here, so on a loaded
            // machine a unit now and then fails to get its own at boot (systemd's exit 219,
            // CGROUP) and the boot ends degraded; when that unit is systemd-user-sessions,
            // logins stay refused. Starting the failed units again once is what an operator
            // would do.
            if state == "degraded" {
                let _ = self.command(&node.name, "sh")?.args(["-c", RESTART_FAILED_UNITS]).status();
                if wait_for_within(Duration::from_secs(120), logins) {
                    return Ok(());
                }
            }
            // Which units failed (a loaded machine has seen one time out at boot), so the
            // error says why rather than only that.
            let failed = self
                .command(&node.name, "systemctl")?
                .args(["--failed", "--no-legend", "--plain", "--no-pager"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace('\n', "; "))
                .unwrap_or_default();
            let why =
                if booted { "logins are still refused (/run/nologin exists)" } else { "it did not finish booting" };
            return Err(LabError::Start {
                node: node.name.clone(),
                what: "the container",
                detail: format!(
                    "{why}: systemd says the system is {state:?}, failed units: [{failed}]; {}",
                    log_tail(&node.dir.join("console.log"))
                ),
            });
        }
        let detail = if gone { "systemd-nspawn exited" } else { "sshd did not listen within 180 s" };
        Err(LabError::Start {
            node: node.name.clone(),
            what: "the container",
            detail: format!("{detail}: {}", log_tail(&node.dir.join("console.log"))),
        })
    }

    /// Powers node `i` off: SIGTERM to its nspawn process (which has systemd shut the
    /// container down), SIGKILL after [`POWEROFF_TIMEOUT`], then waits for it.
    fn power_off(&self, i: usize) -> Result<(), LabError> {
        let proc = self.nspawns_mut()[i].take();
        let node = self.nodes_mut()[i].clone();
        // A PID from lab.json is signalled only while it still boots this node's root, so a
        // reused PID is never hit.
        let proc = proc.filter(|p| p.child.is_some() || sys::is_nspawn_of(p.pid, &node.root()));
        if let Some(mut proc) = proc {
            sys::signal_term(proc.pid);
            if !wait_for_within(POWEROFF_TIMEOUT, || exited(&mut proc)) {
                if node.leader_pid != 0 {
                    kill(node.leader_pid);
                }
                kill(proc.pid);
                if !wait_for(|| exited(&mut proc)) {
                    return Err(LabError::Stuck { netns: node.netns.clone(), pids: vec![proc.pid] });
                }
            }
        }
        let mut nodes = self.nodes_mut();
        nodes[i].nspawn_pid = 0;
        nodes[i].leader_pid = 0;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.detached {
            // Errors cannot be returned from drop; `up` of the next run cleans what is left.
            let _ = self.teardown();
        }
    }
}

/// The fewest inotify instances per user the lab needs: every container's systemd, journald,
/// logind and D-Bus take some, and the kernel's default (128) stops a boot at about 30
/// containers (systemd then hangs waiting for units).
const INOTIFY_INSTANCES: u64 = 8192;

/// Raises `fs.inotify.max_user_instances` to [`INOTIFY_INSTANCES`] when it is lower (never
/// lowers it): the one host setting the lab changes, as container hosts (LXD, Incus) do.
fn raise_inotify_instances() -> Result<(), LabError> {
    let path = Path::new("/proc/sys/fs/inotify/max_user_instances");
    let current: u64 = fs::read_to_string(path).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    if current < INOTIFY_INSTANCES {
        fs::write(path, INOTIFY_INSTANCES.to_string()).map_err(|source| LabError::Io {
            action: "raise",
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// `state_dir/lab.json`, if there is one.
fn read_saved(state_dir: &Path) -> Result<Option<Saved>, LabError> {
    let path = state_dir.join("lab.json");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LabError::Io { action: "read", path, source }),
    };
    serde_json::from_str(&text).map(Some).map_err(|source| LabError::State { path, source })
}

/// Stops the mirror server: SIGKILL and wait. A PID from `lab.json` is only signalled while
/// its command line still serves this lab's mirror directory, so a reused PID is never hit.
fn stop_mirror(proc: &mut Proc, state_dir: &Path) -> Result<(), LabError> {
    if let Some(child) = proc.child.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(());
    }
    if serves_mirror(proc.pid, state_dir) {
        kill(proc.pid);
    }
    if wait_for(|| !alive(proc.pid) || !serves_mirror(proc.pid, state_dir)) {
        Ok(())
    } else {
        Err(LabError::Stuck { netns: "(the mirror server)".into(), pids: vec![proc.pid] })
    }
}

/// Whether process `pid` is a mirror server of `state_dir` (its command line ends in
/// `--directory <state_dir>/mirror`).
fn serves_mirror(pid: u32, state_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    let dir = state_dir.join("mirror");
    args.windows(2).any(|w| w[0] == b"--directory" && w[1] == dir.as_os_str().as_encoded_bytes())
        && args.iter().any(|a| *a == b"http.server")
}

/// Tears down everything named by `config` (its prefix, bridge and state directory): the
/// processes in the namespaces `<prefix>-master<i>` / `<prefix>-worker<i>` (SIGKILL by PID,
/// then wait; a container whose PID 1 dies ends its nspawn process too), a mirror server
/// serving `state_dir/mirror`, the mounts under `state_dir`, the namespaces, links
/// `<prefix>v<m|w><i>` and the bridge. For the leftovers of a lab whose process crashed;
/// [`Lab::up`] does it first, [`Lab::down`] last. Touches nothing else.
///
/// Errors: [`LabError::Stuck`], or `ip` or `umount` failing.
pub fn clean(config: &LabConfig) -> Result<(), LabError> {
    let state_dir = fs::canonicalize(&config.state_dir).unwrap_or_else(|_| config.state_dir.clone());
    if let Ok(Some(saved)) = read_saved(&state_dir) {
        for node in &saved.nodes {
            if node.nspawn_pid != 0 && sys::is_nspawn_of(node.nspawn_pid, &node.root()) {
                kill(node.nspawn_pid);
            }
        }
        if saved.mirror_pid != 0 {
            stop_mirror(&mut Proc { pid: saved.mirror_pid, child: None }, &state_dir)?;
        }
    }
    for ns in sys::netns_list()?.into_iter().filter(|ns| is_lab_netns(&config.prefix, ns)) {
        let mut left = Vec::new();
        let gone = wait_for(|| {
            left = sys::netns_pids(&ns).unwrap_or_default();
            left.iter().for_each(|&pid| kill(pid));
            left.is_empty()
        });
        if !gone {
            return Err(LabError::Stuck { netns: ns, pids: left });
        }
        // Deleting the host end removes the pair at once; the namespace itself is destroyed
        // asynchronously after `ip netns del`, and would take its veth end along only then.
        let veth = ns.replacen("-master", "vm", 1).replacen("-worker", "vw", 1);
        if sys::link_names()?.contains(&veth) {
            run(Command::new("ip").args(["link", "del", &veth]))?;
        }
        run(Command::new("ip").args(["netns", "del", &ns]))?;
    }
    for link in sys::link_names()? {
        if link == config.bridge || is_lab_veth(&config.prefix, &link) {
            run(Command::new("ip").args(["link", "del", &link]))?;
        }
    }
    // The nodes' roots (and anything mounted below them), deepest first.
    let mut mounts = sys::mounts_under(&state_dir)?;
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for mount in mounts {
        // A container that just ended may still hold its root for a moment: retry.
        let unmounted = wait_for(|| {
            run(Command::new("umount").arg(&mount)).is_ok() || sys::mounts_under(&mount).is_ok_and(|m| m.is_empty())
        });
        if !unmounted {
            run(Command::new("umount").arg(&mount))?;
        }
    }
    // The nodes' own cgroups (their processes are gone now).
    if let Ok(Some(saved)) = read_saved(&state_dir) {
        for node in &saved.nodes {
            node::remove_cgroup(config, node);
        }
    }
    Ok(())
}

/// Whether `ns` is `<prefix>-master<digits>` or `<prefix>-worker<digits>`.
fn is_lab_netns(prefix: &str, ns: &str) -> bool {
    ns.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_prefix("master").or_else(|| rest.strip_prefix("worker")))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `link` is `<prefix>vm<digits>` or `<prefix>vw<digits>`.
fn is_lab_veth(prefix: &str, link: &str) -> bool {
    link.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("vm").or_else(|| rest.strip_prefix("vw")))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The host end of `node`'s veth pair: `<prefix>vm<i>` or `<prefix>vw<i>`.
fn veth_name(prefix: &str, node: &LabNode) -> String {
    let (letter, index) = match node.role {
        Role::Master => ('m', node.name.trim_start_matches("master")),
        Role::Worker => ('w', node.name.trim_start_matches("worker")),
    };
    format!("{prefix}v{letter}{index}")
}

/// A cluster definition (hakube's JSON format) for the lab `config` describes, known before
/// the lab is up (so that `hakube render` can make the host keys and login key the lab then
/// installs): clusterName `lab`, the masters and workers with their addresses as privateIP,
/// masterLoadBalancerAddress `A.B.0.10` (nothing listens there), sshLoginUser from the
/// configuration, hostKeyPolicy `strict`, the configured Kubernetes version with the
/// package repository at the lab's mirror, `downloads.mirror` at the mirror, a registry
/// mirror for registry.k8s.io at `http://A.B.0.1:5000` (configured in containerd; nothing
/// serves images there, as no image is pulled: the kubelet is a stand-in), the etcd
/// release the mirror serves with its sha256 (`etcd.version`, `etcd.sha256`; building it
/// first when it is not cached, see [`image::ensure_etcd_archive`]), and nodeNetworkCIDR
/// `A.B.0.0/16`. The topology stays kubeadm's default (stacked); set `etcd.topology`. Add or change fields (etcd, hooks, ...) as a test needs.
///
/// Errors: [`LabError`] when `config` asks for more nodes than a lab holds.
pub fn definition(config: &LabConfig) -> Result<serde_json::Value, LabError> {
    check_config(config)?;
    let etcd = image::ensure_etcd_archive(&config.image_cache)?;
    let network = ensure_network_files(&config.image_cache, &etcd.arch)?;
    Ok(definition_of(config, &plan(config), &etcd, &network))
}

fn definition_of(
    config: &LabConfig,
    nodes: &[LabNode],
    etcd: &image::EtcdArchive,
    network: &[ServedFile],
) -> serde_json::Value {
    let of_role = |role: Role| {
        nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| json!({ "nodeName": n.name, "privateIP": n.address.to_string() }))
            .collect::<Vec<_>>()
    };
    let definition = json!({
        "clusterName": "lab",
        "masterLoadBalancerAddress": config.load_balancer().to_string(),
        "sshLoginUser": config.login_user,
        "hostKeyPolicy": "strict",
        "kubernetesVersion": config.kubernetes_version,
        "packageRepository": { "url": format!("{}/pkgs.k8s.io/core:/stable:/v{}", config.mirror_url(), minor_of(&config.kubernetes_version)) },
        "downloads": { "mirror": config.mirror_url() },
        "containerRuntime": { "registryMirrors": { "registry.k8s.io": format!("http://{}:5000", config.gateway()) } },
        "etcd": { "version": etcd.version, "sha256": { etcd.arch.clone(): etcd.sha256 } },
        "nodeNetworkCIDR": config.network(),
        "hooks": { "networkProvider": config.network_provider },
        "masters": of_role(Role::Master),
        "workers": of_role(Role::Worker),
    });
    pin_network_files(definition, network)
}

/// `definition` with `downloads.sha256` pinning the files of its network add-on that the
/// mirror serves (the stand-ins' sums, not the projects').
fn pin_network_files(mut definition: serde_json::Value, network: &[ServedFile]) -> serde_json::Value {
    let parsed: Option<hakube_cluster::ClusterDefinition> = serde_json::from_value(definition.clone()).ok();
    let files = parsed.and_then(|d| hakube_cluster::downloads::files(&d).ok()).unwrap_or_default();
    let pins: serde_json::Map<String, serde_json::Value> = files
        .iter()
        .filter(|f| f.step == "network")
        .filter_map(|f| network.iter().find(|s| s.url == f.url))
        .map(|s| (s.url.clone(), json!(s.sha256)))
        .collect();
    if !pins.is_empty() {
        definition["downloads"]["sha256"] = serde_json::Value::Object(pins);
    }
    definition
}

/// `1.36` of `1.36.4`.
fn minor_of(version: &str) -> &str {
    version.rsplit_once('.').map_or(version, |(minor, _)| minor)
}

/// The nodes `config` asks for, with their names, addresses and directories (not running).
fn plan(config: &LabConfig) -> Vec<LabNode> {
    let [a, b] = config.subnet_base;
    let node = |role: Role, i: usize| {
        let name = format!("{}{i}", role.as_str());
        let third = if role == Role::Master { 0 } else { 1 };
        // i < MAX_NODES_PER_ROLE (check_config), so 11 + i fits an octet.
        let host = u8::try_from(11 + i).expect("at most 240 nodes per role");
        LabNode {
            netns: format!("{}-{name}", config.prefix),
            dir: config.state_dir.join(&name),
            address: Ipv4Addr::new(a, b, third, host),
            role,
            name,
            nspawn_pid: 0,
            leader_pid: 0,
        }
    };
    (0..config.masters)
        .map(|i| node(Role::Master, i))
        .chain((0..config.workers).map(|i| node(Role::Worker, i)))
        .collect()
}

fn check_config(config: &LabConfig) -> Result<(), LabError> {
    let bad = |why: String| Err(LabError::Config(why));
    if config.masters > MAX_NODES_PER_ROLE || config.workers > MAX_NODES_PER_ROLE {
        return bad(format!(
            "{} masters and {} workers: a lab holds at most {MAX_NODES_PER_ROLE} of each",
            config.masters, config.workers
        ));
    }
    if config.masters + config.workers == 0 {
        return bad("no nodes: ask for at least one master or worker".into());
    }
    if hakube_cluster::releases::network_addon(&config.network_provider).is_none() {
        let known: Vec<&str> = hakube_cluster::releases::NETWORK_ADDONS.iter().map(|a| a.provider).collect();
        return bad(format!("network provider {:?}: the lab serves {}", config.network_provider, known.join(", ")));
    }
    if config.prefix.is_empty()
        || config.prefix.len() > 8
        || !config.prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return bad(format!("prefix {:?} must be 1 to 8 characters of [a-z0-9]", config.prefix));
    }
    if config.bridge.is_empty()
        || config.bridge.len() > 15
        || !config.bridge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        || is_lab_veth(&config.prefix, &config.bridge)
    {
        return bad(format!(
            "bridge name {:?} must be 1 to 15 characters of [A-Za-z0-9_-], not a lab veth name",
            config.bridge
        ));
    }
    if config.login_user != "root" && !(config.login_user == SUDO_USER && config.sudo_user) {
        return bad(format!(
            "login user {:?}: the lab has root, and {SUDO_USER} when sudo_user is set",
            config.login_user
        ));
    }
    if !mirror::KUBERNETES_VERSIONS.contains(&config.kubernetes_version.as_str()) {
        return bad(format!(
            "Kubernetes {}: the lab's mirror has packages of {} only",
            config.kubernetes_version,
            mirror::KUBERNETES_VERSIONS.join(" and ")
        ));
    }
    if let Some(key) = &config.authorized_key {
        if key.trim().is_empty() || key.trim().contains('\n') {
            return bad("authorized_key must be one public key line".into());
        }
    }
    Ok(())
}

fn check_environment(config: &LabConfig) -> Result<(), LabError> {
    if !rustix::process::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    let needed = [
        ("ip", "iproute2"),
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("mount", "mount"),
        ("umount", "mount"),
        ("nsenter", "util-linux"),
        ("chroot", "coreutils"),
        ("python3", "python3"),
        ("gpg", "gnupg"),
        ("dpkg-deb", "dpkg"),
        ("dpkg-scanpackages", "dpkg-dev"),
        ("apt-ftparchive", "apt-utils"),
        ("ssh-keygen", "openssh-client"),
    ];
    let _ = config;
    // /proc/swaps is not namespaced: every node would see the host's swap, and the boot
    // scripts' `swapoff -a` (as root in the container) would act on it.
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    if swaps.lines().count() > 1 {
        return Err(LabError::Config(
            "this machine has swap on, which every lab node would see and whose boot script would switch it off: run the lab on a machine without swap (swapoff -a first)".into(),
        ));
    }
    for (program, package) in needed {
        if !sys::have_program(program) {
            return Err(LabError::MissingProgram { program: program.into(), package });
        }
    }
    Ok(())
}

/// Removes what an earlier lab left in `state_dir`: `lab.json`, `cluster/`, `mirror/`,
/// `gnupg/`, `packages/`, `mirror.log` and the node directories (`master<i>`, `worker<i>`);
/// nothing else. Runs after [`clean`], which unmounted the nodes' roots.
fn clear_state_dir(state_dir: &Path) -> Result<(), LabError> {
    let entries = fs::read_dir(state_dir).map_err(|source| LabError::Io {
        action: "list",
        path: state_dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let result = if name == "lab.json" || name == "mirror.log" {
            fs::remove_file(&path)
        } else if ["cluster", "mirror", "gnupg", "packages"].contains(&name.as_str())
            || is_lab_netns("x", &format!("x-{name}"))
        {
            fs::remove_dir_all(&path)
        } else {
            continue;
        };
        result.map_err(|source| LabError::Io { action: "remove", path, source })?;
    }
    Ok(())
}

/// Opens `path` for appending, as a process's standard error.
fn log_file(path: &Path) -> Result<fs::File, LabError> {
    fs::OpenOptions::new().create(true).append(true).open(path).map_err(|source| LabError::Io {
        action: "open",
        path: path.to_path_buf(),
        source,
    })
}

/// The last lines of a log, for an error message.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
    if tail.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        format!("{} says: {tail}", path.display())
    }
}

/// Starts `cmd` with a clean environment, no standard input or output, standard error to
/// `log`.
fn spawn(mut cmd: Command, log: fs::File) -> Result<Proc, LabError> {
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let child = cmd
        .spawn()
        .map_err(|e| LabError::Command { command: sys::command_line(&cmd), detail: format!("cannot start it: {e}") })?;
    Ok(Proc { pid: child.id(), child: Some(child) })
}

/// Whether the process has ended (reaping it when it is our child).
fn exited(proc: &mut Proc) -> bool {
    match &mut proc.child {
        Some(child) => !matches!(child.try_wait(), Ok(None)),
        None => !alive(proc.pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_names_addresses_and_links_by_role() {
        let mut config = LabConfig::new(2, 3, "/tmp/lab");
        config.subnet_base = [10, 251];
        config.prefix = "hk9".into();
        let nodes = plan(&config);
        let summary: Vec<String> = nodes
            .iter()
            .map(|n| format!("{} {} {} {}", n.name, n.address, n.netns, veth_name(&config.prefix, n)))
            .collect();
        assert_eq!(
            summary,
            [
                "master0 10.251.0.11 hk9-master0 hk9vm0",
                "master1 10.251.0.12 hk9-master1 hk9vm1",
                "worker0 10.251.1.11 hk9-worker0 hk9vw0",
                "worker1 10.251.1.12 hk9-worker1 hk9vw1",
                "worker2 10.251.1.13 hk9-worker2 hk9vw2",
            ]
        );
        let last = plan(&LabConfig::new(MAX_NODES_PER_ROLE, MAX_NODES_PER_ROLE, "/tmp/lab"));
        assert_eq!(last[MAX_NODES_PER_ROLE - 1].address, Ipv4Addr::new(10, 250, 0, 250));
        assert!(veth_name("hkhkhkhk", last.last().unwrap()).len() <= 15);
    }

    #[test]
    fn only_this_labs_names_are_cleaned() {
        assert!(is_lab_netns("hk", "hk-master0"));
        assert!(is_lab_netns("hk", "hk-worker239"));
        assert!(!is_lab_netns("hk", "hk9-master0"));
        assert!(!is_lab_netns("hk", "hk-master"));
        assert!(!is_lab_netns("hk", "hk-masterx"));
        assert!(!is_lab_netns("hk", "other"));
        assert!(is_lab_veth("hk", "hkvm0"));
        assert!(is_lab_veth("hk", "hkvw12"));
        assert!(!is_lab_veth("hk", "hk9vm0"));
        assert!(!is_lab_veth("hk", "hkbr0"));
        assert!(!is_lab_veth("hk", "eth0"));
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let ok = LabConfig::new(1, 0, "/tmp/lab");
        assert!(check_config(&ok).is_ok());
        type Change = fn(&mut LabConfig);
        let cases: [(&str, Change); 8] = [
            ("at most 240", |c| c.workers = 241),
            ("no nodes", |c| c.masters = 0),
            ("prefix", |c| c.prefix = "Hk".into()),
            ("prefix", |c| c.prefix = "toolongprefix".into()),
            ("bridge name", |c| c.bridge = "a-bridge-name-too-long".into()),
            ("bridge name", |c| c.bridge = "hkvm3".into()),
            ("login user", |c| c.login_user = SUDO_USER.into()),
            ("one public key line", |c| c.authorized_key = Some("a\nb".into())),
        ];
        for (expected, change) in cases {
            let mut config = ok.clone();
            change(&mut config);
            let err = check_config(&config).unwrap_err().to_string();
            assert!(err.starts_with("failed to start the lab: ") && err.contains(expected), "{err}");
        }
        let mut sudo = ok.clone();
        sudo.sudo_user = true;
        sudo.login_user = SUDO_USER.into();
        assert!(check_config(&sudo).is_ok());
    }
}
