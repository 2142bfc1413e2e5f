//! Upstream releases hakube installs by download, as data with its sources: which etcd a
//! cluster's external etcd members run, the sha256 of each release archive, and the oldest
//! external etcd kubeadm accepts.

/// etcd's release archives (`etcd-vVERSION-linux-ARCH.tar.gz` of
/// `https://github.com/etcd-io/etcd/releases/download/vVERSION/`) and their sha256, as etcd
/// publishes them in each release's `SHA256SUMS`; read from Kubespray's copy of those sums,
/// kubernetes-sigs/kubespray `roles/kubespray_defaults/vars/main/checksums.yml`
/// (`etcd_binary_checksums`, commit 46dbdd3994b32640bcd806b0097f50e8fdf1d514, 2026-08-21).
/// `(version, architecture, sha256)`.
pub const ETCD_ARCHIVE_SHA256: &[(&str, &str, &str)] = &[
    ("3.6.14", "amd64", "ffe840ff9295808e88cce2794a18a5ac87f12a5203c8314d0bf6aa119b41bac5"),
    ("3.6.14", "arm64", "fa1b80565ee6fc2df1ae6f57a508b221f3ecc7d591c317c581cd8281b0842b3e"),
    ("3.5.33", "amd64", "5025b5b24d81a9616b6e284ccd439b9a3df055ef8fdcdc142af3ec8f6a3b3c95"),
    ("3.5.33", "arm64", "0764c5c0acef155f4bfa0487791cc5776adef66315bf16ec0653883bfd463a90"),
    ("3.5.30", "amd64", "a495115162845640be08c6cda069ff961260dbced53207c5a83b1b006ff2ea8e"),
    ("3.5.30", "arm64", "4d19473d2567a58e1dbf556e0813b91d506666e58d23bfd5370660c67639eb5e"),
];

/// The etcd release external members run for a Kubernetes minor, `(minor, version)`: the
/// newest etcd patch of the series Kubespray pairs with that minor (kubernetes-sigs/kubespray
/// `roles/kubespray_defaults/vars/main/main.yml`, `etcd_supported_versions`, same commit:
/// 1.35 and 1.36 the newest 3.6.x, 1.34 the newest 3.5.x), each at least kubeadm's
/// [`MIN_EXTERNAL_ETCD`] for that minor. Other minors: set `etcd.version` and `etcd.sha256`.
pub const ETCD_FOR_KUBERNETES_MINOR: &[(u32, &str)] = &[(34, "3.5.33"), (35, "3.6.14"), (36, "3.6.14")];

/// kubeadm's `MinExternalEtcdVersion` per Kubernetes minor, `(minor, version)`: preflight's
/// `ExternalEtcdVersion` check refuses an older external etcd (kubernetes/kubernetes
/// `cmd/kubeadm/app/constants/constants.go`): 3.5.24 since the bump of PR #134779 for 1.32
/// to 1.34, kept at the oldest supported etcd in 1.35 and 1.36 (PR #135271, PR #137956).
pub const MIN_EXTERNAL_ETCD: &[(u32, &str)] =
    &[(32, "3.5.24"), (33, "3.5.24"), (34, "3.5.24"), (35, "3.5.24"), (36, "3.5.24")];

/// A pod network add-on of hakube's built-in network hooks (templates/hooks/network/), the
/// release it installs per Kubernetes minor and the files its hook downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkAddon {
    /// The hook's name (`hooks.networkProvider`).
    pub provider: &'static str,
    /// The release per Kubernetes minor, from the project's own compatibility statement
    /// (see each constant below). Other minors: set `hooks.networkProviderVersion`.
    pub releases: &'static [AddonRelease],
    /// `(name, URL)` of each file the hook downloads, in the order it uses them: the boot
    /// script fetches a file by its name; the URL has `{version}` (the release tag) and, for a
    /// file per architecture, `{arch}` (amd64, arm64) to fill in.
    pub files: &'static [(&'static str, &'static str)],
}

/// The release of an add-on hakube pairs with one Kubernetes minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddonRelease {
    /// The Kubernetes minor.
    pub minor: u32,
    /// The project's release tag.
    pub tag: &'static str,
    /// Whether the project's compatibility statement covers this minor; `false` means no
    /// release of the project states it (validation warns).
    pub stated: bool,
}

const fn release(minor: u32, tag: &'static str, stated: bool) -> AddonRelease {
    AddonRelease { minor, tag, stated }
}

impl NetworkAddon {
    /// The release hakube pairs with Kubernetes minor `minor`, if any.
    pub fn release_for(&self, minor: u32) -> Option<&'static AddonRelease> {
        self.releases.iter().find(|r| r.minor == minor)
    }
}

/// `url` of a [`NetworkAddon`] file with `{version}` and `{arch}` filled in.
pub fn fill_url(url: &str, version: &str, arch: &str) -> String {
    url.replace("{version}", version).replace("{arch}", arch)
}

/// The built-in network add-ons, by `hooks.networkProvider` name.
pub const NETWORK_ADDONS: &[NetworkAddon] = &[CALICO, CILIUM, FLANNEL, WEAVE];

/// The built-in network add-on called `provider`.
pub fn network_addon(provider: &str) -> Option<&'static NetworkAddon> {
    NETWORK_ADDONS.iter().find(|a| a.provider == provider)
}

/// Calico through the Tigera operator. Calico 3.32 is tested against Kubernetes 1.34, 1.35
/// and 1.36 (projectcalico's docs, tigera/docs
/// `calico_versioned_docs/version-3.32/_includes/partials/_system-requirements.mdx`, "We test
/// Calico 3.32 against the following Kubernetes versions", commit f2a27624, 2026-08-21);
/// v3.32.1 is its newest patch (projectcalico/calico tags, 2026-06-24). Since 3.30 the
/// operator's manifest holds no resource types: `operator-crds.yaml` is applied first (the
/// 3.32 docs, `getting-started/kubernetes/self-managed-onprem/onpremises.mdx`).
pub const CALICO: NetworkAddon = NetworkAddon {
    provider: "calico",
    releases: &[release(34, "v3.32.1", true), release(35, "v3.32.1", true), release(36, "v3.32.1", true)],
    files: &[
        (
            "calico-crds",
            "https://raw.githubusercontent.com/projectcalico/calico/{version}/manifests/operator-crds.yaml",
        ),
        (
            "calico-operator",
            "https://raw.githubusercontent.com/projectcalico/calico/{version}/manifests/tigera-operator.yaml",
        ),
    ],
};

/// Cilium, installed by the cilium CLI, whose release picks Cilium's: v0.19.7 installs Cilium
/// 1.19.5 (the highest chart it embeds; cilium/cilium-cli v0.19.7, `vendor/github.com/cilium/
/// charts/`). Cilium 1.19 is e2e tested with Kubernetes 1.32 to 1.35 (cilium/cilium v1.19.3
/// `Documentation/network/kubernetes/compatibility.rst`); no Cilium release states 1.36 yet,
/// so 1.36 gets the same CLI with a warning.
pub const CILIUM: NetworkAddon = NetworkAddon {
    provider: "cilium",
    releases: &[release(34, "v0.19.7", true), release(35, "v0.19.7", true), release(36, "v0.19.7", false)],
    files: &[(
        "cilium-cli",
        "https://github.com/cilium/cilium-cli/releases/download/{version}/cilium-linux-{arch}.tar.gz",
    )],
};

/// flannel's manifest, from its repository at the release tag (the release's
/// `kube-flannel.yml` asset is built from the same kustomization, and the git file can be
/// pinned). flannel states no per-minor matrix, only "For Kubernetes v1.17+"
/// (flannel-io/flannel README.md) and "flanneld itself should work with any version of
/// Kubernetes" (Documentation/kubernetes.md); v0.28.9 is its newest release (2026-08-07).
pub const FLANNEL: NetworkAddon = NetworkAddon {
    provider: "flannel",
    releases: &[release(34, "v0.28.9", true), release(35, "v0.28.9", true), release(36, "v0.28.9", true)],
    files: &[(
        "flannel",
        "https://raw.githubusercontent.com/flannel-io/flannel/{version}/Documentation/kube-flannel.yml",
    )],
};

/// Weave Net's last release (Weaveworks closed in 2024; nothing newer will come and no
/// release states any current Kubernetes minor), for definitions written for
/// hakube-installer; validation warns.
pub const WEAVE: NetworkAddon = NetworkAddon {
    provider: "weave",
    releases: &[release(34, "v2.8.1", false), release(35, "v2.8.1", false), release(36, "v2.8.1", false)],
    files: &[("weave", "https://github.com/weaveworks/weave/releases/download/{version}/weave-daemonset-k8s.yaml")],
};

/// A downloaded file hakube knows: its sha256 and the container images it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownFile {
    /// The upstream URL.
    pub url: &'static str,
    /// Its sha256, lowercase hex.
    pub sha256: &'static str,
    /// The images the file names (a manifest's `image:` fields), `registry/name:tag`.
    pub images: &'static [&'static str],
}

/// The files of the add-on releases hakube pairs, with their sha256:
///
/// - the cilium CLI's archives: the sums cilium-cli publishes beside each archive
///   (`<archive>.sha256sum`), read from Kubespray's copy, kubernetes-sigs/kubespray
///   `roles/kubespray_defaults/vars/main/checksums.yml` (`ciliumcli_binary_checksums`, commit
///   46dbdd3994b32640bcd806b0097f50e8fdf1d514, 2026-08-21);
/// - Calico's and flannel's manifests, which their projects publish without sums: the sha256
///   of the file in the project's git repository at the release tag, which is what
///   raw.githubusercontent.com serves (projectcalico/calico tag v3.32.1, commit
///   0ca9d1b93644778cafdf1812f3dda02ac0c361e8, `manifests/`; flannel-io/flannel tag v0.28.9,
///   commit 5cd0d52648e891d73a6dcb9bb2c67d7c365cf7aa, `Documentation/kube-flannel.yml`), with
///   the images those files name.
///
/// Weave Net's manifest is a release asset with no source in git: unpinned (pin it with
/// `downloads.sha256`).
pub const KNOWN_FILES: &[KnownFile] = &[
    KnownFile {
        url: "https://github.com/cilium/cilium-cli/releases/download/v0.19.7/cilium-linux-amd64.tar.gz",
        sha256: "cd15e0983bf0acc7946cd05d453d1e58376ea92dec2642e745212df2b07d8852",
        images: &[],
    },
    KnownFile {
        url: "https://github.com/cilium/cilium-cli/releases/download/v0.19.7/cilium-linux-arm64.tar.gz",
        sha256: "9482937f14061fb239f2dbb2f97f4103de1b101f5d5defbff319f294f9bd540f",
        images: &[],
    },
    KnownFile {
        url: "https://raw.githubusercontent.com/projectcalico/calico/v3.32.1/manifests/operator-crds.yaml",
        sha256: "192f8b2d934ef24b62e86b7e1a6e1762d1c8af26a916f78057bc13fa5ed60f71",
        images: &[],
    },
    KnownFile {
        url: "https://raw.githubusercontent.com/projectcalico/calico/v3.32.1/manifests/tigera-operator.yaml",
        sha256: "f18e073794207d372606bc3ea6f8fd73972f86d6828f4ba666dfe0d4aa8ab07f",
        images: &["quay.io/tigera/operator:v1.42.3"],
    },
    KnownFile {
        url: "https://raw.githubusercontent.com/flannel-io/flannel/v0.28.9/Documentation/kube-flannel.yml",
        sha256: "e875824be2f552b45711dbda91af81b17eb961d00025d914d9fef18fad8f09c0",
        images: &["ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3", "ghcr.io/flannel-io/flannel:v0.28.9"],
    },
];

/// What hakube knows of the file at upstream `url`, from [`KNOWN_FILES`].
pub fn known_file(url: &str) -> Option<&'static KnownFile> {
    KNOWN_FILES.iter().find(|f| f.url == url)
}

/// A cloud provider's cloud controller manager: `(provider, image without tag, [(Kubernetes
/// minor, published tag)])`.
pub type CloudControllerManager = (&'static str, &'static str, &'static [(u32, &'static str)]);

/// Published tags of a cloud provider's cloud controller manager image, per Kubernetes minor:
/// `(provider, image without tag, [(minor, tag)])`. A cloud controller manager is compatible
/// only with the Kubernetes minor of the same number (kubernetes/cloud-provider-aws
/// docs/README.md: "compatibility is ONLY guaranteed between that release and the
/// corresponding Kubernetes version").
///
/// AWS: the newest tag of each minor that the image promoter published
/// (kubernetes/k8s.io `registry.k8s.io/images/k8s-staging-provider-aws/images.yaml`, commit
/// 0137eda2; v1.36.1 added by kubernetes/k8s.io PR #9796, "v1.36.1 is currently the only
/// usable release of the 1.36 branch": v1.36.0's image build failed, as did v1.33.3, v1.34.1
/// and v1.35.1). Guessing `v<minor>.0` picks an image that may not exist.
pub const CLOUD_CONTROLLER_MANAGERS: &[CloudControllerManager] = &[(
    "aws",
    "registry.k8s.io/provider-aws/cloud-controller-manager",
    &[(33, "v1.33.4"), (34, "v1.34.3"), (35, "v1.35.2"), (36, "v1.36.1")],
)];

/// The cloud controller manager image of cloud provider hook `provider` for `def`:
/// `hooks.cloudProviderVersion` as the tag, else the published tag paired with
/// kubernetesVersion's minor ([`CLOUD_CONTROLLER_MANAGERS`]); `None` when hakube knows no
/// image for the provider, or no tag for the minor.
pub fn cloud_controller_manager_image(provider: &str, def: &crate::ClusterDefinition) -> Option<String> {
    let (_, image, tags) = CLOUD_CONTROLLER_MANAGERS.iter().find(|(p, _, _)| *p == provider)?;
    let tag = match &def.hooks.cloud_provider_version {
        Some(tag) => tag.clone(),
        None => {
            let minor = crate::Version::parse(&def.kubernetes_version)?.minor;
            tags.iter().find(|(m, _)| *m == minor)?.1.to_string()
        }
    };
    Some(format!("{image}:{tag}"))
}

/// The architectures hakube's boot scripts run on (Debian's names).
pub const ARCHITECTURES: &[&str] = &["amd64", "arm64"];

/// The etcd release for Kubernetes minor `minor` from [`ETCD_FOR_KUBERNETES_MINOR`].
pub fn etcd_for_minor(minor: u32) -> Option<&'static str> {
    ETCD_FOR_KUBERNETES_MINOR.iter().find(|(m, _)| *m == minor).map(|(_, v)| *v)
}

/// The published sha256 of etcd `version`'s archive for `arch`, from [`ETCD_ARCHIVE_SHA256`].
pub fn etcd_archive_sha256(version: &str, arch: &str) -> Option<&'static str> {
    ETCD_ARCHIVE_SHA256.iter().find(|(v, a, _)| *v == version && *a == arch).map(|(_, _, sha)| *sha)
}

/// kubeadm's minimum external etcd for Kubernetes minor `minor`, from [`MIN_EXTERNAL_ETCD`].
pub fn min_external_etcd(minor: u32) -> Option<&'static str> {
    MIN_EXTERNAL_ETCD.iter().find(|(m, _)| *m == minor).map(|(_, v)| *v)
}

/// `MAJOR.MINOR.PATCH` as numbers, for comparing etcd versions; `None` for anything else.
pub fn semver(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok().filter(|_| !p.is_empty() && !p.starts_with('+')));
    let v = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(v)
}

/// The containerd releases containerd recommends per Kubernetes minor, `(minor, [oldest
/// patch of each series])`: the "Kubernetes Support" table of containerd/containerd
/// `RELEASES.md` (commit 301026e58c61, 2026-08-22), which has no row for 1.37 or later yet.
/// `2.2.0` stands for RELEASES.md's "2.2.0+": 2.2.0 and every later 2.2 patch.
pub const CONTAINERD_FOR_KUBERNETES_MINOR: &[(u32, &[&str])] = &[
    (32, &["2.1.0", "2.0.1", "1.7.24", "1.6.36"]),
    (33, &["2.1.0", "2.0.4", "1.7.24", "1.6.36"]),
    (34, &["2.1.3", "2.0.6", "1.7.28", "1.6.39"]),
    (35, &["2.2.0", "2.1.5", "1.7.28"]),
    (36, &["2.3.0", "2.2.0"]),
];

/// The first Kubernetes minor whose kubelet refuses to start on a container runtime without
/// the CRI `RuntimeConfig` call, which containerd implements since 2.0: kubelet's cgroup
/// driver fallback goes in 1.38 (kubernetes/enhancements PR #6087, deferred from 1.36 and
/// 1.37; kubernetes/kubernetes PR #136731), and kubeadm's `ContainerRuntimeVersion`
/// preflight check only warns before 1.38 (kubernetes/kubernetes PRs #134906, #139122).
pub const KUBELET_NEEDS_RUNTIME_CONFIG: u32 = 38;

/// How a containerd release fits a Kubernetes minor ([`containerd_support`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerdSupport {
    /// containerd lists it for the minor.
    Supported,
    /// containerd does not list it for the minor, but it still works there: an older patch
    /// of a series listed for the minor, or a series listed for the minor before (a cluster
    /// upgraded one minor keeps its nodes' containerd; kubeadm at most warns), or a minor
    /// older than containerd's table. The runtime step warns.
    Tolerated,
    /// Neither: a series containerd stopped listing two minors ago or more (1.6 for 1.36,
    /// 2.0 for 1.36), or any 1.x once the kubelet needs `RuntimeConfig`
    /// ([`KUBELET_NEEDS_RUNTIME_CONFIG`]). The runtime step fails.
    Unsupported,
}

/// The oldest patch of each containerd series containerd lists for Kubernetes minor
/// `minor` ([`CONTAINERD_FOR_KUBERNETES_MINOR`]); empty when the table has no row for it.
pub fn containerd_listed(minor: u32) -> &'static [&'static str] {
    CONTAINERD_FOR_KUBERNETES_MINOR.iter().find(|(m, _)| *m == minor).map_or(&[], |(_, v)| *v)
}

/// The containerd series (`(major, minor)`) [`containerd_support`] tolerates for Kubernetes
/// minor `minor`: those listed for it or for the newest minor before it that the table has
/// (1.37, which has no row yet, tolerates 1.36's), less 1.x from
/// [`KUBELET_NEEDS_RUNTIME_CONFIG`] on; `None` (every series) for a minor older than the table.
pub fn containerd_tolerated_series(minor: u32) -> Option<Vec<(u32, u32)>> {
    let first = CONTAINERD_FOR_KUBERNETES_MINOR.first().map_or(0, |(m, _)| *m);
    if minor < first {
        return None;
    }
    let before = CONTAINERD_FOR_KUBERNETES_MINOR.iter().rev().find(|(m, _)| *m < minor).map_or(&[][..], |(_, v)| *v);
    let mut series: Vec<(u32, u32)> = containerd_listed(minor)
        .iter()
        .chain(before)
        .filter_map(|v| semver(v).map(|(major, minor, _)| (major, minor)))
        .filter(|(major, _)| *major >= 2 || minor < KUBELET_NEEDS_RUNTIME_CONFIG)
        .collect();
    series.sort_unstable_by(|a, b| b.cmp(a));
    series.dedup();
    Some(series)
}

/// containerd's release in a version as `containerd --version` or a package manager spells
/// it (`2.2.1`, `v2.2.1`, `2.2.1-1~debian.12~bookworm`, `1.6.20~ds1-1+deb12u3`, `1:1.7.24`):
/// `(major, minor, patch)`, the patch `None` when only `2.2` is given.
pub fn containerd_release(version: &str) -> Option<(u32, u32, Option<u32>)> {
    let v = version.split_once(':').map_or(version, |(epoch, rest)| match epoch.bytes().all(|b| b.is_ascii_digit()) {
        true => rest,
        false => version,
    });
    let v = v.strip_prefix('v').unwrap_or(v);
    let end = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let mut parts = v[..end].split('.');
    let number = |p: Option<&str>| p.filter(|p| !p.is_empty()).and_then(|p| p.parse::<u32>().ok());
    let major = number(parts.next())?;
    let minor = number(parts.next())?;
    let patch = match parts.next() {
        None | Some("") => None,
        p => Some(number(p)?),
    };
    Some((major, minor, patch))
}

/// How containerd `version` ([`containerd_release`]'s forms) fits Kubernetes minor `minor`;
/// `None` when `version` names no release. A version without a patch is supported when
/// its series is listed.
pub fn containerd_support(version: &str, minor: u32) -> Option<ContainerdSupport> {
    let (major, series, patch) = containerd_release(version)?;
    let listed = containerd_listed(minor)
        .iter()
        .filter_map(|v| semver(v))
        .any(|(ma, mi, p)| ma == major && mi == series && patch.is_none_or(|patch| patch >= p));
    if listed && (major >= 2 || minor < KUBELET_NEEDS_RUNTIME_CONFIG) {
        return Some(ContainerdSupport::Supported);
    }
    Some(match containerd_tolerated_series(minor) {
        None => ContainerdSupport::Tolerated,
        Some(tolerated) if tolerated.contains(&(major, series)) => ContainerdSupport::Tolerated,
        Some(_) => ContainerdSupport::Unsupported,
    })
}

/// containerd's list for `minor` as RELEASES.md writes it: `2.3.0+, 2.2.0+`; `none` when the
/// table has no row for the minor.
pub fn containerd_listed_text(minor: u32) -> String {
    match containerd_listed(minor) {
        [] => "none (containerd's RELEASES.md has no row for it yet)".to_string(),
        listed => listed.iter().map(|v| format!("{v}+")).collect::<Vec<_>>().join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_paired_release_has_published_sums_and_meets_kubeadms_minimum() {
        for (minor, version) in ETCD_FOR_KUBERNETES_MINOR {
            for arch in ARCHITECTURES {
                let sha = etcd_archive_sha256(version, arch).unwrap_or_else(|| panic!("no sha256 of {version} {arch}"));
                assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()), "{sha}");
            }
            let min = min_external_etcd(*minor).expect("kubeadm's minimum for every paired minor");
            assert!(semver(version) >= semver(min), "1.{minor}: {version} is below kubeadm's {min}");
        }
        // Debian 12's etcd (3.4.23) and Debian 13's (3.5.16) are below it: why hakube
        // downloads etcd instead of installing the distribution's.
        assert!(semver("3.4.23") < semver(min_external_etcd(36).unwrap()));
        assert!(semver("3.5.16") < semver(min_external_etcd(36).unwrap()));
    }

    #[test]
    fn every_paired_add_on_release_is_pinned_except_weaves() {
        for addon in NETWORK_ADDONS {
            for r in addon.releases {
                for (name, pattern) in addon.files {
                    for arch in ARCHITECTURES {
                        let url = fill_url(pattern, r.tag, arch);
                        let known = known_file(&url);
                        match addon.provider {
                            // Weave's manifest is a release asset without a source in git.
                            "weave" => assert!(known.is_none()),
                            _ => {
                                let known = known.unwrap_or_else(|| panic!("{name}: no sha256 of {url}"));
                                assert!(
                                    known.sha256.len() == 64 && known.sha256.bytes().all(|b| b.is_ascii_hexdigit())
                                );
                            }
                        }
                    }
                }
            }
        }
        // No add-on downloads two files by one name.
        let mut names: Vec<&str> = NETWORK_ADDONS.iter().flat_map(|a| a.files.iter().map(|(n, _)| *n)).collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all);
    }

    #[test]
    fn cloud_controller_manager_tags_are_published_ones_not_guesses() {
        let (_, image, tags) = CLOUD_CONTROLLER_MANAGERS[0];
        assert_eq!(image, "registry.k8s.io/provider-aws/cloud-controller-manager");
        // kubernetes/k8s.io PR #9796: v1.36.0's image build failed; v1.36.1 is the usable one.
        assert!(tags.contains(&(36, "v1.36.1")));
        assert!(tags.iter().all(|(minor, tag)| tag.starts_with(&format!("v1.{minor}."))), "a tag of its own minor");
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(semver("3.5.9") < semver("3.5.24"));
        assert_eq!(semver("3.6.14"), Some((3, 6, 14)));
        for bad in ["3.6", "3.6.x", "v3.6.1", "3.6.1.2", "", "3..1"] {
            assert_eq!(semver(bad), None, "{bad}");
        }
    }

    #[test]
    fn containerd_support_follows_containerds_table() {
        use ContainerdSupport::*;
        let support = |v: &str, minor: u32| containerd_support(v, minor).unwrap();
        // Debian 12's containerd: an older 1.6 patch than 1.34 lists, a series 1.35 no longer
        // lists but 1.34 did, and nothing 1.36 would run.
        assert_eq!(support("1.6.20~ds1-1+deb12u3", 34), Tolerated);
        assert_eq!(support("1.6.20", 35), Tolerated);
        assert_eq!(support("1.6.20", 36), Unsupported);
        assert_eq!(support("1.6.39", 34), Supported);
        // 1.7: listed for 1.35 from 1.7.28; 1.36 lists no 1.x, kubeadm 1.36 only warns.
        assert_eq!(support("1.7.28", 35), Supported);
        assert_eq!(support("1.7.24", 35), Tolerated);
        assert_eq!(support("1.7.28", 36), Tolerated);
        assert_eq!(support("1.7.28", 37), Unsupported);
        assert_eq!(support("1.7.28", 38), Unsupported);
        // Docker's containerd.io and Debian unstable's.
        assert_eq!(support("2.2.1-1~debian.12~bookworm", 36), Supported);
        assert_eq!(support("v2.3.0", 36), Supported);
        assert_eq!(support("2.1.9+ds1-5", 35), Supported);
        assert_eq!(support("2.1.9", 36), Tolerated);
        assert_eq!(support("2.1.4", 35), Tolerated);
        assert_eq!(support("2.0.6", 36), Unsupported);
        // 1.37 has no row yet: 1.36's series are tolerated, nothing else.
        assert_eq!(support("2.3.3", 37), Tolerated);
        assert_eq!(support("2.1.9", 37), Unsupported);
        // Older than the table: nothing to go by.
        assert_eq!(support("1.6.20", 31), Tolerated);
        // A series without a patch.
        assert_eq!(support("2.2", 36), Supported);
        assert_eq!(support("1.7", 36), Tolerated);
        assert_eq!(containerd_support("latest", 36), None);
        assert_eq!(containerd_listed_text(36), "2.3.0+, 2.2.0+");
        assert_eq!(containerd_tolerated_series(36), Some(vec![(2, 3), (2, 2), (2, 1), (1, 7)]));
        assert_eq!(containerd_tolerated_series(38), Some(vec![(2, 3), (2, 2)]));
    }

    #[test]
    fn containerd_releases_parse_from_every_spelling() {
        assert_eq!(containerd_release("1:1.7.24~ds1-6+deb13u1"), Some((1, 7, Some(24))));
        assert_eq!(containerd_release("v2.2.1"), Some((2, 2, Some(1))));
        assert_eq!(containerd_release("2.1.9+unknown"), Some((2, 1, Some(9))));
        assert_eq!(containerd_release("2.2"), Some((2, 2, None)));
        assert_eq!(containerd_release("2.2."), Some((2, 2, None)));
        for bad in ["", "2", "v", "x.y.z", "2..1"] {
            assert_eq!(containerd_release(bad), None, "{bad}");
        }
        for (minor, listed) in CONTAINERD_FOR_KUBERNETES_MINOR {
            assert!(listed.iter().all(|v| semver(v).is_some()), "1.{minor}: {listed:?}");
        }
    }
}
