//! hakube-install: takes a rendered assets directory to the machines over SSH.
//!
//! - [`plan`]: the phases, in the order a HA control plane needs, for the whole
//!   cluster or a subset of nodes, for install or reset;
//! - [`transport`]: one multiplexed OpenSSH connection per node (the `openssh` crate),
//!   host keys checked against the assets' known_hosts;
//! - [`runner`]: runs a plan with bounded concurrency, contains failures, writes one log
//!   file per node and sends [`events::Event`]s.
//!
//! This crate knows nothing of templates or certificate generation: it reads the assets
//! through `manifest.json` and the layout that hakube-assets defines (no OpenSSL, no
//! template engine: `cargo tree -p hakube-install` shows neither). It never prints.

#![deny(missing_docs)]

pub mod events;
mod executor;
pub mod journal;
pub mod plan;
pub mod runner;
pub mod transport;

pub use events::{Event, StepOutcome};
pub use plan::{Mode, Plan};
pub use runner::{execute, Interrupt, NodeOutcome, NodeSummary, Settings, Summary};

/// Why an install could not start (node failures are reported in a [`Summary`], not here).
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The assets directory is missing, unreadable, stale or tampered with.
    #[error("{0}")]
    Assets(String),
    /// The logs directory or a node's log file cannot be created or written.
    #[error("{0}")]
    Logs(String),
    /// The plan cannot be made.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
}

/// Reads `manifest.json` from the assets directory.
///
/// # Errors
///
/// [`InstallError::Assets`] naming the file and telling the user to run `hakube render`.
pub fn read_manifest(assets_dir: &std::path::Path) -> Result<hakube_assets::manifest::Manifest, InstallError> {
    let path = assets_dir.join(hakube_assets::layout::MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        InstallError::Assets(format!("failed to read {}: {e}; run `hakube render` first", path.display()))
    })?;
    hakube_assets::manifest::Manifest::parse(&text).map_err(|e| {
        InstallError::Assets(format!("failed to parse {}: {e}; run `hakube render` again", path.display()))
    })
}
