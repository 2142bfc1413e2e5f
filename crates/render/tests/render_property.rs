//! Property: every generated definition either gets diagnostics from validation or
//! renders, and its assets are written and read back; nothing panics (issue 11, "Trust
//! nothing that is read"). Definitions are valid-ish: 1-5 masters and 0-6 workers with
//! names, addresses (IPv4, IPv6, garbage), ports, roles and optional fields drawn from
//! values that are mostly right and sometimes wrong, so both paths are taken.
//!
//! The CAs of one first render are reused by every case (render reuses a CA it finds), so
//! a case costs its leaves, not RSA key generation; 32 cases keep `cargo test` fast.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use hakube_cluster::HookCatalog;
use hakube_render::assets;
use hakube_render::render::{self, Existing, Options};
use hakube_render::Templates;
use proptest::prelude::*;
use serde_json::{json, Value};

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| Templates::new(None).expect("built-in templates load"))
}

fn catalog() -> &'static HookCatalog {
    static C: OnceLock<HookCatalog> = OnceLock::new();
    C.get_or_init(|| templates().hook_catalog())
}

fn options() -> Options {
    Options { rotate_secrets: false, now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000) }
}

/// The CAs and the service-account key of one render, to be reused.
fn cas() -> &'static Existing {
    static CAS: OnceLock<Existing> = OnceLock::new();
    CAS.get_or_init(|| {
        let text = r#"{ "masters": [ { "nodeName": "m0", "privateIP": "10.0.0.10" } ] }"#;
        let def = hakube_cluster::load(text, "base.json", catalog()).unwrap().definition;
        let set = render::render(&def, &Existing::new(), templates(), &options()).unwrap();
        set.files
            .into_iter()
            .filter(|(path, _)| path.ends_with("ca.crt") || path.ends_with("ca.key") || path.contains("/sa."))
            .map(|(path, asset)| (path, asset.bytes))
            .collect()
    })
}

/// What one node may have besides its name and address.
#[derive(Debug, Clone)]
struct Extras {
    /// An IPv6 privateIP (when the case allows IPv6).
    v6: bool,
    public: bool,
    port: Option<u16>,
    label: Option<(String, String)>,
    taint: Option<&'static str>,
    user: Option<&'static str>,
}

fn extras() -> impl Strategy<Value = Extras> {
    (
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.2),
        proptest::option::weighted(0.2, prop_oneof![Just(22u16), Just(2222)]),
        proptest::option::weighted(0.2, ("[a-z]{1,6}", "[a-z0-9]{1,6}")),
        proptest::option::weighted(0.2, prop_oneof![Just("NoSchedule"), Just("PreferNoSchedule"), Just("NoExecute")]),
        proptest::option::weighted(0.2, prop_oneof![Just("admin"), Just("root"), Just("svc.hakube")]),
    )
        .prop_map(|(v6, public, port, label, taint, user)| Extras { v6, public, port, label, taint, user })
}

/// A node: its name and address come from its position (so that they are unique), the
/// rest from `extras`; IPv6 only when `ipv6` allows it.
fn node(prefix: &str, i: usize, ipv6: bool, extras: Extras) -> Value {
    let offset = if prefix == "m" { 10 } else { 100 };
    let ip = if ipv6 && extras.v6 { format!("2001:db8::{:x}", offset + i) } else { format!("10.0.0.{}", offset + i) };
    let mut n = json!({ "nodeName": format!("{prefix}{i}"), "privateIP": ip });
    if extras.public {
        n["publicIP"] = format!("192.0.2.{}", offset + i).into();
    }
    if let Some(port) = extras.port {
        n["sshPort"] = port.into();
    }
    if let Some((key, value)) = extras.label {
        n["labels"] = json!({ format!("example.com/{key}"): value });
    }
    if let Some(effect) = extras.taint {
        n["taints"] = json!([{ "key": "dedicated", "value": "x", "effect": effect }]);
    }
    if let Some(user) = extras.user {
        n["sshLoginUser"] = user.into();
    }
    n
}

/// One thing made wrong in an otherwise valid definition, as a JSON pointer and a value.
fn flaw() -> impl Strategy<Value = (&'static str, Value)> {
    prop_oneof![
        Just(("/masters/0/nodeName", json!("Not A Name"))),
        Just(("/masters/0/privateIP", json!("10.0.0.300"))),
        Just(("/masters/0/sshPort", json!(0))),
        Just(("/masters/0/sshLoginUser", json!("-oProxyCommand=id"))),
        Just(("/masters/0/sshLoginKey", json!("~/.ssh/id\u{0}"))),
        Just(("/sshBastion", json!("jump@bastion;id"))),
        Just(("/kubernetesVersion", json!("1.20.0"))),
        Just(("/bootstrapToken", json!({ "ttl": "1µs" }))),
        Just(("/bootstrapToken", json!({ "ttl": "1µ" }))),
        Just(("/pki", json!({ "certificateValidityPeriod": "9999999h" }))),
        Just(("/masterLoadBalancerAddress", json!("not an address"))),
        Just(("/podNetworkCIDR", json!("10.0.0.0/8"))),
        Just(("/masters/0/taints", json!([{ "key": "k", "effect": "Sometimes" }]))),
        Just(("/workers", json!([{ "nodeName": "m0", "privateIP": "10.0.0.200" }]))),
        "[\\PC]{0,12}".prop_map(|text| ("/clusterName", json!(text))),
        "[\\PC]{0,12}".prop_map(|text| ("/masters/0/nodeName", json!(text))),
    ]
}

fn definition() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(extras(), 1..=5),
        proptest::collection::vec(extras(), 0..=6),
        proptest::bool::weighted(0.2),
        prop_oneof![Just("stacked"), Just("external")],
        prop_oneof![Just("strict"), Just("accept-new")],
        proptest::option::weighted(0.3, prop_oneof![Just("1.36.1"), Just("1.35.2"), Just("1.34.3")]),
        proptest::option::weighted(0.3, prop_oneof![Just("24h"), Just("1.5h"), Just("90m30s")]),
        proptest::option::weighted(0.2, prop_oneof![Just("8760h"), Just("2160h")]),
        proptest::option::weighted(0.2, "[a-z]{1,6}\\.example\\.com"),
        proptest::option::weighted(0.3, flaw()),
    )
        .prop_map(|(masters, workers, ipv6, topology, policy, version, ttl, leaf, fqdn, flaw)| {
            let nodes = |prefix: &str, extras: Vec<Extras>| {
                extras.into_iter().enumerate().map(|(i, e)| node(prefix, i, ipv6, e)).collect::<Vec<_>>()
            };
            let several = masters.len() > 1;
            let mut d = json!({
                "masters": nodes("m", masters),
                "workers": nodes("w", workers),
                "etcd": { "topology": topology },
                "hostKeyPolicy": policy,
            });
            if several {
                d["masterLoadBalancerAddress"] = "10.0.0.5".into();
            }
            if let Some(version) = version {
                d["kubernetesVersion"] = version.into();
            }
            if let Some(ttl) = ttl {
                d["bootstrapToken"] = json!({ "ttl": ttl });
            }
            if let Some(leaf) = leaf {
                d["pki"] = json!({ "certificateValidityPeriod": leaf });
            }
            if let Some(fqdn) = fqdn {
                d["masterFQDNs"] = json!([fqdn]);
            }
            if let Some((pointer, value)) = flaw {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                // "" is the whole document; the other parents exist (masters has one node).
                if let Some(Value::Object(map)) = d.pointer_mut(parent) {
                    map.insert(key.to_string(), value);
                }
            }
            d
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn validate_then_render_never_panics(def in definition()) {
        let text = serde_json::to_string_pretty(&def).unwrap();
        match hakube_cluster::load(&text, "generated.json", catalog()) {
            Err(report) => prop_assert!(report.has_errors(), "refused without an error:\n{report}"),
            Ok(loaded) => {
                let set = render::render(&loaded.definition, cas(), templates(), &options());
                let set = match set {
                    Ok(set) => set,
                    Err(e) => return Err(TestCaseError::fail(format!("valid but does not render: {e}\n{text}"))),
                };
                let dir = tempfile::tempdir().unwrap();
                let existing = assets::read_existing(dir.path()).unwrap();
                assets::write(dir.path(), &set, &existing).unwrap();
                let manifest = assets::verify(dir.path()).unwrap();
                prop_assert_eq!(manifest.nodes.len(), loaded.definition.nodes().count());
            }
        }
    }
}

/// The generator gives mostly valid definitions (about 70% carry no flaw), or the render
/// half of the property would go untested: counted on 64 deterministic samples.
#[test]
fn most_generated_definitions_are_valid() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = definition();
    let valid = (0..64)
        .filter(|_| {
            let def = strategy.new_tree(&mut runner).unwrap().current();
            hakube_cluster::load(&def.to_string(), "generated.json", catalog()).is_ok()
        })
        .count();
    assert!(valid >= 32, "only {valid} of 64 generated definitions are valid");
}
