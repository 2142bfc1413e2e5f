//! A real three-member etcd cluster (Debian's `etcd-server`) on 127.0.0.1-3, TLS
//! everywhere, with every certificate issued by `hakube_render::pki` as docs/upstream-facts.md's
//! "etcd (external topology)" section lists: client-cert-auth, peer-client-cert-auth, a
//! server and a peer certificate per member carrying its own IP. kube-apiserver's etcd
//! client certificate writes and reads; a client certificate from another CA is refused.

mod support;

use std::fs::{self, File};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use hakube_cluster::definition::KeyAlgorithm;
use hakube_render::pki::{apiserver_etcd_client_spec, etcd_member_spec, issue_leaf, new_ca, Issued, ETCD_CA};
use support::{free_ports, output, run_ok, write_secret, ChildGuard, YEAR};

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
const PACKAGES: &str = "etcd-server etcd-client";
/// How long the cluster may take to elect a leader and report healthy (a bound, not
/// an expectation: it is usually a second or two).
const HEALTH_DEADLINE: Duration = Duration::from_secs(60);

struct Member {
    name: String,
    ip: IpAddr,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
}

impl Member {
    fn client_url(&self) -> String {
        format!("https://{}:{}", self.ip, self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("https://{}:{}", self.ip, self.peer_port)
    }
    fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }
}

/// Where a client's certificate and key live.
struct ClientFiles {
    cert: PathBuf,
    key: PathBuf,
}

fn write_pair(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    (
        write_secret(dir, &format!("{name}.crt"), &issued.cert_pem),
        write_secret(dir, &format!("{name}.key"), &issued.key_pem),
    )
}

fn etcdctl(endpoints: &str, client: Option<&ClientFiles>, ca: &Path) -> Command {
    let mut command = Command::new(ETCDCTL);
    command
        .env_clear()
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=5s")
        .arg("--cacert")
        .arg(ca);
    if let Some(client) = client {
        command.arg("--cert").arg(&client.cert).arg("--key").arg(&client.key);
    }
    command
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn three_member_etcd_cluster_with_tls_everywhere() {
    support::require_binary(ETCD, PACKAGES);
    support::require_binary(ETCDCTL, PACKAGES);

    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let algorithm = KeyAlgorithm::Rsa2048;
    let ca = new_ca(ETCD_CA, algorithm, YEAR, now).unwrap();
    let ca_path = write_secret(tmp.path(), "etcd-ca.crt", &ca.cert_pem);

    let members: Vec<Member> = (1..=3)
        .map(|i| {
            let ip: IpAddr = format!("127.0.0.{i}").parse().unwrap();
            let ports = free_ports(ip, 2);
            let dir = tmp.path().join(format!("member-{i}"));
            fs::create_dir(&dir).unwrap();
            Member { name: format!("etcd-{i}"), ip, client_port: ports[0], peer_port: ports[1], dir }
        })
        .collect();
    let initial_cluster = members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",");

    let mut children = Vec::new();
    for member in &members {
        // Server and peer certificates: same spec (kubeadm's), separate keys.
        let spec = etcd_member_spec(&member.name, member.ip, YEAR);
        let (server_crt, server_key) =
            write_pair(&member.dir, "server", &issue_leaf(&ca, &spec, algorithm, now).unwrap());
        let (peer_crt, peer_key) = write_pair(&member.dir, "peer", &issue_leaf(&ca, &spec, algorithm, now).unwrap());
        let log = File::create(member.log()).unwrap();
        let child = Command::new(ETCD)
            .env_clear()
            .arg(format!("--name={}", member.name))
            .arg("--data-dir")
            .arg(member.dir.join("data"))
            .arg("--cert-file")
            .arg(&server_crt)
            .arg("--key-file")
            .arg(&server_key)
            .arg("--trusted-ca-file")
            .arg(&ca_path)
            .arg("--client-cert-auth")
            .arg("--peer-cert-file")
            .arg(&peer_crt)
            .arg("--peer-key-file")
            .arg(&peer_key)
            .arg("--peer-trusted-ca-file")
            .arg(&ca_path)
            .arg("--peer-client-cert-auth")
            .arg(format!("--listen-client-urls={}", member.client_url()))
            .arg(format!("--advertise-client-urls={}", member.client_url()))
            .arg(format!("--listen-peer-urls={}", member.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", member.peer_url()))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=hakube-test")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e}"));
        children.push(ChildGuard { name: member.name.clone(), child });
    }

    let client_dir = tmp.path().join("client");
    fs::create_dir(&client_dir).unwrap();
    let (cert, key) = write_pair(
        &client_dir,
        "apiserver-etcd-client",
        &issue_leaf(&ca, &apiserver_etcd_client_spec(YEAR), algorithm, now).unwrap(),
    );
    let client = ClientFiles { cert, key };
    let all_endpoints = members.iter().map(Member::client_url).collect::<Vec<_>>().join(",");

    // Wait until every member reports healthy, or one dies, or the deadline passes.
    let started = Instant::now();
    loop {
        for (guard, member) in children.iter_mut().zip(&members) {
            assert!(!guard.has_exited(), "{} exited:\n{}", guard.name, tail(&member.log()));
        }
        let health = output(etcdctl(&all_endpoints, Some(&client), &ca_path).arg("endpoint").arg("health"));
        if health.status.success() {
            break;
        }
        assert!(
            started.elapsed() < HEALTH_DEADLINE,
            "the cluster did not become healthy within {HEALTH_DEADLINE:?}:\n{}\n{}",
            String::from_utf8_lossy(&health.stderr),
            tail(&members[0].log())
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let list =
        run_ok(etcdctl(&members[0].client_url(), Some(&client), &ca_path).args(["member", "list", "-w", "json"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let mut names: Vec<&str> =
        list["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["etcd-1", "etcd-2", "etcd-3"]);

    // Write through one member, read through another: replicated over the TLS peer links.
    let put = run_ok(etcdctl(&members[0].client_url(), Some(&client), &ca_path).args([
        "put",
        "/hakube/test",
        "written-by-hakube",
    ]));
    assert_eq!(put.trim(), "OK");
    // A refused client fails at --command-timeout (gRPC retries the handshake until then).
    let get = |client: Option<&ClientFiles>| {
        output(etcdctl(&members[2].client_url(), client, &ca_path).args([
            "get",
            "/hakube/test",
            "--print-value-only",
            "--command-timeout=2s",
        ]))
    };
    let read = get(Some(&client));
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "written-by-hakube");

    // A client certificate with the same CN from another CA (also named etcd-ca) is refused.
    let other_ca = new_ca(ETCD_CA, KeyAlgorithm::EcdsaP256, YEAR, now).unwrap();
    let other_dir = tmp.path().join("other");
    fs::create_dir(&other_dir).unwrap();
    let (cert, key) = write_pair(
        &other_dir,
        "apiserver-etcd-client",
        &issue_leaf(&other_ca, &apiserver_etcd_client_spec(YEAR), KeyAlgorithm::EcdsaP256, now).unwrap(),
    );
    let stranger = ClientFiles { cert, key };
    let refused = get(Some(&stranger));
    assert!(!refused.status.success(), "a client certificate from another CA was accepted");
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("written-by-hakube"));
    // No client certificate at all is refused too (client-cert-auth).
    let anonymous = get(None);
    assert!(!anonymous.status.success(), "a client without a certificate was accepted");

    // The member saw and rejected the foreign certificate (not, say, a network error).
    let log = fs::read_to_string(members[2].log()).unwrap();
    assert!(
        log.contains("rejected connection") && log.contains("certificate signed by unknown authority"),
        "etcd-3's log does not show the rejection:\n{}",
        tail(&members[2].log())
    );

    // And the real client still works afterwards.
    assert!(get(Some(&client)).status.success());
}
