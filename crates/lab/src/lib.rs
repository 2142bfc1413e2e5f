//! hakube's local test lab: real Debian machines on this machine, at an air-gapped site.
//!
//! Each lab node is
//! - a `systemd-nspawn` container booted (`-b`) from a Debian root file system that the lab
//!   builds with `debootstrap` and caches ([`image`]), with systemd as PID 1, its own
//!   hostname and machine id, and its own writable overlay layer over the shared image;
//! - a network namespace `<prefix>-<node>` with one address on a bridge in the root
//!   namespace (masters `A.B.0.(11+i)`, workers `A.B.1.(11+i)`, the bridge `A.B.0.1/16`; no
//!   default route, so a node reaches lab addresses and loopback only);
//! - Debian's own sshd, sudo, apt, dpkg, systemctl, sysctl, curl and gpg, and whatever the
//!   boot scripts install (containerd, etcd) from the lab's mirror ([`mirror`]): an apt
//!   repository of Debian's packages and the Kubernetes package repository's layout, on the
//!   bridge;
//! - stand-ins only for what cannot run here: `kubeadm`, `kubelet` and `kubectl` (installed
//!   as real `.deb` packages from the mirror) and kernel module loading (`modprobe`), which
//!   record every call in `/var/log/hakube-lab/calls.log` of the node (see [`Call`] and
//!   crates/lab/README.md).
//!
//! Every process of the lab is started, and stopped, by PID; [`Lab`]'s `Drop` tears the lab
//! down. Root is required (namespaces, mounts, containers).

#![deny(missing_docs)]

mod calls;
pub mod containerd;
mod faults;
pub mod image;
mod lab;
pub mod mirror;
pub mod network;
mod node;
mod sys;

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use calls::{parse_calls, Call};
pub use faults::{Fault, FaultAction, FAULTS_FILE, KUBECTL_FAULTS};
pub use hakube_cluster::Role;
pub use lab::{clean, definition, Lab};
pub use mirror::{MODPROBE, PACKAGED_STANDINS, STANDIN_LIBRARY};
use serde::{Deserialize, Serialize};

/// The non-root login user a lab creates when [`LabConfig::sudo_user`] is set: passwordless
/// `sudo`, the same authorized key as root.
pub const SUDO_USER: &str = "hakube";

/// The most masters, and the most workers, one lab holds (addresses `.11` to `.250`).
pub const MAX_NODES_PER_ROLE: usize = 240;

/// The Debian release lab nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distro {
    /// Debian 12 "bookworm" (the default).
    #[default]
    Debian12,
    /// Debian 13 "trixie".
    Debian13,
}

impl Distro {
    /// Every distribution the lab has an image recipe for.
    pub const ALL: [Distro; 2] = [Distro::Debian12, Distro::Debian13];

    /// `debian12`, `debian13`: the name `--distro` takes.
    pub fn name(self) -> &'static str {
        match self {
            Distro::Debian12 => "debian12",
            Distro::Debian13 => "debian13",
        }
    }

    /// Debian's suite (code name): `bookworm`, `trixie`.
    pub fn suite(self) -> &'static str {
        match self {
            Distro::Debian12 => "bookworm",
            Distro::Debian13 => "trixie",
        }
    }
}

impl std::str::FromStr for Distro {
    type Err = LabError;

    /// `debian12` or `debian13`; errors name the choices.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Distro::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| LabError::Config(format!("unknown distro {s:?}: choose debian12 or debian13")))
    }
}

/// Where images are cached unless [`LabConfig::image_cache`] says otherwise:
/// `target/lab-images` of this workspace.
pub fn default_image_cache() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/lab-images"))
}

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
    /// The `kubernetesVersion` of [`Lab::definition`]: one of
    /// [`mirror::KUBERNETES_VERSIONS`], whose stand-in packages the mirror serves. Default
    /// `1.36.4`.
    pub kubernetes_version: String,
    /// The Debian release of every node. Default Debian 12.
    pub distro: Distro,
    /// `hooks.networkProvider` of [`Lab::definition`]: `calico`, `cilium`, `flannel` or
    /// `weave`, whose files the mirror serves and the definition pins. Default `calico`.
    #[serde(default = "default_network_provider")]
    pub network_provider: String,
    /// Where built images are cached (one directory per distribution and recipe). Default
    /// [`default_image_cache`].
    pub image_cache: PathBuf,
}

fn default_network_provider() -> String {
    "calico".into()
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
            distro: Distro::Debian12,
            network_provider: default_network_provider(),
            image_cache: default_image_cache(),
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

    /// The mirror's base URL, `http://A.B.0.1` (the bridge address, port 80).
    pub fn mirror_url(&self) -> String {
        format!("http://{}", self.gateway())
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
    /// The node's directory under the state directory: `upper/` and `work/` (its overlay
    /// layer), `root/` (the overlay, mounted on the host while the lab is up: the node's `/`),
    /// `console.log` (what the container printed).
    pub dir: PathBuf,
    /// PID of the node's `systemd-nspawn` process (0 while it is not running).
    pub nspawn_pid: u32,
    /// PID, as the host sees it, of the node's PID 1 (its systemd); 0 while not running.
    pub leader_pid: u32,
}

impl LabNode {
    /// The node's root directory as the host sees it: `dir/root`, the overlay of the image
    /// and the node's own layer. Valid while the lab is up.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab needs root: network namespaces, mounts.
    #[error("failed to start the lab: it needs root (network namespaces, mounts, containers); run it as root")]
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
    /// A node, its sshd or the mirror did not come up.
    #[error("failed to start {what} of lab node {node}: {detail}")]
    Start {
        /// The node.
        node: String,
        /// `the container`, `sshd`, `the mirror`.
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
