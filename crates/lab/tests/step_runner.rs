//! templates/step.sh, the node-side step runner, on a real lab node (Debian 12, systemd as
//! PID 1), driven over real ssh as the lab's sudo user through `sudo -n`, as hakube runs it:
//! one copy of a step per key, a step that outlives its SSH session, `follow` resumed byte
//! for byte after a dropped connection, exit statuses and signals, refused arguments.
//! boot.sh is tests/fake_boot.sh. Needs root (CI runs as root); the first run builds the
//! Debian 12 image.
//!
//! The lab here uses prefix `hkq`, bridge `hkbr10` and 10.240.0.0/16, so it never collides with
//! another test binary's lab; one lab at a time within this binary.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use hakube_lab::{Lab, LabConfig, SUDO_USER};

const STEP_SH: &str = include_str!("../../../templates/step.sh");
const FAKE_BOOT: &str = include_str!("fake_boot.sh");
const LOG_DIR: &str = "/var/log/hakube/steps";
const RUNS: &str = "/etc/hakube/fake-runs";

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn require_root() {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the lab tests need root (network namespaces, mounts, containers); CI runs them as root"
    );
}

/// A one-node lab with step.sh at /etc/hakube/step.sh and the fake boot.sh at
/// /etc/hakube/boot.sh. Fields drop in order: the lab, then its directory, then the lock.
struct Fixture {
    lab: Lab,
    dir: tempfile::TempDir,
    _lock: MutexGuard<'static, ()>,
}

fn fixture() -> Fixture {
    require_root();
    let lock = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "step-runner-test", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    let config = LabConfig {
        prefix: "hkq".into(),
        bridge: "hkbr10".into(),
        subnet_base: [10, 240],
        sudo_user: true,
        login_user: SUDO_USER.into(),
        authorized_key: Some(fs::read_to_string(key.with_extension("pub")).unwrap()),
        ..LabConfig::new(1, 0, dir.path().join("state"))
    };
    let lab = Lab::up(config).unwrap();
    fs::write(dir.path().join("known_hosts"), lab.known_hosts().unwrap()).unwrap();
    let f = Fixture { lab, dir, _lock: lock };
    f.install("/etc/hakube/step.sh", STEP_SH);
    f.install("/etc/hakube/boot.sh", FAKE_BOOT);
    f
}

/// `'value'` for a POSIX shell.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What `boot.sh slow CODE LINES DELAY` writes (tests/fake_boot.sh).
fn slow_output(lines: u32) -> String {
    let mut out = String::new();
    for i in 1..=lines {
        out.push_str(&format!("line {i:02} of {lines}\n"));
        if i % 5 == 0 {
            out.push_str(&format!("stderr {i:02}\n"));
        }
    }
    out
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `seconds`.
fn poll<T>(seconds: u64, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {seconds} s waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

impl Fixture {
    /// Writes `content` to `path` on the node, mode 0755, through the node's root on the host.
    fn install(&self, path: &str, content: &str) {
        let host = self.lab.node_file("master0", path).unwrap();
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        fs::write(&host, content).unwrap();
        fs::set_permissions(&host, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `ssh hakube@master0 COMMAND` with the throwaway key and strict host key checking.
    fn ssh_command(&self, command: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-i"])
            .arg(self.dir.path().join("id_ed25519"))
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.dir.path().join("known_hosts").display()))
            .args(["-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"])
            .arg(format!("{SUDO_USER}@{}", self.lab.node("master0").unwrap().address))
            .arg(command)
            .stdin(Stdio::null());
        cmd
    }

    fn ssh(&self, command: &str) -> Output {
        self.ssh_command(command).output().unwrap()
    }

    /// The remote command line `sudo -n /etc/hakube/step.sh ARGS...`.
    fn step_line(args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
        format!("sudo -n /etc/hakube/step.sh {}", args.join(" "))
    }

    /// Runs step.sh over ssh; (exit code, stdout, stderr).
    fn step(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.ssh(&Self::step_line(args));
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    /// Runs step.sh over ssh; it must succeed. Its stdout.
    fn step_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.step(args);
        assert_eq!(code, 0, "step.sh {args:?}: {out}{err}");
        out
    }

    fn status(&self, unit: &str) -> String {
        self.step_ok(&["status", unit]).trim_end().to_string()
    }

    /// Polls `status UNIT` until it prints `want`.
    fn wait_status(&self, unit: &str, want: &str, seconds: u64) {
        poll(seconds, &format!("{unit} to be {want:?}"), || (self.status(unit) == want).then_some(()));
    }

    /// A bash script run as root on the node without ssh (for looking, not for driving);
    /// (exit code, stdout, stderr).
    fn bash(&self, script: &str) -> (i32, String, String) {
        let out = self.lab.command("master0", "bash").unwrap().arg("-c").arg(script).output().unwrap();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    /// The fake boot.sh's runs so far (lines of fake-runs).
    fn runs(&self) -> Vec<String> {
        fs::read_to_string(self.lab.node_file("master0", RUNS).unwrap())
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn log(&self, unit: &str) -> Vec<u8> {
        fs::read(self.lab.node_file("master0", format!("{LOG_DIR}/{unit}.log")).unwrap()).unwrap()
    }
}

/// Reads a child's stdout on a thread into a shared buffer, until EOF.
struct Reader {
    buffer: std::sync::Arc<Mutex<Vec<u8>>>,
    thread: thread::JoinHandle<()>,
}

impl Reader {
    fn new(child: &mut Child) -> Reader {
        let mut stdout = child.stdout.take().unwrap();
        let buffer = std::sync::Arc::new(Mutex::new(Vec::new()));
        let shared = buffer.clone();
        let thread = thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match stdout.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => shared.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
        });
        Reader { buffer, thread }
    }

    fn len(&self) -> usize {
        self.buffer.lock().unwrap().len()
    }

    fn contains(&self, needle: &str) -> bool {
        text(&self.buffer.lock().unwrap()).contains(needle)
    }

    fn finish(self) -> Vec<u8> {
        self.thread.join().unwrap();
        std::sync::Arc::try_unwrap(self.buffer).unwrap().into_inner().unwrap()
    }
}

#[test]
fn one_copy_per_key_that_outlives_its_ssh_session() {
    let f = fixture();
    let unit = "hakube-aa11-join";

    // The session that starts the step stays open afterwards (as hakube's would while it
    // follows), printing its shell's PID (the session leader sshd made) and cgroup first.
    let mut session = f
        .ssh_command(&format!(
            "echo \"shell $$\"; cat /proc/self/cgroup; {}; exec sleep 600",
            Fixture::step_line(&["start", unit, "join", "slow", "3"])
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = Reader::new(&mut session);
    poll(30, "the first start to print its result", || reader.contains(&format!("started {unit}\n")).then_some(()));
    poll(10, "boot.sh to record its run", || (f.runs().len() == 1).then_some(()));

    // A second start of the same key, with another unit name, attaches to the first.
    let (code, out, err) = f.step(&["start", "hakube-bb22-join", "join", "slow", "0"]);
    assert_eq!((code, out.as_str()), (0, format!("attached {unit}\n").as_str()), "{err}");
    assert_eq!(f.step_ok(&["status", "hakube-bb22-join"]), "unknown\n", "nothing started under the second name");
    // clear refuses while the step runs, and changes nothing.
    let (code, out, err) = f.step(&["clear", unit]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.starts_with("step.sh: ") && err.contains("running"), "{err}");
    assert_eq!(f.status(unit), "running");

    // The unit lives in system.slice, not in the cgroup of the SSH session.
    session.kill().unwrap(); // SIGKILL to the local ssh client
    session.wait().unwrap();
    let early = text(&reader.finish());
    let shell: u32 = early.lines().find_map(|l| l.strip_prefix("shell ")).unwrap().parse().unwrap();
    let (_, group, _) = f.bash(&format!("systemctl show -p ControlGroup --value {unit}.service"));
    assert_eq!(group.trim(), format!("/system.slice/{unit}.service"), "{early}");
    let cgroups: Vec<&str> = early.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit())).collect();
    assert!(!cgroups.is_empty(), "{early}");
    assert!(cgroups.iter().all(|l| !l.contains(unit)), "the session's cgroup is not the unit's: {early}");
    // The session ends for good: whatever is left of it on the node is killed as well.
    let (code, _, err) = f.bash(&format!("pkill -KILL -s {shell} || true"));
    assert_eq!(code, 0, "{err}");
    poll(10, "the session's processes to be gone", || {
        let (code, _, _) = f.bash(&format!("pgrep -s {shell}"));
        (code == 1).then_some(())
    });
    assert_eq!(f.status(unit), "running", "the step survived its session");
    f.wait_status(unit, "exited 3", 30);
    assert_eq!(f.runs(), ["run slow"], "exactly one run of the key");
    assert_eq!(f.log(unit), slow_output(20).as_bytes(), "stdout and stderr, appended to the log");

    // A finished (failed) unit started again: cleared first, its log started afresh.
    assert_eq!(f.step_ok(&["start", unit, "join", "slow", "0", "2", "0"]), format!("started {unit}\n"));
    f.wait_status(unit, "exited 0", 30);
    assert_eq!(f.runs(), ["run slow", "run slow"]);
    assert_eq!(f.log(unit), slow_output(2).as_bytes(), "the log was truncated");

    // clear forgets the finished unit and keeps its log.
    assert_eq!(f.step_ok(&["clear", unit]), "");
    assert_eq!(f.status(unit), "unknown");
    let (_, load, _) = f.bash(&format!("systemctl show -p LoadState --value {unit}.service"));
    assert_eq!(load.trim(), "not-found", "the unit is unloaded");
    assert_eq!(f.log(unit), slow_output(2).as_bytes(), "clear keeps the log");
    assert_eq!(f.step_ok(&["clear", unit]), "", "clearing twice is harmless");
    // The log (and its directory) belong to root alone.
    let (_, modes, _) = f.bash(&format!("stat -c '%a %U' {LOG_DIR} {LOG_DIR}/{unit}.log"));
    assert_eq!(modes, "700 root\n600 root\n");
}

#[test]
fn follow_resumes_byte_for_byte_after_a_dropped_connection() {
    let f = fixture();
    let unit = "hakube-cc33-network";
    let expected = slow_output(40);
    assert_eq!(f.step_ok(&["start", unit, "network", "slow", "0", "40", "0.1"]), format!("started {unit}\n"));
    // The log exists as soon as start returned.
    assert!(f.lab.node_file("master0", format!("{LOG_DIR}/{unit}.log")).unwrap().exists());

    let mut first = f.ssh_command(&Fixture::step_line(&["follow", unit, "0"])).stdout(Stdio::piped()).spawn().unwrap();
    let reader = Reader::new(&mut first);
    poll(30, "follow to stream a few lines", || (reader.len() >= 60).then_some(()));
    first.kill().unwrap(); // SIGKILL to the local ssh client, mid-stream
    first.wait().unwrap();
    let a = reader.finish();
    assert_eq!(f.status(unit), "running", "the connection dropped while the step ran");
    // Nothing of the dropped follow stays on the node: tail sees its output pipe closed.
    poll(10, "the dropped follow's tail to end", || {
        let (code, _, _) = f.bash("pgrep -f 'tail -c [+]1 -f'");
        (code == 1).then_some(())
    });
    assert!(a.len() < expected.len(), "{} of {} bytes", a.len(), expected.len());

    // Resumed where the received bytes end; it ends only once the step has.
    let second = f.ssh(&Fixture::step_line(&["follow", unit, &a.len().to_string()]));
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(second.stderr, b"", "nothing but the log");
    assert_eq!(f.status(unit), "exited 0", "follow ended after the step");
    let mut joined = a.clone();
    joined.extend_from_slice(&second.stdout);
    assert_eq!(text(&joined), text(&f.log(unit)), "received {} + {} bytes", a.len(), second.stdout.len());
    assert_eq!(text(&joined), expected);

    // After the end: the rest, at once; nothing at the end; an offset past it is refused.
    let tail = f.ssh(&Fixture::step_line(&["follow", unit, "100"]));
    assert_eq!(text(&tail.stdout), expected[100..]);
    let (code, out, _) = f.step(&["follow", unit, &expected.len().to_string()]);
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, out, err) = f.step(&["follow", unit, &(expected.len() + 1).to_string()]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.starts_with("step.sh: "), "{err}");
    // No log: unknown.
    let (code, out, err) = f.step(&["follow", "hakube-never-started", "0"]);
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert!(err.starts_with("step.sh: "), "{err}");
}

#[test]
fn status_is_boot_shs_exit_status_or_its_signal() {
    let f = fixture();
    assert_eq!(f.status("hakube-dd44-none"), "unknown");

    assert_eq!(f.step_ok(&["start", "hakube-dd44-ok", "ok", "slow", "0", "1", "0"]), "started hakube-dd44-ok\n");
    f.wait_status("hakube-dd44-ok", "exited 0", 30);

    assert_eq!(
        f.step_ok(&["start", "hakube-dd44-kill", "kill", "slow", "0", "600", "0.1"]),
        "started hakube-dd44-kill\n"
    );
    assert_eq!(f.status("hakube-dd44-kill"), "running");
    let out = f.ssh("sudo -n systemctl kill -s KILL hakube-dd44-kill.service");
    assert!(out.status.success(), "{}", text(&out.stderr));
    f.wait_status("hakube-dd44-kill", "exited 137", 30);
    // A follow of a killed step ends too.
    let out = f.ssh(&Fixture::step_line(&["follow", "hakube-dd44-kill", "0"]));
    assert!(out.status.success() && text(&out.stdout).starts_with("line 01 of 600\n"), "{}", text(&out.stderr));

    // The arguments reach boot.sh as they were given: no $ expansion, no specifiers.
    let args = ["a b", "$HOME", "${HOME}", "$$", "%n", "it's", "", "-x", "\\"];
    let mut start = vec!["start", "hakube-dd44-args", "args", "args"];
    start.extend_from_slice(&args);
    assert_eq!(f.step_ok(&start), "started hakube-dd44-args\n");
    f.wait_status("hakube-dd44-args", "exited 0", 30);
    let expected: String = args.iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(text(&f.log("hakube-dd44-args")), expected);

    // A unit already running under another key is not taken over.
    assert_eq!(
        f.step_ok(&["start", "hakube-dd44-busy", "busy", "slow", "0", "600", "0.1"]),
        "started hakube-dd44-busy\n"
    );
    let (code, out, err) = f.step(&["start", "hakube-dd44-busy", "other", "slow", "0"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    let out = f.ssh("sudo -n systemctl kill -s KILL hakube-dd44-busy.service");
    assert!(out.status.success(), "{}", text(&out.stderr));
    f.wait_status("hakube-dd44-busy", "exited 137", 30);
}

#[test]
fn invalid_units_keys_and_offsets_are_refused() {
    let f = fixture();
    let long_unit = format!("hakube-{}", "a".repeat(293)); // 300 bytes
    let long_key = "a".repeat(300);
    let long_offset = "1".repeat(300);
    let bad_units =
        ["../x", "hakube-a;b", "-1", "", &long_unit, "hakube-", "hakube-x.service", "hakube-A", "hakube-.x", "x-a"];
    let bad_keys = ["../x", "a;b", "-1", "", &long_key, "Join", "a/b", ".a"];
    let bad_offsets = ["-1", "", "1x", "01", "+1", &long_offset, "../x"];
    let mut cases: Vec<Vec<String>> = Vec::new();
    let v = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    for unit in bad_units {
        cases.push(v(&["start", unit, "join", "slow", "0"]));
        cases.push(v(&["follow", unit, "0"]));
        cases.push(v(&["status", unit]));
        cases.push(v(&["clear", unit]));
    }
    for key in bad_keys {
        cases.push(v(&["start", "hakube-ee55-join", key, "slow", "0"]));
    }
    for offset in bad_offsets {
        cases.push(v(&["follow", "hakube-ee55-join", offset]));
    }
    for args in [
        &[][..],
        &["bogus"],
        &["start", "hakube-ee55-join", "join"],
        &["follow", "hakube-ee55-join"],
        &["status", "hakube-ee55-join", "extra"],
    ] {
        cases.push(v(args));
    }
    // One ssh session runs every case, each through its own sudo: the exit code, the length
    // of stdout and the first line of stderr.
    let mut script = String::from(
        "run() { sudo -n /etc/hakube/step.sh \"$@\" >/tmp/out 2>/tmp/err; printf '%s %s %s\\n' \"$?\" \"$(wc -c </tmp/out)\" \"$(head -n 1 /tmp/err)\"; }\n",
    );
    for case in &cases {
        let args: Vec<String> = case.iter().map(|a| quote(a)).collect();
        script.push_str(&format!("run {}\n", args.join(" ")));
    }
    let out = f.ssh(&script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let results = text(&out.stdout);
    let lines: Vec<&str> = results.lines().collect();
    assert_eq!(lines.len(), cases.len(), "{results}");
    for (case, line) in cases.iter().zip(&lines) {
        assert!(line.starts_with("2 0 step.sh: "), "{case:?}: exit 2, nothing on stdout, a message: {line}");
    }
    // Nothing started: no unit, no run, no log.
    let (_, units, _) = f.bash("systemctl list-units --all --plain --no-legend 'hakube-*'");
    assert_eq!(units, "", "no unit was started");
    assert!(f.runs().is_empty());
    let (_, logs, _) = f.bash(&format!("ls -A {LOG_DIR} 2>/dev/null"));
    assert_eq!(logs, "");

    // The limits themselves are allowed: 200 bytes.
    let unit200 = format!("hakube-{}", "a".repeat(193));
    let key200 = "k".repeat(200);
    assert_eq!(f.status(&unit200), "unknown");
    assert_eq!(f.step_ok(&["start", &unit200, &key200, "slow", "0", "1", "0"]), format!("started {unit200}\n"));
    f.wait_status(&unit200, "exited 0", 30);
    let (code, _, err) = f.step(&["status", &format!("{unit200}a")]);
    assert_eq!(code, 2, "201 bytes: {err}");
    assert!(Path::new(&f.lab.node_file("master0", format!("{LOG_DIR}/{unit200}.log")).unwrap()).exists());
}
