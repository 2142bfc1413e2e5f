//! Docker's `containerd.io` package as the lab's mirror serves it, at
//! `download.docker.com/linux/debian/`: built here from the real containerd and runc binaries
//! of Debian's own packages (this machine cannot download Docker's), laid out as Docker builds
//! it (docker/packaging `pkg/containerd/`, commit fc7ef54):
//!
//! - `/usr/bin/containerd`, `containerd-shim-runc-v2`, `ctr` and `runc` (Docker builds runc
//!   into the package: `deb/rules`, `bin/runc`);
//! - `/lib/systemd/system/containerd.service`: containerd's own unit with
//!   `/usr/local/bin/containerd` turned into `/usr/bin/containerd`
//!   (`scripts/pkg-deb-build.sh`);
//! - `/etc/containerd/config.toml`, a conffile: Docker's `common/containerd.toml`, which
//!   disables the CRI plugin (the boot script's configuration turns it back on);
//! - `Provides`, `Conflicts` and `Replaces: containerd, runc` (`deb/control`), so that apt
//!   replaces Debian's containerd and runc with it;
//! - the service enabled and restarted by the maintainer scripts, as `dh_systemd_start
//!   --restart-after-upgrade` makes them (`deb/rules`);
//! - a version `<containerd>-1~debian.<VERSION_ID>~<codename>`
//!   (`hack/scripts/gen-deb-changelog.sh`).
//!
//! Each binary comes from the newest Debian suite whose package runs on the node's release:
//! Debian's own `Depends: libc6 (>= X)` (dpkg-shlibdeps' answer for the Go binaries, which
//! link glibc) against the image's libc6. On Debian 12 (glibc 2.36) that is unstable's
//! containerd (2.1.9, needs 2.34) with bookworm's runc (unstable's and trixie's need 2.38).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::image::{debian_mirror, mkdir, write, Image, PrivateApt};
use crate::sys::run;
use crate::LabError;

/// The Debian suites binaries are taken from, newest first; a node's own suite is the oldest
/// one tried for it.
const SUITES: &[&str] = &["sid", "trixie", "bookworm"];

/// Bumped when the way the package is built changes.
const RECIPE_VERSION: u32 = 1;

/// containerd's systemd unit (containerd/containerd `containerd.service`, commit 301026e58c61),
/// with `ExecStart=/usr/bin/containerd` as Docker's `pkg-deb-build.sh` rewrites it.
const CONTAINERD_UNIT: &str = "# Copyright The containerd Authors.
#
# Licensed under the Apache License, Version 2.0 (the \"License\");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an \"AS IS\" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

[Unit]
Description=containerd container runtime
Documentation=https://containerd.io
After=network.target dbus.service

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/bin/containerd

Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5

# Having non-zero Limit*s causes performance problems due to accounting overhead
# in the kernel. We recommend using cgroups to do container-local accounting.
LimitNPROC=infinity
LimitCORE=infinity

# Comment TasksMax if your systemd version does not supports it.
# Only systemd 226 and above support this version.
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
";

/// Docker's `/etc/containerd/config.toml` (docker/packaging `pkg/containerd/common/containerd.toml`).
const DOCKER_CONFIG: &str = "#   Copyright 2018-2022 Docker Inc.

#   Licensed under the Apache License, Version 2.0 (the \"License\");
#   you may not use this file except in compliance with the License.
#   You may obtain a copy of the License at

#       http://www.apache.org/licenses/LICENSE-2.0

#   Unless required by applicable law or agreed to in writing, software
#   distributed under the License is distributed on an \"AS IS\" BASIS,
#   WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
#   See the License for the specific language governing permissions and
#   limitations under the License.

disabled_plugins = [\"cri\"]

#root = \"/var/lib/containerd\"
#state = \"/run/containerd\"
#subreaper = true
#oom_score = 0

#[grpc]
#  address = \"/run/containerd/containerd.sock\"
#  uid = 0
#  gid = 0

#[debug]
#  address = \"/run/containerd/debug.sock\"
#  uid = 0
#  gid = 0
#  level = \"info\"
";

/// The maintainer scripts debhelper writes for `dh_systemd_enable` and `dh_systemd_start
/// --restart-after-upgrade` (with Docker's `try-restart` turned into `restart`), for
/// containerd.service.
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = \"configure\" ] || [ \"$1\" = \"abort-upgrade\" ] || [ \"$1\" = \"abort-deconfigure\" ] || [ \"$1\" = \"abort-remove\" ] ; then
\tdeb-systemd-helper unmask 'containerd.service' >/dev/null || true
\tif deb-systemd-helper --quiet was-enabled 'containerd.service'; then
\t\tdeb-systemd-helper enable 'containerd.service' >/dev/null || true
\telse
\t\tdeb-systemd-helper update-state 'containerd.service' >/dev/null || true
\tfi
\tif [ -d /run/systemd/system ]; then
\t\tsystemctl --system daemon-reload >/dev/null || true
\t\tdeb-systemd-invoke restart 'containerd.service' >/dev/null || true
\tfi
fi
";
const PRERM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
\tdeb-systemd-invoke stop 'containerd.service' >/dev/null || true
fi
";
const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
\tsystemctl --system daemon-reload >/dev/null || true
fi
if [ \"$1\" = \"remove\" ] && [ -x \"/usr/bin/deb-systemd-helper\" ]; then
\tdeb-systemd-helper mask 'containerd.service' >/dev/null || true
fi
if [ \"$1\" = \"purge\" ] && [ -x \"/usr/bin/deb-systemd-helper\" ]; then
\tdeb-systemd-helper purge 'containerd.service' >/dev/null || true
\tdeb-systemd-helper unmask 'containerd.service' >/dev/null || true
fi
";

/// The containerd.io package built for one Debian release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerdIo {
    /// The `.deb` file.
    pub deb: PathBuf,
    /// containerd's release inside, as `containerd --version` names it: `2.1.9`.
    pub containerd: String,
    /// The package version: `2.1.9-1~debian.12~bookworm`.
    pub version: String,
    /// Debian's architecture name.
    pub arch: String,
    /// Where each file in it came from, one line each, for the mirror's index.
    pub origins: Vec<String>,
}

/// One Debian package version a binary could come from.
struct Candidate {
    version: String,
    suite: String,
    libc6: Option<String>,
}

/// The containerd.io package for `image`'s Debian release, under
/// `cache/containerd.io-<distro>-<hash>/`, built first when it is not there: Debian's
/// `containerd` and `runc` packages (the newest of [`SUITES`] that run on the image's libc6),
/// fetched with apt through this machine's Debian mirror with an apt state of its own,
/// repacked reproducibly (owner 0, mtimes 0, xz as Docker's `override_dh_builddeb`).
///
/// Errors: [`LabError::Command`] when apt, dpkg-deb or dpkg fail, [`LabError::Config`] when
/// no suite has a package that runs on the image, [`LabError::Io`].
pub fn ensure_containerd_io(cache: &Path, image: &Image) -> Result<ContainerdIo, LabError> {
    let suite = image.distro.suite();
    let suites: Vec<&str> = SUITES[..=SUITES.iter().position(|s| *s == suite).unwrap_or(SUITES.len() - 1)].to_vec();
    let mirror = debian_mirror()?;
    let recipe = format!(
        "hakube-lab containerd.io recipe {RECIPE_VERSION}\ndistro {}\nsuites {}\nmirror {mirror}\n{CONTAINERD_UNIT}{DOCKER_CONFIG}{POSTINST}{PRERM}{POSTRM}",
        image.distro.name(),
        suites.join(",")
    );
    let hash = hex::encode(Sha256::digest(recipe.as_bytes()));
    let name = format!("containerd.io-{}-{}", image.distro.name(), &hash[..12]);
    mkdir(cache)?;
    let _lock = crate::sys::lock(&cache.join(format!("{name}.lock")))?;
    let dir = cache.join(&name);
    let done = dir.join("package.json");
    if let Ok(text) = fs::read_to_string(&done) {
        if let Ok(package) = serde_json::from_str::<ContainerdIo>(&text) {
            if package.deb.is_file() {
                return Ok(package);
            }
        }
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|source| LabError::Io { action: "remove", path: dir.clone(), source })?;
    }
    let apt = PrivateApt::new(&dir.join("apt"), &mirror, &suites)?;
    eprintln!(
        "hakube-lab: building containerd.io for {} from Debian {} (once) ...",
        image.distro.name(),
        suites.join(", ")
    );
    apt.run("apt-get", &["update"], &dir)?;

    let libc6 = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", image.rootfs.join("var/lib/dpkg").display()))
        .args(["-W", "-f", "${Version}", "libc6"]))?
    .trim()
    .to_string();
    let arch = run(Command::new("dpkg").arg("--print-architecture"))?.trim().to_string();
    let mut origins = Vec::new();
    let unpacked = dir.join("unpacked");
    let mut needs = Vec::new();
    let mut chosen = Vec::new();
    for package in ["containerd", "runc"] {
        let candidates = candidates(&apt, package, &dir)?;
        let mut skipped = Vec::new();
        let mut pick = None;
        for c in candidates {
            let runs = match &c.libc6 {
                None => true,
                Some(min) => dpkg_compare(&libc6, "ge", min)?,
            };
            if runs {
                pick = Some(c);
                break;
            }
            skipped.push(format!("{} {} needs libc6 >= {}", c.suite, c.version, c.libc6.as_deref().unwrap_or("?")));
        }
        let Some(pick) = pick else {
            return Err(LabError::Config(format!(
                "no Debian {package} package runs on {} (libc6 {libc6}): {}",
                image.distro.name(),
                skipped.join("; ")
            )));
        };
        apt.run("apt-get", &["download", &format!("{package}={}", pick.version)], &apt.debs())?;
        let deb = fs::read_dir(apt.debs())
            .map_err(|source| LabError::Io { action: "list", path: apt.debs(), source })?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_"))))
            .ok_or_else(|| LabError::Config(format!("apt-get download {package} left no file")))?;
        let to = unpacked.join(package);
        mkdir(&to)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&to))?;
        let skipped = match skipped.is_empty() {
            true => String::new(),
            false => {
                format!("; newer ones do not run on {} (libc6 {libc6}): {}", image.distro.name(), skipped.join(", "))
            }
        };
        origins.push(format!(
            "Debian {} package {package} {} ({}){skipped}",
            pick.suite,
            pick.version,
            deb.file_name().unwrap_or_default().to_string_lossy()
        ));
        if let Some(min) = &pick.libc6 {
            needs.push(min.clone());
        }
        chosen.push(pick);
    }

    // The package tree, as Docker's deb/rules installs it.
    let containerd = upstream_version(&chosen[0].version);
    let version_id = image.distro.name().trim_start_matches("debian");
    let version = format!("{containerd}-1~debian.{version_id}~{suite}");
    let tree = dir.join("tree");
    let bin = tree.join("usr/bin");
    mkdir(&bin)?;
    for (package, from, file) in [
        ("containerd", "usr/bin", "containerd"),
        ("containerd", "usr/bin", "containerd-shim-runc-v2"),
        ("containerd", "usr/bin", "ctr"),
        ("runc", "usr/sbin", "runc"),
    ] {
        let source = unpacked.join(package).join(from).join(file);
        let bytes = fs::read(&source).map_err(|source_err| LabError::Io {
            action: "read",
            path: source.clone(),
            source: source_err,
        })?;
        write(&bin.join(file), 0o755, &bytes)?;
    }
    write(&tree.join("lib/systemd/system/containerd.service"), 0o644, CONTAINERD_UNIT.as_bytes())?;
    write(&tree.join("etc/containerd/config.toml"), 0o644, DOCKER_CONFIG.as_bytes())?;
    let libc6_need = max_version(&needs)?;
    let mut depends = Vec::new();
    if let Some(min) = libc6_need {
        depends.push(format!("libc6 (>= {min})"));
    }
    // runc links libseccomp (Debian's runc: `libseccomp2 (>= 2.5.0)`).
    depends.push("libseccomp2 (>= 2.5.0)".to_string());
    let mut control = String::new();
    let _ = write!(
        control,
        "Package: containerd.io\nVersion: {version}\nArchitecture: {arch}\nMaintainer: hakube-lab <lab@hakube.invalid>\nSection: devel\nPriority: optional\nHomepage: https://containerd.io\nDepends: {}\nProvides: containerd, runc\nConflicts: containerd, runc\nReplaces: containerd, runc\nDescription: An open and reliable container runtime (hakube-lab build)\n Built by hakube's test lab in the layout of Docker's containerd.io from Debian's own\n containerd and runc binaries: {}.\n",
        depends.join(", "),
        origins.join("; ")
    );
    write(&tree.join("DEBIAN/control"), 0o644, control.as_bytes())?;
    write(&tree.join("DEBIAN/conffiles"), 0o644, b"/etc/containerd/config.toml\n")?;
    write(&tree.join("DEBIAN/postinst"), 0o755, POSTINST.as_bytes())?;
    write(&tree.join("DEBIAN/prerm"), 0o755, PRERM.as_bytes())?;
    write(&tree.join("DEBIAN/postrm"), 0o755, POSTRM.as_bytes())?;
    // Reproducible: every file's mtime 0, owner root, and dpkg-deb's own timestamps from
    // SOURCE_DATE_EPOCH.
    run(Command::new("find").arg(&tree).args(["-exec", "touch", "-h", "-d", "@0", "{}", "+"]))?;
    let deb = dir.join(format!("containerd.io_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zxz"])
        .arg(&tree)
        .arg(&deb)
        .env("SOURCE_DATE_EPOCH", "0"))?;
    let mut origins_out = vec![
        format!("usr/bin/containerd, usr/bin/containerd-shim-runc-v2, usr/bin/ctr: {}", origins[0]),
        format!("usr/bin/runc: {}", origins[1]),
        "lib/systemd/system/containerd.service: containerd's containerd.service (commit 301026e58c61), ExecStart=/usr/bin/containerd as Docker's pkg-deb-build.sh writes it".to_string(),
        "etc/containerd/config.toml: Docker's pkg/containerd/common/containerd.toml (docker/packaging fc7ef54)".to_string(),
    ];
    origins_out.push(format!(
        "control: Provides/Conflicts/Replaces containerd, runc as Docker's deb/control; Depends {}",
        depends.join(", ")
    ));
    let package = ContainerdIo { deb, containerd, version, arch, origins: origins_out };
    let json = serde_json::to_string_pretty(&package).map_err(|e| LabError::Config(e.to_string()))?;
    write(&done, 0o644, json.as_bytes())?;
    let _ = fs::remove_dir_all(dir.join("apt"));
    let _ = fs::remove_dir_all(&unpacked);
    Ok(package)
}

/// Every version of `package` the apt state knows, newest first, with its suite and the
/// libc6 it needs (`Depends: libc6 (>= X)`).
fn candidates(apt: &PrivateApt, package: &str, cwd: &Path) -> Result<Vec<Candidate>, LabError> {
    // `apt-cache madison`: " containerd | 2.1.9+ds1-5 | http://deb.debian.org/debian sid/main amd64 Packages"
    let madison = apt.run("apt-cache", &["madison", package], cwd)?;
    let mut out: Vec<Candidate> = Vec::new();
    for line in madison.lines() {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [name, version, source] = fields[..] else { continue };
        if name != package || out.iter().any(|c| c.version == version) {
            continue;
        }
        let suite = source.split_whitespace().nth(1).and_then(|s| s.split('/').next()).unwrap_or("?").to_string();
        let show = apt.run("apt-cache", &["show", &format!("{package}={version}")], cwd)?;
        let depends = show.lines().find_map(|l| l.strip_prefix("Depends:")).unwrap_or("");
        let libc6 = depends
            .split(',')
            .map(str::trim)
            .find_map(|d| d.strip_prefix("libc6 (>= ").and_then(|v| v.strip_suffix(')')))
            .map(str::to_string);
        out.push(Candidate { version: version.to_string(), suite, libc6 });
    }
    // Newest first, as dpkg orders versions.
    let mut sorted: Vec<Candidate> = Vec::new();
    for c in out {
        let mut at = sorted.len();
        for (i, s) in sorted.iter().enumerate() {
            if dpkg_compare(&c.version, "gt", &s.version)? {
                at = i;
                break;
            }
        }
        sorted.insert(at, c);
    }
    Ok(sorted)
}

/// `dpkg --compare-versions A OP B`.
fn dpkg_compare(a: &str, op: &str, b: &str) -> Result<bool, LabError> {
    let status = Command::new("dpkg")
        .args(["--compare-versions", a, op, b])
        .status()
        .map_err(|e| LabError::Command { command: "dpkg --compare-versions".into(), detail: e.to_string() })?;
    Ok(status.success())
}

/// The highest of `versions` by dpkg's ordering.
fn max_version(versions: &[String]) -> Result<Option<String>, LabError> {
    let mut best: Option<String> = None;
    for v in versions {
        if best.as_ref().map_or(Ok(true), |b| dpkg_compare(v, "gt", b))? {
            best = Some(v.clone());
        }
    }
    Ok(best)
}

/// The upstream release in a Debian version: `2.1.9+ds1-5` is `2.1.9`, `1.6.20~ds1-1+deb12u3`
/// `1.6.20`.
fn upstream_version(debian: &str) -> String {
    let v = debian.split_once(':').map_or(debian, |(_, v)| v);
    let end = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    v[..end].trim_end_matches('.').to_string()
}

/// The mirror's Docker apt repository: `download.docker.com/linux/debian/` under `root` with
/// `dists/<codename>/stable/binary-<arch>/Packages` and the package at
/// `dists/<codename>/pool/stable/<arch>/` as Docker lays it out, and the key at `gpg`; the
/// lines it adds to the mirror's index. `sign` signs a Release file in a directory.
pub(crate) fn serve(
    root: &Path,
    codename: &str,
    package: &ContainerdIo,
    armored_key: &str,
    sign: &dyn Fn(&Path, &str) -> Result<(), LabError>,
) -> Result<String, LabError> {
    let base = root.join("download.docker.com/linux/debian");
    let pool = format!("dists/{codename}/pool/stable/{}", package.arch);
    mkdir(&base.join(&pool))?;
    let file = package.deb.file_name().expect("a package file").to_owned();
    crate::mirror::link_or_copy(&package.deb, &base.join(&pool).join(&file))?;
    let packages = run(Command::new("dpkg-scanpackages").args(["--multiversion", "dists"]).current_dir(&base))?;
    let dists = base.join("dists").join(codename);
    write(&dists.join(format!("stable/binary-{}/Packages", package.arch)), 0o644, packages.as_bytes())?;
    let release = run(Command::new("apt-ftparchive")
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Suite={codename}"))
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Codename={codename}"))
        .args(["-o", "APT::FTPArchive::Release::Components=stable"])
        .arg("-o")
        .arg(format!("APT::FTPArchive::Release::Architectures={}", package.arch))
        .args(["-o", "APT::FTPArchive::Release::Origin=hakube-lab"])
        .args(["-o", "APT::FTPArchive::Release::Label=Docker CE (hakube-lab)"])
        .args(["release", "."])
        .current_dir(&dists))?;
    sign(&dists, &release)?;
    write(&base.join("gpg"), 0o644, armored_key.as_bytes())?;
    let mut index = String::new();
    let _ = writeln!(
        index,
        "download.docker.com/linux/debian/{pool}/{}\tcontainerd.io {} in Docker's package layout, built by the lab: {}",
        file.to_string_lossy(),
        package.version,
        package.origins.join("; ")
    );
    let _ = writeln!(
        index,
        "download.docker.com/linux/debian/dists/{codename}/\tDocker's apt repository layout (suite {codename}, component stable), signed with the mirror's key"
    );
    let _ = writeln!(
        index,
        "download.docker.com/linux/debian/gpg\tthe mirror's signing key, where Docker's repository key is"
    );
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_versions_of_debian_packages() {
        assert_eq!(upstream_version("2.1.9+ds1-5"), "2.1.9");
        assert_eq!(upstream_version("1.6.20~ds1-1+deb12u3"), "1.6.20");
        assert_eq!(upstream_version("1:1.7.24~ds1-6+deb13u1"), "1.7.24");
    }
}
