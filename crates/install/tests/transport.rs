//! The SSH transport against a real OpenSSH server on 127.0.0.1, started and stopped by
//! the test: commands and their output, host key policies (strict refuses an unknown
//! key; accept-new records and then pins it; a changed key is refused under both and
//! never retried), and arguments reaching the remote side escaped, not spliced.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hakube_cluster::definition::HostKeyPolicy;
use hakube_install::transport::{Connection, Stream, Target, TransportError};
use hakube_render::sshkeys;

/// A real sshd on 127.0.0.1, killed by PID on drop.
struct Sshd {
    child: Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Sshd {
    /// Starts sshd with `host_key` (OpenSSH private key text), authorizing `client_pub`.
    fn start(dir: &Path, host_key: &str, client_pub: &str, port: u16) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(sshd.exists(), "/usr/sbin/sshd is missing: apt-get install openssh-server");
        std::fs::create_dir_all("/run/sshd").unwrap();
        let key_path = dir.join(format!("host_key_{port}"));
        write_secret(&key_path, host_key);
        let auth = dir.join("authorized_keys");
        write_secret(&auth, &format!("{client_pub}\n"));
        let config = dir.join(format!("sshd_config_{port}"));
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPidFile none\nStrictModes no\n",
                key_path.display(),
                auth.display()
            ),
        )
        .unwrap();
        let child =
            Command::new(sshd).arg("-D").arg("-e").arg("-f").arg(&config).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start listening on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd { child, port }
    }
}

struct Fixture {
    _temp: tempfile::TempDir,
    dir: PathBuf,
    client_key: PathBuf,
    client_pub: String,
    control: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let client = sshkeys::generate_ed25519("hakube-test").unwrap();
    let client_key = dir.join("id_ed25519");
    write_secret(&client_key, &client.private_openssh);
    let control = tempfile::Builder::new().prefix("hkt").tempdir_in("/tmp").unwrap();
    Fixture { _temp: temp, dir, client_key, client_pub: client.public_line, control }
}

fn target(f: &Fixture, port: u16, known_hosts: &Path, policy: HostKeyPolicy) -> Target {
    Target {
        node: "n0".into(),
        host: "127.0.0.1".into(),
        user: "root".into(),
        port,
        key: Some(f.client_key.clone()),
        jump_hosts: Vec::new(),
        known_hosts: known_hosts.to_path_buf(),
        policy,
    }
}

fn known_hosts_for(f: &Fixture, port: u16, host_public: &str) -> PathBuf {
    let path = f.dir.join(format!("known_hosts_{port}"));
    std::fs::write(&path, format!("{}\n", sshkeys::known_hosts_line(&[&format!("[127.0.0.1]:{port}")], host_public)))
        .unwrap();
    path
}

async fn run(conn: &Connection, program: &str, args: &[&str]) -> (Option<i32>, Vec<(Stream, String)>) {
    let mut lines = Vec::new();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let code = conn.run(program, &args, None, |s, l| lines.push((s, l.to_string()))).await.unwrap();
    (code, lines)
}

#[tokio::test]
async fn strict_accepts_the_pinned_key_and_runs_commands_with_escaped_arguments() {
    let f = fixture();
    let host = sshkeys::generate_ed25519("host").unwrap();
    let sshd = Sshd::start(&f.dir, &host.private_openssh, &f.client_pub, free_port());
    let known = known_hosts_for(&f, sshd.port, &host.public_line);
    let conn =
        Connection::connect(&target(&f, sshd.port, &known, HostKeyPolicy::Strict), f.control.path()).await.unwrap();
    // An argument with shell metacharacters arrives as one literal argument.
    let (code, lines) = run(&conn, "printf", &["%s|", "a b; touch /tmp/hakube-pwned", "$(id)"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(lines, vec![(Stream::Stdout, "a b; touch /tmp/hakube-pwned|$(id)|".to_string())]);
    assert!(!Path::new("/tmp/hakube-pwned").exists());
    // Exit codes and stderr come back.
    let (code, lines) = run(&conn, "sh", &["-c", "echo oops >&2; exit 7"]).await;
    assert_eq!(code, Some(7));
    assert_eq!(lines, vec![(Stream::Stderr, "oops".to_string())]);
    // Standard input reaches the command.
    let mut out = Vec::new();
    let code = conn.run("cat", &[], Some(b"from stdin\n".to_vec()), |_, l| out.push(l.to_string())).await.unwrap();
    assert_eq!((code, out), (Some(0), vec!["from stdin".to_string()]));
    conn.close().await;
    drop(sshd);
}

#[tokio::test]
async fn strict_refuses_an_unknown_host_key() {
    let f = fixture();
    let host = sshkeys::generate_ed25519("host").unwrap();
    let sshd = Sshd::start(&f.dir, &host.private_openssh, &f.client_pub, free_port());
    let empty = f.dir.join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let err = Connection::connect(&target(&f, sshd.port, &empty, HostKeyPolicy::Strict), f.control.path())
        .await
        .err()
        .expect("connected to an unknown host");
    assert!(matches!(err, TransportError::HostKeyUnknown { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("hostKeyPolicy is strict"), "{err}");
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "", "strict must not record keys");
}

#[tokio::test]
async fn accept_new_records_the_key_then_pins_it_and_a_changed_key_is_refused() {
    let f = fixture();
    let port = free_port();
    let host = sshkeys::generate_ed25519("host").unwrap();
    let known = f.dir.join("known_hosts.accepted");
    std::fs::write(&known, "").unwrap();
    {
        let _sshd = Sshd::start(&f.dir, &host.private_openssh, &f.client_pub, port);
        let conn =
            Connection::connect(&target(&f, port, &known, HostKeyPolicy::AcceptNew), f.control.path()).await.unwrap();
        assert_eq!(run(&conn, "true", &[]).await.0, Some(0));
        conn.close().await;
    }
    let recorded = std::fs::read_to_string(&known).unwrap();
    let host_key_b64 = host.public_line.split_whitespace().nth(1).unwrap();
    assert!(recorded.contains(host_key_b64), "the new host key was not recorded: {recorded:?}");
    // The same machine with a new host key (re-imaged, or someone in between).
    let other = sshkeys::generate_ed25519("impostor").unwrap();
    let _sshd = Sshd::start(&f.dir, &other.private_openssh, &f.client_pub, port);
    for policy in [HostKeyPolicy::AcceptNew, HostKeyPolicy::Strict] {
        let err = Connection::connect(&target(&f, port, &known, policy), f.control.path())
            .await
            .err()
            .expect("accepted a changed host key");
        assert!(matches!(err, TransportError::HostKeyChanged { .. }), "{policy:?}: {err}");
        assert!(!err.is_retryable());
    }
    assert_eq!(std::fs::read_to_string(&known).unwrap(), recorded, "the pinned key was replaced");
}

#[tokio::test]
async fn a_refused_connection_is_retryable_and_names_the_node() {
    let f = fixture();
    let known = f.dir.join("kh");
    std::fs::write(&known, "").unwrap();
    let err = Connection::connect(&target(&f, free_port(), &known, HostKeyPolicy::Strict), f.control.path())
        .await
        .err()
        .expect("connected to nothing");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().starts_with("failed to connect to n0 (127.0.0.1:"), "{err}");
}
