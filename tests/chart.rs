//! The Helm chart as `helm install` would see it: lint-clean, every rendered
//! document a valid Kubernetes object, RBAC exactly the calls the code makes
//! (OPERATOR_RBAC, ROUTER_RBAC), operator flags the binary accepts, and a
//! mistyped value refused by the schema.
//!
//! helm comes from `KVMESH_HELM` or `PATH` (`.ci/run` installs it). Without
//! it these tests skip loudly, unless `KVMESH_REQUIRE_TOOLS=1` (CI), where
//! they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DynamicObject;
use kvmesh::cli::{Cli, Command as Sub};
use kvmesh::discovery::rbac::{Permission, ROUTER_RBAC};
use kvmesh::operator::rbac::{OPERATOR_RBAC, is_leader_election};
use serde::de::DeserializeOwned;
use serde_json::Value;

const CHART: &str = "charts/kvmesh";
const FULL_VALUES: &str = "tests/data/chart-values-full.yaml";
const NS: &str = "kvmesh-system";

/// The helm binary, or None (and a loud note) when it is absent outside CI.
fn helm() -> Option<PathBuf> {
    let found = std::env::var_os("KVMESH_HELM")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|dir| dir.join("helm"))
                .find(|p| p.is_file())
        })
        .filter(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("KVMESH_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "KVMESH_REQUIRE_TOOLS=1 but no helm: set KVMESH_HELM or run .ci/run"
        );
        eprintln!(
            "\n!!! SKIPPED: helm not found (set KVMESH_HELM or put helm on PATH; .ci/run installs it) !!!\n"
        );
    }
    found
}

/// Runs helm with its state in a private directory (works offline).
fn run_helm(helm: &Path, args: &[&str]) -> std::process::Output {
    let home = std::env::temp_dir().join(format!("kvmesh-chart-tests-{}", std::process::id()));
    Command::new(helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

/// `helm template` (CRDs included) as JSON documents, or helm's error.
fn try_render(helm: &Path, release: &str, extra: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec![
        "template",
        release,
        CHART,
        "--namespace",
        NS,
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let out = run_helm(helm, &args);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn render(helm: &Path, extra: &[&str]) -> Vec<Value> {
    try_render(helm, "kvmesh", extra).unwrap_or_else(|e| panic!("helm template failed: {e}"))
}

/// The two renderings every check runs on.
fn renderings(helm: &Path) -> Vec<(&'static str, Vec<Value>)> {
    vec![
        ("defaults", render(helm, &[])),
        ("full values", render(helm, &["-f", FULL_VALUES])),
    ]
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<T: DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}");
    serde_json::from_value(found[0].clone()).expect("parses")
}

/// `v` without nulls, for comparing what was written with what a type kept.
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Parses `doc` as `T` and checks nothing was dropped on the way (a
/// misspelled field would be silently ignored by Kubernetes too).
fn parses_as<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if strip_nulls(&back) != strip_nulls(doc) {
        return Err(format!(
            "fields were lost:\nwritten: {doc:#}\nkept:    {back:#}"
        ));
    }
    Ok(())
}

/// A prometheus-operator object (not in k8s-openapi): a DynamicObject with
/// the fields that operator requires.
fn monitor(doc: &Value, endpoints: &str) -> Result<(), String> {
    let obj: DynamicObject = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let types = obj.types.as_ref().ok_or("no apiVersion/kind")?;
    if types.api_version != "monitoring.coreos.com/v1" {
        return Err(format!("apiVersion {}", types.api_version));
    }
    obj.metadata.name.as_ref().ok_or("no name")?;
    let spec = &obj.data["spec"];
    if !spec["selector"].is_object() {
        return Err("spec.selector is required".into());
    }
    let eps = spec[endpoints].as_array().ok_or("no endpoints")?;
    if eps.is_empty() || eps.iter().any(|e| !e["port"].is_string()) {
        return Err(format!("every {endpoints} entry needs a named port"));
    }
    Ok(())
}

fn check_document(doc: &Value) -> Result<(), String> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    match kind {
        "Deployment" => parses_as::<Deployment>(doc),
        "Service" => parses_as::<Service>(doc),
        "ServiceAccount" => parses_as::<ServiceAccount>(doc),
        "ClusterRole" => parses_as::<ClusterRole>(doc),
        "ClusterRoleBinding" => parses_as::<ClusterRoleBinding>(doc),
        "Role" => parses_as::<Role>(doc),
        "RoleBinding" => parses_as::<RoleBinding>(doc),
        "ConfigMap" => parses_as::<ConfigMap>(doc),
        "NetworkPolicy" => parses_as::<NetworkPolicy>(doc),
        "PodDisruptionBudget" => parses_as::<PodDisruptionBudget>(doc),
        "CustomResourceDefinition" => parses_as::<CustomResourceDefinition>(doc),
        "ServiceMonitor" => monitor(doc, "endpoints"),
        "PodMonitor" => monitor(doc, "podMetricsEndpoints"),
        other => Err(format!("unexpected kind {other:?}")),
    }
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

// ---------------------------------------------------------------- no helm

#[test]
fn the_charts_app_version_is_the_crate_version() {
    let text = std::fs::read_to_string(format!("{CHART}/Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_norway::from_str(&text).expect("Chart.yaml is YAML");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "kvmesh");
}

#[test]
fn the_charts_crd_is_the_same_bytes_as_crds() {
    let top = std::fs::read("crds/kvcachepool.yaml").expect("crds/kvcachepool.yaml");
    let chart = std::fs::read(format!("{CHART}/crds/kvcachepool.yaml")).expect("chart crd");
    assert!(
        top == chart,
        "{CHART}/crds/kvcachepool.yaml differs: cp crds/kvcachepool.yaml {CHART}/crds/"
    );
}

/// The schema's declared properties at `path` (None: free-form there).
fn schema_at<'a>(schema: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut node = schema;
    for key in path {
        node = node.get("properties")?.get(key)?;
    }
    Some(node)
}

#[test]
fn every_value_is_documented_and_declared_in_the_schema() {
    let text = std::fs::read_to_string(format!("{CHART}/values.yaml")).expect("values.yaml");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{CHART}/values.schema.json")).expect("schema"),
    )
    .expect("schema is JSON");
    let lines: Vec<&str> = text.lines().collect();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        stack.retain(|(d, _)| *d < indent);
        let parent: Vec<String> = stack.iter().map(|(_, k)| k.clone()).collect();
        stack.push((indent, key.to_string()));
        // Keys inside a free-form value (resources, securityContext, …) are
        // Kubernetes' own; only the chart's keys need documenting.
        let parent_node = schema_at(&schema, &parent);
        let Some(props) = parent_node.and_then(|n| n.get("properties")) else {
            continue;
        };
        let path = stack.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>();
        assert!(
            props.get(key).is_some(),
            "values.yaml key {} is not in values.schema.json",
            path.join(".")
        );
        let documented = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with('#'))
            .any(|l| l.trim_start().starts_with("# --"));
        assert!(
            documented,
            "values.yaml key {} has no `# --` comment",
            path.join(".")
        );
        checked += 1;
    }
    assert!(checked > 30, "only {checked} keys checked");
}

#[test]
fn the_dashboard_is_grafana_json_and_queries_only_real_metrics() {
    let text =
        std::fs::read_to_string(format!("{CHART}/dashboards/kvmesh.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dash["uid"], "kvmesh-overview");
    // The metric names of the router, operator and node cache (README).
    let known = [
        "kvmesh_router_requests_total",
        "kvmesh_router_decisions_total",
        "kvmesh_router_prefix_match_ratio",
        "kvmesh_router_upstream_ttfb_seconds",
        "kvmesh_router_in_flight",
        "kvmesh_router_retries_total",
        "kvmesh_router_ejections_total",
        "kvmesh_router_replica_healthy",
        "kvmesh_router_open_connections",
        "kvmesh_router_prefix_mispredictions_total",
        "kvmesh_router_engine_queue_depth",
        "kvmesh_router_engine_kv_usage_ratio",
        "kvmesh_operator_reconciles_total",
        "kvmesh_operator_reconcile_failures_total",
        "kvmesh_operator_reconcile_duration_seconds",
        "kvmesh_operator_leader",
        "kvmesh_node_cache_hits_total",
        "kvmesh_node_cache_misses_total",
        "kvmesh_node_cache_bytes",
        "kvmesh_node_cache_capacity_bytes",
        "kvmesh_node_cache_entries",
        "kvmesh_node_cache_evictions_total",
        "kvmesh_node_cache_spills_total",
        "kvmesh_node_cache_spill_drops_total",
        "kvmesh_node_cache_promotions_total",
        "kvmesh_node_cache_connections",
        "kvmesh_node_cache_commands_total",
        "kvmesh_node_cache_errors_total",
    ];
    let mut used = BTreeSet::new();
    let panels = dash["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("kvmesh_") {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .filter(|b| known.contains(b))
                        .unwrap_or(word);
                    assert!(known.contains(&base), "{expr}: unknown metric {word}");
                    used.insert(base.to_string());
                }
            }
        }
    }
    // What the issue asks the dashboard to show.
    for wanted in [
        "kvmesh_router_decisions_total",
        "kvmesh_router_prefix_match_ratio",
        "kvmesh_router_upstream_ttfb_seconds",
        "kvmesh_router_in_flight",
        "kvmesh_router_engine_queue_depth",
        "kvmesh_node_cache_hits_total",
        "kvmesh_node_cache_misses_total",
        "kvmesh_node_cache_bytes",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
    let ids: BTreeSet<_> = panels.iter().map(|p| p["id"].as_i64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
}

// ---------------------------------------------------------------- helm

#[test]
fn helm_lint_strict_passes_with_defaults_and_full_values() {
    let Some(helm) = helm() else { return };
    for extra in [&[][..], &["-f", FULL_VALUES][..]] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(extra);
        let out = run_helm(&helm, &args);
        assert!(
            out.status.success(),
            "helm lint {extra:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_rendered_document_is_a_valid_object_of_a_known_kind() {
    let Some(helm) = helm() else { return };
    for (name, docs) in renderings(&helm) {
        for doc in &docs {
            if let Err(e) = check_document(doc) {
                panic!("{name}: {} {}: {e}", doc["kind"], doc["metadata"]["name"]);
            }
        }
        let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        let mut expected = vec![
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ];
        if name == "full values" {
            expected.extend(["ConfigMap", "NetworkPolicy", "PodMonitor", "ServiceMonitor"]);
        }
        assert_eq!(kinds, expected.into_iter().collect(), "{name}");
    }
}

/// (apiGroup, resource, verb) of every rule, and the rules restricted by
/// resourceNames.
type Triples = BTreeSet<(String, String, String)>;

fn expand(rules: &[PolicyRule]) -> Triples {
    let mut out = Triples::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn table(perms: &[Permission], keep: impl Fn(&Permission) -> bool) -> Triples {
    perms
        .iter()
        .filter(|p| keep(p))
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(|v| (p.group.into(), p.resource.into(), v.to_string()))
        })
        .collect()
}

fn assert_same(name: &str, granted: &Triples, code: &Triples) {
    let missing: Vec<_> = code.difference(granted).collect();
    let extra: Vec<_> = granted.difference(code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: missing (the code calls, the chart does not grant) {missing:?}; \
         extra (granted, never called) {extra:?}"
    );
}

#[test]
fn the_chart_grants_exactly_what_the_operator_and_router_call() {
    let Some(helm) = helm() else { return };
    for (name, docs) in renderings(&helm) {
        let deployment: Deployment = one(&docs, "Deployment");
        let pod = deployment.spec.template.spec.expect("pod");
        let account = pod.service_account_name.expect("service account");
        let args = pod.containers[0].args.clone().unwrap_or_default();
        let router_role = args
            .iter()
            .find_map(|a| a.strip_prefix("--router-cluster-role="))
            .expect("--router-cluster-role")
            .to_string();
        let is_ours = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
            subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == account
                    && s.namespace.as_deref() == Some(NS)
            })
        };

        let cluster_roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole")
            .into_iter()
            .map(|d| serde_json::from_value(d.clone()).expect("ClusterRole"))
            .collect();
        let crb: ClusterRoleBinding = one(&docs, "ClusterRoleBinding");
        assert!(
            is_ours(&crb.subjects),
            "{name}: the ClusterRoleBinding binds the operator"
        );
        assert_eq!(crb.role_ref.kind, "ClusterRole");
        let operator_role = cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(&crb.role_ref.name))
            .expect("the bound ClusterRole is rendered");
        let router = cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(&router_role))
            .unwrap_or_else(|| panic!("{name}: ClusterRole {router_role} is rendered"));
        assert_eq!(cluster_roles.len(), 2, "{name}: no other ClusterRole");

        let rb: RoleBinding = one(&docs, "RoleBinding");
        let role: Role = one(&docs, "Role");
        assert!(
            is_ours(&rb.subjects),
            "{name}: the RoleBinding binds the operator"
        );
        assert_eq!(rb.role_ref.kind, "Role");
        assert_eq!(Some(&rb.role_ref.name), role.metadata.name.as_ref());
        assert_eq!(role.metadata.namespace.as_deref(), Some(NS));

        let op_rules = operator_role.rules.clone().unwrap_or_default();
        let lease_rules = role.rules.clone().unwrap_or_default();
        let router_rules = router.rules.clone().unwrap_or_default();
        assert_same(
            &format!("{name}: operator ClusterRole vs OPERATOR_RBAC"),
            &expand(&op_rules),
            &table(OPERATOR_RBAC, |p| !is_leader_election(p)),
        );
        assert_same(
            &format!("{name}: leader-election Role vs OPERATOR_RBAC"),
            &expand(&lease_rules),
            &table(OPERATOR_RBAC, is_leader_election),
        );
        assert_same(
            &format!("{name}: {router_role} vs ROUTER_RBAC"),
            &expand(&router_rules),
            &table(ROUTER_RBAC, |_| true),
        );

        // No wildcards; the only name-restricted rule is `bind`, on the
        // router's role alone.
        for r in op_rules.iter().chain(&lease_rules).chain(&router_rules) {
            let all = r
                .api_groups
                .iter()
                .flatten()
                .chain(r.resources.iter().flatten());
            assert!(
                all.chain(&r.verbs).all(|s| s != "*"),
                "{name}: wildcard in {r:?}"
            );
            assert!(r.non_resource_urls.is_none(), "{name}: {r:?}");
            let binds = r.verbs.iter().any(|v| v == "bind");
            if binds {
                assert_eq!(r.verbs, ["bind"], "{name}: bind stands alone");
                assert_eq!(
                    r.resource_names.as_deref(),
                    Some(&[router_role.clone()][..]),
                    "{name}: bind is restricted to the router's ClusterRole"
                );
            } else {
                assert!(r.resource_names.is_none(), "{name}: {r:?}");
            }
        }
    }
}

#[test]
fn the_operator_runs_with_flags_the_binary_accepts() {
    let Some(helm) = helm() else { return };
    for (name, docs) in renderings(&helm) {
        let deployment: Deployment = one(&docs, "Deployment");
        let pod = deployment.spec.template.spec.clone().expect("pod");
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap_or_default();
        let cli = Cli::try_parse_from(std::iter::once("kvmesh".to_string()).chain(args.clone()))
            .unwrap_or_else(|e| panic!("{name}: the operator's args {args:?} do not parse: {e}"));
        let Sub::Operator(op) = cli.command else {
            panic!("{name}: not `kvmesh operator`: {args:?}")
        };
        // Children run the operator's own image.
        assert_eq!(Some(&op.image), c.image.as_ref(), "{name}");
        // The admin port is the container's `admin` port, which the probes use.
        let admin = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("admin"))
            .expect("admin port");
        assert_eq!(i32::from(op.admin_listen.port()), admin.container_port);
        let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            let get = p
                .as_ref()
                .and_then(|p| p.http_get.clone())
                .expect("httpGet");
            (get.path.unwrap_or_default(), get.port)
        };
        let admin_port =
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("admin".into());
        assert_eq!(
            probe_path(&c.liveness_probe),
            ("/healthz".into(), admin_port.clone())
        );
        assert_eq!(
            probe_path(&c.readiness_probe),
            ("/readyz".into(), admin_port)
        );
        // Leader election finds its namespace and identity in the environment.
        let env: BTreeMap<_, _> = c
            .env
            .iter()
            .flatten()
            .map(|e| {
                let field = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.clone());
                (e.name.clone(), field)
            })
            .collect();
        assert_eq!(env["POD_NAMESPACE"].as_deref(), Some("metadata.namespace"));
        assert_eq!(env["POD_NAME"].as_deref(), Some("metadata.name"));
        // The leader-election Role is in the namespace the Lease lives in.
        let role: Role = one(&docs, "Role");
        assert_eq!(role.metadata.namespace.as_deref(), Some(NS));

        // Hardened: non-root, read-only root, no privilege escalation, no capabilities.
        let sc = c.security_context.clone().expect("securityContext");
        let psc = pod.security_context.clone().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true), "{name}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        let drop = sc.capabilities.and_then(|c| c.drop).unwrap_or_default();
        assert_eq!(drop, ["ALL"], "{name}");
        assert!(
            c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some()
        );
    }
    // Defaults: the image tag is the chart's appVersion, the router role the
    // operator's built-in default.
    let docs = render(&helm, &[]);
    let deployment: Deployment = one(&docs, "Deployment");
    let c = deployment.spec.template.spec.expect("pod").containers[0].clone();
    assert_eq!(
        c.image.as_deref(),
        Some(concat!("ghcr.io/kvmesh/kvmesh:", env!("CARGO_PKG_VERSION")))
    );
    let args = c.args.unwrap_or_default();
    assert!(args.contains(&format!(
        "--router-cluster-role={}",
        kvmesh::operator::builders::ROUTER_CLUSTER_ROLE
    )));
}

#[test]
fn selectors_reach_the_pods_they_are_meant_for() {
    let Some(helm) = helm() else { return };
    let docs = render(&helm, &["-f", FULL_VALUES]);
    let deployment: Deployment = one(&docs, "Deployment");
    let spec = deployment.spec;
    let pod_labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let selector = spec.selector.match_labels.unwrap_or_default();
    assert!(labels_match(&selector, &pod_labels));
    assert!(
        !selector.contains_key("app.kubernetes.io/version")
            && !selector.contains_key("helm.sh/chart"),
        "the Deployment's selector is immutable: no version in it"
    );
    // The metrics Service reaches the operator's pods on their admin port.
    let svc: Service = one(&docs, "Service");
    let svc_spec = svc.spec.expect("spec");
    assert!(labels_match(
        &svc_spec.selector.unwrap_or_default(),
        &pod_labels
    ));
    let port = &svc_spec.ports.unwrap_or_default()[0];
    assert_eq!(port.name.as_deref(), Some("admin"));
    // The ServiceMonitor selects that Service, in this namespace.
    let sm = of_kind(&docs, "ServiceMonitor")[0];
    let svc_labels = svc.metadata.labels.unwrap_or_default();
    assert!(labels_match(
        &string_map(&sm["spec"]["selector"]["matchLabels"]),
        &svc_labels
    ));
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    // The PodMonitor selects the routers and node caches the operator makes
    // (labels from the builders), never the operator itself.
    let pm = of_kind(&docs, "PodMonitor")[0];
    let pm_labels = string_map(&pm["spec"]["selector"]["matchLabels"]);
    let components: Vec<&str> = pm["spec"]["selector"]["matchExpressions"][0]["values"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for component in ["router", "node-cache"] {
        let child = kvmesh::operator::builders::labels("llama", component);
        assert!(labels_match(&pm_labels, &child), "{component}");
        assert!(components.contains(&component));
    }
    assert!(!labels_match(&pm_labels, &pod_labels));
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "admin");
    // The disruption budget guards the operator's pods.
    let pdb: PodDisruptionBudget = one(&docs, "PodDisruptionBudget");
    let pdb_selector = pdb
        .spec
        .and_then(|s| s.selector)
        .and_then(|s| s.match_labels);
    assert!(labels_match(&pdb_selector.unwrap_or_default(), &pod_labels));
    // The NetworkPolicy is the operator's.
    let np: NetworkPolicy = one(&docs, "NetworkPolicy");
    let np_spec = np.spec.expect("spec");
    assert!(labels_match(
        &np_spec
            .pod_selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default(),
        &pod_labels
    ));
    // The dashboard ConfigMap is labelled for Grafana's sidecar and carries the JSON.
    let cm: ConfigMap = one(&docs, "ConfigMap");
    assert_eq!(cm.metadata.namespace.as_deref(), Some("monitoring"));
    assert_eq!(
        cm.metadata.labels.unwrap_or_default()["grafana_dashboard"],
        "1"
    );
    let json = &cm.data.unwrap_or_default()["kvmesh.json"];
    let dash: Value = serde_json::from_str(json).expect("dashboard JSON survives templating");
    assert_eq!(dash["uid"], "kvmesh-overview");
}

#[test]
fn names_stay_within_63_characters_and_distinct() {
    let Some(helm) = helm() else { return };
    let release = "a-release-name-as-long-as-helm-allows-fifty-three-chr";
    assert_eq!(release.len(), 53);
    let docs = try_render(
        &helm,
        release,
        &["--set", "nameOverride=a-rather-long-chart-name-override"],
    )
    .expect("renders");
    let mut seen = BTreeSet::new();
    for d in &docs {
        let name = d["metadata"]["name"].as_str().expect("name");
        assert!(
            name.len() <= 63,
            "{} {name} is {} long",
            d["kind"],
            name.len()
        );
        assert!(
            seen.insert((d["kind"].clone().to_string(), name)),
            "two {} {name}",
            d["kind"]
        );
    }
}

#[test]
fn a_mistyped_or_invalid_value_is_refused_for_its_stated_reason() {
    let Some(helm) = helm() else { return };
    let mut seen = 0;
    for entry in std::fs::read_dir("tests/data/bad-values").expect("tests/data/bad-values") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()))
            .trim();
        let file = path.to_str().expect("utf-8 path");
        match try_render(&helm, "kvmesh", &["-f", file]) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => assert!(
                e.contains("values don't meet the specifications of the schema")
                    && e.contains(expect),
                "{}: expected a schema refusal mentioning {expect:?}, got {e}",
                path.display()
            ),
        }
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} bad values files");
}

#[test]
fn the_install_notes_say_what_was_installed_and_how_to_make_a_pool() {
    let Some(helm) = helm() else { return };
    let out = run_helm(
        &helm,
        &[
            "install",
            "kvmesh",
            CHART,
            "--namespace",
            NS,
            "--dry-run=client",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let notes = text.split("NOTES:").nth(1).expect("NOTES");
    for wanted in [
        "deploy/kvmesh-operator",
        "ClusterRole kvmesh-router",
        "kubectl get kvp",
        "-connection",
        "kubectl apply --server-side -f charts/kvmesh/crds/",
    ] {
        assert!(notes.contains(wanted), "NOTES lack {wanted:?}:\n{notes}");
    }
    assert!(notes.lines().count() < 30, "NOTES stay short");
}
