//! `hakube kubeconfig`: an admin kubeconfig for people, decrypted (or minted) in memory and
//! written only where asked, mode 0600.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use hakube_render::secrets::{Identities, Sources};
use hakube_render::{assets, kubeconfig, layout, pki};

/// What `hakube kubeconfig` was asked.
pub struct Request<'a> {
    pub definition: &'a Path,
    pub assets_dir: &'a Path,
    /// Write the kubeconfig to this file (replaced atomically, 0600).
    pub output: Option<&'a Path>,
    /// Merge into `$KUBECONFIG`'s first file or `~/.kube/config`.
    pub merge: bool,
    /// Mint a client certificate valid this long instead of handing out admin.conf's.
    pub ttl: Option<Duration>,
    pub identities: &'a [PathBuf],
}

/// The file `--merge` writes: the first entry of `$KUBECONFIG` (a `:`-separated list, as
/// kubectl reads it; kubectl writes new entries to the first file), else `~/.kube/config`.
fn merge_target() -> Result<PathBuf> {
    if let Some(first) =
        std::env::var_os("KUBECONFIG").and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context("neither KUBECONFIG nor HOME is set")?;
    Ok(PathBuf::from(home).join(".kube/config"))
}

/// Reads secret `rel` of the assets: the plaintext file, or its `.age` ciphertext decrypted
/// with identities found as [`Sources`] says.
fn read_secret(
    existing: &hakube_render::render::Existing,
    rel: &str,
    ids: &mut Option<Identities>,
    make_ids: &dyn Fn() -> Result<Identities>,
    recipients: &[String],
) -> Result<Vec<u8>> {
    if let Some(bytes) = existing.get(rel) {
        return Ok(bytes.clone());
    }
    let age = layout::encrypted(rel);
    let Some(ct) = existing.get(&age) else {
        bail!("the assets hold neither {rel} nor {age}; run `hakube render` first");
    };
    if ids.is_none() {
        *ids = Some(make_ids()?);
    }
    Ok(ids.as_ref().expect("set above").decrypt(ct, &age, recipients)?)
}

/// Puts the cluster, user and contexts of `new` into `old` (both kubeconfig documents):
/// entries of the same name are replaced, every other entry is kept; `current-context` is
/// set only when `old` has none. The user is renamed `<cluster>-admin` (and its contexts
/// follow), so that two clusters' `kubernetes-admin` users do not overwrite each other.
/// Returns the merged document and the contexts added.
pub fn merge(
    old: serde_yaml_ng::Value,
    new: &serde_yaml_ng::Value,
    cluster: &str,
) -> Result<(serde_yaml_ng::Value, Vec<String>)> {
    use serde_yaml_ng::{Mapping, Value};
    let mut doc = match old {
        Value::Null => Value::Mapping(Mapping::new()),
        Value::Mapping(m) => Value::Mapping(m),
        _ => bail!("it is not a kubeconfig (not a YAML mapping)"),
    };
    let user_name = format!("{cluster}-admin");
    let mut new = new.clone();
    for user in new["users"].as_sequence_mut().into_iter().flatten() {
        user["name"] = user_name.clone().into();
    }
    for ctx in new["contexts"].as_sequence_mut().into_iter().flatten() {
        ctx["context"]["user"] = user_name.clone().into();
    }
    let map = doc.as_mapping_mut().expect("a mapping");
    for (key, value) in [("apiVersion", "v1"), ("kind", "Config")] {
        map.entry(key.into()).or_insert_with(|| value.into());
    }
    let mut added = Vec::new();
    for list in ["clusters", "users", "contexts"] {
        let entries = map.entry(list.into()).or_insert_with(|| Value::Sequence(Vec::new()));
        if entries.is_null() {
            *entries = Value::Sequence(Vec::new());
        }
        let Some(seq) = entries.as_sequence_mut() else { bail!("its {list} is not a list") };
        for entry in new[list].as_sequence().into_iter().flatten() {
            let name = entry["name"].clone();
            seq.retain(|e| e["name"] != name);
            seq.push(entry.clone());
            if list == "contexts" {
                added.push(name.as_str().unwrap_or_default().to_string());
            }
        }
    }
    let current = map.get("current-context").and_then(Value::as_str).unwrap_or_default().to_string();
    if current.is_empty() {
        map.insert("current-context".into(), new["current-context"].clone());
    }
    Ok((doc, added))
}

pub fn run(req: Request<'_>) -> Result<ExitCode> {
    let templates = hakube_render::Templates::new(None).context("failed to load templates")?;
    let Some(loaded) = crate::load_definition(req.definition, &templates.hook_catalog())? else {
        return Ok(ExitCode::from(1));
    };
    let def = loaded.definition;
    // The same gate as install: only the layout's files, each matching the manifest.
    let manifest = assets::verify(req.assets_dir)?;
    let existing = assets::read_existing(req.assets_dir)?;
    let recipients = manifest.recipients.clone();
    let make_ids = || -> Result<Identities> {
        Ok(Identities::load(&Sources::from_env(req.identities.to_vec()), crate::render::any_ssh(&recipients))?)
    };
    let mut ids = None;
    let (text, until) = match req.ttl {
        None => {
            let bytes = read_secret(&existing, layout::ADMIN_KUBECONFIG, &mut ids, &make_ids, &recipients)?;
            (String::from_utf8(bytes).context("admin.conf is not UTF-8")?, None)
        }
        Some(ttl) => {
            let (_, leaf_validity) = def.pki.validities();
            if ttl.is_zero() || ttl > leaf_validity {
                bail!(
                    "--ttl {} is outside 1s to the cluster's certificate validity ({}): a short-lived certificate should be short",
                    humantime::format_duration(ttl),
                    humantime::format_duration(leaf_validity)
                );
            }
            let ca_crt =
                existing.get(&layout::pki("ca.crt")).context("the assets hold no pki/ca.crt; run `hakube render`")?;
            let ca_key = read_secret(&existing, &layout::pki("ca.key"), &mut ids, &make_ids, &recipients)?;
            let ca = pki::Issued {
                cert_pem: String::from_utf8(ca_crt.clone()).context("pki/ca.crt is not UTF-8")?,
                key_pem: String::from_utf8(ca_key).context("pki/ca.key is not UTF-8")?,
            };
            let client =
                pki::issue_leaf(&ca, &kubeconfig::admin_client_spec(ttl), def.pki.key_algorithm, SystemTime::now())
                    .context("failed to issue a client certificate")?;
            let until = pki::Validity::of(&client.cert_pem).map(|v| pki::utc_date(v.not_after)).ok();
            let servers = hakube_render::render::admin_servers(&def);
            (kubeconfig::admin_kubeconfig(&def.cluster_name, &servers, &ca.cert_pem, &client)?, until)
        }
    };
    let valid = until.map(|u| format!(", its client certificate valid until {u}")).unwrap_or_default();
    if let Some(output) = req.output {
        assets::write_atomic(output, 0o600, text.as_bytes())
            .with_context(|| format!("failed to write {}", output.display()))?;
        println!("wrote {} (mode 0600){valid}", output.display());
        return Ok(ExitCode::SUCCESS);
    }
    debug_assert!(req.merge);
    let target = merge_target()?;
    let old = match std::fs::read_to_string(&target) {
        Ok(t) => serde_yaml_ng::from_str(&t).with_context(|| format!("failed to parse {}", target.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_yaml_ng::Value::Null,
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", target.display())),
    };
    let new: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).context("the admin kubeconfig does not parse")?;
    let (doc, added) =
        merge(old, &new, &def.cluster_name).with_context(|| format!("cannot merge into {}", target.display()))?;
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    let yaml = serde_yaml_ng::to_string(&doc).context("failed to serialise the kubeconfig")?;
    assets::write_atomic(&target, 0o600, yaml.as_bytes())
        .with_context(|| format!("failed to write {}", target.display()))?;
    println!("merged into {} (mode 0600): context(s) {}{valid}", target.display(), added.join(", "));
    if doc["current-context"] != new["current-context"] {
        println!("use it: kubectl config use-context {}", new["current-context"].as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_other_entries_and_replaces_its_own() {
        let old: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "apiVersion: v1\nkind: Config\ncurrent-context: other\nclusters:\n- name: other\n  cluster: {server: https://o:6443}\n- name: prod\n  cluster: {server: https://stale:6443}\nusers:\n- name: other-user\n  user: {token: x}\ncontexts:\n- name: other\n  context: {cluster: other, user: other-user}\npreferences: {}\n",
        )
        .unwrap();
        let new: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "apiVersion: v1\nkind: Config\ncurrent-context: kubernetes-admin@prod\nclusters:\n- name: prod\n  cluster: {server: https://lb:6443}\nusers:\n- name: kubernetes-admin\n  user: {client-key-data: k}\ncontexts:\n- name: kubernetes-admin@prod\n  context: {cluster: prod, user: kubernetes-admin}\n",
        )
        .unwrap();
        let (doc, added) = merge(old, &new, "prod").unwrap();
        assert_eq!(added, ["kubernetes-admin@prod"]);
        assert_eq!(doc["current-context"], "other", "an existing current-context is kept");
        let clusters = doc["clusters"].as_sequence().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(clusters[1]["cluster"]["server"], "https://lb:6443", "its own cluster replaced");
        let users: Vec<&str> =
            doc["users"].as_sequence().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
        assert_eq!(users, ["other-user", "prod-admin"]);
        assert_eq!(doc["contexts"][1]["context"]["user"], "prod-admin");
        assert_eq!(doc["preferences"], serde_yaml_ng::Value::Mapping(Default::default()));
        let (fresh, _) = merge(serde_yaml_ng::Value::Null, &new, "prod").unwrap();
        assert_eq!(fresh["current-context"], "kubernetes-admin@prod");
        assert!(merge(serde_yaml_ng::Value::String("x".into()), &new, "prod").is_err());
    }
}
