//! The install plan: small, named phases listed in one place (after k0sctl's phases),
//! each deciding from the manifest and the targeted nodes whether and where it applies.
//!
//! The order is the one a HA control plane needs (kubeadm's tested path, see
//! docs/upstream-facts.md "HA joins"): ship files → preparation steps everywhere in
//! parallel → `init` on the first master → `join` on the other masters one at a time →
//! `join` on the workers in parallel → the network provider → the remaining steps.

use std::collections::BTreeMap;
use std::fmt;

use hakube_assets::manifest::{Manifest, NodeEntry};
use hakube_assets::steps::InstallPhase;
use hakube_cluster::Role;

/// What a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `hakube install`: bring the targeted nodes into the cluster.
    Install,
    /// `hakube install --reset`: reset the targeted nodes, then install them.
    ResetThenInstall,
    /// `hakube reset`: remove what hakube installed from the targeted nodes.
    Reset,
    /// `hakube upgrade`: the boot scripts' upgrade steps, in kubeadm's order ([`build_upgrade`]).
    Upgrade,
}

/// A built-in step the runner performs itself rather than through boot.sh.
pub const SHIP: &str = "ship";
/// Built-in: remove /etc/hakube, /var/lib/hakube and the step runner's logs from a node (last
/// step of `hakube reset`).
pub const PURGE: &str = "purge";
/// Built-in: read the Kubernetes versions a node runs (its kubelet, its API server) and
/// refuse to go on when they are not the manifest's; args: the manifest's version and
/// [`VERSIONS_INSTALL`] or [`VERSIONS_RESET`]. Changes nothing on the node.
pub const VERSIONS: &str = "versions";
/// [`VERSIONS`] for an install: a node in a cluster must run the manifest's version.
pub const VERSIONS_INSTALL: &str = "install";
/// [`VERSIONS`] before a reset and reinstall: only the API server's version must match (the
/// node's own kubelet is reset).
pub const VERSIONS_RESET: &str = "reset";
/// Built-in: copy the first master's etcd snapshot ([`hakube_assets::layout::REMOTE_ETCD_SNAPSHOT`])
/// to the operator's machine, encrypted when the assets have recipients.
pub const FETCH_SNAPSHOT: &str = "fetch-snapshot";

/// One step to run: on `host`, on behalf of `node` (they differ for `forget`, which a
/// remaining master runs for a master that is leaving).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The node whose outcome this is.
    pub node: String,
    /// The node the command runs on.
    pub host: String,
    /// A boot.sh step name, or [`SHIP`] / [`PURGE`].
    pub step: String,
    /// Extra arguments to boot.sh after the step name (node names only, never secrets).
    pub args: Vec<String>,
}

/// How a phase runs its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// All at once, bounded by the install's concurrency; a failure affects only its node.
    Parallel,
    /// One after another; a failure stops the rest of the phase.
    Sequential,
}

/// Why a phase exists; the runner decides from it what a failure stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// Ship files and check them against the manifest.
    Ship,
    /// Masters leave etcd and the node list through a remaining master.
    Forget,
    /// `boot.sh reset` (and, for `hakube reset`, purge hakube's files).
    Reset,
    /// Steps before init/join.
    Prepare,
    /// Make sure the rendered bootstrap token exists (joins into an existing cluster).
    Token,
    /// `kubeadm init` on the first master: everything after depends on it.
    Init,
    /// Control-plane joins, one at a time.
    JoinMasters,
    /// Worker joins, in parallel.
    JoinWorkers,
    /// The network provider, on the first master.
    Network,
    /// Steps after init/join.
    Post,
    /// The versions every involved node runs, read before anything is shipped: a failure
    /// stops the whole run.
    Versions,
    /// A phase of `hakube upgrade`: a failure stops the upgrade there (later phases are
    /// skipped), leaving the cluster within the version skew policy.
    Upgrade,
}

/// What a failure in a phase stops, decided by the plan beside the phase (the runner only
/// carries it out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Only the node that failed (ship, reset, preparation, workers' joins, add-ons, post).
    Node,
    /// Every later phase that needs the control plane (joins, add-ons, post) is skipped:
    /// `kubeadm init` and the bootstrap token check.
    ControlPlane,
    /// The rest of this phase (and its nodes' later steps) is skipped: the masters joining
    /// one at a time, masters leaving etcd.
    RestOfPhase,
    /// Everything after it is skipped: an upgrade phase (the cluster stays within the
    /// version skew policy where it stopped).
    Everything,
    /// A node whose versions refuse the run stops everything before anything changed; a
    /// node that cannot be reached fails alone ([`VERSIONS`]).
    RefusalStopsEverything,
}

impl PhaseKind {
    /// The failure policy of a phase of this kind.
    pub fn on_failure(self) -> OnFailure {
        match self {
            PhaseKind::Init | PhaseKind::Token => OnFailure::ControlPlane,
            PhaseKind::JoinMasters | PhaseKind::Forget => OnFailure::RestOfPhase,
            PhaseKind::Upgrade => OnFailure::Everything,
            PhaseKind::Versions => OnFailure::RefusalStopsEverything,
            PhaseKind::Ship
            | PhaseKind::Reset
            | PhaseKind::Prepare
            | PhaseKind::JoinWorkers
            | PhaseKind::Network
            | PhaseKind::Post => OnFailure::Node,
        }
    }

    /// Whether the phase needs a running control plane (skipped after an
    /// [`OnFailure::ControlPlane`] failure).
    pub fn needs_control_plane(self) -> bool {
        matches!(self, PhaseKind::JoinMasters | PhaseKind::JoinWorkers | PhaseKind::Network | PhaseKind::Post)
    }
}

/// One phase of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    /// What it is for.
    pub kind: PhaseKind,
    /// A title for people.
    pub title: String,
    /// Parallel or one at a time.
    pub order: Order,
    /// What a failure in it stops ([`PhaseKind::on_failure`]).
    pub on_failure: OnFailure,
    /// The steps, one group per node: a group's runs go in order, on behalf of one node.
    pub runs: Vec<Vec<Run>>,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The phases, in order; phases with nothing to do are left out.
    pub phases: Vec<Phase>,
    /// The targeted nodes, masters first, in definition order.
    pub targets: Vec<String>,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `hakube upgrade` with assets that carry no upgrade.
    #[error("the assets carry no upgrade (manifest.json names no upgradeFrom): set kubernetesVersion in the definition to the next release, run `hakube render`, review the upgrade steps, then `hakube upgrade`")]
    NoUpgrade,
    /// A NODE argument names no node of the cluster.
    #[error("there is no node named {name:?} in the cluster definition (nodes: {known})")]
    UnknownNode {
        /// The name given.
        name: String,
        /// The names that exist.
        known: String,
    },
}

fn run(node: &str, step: &str) -> Run {
    Run { node: node.into(), host: node.into(), step: step.into(), args: Vec::new() }
}

/// Builds the plan for `targets` (empty: every node), in the manifest's node order (the
/// definition's: masters first), each node's steps placed by the phase the manifest records
/// for them (`phases`): install reads the assets only.
///
/// # Errors
///
/// [`PlanError`] for an unknown node name.
pub fn build(manifest: &Manifest, targets: &[String], mode: Mode) -> Result<Plan, PlanError> {
    let order = &manifest.node_order;
    let nodes: &BTreeMap<String, NodeEntry> = &manifest.nodes;
    for t in targets {
        if !nodes.contains_key(t) {
            return Err(PlanError::UnknownNode { name: t.clone(), known: order.join(", ") });
        }
    }
    let targeted: Vec<String> = order.iter().filter(|n| targets.is_empty() || targets.contains(n)).cloned().collect();
    let is_target = |n: &str| targeted.iter().any(|t| t == n);
    let masters: Vec<&String> = order.iter().filter(|n| nodes[*n].role == Role::Master).collect();
    let first = masters.iter().find(|n| nodes[**n].first_master).map(|n| n.as_str());
    // A master outside the targets, through which leaving masters are removed and tokens checked.
    let helper = masters.iter().map(|n| n.as_str()).find(|n| !is_target(n));

    let mut phases = Vec::new();
    let mut push = |kind, title: &str, order, runs: Vec<Vec<Run>>| {
        if runs.iter().any(|r| !r.is_empty()) {
            phases.push(Phase {
                kind,
                on_failure: PhaseKind::on_failure(kind),
                title: title.into(),
                order,
                runs: runs.into_iter().filter(|r| !r.is_empty()).collect(),
            });
        }
    };

    if mode == Mode::Upgrade {
        return build_upgrade(manifest, targets);
    }
    // Before anything is shipped: the versions the targeted nodes run, and the API server's
    // on the first master (a node that joins must not be newer than it).
    // Resetting every master first makes a new cluster: then no running version binds it.
    let whole_control_plane_reset = mode == Mode::ResetThenInstall && masters.iter().all(|m| is_target(m));
    if matches!(mode, Mode::Install | Mode::ResetThenInstall)
        && !manifest.kubernetes_version.is_empty()
        && !whole_control_plane_reset
    {
        let check = if mode == Mode::Install { VERSIONS_INSTALL } else { VERSIONS_RESET };
        let mut probed: Vec<&str> = targeted.iter().map(String::as_str).collect();
        if let Some(first) = first.filter(|f| !is_target(f)) {
            probed.insert(0, first);
        }
        push(
            PhaseKind::Versions,
            "read the Kubernetes versions the nodes run (nothing changes if they differ)",
            Order::Parallel,
            probed
                .iter()
                .map(|n| {
                    vec![Run { args: vec![manifest.kubernetes_version.clone(), check.to_string()], ..run(n, VERSIONS) }]
                })
                .collect(),
        );
    }
    push(
        PhaseKind::Ship,
        "ship files and check them against the manifest",
        Order::Parallel,
        targeted.iter().map(|n| vec![run(n, SHIP)]).collect(),
    );

    if matches!(mode, Mode::Reset | Mode::ResetThenInstall) {
        if let Some(helper) = helper {
            let leaving: Vec<Run> = targeted
                .iter()
                .filter(|n| nodes[*n].role == Role::Master)
                .map(|n| Run { node: n.clone(), host: helper.into(), step: "forget".into(), args: vec![n.clone()] })
                .collect();
            let leaving = leaving.into_iter().map(|r| vec![r]).collect();
            push(
                PhaseKind::Forget,
                &format!("remove leaving masters from etcd through {helper}"),
                Order::Sequential,
                leaving,
            );
        }
        let resets = targeted
            .iter()
            .map(|n| {
                let mut r = vec![run(n, "reset")];
                if mode == Mode::Reset {
                    r.push(run(n, PURGE));
                }
                r
            })
            .collect();
        push(PhaseKind::Reset, "reset targeted nodes", Order::Parallel, resets);
        if mode == Mode::Reset {
            return Ok(Plan { phases, targets: targeted });
        }
    }

    let mut prepare = Vec::new();
    let mut init = Vec::new();
    let mut join_masters = Vec::new();
    let mut join_workers = Vec::new();
    let mut network = Vec::new();
    let mut post = Vec::new();
    for n in &targeted {
        let entry = &nodes[n];
        let steps = |phase| manifest.steps_in(n, phase).into_iter().map(|s| run(n, s)).collect::<Vec<Run>>();
        prepare.push(steps(InstallPhase::Prepare));
        // With a master outside the targets the cluster exists: the first master joins it
        // (`boot.sh init --existing`) instead of creating one.
        for r in steps(InstallPhase::Init) {
            init.push(vec![Run { args: helper.map(|_| vec!["--existing".to_string()]).unwrap_or_default(), ..r }]);
        }
        for r in steps(InstallPhase::Join) {
            match entry.role {
                Role::Master => join_masters.push(r),
                Role::Worker => join_workers.push(vec![r]),
            }
        }
        // Add-ons the first master applies once the control plane is complete run after
        // every join; the rest is post-install.
        network.push(steps(InstallPhase::AddOns));
        post.push(steps(InstallPhase::Post));
    }
    push(PhaseKind::Prepare, "prepare nodes", Order::Parallel, prepare);
    // Every run that joins a node first makes sure the rendered bootstrap token exists and is
    // not about to expire (it may have, long after init). The first master's init step joins
    // too when the cluster already exists: before it, the token is re-armed on another master
    // (one outside the targets, else the next master, where `boot.sh token` does nothing
    // while no cluster runs there yet); after a fresh init, on the first master.
    let joins = !join_masters.is_empty() || !join_workers.is_empty();
    let token =
        |host: &str| vec![vec![Run { node: host.into(), host: host.into(), step: "token".into(), args: Vec::new() }]];
    let other_master = helper.or_else(|| masters.iter().map(|n| n.as_str()).find(|n| Some(*n) != first));
    match (init.is_empty(), other_master) {
        (false, Some(host)) => push(
            PhaseKind::Token,
            &format!("make sure the bootstrap token exists where a cluster runs, on {host}"),
            Order::Sequential,
            token(host),
        ),
        (true, _) if joins => {
            let host = helper.or(first).unwrap_or_default();
            push(
                PhaseKind::Token,
                &format!("make sure the bootstrap token exists, on {host}"),
                Order::Sequential,
                token(host),
            );
        }
        _ => {}
    }
    push(PhaseKind::Init, "kubeadm init on the first master", Order::Sequential, init.clone());
    if !init.is_empty() && joins && helper.is_none() {
        let host = first.unwrap_or_default();
        push(
            PhaseKind::Token,
            &format!("make sure the bootstrap token exists, on {host}"),
            Order::Sequential,
            token(host),
        );
    }
    // One group per master: the runner starts the next only when the previous finished.
    push(
        PhaseKind::JoinMasters,
        "join masters one at a time",
        Order::Sequential,
        join_masters.into_iter().map(|r| vec![r]).collect(),
    );
    push(PhaseKind::JoinWorkers, "join workers", Order::Parallel, join_workers);
    push(
        PhaseKind::Network,
        "cluster add-ons on the first master (cloud provider, network)",
        Order::Sequential,
        network,
    );
    push(PhaseKind::Post, "post-install steps", Order::Parallel, post);
    Ok(Plan { phases, targets: targeted })
}

/// The plan of `hakube upgrade` for `targets` (empty: every node) from a manifest that
/// carries an upgrade, in kubeadm's order (kubernetes.io "Upgrading kubeadm clusters"):
///
/// 1. ship the files (the boot scripts with their upgrade steps) to the targeted nodes and
///    the first master;
/// 2. on the first master: `upgrade-preflight` (with `--control-plane-upgraded` when the
///    first master is not targeted, so only nodes of an upgraded control plane are
///    upgraded), `upgrade-snapshot` and [`FETCH_SNAPSHOT`];
/// 3. the first master's `upgrade-apply`, when targeted;
/// 4. the other targeted masters' `upgrade-node`, one at a time;
/// 5. the targeted workers in batches of `batch` (the manifest's `install.upgradeBatch`, `hakube_assets::manifest::upgrade_batch`), one phase per batch so
///    that never more than `batch` are cordoned at once: `upgrade-drain W` on the first
///    master, `upgrade-node` on W, `upgrade-uncordon W` on the first master;
/// 6. `upgrade-network` on the first master when its boot script has it and it is targeted;
/// 7. `upgrade-check` on the first master.
///
/// Every phase is [`PhaseKind::Upgrade`]: a failure stops the upgrade there.
///
/// # Errors
///
/// [`PlanError::UnknownNode`], [`PlanError::NoUpgrade`] when the manifest carries no
/// upgrade.
pub fn build_upgrade(manifest: &Manifest, targets: &[String]) -> Result<Plan, PlanError> {
    let (order, batch) = (&manifest.node_order, manifest.install.upgrade_batch.max(1) as usize);
    let nodes = &manifest.nodes;
    for t in targets {
        if !nodes.contains_key(t) {
            return Err(PlanError::UnknownNode { name: t.clone(), known: order.join(", ") });
        }
    }
    let Some(first) = order.iter().find(|n| nodes[*n].first_master).cloned() else { return Err(PlanError::NoUpgrade) };
    let has = |n: &str, step: &str| nodes[n].upgrade_steps.iter().any(|s| s == step);
    if manifest.upgrade_from.is_none() || !has(&first, "upgrade-preflight") {
        return Err(PlanError::NoUpgrade);
    }
    let targeted: Vec<String> = order.iter().filter(|n| targets.is_empty() || targets.contains(n)).cloned().collect();
    let first_targeted = targeted.contains(&first);
    let on_first = |node: &str, step: &str, args: Vec<String>| Run {
        node: node.into(),
        host: first.clone(),
        step: step.into(),
        args,
    };
    let mut shipped = targeted.clone();
    if !first_targeted {
        shipped.insert(0, first.clone());
    }
    let mut phases = vec![Phase {
        kind: PhaseKind::Ship,
        on_failure: OnFailure::Node,
        title: "ship files (the boot scripts with their upgrade steps)".into(),
        order: Order::Parallel,
        runs: shipped.iter().map(|n| vec![run(n, SHIP)]).collect(),
    }];
    let mut push = |title: String, order: Order, runs: Vec<Vec<Run>>| {
        if !runs.is_empty() {
            phases.push(Phase { kind: PhaseKind::Upgrade, on_failure: OnFailure::Everything, title, order, runs });
        }
    };
    let preflight_args = if first_targeted { Vec::new() } else { vec!["--control-plane-upgraded".to_string()] };
    push(
        format!("check the cluster and take an etcd snapshot, on {first}"),
        Order::Sequential,
        vec![vec![
            on_first(&first, "upgrade-preflight", preflight_args),
            on_first(&first, "upgrade-snapshot", Vec::new()),
            on_first(&first, FETCH_SNAPSHOT, Vec::new()),
        ]],
    );
    if first_targeted {
        push(
            format!("upgrade the control plane on the first master {first} (kubeadm upgrade apply)"),
            Order::Sequential,
            vec![vec![run(&first, "upgrade-apply")]],
        );
    }
    let masters: Vec<Vec<Run>> = targeted
        .iter()
        .filter(|n| **n != first && nodes[*n].role == Role::Master && has(n, "upgrade-node"))
        .map(|n| vec![run(n, "upgrade-node")])
        .collect();
    push("upgrade the other masters one at a time (kubeadm upgrade node)".into(), Order::Sequential, masters);
    let workers: Vec<&String> =
        targeted.iter().filter(|n| nodes[*n].role == Role::Worker && has(n, "upgrade-node")).collect();
    let batches = workers.chunks(batch.max(1)).count();
    for (i, chunk) in workers.chunks(batch.max(1)).enumerate() {
        push(
            format!("upgrade workers, batch {} of {batches} (drain, kubeadm upgrade node, uncordon)", i + 1),
            Order::Parallel,
            chunk
                .iter()
                .map(|w| {
                    vec![
                        on_first(w, "upgrade-drain", vec![(*w).clone()]),
                        run(w, "upgrade-node"),
                        on_first(w, "upgrade-uncordon", vec![(*w).clone()]),
                    ]
                })
                .collect(),
        );
    }
    if first_targeted && has(&first, "upgrade-network") {
        push("upgrade the network add-on".into(), Order::Sequential, vec![vec![run(&first, "upgrade-network")]]);
    }
    push(
        "check that every node is Ready at the new version".into(),
        Order::Sequential,
        vec![vec![on_first(&first, "upgrade-check", Vec::new())]],
    );
    Ok(Plan { phases, targets: targeted })
}

impl fmt::Display for Plan {
    /// The plan as `--dry-run` prints it: phase by phase, node by node, step by step.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, phase) in self.phases.iter().enumerate() {
            let how = match phase.order {
                Order::Parallel => "parallel",
                Order::Sequential => "one at a time",
            };
            let failure = match phase.on_failure {
                OnFailure::Node => "a failure stops its node",
                OnFailure::ControlPlane => "a failure stops what needs the control plane",
                OnFailure::RestOfPhase => "a failure stops the rest of the phase",
                OnFailure::Everything => "a failure stops everything after it",
                OnFailure::RefusalStopsEverything => "a refusal stops everything",
            };
            writeln!(f, "{}. {} [{how}; {failure}]", i + 1, phase.title)?;
            for runs in &phase.runs {
                for r in runs {
                    let args = if r.args.is_empty() { String::new() } else { format!(" {}", r.args.join(" ")) };
                    let on = if r.host == r.node { String::new() } else { format!(" (on {})", r.host) };
                    let what = match r.step.as_str() {
                        SHIP => "ship files".to_string(),
                        PURGE => "remove /etc/hakube, /var/lib/hakube and the step logs".to_string(),
                        VERSIONS => "read the Kubernetes versions it runs".to_string(),
                        FETCH_SNAPSHOT => "copy the etcd snapshot to this machine".to_string(),
                        s => format!("boot.sh {s}{args}"),
                    };
                    writeln!(f, "   {:<24} {what}{on}", r.node)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> (Manifest, Vec<String>) {
        let mut nodes = BTreeMap::new();
        let mut order = Vec::new();
        for (name, role, first) in [
            ("m0", Role::Master, true),
            ("m1", Role::Master, false),
            ("m2", Role::Master, false),
            ("w0", Role::Worker, false),
            ("w1", Role::Worker, false),
        ] {
            let mut steps: Vec<String> = ["prepare", "runtime", "packages", "pki"].map(String::from).to_vec();
            steps.push(if first { "init".into() } else { "join".into() });
            if first {
                steps.push("network".into());
            }
            steps.push("post".into());
            let ssh = Default::default();
            nodes.insert(
                name.to_string(),
                NodeEntry { role, first_master: first, steps, upgrade_steps: Vec::new(), ssh },
            );
            order.push(name.to_string());
        }
        (
            Manifest {
                format: hakube_assets::manifest::FORMAT_VERSION,
                cluster_name: "t".into(),
                kubernetes_version: String::new(),
                upgrade_from: None,
                nodes,
                files: BTreeMap::new(),
                recipients: Vec::new(),
                definition_sha256: String::new(),
                node_order: order.clone(),
                install: hakube_assets::manifest::InstallEntry {
                    concurrency: 10,
                    upgrade_batch: 1,
                    ..Default::default()
                },
                phases: [
                    (InstallPhase::Prepare, &["prepare", "runtime", "packages", "pki"][..]),
                    (InstallPhase::Init, &["init"]),
                    (InstallPhase::Join, &["join"]),
                    (InstallPhase::AddOns, &["network"]),
                    (InstallPhase::Post, &["post"]),
                ]
                .iter()
                .map(|(phase, steps)| hakube_assets::manifest::PhaseEntry {
                    phase: *phase,
                    steps: steps.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            },
            order,
        )
    }

    fn kinds(plan: &Plan) -> Vec<PhaseKind> {
        plan.phases.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn a_full_install_runs_in_ha_order() {
        let (m, _) = manifest();
        let plan = build(&m, &[], Mode::Install).unwrap();
        use PhaseKind::*;
        // The token is re-armed before init where a cluster may already run (m1: a fresh
        // one has none, and `boot.sh token` does nothing there), and after init on m0,
        // before anything joins: it may have expired since the cluster was made.
        assert_eq!(kinds(&plan), vec![Ship, Prepare, Token, Init, Token, JoinMasters, JoinWorkers, Network, Post]);
        assert_eq!(plan.phases[2].runs, vec![vec![run("m1", "token")]]);
        assert_eq!(plan.phases[3].runs, vec![vec![run("m0", "init")]], "a full install lets init decide");
        assert_eq!(plan.phases[4].runs, vec![vec![run("m0", "token")]]);
        let joins = &plan.phases[5];
        assert_eq!(joins.order, Order::Sequential);
        assert_eq!(joins.runs, vec![vec![run("m1", "join")], vec![run("m2", "join")]]);
        assert_eq!(
            plan.phases[1].runs[0].iter().map(|r| r.step.as_str()).collect::<Vec<_>>(),
            ["prepare", "runtime", "packages", "pki"]
        );
    }

    #[test]
    fn one_worker_joins_after_the_token_is_checked_on_a_master() {
        let (m, _) = manifest();
        let plan = build(&m, &["w1".into()], Mode::Install).unwrap();
        use PhaseKind::*;
        assert_eq!(kinds(&plan), vec![Ship, Prepare, Token, JoinWorkers, Post]);
        assert_eq!(plan.phases[2].runs, vec![vec![run("m0", "token")]]);
        assert!(plan
            .phases
            .iter()
            .flat_map(|p| p.runs.iter().flatten())
            .filter(|r| r.step != "token")
            .all(|r| r.node == "w1"));
    }

    #[test]
    fn resetting_a_master_forgets_it_through_another_master_first() {
        let (m, _) = manifest();
        let plan = build(&m, &["m2".into()], Mode::Reset).unwrap();
        use PhaseKind::*;
        assert_eq!(kinds(&plan), vec![Ship, Forget, Reset]);
        assert_eq!(
            plan.phases[1].runs[0][0],
            Run { node: "m2".into(), host: "m0".into(), step: "forget".into(), args: vec!["m2".into()] }
        );
        assert_eq!(plan.phases[2].runs[0], vec![run("m2", "reset"), run("m2", PURGE)]);
    }

    #[test]
    fn the_first_master_reset_alone_rejoins_through_a_running_master() {
        let (m, _) = manifest();
        let plan = build(&m, &["m0".into()], Mode::ResetThenInstall).unwrap();
        use PhaseKind::*;
        assert_eq!(kinds(&plan), vec![Ship, Forget, Reset, Prepare, Token, Init, Network, Post]);
        // Its etcd member leaves through m1, the token is re-armed there, and its init step
        // joins the running cluster instead of creating one.
        assert_eq!(
            plan.phases[1].runs[0][0],
            Run { node: "m0".into(), host: "m1".into(), step: "forget".into(), args: vec!["m0".into()] }
        );
        assert_eq!(plan.phases[4].runs, vec![vec![run("m1", "token")]]);
        assert_eq!(plan.phases[5].runs, vec![vec![Run { args: vec!["--existing".into()], ..run("m0", "init") }]]);
        // Resetting everything and installing again creates the cluster anew.
        let all = build(&m, &[], Mode::ResetThenInstall).unwrap();
        let init = all.phases.iter().find(|p| p.kind == Init).unwrap();
        assert_eq!(init.runs, vec![vec![run("m0", "init")]]);
    }

    /// Issue 13: an install reads the versions the nodes run before it ships anything; with
    /// the first master outside the targets, there too (its API server's version).
    #[test]
    fn an_install_reads_the_versions_before_anything_is_shipped() {
        let (mut m, _) = manifest();
        m.kubernetes_version = "1.36.4".into();
        let plan = build(&m, &[], Mode::Install).unwrap();
        assert_eq!(plan.phases[0].kind, PhaseKind::Versions);
        assert_eq!(plan.phases[1].kind, PhaseKind::Ship);
        assert_eq!(plan.phases[0].runs.len(), 5);
        assert_eq!(plan.phases[0].runs[0][0].args, ["1.36.4", VERSIONS_INSTALL]);
        let plan = build(&m, &["w1".into()], Mode::ResetThenInstall).unwrap();
        let probed: Vec<&str> = plan.phases[0].runs.iter().map(|r| r[0].host.as_str()).collect();
        assert_eq!(probed, ["m0", "w1"]);
        assert_eq!(plan.phases[0].runs[1][0].args[1], VERSIONS_RESET);
        assert!(build(&m, &[], Mode::Reset).unwrap().phases.iter().all(|p| p.kind != PhaseKind::Versions));
        let whole = build(&m, &[], Mode::ResetThenInstall).unwrap();
        assert!(whole.phases.iter().all(|p| p.kind != PhaseKind::Versions), "every master reset: a new cluster");
    }

    fn upgrade_manifest() -> (Manifest, Vec<String>) {
        let (mut m, _) = manifest();
        m.kubernetes_version = "1.36.4".into();
        m.upgrade_from = Some("1.35.4".into());
        for (name, entry) in m.nodes.iter_mut() {
            entry.upgrade_steps = if name == "m0" {
                [
                    "upgrade-preflight",
                    "upgrade-snapshot",
                    "upgrade-apply",
                    "upgrade-drain",
                    "upgrade-uncordon",
                    "upgrade-check",
                ]
                .map(String::from)
                .to_vec()
            } else {
                vec!["upgrade-node".into()]
            };
        }
        (m, Vec::new())
    }

    #[test]
    fn an_upgrade_goes_control_plane_first_then_workers_in_batches() {
        let (m, _) = upgrade_manifest();
        let plan = build_upgrade(
            &{
                let mut m = m.clone();
                m.install.upgrade_batch = 1;
                m
            },
            &[],
        )
        .unwrap();
        let steps: Vec<Vec<(String, String)>> = plan
            .phases
            .iter()
            .map(|p| p.runs.iter().flatten().map(|r| (r.host.clone(), r.step.clone())).collect())
            .collect();
        let pair = |h: &str, s: &str| (h.to_string(), s.to_string());
        assert_eq!(
            steps[1],
            [pair("m0", "upgrade-preflight"), pair("m0", "upgrade-snapshot"), pair("m0", FETCH_SNAPSHOT)]
        );
        assert_eq!(steps[2], [pair("m0", "upgrade-apply")], "apply before any upgrade-node");
        assert_eq!(steps[3], [pair("m1", "upgrade-node"), pair("m2", "upgrade-node")]);
        assert_eq!(plan.phases[3].order, Order::Sequential, "masters one at a time");
        assert_eq!(steps[4], [pair("m0", "upgrade-drain"), pair("w0", "upgrade-node"), pair("m0", "upgrade-uncordon")]);
        assert_eq!(steps[5], [pair("m0", "upgrade-drain"), pair("w1", "upgrade-node"), pair("m0", "upgrade-uncordon")]);
        assert_eq!(steps[6], [pair("m0", "upgrade-check")]);
        assert!(plan.phases[1..].iter().all(|p| p.kind == PhaseKind::Upgrade));
        assert_eq!(plan.phases[4].runs[0][0].args, ["w0"]);
        // A batch of two: both workers in one phase.
        let plan = build_upgrade(
            &{
                let mut m = m.clone();
                m.install.upgrade_batch = 2;
                m
            },
            &[],
        )
        .unwrap();
        assert_eq!(plan.phases.len(), 6);
        assert_eq!(plan.phases[4].runs.len(), 2);
        // One worker: the control plane must already be upgraded; nothing else is touched.
        let plan = build_upgrade(
            &{
                let mut m = m.clone();
                m.install.upgrade_batch = 1;
                m
            },
            &["w1".into()],
        )
        .unwrap();
        assert_eq!(plan.phases[0].runs.iter().map(|r| r[0].node.as_str()).collect::<Vec<_>>(), ["m0", "w1"]);
        assert_eq!(plan.phases[1].runs[0][0].args, ["--control-plane-upgraded"]);
        assert!(plan.phases.iter().flat_map(|p| p.runs.iter().flatten()).all(|r| r.step != "upgrade-apply"));
        let (plain, _) = manifest();
        assert_eq!(
            build_upgrade(
                &{
                    let mut m = plain.clone();
                    m.install.upgrade_batch = 1;
                    m
                },
                &[]
            ),
            Err(PlanError::NoUpgrade)
        );
    }

    #[test]
    fn unknown_nodes_are_named() {
        let (m, _) = manifest();
        let err = build(&m, &["w9".into()], Mode::Install).unwrap_err();
        assert_eq!(
            err.to_string(),
            "there is no node named \"w9\" in the cluster definition (nodes: m0, m1, m2, w0, w1)"
        );
    }
}
