//! The hook catalog: which hook templates exist, built in or in `--templates DIR`.

use std::path::Path;

use anyhow::Result;
use hakube_cluster::{HookCatalog, HookKind};

/// Built-in hooks (templates/hooks/ compiled into the binary) plus those under
/// `DIR/hooks/<kind>/` when `--templates DIR` is given.
pub fn catalog(templates: Option<&Path>) -> Result<HookCatalog> {
    let builtin = [
        (HookKind::Preinstall, "aws"),
        (HookKind::CloudProvider, "aws"),
        (HookKind::Network, "calico"),
        (HookKind::Network, "cilium"),
        (HookKind::Network, "flannel"),
        (HookKind::Network, "weave"),
    ];
    let mut names: Vec<(HookKind, String)> = builtin.iter().map(|(k, n)| (*k, n.to_string())).collect();
    if let Some(dir) = templates {
        for kind in HookKind::ALL {
            let Ok(entries) = std::fs::read_dir(dir.join("hooks").join(kind.dir())) else { continue };
            for entry in entries.flatten() {
                if let Some(name) = entry.file_name().to_str().and_then(|f| f.strip_suffix(kind.suffix())) {
                    names.push((kind, name.to_string()));
                }
            }
        }
    }
    Ok(HookCatalog::new(names.iter().map(|(k, n)| (*k, n.as_str()))))
}
