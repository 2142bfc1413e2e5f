//! The install plan: small, named phases listed in one place (after k0sctl's phases),
//! each deciding from the manifest and the targeted nodes whether and where it applies.
//!
//! The order is the one a HA control plane needs (kubeadm's tested path, see
//! docs/upstream-facts.md "HA joins"): ship files → preparation steps everywhere in
//! parallel → `init` on the first master → `join` on the other masters one at a time →
//! `join` on the workers in parallel → the network provider → the remaining steps.

use std::collections::BTreeMap;
use std::fmt;

use hakube_cluster::Role;
use hakube_render::manifest::{Manifest, NodeEntry};

/// What a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `hakube install`: bring the targeted nodes into the cluster.
    Install,
    /// `hakube install --reset`: reset the targeted nodes, then install them.
    ResetThenInstall,
    /// `hakube reset`: remove what hakube installed from the targeted nodes.
    Reset,
}

/// A built-in step the runner performs itself rather than through boot.sh.
pub const SHIP: &str = "ship";
/// Built-in: remove /etc/hakube and /var/lib/hakube from a node (last step of `hakube reset`).
pub const PURGE: &str = "purge";

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

/// Splits a node's steps around its `init`/`join` step.
fn split_steps(entry: &NodeEntry) -> (Vec<&str>, Option<&str>, Vec<&str>) {
    let steps: Vec<&str> = entry.steps.iter().map(String::as_str).collect();
    match steps.iter().position(|s| *s == "init" || *s == "join") {
        Some(i) => (steps[..i].to_vec(), Some(steps[i]), steps[i + 1..].to_vec()),
        None => (steps, None, Vec::new()),
    }
}

/// Builds the plan for `targets` (empty: every node), in the manifest's node order
/// given by `order` (the definition's order: masters first).
///
/// # Errors
///
/// [`PlanError`] for an unknown node name.
pub fn build(manifest: &Manifest, order: &[String], targets: &[String], mode: Mode) -> Result<Plan, PlanError> {
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
                title: title.into(),
                order,
                runs: runs.into_iter().filter(|r| !r.is_empty()).collect(),
            });
        }
    };

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
        let (before, middle, after) = split_steps(entry);
        prepare.push(before.iter().map(|s| run(n, s)).collect());
        match (middle, entry.role) {
            // With a master outside the targets the cluster exists: the first master joins
            // it (`boot.sh init --existing`) instead of creating one.
            (Some(s @ "init"), _) => init.push(vec![Run {
                args: helper.map(|_| vec!["--existing".to_string()]).unwrap_or_default(),
                ..run(n, s)
            }]),
            (Some(s), Role::Master) => join_masters.push(run(n, s)),
            (Some(s), Role::Worker) => join_workers.push(vec![run(n, s)]),
            (None, _) => {}
        }
        // Add-ons the first master applies once the control plane is complete
        // (cloud-provider, network) run after every join; the rest is post-install.
        let cut = after.iter().position(|s| *s == "network").map_or(0, |i| i + 1);
        network.push(after[..cut].iter().map(|s| run(n, s)).collect());
        post.push(after[cut..].iter().map(|s| run(n, s)).collect());
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

impl fmt::Display for Plan {
    /// The plan as `--dry-run` prints it: phase by phase, node by node, step by step.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, phase) in self.phases.iter().enumerate() {
            let how = match phase.order {
                Order::Parallel => "parallel",
                Order::Sequential => "one at a time",
            };
            writeln!(f, "{}. {} [{how}]", i + 1, phase.title)?;
            for runs in &phase.runs {
                for r in runs {
                    let args = if r.args.is_empty() { String::new() } else { format!(" {}", r.args.join(" ")) };
                    let on = if r.host == r.node { String::new() } else { format!(" (on {})", r.host) };
                    let what = match r.step.as_str() {
                        SHIP => "ship files".to_string(),
                        PURGE => "remove /etc/hakube and /var/lib/hakube".to_string(),
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
            nodes.insert(name.to_string(), NodeEntry { role, first_master: first, steps, upgrade_steps: Vec::new() });
            order.push(name.to_string());
        }
        (Manifest { format: 1, cluster_name: "t".into(), kubernetes_version: String::new(), upgrade_from: None, nodes, files: BTreeMap::new(), recipients: Vec::new() }, order)
    }

    fn kinds(plan: &Plan) -> Vec<PhaseKind> {
        plan.phases.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn a_full_install_runs_in_ha_order() {
        let (m, order) = manifest();
        let plan = build(&m, &order, &[], Mode::Install).unwrap();
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
        let (m, order) = manifest();
        let plan = build(&m, &order, &["w1".into()], Mode::Install).unwrap();
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
        let (m, order) = manifest();
        let plan = build(&m, &order, &["m2".into()], Mode::Reset).unwrap();
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
        let (m, order) = manifest();
        let plan = build(&m, &order, &["m0".into()], Mode::ResetThenInstall).unwrap();
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
        let all = build(&m, &order, &[], Mode::ResetThenInstall).unwrap();
        let init = all.phases.iter().find(|p| p.kind == Init).unwrap();
        assert_eq!(init.runs, vec![vec![run("m0", "init")]]);
    }

    #[test]
    fn unknown_nodes_are_named() {
        let (m, order) = manifest();
        let err = build(&m, &order, &["w9".into()], Mode::Install).unwrap_err();
        assert_eq!(
            err.to_string(),
            "there is no node named \"w9\" in the cluster definition (nodes: m0, m1, m2, w0, w1)"
        );
    }
}
