//! Processes, namespaces and links: the lab's small wrappers around `ip` and signals.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::LabError;

/// How long the lab waits for a process to end, a node to come up, sshd to listen.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `cmd` to completion; its standard output, or an error with its standard error.
pub(crate) fn run(cmd: &mut Command) -> Result<String, LabError> {
    let line = command_line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command { command: line.clone(), detail: format!("cannot start it: {e}") })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: line,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -batch -` (in namespace `netns`, if given) with `lines` as its commands.
pub(crate) fn ip_batch(netns: Option<&str>, lines: &str) -> Result<(), LabError> {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    let line = command_line(&cmd);
    let fail = |detail: String| LabError::Command { command: line.clone(), detail };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.as_bytes()).map_err(|e| fail(format!("cannot write its commands: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// `cmd` as a readable command line, for errors.
pub(crate) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The network namespaces that exist (`ip netns list`).
pub(crate) fn netns_list() -> Result<Vec<String>, LabError> {
    Ok(run(Command::new("ip").args(["netns", "list"]))?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// The PIDs of the processes in namespace `netns` (`ip netns pids`).
pub(crate) fn netns_pids(netns: &str) -> Result<Vec<u32>, LabError> {
    Ok(run(Command::new("ip").args(["netns", "pids", netns]))?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// The links of the root network namespace (`ip -o link show`), by name.
pub(crate) fn link_names() -> Result<Vec<String>, LabError> {
    Ok(run(Command::new("ip").args(["-o", "link", "show"]))?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect())
}

/// Sends SIGKILL to `pid`; a process that is already gone is fine.
pub(crate) fn kill(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        // ESRCH (already gone) is the only error for root, and it is what we want.
        let _ = kill_process(pid, Signal::KILL);
    }
}

/// Whether process `pid` exists and has not ended (a zombie has ended).
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "1234 (sshd) S ...".
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Polls `done` every 10 ms until it holds or `TIMEOUT` passes; whether it held.
pub(crate) fn wait_for(done: impl FnMut() -> bool) -> bool {
    wait_for_within(TIMEOUT, done)
}

/// Whether a process in the network namespace of `pid` listens on TCP port `port`, from
/// `/proc/<pid>/net/tcp` (local address `HEXIP:HEXPORT`, state `0A` = LISTEN).
pub(crate) fn listening(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else { return false };
    let port = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&port) && fields[3] == "0A"
    })
}

/// Whether `program` is an executable file in `PATH` (or, with a `/`, at that path).
pub(crate) fn have_program(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| executable(&dir.join(program))))
        .unwrap_or(false)
}

/// Polls `done` every 10 ms until it holds or `timeout` passes; whether it held.
pub(crate) fn wait_for_within(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An exclusive lock on `path` (created if missing), held until the returned file is
/// dropped: `flock(2)`, so a crashed holder releases it.
pub(crate) fn lock(path: &Path) -> Result<std::fs::File, LabError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LabError::Io { action: "open the lock", path: path.to_path_buf(), source })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| LabError::Io {
        action: "lock",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(file)
}

/// Sends SIGTERM to `pid` (a process already gone is fine).
pub(crate) fn signal_term(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, Signal::TERM);
    }
}

/// The first child of process `pid` (`/proc/<pid>/task/<pid>/children`), if it has one.
pub(crate) fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?.split_whitespace().next()?.parse().ok()
}

/// Whether process `pid` is a `systemd-nspawn` booting `root` (its command line has
/// `--directory <root>`): so that a PID from `lab.json` is signalled only while it still is.
pub(crate) fn is_nspawn_of(pid: u32, root: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.first().is_some_and(|a| a.ends_with(b"systemd-nspawn"))
        && args.windows(2).any(|w| w[0] == b"--directory" && w[1] == root.as_os_str().as_encoded_bytes())
}

/// Whether a process in the network namespace of `pid` listens on `address:port` (TCP, or
/// on the wildcard address), from `/proc/<pid>/net/tcp`.
pub(crate) fn listening_on(pid: u32, address: std::net::Ipv4Addr, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else { return false };
    // /proc/net/tcp prints the address as the host-order u32 of the network-order bytes.
    let hex = |ip: std::net::Ipv4Addr| format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets()));
    let (ours, any) = (hex(address), hex(std::net::Ipv4Addr::UNSPECIFIED));
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && (fields[1] == ours || fields[1] == any) && fields[3] == "0A"
    })
}

/// The mount points at or below `dir`, from `/proc/self/mountinfo` (field 5; octal escapes
/// such as `\040` for a space decoded).
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<std::path::PathBuf>, LabError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| LabError::Io {
        action: "read",
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect())
}

fn unescape_mount_path(field: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    std::path::PathBuf::from(std::ffi::OsString::from_vec(out))
}
