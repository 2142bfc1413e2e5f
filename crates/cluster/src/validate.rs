//! Parsing with positions, hakube-installer aliases, and the semantic checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::error::Category;

use crate::definition::{ClusterDefinition, Node};
use crate::diagnostic::{Diagnostic, Report, Severity};
use crate::locate::{JsonPath, Seg, SourceMap};

/// A Kubernetes release, `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Always 1 for supported versions.
    pub major: u32,
    /// The minor release, e.g. 36; packages on pkgs.k8s.io are per minor.
    pub minor: u32,
    /// The patch release.
    pub patch: u32,
}

impl Version {
    /// Parses `1.36.4` or `v1.36.4`. Pre-releases (`-rc.1`) and partial versions are not
    /// accepted: packages and images are pinned to an exact release.
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.strip_prefix('v').unwrap_or(text);
        let mut parts = text.split('.');
        let mut next = || -> Option<u32> {
            let p = parts.next()?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || (p.len() > 1 && p.starts_with('0')) {
                return None;
            }
            p.parse().ok()
        };
        let version = Version { major: next()?, minor: next()?, patch: next()? };
        parts.next().is_none().then_some(version)
    }

    /// `1.36`: the minor release, as pkgs.k8s.io names its repositories (`v1.36`).
    pub fn minor_string(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Which Kubernetes minors hakube renders for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportedVersions {
    /// Oldest minor hakube renders for: 31, where kubeadm.k8s.io/v1beta4 appeared.
    pub oldest_minor: u32,
    /// Newest minor hakube knows: 37 (released August 2026).
    pub newest_minor: u32,
    /// Oldest minor upstream still maintains (the newest three); older ones draw a warning.
    pub maintained_from: u32,
}

/// The versions this build of hakube supports (see docs/upstream-facts.md, "Versions").
pub const SUPPORTED: SupportedVersions = SupportedVersions { oldest_minor: 31, newest_minor: 37, maintained_from: 35 };

/// A kind of hook template under `templates/hooks/<dir>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookKind {
    /// `hooks.preinstall`: templates/hooks/preinstall/NAME.sh.j2.
    Preinstall,
    /// `hooks.cloudProvider`: templates/hooks/cloud-provider/NAME.sh.j2.
    CloudProvider,
    /// `hooks.cloudProviderConfig`: templates/hooks/cloud-config/NAME.j2.
    CloudConfig,
    /// `hooks.networkProvider`: templates/hooks/network/NAME.sh.j2.
    Network,
}

impl HookKind {
    /// Every kind, in a fixed order.
    pub const ALL: [HookKind; 4] =
        [HookKind::Preinstall, HookKind::CloudProvider, HookKind::CloudConfig, HookKind::Network];

    /// The directory under templates/hooks/ that holds this kind.
    pub fn dir(self) -> &'static str {
        match self {
            HookKind::Preinstall => "preinstall",
            HookKind::CloudProvider => "cloud-provider",
            HookKind::CloudConfig => "cloud-config",
            HookKind::Network => "network",
        }
    }

    /// The file suffix of this kind's templates.
    pub fn suffix(self) -> &'static str {
        match self {
            HookKind::CloudConfig => ".j2",
            _ => ".sh.j2",
        }
    }

    fn field(self) -> &'static str {
        match self {
            HookKind::Preinstall => "preinstall",
            HookKind::CloudProvider => "cloudProvider",
            HookKind::CloudConfig => "cloudProviderConfig",
            HookKind::Network => "networkProvider",
        }
    }
}

/// The hook templates that exist, by kind, as bare names (`aws`, `calico`). The
/// binary builds it from the built-in templates and any `--templates` directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookCatalog {
    names: BTreeMap<HookKind, BTreeSet<String>>,
    /// Every hook name counts as existing ([`HookCatalog::any`]).
    any: bool,
}

impl HookCatalog {
    /// A catalog from `(kind, name)` pairs; names are normalised with
    /// [`HookCatalog::normalise`].
    pub fn new<'a>(hooks: impl IntoIterator<Item = (HookKind, &'a str)>) -> Self {
        let mut names: BTreeMap<HookKind, BTreeSet<String>> = BTreeMap::new();
        for (kind, name) in hooks {
            names.entry(kind).or_default().insert(Self::normalise(name).to_string());
        }
        HookCatalog { names, any: false }
    }

    /// A catalog in which every hook exists: for reading a definition to compare it with
    /// assets already rendered (install's staleness check), where which hook templates
    /// render had is render's business, not install's.
    pub fn any() -> Self {
        HookCatalog { names: BTreeMap::new(), any: true }
    }

    /// Whether a hook of that kind and (normalised) name exists.
    pub fn contains(&self, kind: HookKind, name: &str) -> bool {
        self.any || self.names.get(&kind).is_some_and(|s| s.contains(Self::normalise(name)))
    }

    /// The names of one kind, sorted.
    pub fn names(&self, kind: HookKind) -> Vec<&str> {
        self.names.get(&kind).map(|s| s.iter().map(String::as_str).collect()).unwrap_or_default()
    }

    /// A hook name without hakube-installer's template suffix: `aws.sh.j2` -> `aws`.
    pub fn normalise(name: &str) -> &str {
        name.strip_suffix(".sh.j2").or_else(|| name.strip_suffix(".j2")).unwrap_or(name)
    }
}

/// Deserialises the definition, collecting syntax and type errors (the first only) and
/// unknown fields (all of them). `None` when there is no usable value.
pub(crate) fn parse(source: &str, map: &SourceMap<'_>, report: &mut Report) -> Option<ClusterDefinition> {
    let mut unknown: Vec<JsonPath> = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let mut de = serde_json::Deserializer::from_str(source);
    let result: Result<ClusterDefinition, (JsonPath, serde_json::Error)> = {
        let ignoring = serde_ignored::Deserializer::new(&mut de, &mut record);
        serde_path_to_error::deserialize(ignoring).map_err(|e| (path_to_error_path(e.path()), e.into_inner()))
    };
    let result = result.and_then(|def| de.end().map(|()| def).map_err(|e| (JsonPath::default(), e)));
    let definition = match result {
        Ok(def) => Some(def),
        Err((path, inner)) => {
            let message = strip_position(&inner.to_string());
            let value = serde_json::from_str::<serde_json::Value>(source).ok();
            let (path, position, help, message) = match inner.classify() {
                // A value of the wrong JSON type where an enum is expected: serde_json
                // reports it as a syntax error ("expected value") though the text is JSON.
                Category::Syntax if !path.0.is_empty() && value.is_some() => {
                    let schema = serde_json::to_value(schemars::schema_for!(ClusterDefinition)).unwrap_or_default();
                    let allowed = allowed_values(&schema, &path);
                    let found = value.as_ref().and_then(|v| value_at(v, &path)).map_or("this value".into(), describe);
                    let listed = allowed.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ");
                    let expected =
                        if allowed.is_empty() { "a value of another type".into() } else { format!("one of {listed}") };
                    let position = map.value_position(&path).or(Some((inner.line(), inner.column())));
                    let help = (!allowed.is_empty()).then(|| format!("write one of {listed} (a JSON string)"));
                    (path, position, help, format!("invalid type: {found}, expected {expected}"))
                }
                Category::Syntax | Category::Eof | Category::Io => (
                    JsonPath::default(),
                    Some((inner.line(), inner.column())),
                    Some("the file must be plain JSON (no comments, no trailing commas)".to_string()),
                    message,
                ),
                Category::Data => {
                    let position = map.value_position(&path).or(Some((inner.line(), inner.column())));
                    (path, position, None, message)
                }
            };
            report.push(Diagnostic {
                severity: Severity::Error,
                origin: map.origin.to_string(),
                position,
                path: path.to_string(),
                message,
                help,
            });
            None
        }
    };
    if !unknown.is_empty() {
        // The schema names the fields each object allows; built once for all suggestions.
        let schema = serde_json::to_value(schemars::schema_for!(ClusterDefinition)).unwrap_or_default();
        for path in unknown {
            report.push(unknown_field(&path, map, &schema));
        }
    }
    if report.has_errors() {
        return None;
    }
    definition
}

/// The values the JSON Schema allows at `path` when it is an enum (`enum`, or `const`s
/// under `oneOf`/`anyOf`, through `$ref`s), in the schema's order; empty otherwise.
fn allowed_values(schema: &serde_json::Value, path: &JsonPath) -> Vec<String> {
    let defs = schema.get("$defs").cloned().unwrap_or_default();
    let Some((last, parent)) = path.0.split_last() else { return Vec::new() };
    let mut node = resolve_schema(schema, &defs);
    for seg in parent.iter().chain(std::iter::once(last)) {
        let next = match seg {
            Seg::Key(k) => node.get("properties").and_then(|p| p.get(k)),
            Seg::Index(_) => node.get("items"),
        };
        let Some(next) = next else { return Vec::new() };
        node = if std::ptr::eq(seg, last) { next } else { resolve_schema(next, &defs) };
    }
    let mut out = Vec::new();
    collect_consts(node, &defs, &mut out, 0);
    out
}

fn collect_consts(node: &serde_json::Value, defs: &serde_json::Value, out: &mut Vec<String>, depth: u32) {
    if depth > 8 {
        return;
    }
    if let Some(target) = node.get("$ref").and_then(|r| r.as_str()).and_then(|r| r.strip_prefix("#/$defs/")) {
        if let Some(target) = defs.get(target) {
            collect_consts(target, defs, out, depth + 1);
        }
    }
    if let Some(c) = node.get("const").and_then(|c| c.as_str()) {
        out.push(c.to_string());
    }
    for values in node.get("enum").and_then(|e| e.as_array()).into_iter().flatten() {
        out.extend(values.as_str().map(str::to_string));
    }
    for key in ["oneOf", "anyOf"] {
        for alt in node.get(key).and_then(|a| a.as_array()).into_iter().flatten() {
            collect_consts(alt, defs, out, depth + 1);
        }
    }
}

/// The JSON value at `path`, if there is one.
fn value_at<'v>(value: &'v serde_json::Value, path: &JsonPath) -> Option<&'v serde_json::Value> {
    path.0.iter().try_fold(value, |v, seg| match seg {
        Seg::Key(k) => v.get(k),
        Seg::Index(i) => v.get(*i),
    })
}

/// A JSON value as serde names it in type errors: integer `5`, boolean `true`, a map, ...
fn describe(value: &serde_json::Value) -> String {
    use serde_json::Value as V;
    match value {
        V::Null => "null".into(),
        V::Bool(b) => format!("boolean `{b}`"),
        V::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        V::Number(n) => format!("integer `{n}`"),
        V::String(s) => format!("string {s:?}"),
        V::Array(_) => "a sequence".into(),
        V::Object(_) => "a map".into(),
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> JsonPath {
    use serde_ignored::Path as P;
    match path {
        P::Root => JsonPath::default(),
        P::Seq { parent, index } => ignored_path(parent).index(*index),
        P::Map { parent, key } => ignored_path(parent).key(key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => ignored_path(parent),
    }
}

fn path_to_error_path(path: &serde_path_to_error::Path) -> JsonPath {
    use serde_path_to_error::Segment as S;
    let mut out = JsonPath::default();
    for seg in path.iter() {
        out = match seg {
            S::Seq { index } => out.index(*index),
            S::Map { key } => out.key(key),
            S::Enum { variant } => out.key(variant),
            S::Unknown => out,
        };
    }
    out
}

/// An unknown-field error, with the closest known field of that object as a suggestion.
fn unknown_field(path: &JsonPath, map: &SourceMap<'_>, schema: &serde_json::Value) -> Diagnostic {
    let (parent, name) = match path.0.split_last() {
        Some((Seg::Key(name), parent)) => (JsonPath(parent.to_vec()), name.clone()),
        _ => (JsonPath::default(), path.to_string()),
    };
    let known = known_fields(schema, &parent);
    let suggestion = known
        .iter()
        .map(|k| (strsim::jaro_winkler(&name.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone());
    let help = match suggestion {
        Some(k) => Some(format!("did you mean `{k}`?")),
        None if !known.is_empty() => Some(format!("known fields here: {}", known.join(", "))),
        None => None,
    };
    Diagnostic {
        severity: Severity::Error,
        origin: map.origin.to_string(),
        position: map.key_position(path),
        path: path.to_string(),
        message: format!("unknown field `{name}`"),
        help,
    }
}

/// The property names the JSON Schema allows for the object at `path` (deprecated ones
/// left out, so suggestions point at current fields).
fn known_fields(schema: &serde_json::Value, path: &JsonPath) -> Vec<String> {
    let defs = schema.get("$defs").cloned().unwrap_or_default();
    let mut node = resolve_schema(schema, &defs);
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => node.get("properties").and_then(|p| p.get(k)),
            Seg::Index(_) => node.get("items"),
        };
        match next {
            Some(n) => node = resolve_schema(n, &defs),
            None => return Vec::new(),
        }
    }
    node.get("properties")
        .and_then(|p| p.as_object())
        .map(|props| {
            props
                .iter()
                .filter(|(k, v)| v.get("deprecated") != Some(&serde_json::Value::Bool(true)) && !k.starts_with('$'))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Follows `$ref` into `$defs` and, for `Option`s, the non-null branch of `anyOf`.
fn resolve_schema<'v>(mut node: &'v serde_json::Value, defs: &'v serde_json::Value) -> &'v serde_json::Value {
    for _ in 0..8 {
        if let Some(name) = node.get("$ref").and_then(|r| r.as_str()).and_then(|r| r.strip_prefix("#/$defs/")) {
            match defs.get(name) {
                Some(target) => node = target,
                None => break,
            }
        } else if let Some(alt) = node.get("anyOf").or_else(|| node.get("oneOf")).and_then(|a| a.as_array()) {
            match alt.iter().find(|s| s.get("type").and_then(|t| t.as_str()) != Some("null")) {
                Some(target) => node = target,
                None => break,
            }
        } else {
            break;
        }
    }
    node
}

struct Checker<'a, 'm> {
    map: &'a SourceMap<'m>,
    report: &'a mut Report,
}

impl Checker<'_, '_> {
    fn emit(&mut self, severity: Severity, path: &JsonPath, message: String, help: Option<String>) {
        self.report.push(Diagnostic {
            severity,
            origin: self.map.origin.to_string(),
            position: self.map.value_position(path),
            path: path.to_string(),
            message,
            help,
        });
    }
    fn error(&mut self, path: &JsonPath, message: String, help: Option<String>) {
        self.emit(Severity::Error, path, message, help);
    }
    fn warn(&mut self, path: &JsonPath, message: String, help: Option<String>) {
        self.emit(Severity::Warning, path, message, help);
    }
}

fn root(key: &str) -> JsonPath {
    JsonPath::default().key(key)
}

/// Maps hakube-installer's fields onto current ones and warns about each legacy field.
pub(crate) fn normalise(def: &mut ClusterDefinition, map: &SourceMap<'_>, report: &mut Report) {
    let mut c = Checker { map, report };
    for (field, why) in def.legacy_fields() {
        let path = root(field);
        c.report.push(Diagnostic {
            severity: Severity::Warning,
            origin: map.origin.to_string(),
            position: map.key_position(&path),
            path: path.to_string(),
            message: why.to_string(),
            help: None,
        });
    }
    if let Some(fqdn) = def.master_fqdn.clone() {
        if !def.master_fqdns.contains(&fqdn) {
            def.master_fqdns.insert(0, fqdn);
        }
    }
    let aliases = [
        ("masterLoadBalancerIP", def.master_load_balancer_ip.clone()),
        ("masterLoadBalancerFQDN", def.master_load_balancer_fqdn.clone()),
    ];
    for (field, value) in aliases {
        let Some(value) = value else { continue };
        match &def.master_load_balancer_address {
            None => def.master_load_balancer_address = Some(value),
            Some(existing) if *existing == value => {}
            Some(existing) => c.error(
                &root(field),
                format!("`{field}` ({value}) contradicts masterLoadBalancerAddress ({existing})"),
                Some(format!("keep masterLoadBalancerAddress and remove `{field}`")),
            ),
        }
    }
    let hooks = &mut def.hooks;
    for slot in [
        &mut hooks.preinstall,
        &mut hooks.cloud_provider,
        &mut hooks.cloud_provider_config,
        &mut hooks.network_provider,
    ] {
        if let Some(name) = slot.as_mut() {
            *name = HookCatalog::normalise(name).to_string();
        }
    }
}

/// Every semantic check; all problems are pushed, none stops the others.
pub(crate) fn check(def: &ClusterDefinition, map: &SourceMap<'_>, hooks: &HookCatalog, report: &mut Report) {
    let mut c = Checker { map, report };
    check_names(def, &mut c);
    check_nodes(def, &mut c);
    check_networks(def, &mut c);
    check_control_plane(def, &mut c);
    check_version(def, &mut c);
    check_durations(def, &mut c);
    check_hooks(def, hooks, &mut c);
    check_ssh_and_misc(def, &mut c);
    check_etcd(def, &mut c);
    check_downloads(def, &mut c);
    check_recipients(def, &mut c);
    check_upgrade_settings(def, &mut c);
    check_container_runtime(def, &mut c);
}

/// containerRuntime.version: a warning when containerd does not list the pinned release for
/// kubernetesVersion's minor (containerd's RELEASES.md, crate::releases), saying whether the
/// runtime step will only warn or fail (docs/upstream-facts.md "Container runtime").
fn check_container_runtime(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    use crate::releases::{containerd_listed_text, containerd_support, ContainerdSupport};
    let (Some(pinned), Some(k8s)) = (&def.container_runtime.version, Version::parse(&def.kubernetes_version)) else {
        return;
    };
    let path = root("containerRuntime").key("version");
    let listed = containerd_listed_text(k8s.minor);
    let docker = match def.container_runtime.source {
        crate::definition::ContainerRuntimeSource::Docker => "",
        crate::definition::ContainerRuntimeSource::Distribution => " (containerRuntime.source \"docker\" has them)",
    };
    let help = Some(format!(
        "containerd lists {listed} for Kubernetes 1.{} (containerd RELEASES.md); pin one of those{docker}, or unset containerRuntime.version",
        k8s.minor
    ));
    match containerd_support(pinned, k8s.minor) {
        None => c.warn(&path, format!("{pinned:?} names no containerd release (MAJOR.MINOR[.PATCH])"), help),
        Some(ContainerdSupport::Supported) => {}
        Some(ContainerdSupport::Tolerated) => c.warn(
            &path,
            format!("containerd does not list {pinned} for Kubernetes 1.{}; the runtime step will warn", k8s.minor),
            help,
        ),
        Some(ContainerdSupport::Unsupported) => c.warn(
            &path,
            format!("containerd {pinned} is not supported for Kubernetes 1.{}; the runtime step will fail", k8s.minor),
            help,
        ),
    }
}

/// Release tags (`hooks.networkProviderVersion`, `hooks.cloudProviderVersion`): they go into
/// URLs and image references, so letters, digits and `.+_-` only, starting with a letter or
/// digit.
fn is_release_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b".+_-".contains(c))
}

/// `upgrade.maxUnavailable`: a count of at least 1, or `N%` with N from 1 to 100.
fn check_upgrade_settings(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    use crate::definition::MaxUnavailable;
    let path = root("upgrade").key("maxUnavailable");
    match &def.upgrade.max_unavailable {
        Some(MaxUnavailable::Count(0)) => c.error(
            &path,
            "0 would upgrade no worker".into(),
            Some("give at least 1, or a percentage such as \"10%\"".into()),
        ),
        Some(MaxUnavailable::Percent(p)) => {
            let ok = p.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| (1..=100).contains(&n));
            if !ok {
                c.error(
                    &path,
                    format!("{p:?} is not a percentage from 1% to 100%"),
                    Some("give a count such as 2, or a percentage such as \"25%\"".into()),
                );
            }
        }
        _ => {}
    }
}

/// `secrets.recipients`: each one an age recipient ([`crate::recipients::parse`]), none
/// given twice (the same key as another, comments aside).
fn check_recipients(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    let path = root("secrets").key("recipients");
    let mut seen = std::collections::BTreeMap::new();
    for (i, text) in def.secrets.recipients.iter().enumerate() {
        match crate::recipients::parse(text) {
            Ok(r) => {
                if let Some(first) = seen.insert(r.canonical(), i) {
                    c.error(
                        &path.index(i),
                        format!("the same recipient as secrets.recipients[{first}]"),
                        Some("list each recipient once".into()),
                    );
                }
            }
            Err(problem) => c.error(
                &path.index(i),
                format!("{text:?} is {problem}"),
                Some("give the public key `age-keygen -y KEYFILE` prints, or an SSH public key line (ssh-ed25519 or ssh-rsa)".into()),
            ),
        }
    }
}

/// Downloaded files: every pin well formed and for a file the cluster downloads; a warning
/// for each file nothing pins; a release for every built-in add-on the cluster uses.
fn check_downloads(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    use crate::releases::{cloud_controller_manager_image, network_addon, CLOUD_CONTROLLER_MANAGERS};
    let hooks = root("hooks");
    for (value, field, what) in [
        (&def.hooks.network_provider_version, "networkProviderVersion", "the network add-on's release tag"),
        (&def.hooks.cloud_provider_version, "cloudProviderVersion", "the cloud controller manager's image tag"),
    ] {
        if let Some(tag) = value {
            if !is_release_tag(tag) {
                c.error(
                    &hooks.key(field),
                    format!("{tag:?} is not a release tag"),
                    Some(format!("give {what}, e.g. v1.2.3 (letters, digits and .+_- only)")),
                );
            }
        }
    }
    let Some(minor) = Version::parse(&def.kubernetes_version).map(|v| v.minor) else { return };
    let network = def.hooks.network_provider.as_deref().map(HookCatalog::normalise);
    if let Some(addon) = network.and_then(network_addon) {
        let path = hooks.key("networkProvider");
        match (&def.hooks.network_provider_version, addon.release_for(minor)) {
            (Some(_), _) => {}
            (None, None) => c.error(
                &path,
                format!("hakube pairs no {} release with Kubernetes 1.{minor}", addon.provider),
                Some(format!(
                    "set hooks.networkProviderVersion to a {} release its project supports for Kubernetes 1.{minor}",
                    addon.provider
                )),
            ),
            (None, Some(r)) if !r.stated && addon.provider == "weave" => c.warn(
                &path,
                format!("Weave Net is unmaintained (Weaveworks closed in 2024): its last release {} states no support for Kubernetes 1.{minor}", r.tag),
                Some("move to calico, cilium or flannel; weave stays accepted for definitions written for hakube-installer".into()),
            ),
            (None, Some(r)) if !r.stated => c.warn(
                &path,
                format!("no {} release states support for Kubernetes 1.{minor} yet; hakube installs {}, the newest it knows", addon.provider, r.tag),
                Some("check the project's compatibility page, and set hooks.networkProviderVersion to a release it lists".into()),
            ),
            (None, Some(_)) => {}
        }
    }
    if let Some(provider) = def.hooks.cloud_provider.as_deref().map(HookCatalog::normalise) {
        let known = CLOUD_CONTROLLER_MANAGERS.iter().any(|(p, _, _)| *p == provider);
        if known && cloud_controller_manager_image(provider, def).is_none() {
            c.error(
                &hooks.key("cloudProvider"),
                format!("hakube knows no published {provider} cloud controller manager for Kubernetes 1.{minor}"),
                Some("set hooks.cloudProviderVersion to a published image tag of that minor".into()),
            );
        }
    }
    if def.firewall == crate::definition::FirewallMode::Open && !crate::ports::add_on_ports_known(def) {
        c.warn(
            &hooks.key("networkProvider"),
            "hakube does not know the ports of this network hook: on nodes where firewalld runs, the prepare step opens only Kubernetes' own".into(),
            Some("open the add-on's ports in the hook itself (firewall-cmd --permanent --add-port=PORT/PROTOCOL)".into()),
        );
    }
    let Ok(files) = crate::downloads::files(def) else { return };
    let pins = root("downloads").key("sha256");
    for (url, sha) in &def.downloads.sha256 {
        let p = pins.key(url);
        if !is_sha256(sha) {
            c.error(&p, format!("{sha:?} is not a sha256 (64 lowercase hex digits)"), None);
        }
        if !files.iter().any(|f| &f.url == url) {
            c.warn(
                &p,
                format!("this cluster downloads no {url}"),
                Some("pin files by the URLs `hakube render --list-downloads` prints".into()),
            );
        }
    }
    for f in files.iter().filter(|f| f.sha256.is_none()) {
        c.warn(
            &pins,
            format!("{} is not pinned: its project publishes no sha256, so the {} step cannot check what it downloads", f.url, f.step),
            Some(format!("pin it: \"downloads\": {{\"sha256\": {{\"{}\": \"<sha256>\"}}}} with the sum of a copy you reviewed (curl -fsSL URL | sha256sum)", f.url)),
        );
    }
}

/// 64 lowercase hex digits.
fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The etcd release of the external topology: known, or pinned with its sums, and one that
/// kubeadm accepts (crate::releases has the data and its sources).
fn check_etcd(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    use crate::definition::EtcdTopology;
    use crate::releases::{etcd_archive_sha256, etcd_for_minor, min_external_etcd, semver, ARCHITECTURES};
    let etcd = &def.etcd;
    let path = root("etcd");
    // Stacked: kubeadm picks etcd's image; etcd.version and etcd.sha256 are not used (a
    // definition may carry them for the day it moves to the external topology).
    if etcd.topology == EtcdTopology::Stacked {
        return;
    }
    let Some(minor) = Version::parse(&def.kubernetes_version).map(|v| v.minor) else { return };
    let version = match (&etcd.version, etcd_for_minor(minor)) {
        (Some(v), _) => v.as_str(),
        (None, Some(v)) => v,
        (None, None) => {
            c.error(
                &path,
                format!("hakube pairs no etcd release with Kubernetes 1.{minor}"),
                Some(
                    "set etcd.version (a release kubeadm accepts) and etcd.sha256 (from the release's SHA256SUMS)"
                        .into(),
                ),
            );
            return;
        }
    };
    let version_path = path.key("version");
    let Some(parsed) = semver(version) else {
        c.error(
            &version_path,
            format!("{version:?} is not an etcd release"),
            Some("write MAJOR.MINOR.PATCH, e.g. 3.6.14".into()),
        );
        return;
    };
    if let Some(min) = min_external_etcd(minor) {
        if Some(parsed) < semver(min) {
            c.error(
                &version_path,
                format!("kubeadm 1.{minor} refuses external etcd {version}: its ExternalEtcdVersion preflight check needs {min} or newer"),
                Some(format!("use etcd {min} or newer (Debian 12 ships 3.4, Debian 13 3.5.16: hakube downloads etcd's own release)")),
            );
        }
    }
    for (arch, sha) in &etcd.sha256 {
        let p = path.key("sha256").key(arch);
        if !ARCHITECTURES.contains(&arch.as_str()) {
            c.error(
                &p,
                format!("{arch:?} is not an architecture hakube installs on"),
                Some(format!("use {}", ARCHITECTURES.join(" or "))),
            );
        } else if !is_sha256(sha) {
            c.error(&p, format!("{sha:?} is not a sha256 (64 lowercase hex digits)"), None);
        }
    }
    let known = ARCHITECTURES
        .iter()
        .any(|arch| etcd.sha256.contains_key(*arch) || etcd_archive_sha256(version, arch).is_some());
    if !known {
        c.error(
            &path.key("sha256"),
            format!("hakube knows no sha256 of etcd {version}'s release archives"),
            Some(format!("give etcd.sha256.amd64 (and .arm64) from https://github.com/etcd-io/etcd/releases/download/v{version}/SHA256SUMS")),
        );
    }
}

const NODE_NAME_HELP: &str = "use an RFC 1123 name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters (it ends up in shell scripts, file names and certificates)";

/// RFC 1123 subdomain as Kubernetes checks it (k8s.io/apimachinery validation
/// IsDNS1123Subdomain): at most 253 characters, dot-separated labels of `[a-z0-9-]`,
/// each 1–63 characters starting and ending with an alphanumeric.
pub(crate) fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS host name as users write them (case-insensitive RFC 1123 labels).
fn is_hostname(name: &str) -> bool {
    is_dns1123_subdomain(&name.to_ascii_lowercase()) && !name.trim_end_matches('.').is_empty()
}

fn check_names(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    if !is_dns1123_subdomain(&def.cluster_name) {
        c.error(
            &root("clusterName"),
            format!("{:?} is not an RFC 1123 name", def.cluster_name),
            Some("use lowercase letters, digits, '-' and '.'".into()),
        );
    }
    if !is_dns1123_subdomain(&def.dns_domain) {
        c.error(&root("dnsDomain"), format!("{:?} is not a valid DNS domain", def.dns_domain), None);
    }
    for (i, fqdn) in def.master_fqdns.iter().enumerate() {
        if !is_hostname(fqdn) {
            c.error(
                &root("masterFQDNs").index(i),
                format!("{fqdn:?} is not a DNS name"),
                Some("list DNS names only; IP addresses belong in masterLoadBalancerAddress or the nodes' IPs".into()),
            );
        }
    }
}

fn node_path(role_key: &str, index: usize) -> JsonPath {
    root(role_key).index(index)
}

fn nodes_with_paths(def: &ClusterDefinition) -> impl Iterator<Item = (JsonPath, &Node)> {
    let masters = def.masters.iter().enumerate().map(|(i, n)| (node_path("masters", i), n));
    let workers = def.workers.iter().enumerate().map(|(i, n)| (node_path("workers", i), n));
    masters.chain(workers)
}

/// The longest X.509 common name: RFC 5280 appendix A.1, `ub-common-name INTEGER ::= 64`.
const MAX_COMMON_NAME: usize = 64;

/// A publicIP that is another node's privateIP: hakube would connect to that node and ship
/// it this node's files.
fn check_public_ips(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    // By address, the first two nodes with it as privateIP (a second is itself an error):
    // one lookup per node, not a scan of every node.
    let mut private: HashMap<IpAddr, Vec<JsonPath>> = HashMap::new();
    for (p, n) in nodes_with_paths(def) {
        if let Ok(ip) = n.private_ip.parse::<IpAddr>() {
            let paths = private.entry(ip).or_default();
            if paths.len() < 2 {
                paths.push(p);
            }
        }
    }
    for (path, node) in nodes_with_paths(def) {
        let Some(public) = node.public_ip.as_deref().and_then(|p| p.parse::<IpAddr>().ok()) else { continue };
        if let Some(other) = private.get(&public).and_then(|paths| paths.iter().find(|p| **p != path)) {
            c.error(
                &path.key("publicIP"),
                format!("publicIP {public} is the privateIP of {other}"),
                Some(
                    "hakube connects to publicIP over SSH and would reach that node: give each node its own address"
                        .into(),
                ),
            );
        }
    }
}

fn check_nodes(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    check_public_ips(def, c);
    if def.masters.is_empty() {
        c.error(
            &root("masters"),
            "at least one master is required".into(),
            Some("list the control-plane nodes under masters; three give a highly available etcd".into()),
        );
    }
    let mut names: HashMap<&str, JsonPath> = HashMap::new();
    let mut private_ips: HashMap<IpAddr, JsonPath> = HashMap::new();
    let mut public_ips: HashMap<IpAddr, JsonPath> = HashMap::new();
    for (path, node) in nodes_with_paths(def) {
        let name_path = path.key("nodeName");
        if !is_dns1123_subdomain(&node.node_name) {
            c.error(&name_path, format!("{:?} is not a valid node name", node.node_name), Some(NODE_NAME_HELP.into()));
        } else if let Some(first) = names.get(node.node_name.as_str()) {
            c.error(
                &name_path,
                format!("duplicate nodeName {:?}: also used by {first}", node.node_name),
                Some("node names must be unique across masters and workers".into()),
            );
        } else {
            names.insert(&node.node_name, path.clone());
        }
        let ip_path = path.key("privateIP");
        match node.private_ip.parse::<IpAddr>() {
            Err(_) => c.error(&ip_path, format!("{:?} is not an IP address", node.private_ip), None),
            Ok(ip) => {
                if let Some(first) = private_ips.get(&ip) {
                    c.error(
                        &ip_path,
                        format!("duplicate privateIP {ip}: also used by {first}"),
                        Some("every node needs its own address".into()),
                    );
                } else {
                    private_ips.insert(ip, path.clone());
                }
            }
        }
        if let Some(public) = &node.public_ip {
            let pub_path = path.key("publicIP");
            match public.parse::<IpAddr>() {
                Err(_) => c.error(
                    &pub_path,
                    format!("{public:?} is not an IP address"),
                    Some("publicIP is the address hakube connects to over SSH; leave it out to use privateIP".into()),
                ),
                Ok(ip) => {
                    if let Some(first) = public_ips.get(&ip) {
                        c.error(&pub_path, format!("duplicate publicIP {ip}: also used by {first}"), None);
                    } else {
                        public_ips.insert(ip, path.clone());
                    }
                }
            }
        }
        for (key, value) in &node.labels {
            let label_path = path.key("labels").key(key);
            if !is_qualified_name(key) {
                c.error(
                    &label_path,
                    format!("label key {key:?} is not a Kubernetes qualified name"),
                    Some("use [prefix/]name, name at most 63 characters of [A-Za-z0-9-_.]".into()),
                );
            }
            if !is_label_value(value) {
                c.error(
                    &label_path,
                    format!("label value {value:?} is not valid"),
                    Some("at most 63 characters of [A-Za-z0-9-_.], starting and ending with an alphanumeric".into()),
                );
            }
        }
        for (t, taint) in node.taints.iter().flatten().enumerate() {
            let taint_path = path.key("taints").index(t);
            if !is_qualified_name(&taint.key) {
                c.error(
                    &taint_path.key("key"),
                    format!("taint key {:?} is not a Kubernetes qualified name", taint.key),
                    None,
                );
            }
            if let Some(value) = &taint.value {
                if !is_label_value(value) {
                    c.error(&taint_path.key("value"), format!("taint value {value:?} is not valid"), None);
                }
            }
        }
        if def.etcd.topology == crate::definition::EtcdTopology::External
            && path.0.first() == Some(&Seg::Key("masters".into()))
            && node.node_name.len() > MAX_COMMON_NAME
        {
            c.error(
                &name_path,
                format!("{} characters are too many with external etcd: this master's etcd certificates carry its name as their common name, of at most {MAX_COMMON_NAME} characters (RFC 5280, ub-common-name)", node.node_name.len()),
                Some(format!("use a node name of at most {MAX_COMMON_NAME} characters")),
            );
        }
        if let Some(user) = &node.ssh_login_user {
            check_user(user, &path.key("sshLoginUser"), c);
        }
        check_key_path(node.ssh_login_key.as_deref(), &path.key("sshLoginKey"), c);
        if node.ssh_port == Some(0) {
            c.error(&path.key("sshPort"), "port 0 is not a valid SSH port".into(), None);
        }
    }
}

/// Kubernetes qualified name (apimachinery IsQualifiedName): optional DNS-subdomain
/// prefix and `/`, then a name of at most 63 characters.
fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// Kubernetes label value: empty, or at most 63 characters of `[A-Za-z0-9-_.]` starting
/// and ending with an alphanumeric.
fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

fn parse_cidr(text: &str, path: &JsonPath, c: &mut Checker<'_, '_>) -> Option<IpNet> {
    match text.parse::<IpNet>() {
        Err(_) => {
            c.error(
                path,
                format!("{text:?} is not a CIDR"),
                Some("write it as ADDRESS/PREFIX, e.g. 10.244.0.0/16".into()),
            );
            None
        }
        Ok(net) if net.trunc() != net => {
            c.error(path, format!("{text} has host bits set"), Some(format!("did you mean {}?", net.trunc())));
            None
        }
        Ok(net) => Some(net),
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn check_networks(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    let pod = parse_cidr(&def.pod_network_cidr, &root("podNetworkCIDR"), c).map(|n| ("podNetworkCIDR", n));
    let service = parse_cidr(&def.service_cidr, &root("serviceCIDR"), c).map(|n| ("serviceCIDR", n));
    let node = def
        .node_network_cidr
        .as_deref()
        .and_then(|t| parse_cidr(t, &root("nodeNetworkCIDR"), c))
        .map(|n| ("nodeNetworkCIDR", n));
    let nets: Vec<(&str, IpNet)> = [pod, service, node].into_iter().flatten().collect();
    for (i, (a_name, a)) in nets.iter().enumerate() {
        for (b_name, b) in &nets[i + 1..] {
            if overlaps(a, b) {
                c.error(
                    &root(b_name),
                    format!("{b_name} {b} overlaps {a_name} {a}"),
                    Some("pod, service and node networks must be disjoint; pick another range".into()),
                );
            }
        }
    }
    for (path, n) in nodes_with_paths(def) {
        let Ok(ip) = n.private_ip.parse::<IpAddr>() else { continue };
        for (name, net) in &nets {
            let inside = net.contains(&ip);
            if *name == "nodeNetworkCIDR" && !inside {
                c.error(&path.key("privateIP"), format!("privateIP {ip} is outside nodeNetworkCIDR {net}"), None);
            } else if *name != "nodeNetworkCIDR" && inside {
                c.error(
                    &path.key("privateIP"),
                    format!("privateIP {ip} lies inside {name} {net}"),
                    Some(format!("choose a {name} that does not contain the nodes' addresses")),
                );
            }
        }
    }
}

fn check_control_plane(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    let masters = def.masters.len();
    match &def.master_load_balancer_address {
        None if masters > 1 => c.error(
            &root("masterLoadBalancerAddress"),
            format!("masterLoadBalancerAddress is required with {masters} masters"),
            Some("set it to the IP address or DNS name of a load balancer that forwards TCP 6443 to every master (kubeadm's controlPlaneEndpoint)".into()),
        ),
        Some(addr) if addr.parse::<IpAddr>().is_err() && !is_hostname(addr) => c.error(
            &root("masterLoadBalancerAddress"),
            format!("{addr:?} is neither an IP address nor a DNS name"),
            Some("give the host only, without scheme or port; hakube uses port 6443".into()),
        ),
        _ => {}
    }
    if masters == 1 || masters == 2 {
        c.warn(
            &root("masters"),
            format!(
                "{masters} master{} cannot survive the loss of one: etcd needs a majority of members",
                if masters == 1 { "" } else { "s" }
            ),
            Some("use three masters for a highly available control plane".into()),
        );
    } else if masters > 2 && masters % 2 == 0 {
        c.warn(&root("masters"), format!("{masters} masters tolerate no more failures than {}: an even number adds etcd members without adding fault tolerance", masters - 1), Some("use an odd number of masters".into()));
    }
}

fn check_version(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    let path = root("kubernetesVersion");
    let s = SUPPORTED;
    let range = format!("1.{}.x to 1.{}.x", s.oldest_minor, s.newest_minor);
    match Version::parse(&def.kubernetes_version) {
        None => c.error(
            &path,
            format!("{:?} is not a Kubernetes version", def.kubernetes_version),
            Some(format!(
                "write MAJOR.MINOR.PATCH, e.g. {}; supported: {range}",
                crate::definition::DEFAULT_KUBERNETES_VERSION
            )),
        ),
        Some(v) if v.major != 1 || v.minor < s.oldest_minor || v.minor > s.newest_minor => c.error(
            &path,
            format!("Kubernetes {v} is not supported"),
            Some(format!(
                "hakube supports {range} (kubeadm.k8s.io/v1beta4); upstream maintains 1.{}.x to 1.{}.x",
                s.maintained_from, s.newest_minor
            )),
        ),
        Some(v) if v.minor < s.maintained_from => c.warn(
            &path,
            format!("Kubernetes {v} is past its upstream end of life"),
            Some(format!("upgrade to 1.{}.x or newer", s.maintained_from)),
        ),
        Some(_) => {}
    }
}

/// A Go duration for kubeadm (Go's `time.ParseDuration`, [`crate::duration`]) that is at
/// least one second: certificate validity (RFC 5280 times) and the bootstrap token's
/// expiration (RFC 3339 in its Secret) both count whole seconds, so a shorter one would
/// be a credential that is already expired, or never expires when rounded to zero.
fn parse_duration(text: &str, path: &JsonPath, c: &mut Checker<'_, '_>) -> Option<Duration> {
    match crate::duration::parse_go_duration_nanos(text) {
        Ok(nanos) if nanos >= 1_000_000_000 => crate::duration::parse_go_duration(text).ok(),
        Ok(nanos) if nanos > 0 => {
            c.error(
                path,
                format!("{text:?} is shorter than a second"),
                Some("certificates and tokens expire in whole seconds; write e.g. 24h, 8760h or 90m".into()),
            );
            None
        }
        Ok(_) => {
            c.error(
                path,
                format!("{text:?} must be longer than zero"),
                Some("hakube never renders credentials that do not expire".into()),
            );
            None
        }
        Err(e) => {
            c.error(
                path,
                format!("{text:?} is not a Go duration ({e})"),
                Some(
                    "write a number and a unit (ns, us, µs, ms, s, m, h) one or more times, e.g. 24h, 8760h or 1h30m"
                        .into(),
                ),
            );
            None
        }
    }
}

fn check_durations(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    let pki = root("pki");
    let ca = parse_duration(&def.pki.ca_certificate_validity_period, &pki.key("caCertificateValidityPeriod"), c);
    let leaf = parse_duration(&def.pki.certificate_validity_period, &pki.key("certificateValidityPeriod"), c);
    if let (Some(ca), Some(leaf)) = (ca, leaf) {
        if leaf > ca {
            c.error(
                &pki.key("certificateValidityPeriod"),
                "leaf certificates cannot outlive their CA".into(),
                Some("make certificateValidityPeriod at most caCertificateValidityPeriod".into()),
            );
        }
    }
    let ttl_path = root("bootstrapToken").key("ttl");
    if let Some(ttl) = parse_duration(&def.bootstrap_token.ttl, &ttl_path, c) {
        if ttl > Duration::from_secs(7 * 24 * 3600) {
            c.error(
                &ttl_path,
                format!("{} is longer than the 168h hakube allows", def.bootstrap_token.ttl),
                Some("a short-lived token is enough: install re-creates it when a node joins later".into()),
            );
        }
    }
}

fn check_hooks(def: &ClusterDefinition, hooks: &HookCatalog, c: &mut Checker<'_, '_>) {
    let h = &def.hooks;
    for (kind, value) in [
        (HookKind::Preinstall, &h.preinstall),
        (HookKind::CloudProvider, &h.cloud_provider),
        (HookKind::CloudConfig, &h.cloud_provider_config),
        (HookKind::Network, &h.network_provider),
    ] {
        let Some(name) = value else { continue };
        if hooks.contains(kind, name) {
            continue;
        }
        let known = hooks.names(kind);
        let close = known.iter().find(|k| strsim::jaro_winkler(k, name) >= 0.85);
        let mut help = match known.is_empty() {
            true => format!(
                "no {} hooks exist; add templates/hooks/{}/{name}{} through --templates",
                kind.field(),
                kind.dir(),
                kind.suffix()
            ),
            false => format!(
                "available: {}; or add templates/hooks/{}/{name}{} through --templates",
                known.join(", "),
                kind.dir(),
                kind.suffix()
            ),
        };
        if let Some(k) = close {
            help = format!("did you mean `{k}`? {help}");
        }
        c.error(
            &root("hooks").key(kind.field()),
            format!("there is no {} hook named {name:?}", kind.field()),
            Some(help),
        );
    }
}

/// A login user, by the rule every value reaching ssh's command line follows (crate::ssh).
fn check_user(user: &str, path: &JsonPath, c: &mut Checker<'_, '_>) {
    if let Err(e) = crate::ssh::check_login_user(user) {
        c.error(path, e.to_string(), Some(crate::ssh::USER_HELP.into()));
    }
}

/// A private key path for ssh's `-i` (crate::ssh::check_key_path).
fn check_key_path(key: Option<&str>, path: &JsonPath, c: &mut Checker<'_, '_>) {
    let Some(key) = key else { return };
    match crate::ssh::check_key_path(key) {
        Ok(()) => {}
        Err(_) if key.is_empty() => c.error(
            path,
            "an empty path names no key".into(),
            Some("leave sshLoginKey out to use the cluster's key, or the login key hakube render generates".into()),
        ),
        Err(e) => c.error(path, e.to_string(), Some(crate::ssh::KEY_PATH_HELP.into())),
    }
}

fn check_ssh_and_misc(def: &ClusterDefinition, c: &mut Checker<'_, '_>) {
    check_user(&def.ssh_login_user, &root("sshLoginUser"), c);
    if def.ssh_port == 0 {
        c.error(&root("sshPort"), "port 0 is not a valid SSH port".into(), None);
    }
    if def.install_concurrency == 0 {
        c.error(&root("installConcurrency"), "installConcurrency must be at least 1".into(), None);
    }
    if let Some(bastion) = &def.ssh_bastion {
        if let Err(e) = crate::ssh::parse_jump_hosts(bastion) {
            c.error(
                &root("sshBastion"),
                format!("{bastion:?} is not a ProxyJump destination: {e}"),
                Some(crate::ssh::JUMP_HOSTS_HELP.into()),
            );
        }
    }
    check_key_path(def.ssh_login_key.as_deref(), &root("sshLoginKey"), c);
    let runtime = root("containerRuntime");
    let cr = &def.container_runtime;
    for (field, value) in
        [("version", &cr.version), ("sandboxImage", &cr.sandbox_image), ("imageRepository", &cr.image_repository)]
    {
        if let Some(v) = value {
            if v.is_empty() || v.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                c.error(&runtime.key(field), format!("{v:?} is empty or contains white space"), None);
            }
        }
    }
    for (registry, mirror) in &cr.registry_mirrors {
        let path = runtime.key("registryMirrors").key(registry);
        let (host, port) = registry.rsplit_once(':').map_or((registry.as_str(), None), |(h, p)| (h, Some(p)));
        if !is_dns1123_subdomain(host) || port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
            c.error(
                &path,
                format!("{registry:?} is not a registry host"),
                Some(
                    "write a host name with an optional port, e.g. registry.k8s.io or registry.example.com:5000".into(),
                ),
            );
        }
        if let Some(u) = check_url(mirror, &path, "https://mirror.example.com:5000", c) {
            if mirror.contains(['"', '\\']) || u.host().is_none() {
                c.error(
                    &path,
                    format!("{mirror:?} is not an http(s) URL"),
                    Some("give the mirror's base URL, e.g. https://mirror.example.com:5000".into()),
                );
            }
        }
    }
    for (url, path, example) in [
        (
            &def.package_repository.url,
            root("packageRepository").key("url"),
            "https://mirror.example.com/core:/stable:/v1.36",
        ),
        (&def.downloads.mirror, root("downloads").key("mirror"), "https://mirror.example.com/"),
    ] {
        let Some(url) = url else { continue };
        if check_url(url, &path, example, c).is_some_and(|u| u.scheme() == "http") {
            c.warn(
                &path,
                "this mirror is fetched over plain HTTP".into(),
                Some(
                    "what comes from it is still checked (packages against the repository's signing key, files against their sha256), but prefer https".into(),
                ),
            );
        }
    }
}

/// The rule of every URL field (packageRepository.url, downloads.mirror,
/// containerRuntime.registryMirrors): an http(s) URL with a host, without control
/// characters (the url crate removes tabs and newlines before parsing, as the WHATWG URL
/// Standard says, so the value written into boot.sh would not be the URL checked here),
/// and without credentials (`user:password@`), which would be written into boot.sh and into
/// the nodes' world-readable apt or dnf source. Errors name `path`; the parsed URL when it
/// passes.
fn check_url(text: &str, path: &JsonPath, example: &str, c: &mut Checker<'_, '_>) -> Option<url::Url> {
    if text.chars().any(char::is_control) {
        c.error(
            path,
            format!("{text:?} contains a control character (a newline, a tab, ...)"),
            Some(format!("write the URL on one line without control characters, e.g. {example}")),
        );
        return None;
    }
    let parsed = url::Url::parse(text).ok().filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
    let Some(u) = parsed else {
        c.error(path, format!("{text:?} is not an http(s) URL"), Some(format!("give the base URL, e.g. {example}")));
        return None;
    };
    if !u.username().is_empty() || u.password().is_some() {
        let mut shown = u.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        c.error(
            path,
            format!("the URL holds credentials (user:password@ before {}): they would be written into boot.sh and into a world-readable package source on every node", shown.host_str().unwrap_or_default()),
            Some(format!("write {shown} and give the credentials to the nodes as files you place there: apt reads /etc/apt/auth.conf.d/*.conf (apt_auth.conf(5)), dnf the username and password options of /etc/dnf/dnf.conf's [main] section (dnf.conf(5)); see README \"Credentials for mirrors\"")),
        );
        return None;
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(Version::parse("v1.36.4"), Some(Version { major: 1, minor: 36, patch: 4 }));
        assert_eq!(Version::parse("1.36"), None);
        assert_eq!(Version::parse("1.36.0-rc.1"), None);
        assert_eq!(Version::parse("1.036.0"), None);
        assert_eq!(Version::parse("1.36.4").map(|v| v.minor_string()), Some("1.36".into()));
    }

    #[test]
    fn node_names() {
        assert!(is_dns1123_subdomain("ip-10-1-0-10.ec2.internal"));
        for bad in ["a;b", "a b", "Master0", "-a", "a-", "", "a..b", "a/b", "$(reboot)"] {
            assert!(!is_dns1123_subdomain(bad), "{bad} accepted");
        }
        assert!(!is_dns1123_subdomain(&"a".repeat(64)));
    }

    #[test]
    fn qualified_names_and_label_values() {
        assert!(is_qualified_name("node-role.kubernetes.io/ingress"));
        assert!(is_qualified_name("topology.kubernetes.io/zone"));
        assert!(!is_qualified_name("Bad Prefix/x"));
        assert!(!is_qualified_name("a/"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
    }

    #[test]
    fn hook_names_are_normalised() {
        let catalog = HookCatalog::new([(HookKind::Preinstall, "aws.sh.j2"), (HookKind::Network, "weave")]);
        assert!(catalog.contains(HookKind::Preinstall, "aws"));
        assert!(catalog.contains(HookKind::Preinstall, "aws.sh.j2"));
        assert!(catalog.contains(HookKind::Network, "weave.sh.j2"));
        assert!(!catalog.contains(HookKind::Network, "aws"));
    }
}
