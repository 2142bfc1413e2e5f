//! The hook catalog: which hook templates exist, built in or in `--templates DIR`.

use std::path::Path;

use anyhow::{Context, Result};
use hakube_cluster::HookCatalog;
use hakube_render::Templates;

/// The hooks of the built-in templates plus those under `DIR/hooks/<kind>/`.
pub fn catalog(templates: Option<&Path>) -> Result<HookCatalog> {
    Ok(Templates::new(templates).context("failed to load templates")?.hook_catalog())
}
