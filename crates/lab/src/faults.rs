//! Faults a real site has, injected into the kubeadm stand-in: a subcommand or phase made
//! to fail, hang or take longer. Each node's faults are lines of `/etc/hakube-lab/faults`,
//! which the kubeadm stand-in reads before every phase (crates/lab/standins/kubeadm).

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

/// One fault: `kubeadm[.SUBCOMMAND][@PHASE] fail [CODE] | hang | delay SECONDS`, e.g.
/// `kubeadm.init@wait-control-plane fail 1` or `kubeadm.join hang`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `init`, `join`, `reset`, `token`, … (`None`: every subcommand).
    pub subcommand: Option<String>,
    /// A phase of kubeadm's (`preflight`, `kubelet-start`, `wait-control-plane`, …; `None`:
    /// the subcommand as a whole, before its first phase).
    pub phase: Option<String>,
    /// What happens.
    pub action: FaultAction,
}

impl Fault {
    /// Parses a fault from its text form (see [`Fault`]).
    ///
    /// Errors: [`LabError::Config`] naming what is wrong: a program other than kubeadm,
    /// names outside `[a-z0-9-]`, an unknown action, a code outside 1..=255, a missing or
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
        if program != "kubeadm" {
            return bad("only kubeadm takes faults (kubeadm[.SUBCOMMAND][@PHASE])");
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
        Ok(Fault { subcommand: subcommand.map(str::to_string), phase: phase.map(str::to_string), action })
    }
}

impl fmt::Display for Fault {
    /// The text form [`Fault::parse`] reads, one line of [`FAULTS_FILE`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kubeadm")?;
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
            "kubeadm@preflight delay 5",
            "kubeadm fail 1",
        ] {
            assert_eq!(Fault::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Fault::parse("kubeadm.init fail").unwrap().action, FaultAction::Fail(1));
        for bad in [
            "",
            "kubelet fail",
            "kubeadm.In!t fail",
            "kubeadm fail 0",
            "kubeadm fail 256",
            "kubeadm delay",
            "kubeadm explode",
            "kubeadm@ hang",
        ] {
            assert!(Fault::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
