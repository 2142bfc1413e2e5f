//! A node's image: the files copied into its overlay's upper layer before it starts.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys::run;
use crate::{LabConfig, LabError, LabNode, SUDO_USER};

/// The stand-ins, as `(command name, bash script)`: each is installed as
/// `/usr/local/sbin/<name>` (mode 0755) in every node's image, and only there. They source
/// [`STANDIN_LIBRARY`]. crates/lab/README.md says what each one does and records.
pub const STANDINS: &[(&str, &str)] = &[
    ("apt-cache", include_str!("../standins/apt-cache")),
    ("apt-get", include_str!("../standins/apt-get")),
    ("apt-mark", include_str!("../standins/apt-mark")),
    ("containerd", include_str!("../standins/containerd")),
    ("curl", include_str!("../standins/curl")),
    ("dnf", include_str!("../standins/dnf")),
    ("dpkg-query", include_str!("../standins/dpkg-query")),
    ("etcd", include_str!("../standins/etcd")),
    ("etcdctl", include_str!("../standins/etcdctl")),
    ("gpg", include_str!("../standins/gpg")),
    ("hostnamectl", include_str!("../standins/hostnamectl")),
    ("kubeadm", include_str!("../standins/kubeadm")),
    ("kubectl", include_str!("../standins/kubectl")),
    ("kubelet", include_str!("../standins/kubelet")),
    ("modprobe", include_str!("../standins/modprobe")),
    ("swapoff", include_str!("../standins/swapoff")),
    ("swapon", include_str!("../standins/swapon")),
    ("sysctl", include_str!("../standins/sysctl")),
    ("systemctl", include_str!("../standins/systemctl")),
    ("update-ca-certificates", include_str!("../standins/update-ca-certificates")),
];

/// The library every stand-in sources, installed as
/// `/usr/local/lib/hakube-lab/standin-lib.sh`: the call record, and the state the stand-ins
/// share (packages, units, the lab's cluster).
pub const STANDIN_LIBRARY: &str = include_str!("../standins/standin-lib.sh");

/// The cilium CLI stand-in: not on PATH; the curl stand-in serves it inside the dummy
/// `cilium-linux-*.tar.gz`.
const CILIUM: &str = include_str!("../standins/cilium");

/// The script that builds a node's root and becomes its holder process.
pub(crate) const HOLDER: &str = include_str!("holder.sh");

/// `PATH` on a node: the stand-ins' directory first.
pub(crate) const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Writes `node`'s image under `node.dir/image`, with the host key (from the assets or
/// fresh) and the configuration of sshd. `all` is every node of the lab (for /etc/hosts).
pub(crate) fn write_image(config: &LabConfig, node: &LabNode, all: &[LabNode]) -> Result<(), LabError> {
    let image = node.dir.join("image");
    let file = |path: &str, mode: u32, content: &str| write(&image.join(path), mode, content.as_bytes());

    for (name, script) in STANDINS {
        file(&format!("usr/local/sbin/{name}"), 0o755, script)?;
    }
    file("usr/local/lib/hakube-lab/standin-lib.sh", 0o644, STANDIN_LIBRARY)?;
    file("usr/local/lib/hakube-lab/archive/cilium", 0o755, CILIUM)?;
    file(
        "etc/hakube-lab/kubernetes-version",
        0o644,
        &format!("{}\n", config.kubernetes_version.trim_start_matches('v')),
    )?;
    file(
        "etc/hakube-lab/node",
        0o644,
        &format!("NAME={}\nROLE={}\nADDRESS={}\n", node.name, node.role.as_str(), node.address),
    )?;
    file("var/log/hakube-lab/calls.log", 0o666, "")?;
    mkdir(&image.join("var/lib/hakube-lab/cluster"))?;

    file("etc/hostname", 0o644, &format!("{}\n", node.name))?;
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for other in all {
        hosts.push_str(&format!("{}\t{}\n", other.address, other.name));
    }
    file("etc/hosts", 0o644, &hosts)?;
    // The test machine's root dotfiles would prepend its own PATH entries.
    let profile =
        format!("# hakube lab node {}: root's shell setup (lab node image)\nexport PATH={NODE_PATH}\n", node.name);
    file("root/.bashrc", 0o644, &profile)?;
    file("root/.profile", 0o644, &profile)?;
    let root_home = image.join("root");
    fs::set_permissions(&root_home, fs::Permissions::from_mode(0o700)).map_err(|source| LabError::Io {
        action: "set the mode of",
        path: root_home,
        source,
    })?;

    file("etc/ssh/sshd_config", 0o644, &sshd_config(node))?;
    let key = image.join("etc/ssh/ssh_host_ed25519_key");
    match &config.host_keys {
        Some(assets) => {
            let dir = assets.join("ssh/host-keys").join(&node.name);
            for (name, mode) in [("ssh_host_ed25519_key", 0o600), ("ssh_host_ed25519_key.pub", 0o644)] {
                let from = dir.join(name);
                let bytes = fs::read(&from).map_err(|source| LabError::Io {
                    action: "read the host key",
                    path: from,
                    source,
                })?;
                write(&image.join("etc/ssh").join(name), mode, &bytes)?;
            }
        }
        None => generate_host_key(&key, &node.name)?,
    }
    let users: &[&str] = if config.sudo_user { &["root", SUDO_USER] } else { &["root"] };
    for user in users {
        let keys = config.authorized_key.as_deref().map(|k| format!("{}\n", k.trim())).unwrap_or_default();
        file(&format!("etc/ssh/authorized_keys/{user}"), 0o644, &keys)?;
    }
    if config.sudo_user {
        file(
            &format!("etc/sudoers.d/{SUDO_USER}"),
            0o440,
            &format!("# hakube lab node image: passwordless sudo for the login user\n{SUDO_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"),
        )?;
    }
    Ok(())
}

/// The node's sshd configuration: the node's address only, its ed25519 host key, keys only
/// (root without password), and the stand-ins first in PATH for every session.
fn sshd_config(node: &LabNode) -> String {
    format!(
        "# hakube lab node {name} (lab node image, written by hakube-lab)\n\
         ListenAddress {address}:22\n\
         HostKey /etc/ssh/ssh_host_ed25519_key\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         AuthorizedKeysFile /etc/ssh/authorized_keys/%u .ssh/authorized_keys\n\
         SetEnv PATH={NODE_PATH}\n\
         PidFile none\n\
         PrintMotd no\n\
         Subsystem sftp /usr/lib/openssh/sftp-server\n",
        name = node.name,
        address = node.address,
    )
}

/// A fresh ed25519 host key at `path` (and `path.pub`), by ssh-keygen.
pub(crate) fn generate_host_key(path: &Path, node: &str) -> Result<(), LabError> {
    for p in [path.to_path_buf(), pub_path(path)] {
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(LabError::Io { action: "remove", path: p, source: e })
            }
            _ => {}
        }
    }
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("root@{node}"))
        .arg("-f")
        .arg(path))?;
    Ok(())
}

/// `path` with `.pub` appended.
pub(crate) fn pub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Creates `path` (and its parents) with mode 0755.
pub(crate) fn mkdir(path: &Path) -> Result<(), LabError> {
    fs::DirBuilder::new().recursive(true).mode(0o755).create(path).map_err(|source| LabError::Io {
        action: "create the directory",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `path` with exactly `mode`, creating its parent directories (0755).
pub(crate) fn write(path: &Path, mode: u32, content: &[u8]) -> Result<(), LabError> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    fs::write(path, content).map_err(|source| LabError::Io { action: "write", path: path.to_path_buf(), source })?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| LabError::Io {
        action: "set the mode of",
        path: path.to_path_buf(),
        source,
    })
}
