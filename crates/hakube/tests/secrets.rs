//! Secrets at rest (issue 10), through the real binary, with the real `age` CLI (Debian
//! package `age`), git, openssl and ssh-keygen: an assets directory rendered with
//! recipients is committed and cloned, and nothing secret is in git; every ciphertext
//! decrypts with the age CLI to what kubeadm and ssh expect; `render --check` works in a
//! clone without an identity and notices a changed byte; re-rendering changes no byte; a
//! new recipient re-encrypts everything; without recipients `git add -A` stages no secret.
//!
//! hakube runs with a private HOME and none of the identity variables, so nothing of the
//! machine's own keys is found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples").join(name)
}

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World { dir: tempfile::tempdir().unwrap() };
        std::fs::create_dir(w.home()).unwrap();
        w
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn home(&self) -> PathBuf {
        self.path("home")
    }
    /// `hakube ARGS` in the world's directory, with its own HOME and no identity variables.
    fn hakube(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_hakube"))
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.home())
            .env_remove("HAKUBE_AGE_KEY_FILE")
            .env_remove("SOPS_AGE_KEY_FILE")
            .env_remove("SOPS_AGE_KEY")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("failed to run hakube");
        assert!(!text(&out).contains("panicked"), "{}", text(&out));
        out
    }
    /// A new age identity file (age-keygen); its path and public key.
    fn keygen(&self, name: &str) -> (PathBuf, String) {
        let path = self.path(name);
        let out = run(Command::new("age-keygen").arg("-o").arg(&path));
        assert!(out.status.success(), "age-keygen (Debian package age): {}", text(&out));
        let public = run(Command::new("age-keygen").arg("-y").arg(&path));
        (path, String::from_utf8(public.stdout).unwrap().trim().to_string())
    }
    /// The lab sample with `recipients` as its `secrets.recipients`, written to cluster.json.
    fn definition(&self, recipients: &[&str]) -> String {
        let mut def: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(sample("lab-cluster.json")).unwrap()).unwrap();
        if recipients.is_empty() {
            def.as_object_mut().unwrap().remove("secrets");
        } else {
            def["secrets"] = serde_json::json!({ "recipients": recipients });
        }
        let path = self.path("cluster.json");
        std::fs::write(&path, serde_json::to_string_pretty(&def).unwrap()).unwrap();
        path.to_str().unwrap().to_string()
    }
}

fn run(cmd: &mut Command) -> Output {
    let program = cmd.get_program().to_string_lossy().to_string();
    cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn git(dir: &Path, args: &[&str]) -> Output {
    run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"])
        .args(args))
}

/// Every file below `dir` (`.git` excluded) by relative path.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() == ".git" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_str().unwrap().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// `age -d -i IDENTITY FILE` (the age CLI); the plaintext, after asserting success.
fn age_decrypt(identity: &Path, file: &Path) -> Vec<u8> {
    let out = run(Command::new("age").arg("-d").arg("-i").arg(identity).arg(file));
    assert!(out.status.success(), "age -d {}: {}", file.display(), text(&out));
    out.stdout
}

/// The public key of a PEM private key, by openssl.
fn pubkey_of_key(key: &Path) -> Vec<u8> {
    let out = run(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(key));
    assert!(out.status.success(), "{}: {}", key.display(), text(&out));
    out.stdout
}

/// Decrypts every `.age` file of `assets` into `plain` (same relative paths without
/// `.age`, copying the other files), then checks the decrypted set as kubeadm and ssh
/// read it: each CA and leaf key belongs to its certificate (openssl), each SSH private
/// key gives its `.pub` (ssh-keygen -y), the service-account key gives sa.pub, admin.conf
/// holds a client key, the token has kubeadm's format. Returns how many were decrypted.
fn decrypt_and_check(assets: &Path, identity: &Path, plain: &Path) -> usize {
    let mut decrypted = 0;
    for (rel, bytes) in files(assets) {
        let (target, bytes) = match rel.strip_suffix(".age") {
            Some(base) => {
                decrypted += 1;
                (plain.join(base), age_decrypt(identity, &assets.join(&rel)))
            }
            None => (plain.join(&rel), bytes),
        };
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, bytes).unwrap();
    }
    for (rel, _) in files(plain) {
        let path = plain.join(&rel);
        if let Some(base) = rel.strip_suffix(".key").filter(|_| rel.starts_with("pki/") && rel != "pki/sa.key") {
            let crt = plain.join(format!("{base}.crt"));
            let out = run(Command::new("openssl").args(["x509", "-noout", "-pubkey", "-in"]).arg(&crt));
            assert_eq!(out.stdout, pubkey_of_key(&path), "{rel} does not belong to {base}.crt");
        }
        if rel.ends_with("ssh_host_ed25519_key") || rel == "ssh/id_ed25519" {
            let mut perms = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
            std::fs::set_permissions(&path, perms).unwrap();
            let out = run(Command::new("ssh-keygen").arg("-y").arg("-f").arg(&path));
            assert!(out.status.success(), "{rel}: {}", text(&out));
            let public = std::fs::read_to_string(plain.join(format!("{rel}.pub"))).unwrap();
            let derived = String::from_utf8(out.stdout).unwrap();
            assert_eq!(derived.split_whitespace().nth(1), public.split_whitespace().nth(1), "{rel}");
        }
    }
    assert_eq!(pubkey_of_key(&plain.join("pki/sa.key")), std::fs::read(plain.join("pki/sa.pub")).unwrap());
    assert!(std::fs::read_to_string(plain.join("kubeconfig/admin.conf")).unwrap().contains("client-key-data: "));
    let token = std::fs::read_to_string(plain.join("token/bootstrap-token")).unwrap();
    let re = regex::Regex::new(r"^[a-z0-9]{6}\.[a-z0-9]{16}\n$").unwrap();
    assert!(re.is_match(&token), "{token:?} is not a bootstrap token");
    decrypted
}

#[test]
fn committed_and_cloned_assets_hold_no_plaintext_secret_and_check_without_an_identity() {
    let w = World::new();
    let (key, public) = w.keygen("key.txt");
    let def = w.definition(&[&public]);
    let out = w.hakube(&["render", &def]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let assets = w.path("assets");
    let all = files(&assets);
    for secret in ["pki/ca.key", "pki/sa.key", "kubeconfig/admin.conf", "token/bootstrap-token", "ssh/id_ed25519"] {
        assert!(!all.contains_key(secret), "{secret} written in plaintext");
        assert!(all.contains_key(&format!("{secret}.age")), "{secret}.age missing");
    }
    // Commit the assets as a user would.
    assert!(git(&assets, &["init", "-q"]).status.success());
    assert!(git(&assets, &["add", "-A"]).status.success());
    assert!(git(&assets, &["commit", "-qm", "assets"]).status.success());
    let plain = w.path("plain");
    let decrypted = decrypt_and_check(&assets, &key, &plain);
    assert!(decrypted >= 10, "only {decrypted} ciphertexts");
    let token = std::fs::read_to_string(plain.join("token/bootstrap-token")).unwrap();
    let token_secret = token.trim().split('.').nth(1).unwrap().to_string();
    for needle in ["PRIVATE KEY", "client-key-data", "OPENSSH PRIVATE KEY", token_secret.as_str()] {
        let out = git(&assets, &["grep", "-q", "-F", needle, "HEAD"]);
        assert_eq!(out.status.code(), Some(1), "{needle:?} is committed: {}", text(&out));
    }
    let listing = std::fs::read_to_string(assets.join("fingerprints.txt")).unwrap();
    assert!(listing.contains("pki/ca.crt sha256 Fingerprint=") && listing.contains("token/bootstrap-token id "));
    assert!(!listing.contains(&token_secret));

    // A fresh clone: render --check needs no identity, and one changed byte fails it by name.
    let clone = w.path("clone");
    assert!(git(w.dir.path(), &["clone", "-q", assets.to_str().unwrap(), clone.to_str().unwrap()]).status.success());
    let check = w.hakube(&["render", &def, "--assets-dir", "clone", "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    assert!(text(&check).contains("no identity found"), "{}", text(&check));
    let check = w.hakube(&["render", &def, "--assets-dir", "clone", "--check", "--identity", key.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "with an identity: {}", text(&check));
    assert!(!text(&check).contains("no identity found"));
    // Install from the clone without an identity stops before connecting, naming the recipient.
    let install = w.hakube(&["install", &def, "--assets-dir", "clone", "--connect-timeout", "1"]);
    assert_eq!(install.status.code(), Some(1), "{}", text(&install));
    assert!(text(&install).contains("no identity found matches its recipients") && text(&install).contains(&public));
    // The kubeconfig for people, from the clone.
    let kc = w.path("kc");
    let out = w.hakube(&[
        "kubeconfig",
        &def,
        "--assets-dir",
        "clone",
        "--output",
        kc.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(&kc).unwrap(), std::fs::read(plain.join("kubeconfig/admin.conf")).unwrap());
    assert_eq!(std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777, 0o600);
    let merged = w.home().join(".kube/config");
    let out = w.hakube(&[
        "kubeconfig",
        &def,
        "--assets-dir",
        "clone",
        "--merge",
        "--ttl",
        "1h",
        "--identity",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    let cert = doc["users"][0]["user"]["client-certificate-data"].as_str().unwrap();
    let pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, cert).unwrap();
    std::fs::write(w.path("short.crt"), &pem).unwrap();
    let verify = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(plain.join("pki/ca.crt"))
        .arg(w.path("short.crt")));
    assert!(verify.status.success(), "the short-lived certificate is not the cluster CA's: {}", text(&verify));
    let within = |secs: &str| {
        run(Command::new("openssl").args(["x509", "-noout", "-checkend", secs, "-in"]).arg(w.path("short.crt")))
    };
    assert!(within("3000").status.success(), "it ends within 50 minutes");
    assert!(!within("7200").status.success(), "it lasts over 2 hours, not --ttl 1h");

    let victim = clone.join("pki/ca.key.age");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    std::fs::write(&victim, bytes).unwrap();
    let check = w.hakube(&["render", &def, "--assets-dir", "clone", "--check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        text(&check).contains("clone/pki/ca.key.age: does not match the sha256 in manifest.json"),
        "{}",
        text(&check)
    );
}

use std::os::unix::fs::PermissionsExt;

#[test]
fn rendering_again_changes_no_byte_and_recipient_changes_reencrypt_everything() {
    let w = World::new();
    let (key1, public1) = w.keygen("key1.txt");
    let (key2, public2) = w.keygen("key2.txt");
    let def = w.definition(&[&public1]);
    assert_eq!(w.hakube(&["render", &def]).status.code(), Some(0));
    let assets = w.path("assets");
    let first = files(&assets);
    let id1 = key1.to_str().unwrap();
    // Without an identity, a re-render cannot reuse the secrets: refused, naming where it looked.
    let out = w.hakube(&["render", &def]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("HAKUBE_AGE_KEY_FILE") && text(&out).contains(&public1), "{}", text(&out));
    assert_eq!(files(&assets), first, "a refused render wrote something");
    let out = w.hakube(&["render", &def, "--identity", id1]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(files(&assets), first, "a second render changed bytes");
    // SOPS_AGE_KEY_FILE is looked at too.
    let out = Command::new(env!("CARGO_BIN_EXE_hakube"))
        .args(["render", &def])
        .current_dir(w.dir.path())
        .env("HOME", w.home())
        .env("SOPS_AGE_KEY_FILE", &key1)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(files(&assets), first);

    let ciphertexts: Vec<String> = first.keys().filter(|p| p.ends_with(".age")).cloned().collect();
    let def = w.definition(&[&public1, &public2]);
    let out = w.hakube(&["render", &def, "--identity", id1]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("re-encrypted {} secrets", ciphertexts.len())) && text(&out).contains(&public2),
        "{}",
        text(&out)
    );
    let second = files(&assets);
    for p in &ciphertexts {
        assert_ne!(first[p], second[p], "{p} was not re-encrypted");
        assert_eq!(age_decrypt(&key1, &assets.join(p)), age_decrypt(&key2, &assets.join(p)), "{p}");
    }
    let def = w.definition(&[&public2]);
    let out = w.hakube(&["render", &def, "--identity", key2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("git history") && text(&out).contains("--rotate-secrets"), "{}", text(&out));
    let ca = assets.join("pki/ca.key.age");
    assert!(!run(Command::new("age").arg("-d").arg("-i").arg(&key1).arg(&ca)).status.success(), "key1 still decrypts");
}

#[test]
fn without_recipients_git_add_stages_no_secret_and_render_says_so() {
    let w = World::new();
    let def = w.definition(&[]);
    let repo = w.dir.path();
    assert!(git(repo, &["init", "-q"]).status.success());
    let out = w.hakube(&["render", &def]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("inside a git work tree and secrets.recipients is not set"), "{}", text(&out));
    assert!(text(&out).contains("assets/.gitignore keeps the"), "{}", text(&out));
    let assets = w.path("assets");
    assert!(assets.join("pki/ca.key").exists(), "plaintext secrets without recipients");
    assert!(git(repo, &["add", "-A"]).status.success());
    let staged = String::from_utf8(git(repo, &["diff", "--cached", "--name-only"]).stdout).unwrap();
    assert!(staged.contains("assets/pki/ca.crt") && staged.contains("assets/.gitignore"), "{staged}");
    for secret in ["pki/ca.key", "pki/sa.key", "kubeconfig/admin.conf", "token/bootstrap-token", "ssh/id_ed25519"] {
        assert!(!staged.contains(&format!("assets/{secret}\n")), "{secret} staged:\n{staged}");
    }
    for needle in ["PRIVATE KEY", "client-key-data"] {
        let out = git(repo, &["grep", "--cached", "-q", "-F", needle]);
        assert_eq!(out.status.code(), Some(1), "{needle} staged");
    }
}

/// An SSH recipient: the user's `~/.ssh/id_ed25519` is found without any flag, and the
/// ciphertexts decrypt with the age CLI given that SSH key.
#[test]
fn an_ssh_recipient_is_decrypted_with_the_users_ssh_key() {
    let w = World::new();
    let ssh_dir = w.home().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let key = ssh_dir.join("id_ed25519");
    let out =
        run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "ops@example", "-f"]).arg(&key));
    assert!(out.status.success(), "{}", text(&out));
    let public = std::fs::read_to_string(ssh_dir.join("id_ed25519.pub")).unwrap();
    let def = w.definition(&[public.trim()]);
    assert_eq!(w.hakube(&["render", &def]).status.code(), Some(0));
    let out = w.hakube(&["render", &def]);
    assert_eq!(out.status.code(), Some(0), "~/.ssh/id_ed25519 was not used: {}", text(&out));
    assert!(text(&out).contains(" 0 created, 0 changed,"), "{}", text(&out));
    let token = age_decrypt(&key, &w.path("assets/token/bootstrap-token.age"));
    assert_eq!(token.len(), 24, "a bootstrap token and its newline");
}
