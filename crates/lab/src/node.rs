//! One node: its overlay root over the image, what the lab writes into it before it boots,
//! and the `systemd-nspawn` command that boots it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::{generate_host_key, mkdir, write, Image};
use crate::mirror::{Mirror, MODPROBE, NODE_KEYRING, STANDIN_LIBRARY};
use crate::sys::run;
use crate::{LabConfig, LabError, LabNode, SUDO_USER};

/// Where the lab's shared cluster state (what the API server and etcd would hold, for the
/// stand-ins) is bound into every node.
pub(crate) const NODE_CLUSTER_DIR: &str = "/var/lib/hakube-lab/cluster";

/// `PATH` for commands the lab runs on a node without SSH: Debian's root PATH (the same as
/// sudo's `secure_path`).
pub(crate) const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Mounts `node`'s root: an overlay whose lower layer is the image's root file system and
/// whose upper layer, `node.dir/upper`, receives every write the node makes (and keeps it
/// across reboots of the node). An existing layer is kept.
pub(crate) fn mount_root(node: &LabNode, image: &Image) -> Result<(), LabError> {
    let (upper, work, root) = (node.dir.join("upper"), node.dir.join("work"), node.root());
    for dir in [&upper, &work, &root] {
        mkdir(dir)?;
    }
    run(Command::new("mount")
        .args(["-t", "overlay"])
        .arg(format!("hakube-lab-{}", node.name))
        .arg("-o")
        .arg(format!("lowerdir={},upperdir={},workdir={}", image.rootfs.display(), upper.display(), work.display()))
        .arg(&root))?;
    Ok(())
}

/// Writes what makes `node` a machine of its own and of this site into its root, before its
/// first boot: hostname, `/etc/hosts` (every lab node; the site has no DNS), a machine id,
/// the host key (render's, from [`LabConfig::host_keys`], or fresh), the authorized login
/// key, the sudo user, the apt sources (the lab's mirror only, trusted through its key),
/// the stand-in library and `modprobe`, the empty call log.
pub(crate) fn customize(config: &LabConfig, node: &LabNode, all: &[LabNode], mirror: &Mirror) -> Result<(), LabError> {
    let root = node.root();
    let file = |path: &str, mode: u32, content: &[u8]| write(&root.join(path), mode, content);

    file("etc/hostname", 0o644, format!("{}\n", node.name).as_bytes())?;
    let mut hosts =
        format!("127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n", node.name);
    for other in all {
        hosts.push_str(&format!("{}\t{}\n", other.address, other.name));
    }
    file("etc/hosts", 0o644, hosts.as_bytes())?;
    let id = fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map_err(|source| LabError::Io { action: "read", path: "/proc/sys/kernel/random/uuid".into(), source })?
        .trim()
        .replace('-', "");
    file("etc/machine-id", 0o444, format!("{id}\n").as_bytes())?;

    let key = root.join("etc/ssh/ssh_host_ed25519_key");
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
                write(&root.join("etc/ssh").join(name), mode, &bytes)?;
            }
        }
        None => generate_host_key(&key, &node.name)?,
    }
    // Debian's sshd_config includes sshd_config.d/*.conf first: keys only, this host key.
    file(
        "etc/ssh/sshd_config.d/hakube-lab.conf",
        0o644,
        b"# hakube lab node: keys only, one ed25519 host key\nHostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
    )?;
    let authorized = config.authorized_key.as_deref().map(|k| format!("{}\n", k.trim())).unwrap_or_default();
    file("root/.ssh/authorized_keys", 0o600, authorized.as_bytes())?;
    set_mode(&root.join("root/.ssh"), 0o700)?;
    set_mode(&root.join("root"), 0o700)?;
    if config.sudo_user {
        run(Command::new("chroot").arg(&root).args(["useradd", "--create-home", "--shell", "/bin/bash", SUDO_USER]))?;
        let home = format!("home/{SUDO_USER}");
        file(&format!("{home}/.ssh/authorized_keys"), 0o600, authorized.as_bytes())?;
        set_mode(&root.join(&home).join(".ssh"), 0o700)?;
        run(Command::new("chroot")
            .arg(&root)
            .args(["chown", "-R"])
            .arg(format!("{SUDO_USER}:{SUDO_USER}"))
            .arg(format!("/{home}")))?;
        file(
            &format!("etc/sudoers.d/{SUDO_USER}"),
            0o440,
            format!(
                "# hakube lab node: passwordless sudo for the login user\n{SUDO_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"
            )
            .as_bytes(),
        )?;
    }

    // The site's Debian mirror, and nothing else.
    file(NODE_KEYRING.trim_start_matches('/'), 0o644, &mirror.keyring)?;
    file(
        "etc/apt/sources.list",
        0o644,
        format!(
            "# hakube lab: the site's Debian mirror on the lab bridge\ndeb [signed-by={NODE_KEYRING}] {}/debian {} main\n",
            config.mirror_url(),
            config.distro.suite()
        )
        .as_bytes(),
    )?;

    file("usr/local/lib/hakube-lab/standin-lib.sh", 0o644, STANDIN_LIBRARY.as_bytes())?;
    file("usr/local/sbin/modprobe", 0o755, MODPROBE.as_bytes())?;
    file(
        "etc/hakube-lab/node",
        0o644,
        format!("NAME={}\nROLE={}\nADDRESS={}\n", node.name, node.role.as_str(), node.address).as_bytes(),
    )?;
    file("var/log/hakube-lab/calls.log", 0o666, b"")?;
    mkdir(&root.join(NODE_CLUSTER_DIR.trim_start_matches('/')))?;
    Ok(())
}

/// The command that boots `node`: `systemd-nspawn -b` on its root in its network namespace,
/// with the knobs this machine needs (crates/lab/README.md): a cgroup v1 hierarchy for the
/// container (the host mounts a hybrid one and has no systemd as PID 1), `/proc/sys/net`
/// writable (the node's own network namespace's sysctls) and CAP_NET_ADMIN kept to write
/// them, no registration with machined.
pub(crate) fn nspawn(config: &LabConfig, node: &LabNode) -> Command {
    let mut cmd = Command::new("systemd-nspawn");
    cmd.arg("--boot")
        .arg("--directory")
        .arg(node.root())
        .arg(format!("--machine={}-{}", config.prefix, node.name))
        .arg(format!("--hostname={}", node.name))
        .arg("--register=no")
        .arg("--keep-unit")
        .arg(format!("--network-namespace-path=/run/netns/{}", node.netns))
        .arg(format!("--bind={}:{NODE_CLUSTER_DIR}", config.state_dir.join("cluster").display()))
        // Root on a machine may set its network's sysctls (net.ipv4.ip_forward): nspawn drops
        // CAP_NET_ADMIN unless told to keep it.
        .arg("--capability=CAP_NET_ADMIN")
        .args(["--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "0")
        .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network");
    cmd
}

/// The host's cgroup hierarchies a container's systemd keeps its units' cgroups in (below
/// `payload/` of the cgroup nspawn runs in): the v1 `name=systemd` one, and the unified (v2)
/// one of the hybrid layout, from which nspawn takes its own cgroup's path.
const CGROUP_ROOTS: [&str; 2] = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"];

/// The cgroup of `node`'s nspawn in hierarchy `root` ([`CGROUP_ROOTS`]), `hakube-lab/<prefix>-<node>`.
/// Without one of its own every nspawn runs in the host's root cgroup (there is no systemd
/// on the host to give it a scope), so every container's systemd manages the same `payload/`
/// tree, and one node's systemd removed the cgroup another's same-named unit was starting in
/// (units failing with exit 219, CGROUP; boots ending degraded).
pub(crate) fn cgroup(root: &str, config: &LabConfig, node: &LabNode) -> PathBuf {
    Path::new(root).join("hakube-lab").join(format!("{}-{}", config.prefix, node.name))
}

/// `cmd` (an nspawn command) made to run in `node`'s own cgroup ([`cgroup`]): a shell that
/// moves itself there, then execs it (same PID, same command line). The command as it is
/// where the host has no `name=systemd` hierarchy or the cgroup cannot be made.
pub(crate) fn in_own_cgroup(config: &LabConfig, node: &LabNode, cmd: Command) -> Command {
    let dirs: Vec<PathBuf> = CGROUP_ROOTS
        .iter()
        .filter(|root| Path::new(root).join("cgroup.procs").exists())
        .map(|root| cgroup(root, config, node))
        .collect();
    if dirs.is_empty() || dirs.iter().any(|d| fs::create_dir_all(d).is_err()) {
        return cmd;
    }
    let mut wrapped = Command::new("/bin/sh");
    wrapped
        .arg("-c")
        .arg(r#"while [ "$1" != -- ]; do echo $$ >"$1/cgroup.procs" || exit 1; shift; done; shift; exec "$@""#)
        .arg("sh")
        .args(&dirs)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            wrapped.env(key, value);
        }
    }
    wrapped
}

/// Removes `node`'s cgroup ([`cgroup`]) and the empty cgroups below it, deepest first
/// (a cgroup directory is removed with rmdir once no process is in it); best effort.
pub(crate) fn remove_cgroup(config: &LabConfig, node: &LabNode) {
    fn remove(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&entry.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
    }
    for root in CGROUP_ROOTS {
        remove(&cgroup(root, config, node));
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LabError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| LabError::Io {
        action: "set the mode of",
        path: path.to_path_buf(),
        source,
    })
}
