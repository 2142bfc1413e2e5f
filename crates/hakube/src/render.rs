//! `hakube render`: load, render, then write or check, and say what happened.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use hakube_render::secrets::{self, Identities, Opened, Sources};
use hakube_render::{assets, render, Templates};

/// What `hakube render` was asked.
pub struct Request<'a> {
    pub definition: &'a Path,
    pub assets_dir: &'a Path,
    pub templates: Option<&'a Path>,
    pub rotate_secrets: bool,
    pub check: bool,
    /// `--identity` files, for decrypting existing ciphertexts.
    pub identities: &'a [std::path::PathBuf],
}

/// Whether any of `recipients` (definition or manifest) is an SSH key, so the user's SSH
/// keys are among the identities looked for.
pub fn any_ssh(recipients: &[String]) -> bool {
    recipients.iter().any(|r| hakube_cluster::recipients::parse(r).is_ok_and(|r| r.is_ssh()))
}

/// Whether `dir` (or the directory it would be created in) is inside a git work tree: a
/// `.git` entry in it or an ancestor.
fn in_git_work_tree(dir: &Path) -> bool {
    let start = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    start.ancestors().any(|d| d.join(".git").symlink_metadata().is_ok())
}

pub fn run(req: Request<'_>) -> Result<ExitCode> {
    let Request { definition, assets_dir, templates, rotate_secrets, check, identities } = req;
    let templates = Templates::new(templates).context("failed to load templates")?;
    let catalog = templates.hook_catalog();
    let Some(loaded) = crate::load_definition(definition, &catalog)? else {
        return Ok(ExitCode::from(1));
    };
    let existing = assets::read_existing(assets_dir)?;
    let recipients = &loaded.definition.secrets.recipients;
    let options = render::Options { rotate_secrets, now: SystemTime::now() };
    let dir = assets_dir.display();
    let opened = if secrets::has_ciphertexts(&existing) {
        let mut all = recipients.clone();
        all.extend(secrets::previous_recipients(&existing));
        let ids = Identities::load(&Sources::from_env(identities.to_vec()), any_ssh(&all))?;
        if ids.is_empty() && check {
            // A CI job without an identity: what can be checked without decrypting.
            let mut fresh = render::render(&loaded.definition, &Default::default(), &templates, &options)
                .with_context(|| format!("failed to render {}", definition.display()))?;
            secrets::seal(&mut fresh, recipients, &Default::default(), &Default::default())?;
            let problems = assets::check_without_identity(assets_dir, &fresh, &existing)?;
            println!(
                "{dir}: no identity found ({}); checked the structure, the sha256 of every file and that no plaintext secret is present, not what the ciphertexts hold (give --identity to check that too)",
                ids.searched().join("; ")
            );
            return Ok(report_problems(&problems, assets_dir, definition, fresh.files.len() + 1));
        }
        secrets::open(&existing, &ids).with_context(|| format!("failed to read the secrets of {dir}"))?
    } else {
        Opened { plain: existing.clone(), decrypted: Default::default() }
    };
    let mut set = render::render(&loaded.definition, &opened.plain, &templates, &options)
        .with_context(|| format!("failed to render {}", definition.display()))?;
    let sealed = secrets::seal(&mut set, recipients, &existing, &opened.decrypted)?;
    // CAs in their last third (render never renews one) and leaves that end with their CA.
    for warning in &set.expiring {
        eprintln!("warning: {dir}/{warning}");
    }
    if check {
        for renewal in &set.renewed {
            eprintln!("would renew {dir}/{renewal}");
        }
        let problems = assets::check(assets_dir, &set, &existing)?;
        return Ok(report_problems(&problems, assets_dir, definition, set.files.len() + 1));
    }
    if recipients.is_empty() && in_git_work_tree(assets_dir) {
        eprintln!(
            "warning: {dir} is inside a git work tree and secrets.recipients is not set: its {} secrets are plaintext files, kept out of git only by {dir}/.gitignore; to commit them encrypted with age instead, list recipients in the definition (\"secrets\": {{\"recipients\": [\"age1...\"]}}) and render again",
            sealed.ignored.len()
        );
    }
    let summary = assets::write(assets_dir, &set, &existing)?;
    for (label, paths) in [("created", &summary.created), ("changed", &summary.changed), ("removed", &summary.removed)]
    {
        for p in paths {
            println!("{label:>8} {dir}/{p}");
        }
    }
    for renewal in &set.renewed {
        println!("{:>8} {dir}/{renewal}", "renewed");
    }
    for p in &summary.stale {
        println!("{:>8} {dir}/{p} (a temporary file an interrupted render left)", "cleaned");
    }
    if sealed.recipients_changed() {
        println!(
            "re-encrypted {} secrets for the recipients now listed (added: {}; removed: {})",
            sealed.encrypted.len(),
            if sealed.added.is_empty() { "none".to_string() } else { sealed.added.join(", ") },
            if sealed.removed.is_empty() { "none".to_string() } else { sealed.removed.join(", ") },
        );
    }
    if !sealed.removed.is_empty() {
        println!(
            "note: ciphertexts already committed stay readable in git history by the removed recipient(s); to make what they hold worthless, run `hakube render {} --rotate-secrets` (new CAs, service-account key and bootstrap token; the SSH keys are kept) and install again",
            definition.display()
        );
    }
    let gitignore = hakube_render::layout::GITIGNORE;
    if !sealed.ignored.is_empty() && (summary.created.iter().chain(&summary.changed)).any(|p| p == gitignore) {
        println!("{dir}/{gitignore} keeps the {} plaintext secrets out of git", sealed.ignored.len());
    }
    println!(
        "{dir}: {} created, {} changed, {} kept, {} removed",
        summary.created.len(),
        summary.changed.len(),
        summary.kept.len(),
        summary.removed.len()
    );
    println!(
        "next: review {dir}/nodes/*/boot.sh, then run `hakube install {} --assets-dir {dir}`",
        definition.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints `problems` (for `--check`) and picks the exit code.
fn report_problems(problems: &[assets::Discrepancy], assets_dir: &Path, definition: &Path, files: usize) -> ExitCode {
    let dir = assets_dir.display();
    if problems.is_empty() {
        println!("{dir}: up to date ({files} files)");
        return ExitCode::SUCCESS;
    }
    for p in problems {
        eprintln!("{dir}/{p}");
    }
    eprintln!(
        "{dir}: {} problem(s); run `hakube render {}` to bring the assets up to date",
        problems.len(),
        definition.display()
    );
    ExitCode::from(1)
}

/// `hakube render --list-downloads`: what the cluster's nodes fetch, on standard output.
pub fn list_downloads(definition: &Path, templates: Option<&Path>) -> Result<ExitCode> {
    let templates = Templates::new(templates).context("failed to load templates")?;
    let Some(loaded) = crate::load_definition(definition, &templates.hook_catalog())? else {
        return Ok(ExitCode::from(1));
    };
    let downloads = hakube_cluster::downloads::downloads(&loaded.definition)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("failed to list the downloads of {}", definition.display()))?;
    print!("{}", downloads.listing());
    Ok(ExitCode::SUCCESS)
}
