//! The secret material render makes — CAs and leaf certificates, the service-account key
//! pair, the discovery hash, the bootstrap token and SSH keys — read back by independent
//! implementations (the openssl and ssh-keygen CLIs, OpenSSL's verifier) and compared
//! with what kubeadm makes (docs/upstream-facts.md).

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use hakube_cluster::definition::KeyAlgorithm;
use hakube_render::kubeconfig::admin_client_spec;
use hakube_render::pki::{
    apiserver_etcd_client_spec, discovery_token_ca_cert_hash, etcd_member_spec, inspect, is_ca_pair, issue_leaf,
    issued_by, leaf_matches, leaf_verdict, new_ca, public_key_pem_of, renew_leaf, service_account_key_pair, utc_date,
    Expiry, ExtendedUsage, Issued, LeafSpec, LeafVerdict, PkiError, Validity, ETCD_CA, FRONT_PROXY_CA, KUBERNETES_CA,
};
use hakube_render::sshkeys::{generate_ed25519, known_hosts_line, public_line_of};
use hakube_render::token::BootstrapToken;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509StoreContext, X509};
use support::{cli_view, run_ok, unix, unix_of, write_secret, YEAR};

const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const BACKDATE_SECS: i64 = 5 * 60;

fn cert(pem: &str) -> X509 {
    X509::from_pem(pem.as_bytes()).expect("a PEM certificate")
}

/// OpenSSL's own chain verification (signature, issuer, CA flags of the issuer, validity).
fn verifies(leaf: &Issued, ca: &Issued) -> bool {
    let mut store = X509StoreBuilder::new().unwrap();
    store.add_cert(cert(&ca.cert_pem)).unwrap();
    let store = store.build();
    let mut context = X509StoreContext::new().unwrap();
    context.init(&store, &cert(&leaf.cert_pem), &Stack::new().unwrap(), |c| c.verify_cert()).unwrap()
}

/// `openssl verify -purpose <purpose>`: chain plus the EKU the purpose needs.
fn cli_verifies(dir: &std::path::Path, leaf: &Issued, ca: &Issued, purpose: &str) -> bool {
    let ca_path = write_secret(dir, "verify-ca.crt", &ca.cert_pem);
    let leaf_path = write_secret(dir, "verify-leaf.crt", &leaf.cert_pem);
    support::output(
        Command::new("openssl").args(["verify", "-purpose", purpose, "-CAfile"]).arg(ca_path).arg(leaf_path),
    )
    .status
    .success()
}

fn assert_key_is(issued: &Issued, algorithm: KeyAlgorithm) {
    assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "PKCS#8 PEM expected");
    let key = PKey::private_key_from_pem(issued.key_pem.as_bytes()).unwrap();
    assert!(cert(&issued.cert_pem).public_key().unwrap().public_eq(&key), "key matches certificate");
    match algorithm {
        KeyAlgorithm::Rsa2048 => assert_eq!((key.id(), key.bits()), (Id::RSA, 2048)),
        KeyAlgorithm::EcdsaP256 => {
            assert_eq!(key.ec_key().unwrap().group().curve_name(), Some(Nid::X9_62_PRIME256V1))
        }
        other => unreachable!("not tested here: {other:?}"),
    }
}

/// A leaf certificate and what the openssl CLI must read in it.
struct Case<'a> {
    what: &'a str,
    spec: LeafSpec,
    ca: &'a Issued,
    /// RFC 2253 subject.
    subject: &'a str,
    /// subjectAltName as the CLI prints it; `None`: no extension.
    sans: Option<&'a str>,
    /// extendedKeyUsage as the CLI prints it.
    eku: &'a str,
}

/// The three CAs and the leaves hakube issues, checked against docs/upstream-facts.md's table.
fn check_kubeadm_pki(algorithm: KeyAlgorithm) {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let rsa = algorithm == KeyAlgorithm::Rsa2048;

    let mut serials = BTreeSet::new();
    let mut cas = Vec::new();
    for name in [KUBERNETES_CA, FRONT_PROXY_CA, ETCD_CA] {
        let ca = new_ca(name, algorithm, TEN_YEARS, now).unwrap();
        assert_key_is(&ca, algorithm);
        let view = cli_view(dir.path(), &ca.cert_pem);
        assert_eq!(view.subject, format!("CN={name}"), "CA subject is CN only");
        assert_eq!(view.issuer, view.subject, "self-signed");
        assert_eq!(view.ext("X509v3 Basic Constraints"), (true, "CA:TRUE"));
        assert_eq!(view.ext("X509v3 Key Usage"), (true, "Digital Signature, Key Encipherment, Certificate Sign"));
        assert!(!view.ext("X509v3 Subject Key Identifier").1.is_empty());
        assert!(!view.extensions.contains_key("X509v3 Extended Key Usage"), "{view:?}");

        let x509 = cert(&ca.cert_pem);
        assert_eq!(unix(x509.not_before()), unix_of(now) - BACKDATE_SECS, "backdated 5 minutes");
        assert_eq!(unix(x509.not_after()), unix_of(now) + TEN_YEARS.as_secs() as i64);
        let serial = x509.serial_number().to_bn().unwrap();
        assert!(!serial.is_negative() && serial.num_bits() == 128, "128-bit positive serial");
        assert!(serials.insert(serial.to_hex_str().unwrap().to_string()), "serials differ");
        assert!(verifies(&ca, &ca), "a CA verifies against itself");
        assert!(is_ca_pair(&ca.cert_pem, &ca.key_pem).unwrap());
        cas.push(ca);
    }
    let (cluster_ca, front_proxy_ca, etcd_ca) = (&cas[0], &cas[1], &cas[2]);
    assert!(!is_ca_pair(&cluster_ca.cert_pem, &etcd_ca.key_pem).unwrap(), "another CA's key");

    let private_ip: IpAddr = "10.0.0.11".parse().unwrap();
    let leaf_ku = if rsa { "Digital Signature, Key Encipherment" } else { "Digital Signature" };
    let both = "TLS Web Server Authentication, TLS Web Client Authentication";
    let client = "TLS Web Client Authentication";
    let etcd_sans =
        "DNS:master-1, DNS:localhost, IP Address:10.0.0.11, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1";
    let cases = [
        Case {
            what: "etcd server",
            spec: etcd_member_spec("master-1", private_ip, YEAR),
            ca: etcd_ca,
            subject: "CN=master-1",
            sans: Some(etcd_sans),
            eku: both,
        },
        Case {
            what: "etcd peer",
            spec: etcd_member_spec("master-1", private_ip, YEAR),
            ca: etcd_ca,
            subject: "CN=master-1",
            sans: Some(etcd_sans),
            eku: both,
        },
        Case {
            what: "apiserver-etcd-client",
            spec: apiserver_etcd_client_spec(YEAR),
            ca: etcd_ca,
            subject: "CN=kube-apiserver-etcd-client",
            sans: None,
            eku: client,
        },
        Case {
            what: "admin",
            spec: admin_client_spec(YEAR),
            ca: cluster_ca,
            subject: "CN=kubernetes-admin,O=kubeadm:cluster-admins",
            sans: None,
            eku: client,
        },
    ];
    for Case { what, spec, ca, subject, sans, eku } in cases {
        let leaf = issue_leaf(ca, &spec, algorithm, now).unwrap();
        assert_key_is(&leaf, algorithm);
        assert!(verifies(&leaf, ca), "{what} verifies against its CA");
        assert!(!verifies(&leaf, front_proxy_ca), "{what} does not verify against another CA");
        let view = cli_view(dir.path(), &leaf.cert_pem);
        assert_eq!(view.subject, subject, "{what}");
        assert_eq!(view.issuer, cli_view(dir.path(), &ca.cert_pem).subject, "{what}");
        assert_eq!(view.ext("X509v3 Basic Constraints"), (true, "CA:FALSE"), "{what}");
        assert_eq!(view.ext("X509v3 Key Usage"), (true, leaf_ku), "{what}");
        assert_eq!(view.ext("X509v3 Extended Key Usage"), (false, eku), "{what}");
        match sans {
            Some(sans) => assert_eq!(view.ext("X509v3 Subject Alternative Name"), (false, sans), "{what}"),
            None => assert!(!view.extensions.contains_key("X509v3 Subject Alternative Name"), "{what}"),
        }
        let (leaf_x509, ca_x509) = (cert(&leaf.cert_pem), cert(&ca.cert_pem));
        assert_eq!(
            leaf_x509.authority_key_id().unwrap().as_slice(),
            ca_x509.subject_key_id().unwrap().as_slice(),
            "{what}: authorityKeyIdentifier is the CA's key id"
        );
        assert_eq!(unix(leaf_x509.not_after()), unix_of(now) + YEAR.as_secs() as i64, "{what}");
        // The independent verifier agrees, including the purpose the EKU allows.
        assert!(cli_verifies(dir.path(), &leaf, ca, "sslclient"), "{what} is a TLS client cert");
        assert_eq!(cli_verifies(dir.path(), &leaf, ca, "sslserver"), eku == both, "{what} as a TLS server");
        assert!(leaf_matches(&leaf.cert_pem, ca, &spec, now).unwrap(), "{what} matches its spec");
        assert!(!is_ca_pair(&leaf.cert_pem, &leaf.key_pem).unwrap(), "{what} is no CA");
    }
}

#[test]
fn kubeadm_pki_with_rsa_2048() {
    check_kubeadm_pki(KeyAlgorithm::Rsa2048);
}

#[test]
fn kubeadm_pki_with_ecdsa_p256() {
    check_kubeadm_pki(KeyAlgorithm::EcdsaP256);
}

#[test]
fn a_leaf_never_outlives_its_ca() {
    let now = SystemTime::now();
    let ca = new_ca(ETCD_CA, KeyAlgorithm::EcdsaP256, YEAR, now).unwrap();
    let leaf = issue_leaf(&ca, &apiserver_etcd_client_spec(TEN_YEARS), KeyAlgorithm::EcdsaP256, now).unwrap();
    assert_eq!(cert(&leaf.cert_pem).not_after(), cert(&ca.cert_pem).not_after());
}

#[test]
fn issuing_from_an_expired_ca_or_a_mismatched_key_fails_naming_the_certificate() {
    let now = SystemTime::now();
    let long_ago = now - 2 * YEAR;
    let expired = new_ca(ETCD_CA, KeyAlgorithm::EcdsaP256, YEAR, long_ago).unwrap();
    let err =
        issue_leaf(&expired, &etcd_member_spec("m1", "10.0.0.1".parse().unwrap(), YEAR), KeyAlgorithm::EcdsaP256, now)
            .unwrap_err();
    assert_eq!(err.to_string(), "failed to issue certificate \"m1\": CA \"etcd-ca\" has expired");

    let other = new_ca(KUBERNETES_CA, KeyAlgorithm::EcdsaP256, YEAR, now).unwrap();
    let mixed = Issued { cert_pem: other.cert_pem.clone(), key_pem: expired.key_pem.clone() };
    let err = issue_leaf(&mixed, &admin_client_spec(YEAR), KeyAlgorithm::EcdsaP256, now).unwrap_err();
    assert!(matches!(err, PkiError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("\"kubernetes-admin\"") && err.to_string().contains("\"kubernetes\""), "{err}");

    let err = issue_leaf(
        &Issued { cert_pem: "junk".into(), key_pem: "junk".into() },
        &admin_client_spec(YEAR),
        KeyAlgorithm::EcdsaP256,
        now,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "failed to parse the CA certificate for \"kubernetes-admin\"");
}

#[test]
fn an_encrypted_ca_key_is_refused_without_a_passphrase_prompt() {
    let ca = new_ca(KUBERNETES_CA, KeyAlgorithm::EcdsaP256, YEAR, SystemTime::now()).unwrap();
    let key = PKey::private_key_from_pem(ca.key_pem.as_bytes()).unwrap();
    let encrypted =
        key.private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"passphrase").unwrap();
    let encrypted = String::from_utf8(encrypted).unwrap();
    let err = is_ca_pair(&ca.cert_pem, &encrypted).unwrap_err();
    assert_eq!(err.to_string(), "failed to parse the key of CA \"kubernetes\"");
    let locked = Issued { cert_pem: ca.cert_pem.clone(), key_pem: encrypted };
    let err = issue_leaf(&locked, &admin_client_spec(YEAR), KeyAlgorithm::EcdsaP256, SystemTime::now()).unwrap_err();
    assert!(matches!(err, PkiError::Parse { .. }), "{err}");
}

#[test]
fn leaf_matches_only_while_the_spec_ca_and_validity_hold() {
    let now = SystemTime::now();
    let ca = new_ca(ETCD_CA, KeyAlgorithm::EcdsaP256, TEN_YEARS, now).unwrap();
    let spec = etcd_member_spec("master-1", "10.0.0.11".parse().unwrap(), YEAR);
    let leaf = issue_leaf(&ca, &spec, KeyAlgorithm::EcdsaP256, now).unwrap();
    assert!(leaf_matches(&leaf.cert_pem, &ca, &spec, now).unwrap());

    let mut reordered = spec.clone();
    reordered.dns_names.reverse();
    reordered.ips.reverse();
    reordered.usages.reverse();
    assert!(leaf_matches(&leaf.cert_pem, &ca, &reordered, now).unwrap(), "SANs and EKUs compare as sets");

    type Change = fn(&mut LeafSpec);
    let changes: [(&str, Change); 6] = [
        ("another IP SAN", |s| s.ips[0] = "10.0.0.12".parse().unwrap()),
        ("another DNS SAN", |s| s.dns_names[0] = "master-2".to_owned()),
        ("one DNS SAN fewer", |s| drop(s.dns_names.pop())),
        ("another CN", |s| s.common_name = "master-2".to_owned()),
        ("an O added", |s| s.organizations.push("system:masters".to_owned())),
        ("serverAuth dropped", |s| s.usages.retain(|u| *u != ExtendedUsage::ServerAuth)),
    ];
    for (what, change) in changes {
        let mut changed = spec.clone();
        change(&mut changed);
        assert!(!leaf_matches(&leaf.cert_pem, &ca, &changed, now).unwrap(), "{what}");
    }

    // A CA with the same name but another key.
    let impostor = new_ca(ETCD_CA, KeyAlgorithm::EcdsaP256, TEN_YEARS, now).unwrap();
    assert!(!leaf_matches(&leaf.cert_pem, &impostor, &spec, now).unwrap(), "wrong CA");
    let rsa_impostor = new_ca(ETCD_CA, KeyAlgorithm::Rsa2048, TEN_YEARS, now).unwrap();
    assert!(!leaf_matches(&leaf.cert_pem, &rsa_impostor, &spec, now).unwrap(), "wrong CA, other key type");

    let old = issue_leaf(&ca, &spec, KeyAlgorithm::EcdsaP256, now - YEAR - Duration::from_secs(60)).unwrap();
    assert!(!leaf_matches(&old.cert_pem, &ca, &spec, now).unwrap(), "expired");
    assert!(leaf_matches(&leaf.cert_pem, &ca, &spec, now + YEAR - Duration::from_secs(60)).unwrap());
    assert!(!leaf_matches(&leaf.cert_pem, &ca, &spec, now + YEAR).unwrap(), "expires at notAfter");

    assert!(matches!(leaf_matches("not a cert", &ca, &spec, now), Err(PkiError::Parse { .. })));
}

#[test]
fn a_leaf_is_due_for_renewal_from_two_thirds_of_its_validity_on() {
    let now = unix_time(1_790_000_000);
    let ca = new_ca(ETCD_CA, KeyAlgorithm::EcdsaP256, TEN_YEARS, now).unwrap();
    let spec = etcd_member_spec("master-1", "10.0.0.11".parse().unwrap(), YEAR);
    let leaf = issue_leaf(&ca, &spec, KeyAlgorithm::EcdsaP256, now).unwrap();
    let validity = Validity::of(&leaf.cert_pem).unwrap();
    let lifetime = YEAR + Duration::from_secs(BACKDATE_SECS as u64);
    assert_eq!(validity.lifetime(), lifetime);
    // notBefore + 2/3 of the lifetime, independently: notBefore is now - 5 min.
    let third = now - Duration::from_secs(BACKDATE_SECS as u64) + Duration::from_secs(lifetime.as_secs() * 2 / 3);
    assert_eq!(validity.renew_from(), third);

    let verdict = |at| leaf_verdict(&leaf.cert_pem, &ca, &spec, at).unwrap();
    assert_eq!(verdict(now), LeafVerdict::Keep, "a fresh leaf is kept");
    assert_eq!(verdict(third - Duration::from_secs(1)), LeafVerdict::Keep);
    assert_eq!(verdict(third), LeafVerdict::Renew(validity), "due at the start of the last third");
    assert_eq!(verdict(validity.not_after + YEAR), LeafVerdict::Renew(validity), "expired");
    assert_eq!(validity.expiry(third - Duration::from_secs(1)), Expiry::Valid);
    assert_eq!(validity.expiry(third), Expiry::LastThird);
    assert_eq!(validity.expiry(validity.not_after), Expiry::Expired);

    let mut moved = spec.clone();
    moved.ips[0] = "10.0.0.12".parse().unwrap();
    assert_eq!(leaf_verdict(&leaf.cert_pem, &ca, &moved, now).unwrap(), LeafVerdict::Reissue, "a changed SAN");
    let other = new_ca(ETCD_CA, KeyAlgorithm::EcdsaP256, TEN_YEARS, now).unwrap();
    assert_eq!(leaf_verdict(&leaf.cert_pem, &other, &spec, third).unwrap(), LeafVerdict::Reissue, "another CA");
    assert!(matches!(leaf_verdict("junk", &ca, &spec, now), Err(PkiError::Parse { .. })));
}

#[test]
fn a_leaf_that_ends_with_its_ca_is_never_due() {
    let now = unix_time(1_790_000_000);
    let ca = new_ca(ETCD_CA, KeyAlgorithm::EcdsaP256, YEAR / 2, now).unwrap();
    let spec = apiserver_etcd_client_spec(YEAR);
    let leaf = issue_leaf(&ca, &spec, KeyAlgorithm::EcdsaP256, now).unwrap();
    let validity = Validity::of(&leaf.cert_pem).unwrap();
    assert_eq!(validity.not_after, Validity::of(&ca.cert_pem).unwrap().not_after);
    assert_eq!(validity.expiry(validity.renew_from()), Expiry::LastThird);
    assert_eq!(leaf_verdict(&leaf.cert_pem, &ca, &spec, validity.renew_from()).unwrap(), LeafVerdict::Keep);
}

#[test]
fn renewing_keeps_the_key_and_subject_and_moves_the_dates() {
    let now = unix_time(1_790_000_000);
    let ca = new_ca(KUBERNETES_CA, KeyAlgorithm::EcdsaP256, TEN_YEARS, now).unwrap();
    let spec = admin_client_spec(YEAR);
    let old = issue_leaf(&ca, &spec, KeyAlgorithm::Rsa2048, now).unwrap();
    let later = now + YEAR * 3 / 4;
    let renewed = renew_leaf(&ca, &spec, &old, KeyAlgorithm::EcdsaP256, later).unwrap();
    assert_eq!(renewed.key_pem, old.key_pem, "the same key, byte for byte (kubeadm certs renew keeps it)");
    assert_key_is(
        &Issued { cert_pem: renewed.cert_pem.clone(), key_pem: renewed.key_pem.clone() },
        KeyAlgorithm::Rsa2048,
    );
    let (before, after) = (cert(&old.cert_pem), cert(&renewed.cert_pem));
    assert_ne!(before.serial_number().to_bn().unwrap(), after.serial_number().to_bn().unwrap());
    assert_eq!(unix(after.not_before()), unix_of(later) - BACKDATE_SECS);
    assert_eq!(unix(after.not_after()), unix_of(later + YEAR));
    assert_eq!(before.subject_name().to_der().unwrap(), after.subject_name().to_der().unwrap());
    assert!(leaf_matches(&renewed.cert_pem, &ca, &spec, later).unwrap());
    assert!(issued_by(&renewed.cert_pem, &ca.cert_pem));
    assert!(!inspect(&renewed.cert_pem).unwrap().is_ca && inspect(&ca.cert_pem).unwrap().is_ca);

    // A key that is not the certificate's is replaced by a new one of the given algorithm.
    let stranger = issue_leaf(&ca, &spec, KeyAlgorithm::EcdsaP256, now).unwrap();
    let mixed = Issued { cert_pem: old.cert_pem.clone(), key_pem: stranger.key_pem.clone() };
    let fresh = renew_leaf(&ca, &spec, &mixed, KeyAlgorithm::EcdsaP256, later).unwrap();
    assert_ne!(fresh.key_pem, stranger.key_pem);
    assert_key_is(&fresh, KeyAlgorithm::EcdsaP256);
}

#[test]
fn dates_are_utc_calendar_days() {
    assert_eq!(utc_date(unix_time(0)), "1970-01-01");
    assert_eq!(utc_date(unix_time(86_399)), "1970-01-01");
    assert_eq!(utc_date(unix_time(951_782_400)), "2000-02-29");
    assert_eq!(utc_date(unix_time(1_790_000_000)), "2026-09-21");
    assert_eq!(utc_date(unix_time(253_402_300_799)), "9999-12-31");
    assert_eq!(utc_date(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), "1969-12-31");
}

fn unix_time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// kubeadm's pubkeypin, recomputed with the openssl CLI as an independent implementation:
/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
fn cli_discovery_hash(ca_cert_pem: &str) -> String {
    let pipeline = "openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum";
    let mut child = Command::new("bash")
        .args(["-o", "pipefail", "-c", pipeline])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(ca_cert_pem.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{pipeline} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

#[test]
fn discovery_hash_matches_the_openssl_cli_for_rsa_and_ecdsa() {
    let empty_input_hash = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let shape = regex::Regex::new("^sha256:[0-9a-f]{64}$").unwrap();
    for algorithm in [KeyAlgorithm::Rsa2048, KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
        let ca = new_ca(KUBERNETES_CA, algorithm, YEAR, SystemTime::now()).unwrap();
        let hash = discovery_token_ca_cert_hash(&ca.cert_pem).unwrap();
        assert!(shape.is_match(&hash), "{hash}");
        assert_ne!(hash, empty_input_hash, "{algorithm:?}");
        assert_eq!(hash, cli_discovery_hash(&ca.cert_pem), "{algorithm:?}");
    }
    assert!(matches!(discovery_token_ca_cert_hash("junk"), Err(PkiError::Parse { .. })));
}

#[test]
fn service_account_key_pair_is_a_matching_pkcs8_and_public_key_pem() {
    for (algorithm, id) in [(KeyAlgorithm::Rsa2048, Id::RSA), (KeyAlgorithm::EcdsaP256, Id::EC)] {
        let (key_pem, pub_pem) = service_account_key_pair(algorithm).unwrap();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let key = PKey::private_key_from_pem(key_pem.as_bytes()).unwrap();
        let public = PKey::public_key_from_pem(pub_pem.as_bytes()).unwrap();
        assert_eq!(key.id(), id);
        assert!(public.public_eq(&key));
        assert_eq!(public_key_pem_of(&key_pem).unwrap(), pub_pem);
        // The CLI derives the same public key.
        let dir = tempfile::tempdir().unwrap();
        let path = write_secret(dir.path(), "sa.key", &key_pem);
        assert_eq!(run_ok(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(path)), pub_pem);
    }
    assert!(public_key_pem_of("junk").is_err());
}

#[test]
fn bootstrap_tokens_match_kubeadm_regexp_are_unique_and_hide_their_secret() {
    let kubeadm_regexp = regex::Regex::new(r"^[a-z0-9]{6}\.[a-z0-9]{16}$").unwrap();
    let mut seen = BTreeSet::new();
    let mut chars = BTreeSet::new();
    for _ in 0..2000 {
        let token = BootstrapToken::generate().unwrap();
        let text = token.expose();
        assert!(kubeadm_regexp.is_match(&text), "{text:?}");
        assert_eq!(text, format!("{}.{}", token.id(), token.secret()));
        assert_eq!(BootstrapToken::parse(&text).unwrap(), token);
        assert!(!format!("{token:?}").contains(token.secret()), "Debug hides the secret");
        assert!(format!("{token:?}").contains(token.id()), "Debug shows the id");
        chars.extend(text.chars().filter(|c| *c != '.'));
        assert!(seen.insert(text), "tokens are unique");
    }
    // 44000 draws: every one of the 36 characters shows up unless the alphabet is wrong.
    assert_eq!(chars.len(), 36, "{chars:?}");

    for bad in [
        "",
        "abcdef0123456789abcdef",
        "abcdef.0123456789abcde",
        "abcdef.0123456789abcdef0",
        "abcde.0123456789abcdef0",
        "ABCDEF.0123456789abcdef",
        "abcdef.0123456789abcdeF",
        "abcdef.0123456789abcdef\n",
        " abcdef.0123456789abcdef",
        "abcdef:0123456789abcdef",
        "abcdéf.0123456789abcdef",
        "abcdef.0123456789.abcdef",
    ] {
        let err = BootstrapToken::parse(bad).expect_err(bad);
        assert!(!err.to_string().contains("0123456789"), "the error repeats the input: {err}");
    }
    let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
    assert_eq!((token.id(), token.secret()), ("abcdef", "0123456789abcdef"));
}

#[test]
fn ssh_keys_read_back_by_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let pair = generate_ed25519("hakube@test").unwrap();
    assert!(pair.private_openssh.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
    assert!(pair.public_line.starts_with("ssh-ed25519 AAAA") && pair.public_line.ends_with(" hakube@test"));
    assert!(!format!("{pair:?}").contains(&pair.private_openssh[40..80]), "Debug hides the private key");

    let private = write_secret(dir.path(), "id_ed25519", &pair.private_openssh);
    let derived = run_ok(Command::new("ssh-keygen").arg("-y").arg("-f").arg(&private));
    let fields = |line: &str| line.split_whitespace().take(2).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(fields(&derived), fields(&pair.public_line), "ssh-keygen -y derives the same public key");
    assert_eq!(public_line_of(&pair.private_openssh).unwrap(), pair.public_line);

    let other = generate_ed25519("").unwrap();
    assert_ne!(fields(&other.public_line), fields(&pair.public_line), "keys are random");
    assert_eq!(other.public_line.split_whitespace().count(), 2, "no comment field when empty");

    let line = known_hosts_line(&["203.0.113.5", "10.0.0.5", "master-1"], &pair.public_line);
    assert_eq!(line, format!("203.0.113.5,10.0.0.5,master-1 {}", fields(&pair.public_line).join(" ")));
    let known_hosts = write_secret(dir.path(), "known_hosts", &format!("{line}\n"));
    for host in ["203.0.113.5", "10.0.0.5", "master-1"] {
        let found = run_ok(Command::new("ssh-keygen").args(["-F", host, "-f"]).arg(&known_hosts));
        assert!(found.contains(&fields(&pair.public_line)[1]), "ssh-keygen -F {host} finds the key: {found}");
    }
    assert!(!support::output(Command::new("ssh-keygen").args(["-F", "10.0.0.6", "-f"]).arg(&known_hosts))
        .status
        .success());

    assert!(public_line_of("-----BEGIN OPENSSH PRIVATE KEY-----\njunk\n-----END OPENSSH PRIVATE KEY-----\n").is_err());
}
