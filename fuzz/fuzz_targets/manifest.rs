//! Arbitrary bytes as `manifest.json`, through what render (reading the previous manifest)
//! and install (`assets::verify`) do with it before trusting it: `Manifest::parse`, then
//! `Manifest::validate` against the layout. Neither may panic; a manifest that validates
//! must write out and read back as the same manifest and still validate.

#![no_main]

use hakube_render::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(manifest) = Manifest::parse(text) else { return };
    if manifest.validate().is_err() {
        return;
    }
    for entry in manifest.files.values() {
        let _ = hakube_render::manifest::parse_mode(&entry.mode);
    }
    for node in manifest.nodes.keys() {
        let _ = manifest.files_for(node).count();
    }
    let bytes = manifest.to_bytes();
    let again = Manifest::parse(std::str::from_utf8(&bytes).expect("written as UTF-8")).expect("reads back");
    again.validate().expect("still valid");
    assert_eq!(again.to_bytes(), bytes, "not byte-stable");
});
