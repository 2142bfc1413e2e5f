//! hakube-render: turns a cluster definition into the assets directory.
//!
//! Rendering is a pure function ([`render::render`]) from a definition plus the secrets
//! that already exist to a set of files (path, bytes, mode, secret or not, nodes it
//! ships to); writing that set to disk, atomically and idempotently, is the separate,
//! small step in [`assets`]. This crate knows nothing of SSH or tokio.

#![deny(missing_docs)]

pub mod assets;
pub mod kubeadm;
pub mod kubeconfig;
pub mod pki;
pub mod render;
pub mod secrets;
pub mod sshkeys;
pub mod templates;
pub mod token;

pub use hakube_assets::{layout, manifest};
pub use templates::Templates;
