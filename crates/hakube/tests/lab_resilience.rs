//! Issue 12's "Done when": a boot.sh step runs detached on its node, so neither a dropped
//! link nor a killed hakube runs it twice or loses a line of its log. `hakube install`, the
//! real binary, against the local test lab (three masters, two workers, stacked etcd; see
//! lab_install.rs), with `kubeadm join` made to take 30 s or 110 s (a lab fault delaying its
//! kubelet-start phase) while links are cut or hakube is killed. Asserted from the
//! stand-ins' call logs (how many `kubeadm join`s each node ran), the step logs on the nodes
//! (`/var/log/hakube/steps/<unit>.log`) and `LOG_DIR/<node>.log`. Needs root (as CI runs).
//!
//! One lab, both cases in order (the second reinstalls a worker of the first's cluster):
//! the lab has one prefix, bridge and subnet, so two tests could not run side by side.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use hakube_lab::{Call, Fault, LabConfig};

/// A link cut shorter than ssh notices (ServerAliveInterval 15 s, 3 keepalives unanswered:
/// about a minute): the connection survives it, TCP delivers what waited.
const SHORT_CUT: Duration = Duration::from_secs(20);
/// A link cut ssh does notice: the ControlMaster exits, hakube reconnects and follows on.
const LONG_CUT: Duration = Duration::from_secs(80);
/// The fault that makes a join take 30 s: its kubelet-start phase starts after 30 s, once
/// preflight has printed its lines.
const SLOW_JOIN: &str = "kubeadm.join@kubelet-start delay 30";
/// A join that outlasts [`LONG_CUT`] with time to spare for reconnecting.
const SLOWER_JOIN: &str = "kubeadm.join@kubelet-start delay 110";
/// The bound for anything the lab does in one install (a loaded 2-core machine installs
/// five nodes in about two minutes).
const INSTALL_DEADLINE: Duration = Duration::from_secs(360);

mod lab_support;
use lab_support::{bring_up, require_root, World};

impl World {
    fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.logs().join(format!("{node}.log"))).unwrap_or_default()
    }
    /// `hakube install DEFINITION --connect-timeout 20` started in the background, its
    /// stdout and stderr into `dir/<name>.out`.
    fn spawn_install(&self, name: &str) -> Install {
        let out = self.dir.path().join(format!("{name}.out"));
        let file = File::create(&out).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hakube"))
            .args(["install", self.definition.to_str().unwrap(), "--connect-timeout", "20"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("failed to run hakube");
        Install { child, out }
    }
    fn hakube(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_hakube")).args(args).current_dir(self.dir.path()).output().unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
    /// The `kubeadm join` calls on `node` so far (none while the call log is being written
    /// mid-line: the next poll reads it whole).
    fn joins(&self, node: &str) -> Option<Vec<Call>> {
        let calls = self.lab.calls(node).ok()?;
        Some(calls.into_iter().filter(|c| c.name == "kubeadm" && c.args.first().is_some_and(|a| a == "join")).collect())
    }
    /// Waits until a `kubeadm join` beyond the first `before` runs on `node`; it must start
    /// while `install` runs.
    fn wait_for_join(&self, install: &mut Install, node: &str, before: usize) -> Call {
        poll(&format!("{node}'s kubeadm join to start"), INSTALL_DEADLINE, || {
            if install.child.try_wait().unwrap().is_some() {
                let (status, output) = install.finish(self);
                panic!("hakube ended ({status}) before {node} joined:\n{output}");
            }
            self.joins(node)?.into_iter().nth(before).filter(|c| c.end.is_none())
        })
    }
    /// Cuts the links of `cuts`' nodes at once and restores each after its duration;
    /// (node, when it went down, when it came up).
    fn cut_links(&self, cuts: &[(&'static str, Duration)]) -> Vec<(&'static str, SystemTime, SystemTime)> {
        let mut done = Vec::new();
        for (node, _) in cuts {
            self.lab.set_link(node, false).unwrap();
            done.push((*node, SystemTime::now(), SystemTime::UNIX_EPOCH));
        }
        let mut order: Vec<usize> = (0..cuts.len()).collect();
        order.sort_by_key(|i| cuts[*i].1);
        for i in order {
            let wait = (done[i].1 + cuts[i].1).duration_since(SystemTime::now()).unwrap_or_default();
            std::thread::sleep(wait);
            self.lab.set_link(cuts[i].0, true).unwrap();
            done[i].2 = SystemTime::now();
        }
        done
    }
    /// The step logs of `node`'s join units (`/var/log/hakube/steps/hakube-RUN-join.log`):
    /// (unit, contents).
    fn join_unit_logs(&self, node: &str) -> Vec<(String, String)> {
        let dir = self.lab.node_file(node, "/var/log/hakube/steps").unwrap();
        let mut logs: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter_map(|p| {
                let unit = p.file_name()?.to_str()?.strip_suffix(".log")?.to_string();
                unit.ends_with("-join").then(|| (unit, std::fs::read_to_string(&p).unwrap()))
            })
            .collect();
        logs.sort();
        logs
    }
    /// The `ssh` processes of this machine for the lab's nodes: their ControlMasters (`-M`,
    /// naming a node's address) and the commands run through those masters' sockets (`-S
    /// SOCKET ... none`, the openssh crate's way); (pid, command line).
    fn ssh_processes(&self) -> Vec<(u32, String)> {
        let subnet = format!("{}.{}.", SUBNET[0], SUBNET[1]);
        let mut ssh = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            if args.first().is_some_and(|a| a == "ssh" || a.ends_with("/ssh")) {
                ssh.push((pid, args.join(" ")));
            }
        }
        let sockets: Vec<String> = ssh
            .iter()
            .filter(|(_, cmd)| cmd.contains(" -M ") && cmd.contains(&subnet))
            .filter_map(|(_, cmd)| cmd.split(" -S ").nth(1)?.split(' ').next().map(str::to_string))
            .collect();
        ssh.retain(|(_, cmd)| sockets.iter().any(|s| cmd.contains(&format!(" -S {s} "))));
        ssh
    }
}

/// A `hakube install` running in the background.
struct Install {
    child: Child,
    out: PathBuf,
}

impl Install {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
    /// Waits for hakube to end (bounded); its exit status and output. The end of each failed
    /// node's log goes to the test's output (shown when the test fails).
    fn finish(&mut self, w: &World) -> (ExitStatus, String) {
        let status = poll("hakube install to end", INSTALL_DEADLINE, || self.child.try_wait().unwrap());
        let output = self.output();
        assert!(!output.contains("panicked"), "hakube panicked:\n{output}");
        // With each failed node's log, what the service manager said of its step units (one
        // that could not start leaves nothing in the log).
        for node in lab_support::print_failed_logs(&output, &w.logs()) {
            let mut journal = w.lab.command(node, "journalctl").unwrap();
            if let Ok(out) = journal.args(["-b", "-n", "30", "--no-pager", "-u", "hakube-*"]).output() {
                eprintln!("--- {node}'s journal of its steps\n{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        (status, output)
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        // A failed assertion leaves no hakube behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `probe` every 200 ms until it gives a value; panics naming `what` after `deadline`.
fn poll<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `t` as hakube's lines stamp it (`date -u`), for reading the test's output beside them.
fn utc(t: SystemTime) -> String {
    let out = Command::new("date").args(["-u", "+%FT%TZ", "-d"]).arg(format!("@{}", since_epoch(t).as_secs())).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap()
}

/// `part` (whole lines) stands in `whole` exactly once, and none of its first lines stand
/// again just before it nor its last lines just after it: no line missing or doubled, as a
/// follow resumed from a wrong offset would leave.
fn assert_once_in(whole: &str, part: &str, what: &str) {
    assert!(part.ends_with('\n'), "{what}: the node's log does not end with a whole line:\n{part}");
    assert_eq!(
        whole.matches(part).count(),
        1,
        "{what}: the node's log is not in the local log exactly once\n--- node:\n{part}\n--- local:\n{whole}"
    );
    let at = whole.find(part).unwrap();
    let (before, after) = (&whole[..at], &whole[at + part.len()..]);
    let lines: Vec<&str> = part.split_inclusive('\n').collect();
    for k in 1..=lines.len() {
        let head: String = lines[..k].concat();
        let tail: String = lines[lines.len() - k..].concat();
        assert!(!before.ends_with(&head), "{what}: the local log repeats the node log's first {k} line(s):\n{whole}");
        assert!(!after.starts_with(&tail), "{what}: the local log repeats the node log's last {k} line(s):\n{whole}");
    }
}

/// The step log of `node`'s one join unit holds a whole join (its start and done markers),
/// and `local` holds it line for line, exactly once; its unit.
fn assert_join_log_complete(w: &World, node: &str, local: &str) -> String {
    let units = w.join_unit_logs(node);
    assert_eq!(units.len(), 1, "{node}: one join unit ran: {:?}", units.iter().map(|u| &u.0).collect::<Vec<_>>());
    let (unit, remote) = units.into_iter().next().unwrap();
    for marker in ["::hakube:: step=join status=start\n", "::hakube:: step=join status=done\n"] {
        assert_eq!(remote.matches(marker).count(), 1, "{node}: {unit}.log has {marker:?} once:\n{remote}");
    }
    assert_once_in(local, &remote, &format!("{node}: {unit}"));
    unit
}

const PREFIX: &str = "hkn";
const BRIDGE: &str = "hkbr14";
const SUBNET: [u8; 2] = [10, 239];

/// The lab's default setup (3 masters, 2 workers, stacked etcd) on this test's own names and
/// network, rendered first (see [`bring_up`]).
fn setup() -> World {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = LabConfig {
        prefix: PREFIX.into(),
        bridge: BRIDGE.into(),
        subnet_base: SUBNET,
        ..LabConfig::new(3, 2, dir.path().join("lab"))
    };
    let mut definition = hakube_lab::definition(&config).expect("lab definition");
    definition["etcd"]["topology"] = "stacked".into();
    bring_up(dir, config, &definition)
}

#[test]
fn a_join_outlives_a_cut_link_and_a_killed_hakube() {
    let w = setup();
    let started = Instant::now();
    links_cut_during_joins_lose_nothing(&w);
    eprintln!("case 1 (cut links) took {:?}", started.elapsed());
    let started = Instant::now();
    a_second_install_attaches_to_the_join_of_a_killed_one(&w);
    eprintln!("case 2 (SIGKILL) took {:?}", started.elapsed());
}

/// Links cut in the middle of joins: for 20 s during a 30 s join on a master (the masters
/// join one at a time, master2 after master1), then, as the workers join side by side, for
/// 20 s during worker0's 30 s join and for 80 s during worker1's 110 s join (long enough for
/// ssh to give the connection up, so hakube reconnects and follows on from its offset).
/// hakube follows each join to its end, every node joined exactly once, and each join's log
/// reached LOG_DIR/<node>.log whole.
fn links_cut_during_joins_lose_nothing(w: &World) {
    let faults = [("master2", SLOW_JOIN), ("worker0", SLOW_JOIN), ("worker1", SLOWER_JOIN)];
    for (node, fault) in faults {
        w.lab.add_fault(node, &Fault::parse(fault).unwrap()).unwrap();
    }
    let mut install = w.spawn_install("install-cut");
    w.wait_for_join(&mut install, "master2", 0);
    let mut cuts = w.cut_links(&[("master2", SHORT_CUT)]);
    w.wait_for_join(&mut install, "worker0", 0);
    w.wait_for_join(&mut install, "worker1", 0);
    cuts.extend(w.cut_links(&[("worker0", SHORT_CUT), ("worker1", LONG_CUT)]));
    let (status, output) = install.finish(w);
    assert!(status.success(), "install with cut links: {status}\n{output}");
    let lost = |node: &str| -> Vec<String> {
        let prefix = format!("{node}: ");
        output
            .lines()
            .filter(|l| l.contains(&prefix) && l.contains("lost the connection"))
            .map(str::to_string)
            .collect()
    };
    for node in ["master2", "worker0", "worker1"] {
        eprintln!("{node}: hakube's reconnections: {:#?}", lost(node));
    }
    assert!(!lost("worker1").is_empty(), "ssh never gave up worker1's connection in {LONG_CUT:?}:\n{output}");

    for node in ["master1", "master2", "worker0", "worker1"] {
        let joins = w.joins(node).unwrap();
        assert_eq!(joins.len(), 1, "{node} ran kubeadm join {} times: {joins:?}", joins.len());
        assert_eq!(joins[0].exit, Some(0), "{node}: {joins:?}");
    }
    assert_eq!(w.joins("master0").unwrap().len(), 0, "the first master joined");
    for (node, down, up) in cuts {
        let join = &w.joins(node).unwrap()[0];
        let end = join.end.unwrap();
        eprintln!(
            "{node}: kubeadm join {:.1} s; link down {:.1} s after it started (at {}), up again {:.1} s after",
            (end - join.start).as_secs_f64(),
            (since_epoch(down) - join.start).as_secs_f64(),
            utc(down),
            (since_epoch(up) - join.start).as_secs_f64()
        );
        assert!(
            join.start <= since_epoch(down) && since_epoch(up) <= end,
            "{node}: the link was not cut during its join"
        );
        let local = w.log(node);
        assert_eq!(local.matches("::hakube:: step=join status=start").count(), 1, "{node}.log:\n{local}");
        assert_join_log_complete(w, node, &local);
    }
    for (node, _) in faults {
        w.lab.clear_faults(node).unwrap();
    }
}

/// hakube SIGKILLed while a worker's 30 s join runs: the join goes on on the node, and
/// `hakube install` again (same assets, same log directory) attaches to it instead of
/// starting a second one, waits for it, and finishes.
fn a_second_install_attaches_to_the_join_of_a_killed_one(w: &World) {
    let (code, out) = w.hakube(&["reset", w.definition.to_str().unwrap(), "worker1", "--yes"]);
    assert_eq!(code, Some(0), "reset worker1:\n{out}");
    let before = w.joins("worker1").unwrap().len();
    w.lab.add_fault("worker1", &Fault::parse(SLOW_JOIN).unwrap()).unwrap();
    let log_before = w.log("worker1").len();

    let mut first = w.spawn_install("install-killed");
    let join = w.wait_for_join(&mut first, "worker1", before);
    let ssh_before_kill = w.ssh_processes();
    first.child.kill().unwrap(); // SIGKILL, hakube only: its ssh children live or die on their own
    let killed = first.child.wait().unwrap();
    eprintln!("hakube: {killed}; its output:\n{}", first.output());
    let ssh_after_kill = w.ssh_processes();
    eprintln!("ssh to the lab before the kill: {ssh_before_kill:#?}\nand after: {ssh_after_kill:#?}");
    assert!(w.joins("worker1").unwrap()[before].end.is_none(), "worker1's join ended with hakube");

    let mut second = w.spawn_install("install-again");
    let (status, output) = second.finish(w);
    assert!(status.success(), "install after the killed one: {status}\n{output}");
    let joins = w.joins("worker1").unwrap();
    assert_eq!(joins.len(), before + 1, "worker1 ran a second kubeadm join: {:?}", &joins[before..]);
    assert_eq!((joins[before].pid, joins[before].exit), (join.pid, Some(0)), "{joins:?}");

    // The second run's part of the log: the join it attached to, from the byte the run
    // journal says the killed run had written, whole.
    let local = w.log("worker1");
    let local = &local[log_before..];
    let (unit, remote) = w.join_unit_logs("worker1").into_iter().next().expect("worker1's join unit log");
    let attached = format!("==> attached to {unit}");
    let at = local.find(&attached).unwrap_or_else(|| panic!("the second run did not attach to {unit}:\n{local}"));
    let rest = &local[at..].split_once('\n').unwrap().1;
    let done = remote.find("::hakube:: step=join status=done").expect("the join's done marker");
    let from = (0..=done)
        .find(|k| remote.is_char_boundary(*k) && rest.starts_with(&remote[*k..]))
        .unwrap_or_else(|| panic!("the second run did not follow {unit} to its end:\n{local}"));
    // The killed run wrote those first bytes (the run journal's offset); the second run's
    // own lines (its start, the steps it skipped) come between them and the attach.
    let second_run = local[..at].rfind("==> hakube run started").unwrap_or(0);
    assert!(
        local[..second_run].trim_end_matches('\n').ends_with(remote[..from].trim_end_matches('\n')),
        "{from} bytes of {unit}.log before attaching, not as the node has them:\n{local}"
    );
    // It got there past the steps the killed run had finished, done while the join holds
    // the node's lock.
    for step in ["prepare", "runtime", "packages"] {
        let skipped = format!("boot.sh: another boot.sh runs step join on this node; step {step} is done\n");
        assert!(local[..at].contains(&skipped), "{step} was not skipped beside the running join:\n{local}");
    }
    assert_eq!(assert_join_log_complete(w, "worker1", &format!("{}{}", &remote[..from], rest)), unit);

    let ssh_after = w.ssh_processes();
    eprintln!("ssh to the lab after the second install: {ssh_after:#?}");
    // A follow the killed hakube left gets nothing more to write once the step ended.
    poll("no follow (tail) left on worker1", Duration::from_secs(30), || {
        let out = w.lab.command("worker1", "pgrep").unwrap().args(["-a", "tail"]).output().unwrap();
        out.stdout.is_empty().then_some(())
    });
    // The killed run's ControlMasters (ControlPersist=300s) would outlive the lab: ended here.
    for (pid, cmd) in ssh_after.iter().filter(|(_, cmd)| cmd.contains(" -M ")) {
        eprintln!("ending the killed run's ControlMaster {pid}: {cmd}");
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    w.lab.clear_faults("worker1").unwrap();
}
