//! The runner against a fake [`Transport`] (issue 12, item 5): no ssh, no root, no lab. The
//! fake plays the node side of the step-runner protocol (`step.sh start`, `follow`, `status`,
//! `clear`, as templates/step.sh prints them) and of the built-in steps (tar, sha256sum), with
//! each step's behaviour chosen per node and step; the assets are a manifest.json without
//! files (so shipping sends an empty archive). Asserted: what a failure stops and what it
//! does not, a panicking node task, the exit code boot.sh reported, a follow resumed from its
//! byte offset after the connection dropped (the log complete, once), and both Ctrl-Cs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hakube_assets::manifest::{InstallEntry, Manifest, NodeEntry, PhaseEntry, SshEntry};
use hakube_assets::steps::{self, InstallPhase};
use hakube_cluster::Role;
use hakube_install::runner::{self, Interrupt, NodeOutcome, Settings};
use hakube_install::transport::{NodeConnection, Stream, Transport, TransportError};
use hakube_install::{plan, Event, Mode};

/// What a boot.sh step does on the fake node.
#[derive(Debug, Clone, PartialEq)]
enum Behaviour {
    /// Prints its markers and succeeds.
    Ok,
    /// boot.sh's marker says `failed exit=N`; the unit's own status says `exited 1`
    /// (so a test can tell which one the runner believed).
    Fail(i32),
    /// The node task panics while starting it.
    Panic,
    /// The first follow drops after half the log; the second, from the offset, gives the rest.
    Drop,
    /// Never ends (until the runner stops waiting).
    Hang,
    /// The first start fails in the service manager (exit 219, systemd's `CGROUP`, with no
    /// byte of log); the next one runs.
    SpawnFailsOnce,
    /// What a unit of [`Behaviour::SpawnFailsOnce`] that failed to spawn is.
    SpawnFailed,
}

#[derive(Default)]
struct Node {
    /// unit -> (step, behaviour)
    units: BTreeMap<String, (String, Behaviour)>,
    /// Each follow's offset, in order.
    follows: Vec<(String, u64)>,
    /// Each step started, in order.
    started: Vec<String>,
}

/// What each step does, by node and step name.
type Behaviours = Arc<dyn Fn(&str, &str) -> Behaviour + Send + Sync>;

#[derive(Clone)]
struct Fake {
    behaviour: Behaviours,
    nodes: Arc<Mutex<BTreeMap<String, Node>>>,
    /// Called when a step that hangs is being followed.
    on_hang: Arc<dyn Fn() + Send + Sync>,
    /// Once set, a hanging step ends (exit 0) and its follow gives the rest of its log.
    released: Arc<std::sync::atomic::AtomicBool>,
}

impl Fake {
    fn new(behaviour: impl Fn(&str, &str) -> Behaviour + Send + Sync + 'static) -> Fake {
        Fake {
            behaviour: Arc::new(behaviour),
            nodes: Arc::default(),
            on_hang: Arc::new(|| {}),
            released: Arc::default(),
        }
    }

    fn released(&self) -> bool {
        self.released.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn started(&self, node: &str) -> Vec<String> {
        self.nodes.lock().unwrap().get(node).map(|n| n.started.clone()).unwrap_or_default()
    }
}

/// The log boot.sh writes for `step` with behaviour `b`: a line, the markers.
fn log_of(step: &str, b: &Behaviour) -> Vec<u8> {
    if *b == Behaviour::SpawnFailed {
        return Vec::new();
    }
    let mut text = format!("{}\nboot.sh: doing {step}\n", steps::marker_line(step, "start"));
    for i in 0..20 {
        text.push_str(&format!("boot.sh: {step} line {i}\n"));
    }
    match b {
        Behaviour::Fail(code) => {
            text.push_str(&format!("{}\n", steps::marker_line(step, &format!("failed exit={code}"))))
        }
        _ => text.push_str(&format!("{}\n", steps::marker_line(step, "done"))),
    }
    text.into_bytes()
}

struct FakeConnection {
    node: String,
    fake: Fake,
}

#[async_trait::async_trait]
impl Transport for Fake {
    async fn connect(&self, node: &str) -> Result<Arc<dyn NodeConnection>, TransportError> {
        Ok(Arc::new(FakeConnection { node: node.to_string(), fake: self.clone() }))
    }
}

impl FakeConnection {
    /// `step.sh start UNIT KEY STEP...` on the fake node: its one output line.
    fn start(&self, args: &[String]) -> String {
        let unit = args[1].clone();
        let step = args[3].clone();
        let b = (self.fake.behaviour)(&self.node, &step);
        if b == Behaviour::Panic {
            panic!("the fake node {} broke down in {step}", self.node);
        }
        let mut nodes = self.fake.nodes.lock().unwrap();
        let node = nodes.entry(self.node.clone()).or_default();
        // As step.sh: a unit of an earlier run still running the same step is attached to;
        // nothing new starts.
        let running =
            node.units.iter().find(|(_, (s, b))| *s == step && *b == Behaviour::Hang && !self.fake.released());
        if let Some((earlier, _)) = running {
            return format!("attached {earlier}");
        }
        node.started.push(step.clone());
        let spawned_before = node.units.values().any(|(s, b)| *s == step && *b == Behaviour::SpawnFailed);
        let b = if b == Behaviour::SpawnFailsOnce && !spawned_before { Behaviour::SpawnFailed } else { b };
        node.units.insert(unit.clone(), (step, b));
        format!("started {unit}")
    }

    /// `step.sh status UNIT` on the fake node.
    fn status(&self, unit: &str) -> &'static str {
        let nodes = self.fake.nodes.lock().unwrap();
        match nodes[&self.node].units[unit].1 {
            Behaviour::Fail(_) => "exited 1",
            Behaviour::SpawnFailed => "exited 219",
            Behaviour::Hang if !self.fake.released() => "running",
            _ => "exited 0",
        }
    }

    /// `step.sh follow UNIT OFFSET` on the fake node.
    async fn follow(
        &self,
        unit: &str,
        offset: u64,
        on_bytes: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> (Option<i32>, String) {
        let (step, b) = {
            let mut nodes = self.fake.nodes.lock().unwrap();
            let node = nodes.get_mut(&self.node).unwrap();
            node.follows.push((unit.to_string(), offset));
            node.units[unit].clone()
        };
        let log = log_of(&step, &b);
        let rest = &log[offset as usize..];
        match b {
            // Attached to again from where the first follow was: the step ends now.
            Behaviour::Hang if offset > 0 => {
                self.fake.released.store(true, std::sync::atomic::Ordering::SeqCst);
                on_bytes(rest);
                (Some(0), String::new())
            }
            Behaviour::Hang if !self.fake.released() => {
                on_bytes(&rest[..10]);
                (self.fake.on_hang)();
                std::future::pending::<()>().await;
                unreachable!()
            }
            Behaviour::Drop if offset == 0 => {
                // Half the log, cut in the middle of a line, then the connection is gone.
                on_bytes(&rest[..rest.len() / 2]);
                (None, "Connection reset by peer".into())
            }
            _ => {
                for chunk in rest.chunks(7) {
                    on_bytes(chunk);
                }
                (Some(0), String::new())
            }
        }
    }
}

#[async_trait::async_trait]
impl NodeConnection for FakeConnection {
    async fn run(
        &self,
        program: &str,
        args: &[String],
        _stdin: Option<Vec<u8>>,
        on_line: &mut (dyn for<'l> FnMut(Stream, &'l str) + Send),
    ) -> Result<Option<i32>, TransportError> {
        if program != steps::STEP_SCRIPT {
            // tar, sha256sum (nothing to sum: no files), rm.
            return Ok(Some(0));
        }
        let unit = args[1].clone();
        match args[0].as_str() {
            "start" => {
                on_line(Stream::Stdout, &self.start(args));
                Ok(Some(0))
            }
            "status" => {
                on_line(Stream::Stdout, self.status(&unit));
                Ok(Some(0))
            }
            _ => Ok(Some(0)),
        }
    }

    async fn stream(
        &self,
        _program: &str,
        args: &[String],
        on_bytes: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<(Option<i32>, String), TransportError> {
        if args[0] == "run" {
            // step.sh run: start; when started, follow from 0, status and clear.
            let line = self.start(args);
            let Some(unit) = line.strip_prefix("started ") else {
                return Ok((Some(0), format!("step.sh: unit {line}\n")));
            };
            let (code, errors) = self.follow(unit, 0, on_bytes).await;
            if code != Some(0) {
                return Ok((code, format!("step.sh: unit {line}\n{errors}")));
            }
            return Ok((Some(0), format!("step.sh: unit {line}\nstep.sh: unit {}\n", self.status(unit))));
        }
        let offset = args[2].parse::<u64>().unwrap();
        Ok(self.follow(&args[1], offset, on_bytes).await)
    }

    async fn read_file(&self, _path: &str, _limit: u64) -> Result<Vec<u8>, TransportError> {
        Ok(Vec::new())
    }

    async fn is_alive(&self) -> bool {
        true
    }

    async fn close(self: Arc<Self>) {}
}

/// A cluster of 3 masters (m0 first) and 3 workers, its manifest written (without files) to
/// a fresh assets directory.
fn cluster() -> (tempfile::TempDir, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = BTreeMap::new();
    let names = ["m0", "m1", "m2", "w0", "w1", "w2"];
    for name in names {
        let (role, first) = match name {
            "m0" => (Role::Master, true),
            n if n.starts_with('m') => (Role::Master, false),
            _ => (Role::Worker, false),
        };
        let mut steps: Vec<String> = vec!["prepare".into()];
        steps.push(if first { "init".into() } else { "join".into() });
        steps.push("post".into());
        let ssh = SshEntry { address: "192.0.2.1".into(), port: 22, user: "root".into(), login_key: None };
        nodes.insert(name.to_string(), NodeEntry { role, first_master: first, steps, upgrade_steps: Vec::new(), ssh });
    }
    let phase = |phase, steps: &[&str]| PhaseEntry { phase, steps: steps.iter().map(|s| s.to_string()).collect() };
    let manifest = Manifest {
        format: hakube_assets::manifest::FORMAT_VERSION,
        cluster_name: "fake".into(),
        kubernetes_version: String::new(),
        upgrade_from: None,
        nodes,
        files: BTreeMap::new(),
        recipients: Vec::new(),
        definition_sha256: "0".repeat(64),
        node_order: names.map(String::from).to_vec(),
        install: InstallEntry { concurrency: 10, upgrade_batch: 1, ..Default::default() },
        phases: vec![
            phase(InstallPhase::Prepare, &["prepare"]),
            phase(InstallPhase::Init, &["init"]),
            phase(InstallPhase::Join, &["join"]),
            phase(InstallPhase::Post, &["post"]),
        ],
    };
    manifest.validate().unwrap();
    std::fs::write(dir.path().join("manifest.json"), manifest.to_bytes()).unwrap();
    (dir, manifest)
}

struct Run {
    summary: hakube_install::Summary,
    events: Vec<Event>,
    logs: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn install(fake: Fake, interrupt: Interrupt) -> Run {
    let (dir, manifest) = cluster();
    install_in(dir, &manifest, fake, interrupt).await
}

/// An install with the assets and logs of `dir`.
async fn install_in(dir: tempfile::TempDir, manifest: &Manifest, fake: Fake, interrupt: Interrupt) -> Run {
    let manifest = manifest.clone();
    let plan = plan::build(&manifest, &[], Mode::Install).unwrap();
    let settings = Settings {
        assets_dir: dir.path().to_path_buf(),
        log_dir: dir.path().join("logs"),
        concurrency: 10,
        connect_budget: Duration::from_secs(1),
        plaintexts: Default::default(),
        snapshot_dir: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let summary = runner::execute_with(Arc::new(fake), &manifest, &plan, &settings, tx, interrupt).await.unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    Run { summary, events, logs: dir.path().join("logs"), _dir: dir }
}

fn outcome<'a>(run: &'a Run, node: &str) -> &'a NodeOutcome {
    &run.summary.nodes.iter().find(|n| n.node == node).unwrap().outcome
}

#[tokio::test]
async fn everything_succeeds_in_ha_order() {
    let fake = Fake::new(|_, _| Behaviour::Ok);
    let run = install(fake.clone(), Interrupt::default()).await;
    assert!(run.summary.success(), "{:?}", run.summary);
    // The bootstrap token is made sure of before init where a cluster may run (m1) and on
    // the first master after init, before anything joins.
    assert_eq!(fake.started("m0"), ["prepare", "init", "token", "post"]);
    assert_eq!(fake.started("m1"), ["prepare", "token", "join", "post"]);
    assert_eq!(fake.started("w2"), ["prepare", "join", "post"]);
    let log = std::fs::read_to_string(run.logs.join("w2.log")).unwrap();
    assert_eq!(log.matches("::hakube:: step=join status=done").count(), 1, "{log}");
}

#[tokio::test]
async fn a_failed_init_stops_what_depends_on_it() {
    let fake = Fake::new(|node, step| if (node, step) == ("m0", "init") { Behaviour::Fail(1) } else { Behaviour::Ok });
    let run = install(fake.clone(), Interrupt::default()).await;
    assert!(matches!(outcome(&run, "m0"), NodeOutcome::Failed { step, .. } if step == "init"), "{:?}", run.summary);
    for node in ["m1", "m2", "w0", "w1", "w2"] {
        assert!(
            matches!(outcome(&run, node), NodeOutcome::Skipped { reason } if reason.contains("kubeadm init failed on m0")),
            "{node}: {:?}",
            outcome(&run, node)
        );
        let before_init: &[&str] = if node == "m1" { &["prepare", "token"] } else { &["prepare"] };
        assert_eq!(fake.started(node), before_init, "{node} ran only what does not need the control plane");
    }
}

#[tokio::test]
async fn a_failed_worker_does_not_stop_the_other_workers() {
    let fake = Fake::new(|node, step| if (node, step) == ("w1", "join") { Behaviour::Fail(2) } else { Behaviour::Ok });
    let run = install(fake.clone(), Interrupt::default()).await;
    assert!(matches!(outcome(&run, "w1"), NodeOutcome::Failed { step, exit_code: Some(2), .. } if step == "join"));
    for node in ["m0", "m1", "m2", "w0", "w2"] {
        assert_eq!(outcome(&run, node), &NodeOutcome::Done, "{node}");
    }
    assert_eq!(fake.started("w2"), ["prepare", "join", "post"]);
    assert_eq!(fake.started("w1"), ["prepare", "join"], "w1 stops at its failure");
}

#[tokio::test]
async fn a_panicking_node_task_is_a_failure_with_its_message() {
    let fake = Fake::new(|node, step| if (node, step) == ("w0", "join") { Behaviour::Panic } else { Behaviour::Ok });
    let run = install(fake, Interrupt::default()).await;
    match outcome(&run, "w0") {
        NodeOutcome::Failed { step, message, .. } => {
            assert_eq!(step, "join");
            assert!(
                message.contains("panicked") && message.contains("the fake node w0 broke down in join"),
                "{message}"
            );
        }
        other => panic!("a panicked task reported {other:?}"),
    }
    assert!(!run.summary.success());
    assert_eq!(outcome(&run, "w1"), &NodeOutcome::Done);
    assert!(run.events.iter().any(|e| matches!(e, Event::NodeFailed { node, .. } if node == "w0")));
}

#[tokio::test]
async fn the_exit_code_is_the_one_boot_sh_reported() {
    let fake = Fake::new(|node, step| if (node, step) == ("m1", "join") { Behaviour::Fail(7) } else { Behaviour::Ok });
    let run = install(fake, Interrupt::default()).await;
    // boot.sh's marker says 7; the unit's status says 1: the marker wins.
    assert!(matches!(outcome(&run, "m1"), NodeOutcome::Failed { exit_code: Some(7), .. }), "{:?}", outcome(&run, "m1"));
    // A master's join failed: the masters after it and the workers' joins do not run.
    assert!(matches!(outcome(&run, "m2"), NodeOutcome::Skipped { .. }), "{:?}", outcome(&run, "m2"));
}

#[tokio::test]
async fn a_dropped_follow_resumes_at_its_offset_and_the_log_is_complete_once() {
    let fake = Fake::new(|node, step| if (node, step) == ("w2", "join") { Behaviour::Drop } else { Behaviour::Ok });
    let run = install(fake.clone(), Interrupt::default()).await;
    assert!(run.summary.success(), "{:?}", run.summary);
    let follows = fake.nodes.lock().unwrap()["w2"].follows.clone();
    let join: Vec<u64> = follows.iter().filter(|(u, _)| u.ends_with("-join")).map(|(_, o)| *o).collect();
    let full = log_of("join", &Behaviour::Drop);
    assert_eq!(join, [0, (full.len() / 2) as u64], "followed again from the byte it had");
    assert_eq!(fake.started("w2"), ["prepare", "join", "post"], "the join started once");
    let log = std::fs::read(run.logs.join("w2.log")).unwrap();
    let at = log.windows(full.len()).position(|w| w == full.as_slice());
    assert!(at.is_some(), "the join's log is not in w2.log whole and in order:\n{}", String::from_utf8_lossy(&log));
    assert_eq!(String::from_utf8_lossy(&log).matches("boot.sh: join line 10\n").count(), 1);
}

#[tokio::test]
async fn ctrl_c_starts_nothing_new_and_a_second_leaves_the_running_step_running() {
    // The first Ctrl-C while w0's join hangs and the others' joins finished: nothing new
    // starts (no post anywhere); the second stops waiting for w0's join.
    let interrupt = Interrupt::default();
    let mut fake = Fake::new(|node, step| if (node, step) == ("w0", "join") { Behaviour::Hang } else { Behaviour::Ok });
    let on_hang = interrupt.clone();
    fake.on_hang = Arc::new(move || {
        on_hang.no_new_steps.cancel();
        let second = on_hang.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            second.stop_waiting.cancel();
        });
    });
    let run = install(fake.clone(), interrupt).await;
    assert!(run.summary.interrupted);
    assert_eq!(outcome(&run, "w0"), &NodeOutcome::Interrupted { running: Some("join".into()) });
    for node in ["m0", "m1", "m2", "w1", "w2"] {
        assert!(!fake.started(node).contains(&"post".to_string()), "{node} started post after Ctrl-C");
    }
}

/// The first run: w0's join hangs and a second Ctrl-C leaves it running, in the journal.
async fn left_running() -> (Fake, Manifest, Run) {
    let interrupt = Interrupt::default();
    let mut fake = Fake::new(|node, step| if (node, step) == ("w0", "join") { Behaviour::Hang } else { Behaviour::Ok });
    let stop = interrupt.clone();
    fake.on_hang = Arc::new(move || {
        stop.no_new_steps.cancel();
        stop.stop_waiting.cancel();
    });
    let (dir, manifest) = cluster();
    let first = install_in(dir, &manifest, fake.clone(), interrupt).await;
    assert!(first.summary.interrupted);
    let journal = std::fs::read_to_string(first.logs.join(hakube_install::journal::FILE)).expect("a journal is left");
    assert!(journal.contains("\"step\": \"join\"") && journal.contains("\"offset\": 10"), "{journal}");
    fake.on_hang = Arc::new(|| {});
    (fake, manifest, first)
}

fn join_follows(fake: &Fake, node: &str) -> Vec<u64> {
    let follows = fake.nodes.lock().unwrap()[node].follows.clone();
    follows.iter().filter(|(u, _)| u.ends_with("-join")).map(|(_, o)| *o).collect()
}

/// Issue 12, item 2: the next run attaches to a step still running from a run that stopped
/// waiting (or was killed) instead of starting another, continues its log from the byte the
/// journal has, waits for it and completes.
#[tokio::test]
async fn the_next_run_attaches_to_a_step_left_running_and_its_log_goes_on() {
    let (fake, manifest, first) = left_running().await;
    let second = install_in(first._dir, &manifest, fake.clone(), Interrupt::default()).await;
    assert!(second.summary.success(), "{:?}", second.summary);
    assert_eq!(join_follows(&fake, "w0"), [0, 10], "the second run followed the first run's unit from byte 10");
    assert_eq!(fake.started("w0").iter().filter(|s| *s == "join").count(), 1, "one join started");
    let log = std::fs::read(second.logs.join("w0.log")).unwrap();
    let full = log_of("join", &Behaviour::Hang);
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("==> attached to hakube-"), "{text}");
    // The first run's 10 bytes (the line it was cut in is ended before the next run's
    // lines), then the rest from byte 10 by the second, contiguous: the log whole, once.
    let (head, tail) = full.split_at(10);
    let find = |needle: &[u8]| log.windows(needle.len()).position(|w| w == needle);
    let (at_head, at_tail) = (find(&[head, b"\n"].concat()).expect("the first part"), find(tail).expect("the rest"));
    assert!(at_head < at_tail, "{text}");
    assert_eq!(text.matches("boot.sh: join line 3\n").count(), 1, "{text}");
    assert!(!second.logs.join(hakube_install::journal::FILE).exists(), "the journal is empty again");
}

/// A step left running that ended while no hakube followed it is reported with its exit
/// code and the rest of its log before the plan runs.
#[tokio::test]
async fn a_step_that_ended_while_hakube_was_away_is_reported() {
    let (fake, manifest, first) = left_running().await;
    fake.released.store(true, std::sync::atomic::Ordering::SeqCst);
    let second = install_in(first._dir, &manifest, fake.clone(), Interrupt::default()).await;
    assert!(second.summary.success(), "{:?}", second.summary);
    assert!(
        second.events.iter().any(|e| matches!(e, Event::EndedWhileAway { node, step, exit_code: Some(0), .. } if node == "w0" && step == "join")),
        "{:?}",
        second.events
    );
    // The rest of the earlier unit's log from byte 10, then the plan's own join step (which
    // boot.sh would find done and skip).
    assert_eq!(join_follows(&fake, "w0"), [0, 10, 0]);
    let text = std::fs::read_to_string(second.logs.join("w0.log")).unwrap();
    assert!(text.contains("ended while hakube was away; the rest of its log from byte 10"), "{text}");
}

/// A step the service manager failed to spawn (exit 219, nothing of boot.sh ran, seen on a
/// loaded lab machine) is started again; a boot.sh failure is never retried.
#[tokio::test]
async fn a_step_the_service_manager_could_not_spawn_is_started_again() {
    let fake =
        Fake::new(|node, step| if (node, step) == ("w1", "join") { Behaviour::SpawnFailsOnce } else { Behaviour::Ok });
    let run = install(fake.clone(), Interrupt::default()).await;
    assert!(run.summary.success(), "{:?}", run.summary);
    assert_eq!(fake.started("w1"), ["prepare", "join", "join", "post"]);
    let log = std::fs::read_to_string(run.logs.join("w1.log")).unwrap();
    assert!(log.contains("could not start boot.sh join (exit code 219"), "{log}");
    let failing =
        Fake::new(|node, step| if (node, step) == ("w1", "join") { Behaviour::Fail(1) } else { Behaviour::Ok });
    let run = install(failing.clone(), Interrupt::default()).await;
    assert_eq!(failing.started("w1"), ["prepare", "join"], "a failure of boot.sh itself is not retried");
    assert!(!run.summary.success());
}
