//! `boot.sh forget NODE` matches the node's etcd member by name literally (issue 11): the
//! name was interpolated into a bash regex, where `.` matches any character, so forgetting
//! `m.1` could remove the member of `mx1`. The rendered function runs in bash here, with
//! `etcd_api` and `kubectl` standing in for etcd's JSON gateway and the API server.

use std::path::Path;
use std::process::Command;

use hakube_render::templates::Templates;

/// etcd's JSON gateway's member list (`"ID":"...", "name":"..."`, etcd api/etcdserverpb
/// Member): `mx1` first, so that a regex `m.1` finds it before `m.1`.
const MEMBERS: &str = r#"{"header":{"cluster_id":"1"},"members":[{"ID":"111", "name":"mx1","peerURLs":["https://10.0.0.13:2380"]},{"ID":"222", "name":"m.1","peerURLs":["https://10.0.0.11:2380"]},{"ID":"333","name":"m0"}]}"#;

/// Runs `forget_run NODE` of master m0's script; returns what etcd_api was asked to do.
fn forget(script: &Path, node: &str) -> (bool, String) {
    let out = Command::new("bash")
        .args([
            "-c",
            r#"source "$1"
               kubectl() { :; }
               calls=$3; etcd_api() { printf '%s %s\n' "$1" "$2" >>"$calls"; [[ $1 != */list ]] || printf '%s' "$MEMBERS"; }
               forget_run "$2""#,
            "bash",
            script.to_str().unwrap(),
            node,
            script.with_extension("calls").to_str().unwrap(),
        ])
        .env("MEMBERS", MEMBERS)
        .env("LC_ALL", "C")
        .output()
        .expect("bash runs");
    let calls = std::fs::read_to_string(script.with_extension("calls")).unwrap_or_default();
    let _ = std::fs::remove_file(script.with_extension("calls"));
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), format!("{calls}{output}"))
}

#[test]
fn forget_removes_exactly_the_named_member() {
    let templates = Templates::new(None).unwrap();
    let text = r#"{ "masterLoadBalancerAddress": "10.0.0.100",
        "masters": [ { "nodeName": "m0", "privateIP": "10.0.0.10" }, { "nodeName": "m1", "privateIP": "10.0.0.11" },
                     { "nodeName": "m2", "privateIP": "10.0.0.12" } ] }"#;
    let def = hakube_cluster::load(text, "test.json", &templates.hook_catalog()).unwrap().definition;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("boot.sh");
    std::fs::write(&script, templates.boot_script(&def, "m0").unwrap()).unwrap();

    // `m.1` is the member 222; the regex `m.1` also matches `mx1` (111), listed first.
    let (ok, calls) = forget(&script, "m.1");
    assert!(ok, "{calls}");
    assert!(calls.contains(r#"/v3/cluster/member/remove {"ID":"222"}"#), "{calls}");
    assert!(!calls.contains(r#""ID":"111""#), "removed mx1's member: {calls}");
    // A name that is a prefix, or a pattern, of a member's removes nothing.
    for node in ["m", "m.*", "x1"] {
        let (ok, calls) = forget(&script, node);
        assert!(ok, "{node}: {calls}");
        assert!(!calls.contains("member/remove"), "{node}: {calls}");
        assert!(calls.contains("is not an etcd member"), "{node}: {calls}");
    }
}
