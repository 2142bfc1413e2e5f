//! The run journal (issue 12, item 2): which steps hakube started on which node, as which
//! unit, and how much of each one's log it has, so that hakube itself can die (SIGKILL, a
//! closed laptop, a second Ctrl-C) and the next `hakube install` with the same assets and
//! logs directory attaches to the steps still running, continuing each log where it left
//! off, and reports those that ended while it was away with their exit codes and logs.
//!
//! It is `LOG_DIR/.hakube-journal.json` (mode 0600, replaced atomically on every change):
//!
//! ```json
//! { "format": 1, "steps": { "worker0": { "hakube-0a1b2c3d4e5f-join":
//!     { "node": "worker0", "step": "join", "offset": 5120 } } } }
//! ```
//!
//! keyed by the node the unit runs on, then the unit. An entry is added when a step starts
//! (or is attached to), its offset advanced as its log is written to the node's log file
//! (after the bytes, so a crash can only repeat a chunk, never lose one), and removed once
//! the step's exit status was read. Read back it is untrusted: a unit name or step the
//! step runner's rules refuse is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hakube_assets::steps;
use serde::{Deserialize, Serialize};

/// The journal's file name in the logs directory.
pub const FILE: &str = ".hakube-journal.json";

/// One step hakube started and has not seen end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The node the step is on behalf of (differs from the host for `forget`).
    pub node: String,
    /// The boot.sh step.
    pub step: String,
    /// How many bytes of the unit's log are in the node's log file.
    pub offset: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    /// host -> unit -> entry.
    steps: BTreeMap<String, BTreeMap<String, Entry>>,
}

/// The journal of a logs directory, shared by a run's tasks.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Opens the journal in `log_dir` (an empty one when there is none, or when it does not
    /// parse: then its steps are unknown, and the step runner's own one-copy-per-step rule
    /// still keeps a running step from starting twice).
    pub fn open(log_dir: &Path) -> Journal {
        let path = log_dir.join(FILE);
        let mut file: File =
            std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        for units in file.steps.values_mut() {
            units.retain(|unit, e| steps::is_unit_name(unit) && steps::is_step_name(&e.step));
        }
        file.steps.retain(|host, units| hakube_assets::layout::is_node_name(host) && !units.is_empty());
        file.format = 1;
        Journal { path, file: Mutex::new(file) }
    }

    /// The steps an earlier run left, by host: `(unit, entry)`.
    pub fn left(&self) -> BTreeMap<String, Vec<(String, Entry)>> {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.steps
            .iter()
            .map(|(host, units)| (host.clone(), units.iter().map(|(u, e)| (u.clone(), e.clone())).collect()))
            .collect()
    }

    /// The offset recorded for `unit` on `host`, if any.
    pub fn offset(&self, host: &str, unit: &str) -> Option<u64> {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.steps.get(host).and_then(|u| u.get(unit)).map(|e| e.offset)
    }

    /// Records `unit` on `host` (or updates its entry).
    ///
    /// # Errors
    ///
    /// The journal file cannot be written (the message names it).
    pub fn record(&self, host: &str, unit: &str, entry: Entry) -> Result<(), String> {
        self.change(|f| {
            f.steps.entry(host.to_string()).or_default().insert(unit.to_string(), entry);
        })
    }

    /// Advances `unit`'s offset to `offset`.
    ///
    /// # Errors
    ///
    /// As [`Journal::record`].
    pub fn advance(&self, host: &str, unit: &str, offset: u64) -> Result<(), String> {
        self.change(|f| {
            if let Some(e) = f.steps.get_mut(host).and_then(|u| u.get_mut(unit)) {
                e.offset = offset;
            }
        })
    }

    /// Forgets `unit` on `host` (its end was seen).
    ///
    /// # Errors
    ///
    /// As [`Journal::record`].
    pub fn remove(&self, host: &str, unit: &str) -> Result<(), String> {
        self.change(|f| {
            if let Some(units) = f.steps.get_mut(host) {
                units.remove(unit);
                if units.is_empty() {
                    f.steps.remove(host);
                }
            }
        })
    }

    fn change(&self, edit: impl FnOnce(&mut File)) -> Result<(), String> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        edit(&mut file);
        if file.steps.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("cannot remove the run journal {}: {e}", self.path.display())),
            };
        }
        let bytes = serde_json::to_vec_pretty(&*file).map_err(|e| e.to_string())?;
        hakube_assets::dir::write_atomic(&self.path, 0o600, &bytes)
            .map_err(|e| format!("cannot write the run journal {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_survives_its_process_and_drops_what_it_cannot_trust() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path());
        let entry = |offset| Entry { node: "w0".into(), step: "join".into(), offset };
        j.record("w0", "hakube-0a1b2c3d4e5f-join", entry(0)).unwrap();
        j.advance("w0", "hakube-0a1b2c3d4e5f-join", 4096).unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A new process reads what the old one left.
        let again = Journal::open(dir.path());
        assert_eq!(again.offset("w0", "hakube-0a1b2c3d4e5f-join"), Some(4096));
        assert_eq!(again.left()["w0"], vec![("hakube-0a1b2c3d4e5f-join".to_string(), entry(4096))]);
        again.remove("w0", "hakube-0a1b2c3d4e5f-join").unwrap();
        assert!(!path.exists(), "an empty journal is removed");
        // Entries the step runner would refuse are dropped on reading.
        std::fs::write(
            &path,
            r#"{ "format": 1, "steps": { "w0": { "../x": { "node": "w0", "step": "join", "offset": 1 },
                 "hakube-a-join": { "node": "w0", "step": "a;b", "offset": 1 } },
                 "W 1": { "hakube-a-join": { "node": "w0", "step": "join", "offset": 1 } } } }"#,
        )
        .unwrap();
        assert!(Journal::open(dir.path()).left().is_empty());
        std::fs::write(&path, "not json").unwrap();
        assert!(Journal::open(dir.path()).left().is_empty());
    }
}
