//! The admin kubeconfig render makes, read by the real kubectl: `kubectl config view`
//! parses it, and `kubectl get --raw /version` talks mutual TLS to a test HTTPS server
//! that trusts only the rendered cluster CA and records the client certificate's CN.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hakube_cluster::definition::KeyAlgorithm;
use hakube_render::kubeconfig::{admin_client_spec, admin_kubeconfig};
use hakube_render::pki::{issue_leaf, new_ca, ExtendedUsage, Issued, LeafSpec, KUBERNETES_CA};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use support::{output, run_ok, write_secret, YEAR};

const KUBECTL: &str = "/usr/bin/kubectl";
const VERSION_JSON: &str = r#"{"major":"1","minor":"35","gitVersion":"v1.35.0-hakube-test","platform":"linux/amd64"}"#;

/// What the server saw of one connection: the client certificate's CN, or why the TLS
/// handshake failed.
type Seen = Result<String, String>;

/// A one-thread HTTPS server on 127.0.0.1 that requires a client certificate from
/// `client_ca` and answers every request with [`VERSION_JSON`]. Stopped on drop.
struct TestServer {
    port: u16,
    seen: Receiver<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(server: &Issued, client_ca: &Issued) -> Self {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        acceptor.set_private_key(&PKey::private_key_from_pem(server.key_pem.as_bytes()).unwrap()).unwrap();
        acceptor.set_certificate(&X509::from_pem(server.cert_pem.as_bytes()).unwrap()).unwrap();
        acceptor.check_private_key().unwrap();
        acceptor.cert_store_mut().add_cert(X509::from_pem(client_ca.cert_pem.as_bytes()).unwrap()).unwrap();
        acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        let acceptor = acceptor.build();

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, seen) = mpsc::channel();
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let event = match acceptor.accept(stream) {
                    Err(e) => Err(e.to_string()),
                    Ok(mut tls) => {
                        let cn = tls
                            .ssl()
                            .peer_certificate()
                            .and_then(|cert| {
                                let entry = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
                                entry.data().to_string().ok()
                            })
                            .unwrap_or_default();
                        // Read the request head, then answer and close.
                        let mut reader = BufReader::new(&mut tls);
                        let mut line = String::new();
                        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                            line.clear();
                        }
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{VERSION_JSON}",
                            VERSION_JSON.len()
                        );
                        let _ = tls.write_all(response.as_bytes()).and_then(|()| tls.flush());
                        let _ = tls.shutdown();
                        Ok(cn)
                    }
                };
                let _ = tx.send(event);
            }
        });
        TestServer { port, seen, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Stops the server and returns what it saw of every connection made before.
    /// Connections are served in order and the wake-up connection comes last, so once
    /// the thread has ended every earlier connection has been recorded.
    fn finish(mut self) -> Vec<Seen> {
        self.stop_thread();
        self.seen.try_iter().collect()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// kubectl with a private HOME (its cache) and nothing from this environment.
fn kubectl(home: &Path, kubeconfig: &Path) -> Command {
    let mut command = Command::new(KUBECTL);
    command.env_clear().env("HOME", home).arg("--kubeconfig").arg(kubeconfig);
    command
}

/// One `kubectl get --raw /version` against a fresh server.
struct Attempt {
    kubeconfig: PathBuf,
    url: String,
    kubectl: Output,
    /// Every connection the server saw (kubectl may make more than one per command).
    seen: Vec<Seen>,
}

impl Attempt {
    fn cns(&self) -> Vec<&str> {
        self.seen.iter().filter_map(|seen| seen.as_deref().ok()).collect()
    }
    fn refusals(&self) -> Vec<&str> {
        self.seen.iter().filter_map(|seen| seen.as_ref().err().map(String::as_str)).collect()
    }
}

/// Serves `server` (trusting client certificates from `ca`), renders an admin
/// kubeconfig for it with `kubeconfig_ca` and `client`, and runs kubectl with it.
fn attempt(dir: &Path, name: &str, server: &Issued, ca: &Issued, kubeconfig_ca: &Issued, client: &Issued) -> Attempt {
    let test_server = TestServer::start(server, ca);
    let url = test_server.url();
    let servers = [
        ("lb".to_owned(), url.clone()),
        ("master-1.example.com".to_owned(), "https://master-1.example.com:6443".to_owned()),
    ];
    let config = admin_kubeconfig("hakube-test", &servers, &kubeconfig_ca.cert_pem, client).unwrap();
    let kubeconfig = write_secret(dir, name, &config);
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let kubectl = output(kubectl(&home, &kubeconfig).args(["get", "--raw", "/version", "--request-timeout=20s"]));
    Attempt { kubeconfig, url, kubectl, seen: test_server.finish() }
}

#[test]
fn kubectl_reads_the_admin_kubeconfig_and_authenticates_with_it() {
    support::require_binary(KUBECTL, "kubectl (from pkgs.k8s.io)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let home = dir.join("home");
    let now = SystemTime::now();
    let algorithm = KeyAlgorithm::Rsa2048;

    let ca = new_ca(KUBERNETES_CA, algorithm, YEAR, now).unwrap();
    let admin = issue_leaf(&ca, &admin_client_spec(YEAR), algorithm, now).unwrap();
    let server_spec = LeafSpec {
        common_name: "kube-apiserver".into(),
        organizations: vec![],
        dns_names: vec!["kubernetes".into(), "localhost".into()],
        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        usages: vec![ExtendedUsage::ServerAuth],
        validity: YEAR,
    };
    let server = issue_leaf(&ca, &server_spec, algorithm, now).unwrap();

    // Mutual TLS: kubectl trusts the server through certificate-authority-data, the server
    // trusts kubectl's client certificate, whose CN is kubernetes-admin.
    let good = attempt(dir, "admin.conf", &server, &ca, &ca, &admin);
    assert!(good.kubectl.status.success(), "kubectl failed: {}", String::from_utf8_lossy(&good.kubectl.stderr));
    let body: serde_json::Value = serde_json::from_slice(&good.kubectl.stdout).unwrap();
    assert_eq!(body["gitVersion"], "v1.35.0-hakube-test");
    assert!(!good.cns().is_empty(), "{:?}", good.seen);
    assert!(good.cns().iter().all(|cn| *cn == "kubernetes-admin"), "{:?}", good.seen);
    assert!(good.refusals().iter().all(|why| !why.contains("certificate verify failed")), "{:?}", good.seen);

    // kubectl parses the same file: names, servers, current context.
    let view = run_ok(kubectl(&home, &good.kubeconfig).args(["config", "view", "-o", "json"]));
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["current-context"], "kubernetes-admin@hakube-test");
    let names = |list: &str| -> Vec<String> {
        view[list].as_array().unwrap().iter().map(|item| item["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names("clusters"), ["hakube-test", "hakube-test-master-1.example.com"]);
    assert_eq!(
        names("contexts"),
        ["kubernetes-admin@hakube-test", "kubernetes-admin@hakube-test-master-1.example.com"]
    );
    assert_eq!(names("users"), ["kubernetes-admin"]);
    assert_eq!(view["clusters"][0]["cluster"]["server"], good.url.as_str());
    assert_eq!(view["clusters"][1]["cluster"]["server"], "https://master-1.example.com:6443");
    for context in view["contexts"].as_array().unwrap() {
        assert_eq!(context["context"]["user"], "kubernetes-admin");
    }
    assert_eq!(view["contexts"][0]["context"]["cluster"], "hakube-test");
    assert_eq!(view["contexts"][1]["context"]["cluster"], "hakube-test-master-1.example.com");

    // The embedded data decodes to the PEMs.
    let raw = run_ok(kubectl(&home, &good.kubeconfig).args(["config", "view", "--raw", "-o", "json"]));
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let decode =
        |value: &serde_json::Value| String::from_utf8(STANDARD.decode(value.as_str().unwrap()).unwrap()).unwrap();
    for cluster in raw["clusters"].as_array().unwrap() {
        assert_eq!(decode(&cluster["cluster"]["certificate-authority-data"]), ca.cert_pem);
    }
    assert_eq!(decode(&raw["users"][0]["user"]["client-certificate-data"]), admin.cert_pem);
    assert_eq!(decode(&raw["users"][0]["user"]["client-key-data"]), admin.key_pem);

    // A client certificate from another CA (same CN, same CA name) is refused by the server.
    let other_ca = new_ca(KUBERNETES_CA, KeyAlgorithm::EcdsaP256, YEAR, now).unwrap();
    let stranger = issue_leaf(&other_ca, &admin_client_spec(YEAR), KeyAlgorithm::EcdsaP256, now).unwrap();
    let refused = attempt(dir, "stranger.conf", &server, &ca, &ca, &stranger);
    assert!(!refused.kubectl.status.success(), "a client certificate from another CA was accepted");
    assert!(refused.cns().is_empty(), "the server accepted a foreign client certificate: {:?}", refused.seen);
    assert!(refused.refusals().iter().any(|why| why.contains("certificate verify failed")), "{:?}", refused.seen);

    // And kubectl refuses a server its kubeconfig's CA did not sign.
    let untrusted = attempt(dir, "wrong-ca.conf", &server, &ca, &other_ca, &admin);
    assert!(!untrusted.kubectl.status.success(), "kubectl trusted a server outside its CA");
    let stderr = String::from_utf8_lossy(&untrusted.kubectl.stderr);
    assert!(stderr.contains("certificate signed by unknown authority"), "{stderr}");
    assert!(untrusted.cns().is_empty(), "{:?}", untrusted.seen);
}
