//! Leaf certificates renewed by date: rendering again "in the future" (`Options::now`)
//! renews exactly the leaves in the last third of their validity, from the same CA and
//! with the same key, leaves CAs alone, reports what it did, and is byte-stable after.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hakube_cluster::{ClusterDefinition, HookCatalog};
use hakube_render::pki::{self, Expiry, Validity};
use hakube_render::render::{self, AssetSet, Options};
use hakube_render::{assets, layout, Templates};
use openssl::pkey::PKey;
use openssl::x509::X509;

/// 2026-09-21T14:13:20Z.
const T0: u64 = 1_790_000_000;
const DAY: Duration = Duration::from_secs(86_400);

const DEFINITION: &str = r#"{
  "clusterName": "t",
  "masterLoadBalancerAddress": "10.0.0.100",
  "masters": [
    { "nodeName": "m0", "privateIP": "10.0.0.10" },
    { "nodeName": "m1", "privateIP": "10.0.0.11" },
    { "nodeName": "m2", "privateIP": "10.0.0.12" }
  ],
  "workers": [ { "nodeName": "w0", "privateIP": "10.0.0.20" } ],
  "etcd": { "topology": "external" },
  "pki": { "keyAlgorithm": "ECDSA-P256" }
}"#;

/// Every leaf render issues with external etcd and three masters.
const LEAVES: [&str; 8] = [
    "kubeconfig/admin.conf",
    "pki/apiserver-etcd-client.crt",
    "pki/etcd/members/m0/peer.crt",
    "pki/etcd/members/m0/server.crt",
    "pki/etcd/members/m1/peer.crt",
    "pki/etcd/members/m1/server.crt",
    "pki/etcd/members/m2/peer.crt",
    "pki/etcd/members/m2/server.crt",
];

const CA_FILES: [&str; 6] = [
    "pki/ca.crt",
    "pki/ca.key",
    "pki/front-proxy-ca.crt",
    "pki/front-proxy-ca.key",
    "pki/etcd/ca.crt",
    "pki/etcd/ca.key",
];

fn definition() -> ClusterDefinition {
    let templates = Templates::new(None).unwrap();
    let catalog: HookCatalog = templates.hook_catalog();
    match hakube_cluster::load(DEFINITION, "test.json", &catalog) {
        Ok(loaded) => loaded.definition,
        Err(report) => panic!("definition invalid:\n{report}"),
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn render_at(dir: &Path, now: SystemTime) -> (AssetSet, assets::WriteSummary) {
    let existing = assets::read_existing(dir).unwrap();
    let options = Options { rotate_secrets: false, now };
    let set = render::render(&definition(), &existing, &Templates::new(None).unwrap(), &options).unwrap();
    let summary = assets::write(dir, &set, &existing).unwrap();
    (set, summary)
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    assets::read_existing(dir).unwrap()
}

/// The leaf certificate PEM at `path` (the client certificate for the admin kubeconfig).
fn leaf_pem(files: &BTreeMap<String, Vec<u8>>, path: &str) -> String {
    let text = String::from_utf8(files[path].clone()).unwrap();
    if path != layout::ADMIN_KUBECONFIG {
        return text;
    }
    use base64::Engine as _;
    let data = regex::Regex::new(r"client-certificate-data: (\S+)").unwrap().captures(&text).unwrap()[1].to_owned();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data).unwrap()).unwrap()
}

fn serial(pem: &str) -> String {
    X509::from_pem(pem.as_bytes()).unwrap().serial_number().to_bn().unwrap().to_hex_str().unwrap().to_string()
}

fn key_path(crt: &str) -> String {
    crt.strip_suffix(".crt").map(|base| format!("{base}.key")).unwrap()
}

fn sorted(mut paths: Vec<String>) -> Vec<String> {
    paths.sort();
    paths
}

#[test]
fn leaves_in_their_last_third_are_renewed_with_their_keys_and_the_cas_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = render_at(dir.path(), at(T0));
    assert!(first.renewed.is_empty() && first.expiring.is_empty(), "{:?} {:?}", first.renewed, first.expiring);
    let before = files(dir.path());

    // 0.7 of the leaves' validity after their notBefore.
    let validity = Validity::of(&leaf_pem(&before, "pki/etcd/members/m0/server.crt")).unwrap();
    assert_eq!(validity.not_before, at(T0 - 300), "issued at T0, backdated 5 minutes");
    assert_eq!(validity.not_after, at(T0) + 365 * DAY);
    let later = validity.not_before + validity.lifetime() * 7 / 10;

    let (set, summary) = render_at(dir.path(), later);
    let after = files(dir.path());
    let renewed: Vec<String> = set.renewed.iter().map(|r| r.path.clone()).collect();
    assert_eq!(sorted(renewed), LEAVES.to_vec(), "exactly the leaves are renewed");
    assert!(set.renewed.iter().all(|r| r.kept_key && !r.expired && r.old == validity), "{:?}", set.renewed);
    assert_eq!(sorted(summary.changed.clone()), LEAVES.to_vec(), "only the leaves' files change: {summary:?}");
    assert!(summary.created.is_empty() && summary.removed.is_empty(), "{summary:?}");
    assert!(set.expiring.is_empty(), "{:?}", set.expiring);

    for path in LEAVES {
        let (old, new) = (leaf_pem(&before, path), leaf_pem(&after, path));
        assert_ne!(serial(&old), serial(&new), "{path}: a new serial");
        let renewed = Validity::of(&new).unwrap();
        assert_eq!(renewed.not_before, later - Duration::from_secs(300), "{path}: issued at the new now");
        assert_eq!(renewed.not_after, later + 365 * DAY, "{path}");
        let ca = if path == layout::ADMIN_KUBECONFIG { "pki/ca.crt" } else { "pki/etcd/ca.crt" };
        let ca = String::from_utf8(after[ca].clone()).unwrap();
        assert!(pki::issued_by(&new, &ca), "{path}: from the same CA");
        if path != layout::ADMIN_KUBECONFIG {
            let key = key_path(path);
            assert_eq!(before[&key], after[&key], "{key}: the key is kept, as kubeadm certs renew does");
            let key = PKey::private_key_from_pem(&after[&key]).unwrap();
            assert!(X509::from_pem(new.as_bytes()).unwrap().public_key().unwrap().public_eq(&key), "{path}");
        }
    }
    for path in CA_FILES {
        assert_eq!(before[path], after[path], "{path}: CAs are not renewed");
    }

    let messages: Vec<String> = set.renewed.iter().map(ToString::to_string).collect();
    assert!(
        messages.contains(
            &"pki/etcd/members/m0/server.crt (it was to expire on 2027-09-21, within the last third of its validity)"
                .to_owned()
        ),
        "{messages:#?}"
    );
    assert!(
        messages.contains(
            &"kubeconfig/admin.conf (its client certificate was to expire on 2027-09-21, within the last third of its validity)"
                .to_owned()
        ),
        "{messages:#?}"
    );

    // The same `now` again: nothing to renew, no byte changes.
    let (again, summary) = render_at(dir.path(), later);
    assert!(again.renewed.is_empty(), "{:?}", again.renewed);
    assert!(summary.changed.is_empty() && summary.created.is_empty(), "{summary:?}");
    assert_eq!(after, files(dir.path()));
}

#[test]
fn halfway_through_their_validity_nothing_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    render_at(dir.path(), at(T0));
    let before = files(dir.path());
    let (set, summary) = render_at(dir.path(), at(T0) + 365 * DAY / 2);
    assert!(set.renewed.is_empty() && set.expiring.is_empty(), "{:?} {:?}", set.renewed, set.expiring);
    assert!(summary.changed.is_empty() && summary.created.is_empty(), "{summary:?}");
    assert_eq!(before, files(dir.path()));
}

#[test]
fn expired_leaves_are_renewed_and_say_when_they_expired() {
    let dir = tempfile::tempdir().unwrap();
    render_at(dir.path(), at(T0));
    let (set, _) = render_at(dir.path(), at(T0) + 400 * DAY);
    assert_eq!(sorted(set.renewed.iter().map(|r| r.path.clone()).collect()), LEAVES.to_vec());
    assert!(set.renewed.iter().all(|r| r.expired), "{:?}", set.renewed);
    let messages: Vec<String> = set.renewed.iter().map(ToString::to_string).collect();
    assert!(messages.contains(&"pki/apiserver-etcd-client.crt (it expired on 2027-09-21)".to_owned()), "{messages:#?}");
    assert!(
        messages.contains(&"kubeconfig/admin.conf (its client certificate expired on 2027-09-21)".to_owned()),
        "{messages:#?}"
    );
}

#[test]
fn a_ca_in_its_last_third_is_kept_and_reported_with_its_date_and_the_rotation_advice() {
    let dir = tempfile::tempdir().unwrap();
    render_at(dir.path(), at(T0));
    let before = files(dir.path());
    // 0.7 of the CAs' ten years (their leaves have long expired and are renewed).
    let (set, _) = render_at(dir.path(), at(T0) + 3650 * DAY * 7 / 10);
    let after = files(dir.path());
    for path in CA_FILES {
        assert_eq!(before[path], after[path], "{path}: a CA is never renewed by date");
    }
    assert_eq!(set.renewed.len(), LEAVES.len());
    let paths: Vec<&str> = set.expiring.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["pki/ca.crt", "pki/etcd/ca.crt", "pki/front-proxy-ca.crt"], "{:?}", set.expiring);
    assert!(set.expiring.iter().all(|w| w.is_ca && w.expiry == Expiry::LastThird));
    let message = set.expiring[1].to_string();
    assert_eq!(
        message,
        "pki/etcd/ca.crt: CA certificate \"etcd-ca\" expires on 2036-09-18 (valid from 2026-09-21, in the last third of \
         its validity since 2033-05-20); render never renews a CA: replacing it is a rotation, run \
         `hakube render --rotate-secrets` (new CAs, and every certificate issued from them)"
    );
}

#[test]
fn a_leaf_that_ends_with_its_ca_is_not_renewed_again_and_points_at_rotation() {
    let dir = tempfile::tempdir().unwrap();
    render_at(dir.path(), at(T0));
    let ca_end = Validity::of(std::str::from_utf8(&files(dir.path())["pki/etcd/ca.crt"]).unwrap()).unwrap().not_after;
    // 73 days before the CAs end the leaves (expired) are renewed, capped at the CAs' end.
    let (set, _) = render_at(dir.path(), ca_end - 73 * DAY);
    assert_eq!(set.renewed.len(), LEAVES.len());
    let server = files(dir.path());
    assert_eq!(Validity::of(&leaf_pem(&server, "pki/etcd/members/m1/server.crt")).unwrap().not_after, ca_end);
    // 10 days before: in the leaves' last third, but a new leaf could not end later.
    let (set, summary) = render_at(dir.path(), ca_end - 10 * DAY);
    assert!(set.renewed.is_empty(), "{:?}", set.renewed);
    assert!(summary.changed.is_empty(), "{summary:?}");
    let warning =
        set.expiring.iter().find(|w| w.path == "pki/etcd/members/m1/server.crt").expect("the leaf is reported");
    assert_eq!(warning.bounded_by.as_deref(), Some("pki/etcd/ca.crt"));
    assert!(
        warning.to_string().ends_with(
            "; it cannot outlive its CA (pki/etcd/ca.crt): run `hakube render --rotate-secrets` to replace the CAs"
        ),
        "{warning}"
    );
    let admin = set.expiring.iter().find(|w| w.path == layout::ADMIN_KUBECONFIG).expect("admin.conf is reported");
    assert_eq!(admin.bounded_by.as_deref(), Some("pki/ca.crt"));
}

#[test]
fn expiring_certificates_reads_crt_files_and_the_admin_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    render_at(dir.path(), at(T0));
    let existing = files(dir.path());
    let scan = |now| render::expiring_certificates(existing.iter().map(|(p, b)| (p.as_str(), b.as_slice())), now);
    assert!(scan(at(T0) + 200 * DAY).is_empty());
    let warnings = scan(at(T0) + 250 * DAY);
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, LEAVES, "every leaf, none of the CAs");
    let line = warnings[1].to_string();
    assert_eq!(
        line,
        "pki/apiserver-etcd-client.crt: certificate \"kube-apiserver-etcd-client\" expires on 2027-09-21 (valid from \
         2026-09-21, in the last third of its validity since 2027-05-22); run `hakube render` to renew it, then \
         `hakube install` to ship it"
    );
    let expired = scan(at(T0) + 366 * DAY);
    assert!(expired.iter().all(|w| w.expiry == Expiry::Expired));
    assert!(
        expired[0].to_string().starts_with(
            "kubeconfig/admin.conf: client certificate \"kubernetes-admin\" expired on 2027-09-21; run `hakube render`"
        ),
        "{}",
        expired[0]
    );
}
