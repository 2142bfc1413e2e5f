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
use hakube_install::Mode;

mod hooks;
mod install;
mod kubeconfig;
mod render;

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
    /// Render the assets directory: PKI, bootstrap token, SSH keys, admin kubeconfig,
    /// kubeadm configs and one boot script per node.
    ///
    /// Existing CAs, keys and the token are reused; a second render with the same
    /// definition changes no byte.
    #[command(after_help = AFTER_HELP)]
    Render {
        /// The cluster definition (JSON).
        definition: PathBuf,
        /// Where the assets go.
        #[arg(long, value_name = "DIR", default_value = "assets")]
        assets_dir: PathBuf,
        /// A directory of templates that override the built-in ones of the same
        /// relative path (e.g. steps/runtime.sh.j2) or add hooks (hooks/network/NAME.sh.j2).
        #[arg(long, value_name = "DIR")]
        templates: Option<PathBuf>,
        /// Replace the CAs, service-account keys, bootstrap token and every certificate
        /// issued from the CAs (SSH keys are kept: the machines trust them).
        #[arg(long, conflicts_with = "check")]
        rotate_secrets: bool,
        /// Write nothing; exit 1 when the assets are stale or were tampered with.
        #[arg(long)]
        check: bool,
        /// Write nothing; print every file (with its pinned sha256), package repository and
        /// container image the cluster's nodes fetch, at upstream URLs, for mirroring:
        /// `file URL sha256:HEX|unpinned STEP`, `repo KIND URL PACKAGE...`, `image REF`.
        #[arg(long, conflicts_with_all = ["check", "rotate_secrets"])]
        list_downloads: bool,
        #[command(flatten)]
        identity: IdentityArgs,
    },
    /// Ship the assets to the nodes over SSH and run their boot scripts, in the order a
    /// HA control plane needs: prepare everywhere, init on the first master, join the
    /// other masters one at a time, join the workers, then the network provider.
    ///
    /// With NODE... only those nodes, against the existing cluster.
    #[command(after_help = INSTALL_AFTER_HELP)]
    Install {
        #[command(flatten)]
        common: RunArgs,
        /// Reset the targeted nodes first (kubeadm reset; a master leaves etcd first).
        #[arg(long)]
        reset: bool,
    },
    /// Upgrade Kubernetes to the definition's kubernetesVersion, one minor at a time, with the
    /// upgrade steps `hakube render` wrote into the boot scripts: checks and an etcd snapshot
    /// (copied here) first, then kubeadm upgrade apply on the first master, the other masters
    /// one at a time, the workers in batches (drained, upgraded, uncordoned), the network
    /// add-on when its release changes, and a closing check. Run again, it resumes where it
    /// stopped.
    ///
    /// With NODE... only those nodes (the control plane must already run the new version,
    /// unless the first master is among them).
    #[command(after_help = INSTALL_AFTER_HELP)]
    Upgrade {
        #[command(flatten)]
        common: RunArgs,
        /// Where the etcd snapshot taken before the upgrade goes (mode 0600; encrypted with
        /// age when the assets have recipients).
        #[arg(long, value_name = "DIR", default_value = "snapshots")]
        snapshot_dir: PathBuf,
    },
    /// Remove what hakube installed from the nodes: kubeadm reset and hakube's files;
    /// a master leaves etcd through another master first.
    #[command(after_help = INSTALL_AFTER_HELP)]
    Reset {
        #[command(flatten)]
        common: RunArgs,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Write an admin kubeconfig for kubectl: admin.conf decrypted in memory, or with
    /// --ttl a short-lived admin client certificate minted from the cluster CA; to a file
    /// (--output) or merged into ~/.kube/config (--merge). Always mode 0600.
    #[command(after_help = AFTER_HELP)]
    Kubeconfig {
        /// The cluster definition (JSON).
        definition: PathBuf,
        /// The assets directory `hakube render` wrote.
        #[arg(long, value_name = "DIR", default_value = "assets")]
        assets_dir: PathBuf,
        #[command(flatten)]
        target: KubeconfigTarget,
        /// Mint a new admin client certificate valid this long (e.g. 8h, 30m; at most the
        /// definition's certificate validity) instead of handing out admin.conf's long-lived one.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        #[command(flatten)]
        identity: IdentityArgs,
    },
    /// Print the JSON Schema (draft 2020-12) of cluster definitions.
    Schema,
}

const INSTALL_AFTER_HELP: &str = "\
Exit codes:
  0    every targeted node finished
  1    the definition or the assets are wrong; nothing was touched
  2    the command line was wrong
  3    one or more nodes failed (the summary names node, step, exit code and log)
  130  interrupted by Ctrl-C (the summary names what was left running)";

/// Where `hakube kubeconfig` writes.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct KubeconfigTarget {
    /// Write the kubeconfig to FILE (replaced atomically, mode 0600).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Merge its cluster, user and contexts into $KUBECONFIG's first file or ~/.kube/config,
    /// keeping every other entry.
    #[arg(long)]
    merge: bool,
}

/// Where age identities come from, for commands that decrypt the assets' secrets.
#[derive(clap::Args)]
struct IdentityArgs {
    /// An age identity file (as age-keygen writes it) or an SSH private key that decrypts
    /// the secrets (repeatable). Also looked for, in order: $HAKUBE_AGE_KEY_FILE,
    /// $SOPS_AGE_KEY_FILE, $SOPS_AGE_KEY, ~/.config/sops/age/keys.txt, and, when a
    /// recipient is an SSH key, ~/.ssh/id_ed25519 and ~/.ssh/id_rsa.
    #[arg(long, value_name = "FILE")]
    identity: Vec<PathBuf>,
}

/// Options shared by install, upgrade and reset.
#[derive(clap::Args)]
struct RunArgs {
    /// The cluster definition (JSON) the assets were rendered from: install compares it with
    /// the assets and refuses stale ones, naming what changed. With --assets-only, this
    /// argument is the first NODE.
    #[arg(required_unless_present = "assets_only")]
    definition: Option<PathBuf>,
    /// Only these nodes (default: all).
    nodes: Vec<String>,
    /// Run from the assets directory alone (everything install needs is in its
    /// manifest.json, e.g. in a fresh clone holding only the assets): no definition is
    /// read, and every positional argument is a NODE.
    #[arg(long)]
    assets_only: bool,
    /// Print the plan, node by node and step by step, and touch nothing.
    #[arg(long)]
    dry_run: bool,
    /// The assets directory `hakube render` wrote.
    #[arg(long, value_name = "DIR", default_value = "assets")]
    assets_dir: PathBuf,
    /// Where each node's full output goes, as DIR/<node>.log.
    #[arg(long, value_name = "DIR", default_value = "logs")]
    log_dir: PathBuf,
    /// How many nodes to work on at once (default: the definition's installConcurrency).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
    /// How long to keep retrying a node that refuses or drops connections, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    connect_timeout: u64,
    #[command(flatten)]
    identity: IdentityArgs,
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
        Command::Render { definition, assets_dir, templates, rotate_secrets, check, list_downloads, identity } => {
            match list_downloads {
                true => render::list_downloads(&definition, templates.as_deref()),
                false => render::run(render::Request {
                    definition: &definition,
                    assets_dir: &assets_dir,
                    templates: templates.as_deref(),
                    rotate_secrets,
                    check,
                    identities: &identity.identity,
                }),
            }
        }
        Command::Install { common, reset } => {
            let mode = if reset { Mode::ResetThenInstall } else { Mode::Install };
            let common = common.positional_nodes();
            install::run(request(&common, mode, false))
        }
        Command::Reset { common, yes } => install::run(request(&common.positional_nodes(), Mode::Reset, yes)),
        Command::Upgrade { common, snapshot_dir } => {
            let common = common.positional_nodes();
            install::run(install::Request { snapshot_dir: &snapshot_dir, ..request(&common, Mode::Upgrade, false) })
        }
        Command::Kubeconfig { definition, assets_dir, target, ttl, identity } => kubeconfig::run(kubeconfig::Request {
            definition: &definition,
            assets_dir: &assets_dir,
            output: target.output.as_deref(),
            merge: target.merge,
            ttl,
            identities: &identity.identity,
        }),
        Command::Schema => {
            print!("{}", hakube_cluster::schema());
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl RunArgs {
    /// With --assets-only there is no definition: the first positional argument is a NODE.
    fn positional_nodes(mut self) -> RunArgs {
        if self.assets_only {
            if let Some(first) = self.definition.take() {
                self.nodes.insert(0, first.to_string_lossy().into_owned());
            }
        }
        self
    }
}

fn request(common: &RunArgs, mode: Mode, assume_yes: bool) -> install::Request<'_> {
    install::Request {
        definition: if common.assets_only { None } else { common.definition.as_deref() },
        nodes: &common.nodes,
        assets_dir: &common.assets_dir,
        log_dir: &common.log_dir,
        concurrency: common.concurrency.map(|c| c as usize),
        connect_timeout: std::time::Duration::from_secs(common.connect_timeout),
        dry_run: common.dry_run,
        identities: &common.identity.identity,
        snapshot_dir: Path::new("snapshots"),
        mode,
        assume_yes,
    }
}

/// Reads and validates a definition; prints warnings, and errors when it is invalid
/// (then returns `None`). An unreadable file is an `Err`.
pub(crate) fn load_definition(path: &Path, catalog: &HookCatalog) -> Result<Option<Loaded>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read cluster definition {}", path.display()))?;
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
