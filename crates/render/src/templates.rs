//! The boot scripts: minijinja templates compiled into the binary from the workspace's
//! `templates/` directory (minijinja-embed), optionally overridden from a directory.
//!
//! Layout (names are paths relative to the templates directory):
//!
//! ```text
//! boot.sh.j2                       the script: header, values, helpers, step runner
//! steps/<step>.sh.j2               one file per step, defining <step>_done and <step>_run
//! hooks/preinstall/NAME.sh.j2      defines preinstall_done and preinstall_run
//! hooks/cloud-provider/NAME.sh.j2  defines cloud_provider_done and cloud_provider_run
//! hooks/network/NAME.sh.j2         defines network_done and network_run
//! hooks/cloud-config/NAME.j2       a cloud provider configuration file (text, not bash)
//! ```
//!
//! A file `DIR/<name>` of `--templates DIR` replaces the built-in template of the same
//! name, or adds one (a new hook). Only `*.j2` files are templates.
//!
//! The environment renders with strict undefined behaviour (a misspelt variable is an
//! error, not an empty string) and no auto-escaping. Every value from the definition
//! enters a script through the `shell_quote` filter, which quotes for bash (the `shlex`
//! crate) and refuses control characters, so a quoted value is always one line and is
//! safe even in a comment. The exception is a cloud-config file, which is embedded
//! verbatim in a quoted heredoc (nothing in it is expanded).

use hakube_assets::steps::InstallPhase;
use std::borrow::Cow;
use std::path::{Path, PathBuf};

use hakube_cluster::definition::{EtcdTopology, Node};
use hakube_cluster::downloads;
use hakube_cluster::{ClusterDefinition, HookCatalog, HookKind, Role, Version};
use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde::Serialize;

use crate::kubeadm::{kubelet_may_set_label, url_host, TOKEN_PLACEHOLDER};

/// The boot script template.
pub const BOOT_TEMPLATE: &str = "boot.sh.j2";

/// The heredoc delimiter a cloud-config file is embedded with; a line equal to it is
/// refused.
const CLOUD_CONFIG_DELIMITER: &str = "HAKUBE_CLOUD_CONFIG";

/// The heredoc delimiter the images step's kubeadm configuration is embedded with.
const IMAGES_CONFIG_DELIMITER: &str = "HAKUBE_KUBEADM_IMAGES";

/// Why templates could not be loaded or a boot script rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file or directory of `--templates DIR` could not be read.
    #[error("failed to read templates from {}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A template has a syntax error.
    #[error("failed to load template {name}")]
    Load {
        /// The template's name (path relative to the templates directory).
        name: String,
        /// minijinja's error, with the line.
        #[source]
        source: minijinja::Error,
    },
    /// The node is not in the definition.
    #[error("failed to render the boot script: node {node:?} is not in the definition")]
    UnknownNode {
        /// The name asked for.
        node: String,
    },
    /// The definition names a hook no template provides (validation normally catches it).
    #[error("failed to render the boot script of node {node}: there is no template {template} for {field} {name:?}")]
    MissingHook {
        /// The node.
        node: String,
        /// The definition field, e.g. `hooks.networkProvider`.
        field: String,
        /// The hook name as written.
        name: String,
        /// The template looked for.
        template: String,
    },
    /// A template failed while rendering (an undefined variable, a value `shell_quote`
    /// refuses, ...).
    #[error("failed to render {template} for node {node}")]
    Render {
        /// The template.
        template: String,
        /// The node.
        node: String,
        /// minijinja's error, with template and line.
        #[source]
        source: minijinja::Error,
    },
    /// The definition or a rendered hook is unusable (validation normally catches it).
    #[error("failed to render the boot script of node {node}: {problem}")]
    Invalid {
        /// The node.
        node: String,
        /// What is wrong.
        problem: String,
    },
}

/// The template set: the built-in templates, with `--templates DIR` overrides applied.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// The built-in templates, then every `*.j2` file under `overrides` (recursively;
    /// hidden files skipped) replacing or adding the template of the same relative path.
    ///
    /// # Errors
    ///
    /// [`TemplateError::Read`] when the override directory or a file in it cannot be
    /// read (or is not UTF-8); [`TemplateError::Load`] when an override has a syntax
    /// error.
    pub fn new(overrides: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_keep_trailing_newline(true);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_filter("shell_quote", shell_quote);
        // The built-in templates parse: tests render every one of them.
        minijinja_embed::load_templates!(&mut env);
        if let Some(dir) = overrides {
            let mut files = Vec::new();
            read_dir_templates(dir, "", &mut files)?;
            for (name, source) in files {
                env.add_template_owned(name.clone(), source).map_err(|source| TemplateError::Load { name, source })?;
            }
        }
        Ok(Templates { env })
    }

    /// The hooks of one kind, as names without suffix (`aws`, `calico`), sorted: the
    /// templates `hooks/<kind dir>/NAME<suffix>` (see [`HookKind::dir`] and
    /// [`HookKind::suffix`]), built in or added by the override directory.
    pub fn hook_names(&self, kind: HookKind) -> Vec<String> {
        let prefix = format!("hooks/{}/", kind.dir());
        let mut names: Vec<String> = self
            .env
            .templates()
            .filter_map(|(name, _)| name.strip_prefix(&prefix)?.strip_suffix(kind.suffix()).map(str::to_string))
            .filter(|name| !name.is_empty() && !name.contains('/'))
            .collect();
        names.sort();
        names
    }

    /// Every hook of every kind, for validating a definition's `hooks`.
    pub fn hook_catalog(&self) -> HookCatalog {
        let all: Vec<(HookKind, String)> = HookKind::ALL
            .into_iter()
            .flat_map(|kind| self.hook_names(kind).into_iter().map(move |n| (kind, n)))
            .collect();
        HookCatalog::new(all.iter().map(|(kind, name)| (*kind, name.as_str())))
    }

    /// The boot script of `node` (`nodes/<node>/boot.sh`): bash, with the steps
    /// [`boot_steps`] lists. `def` should have passed validation.
    ///
    /// # Errors
    ///
    /// [`TemplateError::UnknownNode`], [`TemplateError::MissingHook`] when a hook the
    /// definition names has no template, [`TemplateError::Invalid`] for a malformed
    /// kubernetesVersion or cloud-config, [`TemplateError::Render`] when a template fails
    /// (for instance a value with a control character reaching `shell_quote`).
    pub fn boot_script(&self, def: &ClusterDefinition, node: &str) -> Result<String, TemplateError> {
        self.boot_script_for(def, node, None)
    }

    /// [`Templates::boot_script`] of a render that carries `upgrade`: the script also holds
    /// the node's upgrade steps ([`upgrade_steps`]), `boot.sh upgrade-STEP`.
    ///
    /// # Errors
    ///
    /// As [`Templates::boot_script`].
    pub fn boot_script_for(
        &self,
        def: &ClusterDefinition,
        node: &str,
        upgrade: Option<&Upgrade>,
    ) -> Result<String, TemplateError> {
        let (role, n) = def.node(node).ok_or_else(|| TemplateError::UnknownNode { node: node.to_string() })?;
        self.boot_script_of(def, &SharedContext::new(def), role, n, upgrade)
    }

    /// [`Templates::boot_script_for`] of a node the caller holds (one of `def.nodes()`, with
    /// its role), with the part of the templates' context every node shares built once
    /// ([`SharedContext::new`] of the same `def`): rendering every node then costs time
    /// linear in their number (the whole definition was serialised again for each node,
    /// and each node looked up by name: 8000 nodes took 25 s).
    ///
    /// # Errors
    ///
    /// As [`Templates::boot_script`].
    pub fn boot_script_of(
        &self,
        def: &ClusterDefinition,
        shared: &SharedContext,
        role: Role,
        n: &Node,
        upgrade: Option<&Upgrade>,
    ) -> Result<String, TemplateError> {
        let node = n.node_name.as_str();
        let mut context = self.context(def, shared, role, n)?;
        if let Some(upgrade) = upgrade {
            context.upgrade_steps = upgrade_steps(def, node, Some(upgrade));
            context.upgrade_from = Some(upgrade.from.to_string());
            // Only the first master's checks list every node (the others' scripts stay small).
            if context.first_master {
                context.upgrade_nodes = def.nodes().map(|(_, n)| n.node_name.clone()).collect();
            }
        }
        if let (Some(hook), Role::Master) = (&context.hooks.cloud_config, context.role_enum) {
            let text = self.render(&hook.template, node, &context)?;
            let text = text.trim_end_matches('\n').to_string();
            if text.lines().any(|line| line == CLOUD_CONFIG_DELIMITER) {
                return Err(TemplateError::Invalid {
                    node: node.to_string(),
                    problem: format!(
                        "{} has a line {CLOUD_CONFIG_DELIMITER}, which ends its heredoc in boot.sh",
                        hook.template
                    ),
                });
            }
            context.cloud_config = Some(text);
        }
        self.render(BOOT_TEMPLATE, node, &context)
    }

    fn render(&self, template: &str, node: &str, context: &BootContext<'_>) -> Result<String, TemplateError> {
        let failed = |source| TemplateError::Render { template: template.to_string(), node: node.to_string(), source };
        self.env.get_template(template).and_then(|t| t.render(context)).map_err(failed)
    }

    fn context<'a>(
        &self,
        def: &'a ClusterDefinition,
        shared: &SharedContext,
        role: Role,
        node: &'a Node,
    ) -> Result<BootContext<'a>, TemplateError> {
        let name = node.node_name.as_str();
        let invalid = |problem: String| TemplateError::Invalid { node: name.to_string(), problem };
        let steps = boot_steps_of(def, role, name);
        let version = Version::parse(&def.kubernetes_version)
            .ok_or_else(|| invalid(format!("{:?} is not a Kubernetes version", def.kubernetes_version)))?;
        let first_master = def.first_master().is_some_and(|m| m.node_name == name);
        let package_repository = match &def.package_repository.url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://pkgs.k8s.io/core:/stable:/v{}", version.minor_string()),
        };
        let external_etcd = def.etcd.topology == EtcdTopology::External;
        let etcd_version =
            if external_etcd { Some(downloads::etcd_version(def, version.minor).map_err(invalid)?) } else { None };
        let downloads = downloads::files(def)
            .map_err(invalid)?
            .into_iter()
            .filter(|f| steps.contains(&f.step))
            .map(|f| Download { name: f.name, arch: f.arch, url: f.url, sha256: f.sha256 })
            .collect();
        let images_config = match steps.contains(&"images") {
            true => {
                let text = crate::kubeadm::images_config(def, role, node).map_err(|e| invalid(e.to_string()))?;
                if text.lines().any(|line| line == IMAGES_CONFIG_DELIMITER) {
                    return Err(invalid(format!("the images configuration has a line {IMAGES_CONFIG_DELIMITER}")));
                }
                Some(text.trim_end_matches('\n').to_string())
            }
            false => None,
        };
        let network_version = match steps.contains(&"network") {
            true => downloads::network_release(def, version.minor).ok(),
            false => None,
        };
        let etcd_initial_cluster = def
            .masters
            .iter()
            .map(|m| format!("{}=https://{}:2380", m.node_name, url_host(&m.private_ip)))
            .collect::<Vec<_>>()
            .join(",");
        let admin_labels = if first_master {
            def.nodes()
                .flat_map(|(_, n)| n.labels.iter().map(move |(k, v)| (n, k, v)))
                .filter(|(_, key, _)| !kubelet_may_set_label(key))
                .map(|(n, key, value)| AdminLabel { node: n.node_name.clone(), label: format!("{key}={value}") })
                .collect()
        } else {
            Vec::new()
        };
        let hooks = &def.hooks;
        let hook = |kind: HookKind, field: &str, value: &Option<String>| -> Result<Option<Hook>, TemplateError> {
            let Some(written) = value else { return Ok(None) };
            let hook_name = HookCatalog::normalise(written);
            let template = format!("hooks/{}/{hook_name}{}", kind.dir(), kind.suffix());
            if self.env.get_template(&template).is_err() {
                return Err(TemplateError::MissingHook {
                    node: name.to_string(),
                    field: format!("hooks.{field}"),
                    name: written.clone(),
                    template,
                });
            }
            Ok(Some(Hook { name: hook_name.to_string(), template }))
        };
        Ok(BootContext {
            cluster: shared.cluster.clone(),
            node,
            role: role.as_str(),
            role_enum: role,
            first_master,
            steps,
            kubernetes_version: version.to_string(),
            kubernetes_minor: version.minor_string(),
            package_repository,
            containerd_version: def.container_runtime.version.as_deref(),
            containerd_source: def.container_runtime.source.as_str(),
            containerd_listed: hakube_cluster::releases::containerd_listed(version.minor).to_vec(),
            containerd_listed_text: hakube_cluster::releases::containerd_listed_text(version.minor),
            containerd_tolerated: hakube_cluster::releases::containerd_tolerated_series(version.minor)
                .map(|series| series.iter().map(|(major, minor)| format!("{major}.{minor}")).collect()),
            sandbox_image: def.container_runtime.sandbox_image.as_deref(),
            image_repository: def.container_runtime.image_repository.as_deref(),
            registry_mirrors: def
                .container_runtime
                .registry_mirrors
                .iter()
                .map(|(registry, mirror)| RegistryMirror {
                    registry: registry.clone(),
                    server: registry_server(registry),
                    mirror: mirror.trim_end_matches('/').to_string(),
                })
                .collect(),
            external_etcd,
            etcd_version,
            downloads,
            network_version,
            needs_conntrack: version.minor < 32,
            firewall: def.firewall.as_str(),
            firewall_ports: hakube_cluster::ports::node_ports(def, role).iter().map(|p| p.spec()).collect(),
            network_manager_unmanaged: hakube_cluster::ports::network_manager_unmanaged(def),
            cloud_controller_manager_image: def
                .hooks
                .cloud_provider
                .as_deref()
                .and_then(|p| hakube_cluster::releases::cloud_controller_manager_image(HookCatalog::normalise(p), def)),
            etcd_initial_cluster,
            node_url_host: url_host(&node.private_ip),
            other_master_hosts: def
                .masters
                .iter()
                .filter(|m| m.node_name != node.node_name)
                .map(|m| url_host(&m.private_ip))
                .collect(),
            admin_labels,
            token_placeholder: TOKEN_PLACEHOLDER,
            hooks: Hooks {
                preinstall: hook(HookKind::Preinstall, "preinstall", &hooks.preinstall)?,
                cloud_provider: hook(HookKind::CloudProvider, "cloudProvider", &hooks.cloud_provider)?,
                cloud_config: hook(HookKind::CloudConfig, "cloudProviderConfig", &hooks.cloud_provider_config)?,
                network: hook(HookKind::Network, "networkProvider", &hooks.network_provider)?,
            },
            cloud_config: None,
            images_config,
            cri_socket: crate::kubeadm::CRI_SOCKET,
            upgrade_steps: Vec::new(),
            upgrade_from: None,
            upgrade_nodes: Vec::new(),
            facts: hakube_assets::steps::facts().into_iter().collect(),
        })
    }
}

/// A Kubernetes upgrade a render carries: the assets were last rendered for `from`, the
/// definition now says `to` (one minor ahead at most, never lower: [`check_upgrade`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade {
    /// The version the cluster runs before the upgrade.
    pub from: Version,
    /// The definition's kubernetesVersion.
    pub to: Version,
}

/// Whether `from` → `to` is an upgrade hakube renders, by kubeadm's rule and the
/// Kubernetes version skew policy (kubernetes.io/releases/version-skew-policy/: the API
/// server of an HA cluster may differ by at most one minor between instances, the kubelet
/// may never be newer than the API server, kubectl is supported within one minor of it;
/// kubeadm's "Upgrading kubeadm clusters": "Skipping MINOR versions when upgrading is
/// unsupported", and kubeadm upgrade apply refuses a jump of more than one minor
/// (phases/upgrade/policy.go EnforceVersionPolicies: "the specified version to upgrade to
/// ... is too high; kubeadm can upgrade only 1 minor version at a time")). A downgrade is
/// refused as kubeadm refuses it (policy.go: downgrades are not supported).
///
/// # Errors
///
/// A sentence naming both versions and what to do; for a skipped minor, the chain of
/// minors to go through.
pub fn check_upgrade(from: Version, to: Version) -> Result<(), String> {
    if to == from {
        return Ok(());
    }
    if (to.major, to.minor, to.patch) < (from.major, from.minor, from.patch) {
        return Err(format!(
            "kubernetesVersion {to} is lower than {from}, which the assets were rendered for: Kubernetes does not support a downgrade and hakube never renders one (if the cluster never ran {from}, restore manifest.json from git)"
        ));
    }
    if to.major != from.major {
        return Err(format!("kubernetesVersion {to} changes the major version of {from}"));
    }
    if to.minor > from.minor + 1 {
        let chain: Vec<String> = (from.minor..=to.minor).map(|m| format!("{}.{m}", from.major)).collect();
        return Err(format!(
            "kubernetesVersion {to} skips a minor from {from}: Kubernetes is upgraded one minor at a time ({}); set kubernetesVersion to a 1.{} release, render and run hakube upgrade, then go on",
            chain.join(" → "),
            from.minor + 1
        ));
    }
    Ok(())
}

/// The upgrade steps of `node`'s boot script for `upgrade` (none without one), in the
/// order `hakube upgrade` runs them there. On the first master: `upgrade-preflight` (every
/// node Ready and none beyond the target, etcd healthy), `upgrade-snapshot` (an etcd
/// snapshot hakube copies off the node), `upgrade-apply` (the new kubeadm, `kubeadm upgrade
/// apply`, then kubelet and kubectl), `upgrade-drain NODE` and `upgrade-uncordon NODE` (for
/// the workers), `upgrade-network` (only when the network add-on's pinned release differs
/// between the two minors), `upgrade-check` (every node Ready at the new version). On
/// every other node: `upgrade-node` (the new kubeadm, `kubeadm upgrade node`, kubelet and
/// kubectl, the kubelet restarted).
pub fn upgrade_steps(def: &ClusterDefinition, node: &str, upgrade: Option<&Upgrade>) -> Vec<&'static str> {
    let Some(upgrade) = upgrade else { return Vec::new() };
    if upgrade.from == upgrade.to {
        return Vec::new();
    }
    if def.first_master().is_none_or(|m| m.node_name != node) {
        return vec!["upgrade-node"];
    }
    let mut steps = vec!["upgrade-preflight", "upgrade-snapshot", "upgrade-apply", "upgrade-drain", "upgrade-uncordon"];
    if def.hooks.network_provider.is_some()
        && downloads::network_release(def, upgrade.from.minor).ok()
            != downloads::network_release(def, upgrade.to.minor).ok()
    {
        steps.push("upgrade-network");
    }
    steps.push("upgrade-check");
    steps
}

/// The steps of `node`'s boot script, in the order `boot.sh` runs them (and `boot.sh
/// --list` prints them); `None` when the node is not in `def`.
///
/// `preinstall` (when hooks.preinstall is set), `prepare`, `runtime`, `packages`; on
/// masters `images` (the control-plane images pulled before `init` or `join`, so that
/// hakube install pulls them on every master at once, in its parallel preparation, and not
/// on the path of the control-plane joins it runs one at a time), `pki`, and `etcd` with
/// the external topology; `init` on the first master,
/// `join` elsewhere; on the first master `cloud-provider` (when hooks.cloudProvider is
/// set) and `network` (unless hooks.networkProvider is null); `post` last.
pub fn boot_steps(def: &ClusterDefinition, node: &str) -> Option<Vec<&'static str>> {
    let (role, _) = def.node(node)?;
    Some(boot_steps_of(def, role, node))
}

/// [`boot_steps`] of a node of `def` whose role the caller knows (no search by name).
pub fn boot_steps_of(def: &ClusterDefinition, role: Role, node: &str) -> Vec<&'static str> {
    let first = def.first_master().is_some_and(|m| m.node_name == node);
    let mut steps = Vec::new();
    if def.hooks.preinstall.is_some() {
        steps.push("preinstall");
    }
    steps.extend(["prepare", "runtime", "packages"]);
    if role == Role::Master {
        // After packages (kubeadm, and containerd configured with its registry mirrors and
        // pause image); before pki and etcd, so that a registry the node cannot reach fails
        // the node before any of the cluster's secrets are placed on it or, with external
        // etcd, its member is added to the etcd cluster.
        steps.extend(["images", "pki"]);
        if def.etcd.topology == EtcdTopology::External {
            steps.push("etcd");
        }
    }
    steps.push(if first { "init" } else { "join" });
    if first && def.hooks.cloud_provider.is_some() {
        steps.push("cloud-provider");
    }
    if first && def.hooks.network_provider.is_some() {
        steps.push("network");
    }
    steps.push("post");
    steps
}

/// templates/step.sh, the step runner every node gets, as it is kept in the source tree: a
/// plain bash script (its tests run it as it is, without systemd and on lab nodes).
pub const STEP_RUNNER_SOURCE: &str = include_str!("../../../templates/step.sh");

/// The step runner as render ships it: [`STEP_RUNNER_SOURCE`] with each constant of its
/// constant block whose name is one of [`hakube_assets::steps::facts`] set to that fact's
/// value (shell-quoted), so bash and install read the same paths and names. Constants that
/// are not facts (`SYSTEMD_DIR`, sd_booted(3)'s directory) stay as they are.
pub fn step_runner() -> String {
    let facts: std::collections::BTreeMap<&str, &str> = hakube_assets::steps::facts().into_iter().collect();
    let mut out = String::with_capacity(STEP_RUNNER_SOURCE.len());
    for line in STEP_RUNNER_SOURCE.split_inclusive('\n') {
        let fact = line
            .strip_prefix("readonly ")
            .and_then(|rest| rest.split_once('='))
            .and_then(|(name, _)| facts.get(name).map(|value| (name, value)));
        match fact {
            Some((name, value)) => {
                // The facts are constants of hakube-assets: plain paths and words, which
                // shlex always quotes.
                let quoted = shlex::try_quote(value).map_or_else(|_| (*value).to_string(), Cow::into_owned);
                out.push_str(&format!("readonly {name}={quoted}\n"));
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The install phase boot.sh step `step` belongs to ([`boot_steps_of`] names every step);
/// `None` for a name that is not one of them.
pub fn step_phase(step: &str) -> Option<InstallPhase> {
    match step {
        "preinstall" | "prepare" | "runtime" | "packages" | "pki" | "etcd" | "images" => Some(InstallPhase::Prepare),
        "init" => Some(InstallPhase::Init),
        "join" => Some(InstallPhase::Join),
        // Add-ons the first master applies once the control plane is complete.
        "cloud-provider" | "network" => Some(InstallPhase::AddOns),
        "post" => Some(InstallPhase::Post),
        _ => None,
    }
}

/// The manifest's `phases`: for each install phase, the steps of `nodes` in it, in the
/// order they first appear going through the nodes in `order`. A step [`step_phase`] does
/// not know goes into [`InstallPhase::Prepare`] before init/join and into
/// [`InstallPhase::Post`] after, so a hook cannot fall out of the plan.
pub fn phases(
    order: &[String],
    nodes: &std::collections::BTreeMap<String, hakube_assets::NodeEntry>,
) -> Vec<hakube_assets::manifest::PhaseEntry> {
    let mut out: Vec<hakube_assets::manifest::PhaseEntry> = InstallPhase::ALL
        .iter()
        .map(|&phase| hakube_assets::manifest::PhaseEntry { phase, steps: Vec::new() })
        .collect();
    for entry in order.iter().filter_map(|n| nodes.get(n)) {
        let mut after_join = false;
        for step in &entry.steps {
            let phase = step_phase(step).unwrap_or(if after_join { InstallPhase::Post } else { InstallPhase::Prepare });
            after_join |= matches!(phase, InstallPhase::Init | InstallPhase::Join);
            let slot = out.iter_mut().find(|p| p.phase == phase).expect("every phase is listed");
            if !slot.steps.contains(step) {
                slot.steps.push(step.clone());
            }
        }
    }
    out.retain(|p| !p.steps.is_empty());
    out
}

/// The part of the boot scripts' template context that is the same for every node of a
/// definition, built once per render: the whole definition as a template value (`cluster`).
pub struct SharedContext {
    cluster: minijinja::Value,
}

impl SharedContext {
    /// The shared context of `def` (serialised once; each node's context refers to it,
    /// minijinja values being reference-counted).
    pub fn new(def: &ClusterDefinition) -> SharedContext {
        SharedContext { cluster: minijinja::Value::from_serialize(def) }
    }
}

/// What the templates see.
#[derive(Serialize)]
struct BootContext<'a> {
    /// [`upgrade_steps`] of this node (empty without an upgrade).
    upgrade_steps: Vec<&'static str>,
    /// The version upgraded from (`1.35.4`), when the render carries an upgrade.
    upgrade_from: Option<String>,
    /// Every node of the cluster, for the first master's upgrade checks.
    upgrade_nodes: Vec<String>,
    /// The on-node paths and protocol values hakube-assets spells
    /// ([`hakube_assets::steps::facts`]), by name: `{{ facts.STATE_DIR }}`.
    facts: std::collections::BTreeMap<&'static str, &'static str>,
    /// The whole definition, with its JSON field names (for hooks that want more), shared
    /// by every node ([`SharedContext`]).
    cluster: minijinja::Value,
    /// This node, with its JSON field names.
    node: &'a Node,
    /// `master` or `worker`.
    role: &'static str,
    #[serde(skip)]
    role_enum: Role,
    first_master: bool,
    steps: Vec<&'static str>,
    /// `1.36.4`.
    kubernetes_version: String,
    /// `1.36`.
    kubernetes_minor: String,
    /// Base URL of the Kubernetes package repository, without a trailing slash.
    package_repository: String,
    containerd_version: Option<&'a str>,
    /// containerRuntime.source: `docker` or `distribution`.
    containerd_source: &'static str,
    /// The oldest patch of each containerd series containerd lists for the Kubernetes minor
    /// (hakube_cluster::releases::containerd_listed), and the same as RELEASES.md writes it.
    containerd_listed: Vec<&'static str>,
    containerd_listed_text: String,
    /// The containerd series (`2.1`) the runtime step tolerates with a warning
    /// (hakube_cluster::releases::containerd_tolerated_series); `None`: every series.
    containerd_tolerated: Option<Vec<String>>,
    sandbox_image: Option<&'a str>,
    image_repository: Option<&'a str>,
    /// containerRuntime.registryMirrors, by registry.
    registry_mirrors: Vec<RegistryMirror>,
    external_etcd: bool,
    /// External topology: the etcd release the masters download (`3.6.14`).
    etcd_version: Option<String>,
    /// The files this node's steps download (see hakube_cluster::downloads).
    downloads: Vec<Download>,
    /// The network add-on's release (hooks.networkProviderVersion, or the one hakube pairs
    /// with the Kubernetes minor for a built-in add-on); `None` for a hook of its own
    /// without hooks.networkProviderVersion.
    network_version: Option<String>,
    /// kubeadm's preflight wants conntrack in PATH before Kubernetes 1.32.
    needs_conntrack: bool,
    /// The definition's `firewall`: `open` or `refuse`.
    firewall: &'static str,
    /// `PORT/PROTOCOL` of every port this node needs open (hakube_cluster::ports).
    firewall_ports: Vec<String>,
    /// NetworkManager's `unmanaged-devices` for the network add-on, if it documents one.
    network_manager_unmanaged: Option<&'static str>,
    /// The cloud provider's controller image (hakube_cluster::releases), when hakube knows
    /// one for the provider and minor.
    cloud_controller_manager_image: Option<String>,
    /// `name=https://ip:2380,...` over every master.
    etcd_initial_cluster: String,
    /// privateIP as it goes into a URL.
    node_url_host: String,
    /// The other masters' privateIPs as they go into a URL.
    other_master_hosts: Vec<String>,
    /// First master only: labels the kubelets may not set themselves.
    admin_labels: Vec<AdminLabel>,
    token_placeholder: &'static str,
    hooks: Hooks,
    /// The rendered cloud-config hook (masters only).
    cloud_config: Option<String>,
    /// Masters: the kubeadm configuration of the images step
    /// ([`crate::kubeadm::images_config`]), embedded in a quoted heredoc.
    images_config: Option<String>,
    /// [`crate::kubeadm::CRI_SOCKET`].
    cri_socket: &'static str,
}

/// One registry's pull-through mirror, as containerd's `hosts.toml` names them.
#[derive(Serialize)]
struct RegistryMirror {
    /// `registry.k8s.io`: the directory under `/etc/containerd/certs.d/`.
    registry: String,
    /// The registry's own URL (`server` in hosts.toml), the fallback.
    server: String,
    /// The mirror's URL (a `[host."..."]` table).
    mirror: String,
}

/// The `server` of a registry's hosts.toml: `https://<registry>`, except Docker Hub, whose
/// API is at registry-1.docker.io (containerd docs/hosts.md, "Setup Default Mirror for
/// docker.io").
fn registry_server(registry: &str) -> String {
    match registry {
        "docker.io" => "https://registry-1.docker.io".into(),
        other => format!("https://{other}"),
    }
}

/// A file the boot script downloads, as its `download_source` table lists it.
#[derive(Serialize)]
struct Download {
    /// `etcd`, `network`.
    name: &'static str,
    /// `None`: the same file for every architecture.
    #[serde(skip_serializing_if = "Option::is_none")]
    arch: Option<&'static str>,
    /// Upstream URL.
    url: String,
    /// Pinned sha256; `None`: unpinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

#[derive(Serialize)]
struct AdminLabel {
    node: String,
    /// `key=value`, as `kubectl label` and label selectors take it.
    label: String,
}

#[derive(Serialize)]
struct Hooks {
    preinstall: Option<Hook>,
    cloud_provider: Option<Hook>,
    cloud_config: Option<Hook>,
    network: Option<Hook>,
}

#[derive(Serialize)]
struct Hook {
    /// The normalised name (`aws`).
    name: String,
    /// The template to include (`hooks/preinstall/aws.sh.j2`).
    template: String,
}

/// The `shell_quote` filter: a string (or number) as one bash word, quoted when needed
/// (`shlex::try_quote`, POSIX single quotes). Control characters, newlines included, are
/// refused so that the result is always one line; so are values that are not strings
/// or numbers (an undefined or `none` value is a template bug).
fn shell_quote(value: &Value) -> Result<String, minijinja::Error> {
    let text: Cow<'_, str> = match value.kind() {
        ValueKind::String => Cow::Borrowed(value.as_str().unwrap_or_default()),
        ValueKind::Number => Cow::Owned(value.to_string()),
        other => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("shell_quote takes a string, not {other}"),
            ));
        }
    };
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("shell_quote refuses {text:?}: it contains the control character {c:?}"),
        ));
    }
    shlex::try_quote(&text)
        .map(Cow::into_owned)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("shell_quote refuses {text:?}: {e}")))
}

/// Every `*.j2` file under `dir` as `(relative/name.j2, text)`, in name order.
fn read_dir_templates(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) -> Result<(), TemplateError> {
    fn read(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
        move |source| TemplateError::Read { path: path.to_path_buf(), source }
    }
    let mut entries = std::fs::read_dir(dir).map_err(read(dir))?.collect::<Result<Vec<_>, _>>().map_err(read(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            return Err(read(&path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file name is not UTF-8",
            )));
        };
        if file_name.starts_with('.') {
            continue;
        }
        let name = format!("{prefix}{file_name}");
        if path.is_dir() {
            read_dir_templates(&path, &format!("{name}/"), out)?;
        } else if file_name.ends_with(".j2") {
            out.push((name, std::fs::read_to_string(&path).map_err(read(&path))?));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(extra: &str) -> ClusterDefinition {
        let json = format!(
            r#"{{
              "clusterName": "prod",
              "masterLoadBalancerAddress": "10.0.0.100",
              "kubernetesVersion": "1.36.4",
              "masters": [
                {{ "nodeName": "m0", "privateIP": "10.0.0.10" }},
                {{ "nodeName": "m1", "privateIP": "10.0.0.11" }},
                {{ "nodeName": "m2", "privateIP": "10.0.0.12" }}
              ],
              "workers": [
                {{ "nodeName": "w0", "privateIP": "10.0.0.20", "labels": {{ "node-role.kubernetes.io/ingress": "", "team": "a" }} }}
              ]
              {extra}
            }}"#
        );
        serde_json::from_str(&json).expect("test definition parses")
    }

    fn quote(text: &str) -> Result<String, minijinja::Error> {
        shell_quote(&Value::from(text))
    }

    #[test]
    fn shell_quote_quotes_and_refuses_control_characters() {
        assert_eq!(quote("10.0.0.1").unwrap(), "10.0.0.1");
        assert_eq!(quote("a b").unwrap(), "'a b'");
        assert_eq!(quote("").unwrap(), "''");
        let quoted = quote("$(touch x)'`;").unwrap();
        assert!(quoted.starts_with('\'') || quoted.starts_with('"'), "{quoted}");
        assert!(quote("a\nb").is_err());
        assert!(quote("a\rb").is_err());
        assert!(shell_quote(&Value::from(())).is_err(), "none is a template bug");
        assert_eq!(shell_quote(&Value::from(6443)).unwrap(), "6443");
    }

    #[test]
    fn hook_catalog_lists_the_builtin_hooks() {
        let t = Templates::new(None).unwrap();
        assert_eq!(t.hook_names(HookKind::Network), ["calico", "cilium", "flannel", "weave"]);
        assert_eq!(t.hook_names(HookKind::Preinstall), ["aws"]);
        assert_eq!(t.hook_names(HookKind::CloudProvider), ["aws"]);
        assert!(t.hook_names(HookKind::CloudConfig).is_empty());
        let catalog = t.hook_catalog();
        assert!(catalog.contains(HookKind::Network, "weave.sh.j2"));
        assert!(!catalog.contains(HookKind::Network, "aws"));
    }

    #[test]
    fn overrides_replace_and_add_templates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("hooks/network")).unwrap();
        std::fs::create_dir_all(dir.path().join("hooks/cloud-config")).unwrap();
        std::fs::write(
            dir.path().join("hooks/network/mycni.sh.j2"),
            "network_done() { true; }\nnetwork_run() { kube get nodes; }\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("hooks/network/calico.sh.j2"),
            "# my calico\nnetwork_done() { true; }\nnetwork_run() { true; }\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("hooks/cloud-config/acme.j2"), "[global]\nzone = {{ node.nodeName }}\n")
            .unwrap();
        std::fs::write(dir.path().join("hooks/network/README.md"), "not a template {{").unwrap();
        let t = Templates::new(Some(dir.path())).unwrap();
        assert_eq!(t.hook_names(HookKind::Network), ["calico", "cilium", "flannel", "mycni", "weave"]);
        assert_eq!(t.hook_names(HookKind::CloudConfig), ["acme"]);

        let def = definition(r#", "hooks": { "networkProvider": "calico", "cloudProviderConfig": "acme.j2" }"#);
        let script = t.boot_script(&def, "m0").unwrap();
        assert!(script.contains("# my calico\n"), "the override replaced the built-in hook");
        assert!(!script.contains("CALICO_VERSION"));
        assert!(script.contains("cat <<'HAKUBE_CLOUD_CONFIG'\n[global]\nzone = m0\nHAKUBE_CLOUD_CONFIG\n"), "{script}");
        let worker = t.boot_script(&def, "w0").unwrap();
        assert!(!worker.contains("HAKUBE_CLOUD_CONFIG"), "workers get no cloud-config");

        std::fs::write(dir.path().join("hooks/cloud-config/acme.j2"), "HAKUBE_CLOUD_CONFIG\n").unwrap();
        let t = Templates::new(Some(dir.path())).unwrap();
        assert!(matches!(t.boot_script(&def, "m0"), Err(TemplateError::Invalid { .. })));

        std::fs::write(dir.path().join("hooks/network/broken.sh.j2"), "{% if %}").unwrap();
        assert!(matches!(Templates::new(Some(dir.path())), Err(TemplateError::Load { .. })));
        assert!(matches!(Templates::new(Some(&dir.path().join("absent"))), Err(TemplateError::Read { .. })));
    }

    #[test]
    fn steps_per_role_and_topology() {
        let def = definition(
            r#", "etcd": { "topology": "external" }, "hooks": { "preinstall": "aws", "cloudProvider": "aws" }"#,
        );
        assert_eq!(
            boot_steps(&def, "m0").unwrap(),
            [
                "preinstall",
                "prepare",
                "runtime",
                "packages",
                "images",
                "pki",
                "etcd",
                "init",
                "cloud-provider",
                "network",
                "post"
            ]
        );
        assert_eq!(
            boot_steps(&def, "m1").unwrap(),
            ["preinstall", "prepare", "runtime", "packages", "images", "pki", "etcd", "join", "post"]
        );
        // Workers pull no control-plane image.
        assert_eq!(boot_steps(&def, "w0").unwrap(), ["preinstall", "prepare", "runtime", "packages", "join", "post"]);
        let plain = definition(r#", "hooks": { "networkProvider": null }"#);
        assert_eq!(
            boot_steps(&plain, "m0").unwrap(),
            ["prepare", "runtime", "packages", "images", "pki", "init", "post"]
        );
        assert_eq!(
            boot_steps(&plain, "m2").unwrap(),
            ["prepare", "runtime", "packages", "images", "pki", "join", "post"]
        );
        assert_eq!(boot_steps(&plain, "nope"), None);
    }

    /// The kubeadm configuration the images step embeds in `script`.
    fn images_heredoc(script: &str) -> &str {
        let start = script.find("<<'HAKUBE_KUBEADM_IMAGES'\n").expect("the images step's heredoc") + 26;
        let len = script[start..].find("\nHAKUBE_KUBEADM_IMAGES\n").expect("the heredoc ends");
        &script[start..start + len]
    }

    #[test]
    fn the_images_step_pulls_what_init_would_pull() {
        let t = Templates::new(None).unwrap();
        let def = definition("");
        for node in ["m0", "m1", "m2"] {
            let script = t.boot_script(&def, node).unwrap();
            assert!(
                script.contains("\n  kubeadm config images pull --config \"$KUBEADM_IMAGES_CONFIG\"\n"),
                "{script}"
            );
            assert!(script.contains("\nreadonly CRI_SOCKET=unix:///var/run/containerd/containerd.sock\n"));
            let config = images_heredoc(&script);
            let docs = crate::kubeadm::parse(config).expect("strict v1beta4");
            let [crate::kubeadm::Document::Init(init), crate::kubeadm::Document::Cluster(cluster)] = docs.as_slice()
            else {
                panic!("{node}: {docs:?}")
            };
            assert_eq!(init.node_registration.name, node);
            assert_eq!(init.node_registration.cri_socket, crate::kubeadm::CRI_SOCKET);
            assert!(init.bootstrap_tokens.is_empty(), "no token: the file is not secret");
            assert!(!config.contains(TOKEN_PLACEHOLDER));
            assert_eq!(cluster.kubernetes_version, "v1.36.4");
            assert_eq!(cluster.image_repository, None, "kubeadm's default, registry.k8s.io");
            assert!(cluster.etcd.local.is_some(), "stacked: kubeadm names the etcd image too");
            // The very ClusterConfiguration kubeadm init gets on the first master.
            let init_config =
                crate::kubeadm::kubeadm_config(&def, "m0", &format!("sha256:{}", "0".repeat(64)), "abcdef").unwrap();
            let init_docs = crate::kubeadm::parse(&init_config).unwrap();
            assert_eq!(init_docs.get(1), docs.get(1), "{node}");
        }
        let worker = t.boot_script(&def, "w0").unwrap();
        assert!(
            !worker.contains("images_run") && !worker.contains("HAKUBE_KUBEADM_IMAGES"),
            "workers pull no control-plane image"
        );

        // containerRuntime.imageRepository: kubeadm names (and pulls) the images from there.
        let mirrored = definition(r#", "containerRuntime": { "imageRepository": "mirror.example.com/k8s" }"#);
        let script = t.boot_script(&mirrored, "m1").unwrap();
        assert!(images_heredoc(&script).contains("\nimageRepository: mirror.example.com/k8s\n"), "{script}");
        assert!(
            script.contains("#   - Kubernetes v1.36.4;\n#   - images from containerRuntime.imageRepository mirror.example.com/k8s;\n# kubeadm reads"),
            "{script}"
        );

        // A registry mirror leaves the names alone: containerd pulls registry.k8s.io's images
        // from the mirror the runtime step configured.
        let mirror =
            definition(r#", "containerRuntime": { "registryMirrors": { "registry.k8s.io": "http://10.0.0.1:5000" } }"#);
        let script = t.boot_script(&mirror, "m2").unwrap();
        assert!(!images_heredoc(&script).contains("imageRepository"), "{script}");
        assert!(
            script.contains("#   - images from registry.k8s.io;\n#   - containerd pulls a mirrored registry's images from its mirror"),
            "{script}"
        );
        assert!(script.contains("[host.\"http://10.0.0.1:5000\"]"));

        // External etcd: the masters run etcd's release, so kubeadm names no etcd image.
        let external = definition(r#", "etcd": { "topology": "external" }"#);
        let script = t.boot_script(&external, "m1").unwrap();
        let config = images_heredoc(&script);
        assert!(config.contains("\n  external:\n") && !config.contains("\n  local:\n"), "{config}");
        assert!(script.contains("\n#   - no etcd image (the external topology).\n"), "{script}");

        // Another Kubernetes release is what kubeadm pulls.
        let older = serde_json::from_value::<ClusterDefinition>({
            let mut v = serde_json::to_value(definition("")).unwrap();
            v["kubernetesVersion"] = "1.35.4".into();
            v
        })
        .unwrap();
        assert!(images_heredoc(&t.boot_script(&older, "m0").unwrap()).contains("\nkubernetesVersion: v1.35.4\n"));
    }

    #[test]
    fn script_shape() {
        let t = Templates::new(None).unwrap();
        let def = definition(
            r#", "containerRuntime": { "version": "1.7.24-1", "sandboxImage": "registry.k8s.io/pause:3.10" }"#,
        );
        let script = t.boot_script(&def, "m0").unwrap();
        assert!(script.starts_with("#!/usr/bin/env bash\n# hakube boot script of node m0\n"));
        assert!(script.contains("\n# Generated by hakube render; do not edit."));
        assert!(script.contains("\nset -euo pipefail\n"));
        assert!(script.contains("readonly CONTAINERD_VERSION=1.7.24-1\n"));
        assert!(script.contains("readonly SANDBOX_IMAGE=registry.k8s.io/pause:3.10\n"));
        assert!(script.contains("readonly -a STEPS=(prepare runtime packages images pki init network post)\n"));
        for step in boot_steps(&def, "m0").unwrap() {
            let f = step.replace('-', "_");
            assert!(script.contains(&format!("\n{f}_done() {{")), "{step}_done missing");
            assert!(script.contains(&format!("\n{f}_run() {{")), "{step}_run missing");
        }
        // The first master applies labels the worker's kubelet may not set on itself.
        assert!(script.contains("readonly -a LABEL_NODES=(w0)\n"), "{script}");
        assert!(script.contains("readonly -a LABELS=('node-role.kubernetes.io/ingress=')\n"), "{script}");
        let other = t.boot_script(&def, "m1").unwrap();
        assert!(!other.contains("LABEL_NODES"));
        assert!(!script.contains("team=a"), "the kubelet sets that label itself (kubeadm.yaml)");
    }

    #[test]
    fn hostile_values_are_quoted_or_refused() {
        let t = Templates::new(None).unwrap();
        let mut def = definition("");
        def.workers[0].node_name = "w0$(touch pwned)'\"`".into();
        let script = t.boot_script(&def, "w0$(touch pwned)'\"`").unwrap();
        let line = script.lines().find(|l| l.starts_with("readonly NODE_NAME=")).unwrap();
        assert_eq!(line, format!("readonly NODE_NAME={}", shlex::try_quote("w0$(touch pwned)'\"`").unwrap()));
        assert!(!script.contains("node w0$(touch"), "the header comment holds the quoted name too");
        def.workers[0].node_name = "w0\nrm -rf /".into();
        let err = t.boot_script(&def, "w0\nrm -rf /").unwrap_err();
        assert!(matches!(err, TemplateError::Render { .. }), "{err}");
        assert!(err.to_string().starts_with("failed to render boot.sh.j2 for node"), "{err}");
    }

    #[test]
    fn missing_hook_and_unknown_node() {
        let t = Templates::new(None).unwrap();
        let def = definition(r#", "hooks": { "networkProvider": "nope" }"#);
        let err = t.boot_script(&def, "m0").unwrap_err();
        assert!(matches!(err, TemplateError::MissingHook { .. }), "{err}");
        assert!(err.to_string().contains("hooks/network/nope.sh.j2"), "{err}");
        assert!(matches!(t.boot_script(&definition(""), "zz"), Err(TemplateError::UnknownNode { .. })));
    }
}

#[cfg(test)]
mod step_runner_tests {
    use super::*;

    /// Every fact the step runner declares is rendered in from hakube-assets, and nothing
    /// else of the script changes.
    #[test]
    fn the_step_runner_gets_the_facts_rendered_in() {
        let rendered = step_runner();
        let facts: std::collections::BTreeMap<&str, &str> = hakube_assets::steps::facts().into_iter().collect();
        let mut seen = 0;
        for (source, out) in STEP_RUNNER_SOURCE.lines().zip(rendered.lines()) {
            match source
                .strip_prefix("readonly ")
                .and_then(|r| r.split_once('='))
                .and_then(|(n, _)| facts.get(n).map(|v| (n, v)))
            {
                Some((name, value)) => {
                    assert_eq!(out, format!("readonly {name}={value}"), "{name}");
                    seen += 1;
                }
                None => assert_eq!(source, out),
            }
        }
        assert_eq!(STEP_RUNNER_SOURCE.lines().count(), rendered.lines().count());
        for name in ["BOOT_SCRIPT", "STEP_LOG_DIR", "STEP_RUN_DIR", "UNIT_PREFIX"] {
            assert!(rendered.contains(&format!("readonly {name}={}\n", facts[name])), "{name} not rendered in");
        }
        assert_eq!(seen, 4, "the step runner's facts");
    }
}
