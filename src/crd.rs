//! The `KvCachePool` custom resource (group `kvmesh.io`, version `v1alpha1`):
//! which inference pods form a pool, how its node-local KV cache is sized,
//! how its router behaves, and what the operator reports back.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A pool of inference pods that kvmesh routes for, with a node-local KV
/// cache on every node they run on.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kvmesh.io",
    version = "v1alpha1",
    kind = "KvCachePool",
    plural = "kvcachepools",
    shortname = "kvp",
    category = "kvmesh",
    doc = "A pool of inference pods that kvmesh routes for, with a node-local KV cache on every node they run on. Short name: kvp.",
    namespaced,
    status = "KvCachePoolStatus",
    cel,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","description":"Node caches ready/desired","jsonPath":".status.nodeCache.summary"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","description":"Ready inference pods","jsonPath":".status.endpoints"}"#,
    printcolumn = r#"{"name":"Router","type":"string","jsonPath":".status.routerUrl"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.nodeCache.lmPort != self.nodeCache.redisPort").message("nodeCache.lmPort and nodeCache.redisPort must differ"))]
#[x_kube(validation = Rule::new("self.router.port != self.router.adminPort").message("router.port and router.adminPort must differ"))]
pub struct KvCachePoolSpec {
    /// Labels of the inference pods (vLLM, SGLang, …) that form this pool, in
    /// the pool's namespace. Must select something: an empty selector would
    /// match every pod in the namespace.
    #[x_kube(validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)").message("selector must not be empty: it would select every pod in the namespace"))]
    pub selector: LabelSelector,
    /// Port the inference pods serve their OpenAI-compatible API on.
    #[serde(default = "default_engine_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The node-local KV cache (one per node that runs pool pods).
    pub node_cache: NodeCacheSpec,
    /// The pool's router.
    #[serde(default)]
    pub router: RouterSpec,
}

/// Sizing and placement of the node-local KV cache DaemonSet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCacheSpec {
    /// RAM tier size per node (for example `32Gi`): the cache never holds
    /// more KV bytes in memory than this.
    pub memory: Quantity,
    /// Disk tier; absent means RAM only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskSpec>,
    /// Port of LMCache's `lm://` remote protocol.
    #[serde(default = "default_lm_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub lm_port: i32,
    /// Port of the Redis protocol (for LMCache's `redis://` backend).
    #[serde(default = "default_redis_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub redis_port: i32,
    /// Container image of the node cache; default: the operator's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Nodes the cache runs on (in addition to where pool pods may run).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations, e.g. for GPU node taints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the cache pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Priority class of the cache pods (they should outrank batch work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Resources of the cache container; default: derived from the tiers
    /// (memory request = RAM tier plus overhead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pull secrets for `image`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// The disk tier of the node cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpec {
    /// Disk tier size per node (for example `500Gi`): a hard bound.
    pub size: Quantity,
    /// Directory on the node that holds the tier (survives pod restarts);
    /// absent means an emptyDir of `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('..')").message("hostPath must be an absolute path without '..'"))]
    pub host_path: Option<String>,
}

/// How the pool's router runs and routes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouterSpec {
    /// Router pods (each routes with its own index and tells the others its placements).
    #[serde(default = "default_router_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Port clients send OpenAI-compatible requests to.
    #[serde(default = "default_router_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Port of /healthz, /readyz and /metrics.
    #[serde(default = "default_admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,
    /// Bytes of canonical prompt per hashed block (64 ≈ 16 tokens).
    #[serde(default = "default_block_bytes")]
    #[schemars(range(min = 16, max = 4096))]
    pub block_bytes: i32,
    /// Load factor `c` of the bounded-load rule (≥ 1).
    #[serde(default = "default_load_factor")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub load_factor: f64,
    /// Prefix blocks remembered per inference pod (≈ its KV cache in blocks).
    #[serde(default = "default_index_capacity")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub index_capacity_blocks: i64,
    /// Request header whose value pins a session to one pod.
    #[serde(default = "default_session_header")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9-]*$"), length(max = 128))]
    pub session_header: String,
    /// KV cache bytes one token takes in the served model (layers × KV heads
    /// × head size × 2 × dtype bytes; 131072 for Llama-3-8B in fp16). With
    /// the node cache's size it tells the router how many prefix blocks a
    /// node's cache holds.
    #[serde(default = "default_kv_bytes_per_token")]
    #[schemars(range(min = 1, max = 67_108_864))]
    pub kv_bytes_per_token: i64,
    /// Container image of the router; default: the operator's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resources of the router container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for RouterSpec {
    fn default() -> Self {
        Self {
            replicas: default_router_replicas(),
            port: default_router_port(),
            admin_port: default_admin_port(),
            block_bytes: default_block_bytes(),
            load_factor: default_load_factor(),
            index_capacity_blocks: default_index_capacity(),
            session_header: default_session_header(),
            kv_bytes_per_token: default_kv_bytes_per_token(),
            image: None,
            resources: None,
        }
    }
}

/// What the operator observed, written by it only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KvCachePoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `SpecValid`, `NodeCacheReady`, `RouterReady`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Node caches scheduled and ready.
    #[serde(default)]
    pub node_cache: NodeCacheStatus,
    /// Router replicas desired and ready.
    #[serde(default)]
    pub router: RouterStatus,
    /// Ready inference pods matching the selector.
    #[serde(default)]
    pub endpoints: i32,
    /// Where clients send requests (`http://<pool>-router.<ns>.svc:<port>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_url: Option<String>,
    /// Where LMCache connects (`lm://<pool>-node-cache.<ns>.svc:<port>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_cache_url: Option<String>,
    /// ConfigMap with the engine-side settings (`envFrom` it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_config_map: Option<String>,
}

/// Node cache DaemonSet counts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCacheStatus {
    /// Nodes that should run a cache.
    #[serde(default)]
    pub desired: i32,
    /// Caches ready.
    #[serde(default)]
    pub ready: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default)]
    pub summary: String,
}

/// Router Deployment counts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouterStatus {
    /// Replicas desired.
    #[serde(default)]
    pub replicas: i32,
    /// Replicas ready.
    #[serde(default)]
    pub ready: i32,
}

fn default_engine_port() -> i32 {
    8000
}
fn default_lm_port() -> i32 {
    65432
}
fn default_redis_port() -> i32 {
    6379
}
fn default_router_replicas() -> i32 {
    2
}
fn default_router_port() -> i32 {
    8080
}
fn default_admin_port() -> i32 {
    9090
}
fn default_block_bytes() -> i32 {
    64
}
fn default_load_factor() -> f64 {
    5.0
}
fn default_index_capacity() -> i64 {
    32_768
}
fn default_kv_bytes_per_token() -> i64 {
    131_072
}
fn default_session_header() -> String {
    "x-session-id".into()
}

/// The CRD as YAML, exactly what `kvmesh crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    use kube::CustomResourceExt;
    serde_norway::to_string(&KvCachePool::crd())
}
