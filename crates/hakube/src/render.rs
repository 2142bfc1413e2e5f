//! `hakube render`: load, render, then write or check, and say what happened.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use hakube_render::{assets, render, Templates};

pub fn run(
    definition: &Path,
    assets_dir: &Path,
    templates: Option<&Path>,
    rotate_secrets: bool,
    check: bool,
) -> Result<ExitCode> {
    let templates = Templates::new(templates).context("failed to load templates")?;
    let catalog = templates.hook_catalog();
    let Some(loaded) = crate::load_definition(definition, &catalog)? else {
        return Ok(ExitCode::from(1));
    };
    let existing = assets::read_existing(assets_dir)?;
    let options = render::Options { rotate_secrets, now: SystemTime::now() };
    let set = render::render(&loaded.definition, &existing, &templates, &options)
        .with_context(|| format!("failed to render {}", definition.display()))?;
    let dir = assets_dir.display();
    // CAs in their last third (render never renews one) and leaves that end with their CA.
    for warning in &set.expiring {
        eprintln!("warning: {dir}/{warning}");
    }
    if check {
        for renewal in &set.renewed {
            eprintln!("would renew {dir}/{renewal}");
        }
        let problems = assets::check(assets_dir, &set, &existing)?;
        if problems.is_empty() {
            println!("{dir}: up to date ({} files)", set.files.len() + 1);
            return Ok(ExitCode::SUCCESS);
        }
        for p in &problems {
            eprintln!("{dir}/{p}");
        }
        eprintln!(
            "{dir}: {} problem(s); run `hakube render {}` to bring the assets up to date",
            problems.len(),
            definition.display()
        );
        return Ok(ExitCode::from(1));
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
