//! The rendered boot scripts, checked with real tools: `shellcheck -s bash -S style` finds
//! nothing in any node's script of any sample or option combination, and bash itself runs
//! the parts that can run here (argument handling, quoting of hostile values, the token
//! substitution, the containerd configuration filter, the failure marker).
//!
//! Needs the Debian package `shellcheck` (and bash).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hakube_cluster::ClusterDefinition;
use hakube_render::kubeadm::{self, Document};
use hakube_render::templates::{boot_steps, Templates};

const HASH: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(templates: &Templates, text: &str, origin: &str) -> ClusterDefinition {
    match hakube_cluster::load(text, origin, &templates.hook_catalog()) {
        Ok(loaded) => loaded.definition,
        Err(report) => panic!("{origin} does not validate:\n{report}"),
    }
}

/// A definition with three masters and two workers, plus `extra` top-level fields.
fn definition(templates: &Templates, extra: &str) -> ClusterDefinition {
    let text = format!(
        r#"{{
          "clusterName": "test",
          "masterLoadBalancerAddress": "10.0.0.100",
          "kubernetesVersion": "1.36.4",
          "masters": [
            {{ "nodeName": "m0", "privateIP": "10.0.0.10" }},
            {{ "nodeName": "m1", "privateIP": "10.0.0.11" }},
            {{ "nodeName": "m2", "privateIP": "10.0.0.12" }}
          ],
          "workers": [
            {{ "nodeName": "w0", "privateIP": "10.0.0.20",
               "labels": {{ "node-role.kubernetes.io/ingress": "", "topology.kubernetes.io/zone": "a" }},
               "taints": [ {{ "key": "dedicated", "value": "ingress", "effect": "NoSchedule" }} ] }},
            {{ "nodeName": "w1", "privateIP": "10.0.0.21" }}
          ]
          {extra}
        }}"#
    );
    load(templates, &text, "test.json")
}

fn write_script(dir: &Path, name: &str, script: &str) -> PathBuf {
    let path = dir.join(format!("{name}.sh"));
    std::fs::write(&path, script).unwrap();
    path
}

/// shellcheck's findings for `path`, empty when there are none.
fn shellcheck(path: &Path) -> String {
    let out = Command::new("shellcheck")
        .args(["-s", "bash", "-S", "style"])
        .arg(path)
        .output()
        .expect("shellcheck runs (install the Debian package shellcheck)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        assert!(text.trim().is_empty(), "shellcheck succeeded but printed:\n{text}");
    } else {
        assert!(!text.trim().is_empty(), "shellcheck failed without a finding: {:?}", out.status);
    }
    text
}

/// Renders every node's script and collects shellcheck's findings.
/// Shellchecks every node's boot script, as rendered and as rendered with an upgrade from
/// the previous minor (the upgrade steps).
fn check_all(templates: &Templates, def: &ClusterDefinition, label: &str, dir: &Path) -> Vec<String> {
    let mut findings = Vec::new();
    let to = hakube_cluster::Version::parse(&def.kubernetes_version).expect("a version");
    let from = hakube_cluster::Version { minor: to.minor - 1, patch: 0, ..to };
    let upgrade = hakube_render::templates::Upgrade { from, to };
    for (_, node) in def.nodes() {
        for (kind, upgrade) in [("", None), ("-upgrade", Some(&upgrade))] {
            let script = templates
                .boot_script_for(def, &node.node_name, upgrade)
                .unwrap_or_else(|e| panic!("{label}/{}: {e:?}", node.node_name));
            let path = write_script(dir, &format!("{label}{kind}-{}", node.node_name), &script);
            let text = shellcheck(&path);
            if !text.trim().is_empty() {
                findings.push(format!("{label}{kind}/{}:\n{text}", node.node_name));
            }
        }
    }
    findings
}

fn bash(args: &[&str], cwd: &Path) -> Output {
    Command::new("bash").args(args).current_dir(cwd).env("LC_ALL", "C").output().expect("bash runs")
}

#[test]
fn every_sample_passes_shellcheck() {
    let templates = Templates::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut samples: Vec<PathBuf> = std::fs::read_dir(repo_root().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    samples.sort();
    assert!(samples.len() >= 2, "samples/ has the sample definitions");
    let mut findings = Vec::new();
    for sample in &samples {
        let label = sample.file_stem().unwrap().to_string_lossy().to_string();
        let def = load(&templates, &std::fs::read_to_string(sample).unwrap(), &sample.display().to_string());
        findings.extend(check_all(&templates, &def, &label, dir.path()));
    }
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}

#[test]
fn every_option_passes_shellcheck() {
    let overrides = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(overrides.path().join("hooks/cloud-config")).unwrap();
    std::fs::write(
        overrides.path().join("hooks/cloud-config/acme.j2"),
        "[Global]\nZone = {{ node.nodeName }}\n$HOME `x`\n",
    )
    .unwrap();
    let templates = Templates::new(Some(overrides.path())).unwrap();
    let variants = [
        (
            "everything",
            r#", "etcd": { "topology": "external" },
               "hooks": { "preinstall": "aws", "cloudProvider": "aws", "cloudProviderConfig": "acme", "networkProvider": "cilium" },
               "containerRuntime": { "version": "1.7.24-1", "sandboxImage": "registry.k8s.io/pause:3.10" },
               "packageRepository": { "url": "https://mirror.example.com/core:/stable:/v1.36/" }"#,
        ),
        (
            "image-repository",
            r#", "containerRuntime": { "imageRepository": "mirror.example.com/k8s" }, "hooks": { "networkProvider": "flannel" }"#,
        ),
        ("weave", r#", "hooks": { "networkProvider": "weave.sh.j2" }"#),
        ("distribution", r#", "containerRuntime": { "source": "distribution" }"#),
        (
            "distribution-pinned",
            r#", "containerRuntime": { "source": "distribution", "version": "1.7.24~ds1-6+deb13u1" }"#,
        ),
        ("docker-pinned", r#", "containerRuntime": { "source": "docker", "version": "2.2.1" }"#),
        ("no-network", r#", "hooks": { "networkProvider": null }"#),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut findings = Vec::new();
    for (label, extra) in variants {
        let def = definition(&templates, extra);
        findings.extend(check_all(&templates, &def, label, dir.path()));
    }
    assert!(findings.is_empty(), "{}", findings.join("\n"));

    // And the options did reach the scripts.
    let def = definition(&templates, variants[0].1);
    let m0 = templates.boot_script(&def, "m0").unwrap();
    assert!(m0.contains("readonly PACKAGE_REPOSITORY=https://mirror.example.com/core:/stable:/v1.36\n"));
    assert!(m0.contains(r#"KUBECONFIG=$ADMIN_CONF "$CILIUM" install"#));
    assert!(
        m0.contains("\n[Global]\nZone = m0\n$HOME `x`\nHAKUBE_CLOUD_CONFIG\n"),
        "the cloud-config sits in a quoted heredoc"
    );
    let m1 = templates.boot_script(&def, "m1").unwrap();
    assert!(m1.contains("readonly ETCD_INITIAL_CLUSTER='m0=https://10.0.0.10:2380,m1=https://10.0.0.11:2380,m2=https://10.0.0.12:2380'\n"));
    assert!(m1.contains("\netcd_run() {"));
}

#[test]
fn list_usage_and_unknown_steps() {
    let templates = Templates::new(None).unwrap();
    let def = definition(&templates, r#", "etcd": { "topology": "external" }"#);
    let dir = tempfile::tempdir().unwrap();
    for node in ["m0", "m1", "w0"] {
        let path = write_script(dir.path(), node, &templates.boot_script(&def, node).unwrap());
        let path = path.to_str().unwrap();

        let out = bash(&[path, "--list"], dir.path());
        assert!(out.status.success(), "{out:?}");
        let expected: String = boot_steps(&def, node).unwrap().iter().map(|s| format!("{s}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

        let out = bash(&[path, "no-such-step"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("unknown step no-such-step"), "{stderr}");
        assert!(stderr.contains(&boot_steps(&def, node).unwrap().join(" ")), "the message lists the steps: {stderr}");
        assert!(out.stdout.is_empty(), "no marker for a step that does not exist");

        let out = bash(&[path, "prepare", "runtime"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
}

#[test]
fn hostile_values_stay_data() {
    // Values validation would refuse, straight into the types: quoting alone must hold.
    let templates = Templates::new(None).unwrap();
    let evil = "$(touch pwned-1)`touch pwned-2`;touch pwned-3 'x\" $HOME";
    let mut def = definition(&templates, "");
    def.cluster_name = evil.to_string();
    def.workers[1].node_name = format!("w1{evil}");
    def.workers[1].labels.insert("node-role.kubernetes.io/x".into(), evil.to_string());
    def.pod_network_cidr = evil.to_string();
    let dir = tempfile::tempdir().unwrap();
    for node in ["m0".to_string(), format!("w1{evil}")] {
        let script = templates.boot_script(&def, &node).unwrap();
        let path = write_script(dir.path(), "evil", &script);
        // Sourcing evaluates every readonly value; then they are printed back.
        let out = bash(
            &[
                "-c",
                r#"source "$1" && printf '%s\n' "$NODE_NAME" "$CLUSTER_NAME" && { [[ -z ${LABELS+x} ]] || printf '%s\n' "${LABELS[@]}"; }"#,
                "bash",
                path.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some(node.as_str()));
        assert_eq!(lines.next(), Some(evil));
        if node == "m0" {
            assert!(lines.any(|l| l == format!("node-role.kubernetes.io/x={evil}")), "{stdout}");
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["evil.sh"], "nothing ran");
    }
    // A value with a newline would escape a comment or a quoted line: refused.
    def.cluster_name = "a\ntouch pwned".into();
    assert!(templates.boot_script(&def, "m0").is_err());
}

#[test]
fn the_token_goes_in_with_builtins_only() {
    let templates = Templates::new(None).unwrap();
    let def = definition(&templates, "");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Only rm (to start from a fresh file) is on PATH: anything else external fails.
    std::fs::create_dir(d.join("bin")).unwrap();
    std::os::unix::fs::symlink(which("rm"), d.join("bin/rm")).unwrap();
    let token = "abcdef.0123456789abcdef";
    std::fs::write(d.join("bootstrap-token"), format!("{token}\n")).unwrap();

    for node in ["m0", "m1", "w0"] {
        let script = write_script(d, node, &templates.boot_script(&def, node).unwrap());
        std::fs::write(d.join("kubeadm.yaml"), kubeadm::kubeadm_config(&def, node, HASH, "abcdef").unwrap()).unwrap();
        let out = bash(
            &[
                "-c",
                r#"source "$1" && PATH="$2" write_kubeadm_config "$3" "$4" "$5""#,
                "bash",
                script.to_str().unwrap(),
                d.join("bin").to_str().unwrap(),
                d.join("kubeadm.yaml").to_str().unwrap(),
                d.join("bootstrap-token").to_str().unwrap(),
                d.join("secret.yaml").to_str().unwrap(),
            ],
            d,
        );
        assert!(out.status.success(), "{node}: {out:?}");
        let mode = std::fs::metadata(d.join("secret.yaml")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{node}");
        let text = std::fs::read_to_string(d.join("secret.yaml")).unwrap();
        assert!(!text.contains(kubeadm::TOKEN_PLACEHOLDER));
        match kubeadm::parse(&text).unwrap().as_slice() {
            [Document::Init(init), Document::Cluster(_)] => assert_eq!(init.bootstrap_tokens[0].token, token),
            [Document::Join(join)] => assert_eq!(join.discovery.bootstrap_token.token, token),
            other => panic!("{node}: {other:?}"),
        }
    }

    // A file that is not a token is refused without being echoed.
    std::fs::write(d.join("bootstrap-token"), "NOT-A-TOKEN-s3cr3t\n").unwrap();
    let script = d.join("w0.sh");
    let out = bash(
        &[
            "-c",
            r#"source "$1" && write_kubeadm_config "$2" "$3" "$4""#,
            "bash",
            script.to_str().unwrap(),
            "kubeadm.yaml",
            "bootstrap-token",
            "secret.yaml",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("does not hold a bootstrap token"), "{all}");
    assert!(!all.contains("s3cr3t"), "{all}");
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(program)).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{program} is on PATH"))
}

#[test]
fn containerd_config_for_1x_and_2x() {
    // Abridged `containerd config default` output of containerd 1.7 and 2.0.
    let v1 = r#"version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.8"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = ""
        SystemdCgroup = false
  [plugins."io.containerd.internal.v1.opt"]
    path = "/opt/containerd"
"#;
    let v2 = r#"version = 3
[plugins]
  [plugins.'io.containerd.cri.v1.images']
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'registry.k8s.io/pause:3.10'
  [plugins.'io.containerd.cri.v1.runtime']
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      sandboxer = 'podsandbox'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = ''
        ShimCgroup = ''
"#;
    let templates = Templates::new(None).unwrap();
    let def = definition(&templates, "");
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "w0", &templates.boot_script(&def, "w0").unwrap());
    let filter = |input: &str, sandbox: &str| -> String {
        std::fs::write(dir.path().join("default.toml"), input).unwrap();
        let out = bash(
            &[
                "-c",
                r#"source "$1" && containerd_config_filter "$2" <"$3""#,
                "bash",
                script.to_str().unwrap(),
                sandbox,
                "default.toml",
            ],
            dir.path(),
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };

    let out = filter(v1, "");
    assert_eq!(out.matches("SystemdCgroup").count(), 1, "{out}");
    assert!(
        out.contains(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("sandbox_image = \"registry.k8s.io/pause:3.8\""),
        "no sandbox given: containerd's default stays"
    );
    assert!(out.contains("runtime_type = \"io.containerd.runc.v2\"\n") && out.contains("path = \"/opt/containerd\"\n"));

    let out = filter(v1, "mirror.example.com/pause:3.10");
    assert!(out.contains("    sandbox_image = \"mirror.example.com/pause:3.10\"\n"), "{out}");

    let out = filter(v2, "mirror.example.com/pause:3.10");
    assert_eq!(out.matches("SystemdCgroup").count(), 1, "{out}");
    assert!(
        out.contains(
            "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = true\n"
        ),
        "{out}"
    );
    assert!(out.contains("      sandbox = \"mirror.example.com/pause:3.10\"\n"), "{out}");
    assert!(out.contains("sandboxer = 'podsandbox'"), "other keys stay: {out}");
}

#[test]
fn a_failing_step_is_marked_with_its_exit_code() {
    let templates = Templates::new(None).unwrap();
    let def = definition(&templates, "");
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "w0", &templates.boot_script(&def, "w0").unwrap());
    // As run_step leaves it while a step runs; then a command fails under `set -e`.
    let out = bash(
        &["-c", r#"source "$1"; current_step=runtime; (exit 7); echo unreachable"#, "bash", script.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "::hakube:: step=runtime status=failed exit=7\n");
    // fail() stops with 1 and says why on stderr.
    let out = bash(
        &[
            "-c",
            r#"source "$1"; current_step=join; fail "no luck"; echo unreachable"#,
            "bash",
            script.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "::hakube:: step=join status=failed exit=1\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "boot.sh: error: no luck\n");
}

/// What the network and cloud-provider hooks render to, against the upstream facts they follow.
#[test]
fn network_and_cloud_hooks_follow_upstream() {
    let templates = Templates::new(None).unwrap();
    let script = |extra: &str| templates.boot_script(&definition(&templates, extra), "m0").unwrap();

    // Cilium: installed to /usr/local/bin and called by that path, since sudo's secure_path on
    // the RHEL family leaves /usr/local/bin out (sudoers in RHEL 9's sudo package).
    let cilium = script(r#", "hooks": { "networkProvider": "cilium" }"#);
    assert!(cilium.contains("readonly CILIUM=/usr/local/bin/cilium\n"));
    for line in cilium.lines().map(str::trim_start) {
        assert!(!line.starts_with("cilium ") && !line.contains(" cilium install"), "bare cilium call: {line}");
    }
    // The cilium CLI archive is checked against the sum cilium-cli publishes (kubespray
    // checksums.yml ciliumcli_binary_checksums, 0.19.7 amd64).
    assert!(cilium.contains("cd15e0983bf0acc7946cd05d453d1e58376ea92dec2642e745212df2b07d8852"));
    assert!(cilium.contains("wait_rollout 600 kube-system daemonset/cilium\n"));

    // flannel: every node's flanneld is bound to the interface of its registered address
    // (flannel Documentation/troubleshooting.md: on Vagrant every node otherwise announces
    // 10.0.2.15; configuration.md: flags as FLANNELD_ variables, --iface takes an address).
    let flannel = script(r#", "hooks": { "networkProvider": "flannel" }"#);
    assert!(
        flannel.contains(r#""env":[{"name":"FLANNELD_IFACE","valueFrom":{"fieldRef":{"fieldPath":"status.podIP"}}}]"#)
    );
    assert!(flannel.contains("patch daemonset kube-flannel-ds --type=strategic"));
    assert!(flannel.contains("wait_rollout 600 kube-flannel daemonset/kube-flannel-ds\n"));

    // Calico 3.30 and later: the operator's resource types come from operator-crds.yaml,
    // applied before tigera-operator.yaml (Calico 3.32 docs, onpremises.mdx); done when
    // calico-node has rolled out, not when the DaemonSet object exists.
    let calico = script("");
    let crds = calico.find("fetch calico-crds").unwrap();
    let operator = calico.find("fetch calico-operator").unwrap();
    assert!(crds < operator);
    assert!(calico.contains("rolled_out calico-system daemonset/calico-node"));
    assert!(!calico.contains("get daemonset calico-node >/dev/null"));

    // AWS: the published cloud controller manager of the minor (v1.36.0 was never published,
    // kubernetes/k8s.io PR #9796), and done only when no node is tainted uninitialized
    // (kubernetes/cloud-provider api/well_known_taints.go).
    let aws = script(r#", "hooks": { "cloudProvider": "aws" }"#);
    assert!(
        aws.contains("readonly AWS_CCM_IMAGE=registry.k8s.io/provider-aws/cloud-controller-manager:v1.36.1\n"),
        "{aws}"
    );
    assert!(aws
        .contains("rolled_out kube-system daemonset/aws-cloud-controller-manager && [[ -z $(uninitialised_nodes) ]]"));
    let w0 = templates.boot_script(&definition(&templates, r#", "hooks": { "cloudProvider": "aws" }"#), "w0").unwrap();
    assert!(w0.contains("node_initialised"), "a joining node waits for the cloud controller manager");
    let pinned = script(r#", "hooks": { "cloudProvider": "aws", "cloudProviderVersion": "v1.36.9" }"#);
    assert!(pinned.contains("cloud-controller-manager:v1.36.9\n"));
}

/// The runtime step's containerd rule in bash (`containerd_support`, rendered with the table
/// for the cluster's minor) answers as hakube_cluster::releases::containerd_support does, for
/// every minor hakube renders and those past containerd's table.
#[test]
fn containerd_support_in_bash_is_the_rust_rule() {
    use hakube_cluster::releases::{containerd_support, ContainerdSupport};
    let templates = Templates::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let releases = [
        "1.6.20", "1.6.36", "1.6.39", "1.7.24", "1.7.27", "1.7.28", "1.7.30", "2.0.0", "2.0.6", "2.1.0", "2.1.4",
        "2.1.5", "2.1.9", "2.2.0", "2.2.5", "2.3.0", "2.3.3", "2.4.0", "3.0.0",
    ];
    for minor in 31..=38 {
        let mut def = definition(&templates, r#", "hooks": { "networkProvider": null }"#);
        def.kubernetes_version = format!("1.{minor}.2");
        let script = write_script(dir.path(), &format!("m0-{minor}"), &templates.boot_script(&def, "m0").unwrap());
        let out = bash(
            &[
                "-c",
                r#"source "$1"; shift; for r; do printf '%s %s\n' "$r" "$(containerd_support "$r")"; done"#,
                "bash",
                script.to_str().unwrap(),
            ]
            .into_iter()
            .chain(releases)
            .collect::<Vec<_>>(),
            dir.path(),
        );
        assert!(out.status.success(), "{out:?}");
        let expected: String = releases
            .iter()
            .map(|r| {
                let word = match containerd_support(r, minor).unwrap() {
                    ContainerdSupport::Supported => "supported",
                    ContainerdSupport::Tolerated => "tolerated",
                    ContainerdSupport::Unsupported => "unsupported",
                };
                format!("{r} {word}\n")
            })
            .collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "Kubernetes 1.{minor}");
    }
}

/// What the runtime step says of the containerd it finds: Debian 12's fails on 1.36 naming
/// the release, what containerd supports and the definition's fields; Debian unstable's
/// 2.1.9 is tolerated with a warning; Docker's 2.2.1 passes.
#[test]
fn the_runtime_step_fails_on_a_containerd_the_minor_cannot_use() {
    let templates = Templates::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let check = |runtime: &str, version_line: &str| {
        let def = definition(&templates, &format!(r#", "containerRuntime": {runtime}"#));
        let script = write_script(dir.path(), "m0", &templates.boot_script(&def, "m0").unwrap());
        bash(
            &[
                "-c",
                r#"line=$2; source "$1"; containerd() { printf '%s\n' "$line"; }; check_containerd_release"#,
                "bash",
                script.to_str().unwrap(),
                version_line,
            ],
            dir.path(),
        )
    };
    let out = check(
        r#"{ "source": "distribution" }"#,
        "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u1",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        "boot.sh: error: containerd 1.6.20 (containerd , the distribution's) is not supported for Kubernetes 1.36:",
        "containerd lists 2.3.0+, 2.2.0+ for it (containerd RELEASES.md)",
        "the series 2.3, 2.2, 2.1, 1.7 work with a warning: 1.6 is none of them",
        "containerRuntime.source \"docker\"",
    ] {
        assert!(stderr.contains(part), "{part:?} not in {stderr}");
    }
    let out = check("{}", "containerd github.com/containerd/containerd/v2 2.1.9+unknown");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("boot.sh: warning: containerd 2.1.9 (containerd.io ) is not a release containerd lists for Kubernetes 1.36 (2.3.0+, 2.2.0+"),
        "{stderr}"
    );
    assert!(stderr.contains("Pin a listed one with containerRuntime.version"), "{stderr}");
    let out = check("{}", "containerd containerd.io v2.2.1 dea7da592f5d1d2b7755e3a161be07f43fad8f75");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("containerd 2.2.1 (containerd.io ) is supported"), "{out:?}");
    let out = check("{}", "containerd: command not found");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("containerd --version names no release"), "{out:?}");
}

/// firewalld, SELinux and NetworkManager, as the RHEL family runs them by default.
#[test]
fn the_prepare_step_opens_exactly_the_ports_a_node_needs() {
    let templates = Templates::new(None).unwrap();
    let def = definition(&templates, r#", "hooks": { "networkProvider": "flannel" }"#);
    let m0 = templates.boot_script(&def, "m0").unwrap();
    let w0 = templates.boot_script(&def, "w0").unwrap();
    // kubernetes.io "Ports and Protocols": the control plane's on masters only; kubelet,
    // kube-proxy and NodePorts everywhere; flannel's VXLAN (UDP 8472, flannel backends.md).
    assert!(m0.contains("readonly -a FIREWALL_PORTS=(6443/tcp 2379-2380/tcp 10250/tcp 10259/tcp 10257/tcp 10256/tcp 30000-32767/tcp 30000-32767/udp 8472/udp)\n"), "{m0}");
    assert!(w0.contains("readonly -a FIREWALL_PORTS=(10250/tcp 10256/tcp 30000-32767/tcp 30000-32767/udp 8472/udp)\n"));
    assert!(w0.contains(r#"firewall-cmd --permanent --add-port="$p""#) && w0.contains("firewall-cmd --reload"));
    // SELinux permissive, as kubeadm's install guide does it.
    assert!(w0.contains("setenforce 0") && w0.contains("s/^SELINUX=enforcing$/SELINUX=permissive/"));
    // flannel documents no NetworkManager settings; Calico does (tigera/docs troubleshooting).
    assert!(w0.contains("network_manager_run() { true; }"));
    let calico = templates.boot_script(&definition(&templates, ""), "w0").unwrap();
    assert!(calico.contains("unmanaged-devices=%s"));
    assert!(calico.contains("interface-name:cali*;interface-name:tunl*;interface-name:vxlan.calico;"));
    assert!(calico.contains("179/tcp 4789/udp 5473/tcp)"));
    // refuse: no port is opened; the step stops and names what to do.
    let refuse = templates.boot_script(&definition(&templates, r#", "firewall": "refuse""#), "w0").unwrap();
    assert!(!refuse.contains("firewall-cmd --permanent --add-port=\"$p\""));
    assert!(refuse.contains(r#"or set \"firewall\": \"open\" in the definition"#));
}

/// No node is downgraded, and the same version stays (the version skew policy; a running
/// node's version is refused in the lab test, where kubelet.conf exists).
#[test]
fn the_version_guard_refuses_a_downgrade_and_allows_the_same_version() {
    let templates = Templates::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "w0", &templates.boot_script(&definition(&templates, ""), "w0").unwrap());
    let guard = |kubelet_says: &str| {
        bash(
            &[
                "-c",
                r#"source "$1"; says=$2; kubelet() { printf '%s\n' "$says"; }; version_guard"#,
                "bash",
                script.to_str().unwrap(),
                kubelet_says,
            ],
            dir.path(),
        )
    };
    let out = guard("Kubernetes v1.37.0");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "this node has Kubernetes v1.37.0, newer than kubernetesVersion v1.36.4: hakube never downgrades a node"
        ),
        "{out:?}"
    );
    // 1.36.10 is newer than 1.36.4 (versions compare as numbers, not text).
    assert_eq!(guard("Kubernetes v1.36.10").status.code(), Some(1));
    assert!(guard("Kubernetes v1.36.4").status.success());
    // An older kubelet on a node outside any cluster (no kubelet.conf) is upgraded by the
    // packages step as on a fresh machine.
    assert!(
        guard("Kubernetes v1.35.4").status.success() || std::path::Path::new("/etc/kubernetes/kubelet.conf").exists()
    );
}

/// The images step's check asks containerd (its CRI plugin's namespace, k8s.io) for every image
/// kubeadm names, as containerd names it; its run pulls with the step's own configuration file,
/// and only when an image is missing.
#[test]
fn the_images_step_checks_containerd_for_what_kubeadm_names() {
    let templates = Templates::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let def = definition(&templates, "");
    let script = write_script(dir.path(), "m1", &templates.boot_script(&def, "m1").unwrap());
    // kubeadm names LIST; containerd holds HELD; every call is recorded in CALLS.
    let run = |list: &str, held: &str, what: &str| {
        bash(
            &[
                "-c",
                r#"source "$1"; list=$2 held=$3 calls=$4
                images_config() { :; }
                kubeadm() { printf 'kubeadm %s\n' "$*" >>"$calls"; [[ $* != 'config images list '* ]] || printf '%s' "$list"; }
                ctr() { printf 'ctr %s\n' "$*" >>"$calls"; printf '%s' "$held"; }
                "$5""#,
                "bash",
                script.to_str().unwrap(),
                list,
                held,
                dir.path().join("calls").to_str().unwrap(),
                what,
            ],
            dir.path(),
        )
    };
    let calls = || std::fs::read_to_string(dir.path().join("calls")).unwrap_or_default();
    let names = "registry.k8s.io/kube-apiserver:v1.36.4\nregistry.k8s.io/pause:3.10.1\n";
    let digest = "registry.k8s.io/pause@sha256:0123\n";
    assert!(run(names, &format!("{names}{digest}"), "images_done").status.success());
    assert_eq!(
        calls(),
        "kubeadm config images list --config /var/lib/hakube/kubeadm-images.yaml\n\
         ctr --address /var/run/containerd/containerd.sock --connect-timeout 10s --namespace k8s.io images ls --quiet\n"
    );
    // One image missing (only its digest reference is there): not done.
    assert_eq!(
        run(names, &format!("registry.k8s.io/kube-apiserver:v1.36.4\n{digest}"), "images_done").status.code(),
        Some(1)
    );
    // Nothing named (kubeadm failed to read the file): not done either.
    assert_eq!(run("", names, "images_done").status.code(), Some(1));
    // Docker Hub names, as containerd normalizes them.
    let hub = "myorg/kube-apiserver:v1.36.4\npause:3.10.1\nlocalhost/etcd:3.6.5-0\n";
    let normalized = "docker.io/myorg/kube-apiserver:v1.36.4\ndocker.io/library/pause:3.10.1\nlocalhost/etcd:3.6.5-0\n";
    assert!(run(hub, normalized, "images_done").status.success());
    assert_eq!(run(hub, hub, "images_done").status.code(), Some(1));

    // The run pulls with the step's file when an image is missing, not when all are there.
    std::fs::remove_file(dir.path().join("calls")).unwrap();
    assert!(run(names, "", "images_run").status.success());
    assert!(
        calls().ends_with("kubeadm config images pull --config /var/lib/hakube/kubeadm-images.yaml\n"),
        "{}",
        calls()
    );
    std::fs::remove_file(dir.path().join("calls")).unwrap();
    let out = run(names, names, "images_run");
    assert!(out.status.success());
    assert!(!calls().contains(" pull "), "{}", calls());
    assert!(String::from_utf8_lossy(&out.stdout).contains("containerd already holds the control-plane images"));
}
