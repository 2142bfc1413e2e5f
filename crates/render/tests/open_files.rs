//! Writing the assets of a large cluster holds a bounded number of directories open: it
//! kept one descriptor per directory (two per node) and failed with "Too many open files"
//! at 10,000 nodes under a limit of 20,000, and at 500 under the common soft limit of 1024.
//!
//! The limit is the whole process's, so this file holds one test.

use std::time::{Duration, SystemTime};

use hakube_cluster::HookCatalog;
use hakube_render::assets;
use hakube_render::render::{self, Options};
use hakube_render::Templates;

#[test]
fn many_nodes_render_under_a_small_open_files_limit() {
    let workers = 600;
    let nodes: Vec<String> = (0..workers)
        .map(|i| format!(r#"{{ "nodeName": "w{i}", "privateIP": "10.1.{}.{}" }}"#, i / 200, i % 200 + 1))
        .collect();
    let text = format!(
        r#"{{ "masters": [ {{ "nodeName": "m0", "privateIP": "10.0.0.10" }} ], "workers": [ {} ] }}"#,
        nodes.join(", ")
    );
    let templates = Templates::new(None).unwrap();
    let catalog: HookCatalog = templates.hook_catalog();
    let def = hakube_cluster::load(&text, "big.json", &catalog).unwrap().definition;
    let options = Options { rotate_secrets: false, now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000) };
    let dir = tempfile::tempdir().unwrap();
    let existing = assets::read_existing(dir.path()).unwrap();
    let set = render::render(&def, &existing, &templates, &options).unwrap();
    // 1202 directories hold files (nodes/<node>/ and ssh/host-keys/<node>/ of each node).
    let limit = 512;
    let maximum = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: Some(limit), maximum },
    )
    .unwrap();
    let summary = assets::write(dir.path(), &set, &existing).expect("written under 512 open files");
    assert_eq!(summary.created.len(), set.files.len());
    assert!(dir.path().join(format!("nodes/w{}/boot.sh", workers - 1)).is_file());
    // Re-reading and rewriting them (nothing changes) stays under the limit too.
    let existing = assets::read_existing(dir.path()).unwrap();
    let again = assets::write(dir.path(), &set, &existing).unwrap();
    assert!(again.created.is_empty() && again.changed.is_empty(), "{:?}", again.changed);
    assert!(assets::verify(dir.path()).is_ok());
}
