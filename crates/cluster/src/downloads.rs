//! Everything a cluster's boot scripts fetch from outside the nodes, for mirroring and
//! review: the files they download (each with the sha256 render pins, or none), the package
//! repositories they add, and the container images the nodes pull.
//!
//! This is the one place the upstream URLs of downloaded files are written: render puts
//! them into each boot script (its `fetch NAME FILE` helper looks them up by name and the
//! node's architecture), and `hakube render --list-downloads` prints them.

use std::collections::BTreeMap;

use crate::definition::{ClusterDefinition, ContainerRuntimeSource, EtcdTopology};
use crate::releases::{etcd_archive_sha256, etcd_for_minor, fill_url, known_file, network_addon, ARCHITECTURES};
use crate::Version;

/// One file a boot script downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDownload {
    /// The name the boot script fetches it by (`fetch NAME FILE`): `etcd`, or a file of a
    /// network add-on (`calico-crds`, `calico-operator`, `cilium-cli`, `flannel`, `weave`).
    pub name: &'static str,
    /// The architecture the file is for (`amd64`, `arm64`); `None` when it is the same file
    /// for every architecture.
    pub arch: Option<&'static str>,
    /// The upstream URL (`downloads.mirror` serves it at `<mirror>/<host>/<path>`).
    pub url: String,
    /// The sha256 the boot script checks before using the file, 64 lowercase hex digits;
    /// `None` when nothing pins it (the boot script then warns and prints the sum it got).
    pub sha256: Option<String>,
    /// Where the pin comes from: `etcd.sha256`, `downloads.sha256`, or hakube's tables
    /// ([`crate::releases`]: etcd's SHA256SUMS, [`crate::releases::KNOWN_FILES`]); `None`
    /// when unpinned.
    pub pinned_by: Option<&'static str>,
    /// The boot script step that downloads it.
    pub step: &'static str,
}

/// A package repository the boot scripts add, with the packages they install from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSource {
    /// The repository's base URL as the boot scripts use it; empty for the distribution's
    /// own repositories (whatever the node's apt or dnf sources name).
    pub url: String,
    /// What comes from it: `name=version-*` (apt), `name-version` (dnf) or `name` (any
    /// version).
    pub packages: Vec<String>,
    /// `apt`, `dnf`, or `apt and dnf`.
    pub kind: &'static str,
}

/// What a cluster fetches: the answer of `hakube render --list-downloads`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloads {
    /// Files, in boot order (etcd before the network add-on), each architecture in turn.
    pub files: Vec<FileDownload>,
    /// Package repositories.
    pub packages: Vec<PackageSource>,
    /// Container images by reference (`registry/name:tag`), sorted, without duplicates.
    pub images: Vec<String>,
    /// Images hakube cannot name because a downloaded manifest or tool chooses them, as
    /// sentences naming what chooses them.
    pub unlisted_images: Vec<String>,
}

/// The files `def`'s boot scripts download, with their pins.
///
/// # Errors
///
/// What is missing, when validation was skipped: no etcd release for the Kubernetes minor,
/// no release of a built-in network add-on, a kubernetesVersion that does not parse.
pub fn files(def: &ClusterDefinition) -> Result<Vec<FileDownload>, String> {
    let version = Version::parse(&def.kubernetes_version)
        .ok_or_else(|| format!("{:?} is not a Kubernetes version", def.kubernetes_version))?;
    let pinned = &def.downloads.sha256;
    let mut out = Vec::new();
    if def.etcd.topology == EtcdTopology::External {
        let etcd = etcd_version(def, version.minor)?;
        for arch in ARCHITECTURES {
            let url =
                format!("https://github.com/etcd-io/etcd/releases/download/v{etcd}/etcd-v{etcd}-linux-{arch}.tar.gz");
            let (sha256, pinned_by) = if let Some(sum) = def.etcd.sha256.get(*arch) {
                (Some(sum.clone()), Some("etcd.sha256"))
            } else if let Some(sum) = pinned.get(&url) {
                (Some(sum.clone()), Some("downloads.sha256"))
            } else {
                let published = etcd_archive_sha256(&etcd, arch).map(str::to_string);
                let by = published.as_ref().map(|_| "etcd's SHA256SUMS");
                (published, by)
            };
            out.push(FileDownload { name: "etcd", arch: Some(arch), url, sha256, pinned_by, step: "etcd" });
        }
    }
    if let Some(addon) =
        def.hooks.network_provider.as_deref().map(crate::HookCatalog::normalise).and_then(network_addon)
    {
        let release = network_release(def, version.minor)?;
        for (name, pattern) in addon.files {
            let arches: Vec<Option<&'static str>> = match pattern.contains("{arch}") {
                true => ARCHITECTURES.iter().map(|a| Some(*a)).collect(),
                false => vec![None],
            };
            for arch in arches {
                let url = fill_url(pattern, &release, arch.unwrap_or(""));
                let (sha256, pinned_by) = match (pinned.get(&url), known_file(&url)) {
                    (Some(sum), _) => (Some(sum.clone()), Some("downloads.sha256")),
                    (None, Some(known)) => (Some(known.sha256.to_string()), Some("hakube's table of known files")),
                    (None, None) => (None, None),
                };
                out.push(FileDownload { name, arch, url, sha256, pinned_by, step: "network" });
            }
        }
    }
    Ok(out)
}

/// The external etcd release: `etcd.version`, else the one hakube pairs with `minor`.
///
/// # Errors
///
/// When there is neither.
pub fn etcd_version(def: &ClusterDefinition, minor: u32) -> Result<String, String> {
    def.etcd
        .version
        .clone()
        .or_else(|| etcd_for_minor(minor).map(str::to_string))
        .ok_or_else(|| format!("no etcd release for Kubernetes 1.{minor}: set etcd.version and etcd.sha256"))
}

/// The release of the built-in network add-on `def` names: `hooks.networkProviderVersion`,
/// else the one hakube pairs with `minor` (crate::releases::NETWORK_ADDONS).
///
/// # Errors
///
/// When the provider is not a built-in add-on, or there is no release for `minor`.
pub fn network_release(def: &ClusterDefinition, minor: u32) -> Result<String, String> {
    let provider = def.hooks.network_provider.as_deref().map(crate::HookCatalog::normalise).unwrap_or_default();
    if let Some(version) = &def.hooks.network_provider_version {
        return Ok(version.clone());
    }
    let addon = network_addon(provider).ok_or_else(|| format!("{provider:?} is not a built-in network add-on"))?;
    addon.release_for(minor).map(|r| r.tag.to_string()).ok_or_else(|| {
        format!("hakube pairs no {provider} release with Kubernetes 1.{minor}: set hooks.networkProviderVersion")
    })
}

/// Everything `def` fetches: [`files`], the package repositories and the images.
///
/// # Errors
///
/// As [`files`].
pub fn downloads(def: &ClusterDefinition) -> Result<Downloads, String> {
    let files = files(def)?;
    let version = Version::parse(&def.kubernetes_version)
        .ok_or_else(|| format!("{:?} is not a Kubernetes version", def.kubernetes_version))?;
    let repository = match &def.package_repository.url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("https://pkgs.k8s.io/core:/stable:/v{}", version.minor_string()),
    };
    let tools = ["kubeadm", "kubelet", "kubectl"];
    let mut packages = vec![
        PackageSource {
            url: format!("{repository}/deb/"),
            packages: tools.iter().map(|t| format!("{t}={version}-*")).collect(),
            kind: "apt",
        },
        PackageSource {
            url: format!("{repository}/rpm/"),
            packages: tools.iter().map(|t| format!("{t}-{version}")).collect(),
            kind: "dnf",
        },
    ];
    // containerd (containerRuntime.source): Docker's containerd.io from its apt and rpm
    // repositories, or the distribution's own package (templates/steps/runtime.sh.j2).
    let pinned = def.container_runtime.version.as_deref();
    match def.container_runtime.source {
        ContainerRuntimeSource::Docker => {
            for (dist, kind) in [("debian", "apt"), ("ubuntu", "apt"), ("centos", "dnf"), ("fedora", "dnf")] {
                let package = match (pinned, kind) {
                    (Some(v), "apt") => format!("containerd.io={v}*"),
                    (Some(v), _) => format!("containerd.io-{v}"),
                    (None, _) => "containerd.io".to_string(),
                };
                packages.push(PackageSource {
                    url: format!("https://download.docker.com/linux/{dist}/"),
                    packages: vec![package],
                    kind,
                });
            }
        }
        ContainerRuntimeSource::Distribution => packages.push(PackageSource {
            url: String::new(),
            packages: vec![match pinned {
                Some(v) => format!("containerd={v}*"),
                None => "containerd".to_string(),
            }],
            kind: "apt and dnf",
        }),
    }

    let mut images = BTreeMap::new();
    let mut unlisted = Vec::new();
    let registry = def.container_runtime.image_repository.as_deref().unwrap_or(DEFAULT_IMAGE_REPOSITORY);
    let registry = registry.trim_end_matches('/');
    for component in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"] {
        images.insert(format!("{registry}/{component}:v{version}"), ());
    }
    // CoreDNS, pause and (stacked) etcd: their tags are constants of each kubeadm release
    // (cmd/kubeadm/app/constants/constants.go), which hakube does not copy; kubeadm itself
    // names them. It pulls CoreDNS from `<registry>/coredns/coredns` for its default registry
    // and from `<registry>/coredns` for another (cmd/kubeadm/app/images/images.go).
    unlisted.push(format!(
        "CoreDNS, pause{} images of kubeadm {version}: `kubeadm config images list --kubernetes-version v{version}{}` names them",
        if def.etcd.topology == EtcdTopology::Stacked { " and etcd" } else { "" },
        match registry == DEFAULT_IMAGE_REPOSITORY {
            true => String::new(),
            false => format!(" --image-repository {registry}"),
        }
    ));
    if let Some(image) = &def.container_runtime.sandbox_image {
        images.insert(image.clone(), ());
    }
    if let Some(provider) = &def.hooks.cloud_provider {
        match crate::releases::cloud_controller_manager_image(crate::HookCatalog::normalise(provider), def) {
            Some(image) => {
                images.insert(image, ());
            }
            None => unlisted.push(format!("the images of cloud provider hook {provider:?}")),
        }
    }
    if let Some(provider) = &def.hooks.network_provider {
        let mut chooser = Vec::new();
        for f in files.iter().filter(|f| f.step == "network") {
            match known_file(&f.url) {
                Some(known) if f.sha256.as_deref() == Some(known.sha256) => {
                    images.extend(known.images.iter().map(|i| (i.to_string(), ())));
                }
                _ => chooser.push(f.url.clone()),
            }
        }
        unlisted.push(match (chooser.is_empty(), provider.as_str()) {
            (true, "calico") => "the Calico images the Tigera operator picks for its release".into(),
            (true, _) => "the images of what the network add-on installs".into(),
            (false, _) => format!("the images of the {provider} add-on: {} name them", chooser.join(" and ")),
        });
    }
    Ok(Downloads { files, packages, images: images.into_keys().collect(), unlisted_images: unlisted })
}

/// kubeadm's default image registry (kubernetes/kubernetes
/// cmd/kubeadm/app/apis/kubeadm/v1beta4/defaults.go, `DefaultImageRepository`).
pub const DEFAULT_IMAGE_REPOSITORY: &str = "registry.k8s.io";

impl Downloads {
    /// The listing `hakube render --list-downloads` prints: one line per item, `file URL
    /// sha256:HEX|unpinned STEP`, `repo KIND URL PACKAGE...`, `image REF`, and `# ` lines
    /// for what it cannot name. Files are printed at their upstream URLs: a mirror serves
    /// them at `<downloads.mirror>/<host>/<path>`.
    pub fn listing(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            let sum = f.sha256.as_ref().map_or_else(|| "unpinned".to_string(), |s| format!("sha256:{s}"));
            out.push_str(&format!("file {} {sum} {}\n", f.url, f.step));
        }
        for p in &self.packages {
            match p.url.is_empty() {
                true => out.push_str(&format!("repo {} {} (the distribution's)\n", p.kind, p.packages.join(" "))),
                false => out.push_str(&format!("repo {} {} {}\n", p.kind, p.url, p.packages.join(" "))),
            }
        }
        for i in &self.images {
            out.push_str(&format!("image {i}\n"));
        }
        for u in &self.unlisted_images {
            out.push_str(&format!("# not listed: {u}\n"));
        }
        out
    }
}
