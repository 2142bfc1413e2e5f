//! The `hakube` command line: parses arguments, reads files, draws output, picks exit codes.
//!
//! Exit codes (also in `hakube --help` and README.md):
//! - 0: success (warnings may have been printed on stderr);
//! - 1: the definition, the assets or a node failed (the message says which);
//! - 2: the command line was wrong (clap's usage errors).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hakube_cluster::{HookCatalog, Loaded};

mod hooks;

const AFTER_HELP: &str = "\
Exit codes:
  0  success (warnings, if any, are on stderr)
  1  the definition, the assets or a node failed; the message names the place
  2  the command line was wrong";

/// Stand up highly available Kubernetes clusters on existing machines over SSH.
///
/// `hakube render` turns a cluster definition into an assets directory to review and
/// keep in git; `hakube install` ships it to the nodes.
#[derive(Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a cluster definition and report every problem, with file:line:column.
    #[command(after_help = AFTER_HELP)]
    Validate {
        /// The cluster definition (JSON).
        definition: PathBuf,
        /// A directory of templates that override or add to the built-in ones
        /// (hooks are looked up there too).
        #[arg(long, value_name = "DIR")]
        templates: Option<PathBuf>,
    },
    /// Print the JSON Schema (draft 2020-12) of cluster definitions.
    Schema,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hakube: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate { definition, templates } => {
            let catalog = hooks::catalog(templates.as_deref())?;
            Ok(match load_definition(&definition, &catalog)? {
                Some(loaded) => {
                    println!(
                        "{}: valid: cluster {:?}, {} master(s), {} worker(s), Kubernetes {}",
                        definition.display(),
                        loaded.definition.cluster_name,
                        loaded.definition.masters.len(),
                        loaded.definition.workers.len(),
                        loaded.definition.kubernetes_version,
                    );
                    ExitCode::SUCCESS
                }
                None => ExitCode::from(1),
            })
        }
        Command::Schema => {
            print!("{}", hakube_cluster::schema());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads and validates a definition; prints warnings, and errors when it is invalid
/// (then returns `None`). An unreadable file is an `Err`.
fn load_definition(path: &Path, catalog: &HookCatalog) -> Result<Option<Loaded>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read cluster definition {}", path.display()))?;
    let origin = path.display().to_string();
    match hakube_cluster::load(&text, &origin, catalog) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            Ok(Some(loaded))
        }
        Err(report) => {
            eprint!("{report}");
            Ok(None)
        }
    }
}
