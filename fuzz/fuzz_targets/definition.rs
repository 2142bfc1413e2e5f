//! Arbitrary bytes as a cluster definition, through what `hakube validate`, `render` and
//! `install` call on the file's text (`hakube_cluster::load`, with the built-in hook
//! catalog), and the report as the binary prints it. It must never panic: every input is
//! a definition or a report of diagnostics.

#![no_main]

use std::sync::OnceLock;

use hakube_cluster::HookCatalog;
use libfuzzer_sys::fuzz_target;

fn catalog() -> &'static HookCatalog {
    static CATALOG: OnceLock<HookCatalog> = OnceLock::new();
    CATALOG.get_or_init(|| hakube_render::Templates::new(None).expect("built-in templates").hook_catalog())
}

fuzz_target!(|data: &[u8]| {
    // The binary reads the file with read_to_string: text that is not UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match hakube_cluster::load(text, "fuzz.json", catalog()) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                let _ = warning.to_string();
            }
            let _ = loaded.definition.pki.validities();
        }
        Err(report) => {
            assert!(report.has_errors(), "a refused definition without an error");
            let _ = report.to_string();
        }
    }
});
