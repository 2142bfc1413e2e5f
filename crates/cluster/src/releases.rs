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
    fn versions_compare_as_numbers() {
        assert!(semver("3.5.9") < semver("3.5.24"));
        assert_eq!(semver("3.6.14"), Some((3, 6, 14)));
        for bad in ["3.6", "3.6.x", "v3.6.1", "3.6.1.2", "", "3..1"] {
            assert_eq!(semver(bad), None, "{bad}");
        }
    }
}
