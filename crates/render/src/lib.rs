//! hakube-render: turns a cluster definition into the assets directory.
//!
//! Rendering is a pure function ([`render::render`]) from a definition plus the secrets
//! that already exist to a set of files (path, bytes, mode, secret or not, nodes it
//! ships to); writing that set to disk, atomically and idempotently, is the separate,
//! small step in [`assets`]. This crate knows nothing of SSH or tokio.

#![deny(missing_docs)]

pub mod layout;
pub mod manifest;
