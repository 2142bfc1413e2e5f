//! The Debian images lab nodes boot: a root file system made by `debootstrap` from the
//! Debian mirror that this machine's own apt sources name, and beside it the `.deb` files
//! (with their dependencies) that hakube's boot scripts install, for the lab's apt mirror.
//! Built once per recipe and cached; see [`ensure`].

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::sys::run;
use crate::{Distro, LabError};

/// What a node's image holds besides debootstrap's `minbase`: what Debian's generic cloud
/// image gives a machine that hakube logs into (systemd as init, D-Bus, OpenSSH's server,
/// sudo, CA certificates, iproute2, procps for sysctl, kmod, netbase, less, curl), and no
/// more. gpg, containerd, etcd and the Kubernetes packages are not here: the boot scripts
/// install them, from the lab's mirror, as they must on a real machine.
pub const IMAGE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "iproute2",
    "procps",
    "kmod",
    "netbase",
    "less",
    "curl",
];

/// The Debian packages hakube's boot scripts install with apt (templates/steps/runtime,
/// packages and etcd), plus what the stand-in Kubernetes packages depend on (iptables, as
/// the kubelet package of pkgs.k8s.io does). containerd (with its runc) is what the runtime
/// step installs with `containerRuntime.source: distribution`; the default, Docker's
/// containerd.io, comes from the mirror's Docker repository ([`crate::containerd`]). The lab's mirror serves these and everything
/// they pull in that the image lacks (Recommends included, as the boot scripts' apt-get
/// installs them), and nothing else: a boot script that installs anything more fails in the
/// lab as it would at an air-gapped site whose mirror lacks it.
pub const MIRROR_PACKAGES: &[&str] =
    &["apt-transport-https", "ca-certificates", "curl", "gpg", "containerd", "etcd-server", "etcd-client", "iptables"];

/// Bumped when the way an image is built changes in a way the package lists do not show.
const RECIPE_VERSION: u32 = 1;

/// A built image: its root file system (never written to once built; nodes mount it as
/// the lower layer of an overlay) and the `.deb` files for the mirror.
#[derive(Debug, Clone)]
pub struct Image {
    /// The distribution.
    pub distro: Distro,
    /// The root file system.
    pub rootfs: PathBuf,
    /// The downloaded `.deb` files (`*.deb`, flat).
    pub debs: PathBuf,
    /// The image cache it lives in (`target/lab-images`), where what is built for it is
    /// cached too ([`crate::containerd::ensure_containerd_io`]).
    pub cache: PathBuf,
}

/// The recipe of `distro`'s image: what, if it changes, makes [`ensure`] build it again.
pub fn recipe(distro: Distro, mirror: &str) -> String {
    format!(
        "hakube-lab image recipe {RECIPE_VERSION}\ndistro {}\nsuite {}\nvariant minbase\nmirror {mirror}\ninclude {}\nmirror-packages {}\n",
        distro.name(),
        distro.suite(),
        IMAGE_PACKAGES.join(","),
        MIRROR_PACKAGES.join(","),
    )
}

/// The image of `distro` under `cache` (`cache/<distro>-<first 12 hex digits of the recipe's
/// sha256>/`), built first when it is not there: `debootstrap --variant=minbase` from the
/// Debian mirror of this machine's apt sources ([`debian_mirror`]), then, in a chroot of the
/// new root, `apt-get install --download-only` of [`MIRROR_PACKAGES`]. Concurrent callers
/// wait for each other (a lock file in `cache`); a half-built image is never used.
///
/// Errors: [`LabError::MissingProgram`] without debootstrap, [`LabError::Command`] when a
/// build step fails (the Debian mirror unreachable, say), [`LabError::Io`].
pub fn ensure(cache: &Path, distro: Distro) -> Result<Image, LabError> {
    crate::image::mkdir(cache)?;
    let mirror = debian_mirror()?;
    let recipe = recipe(distro, &mirror);
    let hash = hex::encode(Sha256::digest(recipe.as_bytes()));
    let dir = cache.join(format!("{}-{}", distro.name(), &hash[..12]));
    let image = Image { distro, rootfs: dir.join("rootfs"), debs: dir.join("debs"), cache: cache.to_path_buf() };
    let _lock = crate::sys::lock(&cache.join(format!("{}.lock", distro.name())))?;
    if dir.join("recipe").is_file() {
        return Ok(image);
    }
    if !crate::sys::have_program("debootstrap") {
        return Err(LabError::MissingProgram { program: "debootstrap".into(), package: "debootstrap" });
    }
    let building = cache.join(format!("{}.building", distro.name()));
    if building.exists() {
        fs::remove_dir_all(&building).map_err(|source| LabError::Io {
            action: "remove",
            path: building.clone(),
            source,
        })?;
    }
    mkdir(&building)?;
    let rootfs = building.join("rootfs");
    eprintln!("hakube-lab: building the {} image from {mirror} (once per recipe) ...", distro.name());
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", IMAGE_PACKAGES.join(",")))
        .arg(distro.suite())
        .arg(&rootfs)
        .arg(&mirror))?;
    // The mirror's packages: exactly what apt would fetch on this image, fetched by apt in a
    // chroot of it (which still has the test machine's network and resolver).
    let resolv = rootfs.join("etc/resolv.conf");
    let _ = fs::remove_file(&resolv);
    fs::copy("/etc/resolv.conf", &resolv).map_err(|source| LabError::Io {
        action: "copy",
        path: resolv.clone(),
        source,
    })?;
    let chroot_apt = |args: &[&str]| {
        run(Command::new("chroot")
            .arg(&rootfs)
            .args(["apt-get", "-q", "-y"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    };
    chroot_apt(&["update"])?;
    let mut install = vec!["install", "--download-only"];
    install.extend_from_slice(MIRROR_PACKAGES);
    chroot_apt(&install)?;
    let debs = building.join("debs");
    mkdir(&debs)?;
    let archives = rootfs.join("var/cache/apt/archives");
    for entry in read_dir(&archives)? {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "deb") {
            let to = debs.join(entry.file_name());
            fs::rename(&path, &to).map_err(|source| LabError::Io { action: "move", path: path.clone(), source })?;
        }
    }
    chroot_apt(&["clean"])?;
    // A machine fresh from its image: no package lists yet, no resolver (the site has no
    // DNS), no machine id or host keys (each node gets its own), no apt sources (each node
    // gets the lab mirror's).
    let lists = rootfs.join("var/lib/apt/lists");
    for entry in read_dir(&lists)? {
        if entry.path().is_file() {
            let _ = fs::remove_file(entry.path());
        }
    }
    for file in ["etc/resolv.conf", "etc/machine-id", "var/lib/dbus/machine-id", "etc/apt/sources.list"] {
        let _ = fs::remove_file(rootfs.join(file));
    }
    for entry in read_dir(&rootfs.join("etc/ssh"))? {
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            let _ = fs::remove_file(entry.path());
        }
    }
    write(&rootfs.join("etc/machine-id"), 0o444, b"")?;
    write(&building.join("recipe"), 0o644, recipe.as_bytes())?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|source| LabError::Io { action: "remove", path: dir.clone(), source })?;
    }
    fs::rename(&building, &dir).map_err(|source| LabError::Io { action: "rename", path: building, source })?;
    Ok(image)
}

/// The Debian mirror this machine's apt sources name: the first `URIs:` of a deb822
/// `/etc/apt/sources.list.d/*.sources` stanza, or the URI of a `deb` line in
/// `/etc/apt/sources.list[.d/*.list]`, that is not a security or updates suite. The lab never
/// names a mirror host of its own.
///
/// Errors: [`LabError::Config`] when no source names one.
pub fn debian_mirror() -> Result<String, LabError> {
    let mut paths: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    let mut texts: Vec<String> = paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
        .filter_map(|p| fs::read_to_string(p).ok())
        .collect();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(text);
    }
    texts.iter().find_map(|t| mirror_in(t)).ok_or_else(|| {
        LabError::Config("no Debian mirror in this machine's apt sources (/etc/apt/sources.list[.d]): add one".into())
    })
}

/// The first main Debian mirror URI in one apt sources file (deb822 or one-line format).
fn mirror_in(text: &str) -> Option<String> {
    let plain =
        |suite: &str| !suite.contains("security") && !suite.ends_with("-updates") && !suite.ends_with("-backports");
    // One-line format: deb [options] URI SUITE COMPONENTS...
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            if uri.starts_with("http") && plain(suite) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    // deb822: stanzas separated by blank lines.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(str::trim))
        };
        let (Some(types), Some(uris), Some(suites)) = (field("Types"), field("URIs"), field("Suites")) else {
            continue;
        };
        if types.split_whitespace().any(|t| t == "deb") && suites.split_whitespace().any(plain) {
            if let Some(uri) = uris.split_whitespace().find(|u| u.starts_with("http")) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, LabError> {
    Ok(fs::read_dir(dir)
        .map_err(|source| LabError::Io { action: "list", path: dir.to_path_buf(), source })?
        .flatten()
        .collect())
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
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
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
    use std::os::unix::fs::DirBuilderExt;
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
    let _ = fs::remove_file(path);
    fs::write(path, content).map_err(|source| LabError::Io { action: "write", path: path.to_path_buf(), source })?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| LabError::Io {
        action: "set the mode of",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_comes_from_either_sources_format_and_skips_security_and_updates() {
        let deb822 = "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(mirror_in(deb822).as_deref(), Some("http://mirror.example/debian"));
        let one_line = "# comment\ndeb-src http://src.example/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n";
        assert_eq!(mirror_in(one_line).as_deref(), Some("http://one.example/debian"));
        assert_eq!(mirror_in("deb http://x.example/debian-security bookworm-security main\n"), None);
        assert_eq!(mirror_in(""), None);
    }

    #[test]
    fn the_recipe_names_everything_that_changes_the_image() {
        let a = recipe(Distro::Debian12, "http://m.example/debian");
        assert!(a.contains("suite bookworm") && a.contains("openssh-server") && a.contains("containerd"), "{a}");
        assert_ne!(a, recipe(Distro::Debian13, "http://m.example/debian"));
        assert_ne!(a, recipe(Distro::Debian12, "http://other.example/debian"));
        assert!(!IMAGE_PACKAGES.contains(&"gpg") && !IMAGE_PACKAGES.contains(&"containerd"));
    }
}

/// An etcd release archive the lab's mirror serves in place of etcd's own (which this
/// machine cannot download): `etcd-vVERSION-linux-ARCH.tar.gz` laid out as etcd's releases
/// are (`etcd-vVERSION-linux-ARCH/{etcd,etcdctl,etcdutl}`), holding the real etcd binaries of
/// Debian unstable's `etcd-server` and `etcd-client` packages (Debian 12 and 13 ship etcd
/// older than kubeadm accepts). Its sha256 differs from etcd's published one, so the lab's
/// definition pins it (`etcd.sha256`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EtcdArchive {
    /// `3.5.30`: the upstream version of Debian unstable's package.
    pub version: String,
    /// Debian's architecture name, `amd64`.
    pub arch: String,
    /// The archive file.
    pub path: PathBuf,
    /// Its sha256, lowercase hex.
    pub sha256: String,
}

/// The suite the etcd archive's packages come from.
const ETCD_SUITE: &str = "sid";

/// The etcd archive under `cache/etcd-<suite>/`, built first when it is not there:
/// `apt-get download` of etcd-server and etcd-client from Debian unstable (through this
/// machine's Debian mirror, with its own apt state so the machine's sources are untouched),
/// their binaries packed reproducibly (sorted, owner 0, mtime 0, `gzip -n`).
///
/// Errors: [`LabError::Command`] when apt, dpkg-deb or tar fail, [`LabError::Io`].
pub fn ensure_etcd_archive(cache: &Path) -> Result<EtcdArchive, LabError> {
    mkdir(cache)?;
    let dir = cache.join(format!("etcd-{ETCD_SUITE}"));
    let _lock = crate::sys::lock(&cache.join(format!("etcd-{ETCD_SUITE}.lock")))?;
    let done = dir.join("archive");
    if let Ok(text) = fs::read_to_string(&done) {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if let [version, arch, file, sha256] = fields[..] {
            return Ok(EtcdArchive {
                version: version.into(),
                arch: arch.into(),
                path: dir.join(file),
                sha256: sha256.into(),
            });
        }
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|source| LabError::Io { action: "remove", path: dir.clone(), source })?;
    }
    let apt = PrivateApt::new(&dir.join("apt"), &debian_mirror()?, &[ETCD_SUITE])?;
    eprintln!("hakube-lab: fetching etcd from Debian {ETCD_SUITE} for the mirror (once) ...");
    apt.run("apt-get", &["update"], &dir)?;
    apt.run("apt-get", &["download", "etcd-server", "etcd-client"], &apt.debs())?;
    let unpacked = dir.join("unpacked");
    mkdir(&unpacked)?;
    for entry in read_dir(&apt.debs())? {
        run(Command::new("dpkg-deb").arg("-x").arg(entry.path()).arg(&unpacked))?;
    }
    let version = run(Command::new(unpacked.join("usr/bin/etcd")).arg("--version"))?
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: ").map(|v| v.trim().to_string()))
        .ok_or_else(|| LabError::Config("Debian's etcd --version names no version".into()))?;
    let arch = run(Command::new("dpkg").arg("--print-architecture"))?.trim().to_string();
    let name = format!("etcd-v{version}-linux-{arch}");
    let tree = dir.join("tree").join(&name);
    mkdir(&tree)?;
    for binary in ["etcd", "etcdctl", "etcdutl"] {
        let from = unpacked.join("usr/bin").join(binary);
        if binary == "etcdutl" && !from.exists() {
            continue; // not in every Debian build; etcd's own archives have it since 3.5
        }
        let to = tree.join(binary);
        fs::copy(&from, &to).map_err(|source| LabError::Io { action: "copy", path: from.clone(), source })?;
    }
    let file = format!("{name}.tar.gz");
    let archive = dir.join(&file);
    run(Command::new("bash").arg("-c").arg(
        "set -o pipefail; tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C \"$1\" -cf - \"$2\" | gzip -n -9 > \"$3\"",
    ).arg("bash").arg(dir.join("tree")).arg(&name).arg(&archive))?;
    let bytes = fs::read(&archive).map_err(|source| LabError::Io { action: "read", path: archive.clone(), source })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    write(&done, 0o644, format!("{version} {arch} {file} {sha256}\n").as_bytes())?;
    Ok(EtcdArchive { version, arch, path: archive, sha256 })
}

/// apt with a state of its own under a directory (sources, lists, cache and an empty dpkg
/// status), reading the given suites of this machine's Debian mirror, so that the lab can look
/// up and download packages of other Debian releases without touching this machine's apt.
pub(crate) struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// Creates the state under `dir` for `suites` (`sid`, `trixie`, …) of `mirror`.
    ///
    /// Errors: [`LabError::Io`].
    pub(crate) fn new(dir: &Path, mirror: &str, suites: &[&str]) -> Result<PrivateApt, LabError> {
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            mkdir(&dir.join(sub))?;
        }
        let lines: String = suites
            .iter()
            .map(|s| format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {s} main\n"))
            .collect();
        write(&dir.join("sources.list"), 0o644, lines.as_bytes())?;
        write(&dir.join("status"), 0o644, b"")?;
        Ok(PrivateApt { dir: dir.to_path_buf() })
    }

    /// Where `apt-get download` should put packages.
    pub(crate) fn debs(&self) -> PathBuf {
        self.dir.join("debs")
    }

    /// `program` (`apt-get`, `apt-cache`) with `args` in `cwd`, on this state only; its
    /// standard output. Errors: [`LabError::Command`].
    pub(crate) fn run(&self, program: &str, args: &[&str], cwd: &Path) -> Result<String, LabError> {
        let option = |name: &str, path: &str| format!("{name}={}", self.dir.join(path).display());
        run(Command::new(program)
            .arg("-q")
            .args(["-o", &option("Dir::Etc::SourceList", "sources.list")])
            .args(["-o", "Dir::Etc::SourceParts=/nonexistent", "-o", "Dir::Etc::Preferences=/nonexistent"])
            .args(["-o", "Dir::Etc::PreferencesParts=/nonexistent"])
            .args(["-o", &option("Dir::State::Lists", "lists")])
            .args(["-o", &option("Dir::State::status", "status")])
            .args(["-o", &option("Dir::Cache", "cache")])
            .args(["-o", "Debug::NoLocking=1"])
            .args(args)
            .current_dir(cwd))
    }
}
