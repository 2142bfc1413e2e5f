//! hakube's local test lab: test hosts on this machine for the install phase.
//!
//! Each lab node is
//! - a network namespace `<prefix>-<node>` with one address on a bridge in the root
//!   namespace (masters `A.B.0.(11+i)`, workers `A.B.1.(11+i)`, the bridge `A.B.0.1/16`; no
//!   default route, so a node reaches lab addresses and loopback only);
//! - a mount and UTS namespace of its own, whose root is an overlay: the test machine's `/`
//!   as the read-only lower layer, an upper layer under `state_dir/<node>/layers/` that
//!   receives every write made on the node, plus fresh `/proc`, `/sys` (read-only), `/dev`
//!   (bound), `/run` and `/tmp` (tmpfs). None of these mounts is visible outside the node;
//!   the host reaches the node's files through `/proc/<holder pid>/root`;
//! - a real OpenSSH `sshd` listening on the node's address, port 22, with its own
//!   configuration and ed25519 host key;
//! - stand-ins for what cannot run here (kubeadm, kubelet, systemctl, package managers,
//!   curl, ...): bash scripts first in `PATH` (`/usr/local/sbin`) that record every call in
//!   `/var/log/hakube-lab/calls.log` of the node (see [`Call`] and crates/lab/README.md).
//!
//! Every process of a node is started, and stopped, by PID; [`Lab`]'s `Drop` tears the lab
//! down. Root is required (namespaces, mounts).

#![deny(missing_docs)]

mod calls;
mod image;
mod lab;
mod sys;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use calls::{parse_calls, Call};
pub use hakube_cluster::Role;
pub use image::{STANDINS, STANDIN_LIBRARY};
pub use lab::{clean, definition, Lab};
use serde::{Deserialize, Serialize};

/// The non-root login user a lab creates when [`LabConfig::sudo_user`] is set: passwordless
/// `sudo`, the same authorized key as root.
pub const SUDO_USER: &str = "hakube";

/// The most masters, and the most workers, one lab holds (addresses `.11` to `.250`).
pub const MAX_NODES_PER_ROLE: usize = 240;

/// What lab to bring up. [`LabConfig::new`] gives the defaults `cargo xtask lab` uses;
/// tests running at the same time as another lab need their own `prefix`, `bridge` and
/// `subnet_base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabConfig {
    /// Number of masters, `master0` .. `master<N-1>`; at most [`MAX_NODES_PER_ROLE`].
    pub masters: usize,
    /// Number of workers, `worker0` .. `worker<M-1>`; at most [`MAX_NODES_PER_ROLE`].
    pub workers: usize,
    /// Where the lab keeps its files: `lab.json` (what is running, for `attach`), `cluster/`
    /// (the stand-ins' shared cluster state) and `<node>/` (image, overlay layers, logs).
    /// `up` replaces these entries and nothing else in the directory.
    pub state_dir: PathBuf,
    /// Names of this lab's network objects: namespaces `<prefix>-<node>`, host-side veth
    /// ends `<prefix>v<m|w><i>`. 1 to 8 characters of `[a-z0-9]`. Default `hk`.
    pub prefix: String,
    /// Name of the bridge in the root namespace, at most 15 characters. Default `hkbr0`.
    pub bridge: String,
    /// The first two octets of the lab's /16 network. Default `[10, 250]`.
    pub subnet_base: [u8; 2],
    /// `sshLoginUser` of [`Lab::definition`]: `root`, or [`SUDO_USER`] (which needs
    /// `sudo_user`). Default `root`.
    pub login_user: String,
    /// A public key line (`ssh-ed25519 AAAA... comment`) authorized for root (and
    /// [`SUDO_USER`]) on every node.
    pub authorized_key: Option<String>,
    /// An assets directory whose `ssh/host-keys/<node>/ssh_host_ed25519_key{,.pub}` become
    /// the nodes' host keys (render's layout); unset: each node gets a fresh key.
    pub host_keys: Option<PathBuf>,
    /// Also create the user [`SUDO_USER`] with passwordless sudo on every node (needs the
    /// test machine's `sudo`, Debian package `sudo`).
    pub sudo_user: bool,
    /// The Kubernetes version (`MAJOR.MINOR.PATCH`) the kubeadm/kubelet/kubectl stand-ins
    /// report until a package manager stand-in installs a specific version. Default `1.36.4`.
    pub kubernetes_version: String,
}

impl LabConfig {
    /// A lab of `masters` masters and `workers` workers in `state_dir`, with the defaults:
    /// prefix `hk`, bridge `hkbr0`, network 10.250.0.0/16, login user root, no authorized
    /// key, fresh host keys, no sudo user, Kubernetes 1.36.4.
    pub fn new(masters: usize, workers: usize, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            masters,
            workers,
            state_dir: state_dir.into(),
            prefix: "hk".into(),
            bridge: "hkbr0".into(),
            subnet_base: [10, 250],
            login_user: "root".into(),
            authorized_key: None,
            host_keys: None,
            sudo_user: false,
            kubernetes_version: hakube_cluster::definition::DEFAULT_KUBERNETES_VERSION.into(),
        }
    }

    /// The bridge's address, the lab's gateway on the host: `A.B.0.1`.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b] = self.subnet_base;
        Ipv4Addr::new(a, b, 0, 1)
    }

    /// The `masterLoadBalancerAddress` of [`Lab::definition`]: `A.B.0.10`. Nothing listens
    /// there (kubeadm is a stand-in).
    pub fn load_balancer(&self) -> Ipv4Addr {
        let [a, b] = self.subnet_base;
        Ipv4Addr::new(a, b, 0, 10)
    }

    /// The lab's network in CIDR notation: `A.B.0.0/16`.
    pub fn network(&self) -> String {
        let [a, b] = self.subnet_base;
        format!("{a}.{b}.0.0/16")
    }
}

/// One node of a running lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNode {
    /// `master<i>` or `worker<i>`; also the node's hostname.
    pub name: String,
    /// Master or worker.
    pub role: Role,
    /// The node's address (its privateIP in [`Lab::definition`]); sshd listens on port 22.
    pub address: Ipv4Addr,
    /// The node's network namespace (`ip netns`), `<prefix>-<name>`.
    pub netns: String,
    /// The node's directory under the state directory: `image/` (what was copied into the
    /// upper layer), `layers/` (the overlay's upper and work directories, unless they had to
    /// go to a tmpfs), `sshd.log`, `holder.log`.
    pub dir: PathBuf,
    /// PID of the node's holder process (`sleep infinity` chrooted into the node's root),
    /// which keeps the node's namespaces alive.
    pub holder_pid: u32,
}

impl LabNode {
    /// The node's root directory as the host sees it: `/proc/<holder pid>/root` (the overlay
    /// exists only in the node's mount namespace). Valid while the lab is up.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder_pid))
    }
}

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab needs root: network namespaces, mounts.
    #[error("failed to start the lab: it needs root (network namespaces and mounts); run it as root")]
    NotRoot,
    /// A program the lab runs is not installed.
    #[error("failed to start the lab: {program} is missing (Debian package {package})")]
    MissingProgram {
        /// The program, e.g. `/usr/sbin/sshd`.
        program: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// The [`LabConfig`] cannot work.
    #[error("failed to start the lab: {0}")]
    Config(String),
    /// A file operation failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What was being done, e.g. `write`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A command could not be started, or failed.
    #[error("failed to run {command}: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Why: the start error, or the exit status and standard error.
        detail: String,
    },
    /// A node's holder or sshd did not come up.
    #[error("failed to start {what} of lab node {node}: {detail}")]
    Start {
        /// The node.
        node: String,
        /// `the root file system` or `sshd`.
        what: &'static str,
        /// What happened, with the end of the process's log.
        detail: String,
    },
    /// Processes of a node did not end after SIGKILL.
    #[error("failed to stop the processes of lab namespace {netns}: still running after 5 s: {pids:?}")]
    Stuck {
        /// The node's network namespace.
        netns: String,
        /// The PIDs still there.
        pids: Vec<u32>,
    },
    /// No node of this lab has that name.
    #[error("failed to find lab node {0}")]
    UnknownNode(String),
    /// A line of a node's call log does not have the stand-ins' format.
    #[error("failed to parse line {line} of lab node {node}'s call log: {text:?}")]
    CallLog {
        /// The node.
        node: String,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// The saved lab state (`lab.json`) does not parse.
    #[error("failed to read the lab state {path}: {source}")]
    State {
        /// The `lab.json` file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}
