//! Host keys under `hostKeyPolicy: accept-new` (issue 11, item 6): install checks every key
//! render pinned strictly, so render pins only keys the machines can have. accept-new says
//! none is installed on them: render makes no host key, and one the assets already hold (a
//! machine that got it earlier) stays and stays pinned. Under strict every node gets one.

use std::time::{Duration, SystemTime};

use hakube_render::assets;
use hakube_render::layout;
use hakube_render::render::{self, Options};
use hakube_render::templates::Templates;

fn definition(templates: &Templates, policy: &str) -> hakube_cluster::ClusterDefinition {
    let text = format!(
        r#"{{ "hostKeyPolicy": "{policy}", "masters": [ {{ "nodeName": "m0", "privateIP": "10.0.0.10" }} ],
             "workers": [ {{ "nodeName": "w0", "privateIP": "10.0.0.20", "publicIP": "203.0.113.20" }} ] }}"#
    );
    hakube_cluster::load(&text, "test.json", &templates.hook_catalog()).unwrap().definition
}

#[test]
fn accept_new_renders_no_host_key_and_keeps_the_ones_there_are() {
    let templates = Templates::new(None).unwrap();
    let options = Options { rotate_secrets: false, now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000) };
    let dir = tempfile::tempdir().unwrap();
    let render = |policy: &str| {
        let existing = assets::read_existing(dir.path()).unwrap();
        let set = render::render(&definition(&templates, policy), &existing, &templates, &options).unwrap();
        assets::write(dir.path(), &set, &existing).unwrap();
        set
    };
    let set = render("accept-new");
    for node in ["m0", "w0"] {
        assert!(!set.files.contains_key(&layout::host_key(node)), "{node}: a host key was made under accept-new");
    }
    assert_eq!(set.files[layout::KNOWN_HOSTS].bytes, b"", "nothing is pinned");
    // A key already in the assets (w0's machine got it) stays, and stays pinned.
    let set = render("strict");
    let w0 = set.files[&layout::host_key("w0")].bytes.clone();
    std::fs::remove_dir_all(dir.path().join("ssh/host-keys/m0")).unwrap();
    let set = render("accept-new");
    assert_eq!(set.files[&layout::host_key("w0")].bytes, w0);
    assert!(!set.files.contains_key(&layout::host_key("m0")));
    let pins = String::from_utf8(set.files[layout::KNOWN_HOSTS].bytes.clone()).unwrap();
    assert_eq!(pins.lines().count(), 1, "{pins}");
    assert!(pins.starts_with("203.0.113.20,10.0.0.20,w0 ssh-ed25519 "), "{pins}");
}
