//! A running lab: its nodes, their holder and sshd processes, and tearing it all down.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::image::{self, generate_host_key, pub_path, write, HOLDER, NODE_PATH};
use crate::sys::{self, alive, in_netns, kill, run, wait_for};
use crate::{parse_calls, Call, LabConfig, LabError, LabNode, Role, MAX_NODES_PER_ROLE, SUDO_USER};

/// The saved state of a lab, `state_dir/lab.json`: enough for another process to find,
/// inspect and tear down the lab (`cargo xtask lab status|down`).
#[derive(Serialize, Deserialize)]
struct Saved {
    config: LabConfig,
    nodes: Vec<LabNode>,
    sshd_pids: Vec<Option<u32>>,
}

/// A process the lab started: our child (reaped by us), or one found in `lab.json`.
struct Proc {
    pid: u32,
    child: Option<Child>,
}

/// The processes of one node.
struct NodeProcs {
    holder: Option<Proc>,
    sshd: Option<Proc>,
}

/// A running lab (see the crate documentation). Dropping it tears it down, as
/// [`Lab::down`] does; [`Lab::detach`] leaves it running instead.
pub struct Lab {
    config: LabConfig,
    nodes: Vec<LabNode>,
    procs: Mutex<Vec<NodeProcs>>,
    detached: bool,
}

impl Lab {
    /// Brings up a lab: cleans up what an earlier run with the same names left (network
    /// namespaces `<prefix>-master*|worker*`, links, the bridge, the state directory's
    /// entries), then creates the bridge, each node's namespace, veth pair, image and root,
    /// and starts each node's sshd, returning once every sshd listens. Saves
    /// `state_dir/lab.json`.
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
        image::mkdir(&config.state_dir.join("cluster"))?;

        let mut lab = Lab { nodes: plan(&config), procs: Mutex::new(Vec::new()), config, detached: false };
        lab.procs
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .extend(lab.nodes.iter().map(|_| NodeProcs { holder: None, sshd: None }));
        lab.create_network()?;
        for node in &lab.nodes {
            image::write_image(&lab.config, node, &lab.nodes)?;
        }
        // Every root at once, then every sshd at once: 50 nodes come up in seconds.
        for i in 0..lab.nodes.len() {
            let holder = lab.spawn_holder(&lab.nodes[i])?;
            lab.nodes[i].holder_pid = holder.pid;
            lab.procs_mut()[i].holder = Some(holder);
        }
        for i in 0..lab.nodes.len() {
            lab.wait_holder(i)?;
        }
        for i in 0..lab.nodes.len() {
            let sshd = lab.spawn_sshd(&lab.nodes[i])?;
            lab.procs_mut()[i].sshd = Some(sshd);
        }
        for i in 0..lab.nodes.len() {
            lab.wait_sshd(i)?;
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
        let path = state_dir.join("lab.json");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LabError::Io { action: "read", path, source }),
        };
        let saved: Saved = serde_json::from_str(&text).map_err(|source| LabError::State { path, source })?;
        let procs = saved
            .nodes
            .iter()
            .zip(saved.sshd_pids.iter().chain(std::iter::repeat(&None)))
            .map(|(node, sshd)| NodeProcs {
                holder: Some(Proc { pid: node.holder_pid, child: None }),
                sshd: sshd.map(|pid| Proc { pid, child: None }),
            })
            .collect();
        Ok(Some(Lab { config: saved.config, nodes: saved.nodes, procs: Mutex::new(procs), detached: false }))
    }

    /// The configuration the lab runs with (its `state_dir` made absolute).
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// The nodes: masters first, then workers, each in index order.
    pub fn nodes(&self) -> &[LabNode] {
        &self.nodes
    }

    /// The node called `name`. Errors: [`LabError::UnknownNode`].
    pub fn node(&self, name: &str) -> Result<&LabNode, LabError> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| LabError::UnknownNode(name.to_string()))
    }

    /// The cluster definition of this lab; see [`definition`].
    pub fn definition(&self) -> serde_json::Value {
        definition_of(&self.config, &self.nodes)
    }

    /// PID of `node`'s sshd, `None` while it is stopped. Errors: [`LabError::UnknownNode`].
    pub fn sshd_pid(&self, node: &str) -> Result<Option<u32>, LabError> {
        let i = self.index(node)?;
        Ok(self.procs_mut()[i].sshd.as_ref().map(|p| p.pid))
    }

    /// Stops `node`'s sshd (SIGKILL to its PID, then waits for it to end): new connections
    /// are refused; established sessions go on. Nothing happens when it is stopped already.
    ///
    /// Errors: [`LabError::UnknownNode`], [`LabError::Stuck`], [`LabError::Io`] saving
    /// `lab.json`.
    pub fn stop_sshd(&self, node: &str) -> Result<(), LabError> {
        let i = self.index(node)?;
        let sshd = self.procs_mut()[i].sshd.take();
        if let Some(proc) = sshd {
            stop(proc, &self.nodes[i].netns)?;
        }
        self.save()
    }

    /// Starts `node`'s sshd again, if it is stopped, and waits until it listens; its PID.
    ///
    /// Errors: [`LabError::UnknownNode`], [`LabError::Start`] when sshd does not come up.
    pub fn start_sshd(&self, node: &str) -> Result<u32, LabError> {
        let i = self.index(node)?;
        if let Some(pid) = self.procs_mut()[i].sshd.as_ref().map(|p| p.pid) {
            return Ok(pid);
        }
        let sshd = self.spawn_sshd(&self.nodes[i])?;
        let pid = sshd.pid;
        self.procs_mut()[i].sshd = Some(sshd);
        self.wait_sshd(i)?;
        self.save()?;
        Ok(pid)
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
        for node in &self.nodes {
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
    /// `/proc/<holder pid>/root/<path>`. Valid while the lab is up. Errors:
    /// [`LabError::UnknownNode`].
    pub fn node_file(&self, node: &str, path: impl AsRef<Path>) -> Result<PathBuf, LabError> {
        let path = path.as_ref();
        Ok(self.node(node)?.root().join(path.strip_prefix("/").unwrap_or(path)))
    }

    /// A command that runs `program` on `node` without SSH: in the node's namespaces and
    /// root (`nsenter --target <holder> --mount --net --uts --root --wd`), as root, with a
    /// clean environment (`PATH` with the stand-ins first, `HOME=/root`). Add arguments,
    /// then run it. Errors: [`LabError::UnknownNode`].
    pub fn command(&self, node: &str, program: &str) -> Result<Command, LabError> {
        let node = self.node(node)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(node.holder_pid.to_string())
            .args(["--mount", "--net", "--uts", "--root", "--wd", "--", program])
            .env_clear()
            .env("PATH", NODE_PATH)
            .env("HOME", "/root")
            .env("LC_ALL", "C");
        Ok(cmd)
    }

    /// Tears the lab down: kills every process in each node's network namespace by PID
    /// (holder, sshd, sessions, anything a script left running) and waits for them to end,
    /// which also removes every mount of the node; deletes the namespaces, veth pairs and
    /// bridge, and `lab.json`. The state directory's files stay for inspection (the next
    /// `up` replaces them). Running it again, or on a lab already down, does nothing.
    ///
    /// Errors: [`LabError::Stuck`] when processes survive SIGKILL for 5 s, or `ip` failing.
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
        let procs = std::mem::take(self.procs.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut first_error = None;
        for (node, procs) in self.nodes.iter().zip(procs) {
            for proc in [procs.sshd, procs.holder].into_iter().flatten() {
                if let Err(e) = stop(proc, &node.netns) {
                    first_error.get_or_insert(e);
                }
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
        self.nodes.iter().position(|n| n.name == node).ok_or_else(|| LabError::UnknownNode(node.to_string()))
    }

    fn procs_mut(&self) -> MutexGuard<'_, Vec<NodeProcs>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self) -> Result<(), LabError> {
        let saved = Saved {
            config: self.config.clone(),
            nodes: self.nodes.clone(),
            sshd_pids: self.procs_mut().iter().map(|p| p.sshd.as_ref().map(|p| p.pid)).collect(),
        };
        let text = serde_json::to_string_pretty(&saved)
            .map_err(|source| LabError::State { path: self.config.state_dir.join("lab.json"), source })?;
        write(&self.config.state_dir.join("lab.json"), 0o644, text.as_bytes())
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
        for node in &self.nodes {
            let veth = veth_name(&c.prefix, node);
            root.push_str(&format!(
                "netns add {ns}\nlink add {veth} type veth peer name eth0 netns {ns}\nlink set {veth} master {bridge} up\n",
                ns = node.netns,
                bridge = c.bridge
            ));
        }
        sys::ip_batch(None, &root)?;
        for node in &self.nodes {
            sys::ip_batch(
                Some(&node.netns),
                &format!("addr add {}/16 dev eth0\nlink set eth0 up\nlink set lo up\n", node.address),
            )?;
        }
        Ok(())
    }

    /// Starts `node`'s holder: holder.sh in the node's network namespace and a new mount and
    /// UTS namespace, which builds the root and then execs into `sleep infinity` there.
    fn spawn_holder(&self, node: &LabNode) -> Result<Proc, LabError> {
        let script = node.dir.join("holder.sh");
        write(&script, 0o644, HOLDER.as_bytes())?;
        let log = log_file(&node.dir.join("holder.log"))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", node.netns))
            .args(["--", "unshare", "--mount", "--uts", "--propagation", "private", "--", "bash"])
            .arg(&script)
            .arg(&node.dir)
            .arg(&node.name)
            .arg(self.config.state_dir.join("cluster"))
            .arg(if self.config.sudo_user { SUDO_USER } else { "" });
        spawn(cmd, log)
    }

    /// Waits until node `i`'s holder has become `sleep` (its root is complete).
    fn wait_holder(&self, i: usize) -> Result<(), LabError> {
        let node = &self.nodes[i];
        let mut procs = self.procs_mut();
        let proc = procs[i].holder.as_mut().expect("up spawned every holder before waiting");
        let ready = wait_for(|| {
            exited(proc) || fs::read_to_string(format!("/proc/{}/comm", proc.pid)).is_ok_and(|c| c.trim() == "sleep")
        });
        if ready && !exited(proc) {
            return Ok(());
        }
        let detail = if ready { "holder.sh failed" } else { "holder.sh did not finish within 10 s" };
        Err(LabError::Start {
            node: node.name.clone(),
            what: "the root file system",
            detail: format!("{detail}: {}", log_tail(&node.dir.join("holder.log"))),
        })
    }

    /// Starts `node`'s sshd in the node's namespaces and root, in the foreground (-D),
    /// logging to `sshd.log`.
    fn spawn_sshd(&self, node: &LabNode) -> Result<Proc, LabError> {
        let log = log_file(&node.dir.join("sshd.log"))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(node.holder_pid.to_string())
            .args(["--mount", "--net", "--uts", "--root", "--wd", "--"])
            .args(["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/sshd_config"]);
        spawn(cmd, log)
    }

    /// Waits until node `i`'s sshd listens on port 22.
    fn wait_sshd(&self, i: usize) -> Result<(), LabError> {
        let node = &self.nodes[i];
        let mut procs = self.procs_mut();
        let proc = procs[i].sshd.as_mut().expect("sshd was spawned before waiting");
        let ready = wait_for(|| exited(proc) || sys::listening(proc.pid, 22));
        if ready && !exited(proc) {
            return Ok(());
        }
        let detail = if ready { "sshd exited" } else { "sshd did not listen within 10 s" };
        let detail = format!("{detail}: {}", log_tail(&node.dir.join("sshd.log")));
        if let Some(proc) = procs[i].sshd.take() {
            let _ = stop(proc, &node.netns);
        }
        Err(LabError::Start { node: node.name.clone(), what: "sshd", detail })
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

/// Tears down everything named by `config` (its prefix and bridge): the processes in the
/// namespaces `<prefix>-master<i>` / `<prefix>-worker<i>` (SIGKILL by PID, then wait), the
/// namespaces, links `<prefix>v<m|w><i>` and the bridge. For the leftovers of a lab whose
/// process crashed; [`Lab::up`] does it first, [`Lab::down`] last. Touches nothing else.
///
/// Errors: [`LabError::Stuck`], or `ip` failing.
pub fn clean(config: &LabConfig) -> Result<(), LabError> {
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
/// configuration, hostKeyPolicy `strict`, the stand-ins' Kubernetes version and
/// nodeNetworkCIDR `A.B.0.0/16`. Add or change fields (etcd, hooks, ...) as a test needs.
///
/// Errors: [`LabError`] when `config` asks for more nodes than a lab holds.
pub fn definition(config: &LabConfig) -> Result<serde_json::Value, LabError> {
    check_config(config)?;
    Ok(definition_of(config, &plan(config)))
}

fn definition_of(config: &LabConfig, nodes: &[LabNode]) -> serde_json::Value {
    let of_role = |role: Role| {
        nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| json!({ "nodeName": n.name, "privateIP": n.address.to_string() }))
            .collect::<Vec<_>>()
    };
    json!({
        "clusterName": "lab",
        "masterLoadBalancerAddress": config.load_balancer().to_string(),
        "sshLoginUser": config.login_user,
        "hostKeyPolicy": "strict",
        "kubernetesVersion": config.kubernetes_version,
        "nodeNetworkCIDR": config.network(),
        "masters": of_role(Role::Master),
        "workers": of_role(Role::Worker),
    })
}

/// The nodes `config` asks for, with their names, addresses and directories (no holder yet).
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
            holder_pid: 0,
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
    let mut needed = vec![
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("chroot", "coreutils"),
        ("bash", "bash"),
        ("/usr/sbin/sshd", "openssh-server"),
        ("ssh-keygen", "openssh-client"),
    ];
    if config.sudo_user {
        needed.push(("/usr/bin/sudo", "sudo"));
    }
    for (program, package) in needed {
        if !sys::have_program(program) {
            return Err(LabError::MissingProgram { program: program.into(), package });
        }
    }
    Ok(())
}

/// Removes what an earlier lab left in `state_dir`: `lab.json`, `cluster/` and the node
/// directories (`master<i>`, `worker<i>`); nothing else.
fn clear_state_dir(state_dir: &Path) -> Result<(), LabError> {
    let entries = fs::read_dir(state_dir).map_err(|source| LabError::Io {
        action: "list",
        path: state_dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let result = if name == "lab.json" {
            fs::remove_file(&path)
        } else if name == "cluster" || is_lab_netns("x", &format!("x-{name}")) {
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

/// Stops a lab process by PID: SIGKILL, then wait for it (reaping our own child). A PID from
/// `lab.json` is only signalled while it is still in the node's network namespace, so a
/// reused PID is never hit.
fn stop(mut proc: Proc, netns: &str) -> Result<(), LabError> {
    match proc.child.as_mut() {
        Some(child) => {
            let _ = child.kill();
            child.wait().map(|_| ()).map_err(|source| LabError::Io {
                action: "wait for",
                path: PathBuf::from(format!("/proc/{}", proc.pid)),
                source,
            })
        }
        None => {
            if alive(proc.pid) && in_netns(proc.pid, netns) {
                kill(proc.pid);
            }
            if wait_for(|| !alive(proc.pid) || !in_netns(proc.pid, netns)) {
                Ok(())
            } else {
                Err(LabError::Stuck { netns: netns.to_string(), pids: vec![proc.pid] })
            }
        }
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
