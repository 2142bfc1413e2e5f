//! The boot script's protocol, spelled once for Rust and bash: the on-node paths, the step
//! names install calls, the install phases a step belongs to, the marker lines a step prints
//! and the names of the transient systemd units steps run in.
//!
//! hakube render puts [`facts`] into every boot script and into the step runner
//! (`step.sh`) it ships beside it, so the bash reads these values instead of spelling them
//! again; hakube install parses what the scripts print with [`parse_marker`] and
//! [`parse_start`].

use serde::{Deserialize, Serialize};

/// The boot script on a node (`layout::boot_script` ships there).
pub const BOOT_SCRIPT: &str = "/etc/hakube/boot.sh";
/// The step runner on a node: starts a boot.sh step as a transient systemd unit, follows
/// its log, reports its exit status (`layout::STEP_RUNNER` ships there).
pub const STEP_SCRIPT: &str = "/etc/hakube/step.sh";
/// Where boot.sh records finished steps (`NAME.done`, `NAME.was-done`).
pub const STATE_DIR: &str = "/var/lib/hakube/steps";
/// The lock one boot.sh at a time holds on a node (flock(1)).
pub const BOOT_LOCK: &str = "/var/lib/hakube/boot.lock";
/// hakube's own state on a node besides /etc/hakube, removed by `hakube reset`.
pub const STATE_ROOT: &str = "/var/lib/hakube";
/// Where the step runner writes each unit's output, `<unit>.log` (kept across reboots).
pub const STEP_LOG_DIR: &str = "/var/log/hakube/steps";
/// The step runner's locks and, without systemd, its pid and status files.
pub const STEP_RUN_DIR: &str = "/run/hakube/steps";
/// The prefix of every unit the step runner starts.
pub const UNIT_PREFIX: &str = "hakube-";
/// The prefix of a marker line.
pub const MARKER_PREFIX: &str = "::hakube::";

/// The boot.sh steps install names on its own (the rest come from the manifest).
pub mod names {
    /// `kubeadm init` on the first master (`init --existing`: join the running cluster).
    pub const INIT: &str = "init";
    /// `kubeadm join` (control plane on a master, worker otherwise).
    pub const JOIN: &str = "join";
    /// Makes sure the rendered bootstrap token exists (on a master).
    pub const TOKEN: &str = "token";
    /// `forget NODE`: a remaining master removes NODE from etcd and the node list.
    pub const FORGET: &str = "forget";
    /// `kubeadm reset` and hakube's state.
    pub const RESET: &str = "reset";
    /// `hakube upgrade`: checks before anything changes (first master).
    pub const UPGRADE_PREFLIGHT: &str = "upgrade-preflight";
    /// `hakube upgrade`: the etcd snapshot (first master).
    pub const UPGRADE_SNAPSHOT: &str = "upgrade-snapshot";
    /// `hakube upgrade`: `kubeadm upgrade apply` (first master).
    pub const UPGRADE_APPLY: &str = "upgrade-apply";
    /// `hakube upgrade`: `kubeadm upgrade node` and the node's packages.
    pub const UPGRADE_NODE: &str = "upgrade-node";
    /// `hakube upgrade`: drain a worker (on the first master).
    pub const UPGRADE_DRAIN: &str = "upgrade-drain";
    /// `hakube upgrade`: uncordon a worker (on the first master).
    pub const UPGRADE_UNCORDON: &str = "upgrade-uncordon";
    /// `hakube upgrade`: the network add-on's new release (first master).
    pub const UPGRADE_NETWORK: &str = "upgrade-network";
    /// `hakube upgrade`: the closing check (first master).
    pub const UPGRADE_CHECK: &str = "upgrade-check";
}

/// The install phase a boot.sh step belongs to, as render records it in the manifest
/// (`phases`), so that install never guesses a step's place from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallPhase {
    /// Before init/join, on every node in parallel (packages, runtime, certificates, etcd,
    /// image pulls).
    Prepare,
    /// `kubeadm init` on the first master.
    Init,
    /// `kubeadm join`: masters one at a time, then workers in parallel.
    Join,
    /// Cluster add-ons the first master applies once every node joined (cloud provider,
    /// network).
    AddOns,
    /// After everything else, on every node in parallel.
    Post,
}

impl InstallPhase {
    /// Every phase, in install order.
    pub const ALL: [InstallPhase; 5] =
        [InstallPhase::Prepare, InstallPhase::Init, InstallPhase::Join, InstallPhase::AddOns, InstallPhase::Post];
}

/// Whether `name` can be a step name: 1 to 64 characters, lowercase ASCII letters, digits
/// and `-`, starting with a letter (every step boot.sh has; a manifest naming another is
/// refused, since the name reaches the node's command line and a unit name).
pub fn is_step_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What a marker line of boot.sh says: `::hakube:: step=NAME status=start|done|skipped`
/// or `::hakube:: step=NAME status=failed exit=CODE` (boot.sh's `marker` and `on_exit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// The step began.
    Start(String),
    /// The step ran and its check passed.
    Done(String),
    /// The step was already done; nothing ran.
    Skipped(String),
    /// The step failed; boot.sh exited with this code.
    Failed(String, i32),
}

/// The marker line boot.sh prints for `step` and `status` (`start`, `done`, `skipped`,
/// `failed exit=CODE`); for tests and stand-ins.
pub fn marker_line(step: &str, status: &str) -> String {
    format!("{MARKER_PREFIX} step={step} status={status}")
}

/// Parses one line of a step's output as a marker; `None` for any other line (a line that
/// merely mentions the prefix, or a marker with a bad step name or exit code).
pub fn parse_marker(line: &str) -> Option<Marker> {
    let rest = line.trim_end().strip_prefix(MARKER_PREFIX)?.strip_prefix(' ')?;
    let (step, status) = rest.strip_prefix("step=")?.split_once(" status=")?;
    if !is_step_name(step) {
        return None;
    }
    let step = step.to_string();
    match status {
        "start" => Some(Marker::Start(step)),
        "done" => Some(Marker::Done(step)),
        "skipped" => Some(Marker::Skipped(step)),
        _ => {
            let code = status.strip_prefix("failed exit=")?.parse::<i32>().ok().filter(|c| (0..=255).contains(c))?;
            Some(Marker::Failed(step, code))
        }
    }
}

/// The longest unit name (without `.service`) the step runner accepts.
pub const MAX_UNIT_NAME: usize = 200;

/// The transient unit of one step of one run on one node: `hakube-<run>-<host>-<key>`, where
/// `run` is the run's id (lowercase hex), `host` the node it runs on and `key` the step's key
/// ([`step_key`]). The node is in the name so that no two nodes ever start a unit of the same
/// name (the lab's containers share one cgroup tree, where same-named units of two nodes
/// took each other's cgroup: systemd's exit 219). A name longer than [`MAX_UNIT_NAME`] has
/// its node and key cut and 12 hex digits of their sha256 added, so it stays unique and
/// within systemd's 255 bytes (systemd.unit(5), "Valid unit names").
pub fn unit_name(run: &str, host: &str, key: &str) -> String {
    let key = format!("{host}-{key}");
    let key = key.as_str();
    let name = format!("{UNIT_PREFIX}{run}-{key}");
    if name.len() <= MAX_UNIT_NAME {
        return name;
    }
    let hash = &crate::sha256_hex(key.as_bytes())[..12];
    let keep = MAX_UNIT_NAME - UNIT_PREFIX.len() - run.len() - 2 - hash.len();
    let mut cut = keep.min(key.len());
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{UNIT_PREFIX}{run}-{}-{hash}", key[..cut].trim_end_matches(['-', '.']))
}

/// The key that makes a step "the same step" across runs, for the step runner's one copy at
/// a time: the step's name, and its node argument when it has one (`forget.master2`,
/// `upgrade-drain.worker0`); flags such as `--existing` do not change it.
pub fn step_key(step: &str, args: &[String]) -> String {
    match args.iter().find(|a| !a.starts_with('-')) {
        Some(node) => format!("{step}.{node}"),
        None => step.to_string(),
    }
}

/// What `step.sh start` printed: the unit now running the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A new unit was started.
    Started(String),
    /// A unit of an earlier run is still running the same step: nothing new started.
    Attached(String),
}

/// Whether `unit` is a name the step runner accepts: [`UNIT_PREFIX`], then lowercase ASCII
/// letters, digits, `.` and `-` (starting with a letter or digit), at most [`MAX_UNIT_NAME`]
/// bytes (templates/step.sh's `check_unit`).
pub fn is_unit_name(unit: &str) -> bool {
    unit.len() <= MAX_UNIT_NAME
        && unit.strip_prefix(UNIT_PREFIX).is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        })
}

/// Parses `step.sh start`'s one line (`started UNIT` or `attached UNIT`).
pub fn parse_start(line: &str) -> Option<Started> {
    let (word, unit) = line.trim().split_once(' ')?;
    if !is_unit_name(unit) {
        return None;
    }
    match word {
        "started" => Some(Started::Started(unit.to_string())),
        "attached" => Some(Started::Attached(unit.to_string())),
        _ => None,
    }
}

/// What `step.sh status UNIT` printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitStatus {
    /// Its process still runs.
    Running,
    /// It ended with this exit status (128 + the signal for one killed by a signal).
    Exited(i32),
    /// No such unit (never started here, cleared, or the node rebooted).
    Unknown,
}

/// Parses `step.sh status`'s one line: `running`, `exited CODE` or `unknown`.
pub fn parse_status(line: &str) -> Option<UnitStatus> {
    match line.trim() {
        "running" => Some(UnitStatus::Running),
        "unknown" => Some(UnitStatus::Unknown),
        other => other.strip_prefix("exited ")?.parse().ok().map(UnitStatus::Exited),
    }
}

/// The facts render puts into the boot scripts and the step runner, by the name the
/// templates use (`{{ facts.STATE_DIR }}`): each readonly variable of theirs is one of these.
pub fn facts() -> Vec<(&'static str, &'static str)> {
    vec![
        ("BOOT_SCRIPT", BOOT_SCRIPT),
        ("STATE_DIR", STATE_DIR),
        ("STATE_ROOT", STATE_ROOT),
        ("BOOT_LOCK", BOOT_LOCK),
        ("STEP_LOG_DIR", STEP_LOG_DIR),
        ("STEP_RUN_DIR", STEP_RUN_DIR),
        ("UNIT_PREFIX", UNIT_PREFIX),
        ("MARKER_PREFIX", MARKER_PREFIX),
        ("REMOTE_DIR", crate::layout::REMOTE_DIR),
        ("SECRETS_DIR", crate::layout::REMOTE_SECRETS_DIR),
        ("ETCD_SNAPSHOT", crate::layout::REMOTE_ETCD_SNAPSHOT),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse_as_boot_sh_prints_them() {
        assert_eq!(parse_marker(&marker_line("join", "start")), Some(Marker::Start("join".into())));
        assert_eq!(parse_marker("::hakube:: step=join status=done\n"), Some(Marker::Done("join".into())));
        assert_eq!(parse_marker("::hakube:: step=init status=skipped"), Some(Marker::Skipped("init".into())));
        assert_eq!(parse_marker("::hakube:: step=init status=failed exit=7"), Some(Marker::Failed("init".into(), 7)));
        for line in [
            "boot.sh: ::hakube:: step=init status=done",
            "::hakube:: step=init status=failed exit=300",
            "::hakube:: step=init status=failed exit=",
            "::hakube:: step=Init status=done",
            "::hakube:: step=a;b status=done",
            "::hakube::step=init status=done",
            "::hakube:: step=init status=finished",
        ] {
            assert_eq!(parse_marker(line), None, "{line}");
        }
    }

    #[test]
    fn unit_names_are_bounded_and_unique() {
        assert_eq!(unit_name("0a1b2c3d4e5f", "worker0", "join"), "hakube-0a1b2c3d4e5f-worker0-join");
        assert_eq!(step_key("forget", &["master2".into()]), "forget.master2");
        assert_eq!(step_key("init", &["--existing".into()]), "init");
        let long = format!("forget.{}", "a".repeat(250));
        let other = format!("forget.{}b", "a".repeat(249));
        let (a, b) = (unit_name("0a1b2c3d4e5f", "m0", &long), unit_name("0a1b2c3d4e5f", "m0", &other));
        let node = "a".repeat(253);
        assert!(unit_name("0a1b2c3d4e5f", &node, "join").len() <= MAX_UNIT_NAME);
        assert_ne!(unit_name("0a1b2c3d4e5f", &node, "join"), unit_name("0a1b2c3d4e5f", &node, "post"));
        assert!(a.len() <= MAX_UNIT_NAME && b.len() <= MAX_UNIT_NAME, "{a}");
        assert_ne!(a, b);
        assert_eq!(parse_start("started hakube-0a-join\n"), Some(Started::Started("hakube-0a-join".into())));
        assert_eq!(parse_start("attached hakube-0b-join"), Some(Started::Attached("hakube-0b-join".into())));
        assert_eq!(parse_start("started other"), None);
        assert_eq!(parse_start("started hakube-a;b"), None);
        assert!(is_unit_name("hakube-0a-worker0.x-join") && !is_unit_name("hakube-../x") && !is_unit_name("hakube-"));
        assert_eq!(parse_status("exited 137"), Some(UnitStatus::Exited(137)));
        assert_eq!(parse_status("running\n"), Some(UnitStatus::Running));
        assert_eq!(parse_status("exited x"), None);
        assert!(is_step_name("upgrade-node") && !is_step_name("-x") && !is_step_name("a b") && !is_step_name(""));
    }
}
