//! Helpers shared by the PKI, etcd and kubeconfig integration tests: temporary files,
//! free ports, child processes that die with the test, and the openssl CLI as an
//! independent reader of certificates.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use openssl::asn1::{Asn1Time, Asn1TimeRef};

/// One year, kubeadm's default leaf validity.
pub const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Writes `contents` to `dir/name` with mode 0600 (it may be a private key).
pub fn write_secret(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.write_all(contents.as_bytes()).expect("write test file");
    path
}

/// `count` distinct TCP ports that were free on `ip` a moment ago (the OS picked them,
/// all bound at once so that they differ).
pub fn free_ports(ip: IpAddr, count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("cannot bind {ip}:0: {e}"))).collect();
    listeners.iter().map(|listener| listener.local_addr().expect("a bound address").port()).collect()
}

/// Runs a command to completion with its output captured.
pub fn output(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let out = output(command);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Fails the test, saying which Debian packages to install, when `binary` is missing.
pub fn require_binary(binary: &str, packages: &str) {
    assert!(
        Path::new(binary).is_file(),
        "{binary} is missing: this test needs it; install it with `apt-get install {packages}`"
    );
}

/// A child process killed (by its PID) and reaped when the guard drops, even when the
/// test fails.
pub struct ChildGuard {
    /// What it is, for messages.
    pub name: String,
    /// The process.
    pub child: Child,
}

impl ChildGuard {
    /// Whether the process has exited already.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Errors mean the process is already gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Unix time of an ASN.1 time.
pub fn unix(time: &Asn1TimeRef) -> i64 {
    let diff = Asn1Time::from_unix(0).unwrap().diff(time).unwrap();
    i64::from(diff.days) * 86_400 + i64::from(diff.secs)
}

/// The Unix time of a `SystemTime`.
pub fn unix_of(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// What the openssl CLI reads from a certificate: the RFC 2253 subject and issuer, and
/// each extension by its display name (e.g. "X509v3 Key Usage") as (critical, value).
#[derive(Debug)]
pub struct CliView {
    pub subject: String,
    pub issuer: String,
    pub extensions: BTreeMap<String, (bool, String)>,
}

impl CliView {
    /// The value of an extension, with its criticality; panics when absent.
    pub fn ext(&self, name: &str) -> (bool, &str) {
        let (critical, value) = self.extensions.get(name).unwrap_or_else(|| panic!("no {name} extension in {self:#?}"));
        (*critical, value.as_str())
    }
}

/// Reads a certificate with `openssl x509` (a process, independent of the crate).
pub fn cli_view(dir: &Path, cert_pem: &str) -> CliView {
    let path = write_secret(dir, "inspect.crt", cert_pem);
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-nameopt", "RFC2253", "-subject", "-issuer"])
            .arg("-in")
            .arg(&path)
            .args([
                "-ext",
                "basicConstraints,keyUsage,extendedKeyUsage,subjectAltName,subjectKeyIdentifier,authorityKeyIdentifier",
            ]),
    );
    let mut subject = String::new();
    let mut issuer = String::new();
    let mut extensions = BTreeMap::new();
    let mut current: Option<(String, bool)> = None;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("subject=") {
            subject = value.to_owned();
        } else if let Some(value) = line.strip_prefix("issuer=") {
            issuer = value.to_owned();
        } else if let Some(value) = line.strip_prefix("    ") {
            let (name, critical) = current.clone().expect("an extension value follows its name");
            let entry: &mut (bool, String) = extensions.entry(name).or_insert((critical, String::new()));
            if !entry.1.is_empty() {
                entry.1.push('\n');
            }
            entry.1.push_str(value.trim_end());
        } else if let Some((name, rest)) = line.split_once(':') {
            current = Some((name.to_owned(), rest.trim() == "critical"));
        }
    }
    CliView { subject, issuer, extensions }
}
