//! The KvCachePool API: the checked-in CRD is the generated one, the example
//! is valid, and each bad manifest is refused for its stated reason — by the
//! OpenAPI schema (as the apiserver checks it) or by its CEL rules.

use kube::CustomResourceExt;
use kvmesh::crd::{KvCachePool, crd_yaml};
use serde_json::Value;

fn schema() -> Value {
    let crd = serde_json::to_value(KvCachePool::crd()).expect("crd json");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn load(path: &std::path::Path) -> (String, Value) {
    let text = std::fs::read_to_string(path).expect("read manifest");
    let v: Value = serde_norway::from_str(&text).expect("manifest is YAML");
    (text, v)
}

/// Every reason the API would refuse `manifest` for.
fn refusals(manifest: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(&schema()).expect("schema compiles");
    let mut out: Vec<String> = validator
        .iter_errors(manifest)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    match serde_json::from_value::<KvCachePool>(manifest.clone()) {
        Ok(pool) => {
            if let Err(e) = pool.validate_cel() {
                out.push(format!("{e:?}"));
            }
        }
        Err(e) => out.push(format!("does not parse: {e}")),
    }
    out
}

#[test]
fn the_checked_in_crd_is_what_kvmesh_crd_prints() {
    let generated = crd_yaml().expect("yaml");
    let checked_in =
        std::fs::read_to_string("crds/kvcachepool.yaml").expect("crds/kvcachepool.yaml");
    assert!(
        generated == checked_in,
        "crds/kvcachepool.yaml is stale: run `cargo run -- crd > crds/kvcachepool.yaml`"
    );
}

#[test]
fn the_crd_names_printer_columns_and_status_subresource_are_as_documented() {
    let crd = KvCachePool::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("kvcachepools.kvmesh.io"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["kvp".to_string()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["kvmesh".to_string()][..])
    );
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let cols: Vec<&str> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["Ready", "Nodes", "Endpoints", "Router", "Age"]);
}

#[test]
fn the_example_pool_is_accepted_and_defaults_are_filled() {
    for entry in std::fs::read_dir("examples").expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let (_, v) = load(&path);
        if v["kind"] != "KvCachePool" {
            continue;
        }
        assert_eq!(refusals(&v), Vec::<String>::new(), "{}", path.display());
    }
    let (_, v) = load(std::path::Path::new("examples/pool.yaml"));
    let pool: KvCachePool = serde_json::from_value(v).expect("parses");
    assert_eq!(pool.spec.router.admin_port, 9090);
    assert_eq!(pool.spec.router.session_header, "x-session-id");
    assert_eq!(pool.spec.node_cache.lm_port, 65432);
}

#[test]
fn each_bad_manifest_is_refused_for_its_stated_reason() {
    let mut seen = 0;
    for entry in std::fs::read_dir("tests/data/bad-pools").expect("tests/data/bad-pools") {
        let path = entry.expect("entry").path();
        let (text, v) = load(&path);
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()))
            .trim();
        let why = refusals(&v);
        assert!(
            why.iter().any(|w| w.contains(expect)),
            "{}: expected a refusal mentioning {expect:?}, got {why:?}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 8, "only {seen} bad manifests");
}
