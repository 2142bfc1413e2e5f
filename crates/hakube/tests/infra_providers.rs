//! infra-providers/: the cluster definitions the Vagrant and AWS providers write are the
//! committed examples, byte for byte, and `hakube validate` accepts them; `hakube render`
//! writes every key the Vagrant provisioners install; and the providers' code passes its
//! tools' checks (`terraform fmt`, `ruby -c`, shellcheck).
//!
//! Tools: ruby and shellcheck are Debian packages and must be installed (a missing one
//! fails the test, naming the package). terraform is not a Debian package: without it on
//! PATH its tests print `SKIPPED: terraform not installed` and pass. No test needs a
//! Terraform provider, Vagrant or a network.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

fn providers() -> PathBuf {
    repo_root().join("infra-providers")
}

/// Runs `cmd`, which must be installed: a missing program fails naming its Debian package.
fn run(cmd: &mut Command, debian_package: &str) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("{program} is not installed: install the Debian package `{debian_package}` (apt-get install {debian_package})")
        }
        Err(e) => panic!("failed to run {program}: {e}"),
    }
}

/// Runs `cmd` with `stdin` as its standard input.
fn run_with_input(cmd: &mut Command, stdin: &str, debian_package: &str) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = match cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("{program} is not installed: install the Debian package `{debian_package}` (apt-get install {debian_package})")
        }
        Err(e) => panic!("failed to run {program}: {e}"),
    };
    child.stdin.take().expect("piped stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("wait for child")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `terraform` command, or `None` after printing the skip line when terraform is not on
/// PATH (it is not a Debian package; get it from releases.hashicorp.com).
fn terraform() -> Option<Command> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("terraform").is_file()));
    if !on_path {
        eprintln!("SKIPPED: terraform not installed");
        return None;
    }
    let mut cmd = Command::new("terraform");
    cmd.env("CHECKPOINT_DISABLE", "1").env("TF_IN_AUTOMATION", "1");
    Some(cmd)
}

/// `hakube validate FILE`: (exit code, stdout, stderr).
fn validate(file: &Path) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_hakube")).arg("validate").arg(file).output().expect("failed to run hakube");
    (out.status.code().expect("hakube was killed by a signal"), text(&out.stdout), text(&out.stderr))
}

fn assert_same(what: &str, expected_file: &Path, actual: &str) {
    let expected = std::fs::read_to_string(expected_file)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", expected_file.display()));
    assert!(
        expected == actual,
        "{what} differs from {} (update the example if the change is intended)\n--- committed\n{expected}\n--- written now\n{actual}",
        expected_file.display()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir` whose name ends with `suffix` (or is exactly `suffix`), sorted.
fn files_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            found.extend(files_named(&path, suffix));
        } else if entry.file_name().to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found.sort();
    found
}

// ---- terraform (AWS) ----

#[test]
fn terraform_files_are_formatted() {
    let Some(mut tf) = terraform() else { return };
    let out = run(tf.args(["fmt", "-check", "-recursive", "-diff"]).arg(providers().join("aws")), "terraform");
    assert!(out.status.success(), "terraform fmt -check -recursive infra-providers/aws failed; run `terraform fmt -recursive infra-providers/aws`\n{}{}", text(&out.stdout), text(&out.stderr));
}

/// Evaluates the cluster-definition module's output with `terraform console` in a copy of
/// the module (it has no provider, so no `terraform init` is needed). `vars` are extra
/// `-var` arguments on top of example.tfvars.
fn aws_definition(vars: &[&str]) -> Option<String> {
    let mut tf = terraform()?;
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&providers().join("aws/modules/cluster-definition"), dir.path());
    tf.current_dir(dir.path()).args(["console", "-var-file=example.tfvars"]);
    for v in vars {
        tf.arg(format!("-var={v}"));
    }
    let out = run_with_input(&mut tf, "local.json\n", "terraform");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "terraform console failed:\n{stdout}{}", text(&out.stderr));
    // The console prints a multi-line string as a heredoc: "<<EOT\n" TEXT "\nEOT\n".
    let json = stdout
        .strip_prefix("<<EOT\n")
        .and_then(|s| s.strip_suffix("\nEOT\n"))
        .unwrap_or_else(|| panic!("terraform console did not print a heredoc:\n{stdout}"));
    Some(json.to_string())
}

#[test]
fn aws_example_is_what_the_definition_template_writes() {
    let Some(json) = aws_definition(&[]) else { return };
    assert_same("the AWS cluster definition for example.tfvars", &providers().join("aws/cluster.example.json"), &json);
}

#[test]
fn aws_definition_without_render_keys_trusts_on_first_contact_and_validates() {
    let single_master = r#"masters=[{name="ip-10-1-0-10.ec2.internal",private_ip="10.1.0.10",public_ip="203.0.113.10",zone="us-east-1a"}]"#;
    let vars = [
        "host_key_policy=accept-new",
        "ssh_login_key=~/.ssh/id_ed25519",
        "master_fqdns=[]",
        "workers=[]",
        single_master,
    ];
    let Some(json) = aws_definition(&vars) else { return };
    let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}):\n{json}"));
    assert_eq!(value["hostKeyPolicy"], "accept-new", "{json}");
    assert_eq!(value["sshLoginKey"], "~/.ssh/id_ed25519", "{json}");
    assert!(value.get("masterFQDNs").is_none(), "an empty masterFQDNs is left out:\n{json}");
    assert_eq!(value["workers"], serde_json::json!([]), "{json}");
    assert_eq!(value["masters"][0]["publicIP"], "203.0.113.10", "{json}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.json");
    std::fs::write(&file, &json).unwrap();
    let (code, _, stderr) = validate(&file);
    assert_eq!(code, 0, "hakube validate refused:\n{json}\n{stderr}");
}

// ---- ruby (Vagrant) ----

#[test]
fn ruby_files_parse() {
    let vagrant = providers().join("vagrant");
    let mut files = vec![vagrant.join("Vagrantfile")];
    files.extend(files_named(&providers(), ".rb"));
    assert!(files.len() >= 2, "expected the Vagrantfile and cluster_definition.rb, found {files:?}");
    for file in files {
        let out = run(Command::new("ruby").arg("-c").arg(&file), "ruby");
        assert!(out.status.success(), "ruby -c {}:\n{}{}", file.display(), text(&out.stdout), text(&out.stderr));
        assert!(text(&out.stdout).contains("Syntax OK"), "ruby -c {}: {}", file.display(), text(&out.stdout));
    }
}

/// Stands in for Vagrant: `Vagrant.configure` runs the Vagrantfile's block against an
/// object that accepts every setting, records the machines it defines and their
/// provisioners, and prints them as JSON. The Vagrantfile is loaded with the remaining
/// arguments as the vagrant command line (ARGV).
const VAGRANT_STUB: &str = r#"
require "json"
module Vagrant
  class Recorder
    def initialize(log)
      @log = log
    end
    def respond_to_missing?(*)
      true
    end
    def method_missing(name, *args, **kw, &block)
      @log["defines"] << args[0] if name == :define
      @log["provisions"] << { "type" => args[0] }.merge(kw.transform_keys(&:to_s)) if name == :provision
      block&.call(self, self)
      self
    end
  end
  def self.configure(_version)
    log = { "defines" => [], "provisions" => [] }
    yield Recorder.new(log)
    puts JSON.generate(log)
  end
end
load ARGV.shift
"#;

/// A copy of infra-providers/vagrant in a temporary directory (the Vagrantfile writes
/// cluster.json next to itself).
fn vagrant_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["Vagrantfile", "cluster_definition.rb"] {
        std::fs::copy(providers().join("vagrant").join(name), dir.path().join(name)).unwrap();
    }
    copy_dir(&providers().join("vagrant/provision"), &dir.path().join("provision"));
    dir
}

/// Loads the Vagrantfile in `dir` under the stub as `vagrant ARGS...`.
fn vagrant(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("ruby");
    cmd.current_dir(dir).env_remove("HAKUBE_ASSETS").args(["-e", VAGRANT_STUB, "Vagrantfile"]).args(args);
    run(&mut cmd, "ruby")
}

#[test]
fn vagrant_example_is_what_the_vagrantfile_writes() {
    let dir = vagrant_copy();
    let out = vagrant(dir.path(), &["status"]);
    assert!(out.status.success(), "the Vagrantfile failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    let written =
        std::fs::read_to_string(dir.path().join("cluster.json")).expect("the Vagrantfile wrote no cluster.json");
    assert_same("the Vagrantfile's cluster definition", &providers().join("vagrant/cluster.example.json"), &written);

    let log: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stub output ({e}): {}", text(&out.stdout)));
    assert_eq!(
        log["defines"],
        serde_json::json!(["lb", "master0", "master1", "master2", "worker0", "worker1", "worker2"])
    );
    let scripts: Vec<&str> = log["provisions"].as_array().unwrap().iter().filter_map(|p| p["path"].as_str()).collect();
    assert!(scripts.contains(&"provision/haproxy.sh") && scripts.contains(&"provision/install-keys.sh"), "{scripts:?}");
    for script in scripts {
        assert!(
            providers().join("vagrant").join(script).is_file(),
            "a provisioner runs {script}, which does not exist"
        );
    }
}

#[test]
fn vagrant_up_stops_until_render_wrote_the_keys_and_then_finds_them_all() {
    let dir = vagrant_copy();
    let out = vagrant(dir.path(), &["up"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "vagrant up went ahead without keys:\n{}", text(&out.stdout));
    assert!(stderr.contains("Run `hakube render cluster.json`"), "{stderr}");
    assert!(stderr.contains("assets/ssh/host-keys/master0/ssh_host_ed25519_key"), "{stderr}");
    assert!(stderr.contains("assets/ssh/id_ed25519.pub"), "{stderr}");
    // Commands that do not provision need no keys.
    assert!(vagrant(dir.path(), &["up", "--no-provision"]).status.success());

    // The real render, run where the README says, writes every file the provisioners upload.
    let render = Command::new(env!("CARGO_BIN_EXE_hakube"))
        .current_dir(dir.path())
        .args(["render", "cluster.json"])
        .output()
        .expect("failed to run hakube");
    assert!(render.status.success(), "hakube render failed:\n{}{}", text(&render.stdout), text(&render.stderr));
    let out = vagrant(dir.path(), &["up"]);
    assert!(out.status.success(), "vagrant up refused after render:\n{}", text(&out.stderr));
    let log: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let uploads: Vec<&str> = log["provisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "file")
        .map(|p| p["source"].as_str().unwrap())
        .collect();
    // Per node: the login key and the host key pair.
    assert_eq!(uploads.len(), 6 * 3, "{uploads:?}");
    for source in uploads {
        assert!(Path::new(source).is_file(), "the file provisioner uploads {source}, which render did not write");
    }
}

// ---- shellcheck ----

#[test]
fn provisioning_scripts_pass_shellcheck() {
    let scripts = files_named(&providers(), ".sh");
    assert!(scripts.len() >= 2, "expected the Vagrant provisioning scripts, found {scripts:?}");
    let out = run(Command::new("shellcheck").args(&scripts), "shellcheck");
    assert!(out.status.success(), "shellcheck {scripts:?}:\n{}{}", text(&out.stdout), text(&out.stderr));
}

// ---- hakube validate ----

#[test]
fn provider_examples_validate_and_point_at_the_schema() {
    for example in ["vagrant/cluster.example.json", "aws/cluster.example.json"] {
        let file = providers().join(example);
        let (code, stdout, stderr) = validate(&file);
        assert_eq!(code, 0, "hakube validate {example}:\n{stderr}");
        assert!(stdout.contains("valid"), "{stdout}");
        assert!(!stderr.contains("warning"), "the example should validate without warnings:\n{stderr}");

        let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let schema = value["$schema"].as_str().unwrap_or_else(|| panic!("{example} has no $schema"));
        let resolved = file.parent().unwrap().join(schema);
        assert!(resolved.is_file(), "{example}: $schema {schema} does not lead to {}", resolved.display());
        assert_eq!(
            resolved.canonicalize().unwrap(),
            repo_root().join("schema/cluster.schema.json").canonicalize().unwrap()
        );
    }
}
