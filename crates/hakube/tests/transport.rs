//! The SSH transport (the `openssh` crate over the system's ssh client) against the lab's
//! Debian 12 nodes: real machines running Debian's own sshd with Debian's sshd_config (plus
//! the lab's keys-only drop-in), host keys and a login key generated here as render generates
//! them, reached by address over the lab bridge, as a user's machines are
//! (crates/lab/README.md). Needs root, as CI runs; the first run builds the lab's image.
//!
//! Asserted: commands and their output, exit codes, standard input, arguments reaching the
//! remote side escaped, not spliced; a non-root login user's commands going through Debian's
//! sudo; host key policies (strict refuses an unknown key; accept-new records and then pins
//! it; a changed key is refused under both and never retried); a node whose sshd is stopped
//! gives a retryable connection error naming the node and its address, and connects again
//! once sshd is back; a node whose link is cut fails to connect (bounded by the transport's
//! connect timeout, not hanging) and connects once the link is back; a rebooted node is
//! reached again under its pinned host key; under accept-new, a node whose host key render
//! pinned is still checked strictly against it, so a replaced key is refused (issue 11).
//!
//! One lab (one master, two workers; prefix `hk5`, bridge `hkbr2`, 10.245.0.0/16: no other
//! test uses them) serves every case, in order, inside one test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hakube_cluster::definition::HostKeyPolicy;
use hakube_install::transport::{Connection, Stream, Target, TransportError};
use hakube_lab::{Lab, LabConfig, SUDO_USER};
use hakube_render::sshkeys;

/// The connect timeout `Connection::connect` gives ssh (`ConnectTimeout`, in
/// crates/install/src/transport.rs).
const TRANSPORT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The lab and what the test generated for it. Fields drop in order: the lab first, then
/// the directories its keys and known_hosts files live in.
struct World {
    lab: Lab,
    dir: tempfile::TempDir,
    control: tempfile::TempDir,
    client_key: PathBuf,
}

fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn require_root() {
    let uid = std::process::Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the transport tests boot lab nodes and need root (network namespaces, mounts, containers); CI runs them as root"
    );
}

/// Brings the lab up with host keys and a login key generated here (render's assets
/// layout, as a user's machines get render's keys), and writes `known_hosts` pinning every
/// node's host key by address.
fn setup() -> World {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let client = sshkeys::generate_ed25519("hakube-test").unwrap();
    let client_key = dir.path().join("id_ed25519");
    write_secret(&client_key, &client.private_openssh);
    let config = LabConfig {
        prefix: "hk5".into(),
        bridge: "hkbr2".into(),
        subnet_base: [10, 245],
        authorized_key: Some(client.public_line.clone()),
        host_keys: Some(dir.path().join("assets")),
        sudo_user: true,
        ..LabConfig::new(1, 2, dir.path().join("lab"))
    };
    for node in ["master0", "worker0", "worker1"] {
        let keys = dir.path().join("assets/ssh/host-keys").join(node);
        std::fs::create_dir_all(&keys).unwrap();
        let host = sshkeys::generate_ed25519(&format!("root@{node}")).unwrap();
        write_secret(&keys.join("ssh_host_ed25519_key"), &host.private_openssh);
        std::fs::write(keys.join("ssh_host_ed25519_key.pub"), format!("{}\n", host.public_line)).unwrap();
    }
    let lab = Lab::up(config).expect("lab up");
    let mut known = String::new();
    for node in lab.nodes() {
        let public = host_public(dir.path(), &node.name);
        assert_eq!(
            lab.host_public_key(&node.name).unwrap().split_whitespace().nth(1),
            public.split_whitespace().nth(1),
            "{} does not have the host key generated for it",
            node.name
        );
        known.push_str(&format!("{}\n", sshkeys::known_hosts_line(&[&node.address.to_string()], &public)));
    }
    std::fs::write(dir.path().join("known_hosts"), known).unwrap();
    // Unix sockets allow ~100 bytes: the control directory stays short, in /tmp.
    let control = tempfile::Builder::new().prefix("hkt").tempdir_in("/tmp").unwrap();
    World { lab, dir, control, client_key }
}

/// The host public key line generated for `node` in `dir`'s assets.
fn host_public(dir: &Path, node: &str) -> String {
    let path = dir.join("assets/ssh/host-keys").join(node).join("ssh_host_ed25519_key.pub");
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

impl World {
    /// A known_hosts file in the test's directory (`name`), created empty if missing.
    fn known_hosts(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if !path.exists() {
            std::fs::write(&path, "").unwrap();
        }
        path
    }

    fn address(&self, node: &str) -> String {
        self.lab.node(node).unwrap().address.to_string()
    }

    fn target(&self, node: &str, user: &str, known_hosts: &Path, policy: HostKeyPolicy) -> Target {
        Target {
            node: node.into(),
            host: self.address(node),
            user: user.into(),
            port: 22,
            key: Some(self.client_key.clone()),
            agent: None,
            jump_hosts: Vec::new(),
            known_hosts: known_hosts.to_path_buf(),
            policy,
        }
    }

    async fn connect(
        &self,
        node: &str,
        known_hosts: &Path,
        policy: HostKeyPolicy,
    ) -> Result<Connection, TransportError> {
        Connection::connect(&self.target(node, "root", known_hosts, policy), self.control.path()).await
    }

    /// Connects as root, strict, against the pinned known_hosts; fails the test otherwise.
    async fn pinned(&self, node: &str) -> Connection {
        let known = self.known_hosts("known_hosts");
        self.connect(node, &known, HostKeyPolicy::Strict).await.unwrap_or_else(|e| panic!("{node}: {e}"))
    }
}

async fn run(conn: &Connection, program: &str, args: &[&str]) -> (Option<i32>, Vec<(Stream, String)>) {
    let mut lines = Vec::new();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let code = conn.run(program, &args, None, |s, l| lines.push((s, l.to_string()))).await.unwrap();
    (code, lines)
}

/// `program args...` succeeds with exactly `stdout` on standard output.
async fn assert_output(conn: &Connection, program: &str, args: &[&str], stdout: &str) {
    let (code, lines) = run(conn, program, args).await;
    assert_eq!((code, lines), (Some(0), vec![(Stream::Stdout, stdout.to_string())]), "{program} {args:?}");
}

#[tokio::test]
async fn the_transport_against_lab_nodes() {
    let w = setup();
    commands_run_with_output_exit_codes_stdin_and_escaped_arguments(&w).await;
    a_sudo_login_user_runs_commands_as_root(&w).await;
    strict_refuses_an_unknown_host_key(&w).await;
    accept_new_records_the_key_then_pins_it_and_a_changed_key_is_refused(&w).await;
    a_stopped_sshd_is_a_retryable_error_naming_the_node_until_it_is_back(&w).await;
    a_cut_link_fails_within_the_connect_timeout_until_it_is_back(&w).await;
    a_rebooted_node_is_reached_again_under_its_pinned_key(&w).await;
    accept_new_never_overrides_a_rendered_host_key(&w).await;
    w.lab.down().unwrap();
}

async fn commands_run_with_output_exit_codes_stdin_and_escaped_arguments(w: &World) {
    let conn = w.pinned("master0").await;
    // The node itself answers, not the host.
    assert_output(&conn, "hostname", &[], "master0").await;
    // Arguments with shell metacharacters arrive as literal arguments: nothing is run, no
    // variable expanded, no quote lost.
    let (code, lines) =
        run(&conn, "printf", &["%s|", "a b; touch /tmp/hakube-pwned", "$(id)", "'q' \"d\" $HOME `id` *"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(lines, vec![(Stream::Stdout, "a b; touch /tmp/hakube-pwned|$(id)|'q' \"d\" $HOME `id` *|".to_string())]);
    assert_eq!(run(&conn, "test", &["-e", "/tmp/hakube-pwned"]).await.0, Some(1), "the argument was run as a command");
    // Exit codes and standard error come back.
    let (code, lines) = run(&conn, "sh", &["-c", "echo oops >&2; exit 7"]).await;
    assert_eq!(code, Some(7));
    assert_eq!(lines, vec![(Stream::Stderr, "oops".to_string())]);
    // Standard input reaches the command.
    let mut out = Vec::new();
    let code = conn.run("cat", &[], Some(b"from stdin\n".to_vec()), |_, l| out.push(l.to_string())).await.unwrap();
    assert_eq!((code, out), (Some(0), vec!["from stdin".to_string()]));
    // Several commands share the one connection.
    assert_output(&conn, "id", &["-un"], "root").await;
    conn.close().await;
}

async fn a_sudo_login_user_runs_commands_as_root(w: &World) {
    let known = w.known_hosts("known_hosts");
    let target = w.target("worker0", SUDO_USER, &known, HostKeyPolicy::Strict);
    // The first login of a fresh user: under a loaded machine sshd has once closed it
    // (a retryable connect error, which install retries with backoff); try as install does,
    // and show the node's sshd log if it still fails.
    let mut attempt = Connection::connect(&target, w.control.path()).await;
    for _ in 0..3 {
        match &attempt {
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                attempt = Connection::connect(&target, w.control.path()).await;
            }
            _ => break,
        }
    }
    let conn = attempt.unwrap_or_else(|e| {
        let out =
            w.lab.command("worker0", "journalctl").unwrap().args(["-u", "ssh", "--no-pager", "-n", "40"]).output();
        panic!("{e}\n{}", out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default());
    });
    // Through Debian's sudo (`sudo -n --`), arguments still escaped.
    assert_output(&conn, "id", &["-un"], "root").await;
    assert_output(&conn, "printf", &["%s", "x; id -un"], "x; id -un").await;
    let mut out = Vec::new();
    let code = conn.run("cat", &[], Some(b"via sudo\n".to_vec()), |_, l| out.push(l.to_string())).await.unwrap();
    assert_eq!((code, out), (Some(0), vec!["via sudo".to_string()]));
    conn.close().await;
}

async fn strict_refuses_an_unknown_host_key(w: &World) {
    let empty = w.known_hosts("known_hosts.empty");
    let err = w.connect("master0", &empty, HostKeyPolicy::Strict).await.err().expect("connected to an unknown host");
    assert!(matches!(err, TransportError::HostKeyUnknown { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("hostKeyPolicy is strict"), "{err}");
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "", "strict must not record keys");
}

async fn accept_new_records_the_key_then_pins_it_and_a_changed_key_is_refused(w: &World) {
    let known = w.known_hosts("known_hosts.accepted");
    let conn = w.connect("worker0", &known, HostKeyPolicy::AcceptNew).await.unwrap();
    assert_eq!(run(&conn, "true", &[]).await.0, Some(0));
    conn.close().await;
    let recorded = std::fs::read_to_string(&known).unwrap();
    let host = host_public(w.dir.path(), "worker0");
    let host_key_b64 = host.split_whitespace().nth(1).unwrap();
    assert!(recorded.contains(host_key_b64), "worker0's host key was not recorded: {recorded:?}");
    // Under worker0's address (hashed, if the ssh configuration hashes known hosts).
    let found = std::process::Command::new("ssh-keygen")
        .arg("-F")
        .arg(w.address("worker0"))
        .arg("-f")
        .arg(&known)
        .output()
        .unwrap();
    assert!(found.status.success(), "not recorded under worker0's address: {recorded:?}");
    // Recorded, it is pinned: strict now accepts it, and accept-new adds nothing.
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let conn = w.connect("worker0", &known, policy).await.unwrap_or_else(|e| panic!("{policy:?}: {e}"));
        assert_output(&conn, "hostname", &[], "worker0").await;
        conn.close().await;
    }
    assert_eq!(std::fs::read_to_string(&known).unwrap(), recorded);
    // The same machine with a new host key (re-imaged, or someone in between).
    let new_key = w.lab.replace_host_key("worker0").unwrap();
    assert_ne!(new_key.split_whitespace().nth(1), Some(host_key_b64));
    for policy in [HostKeyPolicy::AcceptNew, HostKeyPolicy::Strict] {
        let err = w.connect("worker0", &known, policy).await.err().expect("accepted a changed host key");
        assert!(matches!(err, TransportError::HostKeyChanged { .. }), "{policy:?}: {err}");
        assert!(!err.is_retryable(), "{policy:?}: {err}");
        assert!(err.to_string().contains(&format!("worker0 ({})", w.address("worker0"))), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&known).unwrap(), recorded, "the pinned key was replaced");
}

async fn a_stopped_sshd_is_a_retryable_error_naming_the_node_until_it_is_back(w: &World) {
    w.lab.stop_sshd("worker1").unwrap();
    let known = w.known_hosts("known_hosts");
    let err = w.connect("worker1", &known, HostKeyPolicy::Strict).await.err().expect("connected to a stopped sshd");
    eprintln!("sshd stopped: {err}");
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");
    assert!(err.is_retryable(), "{err}");
    let named = format!("failed to connect to worker1 ({}:22): ", w.address("worker1"));
    assert!(err.to_string().starts_with(&named), "{err}");
    assert!(err.to_string().contains("Connection refused"), "{err}");
    w.lab.start_sshd("worker1").unwrap();
    let conn = w.pinned("worker1").await;
    assert_output(&conn, "hostname", &[], "worker1").await;
    conn.close().await;
}

async fn a_cut_link_fails_within_the_connect_timeout_until_it_is_back(w: &World) {
    w.lab.set_link("worker1", false).unwrap();
    let known = w.known_hosts("known_hosts");
    // Nothing answers and nothing refuses: only ssh's ConnectTimeout ends the attempt. The
    // bound is generous (process start, the ssh handshake's own limits) and only turns a
    // hang into a failure; how long the attempt took is not asserted.
    let attempt =
        tokio::time::timeout(3 * TRANSPORT_CONNECT_TIMEOUT, w.connect("worker1", &known, HostKeyPolicy::Strict))
            .await
            .unwrap_or_else(|_| panic!("connecting over a cut link hung past 3x the transport's connect timeout"));
    let err = attempt.err().expect("connected over a cut link");
    eprintln!("link cut: {err}");
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().starts_with(&format!("failed to connect to worker1 ({}:22): ", w.address("worker1"))),
        "{err}"
    );
    w.lab.set_link("worker1", true).unwrap();
    let conn = w.pinned("worker1").await;
    assert_output(&conn, "hostname", &[], "worker1").await;
    conn.close().await;
}

async fn a_rebooted_node_is_reached_again_under_its_pinned_key(w: &World) {
    let before = w.lab.node("master0").unwrap().leader_pid;
    w.lab.reboot("master0").unwrap();
    assert_ne!(w.lab.node("master0").unwrap().leader_pid, before, "master0 was not rebooted");
    // The same host key as before the reboot: strict against the original pin connects.
    let conn = w.pinned("master0").await;
    assert_output(&conn, "hostname", &[], "master0").await;
    assert_output(&conn, "id", &["-un"], "root").await;
    conn.close().await;
}

/// The manifest render would record for `def` (its SSH targets and install settings).
fn manifest_of(def: &hakube_cluster::ClusterDefinition) -> hakube_assets::Manifest {
    use hakube_assets::manifest::{install_entry, ssh_entry};
    let mut m =
        hakube_assets::Manifest::parse(r#"{ "format": 2, "clusterName": "t", "nodes": {}, "files": {} }"#).unwrap();
    m.install = install_entry(def);
    for (role, n) in def.nodes() {
        let entry = hakube_assets::NodeEntry {
            role,
            first_master: false,
            steps: Vec::new(),
            upgrade_steps: Vec::new(),
            ssh: ssh_entry(def, n),
        };
        m.nodes.insert(n.node_name.clone(), entry);
    }
    m
}

/// Issue 11, item 6: `accept-new` applies only to nodes render pinned no key for. worker0's
/// host key was replaced above; the assets' known_hosts (render's pins) still holds the one
/// generated for it, so under accept-new the connection is refused and nothing is recorded.
/// A node the pins do not name is trusted on first contact as before.
async fn accept_new_never_overrides_a_rendered_host_key(w: &World) {
    let assets = w.dir.path().join("accept-new-assets");
    std::fs::create_dir_all(assets.join("ssh")).unwrap();
    let pins = std::fs::read_to_string(w.known_hosts("known_hosts")).unwrap();
    std::fs::write(assets.join("ssh/known_hosts"), &pins).unwrap();
    let definition = |known: &str| -> hakube_cluster::ClusterDefinition {
        let text = serde_json::json!({
            "hostKeyPolicy": "accept-new",
            "sshLoginUser": "root",
            "sshLoginKey": w.client_key.to_str().unwrap(),
            "masters": [ { "nodeName": "master0", "privateIP": w.address("master0") } ],
            "workers": [ { "nodeName": "worker0", "privateIP": w.address("worker0") } ],
        });
        std::fs::write(assets.join("ssh/known_hosts"), known).unwrap();
        serde_json::from_value(text).unwrap()
    };
    let def = manifest_of(&definition(&pins));
    let target = hakube_install::runner::target(&def, &assets, "worker0", None).unwrap();
    assert_eq!(target.policy, HostKeyPolicy::Strict, "worker0 has a rendered key");
    let err = Connection::connect(&target, w.control.path()).await.err().expect("accepted a replaced host key");
    assert!(matches!(err, TransportError::HostKeyChanged { .. }), "{err}");
    assert!(!err.is_retryable(), "{err}");
    let accepted = assets.join("ssh/known_hosts.accepted");
    assert!(
        std::fs::read_to_string(&accepted).unwrap_or_default().is_empty(),
        "a key was recorded for a node render pinned"
    );
    // Pins without worker0: accept-new trusts its key on first contact and records it.
    let address = w.address("worker0");
    let others: String = pins
        .lines()
        .filter(|l| !l.split(' ').next().unwrap().split(',').any(|p| p == address))
        .map(|l| format!("{l}\n"))
        .collect();
    let def = manifest_of(&definition(&others));
    let target = hakube_install::runner::target(&def, &assets, "worker0", None).unwrap();
    assert_eq!(target.policy, HostKeyPolicy::AcceptNew);
    hakube_install::runner::create_private_file(&target.known_hosts).unwrap();
    let conn = Connection::connect(&target, w.control.path()).await.unwrap_or_else(|e| panic!("worker0: {e}"));
    assert_output(&conn, "hostname", &[], "worker0").await;
    conn.close().await;
    assert!(std::fs::read_to_string(&accepted).unwrap().contains(' '), "worker0's key was not recorded");
}
