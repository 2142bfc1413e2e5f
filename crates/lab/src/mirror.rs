//! The lab's mirror: what an air-gapped site serves its machines, on the lab bridge.
//!
//! `state_dir/mirror/` is served over HTTP at `http://<gateway>/` by Python's `http.server`
//! (a process the lab starts, and stops by PID), and holds
//! - `debian/`: an apt repository (`dists/<suite>/main/binary-<arch>/`, `pool/main/`) of the
//!   Debian packages the boot scripts install, with their dependencies (downloaded from
//!   Debian by [`crate::image::ensure`]), signed with a key the lab generates;
//! - `pkgs.k8s.io/core:/stable:/v1.<minor>/deb/`: flat apt repositories laid out like the
//!   Kubernetes package repository (`Release.key`, `InRelease`, `Packages`), holding the
//!   stand-in `kubeadm`, `kubelet` and `kubectl` packages built here as real `.deb` files;
//! - `github.com/etcd-io/etcd/releases/download/v<version>/`: an etcd release archive
//!   ([`crate::image::ensure_etcd_archive`]), where `downloads.mirror` points boot scripts;
//! - `download.docker.com/linux/debian/`: Docker's apt repository layout (`dists/<codename>/`,
//!   component `stable`, key `gpg`) holding a `containerd.io` package built from Debian's real
//!   containerd and runc binaries ([`crate::containerd::ensure_containerd_io`]);
//! - the network add-ons' files at their upstream paths (`raw.githubusercontent.com/...`,
//!   `github.com/.../releases/download/...`; [`crate::network::ensure_network_files`]);
//! - `hakube-lab-mirror.asc`: the signing key; `index.txt`: every file and where it came from.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::{mkdir, write, Image};
use crate::sys::run;
use crate::LabError;

/// The stand-ins that the Kubernetes packages carry, as `(command name, bash script)`:
/// `/usr/bin/<name>` of the package of the same name. They source [`STANDIN_LIBRARY`].
pub const PACKAGED_STANDINS: &[(&str, &str)] = &[
    ("kubeadm", include_str!("../standins/kubeadm")),
    ("kubectl", include_str!("../standins/kubectl")),
    ("kubelet", include_str!("../standins/kubelet")),
];

/// The stand-in for kernel module loading, installed into every node's image as
/// `/usr/local/sbin/modprobe` (a container cannot load modules).
pub const MODPROBE: &str = include_str!("../standins/modprobe");

/// The library every stand-in sources, installed into each node as
/// `/usr/local/lib/hakube-lab/standin-lib.sh`: the call record and the lab's shared cluster
/// state.
pub const STANDIN_LIBRARY: &str = include_str!("../standins/standin-lib.sh");

/// The cilium CLI stand-in, inside the cilium CLI archives the mirror serves
/// ([`crate::network::ensure_network_files`]).
pub const CILIUM: &str = include_str!("../standins/cilium");

/// The Kubernetes versions whose stand-in packages the mirror serves, one repository per
/// minor as pkgs.k8s.io has: the lab's default, and a patch release of the minor before it
/// (for upgrade tests).
pub const KUBERNETES_VERSIONS: &[&str] = &["1.35.4", "1.36.4"];

/// The package revision pkgs.k8s.io gives its builds (`1.36.4-1.1`).
pub const KUBERNETES_REVISION: &str = "1.1";

/// The kubelet's systemd unit, as the kubelet package of the Kubernetes package repository
/// installs it (kubernetes/release, cmd/krel/templates/latest/kubelet/kubelet.service).
const KUBELET_UNIT: &str = "[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
";

/// kubeadm's drop-in for the kubelet unit, as the kubeadm package installs it
/// (kubernetes/release, cmd/krel/templates/latest/kubeadm/10-kubeadm.conf, with
/// `/etc/sysconfig/kubelet` turned into `/etc/default/kubelet` for .deb builds as
/// kubeadm.spec does).
const KUBEADM_DROP_IN: &str = "# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"
Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"
# This is a file that \"kubeadm init\" and \"kubeadm join\" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
";

/// Where the nodes find the mirror's signing key (dearmored), as a site's own keyring.
pub const NODE_KEYRING: &str = "/usr/share/keyrings/hakube-lab-mirror.gpg";

/// The mirror's directories and key, once built.
pub(crate) struct Mirror {
    /// `state_dir/mirror`: the served tree.
    pub root: PathBuf,
    /// The signing key, dearmored (what a node puts at [`NODE_KEYRING`]).
    pub keyring: Vec<u8>,
}

/// Builds the mirror under `state_dir/mirror` for `image` (replacing an earlier one): a
/// fresh signing key (in `state_dir/gnupg`), the Debian repository from the image's `.deb`
/// files, and one Kubernetes repository per [`KUBERNETES_VERSIONS`] minor with the stand-in
/// packages built by `dpkg-deb`.
///
/// Errors: [`LabError::Command`] when gpg, dpkg-deb, dpkg-scanpackages or apt-ftparchive
/// fail (Debian packages gnupg, dpkg-dev, apt-utils), [`LabError::Io`].
pub(crate) fn build(
    state_dir: &Path,
    image: &Image,
    etcd: &crate::image::EtcdArchive,
    network: &[crate::network::ServedFile],
) -> Result<Mirror, LabError> {
    let root = state_dir.join("mirror");
    for dir in [root.clone(), state_dir.join("gnupg"), state_dir.join("packages")] {
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|source| LabError::Io { action: "remove", path: dir.clone(), source })?;
        }
    }
    mkdir(&root)?;
    let gpg = Gpg::new(&state_dir.join("gnupg"))?;
    let armored = gpg.run(&["--armor", "--export"])?;
    write(&root.join("hakube-lab-mirror.asc"), 0o644, armored.as_bytes())?;
    let keyring = gpg.output(&["--export"])?;
    let mut index = String::from(
        "# hakube lab mirror: what each file is and where it came from\n\
         hakube-lab-mirror.asc\tthe mirror's signing key, generated by the lab for this run\n",
    );

    // Debian's packages, as Debian built them.
    let suite = image.distro.suite();
    let debian = root.join("debian");
    let pool = debian.join("pool/main");
    mkdir(&pool)?;
    for entry in
        fs::read_dir(&image.debs).map_err(|source| LabError::Io { action: "list", path: image.debs.clone(), source })?
    {
        let entry = entry.map_err(|source| LabError::Io { action: "list", path: image.debs.clone(), source })?;
        link_or_copy(&entry.path(), &pool.join(entry.file_name()))?;
        let _ = writeln!(
            index,
            "debian/pool/main/{}\tDebian {suite}, downloaded by apt-get from this machine's Debian mirror",
            entry.file_name().to_string_lossy()
        );
    }
    let arch = dpkg_architecture()?;
    let dists = debian.join("dists").join(suite);
    let packages = run(Command::new("dpkg-scanpackages").args(["--multiversion", "pool"]).current_dir(&debian))?;
    write(&dists.join(format!("main/binary-{arch}/Packages")), 0o644, packages.as_bytes())?;
    let release = run(Command::new("apt-ftparchive")
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Suite={suite}"))
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Codename={suite}"))
        .args(["-o", "APT::FTPArchive::Release::Components=main"])
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Architectures={arch}"))
        .args(["-o", "APT::FTPArchive::Release::Origin=hakube-lab"])
        .args(["release", "."])
        .current_dir(&dists))?;
    gpg.sign_release(&dists, &release)?;

    // Docker's apt repository with containerd.io, built from Debian's containerd and runc.
    let containerd_io = crate::containerd::ensure_containerd_io(&image.cache, image)?;
    index.push_str(&crate::containerd::serve(&root, suite, &containerd_io, &armored, &|dir, release| {
        gpg.sign_release(dir, release)
    })?);

    // The Kubernetes package repository: one flat repository per minor.
    let staging = state_dir.join("packages");
    for version in KUBERNETES_VERSIONS {
        let minor = version.rsplit_once('.').map_or(*version, |(m, _)| m);
        let repo = root.join(format!("pkgs.k8s.io/core:/stable:/v{minor}/deb"));
        mkdir(&repo)?;
        for (name, _) in PACKAGED_STANDINS {
            let deb = build_package(&staging, name, version, &arch)?;
            let file = deb.file_name().expect("a package file").to_owned();
            fs::rename(&deb, repo.join(&file)).map_err(|source| LabError::Io {
                action: "move",
                path: deb.clone(),
                source,
            })?;
            let _ = writeln!(
                index,
                "pkgs.k8s.io/core:/stable:/v{minor}/deb/{}\thakube-lab stand-in package (crates/lab/standins/{name}), built by dpkg-deb",
                file.to_string_lossy()
            );
        }
        let packages = run(Command::new("dpkg-scanpackages").args(["--multiversion", "."]).current_dir(&repo))?;
        write(&repo.join("Packages"), 0o644, packages.as_bytes())?;
        let release = run(Command::new("apt-ftparchive")
            .args(["-o", "APT::FTPArchive::Release::Origin=hakube-lab"])
            .arg("release")
            .arg(".")
            .current_dir(&repo))?;
        gpg.sign_release(&repo, &release)?;
        write(&repo.join("Release.key"), 0o644, armored.as_bytes())?;
    }
    // etcd's release, where etcd's GitHub releases keep it.
    let release = root.join(format!("github.com/etcd-io/etcd/releases/download/v{}", etcd.version));
    mkdir(&release)?;
    let file = etcd.path.file_name().expect("an archive file").to_owned();
    link_or_copy(&etcd.path, &release.join(&file))?;
    let _ = writeln!(
        index,
        "github.com/etcd-io/etcd/releases/download/v{}/{}\tetcd's release layout, holding the etcd binaries of Debian unstable's etcd-server and etcd-client packages (sha256 {}; not etcd's own archive, whose sum differs)",
        etcd.version,
        file.to_string_lossy(),
        etcd.sha256
    );
    // The network add-ons' files, where their projects publish them.
    for file in network {
        let to = root.join(file.mirror_path());
        mkdir(to.parent().expect("a URL path has a directory"))?;
        link_or_copy(&file.path, &to)?;
        let _ = writeln!(index, "{}\t{} (sha256 {})", file.mirror_path(), file.origin, file.sha256);
    }
    write(&root.join("index.txt"), 0o644, index.as_bytes())?;
    Ok(Mirror { root, keyring })
}

/// Builds `name`'s stand-in package at `version` (`<version>-1.1`) under `staging`; the
/// `.deb` file's path. The files and dependencies follow kubernetes/release's package specs
/// (cmd/krel/templates/latest/*/…spec): kubelet ships its unit, `/etc/default/kubelet` and the
/// keep files of `/var/lib/kubelet` and `/etc/kubernetes/manifests`, and depends on iptables,
/// mount and util-linux; kubeadm ships the kubelet drop-in `10-kubeadm.conf` and depends on
/// the kubelet. (cri-tools and kubernetes-cni, which the real ones also depend on, are left
/// out: nothing here runs a container.)
fn build_package(staging: &Path, name: &str, version: &str, arch: &str) -> Result<PathBuf, LabError> {
    let full = format!("{version}-{KUBERNETES_REVISION}");
    let dir = staging.join(format!("{name}_{full}"));
    let script = PACKAGED_STANDINS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).expect("a packaged stand-in");
    write(&dir.join("usr/bin").join(name), 0o755, script.as_bytes())?;
    let (depends, description) = match name {
        "kubelet" => {
            write(&dir.join("usr/lib/systemd/system/kubelet.service"), 0o644, KUBELET_UNIT.as_bytes())?;
            write(&dir.join("etc/default/kubelet"), 0o644, b"KUBELET_EXTRA_ARGS=\n")?;
            write(&dir.join("var/lib/kubelet/.kubelet-keep"), 0o644, b"")?;
            write(&dir.join("etc/kubernetes/manifests/.kubelet-keep"), 0o644, b"")?;
            write(&dir.join("DEBIAN/conffiles"), 0o644, b"/etc/default/kubelet\n")?;
            ("iptables (>= 1.4.21), mount, util-linux", "Node agent for Kubernetes clusters (hakube-lab stand-in)")
        }
        "kubeadm" => {
            write(
                &dir.join("usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"),
                0o644,
                KUBEADM_DROP_IN.as_bytes(),
            )?;
            ("kubelet (>= 1.19.0)", "Command-line utility for administering a Kubernetes cluster (hakube-lab stand-in)")
        }
        _ => ("", "Command-line utility for interacting with a Kubernetes cluster (hakube-lab stand-in)"),
    };
    let mut control = format!(
        "Package: {name}\nVersion: {full}\nArchitecture: {arch}\nMaintainer: hakube-lab <lab@hakube.invalid>\nSection: admin\nPriority: optional\nHomepage: https://kubernetes.io\n"
    );
    if !depends.is_empty() {
        let _ = writeln!(control, "Depends: {depends}");
    }
    let _ = writeln!(control, "Description: {description}\n Built by hakube's test lab from crates/lab/standins/{name}; never for a real machine.");
    write(&dir.join("DEBIAN/control"), 0o644, control.as_bytes())?;
    let deb = staging.join(format!("{name}_{full}_{arch}.deb"));
    run(Command::new("dpkg-deb").args(["--build", "--root-owner-group", "-Zgzip"]).arg(&dir).arg(&deb))?;
    Ok(deb)
}

/// `to` as a hard link to `from` (the cache and the mirror share a file system), or a copy.
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> Result<(), LabError> {
    fs::hard_link(from, to).or_else(|_| fs::copy(from, to).map(|_| ())).map_err(|source| LabError::Io {
        action: "copy",
        path: from.to_path_buf(),
        source,
    })
}

/// The Debian architecture of this machine (`dpkg --print-architecture`): `amd64`, `arm64`.
fn dpkg_architecture() -> Result<String, LabError> {
    Ok(run(Command::new("dpkg").arg("--print-architecture"))?.trim().to_string())
}

/// A gpg home of the lab's own, with one signing key without passphrase.
struct Gpg {
    home: PathBuf,
}

impl Gpg {
    fn new(home: &Path) -> Result<Gpg, LabError> {
        mkdir(home)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(home, fs::Permissions::from_mode(0o700)).map_err(|source| LabError::Io {
            action: "set the mode of",
            path: home.to_path_buf(),
            source,
        })?;
        let gpg = Gpg { home: home.to_path_buf() };
        gpg.run(&[
            "--passphrase",
            "",
            "--quick-generate-key",
            "hakube lab mirror <lab@hakube.invalid>",
            "ed25519",
            "sign",
            "never",
        ])?;
        Ok(gpg)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", &self.home).args(["--batch", "--quiet", "--pinentry-mode", "loopback"]).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String, LabError> {
        run(&mut self.command(args))
    }

    fn output(&self, args: &[&str]) -> Result<Vec<u8>, LabError> {
        let mut cmd = self.command(args);
        let out = cmd.output().map_err(|e| LabError::Command {
            command: crate::sys::command_line(&cmd),
            detail: format!("cannot start it: {e}"),
        })?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: crate::sys::command_line(&cmd),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(out.stdout)
    }

    /// Writes `dir/Release` and signs it as apt expects: `InRelease` (clear-signed) and
    /// `Release.gpg` (detached, armored).
    fn sign_release(&self, dir: &Path, release: &str) -> Result<(), LabError> {
        let path = dir.join("Release");
        write(&path, 0o644, release.as_bytes())?;
        let file = path.to_string_lossy().into_owned();
        let inrelease = dir.join("InRelease").to_string_lossy().into_owned();
        let detached = dir.join("Release.gpg").to_string_lossy().into_owned();
        self.run(&["--yes", "--clearsign", "--digest-algo", "SHA512", "-o", &inrelease, &file])?;
        self.run(&["--yes", "--armor", "--detach-sign", "--digest-algo", "SHA512", "-o", &detached, &file])?;
        Ok(())
    }
}
