//! hakube-assets: the contract between `hakube render` and `hakube install`.
//!
//! Everything both sides must agree on is spelled here once:
//!
//! - [`layout`]: every asset path and its on-node destination, and the file-mode rule;
//! - [`manifest`]: `manifest.json`, what install needs to know (node order and roles, SSH
//!   targets, host-key policy, concurrency, the Kubernetes version, every file's sha256 and
//!   mode, the phases and their steps, the definition's hash), untrusted until validated;
//! - [`steps`]: the boot script's step names, its marker lines, the on-node paths the boot
//!   script and the step runner use (rendered into them, so bash and Rust agree);
//! - [`dir`]: the assets directory opened without following links, `verify`, atomic writes;
//! - [`secrets`]: age identities, decryption for install, encryption.
//!
//! This crate links neither OpenSSL nor a template engine: install depends on it alone.

#![deny(missing_docs)]

pub mod dir;
pub mod layout;
pub mod manifest;
pub mod secrets;
pub mod steps;

pub use dir::{AssetsDir, AssetsError, Existing};
pub use manifest::{sha256_hex, Manifest, ManifestEntry, NodeEntry};
