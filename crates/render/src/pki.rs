//! Certificate authorities, leaf certificates and key pairs, as kubeadm makes them.
//!
//! Every function is pure over its inputs: PEM text in, PEM text out, the current time
//! passed as `now`. Certificates follow kubeadm's `pkiutil` (`NewSelfSignedCACert`,
//! `NewSignedCert`) so that kubeadm accepts them as "user-provided" CAs and so that the
//! leaf certificates hakube issues itself (external etcd, the admin kubeconfig) look like
//! kubeadm's own:
//!
//! - CA: self-signed, subject `CN=<name>` only, `basicConstraints` critical `CA:TRUE`,
//!   `keyUsage` critical digitalSignature, keyEncipherment, keyCertSign, a
//!   subjectKeyIdentifier, notBefore backdated 5 minutes.
//! - Leaf: `basicConstraints` critical `CA:FALSE`, `keyUsage` critical digitalSignature
//!   (plus keyEncipherment for an RSA key), extendedKeyUsage serverAuth and/or clientAuth,
//!   subjectAltName, authorityKeyIdentifier; notAfter never past the CA's notAfter.
//! - Renewal: a leaf in the last third of its validity is renewed with its key
//!   ([`leaf_verdict`], [`renew_leaf`]); a CA never is.
//! - Serial numbers: 128 random bits from OpenSSL's CSPRNG, top bit set (so always
//!   positive and 16 bytes long).
//! - Private keys: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`); signatures SHA-256
//!   (SHA-384 for a P-384 CA key, SHA-512 for larger EC keys), as Go's x509 picks them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foreign_types::ForeignTypeRef;
use hakube_cluster::definition::KeyAlgorithm;
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{
    X509Builder, X509ExtendedKeyUsage, X509KeyUsage, X509Name, X509NameBuilder, X509Ref, X509VerifyResult, X509,
};

/// CN of the cluster CA (`pki/ca.crt`), as kubeadm names it.
pub const KUBERNETES_CA: &str = "kubernetes";
/// CN of the front-proxy CA (`pki/front-proxy-ca.crt`), as kubeadm names it.
pub const FRONT_PROXY_CA: &str = "front-proxy-ca";
/// CN of the etcd CA (`pki/etcd/ca.crt`), as kubeadm names it.
pub const ETCD_CA: &str = "etcd-ca";
/// CN of kube-apiserver's client certificate for etcd (`pki/apiserver-etcd-client.crt`).
pub const APISERVER_ETCD_CLIENT: &str = "kube-apiserver-etcd-client";

/// How far kubeadm backdates a new CA's notBefore (`CertificateBackdate`), to tolerate
/// clocks that lag behind the machine that made it.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A certificate and its private key, both PEM.
///
/// `key_pem` is PKCS#8 (`-----BEGIN PRIVATE KEY-----`) when this module made the key;
/// a pair read from disk may hold any unencrypted PEM private key OpenSSL reads (PKCS#1
/// RSA, SEC1 EC). `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, `-----BEGIN CERTIFICATE-----`.
    pub cert_pem: String,
    /// The private key (a secret).
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// An extended key usage a leaf certificate may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExtendedUsage {
    /// `serverAuth` (1.3.6.1.5.5.7.3.1): TLS server.
    ServerAuth,
    /// `clientAuth` (1.3.6.1.5.5.7.3.2): TLS client.
    ClientAuth,
}

/// What a leaf certificate says about its subject; what [`issue_leaf`] makes and
/// [`leaf_matches`] checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// Subject CN (must not be empty; at most 64 characters, X.520's limit).
    pub common_name: String,
    /// Subject O entries (Kubernetes reads them as the user's groups); may be empty.
    pub organizations: Vec<String>,
    /// DNS subjectAltNames.
    pub dns_names: Vec<String>,
    /// IP subjectAltNames.
    pub ips: Vec<IpAddr>,
    /// Extended key usages; empty means no extendedKeyUsage extension.
    pub usages: Vec<ExtendedUsage>,
    /// Lifetime from issuance (kubeadm's `certificateValidityPeriod`, default one year);
    /// capped at the CA's notAfter.
    pub validity: Duration,
}

/// What went wrong making or reading certificates and keys. Messages name the
/// certificate (by CN) involved.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// OpenSSL failed while generating a key or building, signing or encoding a
    /// certificate; `action` says which and for which certificate.
    #[error("failed to {action}")]
    OpenSsl {
        /// What was being done, e.g. `create CA certificate "kubernetes"`.
        action: String,
        /// OpenSSL's error queue.
        #[source]
        source: ErrorStack,
    },
    /// A PEM input is not a certificate or private key OpenSSL can read.
    #[error("failed to parse {what}")]
    Parse {
        /// Which input, e.g. `the CA certificate for "etcd-1"`.
        what: String,
        /// OpenSSL's error queue.
        #[source]
        source: ErrorStack,
    },
    /// The inputs cannot make a valid certificate (empty CN, expired CA, CA key that
    /// does not match its certificate, a time out of range).
    #[error("failed to {action}: {reason}")]
    Invalid {
        /// What was being done, e.g. `issue certificate "etcd-1"`.
        action: String,
        /// Why it cannot be done.
        reason: String,
    },
}

/// Makes a self-signed CA, as kubeadm's `NewSelfSignedCACert` does.
///
/// Subject `CN=<common_name>` only; `basicConstraints` critical `CA:TRUE`; `keyUsage`
/// critical digitalSignature, keyEncipherment, keyCertSign; subjectKeyIdentifier;
/// notBefore `now - 5 min`; notAfter `now + validity` (kubeadm's
/// `caCertificateValidityPeriod`, 10 years by default). A new key of `algorithm`.
///
/// # Errors
///
/// [`PkiError::Invalid`] for an empty CN or a time before 1970 or past year 9999;
/// [`PkiError::OpenSsl`] when key generation or signing fails.
pub fn new_ca(
    common_name: &str,
    algorithm: KeyAlgorithm,
    validity: Duration,
    now: SystemTime,
) -> Result<Issued, PkiError> {
    let action = || format!("create CA certificate {common_name:?}");
    if common_name.is_empty() {
        return Err(invalid(action(), "the common name is empty"));
    }
    let not_before = unix_seconds(now.checked_sub(BACKDATE), &action)?;
    let not_after = unix_seconds(now.checked_add(validity), &action)?;
    let build = || -> Result<Issued, ErrorStack> {
        let key = generate_key(algorithm)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
        let name = name.build();

        let mut builder = X509Builder::new()?;
        builder.set_version(2)?;
        let serial = random_serial()?.to_asn1_integer()?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        builder.set_pubkey(&key)?;
        builder.set_not_before(Asn1Time::from_unix(not_before)?.as_ref())?;
        builder.set_not_after(Asn1Time::from_unix(not_after)?.as_ref())?;
        builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        builder.append_extension(
            KeyUsage::new().critical().digital_signature().key_encipherment().key_cert_sign().build()?,
        )?;
        let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
        builder.append_extension(ski)?;
        builder.sign(&key, digest_for(&key))?;
        encode(builder.build(), &key)
    };
    build().map_err(|source| PkiError::OpenSsl { action: action(), source })
}

/// Issues a leaf certificate for `spec`, signed by `ca`, with a new key of `algorithm`,
/// as kubeadm's `NewSignedCert` does.
///
/// Issuer = the CA's subject; subject = `O=<organizations...>, CN=<common_name>`;
/// `basicConstraints` critical `CA:FALSE`; `keyUsage` critical digitalSignature (plus
/// keyEncipherment when the new key is RSA); extendedKeyUsage from `spec.usages`;
/// subjectAltName from `spec.dns_names` and `spec.ips`; authorityKeyIdentifier (when
/// the CA has a subjectKeyIdentifier). notBefore `now - 5 min` (not before the CA's),
/// notAfter `now + spec.validity` capped at the CA's notAfter.
///
/// # Errors
///
/// [`PkiError::Parse`] when `ca` does not parse; [`PkiError::Invalid`] for an empty CN,
/// a CA key that does not match the CA certificate, or a CA that has expired at `now`;
/// [`PkiError::OpenSsl`] when key generation or signing fails.
pub fn issue_leaf(ca: &Issued, spec: &LeafSpec, algorithm: KeyAlgorithm, now: SystemTime) -> Result<Issued, PkiError> {
    let signer = LeafSigner::new(ca, spec, now)?;
    let key = generate_key(algorithm).map_err(|source| signer.openssl_error(source))?;
    let cert = signer.sign(&key)?;
    encode(cert, &key).map_err(|source| signer.openssl_error(source))
}

/// Reissues `existing` (a leaf certificate and its key) from `ca` for `spec` at `now`, as
/// `kubeadm certs renew` does: the same private key when `existing.key_pem` is an
/// unencrypted key that belongs to `existing.cert_pem` (the returned `key_pem` is then
/// `existing.key_pem` byte for byte, so the key file does not change), otherwise a new
/// key of `algorithm`. Everything else as [`issue_leaf`]: a new serial, notBefore
/// `now - 5 min`, notAfter `now + spec.validity` capped at the CA's.
///
/// # Errors
///
/// As [`issue_leaf`].
pub fn renew_leaf(
    ca: &Issued,
    spec: &LeafSpec,
    existing: &Issued,
    algorithm: KeyAlgorithm,
    now: SystemTime,
) -> Result<Issued, PkiError> {
    let kept = X509::from_pem(existing.cert_pem.as_bytes()).ok().and_then(|cert| {
        let key = PKey::private_key_from_pem_callback(existing.key_pem.as_bytes(), |_passphrase| Ok(0)).ok()?;
        cert.public_key().ok()?.public_eq(&key).then_some(key)
    });
    let Some(key) = kept else {
        return issue_leaf(ca, spec, algorithm, now);
    };
    let signer = LeafSigner::new(ca, spec, now)?;
    let cert = signer.sign(&key)?;
    let cert_pem = cert.to_pem().map(pem_string).map_err(|source| signer.openssl_error(source))?;
    Ok(Issued { cert_pem, key_pem: existing.key_pem.clone() })
}

/// A CA checked and ready to sign one leaf for a spec: what [`issue_leaf`] and
/// [`renew_leaf`] share.
struct LeafSigner<'a> {
    spec: &'a LeafSpec,
    ca_cert: X509,
    ca_key: PKey<Private>,
    ca_name: String,
    not_before: i64,
    not_after: i64,
}

impl<'a> LeafSigner<'a> {
    fn new(ca: &Issued, spec: &'a LeafSpec, now: SystemTime) -> Result<Self, PkiError> {
        let cn = &spec.common_name;
        let action = || format!("issue certificate {cn:?}");
        if cn.is_empty() {
            return Err(invalid(action(), "the common name is empty"));
        }
        let ca_cert = parse_cert(&ca.cert_pem, || format!("the CA certificate for {cn:?}"))?;
        let ca_key = parse_key(&ca.key_pem, || format!("the CA key for {cn:?}"))?;
        let ca_name = common_name_of(&ca_cert);
        let ca_matches = ca_cert.public_key().map(|public| public.public_eq(&ca_key));
        if !ca_matches
            .map_err(|source| PkiError::Parse { what: format!("the public key of CA {ca_name:?}"), source })?
        {
            return Err(invalid(action(), format!("the key of CA {ca_name:?} does not match its certificate")));
        }
        let (ca_not_before, ca_not_after) = validity_of(&ca_cert)
            .map_err(|source| PkiError::Parse { what: format!("the validity of CA {ca_name:?}"), source })?;
        let now_secs = unix_seconds(Some(now), &action)?;
        if ca_not_after <= now_secs {
            return Err(invalid(action(), format!("CA {ca_name:?} has expired")));
        }
        let not_before = unix_seconds(now.checked_sub(BACKDATE), &action)?.max(ca_not_before);
        let not_after = unix_seconds(now.checked_add(spec.validity), &action)?.min(ca_not_after);
        Ok(LeafSigner { spec, ca_cert, ca_key, ca_name, not_before, not_after })
    }

    fn openssl_error(&self, source: ErrorStack) -> PkiError {
        let (cn, ca_name) = (&self.spec.common_name, &self.ca_name);
        PkiError::OpenSsl { action: format!("issue certificate {cn:?} with CA {ca_name:?}"), source }
    }

    /// The certificate for `key`'s public half.
    fn sign(&self, key: &PKeyRef<Private>) -> Result<X509, PkiError> {
        let (spec, ca_cert) = (self.spec, &self.ca_cert);
        let build = || -> Result<X509, ErrorStack> {
            let mut name = X509NameBuilder::new()?;
            for organization in &spec.organizations {
                name.append_entry_by_nid(Nid::ORGANIZATIONNAME, organization)?;
            }
            name.append_entry_by_nid(Nid::COMMONNAME, &spec.common_name)?;
            let name: X509Name = name.build();

            let mut builder = X509Builder::new()?;
            builder.set_version(2)?;
            let serial = random_serial()?.to_asn1_integer()?;
            builder.set_serial_number(&serial)?;
            builder.set_subject_name(&name)?;
            builder.set_issuer_name(ca_cert.subject_name())?;
            builder.set_pubkey(key)?;
            builder.set_not_before(Asn1Time::from_unix(self.not_before)?.as_ref())?;
            builder.set_not_after(Asn1Time::from_unix(self.not_after)?.as_ref())?;
            builder.append_extension(BasicConstraints::new().critical().build()?)?;
            let mut usage = KeyUsage::new();
            usage.critical().digital_signature();
            if key.id() == Id::RSA {
                usage.key_encipherment();
            }
            builder.append_extension(usage.build()?)?;
            if !spec.usages.is_empty() {
                let mut eku = ExtendedKeyUsage::new();
                for usage in &spec.usages {
                    match usage {
                        ExtendedUsage::ServerAuth => eku.server_auth(),
                        ExtendedUsage::ClientAuth => eku.client_auth(),
                    };
                }
                builder.append_extension(eku.build()?)?;
            }
            if !spec.dns_names.is_empty() || !spec.ips.is_empty() {
                let mut san = SubjectAlternativeName::new();
                for dns in &spec.dns_names {
                    san.dns(dns);
                }
                for ip in &spec.ips {
                    san.ip(&ip.to_string());
                }
                let san = san.build(&builder.x509v3_context(Some(ca_cert), None))?;
                builder.append_extension(san)?;
            }
            let aki = AuthorityKeyIdentifier::new().keyid(false).build(&builder.x509v3_context(Some(ca_cert), None))?;
            builder.append_extension(aki)?;
            builder.sign(&self.ca_key, digest_for(&self.ca_key))?;
            Ok(builder.build())
        };
        build().map_err(|source| self.openssl_error(source))
    }
}

/// Whether an existing leaf certificate still says what `spec` asks, so that it can be
/// kept rather than reissued.
///
/// True when all hold: `ca` issued it (issuer name and key identifier match, and the
/// signature verifies with the CA's key); its subject CN equals `spec.common_name`; its
/// O entries, DNS SANs and IP SANs equal the spec's as sets (and it has no SAN of another
/// kind); its extendedKeyUsage holds exactly the spec's usages (none: no extension); and
/// its notAfter is after `now`. `spec.validity` is not compared, nor is how much of the
/// validity is left: [`leaf_verdict`] decides renewal.
///
/// # Errors
///
/// [`PkiError::Parse`] when `cert_pem` or the CA certificate does not parse.
pub fn leaf_matches(cert_pem: &str, ca: &Issued, spec: &LeafSpec, now: SystemTime) -> Result<bool, PkiError> {
    let cn = &spec.common_name;
    let cert = parse_cert(cert_pem, || format!("the existing certificate for {cn:?}"))?;
    let ca_cert = parse_cert(&ca.cert_pem, || format!("the CA certificate for {cn:?}"))?;
    if !fits(&cert, &ca_cert, spec)? {
        return Ok(false);
    }
    let (_, not_after) = validity_of(&cert)
        .map_err(|source| PkiError::Parse { what: format!("the existing certificate for {cn:?}"), source })?;
    Ok(not_after > unix_seconds(Some(now), &|| format!("check certificate {cn:?}"))?)
}

/// What render does with an existing leaf certificate (see [`leaf_verdict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafVerdict {
    /// It says what the spec asks and is not yet in the last third of its validity: keep
    /// it, byte for byte.
    Keep,
    /// It says what the spec asks but is in the last third of its validity or has
    /// expired, and a certificate issued now would end later: renew it from the same CA
    /// ([`renew_leaf`]). Holds the old certificate's validity, for the report.
    Renew(Validity),
    /// It no longer says what the spec asks, or `ca` did not issue it: issue a new one.
    Reissue,
}

/// Decides whether an existing leaf is kept, renewed or reissued.
///
/// - [`LeafVerdict::Reissue`] when [`leaf_matches`]' checks other than the date fail
///   (subject, SANs, usages, issuing CA).
/// - [`LeafVerdict::Renew`] when `now` is at or past notBefore + 2/3 of
///   (notAfter − notBefore) ([`Validity::renew_from`]; this includes an expired leaf) and
///   a leaf issued at `now` (notAfter `now + spec.validity`, capped at the CA's notAfter)
///   would end later than this one. A leaf just issued is never due (its last third
///   starts a good while after its notBefore), so re-rendering stays byte-stable; nor is
///   one that already ends with its CA (renewing could not extend it: only rotating the
///   CA can, and [`Validity::expiry`] of the CA tells when to).
/// - [`LeafVerdict::Keep`] otherwise.
///
/// The last-third rule: kubeadm renews the certificates it manages only when told to
/// (`kubeadm certs renew`, or automatically during `kubeadm upgrade apply`), keeping their
/// keys, and does not renew the certificates of an external etcd at all; `admin.conf` in
/// the assets is hakube's own (`kubeadm certs renew admin.conf` renews the node's copy
/// only). See "Certificate Management with kubeadm",
/// <https://kubernetes.io/docs/tasks/administer-cluster/kubeadm/kubeadm-certs/>. So
/// render renews hakube's leaves itself, a third of their lifetime ahead of expiry
/// (four months for kubeadm's default of one year).
///
/// # Errors
///
/// [`PkiError::Parse`] when `cert_pem` or the CA certificate does not parse;
/// [`PkiError::Invalid`] when `now + spec.validity` is not a representable time.
pub fn leaf_verdict(cert_pem: &str, ca: &Issued, spec: &LeafSpec, now: SystemTime) -> Result<LeafVerdict, PkiError> {
    let cn = &spec.common_name;
    let cert = parse_cert(cert_pem, || format!("the existing certificate for {cn:?}"))?;
    let ca_cert = parse_cert(&ca.cert_pem, || format!("the CA certificate for {cn:?}"))?;
    if !fits(&cert, &ca_cert, spec)? {
        return Ok(LeafVerdict::Reissue);
    }
    let validity = Validity::of_x509(&cert)
        .map_err(|source| PkiError::Parse { what: format!("the existing certificate for {cn:?}"), source })?;
    let ca_validity = Validity::of_x509(&ca_cert)
        .map_err(|source| PkiError::Parse { what: format!("the CA certificate for {cn:?}"), source })?;
    let Some(renewed_not_after) = now.checked_add(spec.validity).map(|end| end.min(ca_validity.not_after)) else {
        return Err(invalid(format!("check certificate {cn:?}"), "the validity period is outside 1970..9999"));
    };
    let due = now >= validity.renew_from();
    Ok(if due && renewed_not_after > validity.not_after { LeafVerdict::Renew(validity) } else { LeafVerdict::Keep })
}

/// Whether `cert` says what `spec` asks and `ca_cert` issued it; dates are not looked at.
fn fits(cert: &X509Ref, ca_cert: &X509Ref, spec: &LeafSpec) -> Result<bool, PkiError> {
    let cn = &spec.common_name;
    if ca_cert.issued(cert) != X509VerifyResult::OK {
        return Ok(false);
    }
    let ca_public = ca_cert
        .public_key()
        .map_err(|source| PkiError::Parse { what: format!("the CA certificate for {cn:?}"), source })?;
    // A key of another type fails with an error rather than `false`: both mean "not signed by it".
    if !cert.verify(&ca_public).unwrap_or(false) {
        return Ok(false);
    }

    let Some(names) = name_entries(cert.subject_name(), Nid::COMMONNAME) else {
        return Ok(false);
    };
    if names != [cn.clone()] {
        return Ok(false);
    }
    let Some(organizations) = name_entries(cert.subject_name(), Nid::ORGANIZATIONNAME) else {
        return Ok(false);
    };
    if set(&organizations) != set(&spec.organizations) {
        return Ok(false);
    }

    let mut dns_names = BTreeSet::new();
    let mut ips = BTreeSet::new();
    for name in cert.subject_alt_names().iter().flatten() {
        if let Some(dns) = name.dnsname() {
            dns_names.insert(dns.to_owned());
        } else if let Some(ip) = name.ipaddress().and_then(ip_from_bytes) {
            ips.insert(ip);
        } else {
            return Ok(false);
        }
    }
    if dns_names != set(&spec.dns_names) || ips != set(&spec.ips) {
        return Ok(false);
    }

    let wanted = (!spec.usages.is_empty()).then(|| {
        spec.usages.iter().fold(X509ExtendedKeyUsage::empty(), |bits, usage| {
            bits | match usage {
                ExtendedUsage::ServerAuth => X509ExtendedKeyUsage::SSL_SERVER,
                ExtendedUsage::ClientAuth => X509ExtendedKeyUsage::SSL_CLIENT,
            }
        })
    });
    Ok(cert.extended_key_usage() == wanted)
}

/// A certificate's validity period, to the second (X.509 holds no finer time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter (the certificate is expired from this instant on).
    pub not_after: SystemTime,
}

/// Where `now` falls in a certificate's validity (see [`Validity::expiry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expiry {
    /// Before the last third of its validity.
    Valid,
    /// In the last third: at or after [`Validity::renew_from`], before notAfter.
    LastThird,
    /// At or after notAfter.
    Expired,
}

impl Validity {
    /// The validity of a PEM certificate.
    ///
    /// # Errors
    ///
    /// [`PkiError::Parse`] when `cert_pem` is not a certificate or its dates cannot be read.
    pub fn of(cert_pem: &str) -> Result<Validity, PkiError> {
        let what = || "a certificate's validity".to_owned();
        let cert = parse_cert(cert_pem, what)?;
        Validity::of_x509(&cert).map_err(|source| PkiError::Parse { what: what(), source })
    }

    fn of_x509(cert: &X509Ref) -> Result<Validity, ErrorStack> {
        let (not_before, not_after) = validity_of(cert)?;
        Ok(Validity { not_before: system_time(not_before), not_after: system_time(not_after) })
    }

    /// notAfter − notBefore (zero when notAfter is not after notBefore).
    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before).unwrap_or_default()
    }

    /// The instant the last third of the validity begins: notBefore + 2/3 of
    /// [`Validity::lifetime`], rounded down to the second. From then on render renews a
    /// leaf and render and install warn.
    pub fn renew_from(&self) -> SystemTime {
        let secs = self.lifetime().as_secs();
        self.not_before + Duration::from_secs(secs / 3 * 2 + secs % 3 * 2 / 3)
    }

    /// Where `now` falls: [`Expiry::Expired`] at or after notAfter, [`Expiry::LastThird`]
    /// at or after [`Validity::renew_from`], [`Expiry::Valid`] before.
    pub fn expiry(&self, now: SystemTime) -> Expiry {
        if now >= self.not_after {
            Expiry::Expired
        } else if now >= self.renew_from() {
            Expiry::LastThird
        } else {
            Expiry::Valid
        }
    }
}

/// What [`inspect`] reads off a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject CN (empty when it has none).
    pub common_name: String,
    /// Whether it is a CA (`basicConstraints` `CA:TRUE`).
    pub is_ca: bool,
    /// Its validity period.
    pub validity: Validity,
}

/// The subject CN, CA flag and validity of a PEM certificate.
///
/// # Errors
///
/// [`PkiError::Parse`] when `cert_pem` is not a certificate or its dates cannot be read.
pub fn inspect(cert_pem: &str) -> Result<CertificateInfo, PkiError> {
    let what = || "a certificate".to_owned();
    let cert = parse_cert(cert_pem, what)?;
    let validity = Validity::of_x509(&cert).map_err(|source| PkiError::Parse { what: what(), source })?;
    Ok(CertificateInfo { common_name: common_name_of(&cert), is_ca: has_ca_flag(&cert), validity })
}

/// Whether the CA certificate `ca_cert_pem` issued `cert_pem` (issuer name and key
/// identifier match, and the signature verifies with the CA's key). False when either
/// does not parse.
pub fn issued_by(cert_pem: &str, ca_cert_pem: &str) -> bool {
    let (Ok(cert), Ok(ca)) = (X509::from_pem(cert_pem.as_bytes()), X509::from_pem(ca_cert_pem.as_bytes())) else {
        return false;
    };
    ca.issued(&cert) == X509VerifyResult::OK
        && ca.public_key().is_ok_and(|public| cert.verify(&public).unwrap_or(false))
}

/// `time` as a UTC calendar date, `YYYY-MM-DD` (proleptic Gregorian; years before 1 or
/// after 9999 are not padded to four digits).
pub fn utc_date(time: SystemTime) -> String {
    let secs = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    // Howard Hinnant's civil_from_days.
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// Whether `key_pem` is the private key of `cert_pem` and that certificate is a CA
/// (`basicConstraints` `CA:TRUE`, and keyCertSign when it has a `keyUsage`): the check
/// for reusing an existing CA, as kubeadm reuses a user-provided one. Validity dates are
/// not checked.
///
/// # Errors
///
/// [`PkiError::Parse`] when either PEM does not parse.
pub fn is_ca_pair(cert_pem: &str, key_pem: &str) -> Result<bool, PkiError> {
    let cert = parse_cert(cert_pem, || "the CA certificate".to_owned())?;
    let name = common_name_of(&cert);
    let key = parse_key(key_pem, || format!("the key of CA {name:?}"))?;
    let public = cert
        .public_key()
        .map_err(|source| PkiError::Parse { what: format!("the public key of CA {name:?}"), source })?;
    let signs_certs = cert.key_usage().is_none_or(|usage| usage.contains(X509KeyUsage::KEY_CERT_SIGN));
    Ok(public.public_eq(&key) && has_ca_flag(&cert) && signs_certs)
}

/// Makes the service-account signing key pair (`sa.key`, `sa.pub`) with a new key of
/// `algorithm` (kubeadm uses the cluster's `encryptionAlgorithm` for it too).
///
/// Returns `(private PKCS#8 PEM, public "PUBLIC KEY" PEM)`.
///
/// # Errors
///
/// [`PkiError::OpenSsl`] when key generation or encoding fails.
pub fn service_account_key_pair(algorithm: KeyAlgorithm) -> Result<(String, String), PkiError> {
    let make = || -> Result<(String, String), ErrorStack> {
        let key = generate_key(algorithm)?;
        Ok((pem_string(key.private_key_to_pem_pkcs8()?), pem_string(key.public_key_to_pem()?)))
    };
    make().map_err(|source| PkiError::OpenSsl {
        action: format!("generate the {} service-account key", algorithm.as_kubeadm_str()),
        source,
    })
}

/// The public half of a PEM private key (any kind OpenSSL reads), as a
/// `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo) PEM: how `sa.pub` is derived
/// from an existing `sa.key`.
///
/// # Errors
///
/// [`PkiError::Parse`] when `key_pem` is not a private key.
pub fn public_key_pem_of(key_pem: &str) -> Result<String, PkiError> {
    let what = || "the service-account private key".to_owned();
    let key = parse_key(key_pem, what)?;
    key.public_key_to_pem().map(pem_string).map_err(|source| PkiError::Parse { what: what(), source })
}

/// kubeadm's discovery-token CA certificate hash (its `pubkeypin`): `sha256:` followed by
/// the lowercase hex SHA-256 of the CA certificate's DER SubjectPublicKeyInfo, for any
/// key type. The value of `caCertHashes` / `--discovery-token-ca-cert-hash`.
///
/// # Errors
///
/// [`PkiError::Parse`] when `ca_cert_pem` is not a certificate.
pub fn discovery_token_ca_cert_hash(ca_cert_pem: &str) -> Result<String, PkiError> {
    let what = || "the cluster CA certificate for the discovery hash".to_owned();
    let cert = parse_cert(ca_cert_pem, what)?;
    let spki = cert
        .public_key()
        .and_then(|key| key.public_key_to_der())
        .map_err(|source| PkiError::Parse { what: what(), source })?;
    Ok(format!("sha256:{}", hex::encode(openssl::sha::sha256(&spki))))
}

/// The spec of an etcd member's server or peer certificate, as kubeadm makes
/// `etcd/server.crt` and `etcd/peer.crt`: CN = the node name, serverAuth + clientAuth,
/// DNS SANs the node name and `localhost`, IP SANs the member's address, `127.0.0.1`
/// and `::1`. `validity` as in [`LeafSpec::validity`].
pub fn etcd_member_spec(node_name: &str, address: IpAddr, validity: Duration) -> LeafSpec {
    let mut ips = vec![address];
    for local in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
        if !ips.contains(&local) {
            ips.push(local);
        }
    }
    let mut dns_names = vec![node_name.to_owned()];
    if node_name != "localhost" {
        dns_names.push("localhost".to_owned());
    }
    LeafSpec {
        common_name: node_name.to_owned(),
        organizations: Vec::new(),
        dns_names,
        ips,
        usages: vec![ExtendedUsage::ServerAuth, ExtendedUsage::ClientAuth],
        validity,
    }
}

/// The spec of kube-apiserver's client certificate for etcd
/// (`apiserver-etcd-client.crt`): CN `kube-apiserver-etcd-client`, no O, clientAuth.
pub fn apiserver_etcd_client_spec(validity: Duration) -> LeafSpec {
    LeafSpec {
        common_name: APISERVER_ETCD_CLIENT.to_owned(),
        organizations: Vec::new(),
        dns_names: Vec::new(),
        ips: Vec::new(),
        usages: vec![ExtendedUsage::ClientAuth],
        validity,
    }
}

fn generate_key(algorithm: KeyAlgorithm) -> Result<PKey<Private>, ErrorStack> {
    let ec = |curve| EcGroup::from_curve_name(curve).and_then(|group| EcKey::generate(&group));
    match algorithm {
        KeyAlgorithm::Rsa2048 => PKey::from_rsa(Rsa::generate(2048)?),
        KeyAlgorithm::Rsa3072 => PKey::from_rsa(Rsa::generate(3072)?),
        KeyAlgorithm::Rsa4096 => PKey::from_rsa(Rsa::generate(4096)?),
        KeyAlgorithm::EcdsaP256 => PKey::from_ec_key(ec(Nid::X9_62_PRIME256V1)?),
        KeyAlgorithm::EcdsaP384 => PKey::from_ec_key(ec(Nid::SECP384R1)?),
    }
}

/// The digest Go's x509 signs with for this key: SHA-384 for P-384, SHA-512 for larger
/// EC keys, SHA-256 otherwise.
fn digest_for(key: &PKeyRef<Private>) -> MessageDigest {
    match (key.id(), key.bits()) {
        (Id::EC, bits) if bits > 384 => MessageDigest::sha512(),
        (Id::EC, bits) if bits > 256 => MessageDigest::sha384(),
        _ => MessageDigest::sha256(),
    }
}

fn random_serial() -> Result<BigNum, ErrorStack> {
    let mut serial = BigNum::new()?;
    serial.rand(128, MsbOption::ONE, false)?;
    Ok(serial)
}

fn encode(cert: X509, key: &PKeyRef<Private>) -> Result<Issued, ErrorStack> {
    Ok(Issued { cert_pem: pem_string(cert.to_pem()?), key_pem: pem_string(key.private_key_to_pem_pkcs8()?) })
}

/// PEM is ASCII; OpenSSL never writes anything else into it.
fn pem_string(pem: Vec<u8>) -> String {
    String::from_utf8_lossy(&pem).into_owned()
}

fn parse_cert(pem: &str, what: impl FnOnce() -> String) -> Result<X509, PkiError> {
    X509::from_pem(pem.as_bytes()).map_err(|source| PkiError::Parse { what: what(), source })
}

/// Reads an unencrypted PEM private key. The callback answers an empty passphrase so
/// that an encrypted key fails instead of OpenSSL prompting on the terminal.
fn parse_key(pem: &str, what: impl FnOnce() -> String) -> Result<PKey<Private>, PkiError> {
    PKey::private_key_from_pem_callback(pem.as_bytes(), |_passphrase| Ok(0))
        .map_err(|source| PkiError::Parse { what: what(), source })
}

fn invalid(action: String, reason: impl Into<String>) -> PkiError {
    PkiError::Invalid { action, reason: reason.into() }
}

/// Seconds since the Unix epoch; `None` (an overflow upstream) or a time outside what
/// X.509 can hold is an error.
fn unix_seconds(time: Option<SystemTime>, action: &dyn Fn() -> String) -> Result<i64, PkiError> {
    // 9999-12-31T23:59:59Z, the last instant GeneralizedTime can spell.
    const LAST: u64 = 253_402_300_799;
    time.and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map(|since| since.as_secs())
        .filter(|secs| *secs <= LAST)
        .and_then(|secs| i64::try_from(secs).ok())
        .ok_or_else(|| invalid(action(), "the validity period is outside 1970..9999"))
}

fn asn1_unix(time: &Asn1TimeRef) -> Result<i64, ErrorStack> {
    let diff = Asn1Time::from_unix(0)?.diff(time)?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

fn validity_of(cert: &X509Ref) -> Result<(i64, i64), ErrorStack> {
    Ok((asn1_unix(cert.not_before())?, asn1_unix(cert.not_after())?))
}

fn common_name_of(cert: &X509Ref) -> String {
    name_entries(cert.subject_name(), Nid::COMMONNAME).and_then(|names| names.into_iter().next()).unwrap_or_default()
}

/// The UTF-8 values of one attribute in a name; `None` when one is not valid text.
fn name_entries(name: &openssl::x509::X509NameRef, nid: Nid) -> Option<Vec<String>> {
    name.entries_by_nid(nid).map(|entry| entry.data().to_string().ok()).collect()
}

fn set<T: Ord + Clone>(items: &[T]) -> BTreeSet<T> {
    items.iter().cloned().collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Whether `cert` has `basicConstraints` `CA:TRUE` (and well-formed extensions). The
/// openssl crate has no safe accessor for basicConstraints, hence the FFI call.
fn has_ca_flag(cert: &X509Ref) -> bool {
    // SAFETY: `cert.as_ptr()` is a valid, live X509 for the duration of the call;
    // X509_get_extension_flags only parses and caches the certificate's extensions.
    let flags = unsafe { openssl_sys::X509_get_extension_flags(cert.as_ptr()) };
    flags & openssl_sys::EXFLAG_CA != 0 && flags & openssl_sys::EXFLAG_INVALID == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_follows_the_signing_key_like_go() {
        let rsa = generate_key(KeyAlgorithm::Rsa2048).unwrap();
        let p256 = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
        let p384 = generate_key(KeyAlgorithm::EcdsaP384).unwrap();
        assert_eq!(digest_for(&rsa).type_(), MessageDigest::sha256().type_());
        assert_eq!(digest_for(&p256).type_(), MessageDigest::sha256().type_());
        assert_eq!(digest_for(&p384).type_(), MessageDigest::sha384().type_());
    }

    #[test]
    fn times_outside_x509_are_errors_not_panics() {
        let before_epoch = UNIX_EPOCH.checked_sub(Duration::from_secs(3600));
        let err =
            new_ca("kubernetes", KeyAlgorithm::EcdsaP256, Duration::from_secs(60), before_epoch.unwrap()).unwrap_err();
        assert!(err.to_string().starts_with("failed to create CA certificate \"kubernetes\""), "{err}");
        let far = Duration::from_secs(400 * 365 * 86_400 * 100);
        assert!(new_ca("kubernetes", KeyAlgorithm::EcdsaP256, far, SystemTime::now()).is_err());
    }

    #[test]
    fn empty_common_name_is_refused() {
        let err = new_ca("", KeyAlgorithm::EcdsaP256, Duration::from_secs(60), SystemTime::now()).unwrap_err();
        assert!(matches!(err, PkiError::Invalid { .. }), "{err}");
    }

    #[test]
    fn ip_bytes_of_both_families() {
        assert_eq!(ip_from_bytes(&[127, 0, 0, 1]), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(ip_from_bytes(&v6), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
    }
}
