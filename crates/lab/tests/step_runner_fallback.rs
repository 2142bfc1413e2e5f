//! templates/step.sh without systemd, on this machine as the user running the tests (no root,
//! no lab): its constants pointed at a temporary directory and at a missing systemd
//! directory, so that it takes the `setsid` fallback, with tests/fake_boot.sh as boot.sh.
//! Also shellcheck of step.sh and the fake, and the shape of step.sh's constants.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const STEP_SH: &str = include_str!("../../../templates/step.sh");
const FAKE_BOOT: &str = include_str!("fake_boot.sh");

/// The constant block of step.sh: each name and its value as shipped.
const CONSTANTS: [(&str, &str); 5] = [
    ("BOOT_SCRIPT", "/etc/hakube/boot.sh"),
    ("STEP_LOG_DIR", "/var/log/hakube/steps"),
    ("STEP_RUN_DIR", "/run/hakube/steps"),
    ("UNIT_PREFIX", "hakube-"),
    ("SYSTEMD_DIR", "/run/systemd/system"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of step.sh in a temporary directory, its constants rewritten to point there.
struct Runner {
    dir: tempfile::TempDir,
}

impl Runner {
    fn new() -> Runner {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let values = [
            ("BOOT_SCRIPT", d.join("boot.sh")),
            ("STEP_LOG_DIR", d.join("log/steps")),
            ("STEP_RUN_DIR", d.join("run/steps")),
            ("SYSTEMD_DIR", d.join("no-systemd")),
        ];
        let mut replaced = 0;
        let script: String = STEP_SH
            .lines()
            .map(|line| {
                for (name, value) in &values {
                    if let Some(rest) = line.strip_prefix(&format!("readonly {name}=")) {
                        replaced += 1;
                        let comment = rest.find(" #").map(|i| &rest[i..]).unwrap_or("");
                        return format!("readonly {name}={}{comment}\n", value.display());
                    }
                }
                format!("{line}\n")
            })
            .collect();
        assert_eq!(replaced, values.len(), "each constant is one `readonly NAME=` line");
        for (_, shipped) in &CONSTANTS[..3] {
            assert!(!script.contains(&format!("={shipped}")), "{shipped} was rewritten");
        }
        write_executable(&d.join("step.sh"), &script);
        write_executable(&d.join("boot.sh"), FAKE_BOOT);
        Runner { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.path("step.sh"));
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    /// (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).output().unwrap();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "step.sh {args:?}: {out}{err}");
        out
    }

    fn status(&self, unit: &str) -> String {
        self.ok(&["status", unit]).trim_end().to_string()
    }

    fn wait_status(&self, unit: &str, want: &str) {
        poll(30, &format!("{unit} to be {want:?}"), || (self.status(unit) == want).then_some(()));
    }

    fn runs(&self) -> Vec<String> {
        fs::read_to_string(self.path("fake-runs")).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
    }

    fn log(&self, unit: &str) -> String {
        fs::read_to_string(self.path(&format!("log/steps/{unit}.log"))).unwrap()
    }
}

fn write_executable(path: &Path, content: &str) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
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

fn poll<T>(seconds: u64, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {seconds} s waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn kill(signal: &str, target: &str) {
    let out = Command::new("kill").args([signal, "--", target]).output().unwrap();
    assert!(out.status.success(), "kill {signal} {target}: {}", text(&out.stderr));
}

#[test]
fn without_systemd_a_step_runs_once_per_key_under_setsid() {
    let r = Runner::new();
    let unit = "hakube-aa11-join";
    assert_eq!(r.status(unit), "unknown");
    assert_eq!(r.ok(&["start", unit, "join", "slow", "3", "30", "0.1"]), format!("started {unit}\n"));
    assert_eq!(r.ok(&["start", "hakube-bb22-join", "join", "slow", "0"]), format!("attached {unit}\n"));
    assert_eq!(r.status("hakube-bb22-join"), "unknown", "nothing started under the second name");
    assert_eq!(r.status(unit), "running");
    // The pid file: PID, start time, key.
    let pid_file = fs::read_to_string(r.path(&format!("run/steps/{unit}.pid"))).unwrap();
    let fields: Vec<&str> = pid_file.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{pid_file}");
    assert_eq!(fields[2], "join");
    // The step is in a session of its own.
    let stat = fs::read_to_string(format!("/proc/{}/stat", fields[0])).unwrap();
    let after = stat.rsplit_once(") ").unwrap().1;
    let session: Vec<&str> = after.split_whitespace().collect();
    assert_eq!(session[3], fields[0], "the wrapper leads its own session: {stat}");

    let (code, out, err) = r.run(&["clear", unit]);
    assert_eq!((code, out.as_str()), (1, ""), "clear refuses while it runs: {err}");
    assert!(err.starts_with("step.sh: "), "{err}");

    // follow killed midway (its whole process group, as a dropped connection leaves nothing
    // reading), then resumed from the bytes received.
    let expected = slow_output(30);
    let mut first = r.command(&["follow", unit, "0"]).stdout(Stdio::piped()).process_group(0).spawn().unwrap();
    let mut stdout = first.stdout.take().unwrap();
    let mut a = Vec::new();
    let mut chunk = [0u8; 64];
    while a.len() < 50 {
        let n = stdout.read(&mut chunk).unwrap();
        assert!(n > 0, "follow ended early: {}", text(&a));
        a.extend_from_slice(&chunk[..n]);
    }
    kill("-KILL", &format!("-{}", first.id()));
    first.wait().unwrap();
    stdout.read_to_end(&mut a).unwrap();
    assert_eq!(r.status(unit), "running");
    assert!(a.len() < expected.len());
    let second = r.command(&["follow", unit, &a.len().to_string()]).output().unwrap();
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(second.stderr, b"");
    assert_eq!(r.status(unit), "exited 3", "follow ended after the step");
    a.extend_from_slice(&second.stdout);
    assert_eq!(text(&a), r.log(unit));
    assert_eq!(text(&a), expected);
    assert_eq!(r.runs(), ["run slow"], "exactly one run");

    // Started again once finished: the log starts afresh.
    assert_eq!(r.ok(&["start", unit, "join", "slow", "0", "2", "0"]), format!("started {unit}\n"));
    r.wait_status(unit, "exited 0");
    assert_eq!(r.log(unit), slow_output(2));
    assert_eq!(r.runs(), ["run slow", "run slow"]);
    assert_eq!(r.ok(&["clear", unit]), "");
    assert_eq!(r.status(unit), "unknown");
    assert!(!r.path(&format!("run/steps/{unit}.pid")).exists());
    assert!(!r.path(&format!("run/steps/{unit}.status")).exists());
    assert_eq!(r.log(unit), slow_output(2), "clear keeps the log");
}

#[test]
fn without_systemd_status_is_the_exit_status_or_the_signal() {
    let r = Runner::new();
    assert_eq!(r.ok(&["start", "hakube-cc33-kill", "kill", "slow", "0", "600", "0.1"]), "started hakube-cc33-kill\n");
    let pid = poll(10, "boot.sh to write its PID", || {
        let runs = r.runs().len();
        let pid = fs::read_to_string(r.path("fake-pid")).ok()?;
        (runs == 1).then(|| pid.trim().to_string())
    });
    assert_eq!(r.status("hakube-cc33-kill"), "running");
    kill("-KILL", &pid);
    r.wait_status("hakube-cc33-kill", "exited 137");
    let out = r.command(&["follow", "hakube-cc33-kill", "0"]).output().unwrap();
    assert!(out.status.success() && text(&out.stdout).starts_with("line 01 of 600\n"), "{}", text(&out.stderr));
    let status = fs::read_to_string(r.path("run/steps/hakube-cc33-kill.status")).unwrap();
    assert_eq!(status, "137\n");

    assert_eq!(r.ok(&["start", "hakube-cc33-ok", "ok", "slow", "0", "1", "0"]), "started hakube-cc33-ok\n");
    r.wait_status("hakube-cc33-ok", "exited 0");
    assert_eq!(r.ok(&["start", "hakube-cc33-two", "two", "slow", "2", "1", "0"]), "started hakube-cc33-two\n");
    r.wait_status("hakube-cc33-two", "exited 2");

    // The arguments reach boot.sh unchanged.
    let args = ["a b", "$HOME", "$$", "%n", "it's", "", "-x"];
    let mut start = vec!["start", "hakube-cc33-args", "args", "args"];
    start.extend_from_slice(&args);
    assert_eq!(r.ok(&start), "started hakube-cc33-args\n");
    r.wait_status("hakube-cc33-args", "exited 0");
    let expected: String = args.iter().map(|a| format!("[{a}]\n")).collect();
    assert_eq!(r.log("hakube-cc33-args"), expected);

    // A pid file whose PID lives on in another process (a different start time) is not the
    // step: not running, no status, and its key is free.
    let me = std::process::id();
    fs::write(r.path("run/steps/hakube-cc33-stale.pid"), format!("{me} 1 stale\n")).unwrap();
    assert_eq!(r.status("hakube-cc33-stale"), "unknown");
    assert_eq!(r.ok(&["start", "hakube-cc33-fresh", "stale", "slow", "0", "1", "0"]), "started hakube-cc33-fresh\n");
    r.wait_status("hakube-cc33-fresh", "exited 0");
}

#[test]
fn without_systemd_invalid_arguments_start_nothing() {
    let r = Runner::new();
    let long_unit = format!("hakube-{}", "a".repeat(293));
    let long_key = "a".repeat(300);
    for args in [
        &["start", "../x", "join", "slow", "0"][..],
        &["start", "hakube-a;b", "join", "slow", "0"],
        &["start", "-1", "join", "slow", "0"],
        &["start", "", "join", "slow", "0"],
        &["start", &long_unit, "join", "slow", "0"],
        &["start", "hakube-ok", "../x", "slow", "0"],
        &["start", "hakube-ok", "", "slow", "0"],
        &["start", "hakube-ok", &long_key, "slow", "0"],
        &["start", "hakube-ok", "join"],
        &["follow", "hakube-ok", "-1"],
        &["follow", "hakube-ok", ""],
        &["status", "hakube-a;b"],
        &["clear", "../x"],
        &["bogus"],
        &[],
    ] {
        let (code, out, err) = r.run(args);
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}: {err}");
        assert!(err.starts_with("step.sh: "), "{args:?}: {err}");
    }
    assert!(r.runs().is_empty(), "nothing ran");
    assert!(!r.path("run").exists() && !r.path("log").exists(), "nothing was even prepared");
}

#[test]
fn step_sh_is_plain_bash_with_one_block_of_constants() {
    // Not a template: nothing minijinja would take for its syntax.
    for sequence in ["{{", "{%", "{#", "${#"] {
        assert!(!STEP_SH.contains(sequence), "templates/step.sh contains {sequence:?}");
    }
    let lines: Vec<&str> = STEP_SH.lines().collect();
    let first = lines.iter().position(|l| l.starts_with("readonly BOOT_SCRIPT=")).unwrap();
    for (i, (name, value)) in CONSTANTS.iter().enumerate() {
        let line = lines[first + i];
        let rest = line.strip_prefix(&format!("readonly {name}=")).unwrap_or_else(|| panic!("line {line:?}"));
        assert_eq!(rest.split_whitespace().next(), Some(*value), "{line}");
    }
    assert!(lines[first - 1].starts_with("# --- Constants"), "the block is marked: {:?}", lines[first - 1]);
    assert!(lines[first + CONSTANTS.len()].starts_with("# --- End of constants"));
}

#[test]
fn step_sh_and_the_fake_boot_sh_pass_shellcheck() {
    let root = root();
    let out = Command::new("shellcheck")
        .args(["-s", "bash"])
        .arg(root.join("templates/step.sh"))
        .arg(root.join("crates/lab/tests/fake_boot.sh"))
        .output()
        .expect("shellcheck runs (Debian package shellcheck)");
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// `step.sh run`: start, follow from byte 0, status and clear in one call (what hakube runs
/// for each step when nothing goes wrong): the whole log on standard output, the unit and
/// its exit status on standard error, the unit cleared and its log kept; a second `run` of
/// the same key while it runs attaches and follows nothing.
#[test]
fn without_systemd_run_starts_follows_reports_and_clears_in_one_call() {
    let r = Runner::new();
    let (code, out, err) = r.run(&["run", "hakube-r1-join", "join", "slow", "3", "6", "0.1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, slow_output(6), "the whole log, once");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.first(), Some(&"step.sh: unit started hakube-r1-join"), "{err}");
    assert_eq!(lines.last(), Some(&"step.sh: unit exited 3"), "{err}");
    assert_eq!(r.status("hakube-r1-join"), "unknown", "cleared");
    assert_eq!(r.log("hakube-r1-join"), slow_output(6), "the log is kept");
    // While one runs, another run of its key attaches and returns at once.
    r.ok(&["start", "hakube-r2-join", "join", "slow", "0", "40", "0.1"]);
    let (code, out, err) = r.run(&["run", "hakube-r3-join", "join", "slow", "0"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(err.trim(), "step.sh: unit attached hakube-r2-join");
    assert_eq!(r.runs().len(), 2, "{:?}", r.runs());
    r.wait_status("hakube-r2-join", "exited 0");
}
