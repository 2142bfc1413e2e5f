//! The generated JSON Schema accepts every sample (and hakube-installer's format) and
//! rejects what validation rejects structurally; checked with an independent JSON
//! Schema validator (the `jsonschema` crate).

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(&hakube_cluster::schema()).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    jsonschema::validator_for(&schema).expect("the generated schema is a valid JSON Schema")
}

fn errors(validator: &jsonschema::Validator, instance: &serde_json::Value) -> Vec<String> {
    validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

#[test]
fn every_sample_and_the_legacy_fixture_match_the_schema() {
    let validator = validator();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(files.len() >= 4, "samples missing: {files:?}");
    files.push(repo_root().join("crates/hakube/tests/fixtures/hakube-installer-aws.json"));
    for path in files {
        let instance: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let errs = errors(&validator, &instance);
        assert!(errs.is_empty(), "{}: {errs:#?}", path.display());
        if path.starts_with(repo_root().join("samples")) {
            assert_eq!(instance["$schema"], "../schema/cluster.schema.json", "{} lacks \"$schema\"", path.display());
        }
    }
}

#[test]
fn the_schema_rejects_unknown_fields_and_wrong_types() {
    let validator = validator();
    let bad = serde_json::json!({
        "masters": [{ "nodeName": "m0", "privateIP": "10.0.0.1", "nodeNmae": "x" }],
        "hostKeyPolicy": "trust-everything",
        "sshPort": "22"
    });
    let errs = errors(&validator, &bad).join("\n");
    assert!(errs.contains("nodeNmae"), "{errs}");
    assert!(errs.contains("trust-everything"), "{errs}");
    assert!(errs.contains("\"22\""), "{errs}");
}

#[test]
fn the_committed_schema_is_current() {
    let committed = std::fs::read_to_string(repo_root().join("schema/cluster.schema.json")).unwrap();
    assert!(committed == hakube_cluster::schema(), "schema/cluster.schema.json is stale: run `cargo xtask codegen`");
}
