//! `hakube validate` and `hakube schema` through the real binary: exit codes and
//! messages that name the place (file:line:column and JSON path).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn hakube(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hakube")).args(args).output().expect("failed to run hakube")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Writes `text` to a temp file named cluster.json and validates it.
fn validate_text(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.json");
    std::fs::write(&path, text).unwrap();
    let out = hakube(&["validate", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "cluster.json");
    assert!(!stderr.contains("panicked"), "hakube panicked:\n{stderr}");
    (out.status.code().expect("hakube was killed by a signal"), stderr)
}

const VALID: &str = r#"{
  "masterLoadBalancerAddress": "10.0.0.100",
  "masters": [
    { "nodeName": "m0", "privateIP": "10.0.0.10" },
    { "nodeName": "m1", "privateIP": "10.0.0.11" },
    { "nodeName": "m2", "privateIP": "10.0.0.12" }
  ],
  "workers": [
    { "nodeName": "w0", "privateIP": "10.0.0.20" }
  ]
}
"#;

fn assert_invalid(text: &str, expected: &[&str]) -> String {
    let (code, stderr) = validate_text(text);
    assert_eq!(code, 1, "expected exit 1, stderr:\n{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "stderr lacks {e:?}:\n{stderr}");
    }
    stderr
}

#[test]
fn a_valid_definition_exits_zero() {
    let (code, stderr) = validate_text(VALID);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn broken_json_names_line_and_column() {
    let text = VALID.replace("\"m1\",", "\"m1\"");
    assert_invalid(&text, &["cluster.json:5:24: error:", "expected `,` or `}`"]);
}

#[test]
fn a_wrong_type_names_the_path() {
    let text = VALID.replace("\"10.0.0.20\"", "10");
    assert_invalid(
        &text,
        &["cluster.json:9:38: error: workers[0].privateIP: invalid type: integer `10`, expected a string"],
    );
}

#[test]
fn an_unknown_field_is_an_error_with_a_suggestion() {
    let text = VALID
        .replace("\"nodeName\": \"m1\"", "\"nodeNmae\": \"m1\", \"nodeName\": \"m1\"")
        .replace("\"masters\"", "\"kubernetesVersoin\": \"1.36.1\", \"masters\"");
    assert_invalid(
        &text,
        &[
            "cluster.json:5:7: error: masters[1].nodeNmae: unknown field `nodeNmae`",
            "help: did you mean `nodeName`?",
            "cluster.json:3:3: error: kubernetesVersoin: unknown field `kubernetesVersoin`",
            "help: did you mean `kubernetesVersion`?",
        ],
    );
}

#[test]
fn node_names_with_shell_metacharacters_or_spaces_are_refused() {
    let text = VALID.replace("\"m1\"", "\"m1;reboot\"").replace("\"w0\"", "\"w 0\"");
    assert_invalid(
        &text,
        &[
            "cluster.json:5:19: error: masters[1].nodeName: \"m1;reboot\" is not a valid node name",
            "cluster.json:9:19: error: workers[0].nodeName: \"w 0\" is not a valid node name",
            "RFC 1123",
        ],
    );
}

#[test]
fn a_duplicate_ip_is_refused_and_both_places_named() {
    let text = VALID.replace("10.0.0.20", "10.0.0.11");
    assert_invalid(
        &text,
        &["cluster.json:9:38: error: workers[0].privateIP: duplicate privateIP 10.0.0.11: also used by masters[1]"],
    );
}

#[test]
fn overlapping_pod_and_service_networks_are_refused() {
    let text = VALID
        .replace("\"masters\"", "\"podNetworkCIDR\": \"10.96.0.0/16\", \"serviceCIDR\": \"10.96.0.0/12\", \"masters\"");
    assert_invalid(
        &text,
        &["cluster.json:3:52: error: serviceCIDR: serviceCIDR 10.96.0.0/12 overlaps podNetworkCIDR 10.96.0.0/16"],
    );
}

#[test]
fn three_masters_without_a_load_balancer_are_refused() {
    let text = VALID.replace("\"masterLoadBalancerAddress\": \"10.0.0.100\",", "");
    assert_invalid(
        &text,
        &[
            "cluster.json:1:1: error: masterLoadBalancerAddress: masterLoadBalancerAddress is required with 3 masters",
            "forwards TCP 6443",
        ],
    );
}

#[test]
fn an_unsupported_version_says_which_are_supported() {
    let text = VALID.replace("\"masters\"", "\"kubernetesVersion\": \"1.9.12\", \"masters\"");
    assert_invalid(
        &text,
        &[
            "cluster.json:3:24: error: kubernetesVersion: Kubernetes 1.9.12 is not supported",
            "hakube supports 1.31.x to 1.37.x",
        ],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = VALID.replace("\"m1\"", "\"M1\"").replace("10.0.0.20", "10.0.0.10").replace(
        "\"masterLoadBalancerAddress\": \"10.0.0.100\",",
        "\"kubernetesVersion\": \"2.0.0\", \"hooks\": {\"networkProvider\": \"calicoo\"},",
    );
    let stderr = assert_invalid(
        &text,
        &[
            "masters[1].nodeName",
            "workers[0].privateIP: duplicate privateIP",
            "masterLoadBalancerAddress is required",
            "Kubernetes 2.0.0 is not supported",
            "there is no networkProvider hook named \"calicoo\"",
            "did you mean `calico`?",
        ],
    );
    assert!(stderr.contains("5 errors"), "{stderr}");
}

#[test]
fn few_or_even_masters_warn_but_pass() {
    let single = r#"{"masters": [{"nodeName": "m0", "privateIP": "10.0.0.10"}]}"#;
    let (code, stderr) = validate_text(single);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("warning: masters: 1 master cannot survive the loss of one"), "{stderr}");
    let four = VALID.replace("{ \"nodeName\": \"m2\", \"privateIP\": \"10.0.0.12\" }", "{ \"nodeName\": \"m2\", \"privateIP\": \"10.0.0.12\" }, { \"nodeName\": \"m3\", \"privateIP\": \"10.0.0.13\" }");
    let (code, stderr) = validate_text(&four);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("4 masters tolerate no more failures than 3"), "{stderr}");
}

#[test]
fn a_hakube_installer_definition_validates_unchanged_with_warnings() {
    let path = repo_root().join("crates/hakube/tests/fixtures/hakube-installer-aws.json");
    let out = hakube(&["validate", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for field in [
        "dockerVersion",
        "etcdVersion",
        "etcdPKIDir",
        "etcdCACommonName",
        "etcdClientCommonName",
        "etcdCACertExpiry",
        "sshKeysDir",
        "scriptsDir",
    ] {
        assert!(stderr.contains(&format!("warning: {field}: ")), "no warning for {field}:\n{stderr}");
    }
    // Its legacy hook names are accepted: `aws.sh.j2` and `weave`.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"aws.sh.j2\"") && text.contains("\"weave\""));
}

#[test]
fn the_2018_aliases_map_onto_current_fields() {
    let text = VALID
        .replace("\"masterLoadBalancerAddress\"", "\"masterFQDN\": \"api.example.com\", \"masterLoadBalancerFQDN\"");
    let (code, stderr) = validate_text(&text);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("warning: masterFQDN: renamed"), "{stderr}");
    assert!(stderr.contains("warning: masterLoadBalancerFQDN: renamed"), "{stderr}");
}

#[test]
fn every_sample_validates() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_root().join("samples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let out = hakube(&["validate", path.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(0), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            seen += 1;
        }
    }
    assert!(seen >= 4, "expected at least four samples, found {seen}");
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let out = hakube(&["validate", "/nonexistent/cluster.json"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed to read cluster definition /nonexistent/cluster.json"), "{stderr}");
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = hakube(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(repo_root().join("schema/cluster.schema.json")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "schema/cluster.schema.json is stale: run `cargo xtask codegen`"
    );
}

#[test]
fn an_empty_login_key_path_is_refused_on_a_node_too() {
    let text = VALID.replace(
        r#""nodeName": "w0", "privateIP": "10.0.0.20""#,
        r#""nodeName": "w0", "privateIP": "10.0.0.20", "sshLoginKey": """#,
    );
    assert_invalid(&text, &["cluster.json:9:66: error: workers[0].sshLoginKey: an empty path names no key"]);
}

#[test]
fn an_external_etcd_that_kubeadm_would_refuse_is_refused_at_validate_time() {
    // kubeadm 1.36's ExternalEtcdVersion preflight check needs 3.5.24 (constants.go
    // MinExternalEtcdVersion); Debian 12 ships 3.4.23.
    let external = |etcd: &str| VALID.replacen('{', &format!("{{ \"etcd\": {etcd},"), 1);
    assert_invalid(
        &external(
            r#"{ "topology": "external", "version": "3.4.23", "sha256": { "amd64": "0000000000000000000000000000000000000000000000000000000000000000" } }"#,
        ),
        &["etcd.version", "kubeadm 1.36 refuses external etcd 3.4.23", "3.5.24"],
    );
    // A release hakube has no published sums for needs them.
    assert_invalid(&external(r#"{ "topology": "external", "version": "3.6.99" }"#), &["etcd.sha256", "SHA256SUMS"]);
    assert_invalid(
        &external(r#"{ "topology": "external", "version": "3.6.99", "sha256": { "s390x": "00", "amd64": "XYZ" } }"#),
        &["etcd.sha256.s390x", "etcd.sha256.amd64", "not a sha256"],
    );
    // The default pairing for 1.36 validates without any of it.
    let (code, stderr) = validate_text(&external(r#"{ "topology": "external" }"#));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn mirrors_must_be_urls_and_registries_hosts() {
    let text = VALID.replacen(
        '{',
        r#"{ "downloads": { "mirror": "ftp://files.example" }, "containerRuntime": { "registryMirrors": { "registry.k8s.io": "not a url", "bad host!": "https://m.example" } },"#,
        1,
    );
    assert_invalid(
        &text,
        &[
            "downloads.mirror",
            "is not an http(s) URL",
            "containerRuntime.registryMirrors.registry.k8s.io",
            "\"bad host!\" is not a registry host",
        ],
    );
}

#[test]
fn download_pins_and_add_on_releases_are_checked() {
    let with = |fields: &str| VALID.replacen('{', &format!("{{ {fields},"), 1);
    // A pin that is no sha256 is an error; one for a file the cluster never downloads warns.
    let stderr = assert_invalid(
        &with(
            r#""downloads": { "sha256": { "https://example.com/other.yaml": "0000000000000000000000000000000000000000000000000000000000000000", "https://raw.githubusercontent.com/projectcalico/calico/v3.32.1/manifests/operator-crds.yaml": "ABC" } }"#,
        ),
        &["downloads.sha256", "\"ABC\" is not a sha256", "this cluster downloads no https://example.com/other.yaml"],
    );
    assert!(stderr.contains("warning"), "{stderr}");
    // Weave's last release states no current Kubernetes: accepted, with a warning that says why.
    let (code, stderr) = validate_text(&with(r#""hooks": { "networkProvider": "weave" }"#));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("hooks.networkProvider") && stderr.contains("Weave Net is unmaintained"), "{stderr}");
    // Weave's manifest has no known sum: the download is unpinned, and validation says so.
    assert!(stderr.contains("weave-daemonset-k8s.yaml is not pinned"), "{stderr}");
    // No Cilium release states Kubernetes 1.36 (cilium/cilium compatibility.rst): a warning.
    let (code, stderr) = validate_text(&with(r#""hooks": { "networkProvider": "cilium" }"#));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("no cilium release states support for Kubernetes 1.36"), "{stderr}");
    // A minor hakube pairs no Calico with needs hooks.networkProviderVersion; a tag that could
    // break a URL is refused.
    assert_invalid(
        &with(r#""kubernetesVersion": "1.33.5""#),
        &["hooks.networkProvider", "hakube pairs no calico release with Kubernetes 1.33", "networkProviderVersion"],
    );
    assert_invalid(
        &with(r#""hooks": { "networkProviderVersion": "v1/../../x" }"#),
        &["hooks.networkProviderVersion", "is not a release tag"],
    );
    // AWS: published cloud controller manager tags per minor; none known for 1.32.
    assert_invalid(
        &with(
            r#""kubernetesVersion": "1.32.3", "hooks": { "cloudProvider": "aws", "networkProviderVersion": "v3.29.7" }"#,
        ),
        &[
            "hooks.cloudProvider",
            "no published aws cloud controller manager for Kubernetes 1.32",
            "cloudProviderVersion",
        ],
    );
    // The default Calico of a supported minor validates clean: its manifests are pinned.
    let (code, stderr) = validate_text(VALID);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("not pinned"), "{stderr}");
}

#[test]
fn list_downloads_prints_every_file_with_its_pin_and_the_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.json");
    let text = VALID.replacen(
        '{',
        r#"{ "etcd": { "topology": "external" }, "hooks": { "networkProvider": "flannel", "cloudProvider": "aws" }, "downloads": { "sha256": { "https://raw.githubusercontent.com/flannel-io/flannel/v0.28.9/Documentation/kube-flannel.yml": "1111111111111111111111111111111111111111111111111111111111111111" } },"#,
        1,
    );
    std::fs::write(&path, text).unwrap();
    let out = hakube(&[
        "render",
        "--list-downloads",
        path.to_str().unwrap(),
        "--assets-dir",
        dir.path().join("assets").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // etcd's archives with the sums of etcd's SHA256SUMS (kubespray checksums.yml).
    assert!(stdout.contains("file https://github.com/etcd-io/etcd/releases/download/v3.6.14/etcd-v3.6.14-linux-amd64.tar.gz sha256:ffe840ff9295808e88cce2794a18a5ac87f12a5203c8314d0bf6aa119b41bac5 etcd\n"), "{stdout}");
    // The definition's pin wins over hakube's table.
    assert!(
        stdout.contains(
            "kube-flannel.yml sha256:1111111111111111111111111111111111111111111111111111111111111111 network\n"
        ),
        "{stdout}"
    );
    // The AWS controller at the tag that was published for 1.36 (v1.36.0's build failed,
    // kubernetes/k8s.io PR #9796), never a guessed v1.36.0.
    assert!(stdout.contains("image registry.k8s.io/provider-aws/cloud-controller-manager:v1.36.1\n"), "{stdout}");
    assert!(!stdout.contains("cloud-controller-manager:v1.36.0"), "{stdout}");
    assert!(stdout.contains("image registry.k8s.io/kube-apiserver:v1.36.4\n"), "{stdout}");
    assert!(stdout.contains("repo apt https://pkgs.k8s.io/core:/stable:/v1.36/deb/ kubeadm=1.36.4-*"), "{stdout}");
    // Nothing was written.
    assert!(!dir.path().join("assets").exists());
}

#[test]
fn a_pinned_containerd_that_containerd_does_not_list_warns_and_the_source_is_an_enum() {
    let with = |runtime: &str| VALID.replacen('{', &format!(r#"{{ "containerRuntime": {runtime},"#), 1);
    // Listed for 1.36 (containerd RELEASES.md: 2.3.0+, 2.2.0+): clean.
    let (code, stderr) = validate_text(&with(r#"{ "version": "2.2.1-1~debian.12~bookworm" }"#));
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("containerRuntime"), "{stderr}");
    // Debian 12's containerd on 1.36: a warning that the runtime step will fail, naming the
    // supported releases and where they come from.
    let (code, stderr) = validate_text(&with(r#"{ "source": "distribution", "version": "1.6.20~ds1-1+deb12u3" }"#));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: containerRuntime.version: containerd 1.6.20~ds1-1+deb12u3 is not supported for Kubernetes 1.36; the runtime step will fail"),
        "{stderr}"
    );
    assert!(
        stderr.contains("containerd lists 2.3.0+, 2.2.0+ for Kubernetes 1.36 (containerd RELEASES.md)"),
        "{stderr}"
    );
    assert!(stderr.contains("containerRuntime.source \"docker\" has them"), "{stderr}");
    // 1.7 on 1.36: containerd lists it for 1.35 only; the runtime step warns.
    let (code, stderr) = validate_text(&with(r#"{ "version": "1.7.28" }"#));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("containerd does not list 1.7.28 for Kubernetes 1.36; the runtime step will warn"),
        "{stderr}"
    );
    // A wrong source is serde's error, naming the two values.
    let stderr =
        assert_invalid(&with(r#"{ "source": "debian" }"#), &["containerRuntime.source", "unknown variant `debian`"]);
    assert!(stderr.contains("docker") && stderr.contains("distribution"), "{stderr}");
}

#[test]
fn list_downloads_names_dockers_apt_repository_or_the_distributions_containerd() {
    let list = |runtime: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        std::fs::write(&path, VALID.replacen('{', &format!(r#"{{ "containerRuntime": {runtime},"#), 1)).unwrap();
        let out = hakube(&["render", "--list-downloads", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let docker = list(r#"{ "version": "2.2.1" }"#);
    for repo in [
        "repo apt https://download.docker.com/linux/debian/ containerd.io=2.2.1*\n",
        "repo apt https://download.docker.com/linux/ubuntu/ containerd.io=2.2.1*\n",
        "repo dnf https://download.docker.com/linux/centos/ containerd.io-2.2.1\n",
    ] {
        assert!(docker.contains(repo), "{docker}");
    }
    assert!(!docker.contains("the distribution's"), "{docker}");
    let distribution = list(r#"{ "source": "distribution" }"#);
    assert!(distribution.contains("repo apt and dnf containerd (the distribution's)\n"), "{distribution}");
    assert!(!distribution.contains("download.docker.com"), "{distribution}");
}

/// Issue 11, item 1: OpenSSH clients before 10.3 build a ProxyCommand from `-J` and run it
/// through /bin/sh, so a bastion value with shell syntax ran commands on the operator's
/// machine. Every value that reaches ssh's command line is parsed by one rule and refused
/// at validate time with its JSON path.
#[test]
fn a_bastion_or_ssh_value_with_shell_syntax_is_refused_at_validate_time() {
    let with = |fields: &str| VALID.replacen('{', &format!("{{ {fields},"), 1);
    let stderr = assert_invalid(
        &with(r#""sshBastion": "x$(cd;cd${IFS}..;id>canary)""#),
        &["cluster.json:1:17: error: sshBastion: ", "ProxyJump", "[user@]host[:port]"],
    );
    assert!(stderr.contains("x$(cd;cd${IFS}..;id>canary)"), "{stderr}");
    // Well-formed hops pass: user, RFC 1123 names, IPv4 and bracketed IPv6, ports.
    let (code, stderr) =
        validate_text(&with(r#""sshBastion": "jump@bastion.example.com:2222,10.0.0.5,admin@[2001:db8::1]:22""#));
    assert_eq!(code, 0, "{stderr}");
    // Each bad hop is named, with what to write instead.
    for (bastion, why) in [
        ("bastion,,other", "hop 2 is empty"),
        ("bastion:0", "port"),
        ("bastion:+22", "port"),
        ("bastion:99999", "port"),
        ("-oProxyCommand=id", "host"),
        ("us;er@bastion", "user"),
        ("2001:db8::1", "brackets"),
        ("ssh://bastion", "host"),
        ("bastion\n", "host"),
    ] {
        let stderr =
            assert_invalid(&with(&format!("\"sshBastion\": {}", serde_json::json!(bastion))), &["sshBastion: "]);
        assert!(stderr.contains(why), "{bastion:?}: lacks {why:?}:\n{stderr}");
    }
    // Key paths must not start with `-` nor hold a NUL or a newline.
    for key in ["-oProxyCommand=id", "/home/me/key\nProxyCommand id", "/home/me/\u{0}key"] {
        assert_invalid(&with(&format!("\"sshLoginKey\": {}", serde_json::json!(key))), &["sshLoginKey: "]);
        let node = VALID.replace(
            r#""nodeName": "w0", "privateIP": "10.0.0.20""#,
            &format!(r#""nodeName": "w0", "privateIP": "10.0.0.20", "sshLoginKey": {}"#, serde_json::json!(key)),
        );
        assert_invalid(&node, &["workers[0].sshLoginKey: "]);
    }
    // A node's login user follows the cluster's rule.
    let node = VALID.replace(
        r#""nodeName": "w0", "privateIP": "10.0.0.20""#,
        r#""nodeName": "w0", "privateIP": "10.0.0.20", "sshLoginUser": "-oProxyCommand=id""#,
    );
    assert_invalid(&node, &["workers[0].sshLoginUser: \"-oProxyCommand=id\" is not a valid login name"]);
}

/// Issue 11 (validate parts) and item 12: values that passed validation and then failed
/// at render or leaked, refused at validate time with their JSON path.
#[test]
fn urls_names_addresses_and_enum_types_are_refused_where_they_are_wrong() {
    let with = |fields: &str| VALID.replacen('{', &format!("{{ {fields},"), 1);
    // A control character in a URL (the url crate drops tabs and newlines, render did not).
    for (field, json) in [
        ("packageRepository.url", r#""packageRepository": { "url": "https://m.example/k8s\n" }"#),
        ("downloads.mirror", r#""downloads": { "mirror": "https://m.example/\tx" }"#),
        (
            "containerRuntime.registryMirrors.registry.k8s.io",
            r#""containerRuntime": { "registryMirrors": { "registry.k8s.io": "https://m.example:5000\r" } }"#,
        ),
    ] {
        assert_invalid(&with(json), &[&format!("error: {field}: "), "control character"]);
    }
    // Credentials in any URL field would be written into boot.sh and a world-readable
    // package source on the nodes.
    for (field, json) in [
        ("packageRepository.url", r#""packageRepository": { "url": "https://user:secret@m.example/k8s" }"#),
        ("downloads.mirror", r#""downloads": { "mirror": "https://token@m.example/" }"#),
        (
            "containerRuntime.registryMirrors.docker.io",
            r#""containerRuntime": { "registryMirrors": { "docker.io": "https://u:p@m.example:5000" } }"#,
        ),
    ] {
        let stderr = assert_invalid(&with(json), &[&format!("error: {field}: "), "credentials", "auth.conf.d"]);
        assert!(!stderr.contains("secret@"), "the secret is echoed: {stderr}");
    }
    // External etcd: a master's name is its etcd certificates' common name, at most 64
    // characters (RFC 5280 ub-common-name).
    let long = format!("m{}.{}", "0".repeat(30), "1".repeat(34));
    let text = with(r#""etcd": { "topology": "external" }"#).replace("\"m1\"", &format!("\"{long}\""));
    assert_invalid(&text, &["error: masters[1].nodeName: ", "64", "RFC 5280"]);
    let (code, stderr) = validate_text(&VALID.replace("\"m1\"", &format!("\"{long}\"")));
    assert_eq!(code, 0, "stacked etcd: kubeadm names the certificates: {stderr}");
    // A publicIP that is another node's privateIP.
    let text = VALID.replace(
        r#""nodeName": "w0", "privateIP": "10.0.0.20""#,
        r#""nodeName": "w0", "privateIP": "10.0.0.20", "publicIP": "10.0.0.11""#,
    );
    assert_invalid(&text, &["error: workers[0].publicIP: ", "10.0.0.11", "masters[1]"]);
    let own = VALID.replace(
        r#""nodeName": "w0", "privateIP": "10.0.0.20""#,
        r#""nodeName": "w0", "privateIP": "10.0.0.20", "publicIP": "10.0.0.20""#,
    );
    assert_eq!(validate_text(&own).0, 0, "its own address");
    // An enum of the wrong JSON type is a type error at its field naming the values, not
    // a syntax error.
    let stderr = assert_invalid(
        &with(r#""hostKeyPolicy": 5"#),
        &["cluster.json:1:20: error: hostKeyPolicy: ", "invalid type", "\"strict\"", "\"accept-new\""],
    );
    assert!(!stderr.contains("plain JSON"), "{stderr}");
    assert_invalid(
        &VALID.replace(
            r#""nodeName": "w0", "privateIP": "10.0.0.20""#,
            r#""nodeName": "w0", "privateIP": "10.0.0.20", "taints": [ { "key": "k", "effect": true } ]"#,
        ),
        &["workers[0].taints[0].effect: ", "invalid type", "\"NoSchedule\""],
    );
}

/// Go durations: Go's own micro signs, fractions and odd bytes are diagnostics at the
/// field, never a panic (the parser hakube used before panicked on any non-ASCII unit).
#[test]
fn go_durations_are_diagnostics_never_panics() {
    let with = |fields: &str| VALID.replacen('{', &format!("{{ {fields},"), 1);
    for (field, json) in [
        ("bootstrapToken.ttl", r#""bootstrapToken": { "ttl": "1µs" }"#),
        ("bootstrapToken.ttl", r#""bootstrapToken": { "ttl": "1μs" }"#),
        ("pki.caCertificateValidityPeriod", r#""pki": { "caCertificateValidityPeriod": "500ms" }"#),
    ] {
        assert_invalid(&with(json), &[&format!("error: {field}: "), "shorter than a second"]);
    }
    for (field, json, says) in [
        ("bootstrapToken.ttl", r#""bootstrapToken": { "ttl": "1µ" }"#, r#"unknown unit "µ""#),
        ("bootstrapToken.ttl", r#""bootstrapToken": { "ttl": "24 h" }"#, "not a Go duration"),
        ("bootstrapToken.ttl", r#""bootstrapToken": { "ttl": "1🦀h" }"#, "not a Go duration"),
        ("pki.certificateValidityPeriod", r#""pki": { "certificateValidityPeriod": "8760" }"#, "missing unit"),
        ("pki.certificateValidityPeriod", r#""pki": { "certificateValidityPeriod": "9999999h" }"#, "invalid duration"),
        ("pki.caCertificateValidityPeriod", r#""pki": { "caCertificateValidityPeriod": "-1h" }"#, "longer than zero"),
    ] {
        assert_invalid(&with(json), &[&format!("error: {field}: "), says]);
    }
    // Fractions and micro-second parts that add up to a valid duration are accepted.
    let (code, stderr) = validate_text(&with(r#""bootstrapToken": { "ttl": "1.5h30m1000000µs" }"#));
    assert_eq!(code, 0, "{stderr}");
}

/// A NUL or any other control character in a value that reaches ssh's command line or a
/// file name (the login user, the key path, the bastion, the addresses ssh connects to,
/// node names, which name files and log files, hook names) is an error at its JSON path:
/// a NUL ends a C string, so ssh (or open(2)) would see a different value from the one
/// validated.
#[test]
fn control_characters_in_ssh_values_and_file_names_are_refused() {
    let with = |fields: &str| VALID.replacen('{', &format!("{{ {fields},"), 1);
    let node = |fields: &str| {
        VALID.replace(
            r#""nodeName": "w0", "privateIP": "10.0.0.20""#,
            &format!(r#""nodeName": "w0", "privateIP": "10.0.0.20", {fields}"#),
        )
    };
    for bad in [r"\u0000", r"\n", r"\u001b[31m", r"\u007f", r"\u0085", r"\t"] {
        let cases = [
            ("sshLoginUser", with(&format!(r#""sshLoginUser": "ubuntu{bad}""#))),
            ("sshLoginKey", with(&format!(r#""sshLoginKey": "~/.ssh/id{bad}""#))),
            ("sshBastion", with(&format!(r#""sshBastion": "jump@bastion{bad}.example.com""#))),
            ("sshBastion", with(&format!(r#""sshBastion": "ju{bad}mp@bastion.example.com:22""#))),
            ("workers[0].sshLoginUser", node(&format!(r#""sshLoginUser": "{bad}admin""#))),
            ("workers[0].sshLoginKey", node(&format!(r#""sshLoginKey": "/keys/w0{bad}""#))),
            ("workers[0].publicIP", node(&format!(r#""publicIP": "192.0.2.1{bad}""#))),
            ("workers[0].privateIP", VALID.replace(r#""10.0.0.20""#, &format!(r#""10.0.0.20{bad}""#))),
            ("workers[0].nodeName", VALID.replace(r#""w0""#, &format!(r#""w0{bad}""#))),
            ("hooks.preinstall", with(&format!(r#""hooks": {{ "preinstall": "none{bad}" }}"#))),
        ];
        for (path, text) in cases {
            assert_invalid(&text, &[&format!("error: {path}: ")]);
        }
    }
}
