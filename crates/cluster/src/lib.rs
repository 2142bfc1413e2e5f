//! hakube-cluster: the cluster definition both phases of hakube stand on.
//!
//! - [`definition`]: the JSON document as serde + schemars types, with defaults.
//! - [`load`]: parse a definition from a string and check it, reporting every problem at
//!   once as [`Diagnostic`]s that name the JSON path and `file:line:column`.
//! - [`schema`]: the JSON Schema (draft 2020-12) that editors use.
//!
//! This crate does no I/O: it parses a string and validates a value. The caller reads
//! the file and passes its name for messages, and passes the [`HookCatalog`] of hook
//! templates that exist.

#![deny(missing_docs)]

pub mod definition;
mod diagnostic;
pub mod downloads;
pub mod duration;
mod locate;
pub mod ports;
pub mod recipients;
pub mod releases;
pub mod ssh;
mod validate;

pub use definition::{ClusterDefinition, Node, Role};
pub use diagnostic::{Diagnostic, Report, Severity};
pub use validate::{HookCatalog, HookKind, SupportedVersions, Version, SUPPORTED};

/// A definition that parsed and passed validation, with the warnings validation found.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The definition, with defaults applied and hakube-installer aliases
    /// (masterFQDN, masterLoadBalancerIP/FQDN, `.sh.j2` hook names) mapped to their
    /// current fields.
    pub definition: ClusterDefinition,
    /// Warnings (never errors): legacy fields, an etcd quorum at risk, and the like.
    pub warnings: Vec<Diagnostic>,
}

/// Parses and validates a cluster definition.
///
/// `origin` names the source in messages (usually the file path as the user typed it);
/// `hooks` lists the hook templates that exist, so that hook names can be checked.
///
/// # Errors
///
/// A [`Report`] holding every error found (and the warnings), each naming the JSON
/// path and, where known, `origin:line:column`. Syntax errors and wrong types stop
/// parsing at the first one (serde cannot go on past them); every other problem —
/// unknown fields, then all semantic checks — is reported at once.
pub fn load(source: &str, origin: &str, hooks: &HookCatalog) -> Result<Loaded, Report> {
    let map = locate::SourceMap::new(origin, source);
    let mut report = Report::default();
    let Some(mut definition) = validate::parse(source, &map, &mut report) else {
        return Err(report);
    };
    validate::normalise(&mut definition, &map, &mut report);
    validate::check(&definition, &map, hooks, &mut report);
    if report.has_errors() {
        Err(report)
    } else {
        Ok(Loaded { definition, warnings: report.diagnostics })
    }
}

/// The JSON Schema of a cluster definition (draft 2020-12, descriptions from the doc
/// comments of [`definition`]), pretty-printed with a trailing newline. This is the
/// text committed at `schema/cluster.schema.json`.
pub fn schema() -> String {
    let schema = schemars::schema_for!(ClusterDefinition);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema always serialises");
    text.push('\n');
    text
}
