//! Problems found in a definition, each naming where it is.

use std::fmt;

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The definition can be used, but something deserves attention.
    Warning,
    /// The definition cannot be used until this is fixed.
    Error,
}

/// One problem in a definition.
///
/// Displays as `origin:line:column: error: path: message` (line and column 1-based,
/// column counted in characters), followed by an indented `help:` line when there is
/// help — the shape compilers use, so editors and terminals can jump to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where the definition came from (the file name as given).
    pub origin: String,
    /// 1-based line and column of the offending value or key, when known.
    pub position: Option<(usize, usize)>,
    /// JSON path of the offending value, e.g. `masters[1].nodeName`; empty for the
    /// document as a whole.
    pub path: String,
    /// What is wrong, lowercase, without a trailing period.
    pub message: String,
    /// What to do about it, when there is something specific to say.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {level}: ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in one definition, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Warning)
    }

    pub(crate) fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        let errors = self.errors().count();
        if errors > 0 {
            write!(f, "{errors} error{}", if errors == 1 { "" } else { "s" })?;
            let warnings = self.warnings().count();
            if warnings > 0 {
                write!(f, ", {warnings} warning{}", if warnings == 1 { "" } else { "s" })?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for Report {}
