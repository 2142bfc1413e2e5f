//! Faults a real site has, injected into the stand-ins: a kubeadm subcommand or phase made
//! to fail, hang or take longer, a kubectl drain refused by a PodDisruptionBudget, a stacked
//! etcd member that does not answer its health check. Each node's faults are lines of
//! `/etc/hakube-lab/faults`, which the kubeadm stand-in reads before every phase and the
//! kubectl stand-in before each drain and etcd health check (crates/lab/standins/).

use std::fmt;

use crate::LabError;

/// Where a node's faults are kept, on the node.
pub const FAULTS_FILE: &str = "/etc/hakube-lab/faults";

/// What a fault does when its phase comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// The phase fails with this exit code (1 to 255), as kubeadm does: `error execution
    /// phase PHASE: ...`.
    Fail(u8),
    /// The phase never ends.
    Hang,
    /// The phase starts after this many seconds.
    Delay(u32),
}

/// The kubectl faults: (subcommand, what it does).
pub const KUBECTL_FAULTS: [(&str, &str); 2] = [
    ("drain", "kubectl.drain[@NODE] fail [CODE]: a PodDisruptionBudget refuses the eviction of default/web-0 until drain's --timeout (of NODE, or of any node); the drain exits CODE, the node stays cordoned"),
    ("etcd-health", "kubectl.etcd-health[@NODE] fail: `etcdctl endpoint health` in an etcd pod reports NODE's member (without @NODE: the last member) unhealthy, exit 1"),
];

/// One fault: `kubeadm[.SUBCOMMAND][@PHASE] fail [CODE] | hang | delay SECONDS`, e.g.
/// `kubeadm.init@wait-control-plane fail 1`, `kubeadm.join hang` or `kubeadm.config@images-pull
/// delay 10` (before the first image of `kubeadm config images pull`); or one of
/// [`KUBECTL_FAULTS`], `kubectl.drain[@NODE] …` and `kubectl.etcd-health[@NODE] …`, where the
/// place after `@` is a node's name (the node drained, the etcd member that fails), e.g.
/// `kubectl.drain@worker0 fail`. A fault acts on the node whose faults file holds it, that is
/// where the stand-in runs (for kubectl: the node running `kubectl drain` or `kubectl exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `kubeadm` or `kubectl`.
    pub program: String,
    /// kubeadm: `init`, `join`, `reset`, `token`, … (`None`: every subcommand); kubectl:
    /// `drain` or `etcd-health` (required).
    pub subcommand: Option<String>,
    /// kubeadm: a phase of kubeadm's (`preflight`, `kubelet-start`, `wait-control-plane`, …;
    /// `None`: the subcommand as a whole, before its first phase); kubectl: a node's name
    /// (`None`: any node for drain, the last etcd member for etcd-health).
    pub phase: Option<String>,
    /// What happens.
    pub action: FaultAction,
}

impl Fault {
    /// `kubectl.drain[@NODE] fail`: a PodDisruptionBudget refuses the drain of `node` (`None`:
    /// of any node) run on the node given this fault.
    pub fn drain_refused(node: Option<&str>) -> Fault {
        Fault {
            program: "kubectl".into(),
            subcommand: Some("drain".into()),
            phase: node.map(str::to_string),
            action: FaultAction::Fail(1),
        }
    }

    /// `kubectl.etcd-health[@NODE] fail`: `etcdctl endpoint health`, run through `kubectl exec`
    /// on the node given this fault, reports the etcd member of `member` (`None`: the last
    /// member) unhealthy.
    pub fn etcd_member_unhealthy(member: Option<&str>) -> Fault {
        Fault {
            program: "kubectl".into(),
            subcommand: Some("etcd-health".into()),
            phase: member.map(str::to_string),
            action: FaultAction::Fail(1),
        }
    }

    /// Parses a fault from its text form (see [`Fault`]).
    ///
    /// Errors: [`LabError::Config`] naming what is wrong: a program other than kubeadm or
    /// kubectl, a kubectl fault other than [`KUBECTL_FAULTS`], names outside `[a-z0-9-]`, an unknown action, a code outside 1..=255, a missing or
    /// non-numeric number of seconds.
    pub fn parse(text: &str) -> Result<Fault, LabError> {
        let bad = |why: &str| Err(LabError::Config(format!("fault {text:?}: {why}")));
        let words: Vec<&str> = text.split_whitespace().collect();
        let Some((target, action)) = words.split_first() else { return bad("empty") };
        let (target, phase) = match target.split_once('@') {
            Some((t, p)) => (t, Some(p)),
            None => (*target, None),
        };
        let (program, subcommand) = match target.split_once('.') {
            Some((p, s)) => (p, Some(s)),
            None => (target, None),
        };
        match program {
            "kubeadm" => {}
            "kubectl" => {
                if !KUBECTL_FAULTS.iter().any(|(s, _)| Some(*s) == subcommand) {
                    return bad("kubectl's faults are kubectl.drain[@NODE] and kubectl.etcd-health[@NODE]");
                }
            }
            _ => return bad("only kubeadm (kubeadm[.SUBCOMMAND][@PHASE]) and kubectl take faults"),
        }
        let name_ok =
            |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if subcommand.is_some_and(|s| !name_ok(s)) || phase.is_some_and(|p| !name_ok(p)) {
            return bad("subcommand and phase are names of [a-z0-9-]");
        }
        let action = match action {
            ["fail"] => FaultAction::Fail(1),
            ["fail", code] => match code.parse::<u8>() {
                Ok(code) if code > 0 => FaultAction::Fail(code),
                _ => return bad("fail takes an exit code from 1 to 255"),
            },
            ["hang"] => FaultAction::Hang,
            ["delay", seconds] => match seconds.parse() {
                Ok(s) => FaultAction::Delay(s),
                Err(_) => return bad("delay takes a whole number of seconds"),
            },
            _ => return bad("the action is fail [CODE], hang or delay SECONDS"),
        };
        Ok(Fault {
            program: program.to_string(),
            subcommand: subcommand.map(str::to_string),
            phase: phase.map(str::to_string),
            action,
        })
    }
}

impl fmt::Display for Fault {
    /// The text form [`Fault::parse`] reads, one line of [`FAULTS_FILE`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program)?;
        if let Some(s) = &self.subcommand {
            write!(f, ".{s}")?;
        }
        if let Some(p) = &self.phase {
            write!(f, "@{p}")?;
        }
        match self.action {
            FaultAction::Fail(code) => write!(f, " fail {code}"),
            FaultAction::Hang => write!(f, " hang"),
            FaultAction::Delay(s) => write!(f, " delay {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print_back() {
        for text in [
            "kubeadm.init@wait-control-plane fail 3",
            "kubeadm.join hang",
            "kubeadm.config@images-pull delay 10",
            "kubeadm@preflight delay 5",
            "kubeadm fail 1",
            "kubectl.drain fail 1",
            "kubectl.drain@worker0 fail 1",
            "kubectl.etcd-health@master1 fail 1",
            "kubectl.drain delay 3",
        ] {
            assert_eq!(Fault::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Fault::parse("kubeadm.init fail").unwrap().action, FaultAction::Fail(1));
        assert_eq!(Fault::drain_refused(Some("worker0")).to_string(), "kubectl.drain@worker0 fail 1");
        assert_eq!(Fault::drain_refused(None), Fault::parse("kubectl.drain fail").unwrap());
        assert_eq!(Fault::etcd_member_unhealthy(Some("master1")).to_string(), "kubectl.etcd-health@master1 fail 1");
        assert_eq!(Fault::etcd_member_unhealthy(None).to_string(), "kubectl.etcd-health fail 1");
        for bad in [
            "",
            "kubelet fail",
            "kubeadm.In!t fail",
            "kubeadm fail 0",
            "kubeadm fail 256",
            "kubeadm delay",
            "kubeadm explode",
            "kubeadm@ hang",
            "kubectl fail",
            "kubectl.apply fail",
            "kubectl.drain@Worker0 fail",
        ] {
            assert!(Fault::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
