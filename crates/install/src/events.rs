//! What an install reports while it runs. The engine sends [`Event`]s over a channel;
//! the binary draws them (a live display on a terminal, plain lines otherwise). Events
//! carry no node output: that goes to the per-node log files only.

use std::path::PathBuf;
use std::time::Duration;

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// It ran and succeeded.
    Done,
    /// The boot script found it already done (`status=skipped`).
    Skipped,
    /// It failed with this exit code (`None`: the connection dropped or the command
    /// could not be started).
    Failed(Option<i32>),
}

/// One thing that happened during an install or reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A step an earlier run started (hakube was killed, or stopped waiting) ended while no
    /// hakube followed it; the rest of its log was added to the node's log.
    EndedWhileAway {
        /// The node.
        node: String,
        /// The step.
        step: String,
        /// Its exit code, when the node still knew it.
        exit_code: Option<i32>,
        /// The node's log file.
        log: PathBuf,
    },
    /// A phase of the plan began.
    PhaseStarted {
        /// 0-based position in the plan.
        index: usize,
        /// The phase's title, e.g. `join masters one at a time`.
        title: String,
        /// The nodes it runs on.
        nodes: Vec<String>,
    },
    /// A node is being connected to (again, after `attempt - 1` failures).
    Connecting {
        /// The node.
        node: String,
        /// 1 for the first try; 0 when a running step's log stopped arriving (the connection
        /// dropped) and hakube reattaches to it.
        attempt: u32,
        /// Why the previous attempt failed (`None` on the first).
        last_error: Option<String>,
    },
    /// A step started on a node (`ship` is the file transfer; other names are boot.sh steps).
    StepStarted {
        /// The node.
        node: String,
        /// The step.
        step: String,
    },
    /// A step ended on a node.
    StepFinished {
        /// The node.
        node: String,
        /// The step.
        step: String,
        /// How it ended.
        outcome: StepOutcome,
        /// How long it took.
        elapsed: Duration,
    },
    /// A node failed; nothing more runs on it (and, for a master, maybe not after it).
    NodeFailed {
        /// The node.
        node: String,
        /// The step it failed in.
        step: String,
        /// What went wrong, naming the exit code where there is one.
        message: String,
        /// Its log file.
        log: PathBuf,
    },
    /// A node will not run the rest of the plan because something it depends on failed.
    NodeSkipped {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}
