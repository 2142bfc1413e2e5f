//! The files of the pod network add-ons, as the lab's mirror serves them: for every add-on
//! release hakube pairs with a Kubernetes minor the mirror has packages for
//! (hakube_cluster::releases::NETWORK_ADDONS), each file the add-on's hook downloads, at its
//! upstream URL's path. The manifests are stand-ins (crates/lab/standins/network/: just the
//! objects the kubectl stand-in needs to see), and the cilium CLI archive holds the cilium
//! stand-in; their sha256 differ from the projects' own files, so the lab's definition pins
//! them (`downloads.sha256`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use hakube_cluster::releases::{fill_url, NETWORK_ADDONS};
use sha2::{Digest, Sha256};

use crate::image::{mkdir, write};
use crate::mirror::{CILIUM, KUBERNETES_VERSIONS};
use crate::sys::run;
use crate::LabError;

/// The stand-in manifests, by the file name of the upstream manifest they stand for.
pub const NETWORK_MANIFESTS: &[(&str, &str)] = &[
    ("operator-crds.yaml", include_str!("../standins/network/operator-crds.yaml")),
    ("tigera-operator.yaml", include_str!("../standins/network/tigera-operator.yaml")),
    ("kube-flannel.yml", include_str!("../standins/network/kube-flannel.yml")),
    ("weave-daemonset-k8s.yaml", include_str!("../standins/network/weave-daemonset-k8s.yaml")),
];

/// A file the mirror serves where an upstream URL has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServedFile {
    /// The upstream URL (`https://github.com/...`); the mirror serves it at `<host>/<path>`.
    pub url: String,
    /// The file on this machine.
    pub path: PathBuf,
    /// Its sha256, lowercase hex.
    pub sha256: String,
    /// What it is, for the mirror's index.
    pub origin: String,
}

impl ServedFile {
    /// The path under the mirror's root: the URL without `https://`.
    pub fn mirror_path(&self) -> &str {
        self.url.trim_start_matches("https://")
    }
}

/// The network add-ons' files for machines of architecture `arch` (Debian's name), built
/// under `cache/network-<first 12 hex digits of the recipe's sha256>/` when not there.
///
/// Errors: [`LabError::Config`] when an add-on downloads a file the lab has no stand-in for;
/// [`LabError::Command`] when tar fails; [`LabError::Io`].
pub fn ensure_network_files(cache: &Path, arch: &str) -> Result<Vec<ServedFile>, LabError> {
    let mut recipe = Sha256::new();
    for (name, text) in NETWORK_MANIFESTS.iter().chain([&("cilium", CILIUM)]) {
        recipe.update(format!("{name}\0{text}\0"));
    }
    let dir = cache.join(format!("network-{}", &hex::encode(recipe.finalize())[..12]));
    mkdir(&dir)?;
    let _lock = crate::sys::lock(&dir.join(".lock"))?;
    let archive = format!("cilium-linux-{arch}.tar.gz");
    let archive_path = dir.join(&archive);
    if !archive_path.exists() {
        pack_cilium(&dir, &archive_path)?;
    }
    let mut served = Vec::new();
    let minors: Vec<u32> =
        KUBERNETES_VERSIONS.iter().filter_map(|v| hakube_cluster::Version::parse(v)).map(|v| v.minor).collect();
    for addon in NETWORK_ADDONS {
        let mut tags: Vec<&str> = addon.releases.iter().filter(|r| minors.contains(&r.minor)).map(|r| r.tag).collect();
        tags.sort_unstable();
        tags.dedup();
        for tag in tags {
            for (_, pattern) in addon.files {
                let url = fill_url(pattern, tag, arch);
                let file_name = url.rsplit('/').next().unwrap_or_default();
                let (path, origin) = if file_name == archive {
                    (
                        archive_path.clone(),
                        format!("hakube-lab stand-in cilium CLI (crates/lab/standins/cilium) packed as {archive}"),
                    )
                } else {
                    let (_, text) = NETWORK_MANIFESTS.iter().find(|(n, _)| *n == file_name).ok_or_else(|| {
                        LabError::Config(format!("the lab has no stand-in for {url} ({} add-on)", addon.provider))
                    })?;
                    let path = dir.join(file_name);
                    if !path.exists() {
                        write(&path, 0o644, text.as_bytes())?;
                    }
                    (path, format!("hakube-lab stand-in manifest (crates/lab/standins/network/{file_name})"))
                };
                let bytes =
                    fs::read(&path).map_err(|source| LabError::Io { action: "read", path: path.clone(), source })?;
                served.push(ServedFile { url, path, sha256: hex::encode(Sha256::digest(&bytes)), origin });
            }
        }
    }
    Ok(served)
}

/// `cilium-linux-ARCH.tar.gz` as the cilium CLI's releases hold it (just `cilium`), with the
/// stand-in, packed reproducibly (sorted, owner 0, mtime 0, `gzip -n`).
fn pack_cilium(dir: &Path, archive: &Path) -> Result<(), LabError> {
    let tree = dir.join("tree");
    write(&tree.join("cilium"), 0o755, CILIUM.as_bytes())?;
    run(Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C \"$1\" -cf - cilium | gzip -n -9 > \"$2.partial\" && mv \"$2.partial\" \"$2\"")
        .arg("bash")
        .arg(&tree)
        .arg(archive))?;
    Ok(())
}
