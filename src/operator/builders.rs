//! Desired state of a pool: pure functions from a `KvCachePool` to the
//! objects the operator applies (node-cache DaemonSet and Service, engine
//! connection ConfigMap, router ServiceAccount, RoleBinding, Deployment and
//! Service). No client, no clock: unit-tested as spec in, objects out.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
    RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, HostPathVolumeSource, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::quantity::{BadQuantity, bytes};
use crate::crd::KvCachePool;

/// The default name of the ClusterRole (installed by the chart) each pool's
/// router is bound to; `--router-cluster-role` names another.
pub const ROUTER_CLUSTER_ROLE: &str = "kvmesh-router";
/// Where the node cache keeps its disk tier inside the container.
pub const CACHE_DIR: &str = "/var/lib/kvmesh/cache";
/// The node cache's admin port (/healthz, /readyz, /metrics).
pub const NODE_CACHE_ADMIN_PORT: i32 = 9091;
/// Memory the node cache needs beyond its RAM tier (index, buffers, runtime).
const NODE_CACHE_OVERHEAD_BYTES: u64 = 256 << 20;
/// UID/GID the containers run as (distroless `nonroot`).
const NONROOT: i64 = 65532;

/// Operator-wide settings the builders need.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// Image used when the pool names none (the operator's own).
    pub default_image: String,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// The ClusterRole each router's RoleBinding refers to
    /// ([`ROUTER_CLUSTER_ROLE`] unless the chart names its own).
    pub router_cluster_role: String,
}

/// Why a pool cannot be built (what the schema cannot catch).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("the pool has no namespace")]
    NoNamespace,
    #[error("nodeCache.memory: {0}")]
    Memory(BadQuantity),
    #[error("nodeCache.disk.size: {0}")]
    Disk(BadQuantity),
    #[error("nodeCache.memory must be at least 64Mi, got {0} bytes")]
    MemoryTooSmall(u64),
    #[error("the pool name {0:?} is too long: child names must stay within 63 characters")]
    NameTooLong(String),
}

/// Every object of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub node_cache: DaemonSet,
    pub node_cache_service: Service,
    pub connection: ConfigMap,
    pub router_account: ServiceAccount,
    pub router_binding: RoleBinding,
    pub router: Deployment,
    pub router_service: Service,
}

/// Names of a pool's children.
pub fn node_cache_name(pool: &str) -> String {
    format!("{pool}-node-cache")
}
/// The router's Deployment, Service, ServiceAccount and RoleBinding name.
pub fn router_name(pool: &str) -> String {
    format!("{pool}-router")
}
/// The engines' connection ConfigMap.
pub fn connection_name(pool: &str) -> String {
    format!("{pool}-connection")
}

/// Labels every child carries.
pub fn labels(pool: &str, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(pool, component);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "kvmesh-operator".into(),
    );
    l
}

/// The immutable subset that selects a component's pods.
pub fn selector_labels(pool: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kvmesh".to_string()),
        ("app.kubernetes.io/instance".to_string(), pool.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

/// Builds the desired objects of `pool`.
pub fn build(pool: &KvCachePool, s: &BuildSettings) -> Result<Desired, SpecError> {
    let name = pool.name_any();
    let ns = pool.namespace().ok_or(SpecError::NoNamespace)?;
    if node_cache_name(&name).len() > 63 {
        return Err(SpecError::NameTooLong(name));
    }
    let owner = pool
        .controller_owner_ref(&())
        .into_iter()
        .collect::<Vec<OwnerReference>>();
    let meta = |n: String, component: &str| ObjectMeta {
        name: Some(n),
        namespace: Some(ns.clone()),
        labels: Some(labels(&name, component)),
        owner_references: Some(owner.clone()),
        ..ObjectMeta::default()
    };
    let spec = &pool.spec;
    let memory = bytes(&spec.node_cache.memory.0).map_err(SpecError::Memory)?;
    if memory < 64 << 20 {
        return Err(SpecError::MemoryTooSmall(memory));
    }
    let disk = match &spec.node_cache.disk {
        Some(d) => Some((
            bytes(&d.size.0).map_err(SpecError::Disk)?,
            d.host_path.clone(),
        )),
        None => None,
    };
    let nc = node_cache_name(&name);
    let host = |svc: &str| format!("{svc}.{ns}.svc.{}", s.cluster_domain);

    let node_cache = node_cache_daemonset(
        pool,
        s,
        meta(nc.clone(), "node-cache"),
        memory,
        disk.clone(),
    );
    let node_cache_service = Service {
        metadata: meta(nc.clone(), "node-cache"),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&name, "node-cache")),
            // Each engine reaches the cache on its own node at one name.
            internal_traffic_policy: Some("Local".into()),
            ports: Some(vec![
                service_port("lm", spec.node_cache.lm_port),
                service_port("redis", spec.node_cache.redis_port),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let lm_url = format!("lm://{}:{}", host(&nc), spec.node_cache.lm_port);
    let connection = ConfigMap {
        metadata: meta(connection_name(&name), "connection"),
        data: Some(BTreeMap::from([
            ("LMCACHE_REMOTE_URL".to_string(), lm_url),
            ("LMCACHE_REMOTE_SERDE".to_string(), "naive".to_string()),
            ("LMCACHE_CHUNK_SIZE".to_string(), "256".to_string()),
            ("LMCACHE_LOCAL_CPU".to_string(), "False".to_string()),
            (
                "KVMESH_REDIS_URL".to_string(),
                format!("redis://{}:{}", host(&nc), spec.node_cache.redis_port),
            ),
            (
                // For `vllm serve ... --kv-transfer-config "$(VLLM_KV_TRANSFER_CONFIG)"`.
                "VLLM_KV_TRANSFER_CONFIG".to_string(),
                r#"{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}"#.to_string(),
            ),
        ])),
        ..ConfigMap::default()
    };
    let rn = router_name(&name);
    let router_account = ServiceAccount {
        metadata: meta(rn.clone(), "router"),
        ..ServiceAccount::default()
    };
    let router_binding = RoleBinding {
        metadata: meta(rn.clone(), "router"),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: s.router_cluster_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: rn.clone(),
            namespace: Some(ns.clone()),
            ..Subject::default()
        }]),
    };
    let router = router_deployment(pool, s, meta(rn.clone(), "router"), &ns);
    let router_service = Service {
        metadata: meta(rn, "router"),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&name, "router")),
            ports: Some(vec![service_port("http", spec.router.port)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    Ok(Desired {
        node_cache,
        node_cache_service,
        connection,
        router_account,
        router_binding,
        router,
        router_service,
    })
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, port: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// Non-root, read-only root filesystem, no capabilities, default seccomp.
fn hardened() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT),
        run_as_group: Some(NONROOT),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn quantity(bytes: u64) -> Quantity {
    Quantity(bytes.to_string())
}

fn node_cache_daemonset(
    pool: &KvCachePool,
    s: &BuildSettings,
    metadata: ObjectMeta,
    memory: u64,
    disk: Option<(u64, Option<String>)>,
) -> DaemonSet {
    let name = pool.name_any();
    let nc = &pool.spec.node_cache;
    let mut args = vec![
        "node-cache".to_string(),
        "--lm-listen".into(),
        format!("0.0.0.0:{}", nc.lm_port),
        "--redis-listen".into(),
        format!("0.0.0.0:{}", nc.redis_port),
        "--admin-listen".into(),
        format!("0.0.0.0:{NODE_CACHE_ADMIN_PORT}"),
        "--memory-bytes".into(),
        memory.to_string(),
    ];
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }];
    // Memory: the RAM tier plus overhead, request = limit (no overcommit).
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), Quantity("500m".into())),
        (
            "memory".to_string(),
            quantity(memory + NODE_CACHE_OVERHEAD_BYTES),
        ),
    ]);
    let mut limits = BTreeMap::from([(
        "memory".to_string(),
        quantity(memory + NODE_CACHE_OVERHEAD_BYTES),
    )]);
    if let Some((disk_bytes, host_path)) = disk {
        args.extend([
            "--disk-path".into(),
            CACHE_DIR.into(),
            "--disk-bytes".into(),
            disk_bytes.to_string(),
        ]);
        let volume = match host_path {
            Some(path) => Volume {
                name: "cache".into(),
                host_path: Some(HostPathVolumeSource {
                    path,
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..Volume::default()
            },
            None => {
                // emptyDir: the disk tier counts against the node's ephemeral storage.
                requests.insert("ephemeral-storage".into(), quantity(disk_bytes));
                limits.insert(
                    "ephemeral-storage".into(),
                    quantity(disk_bytes + (disk_bytes / 10)),
                );
                Volume {
                    name: "cache".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(quantity(disk_bytes)),
                        ..EmptyDirVolumeSource::default()
                    }),
                    ..Volume::default()
                }
            }
        };
        volumes.push(volume);
        mounts.push(VolumeMount {
            name: "cache".into(),
            mount_path: CACHE_DIR.into(),
            ..VolumeMount::default()
        });
    }
    let resources = nc.resources.clone().unwrap_or(ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..ResourceRequirements::default()
    });
    let container = Container {
        name: "node-cache".into(),
        image: Some(nc.image.clone().unwrap_or_else(|| s.default_image.clone())),
        args: Some(args),
        ports: Some(vec![
            container_port("lm", nc.lm_port),
            container_port("redis", nc.redis_port),
            container_port("admin", NODE_CACHE_ADMIN_PORT),
        ]),
        readiness_probe: Some(http_probe("/readyz", "admin", 5)),
        liveness_probe: Some(http_probe("/healthz", "admin", 10)),
        resources: Some(resources),
        security_context: Some(hardened()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let selector = selector_labels(&name, "node-cache");
    DaemonSet {
        metadata,
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..RollingUpdateDaemonSet::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name, "node-cache")),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: (!nc.node_selector.is_empty()).then(|| nc.node_selector.clone()),
                    tolerations: (!nc.tolerations.is_empty()).then(|| nc.tolerations.clone()),
                    affinity: nc.affinity.clone(),
                    priority_class_name: nc.priority_class_name.clone(),
                    image_pull_secrets: (!nc.image_pull_secrets.is_empty())
                        .then(|| nc.image_pull_secrets.clone()),
                    security_context: Some(PodSecurityContext {
                        fs_group: Some(NONROOT),
                        ..PodSecurityContext::default()
                    }),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    }
}

fn router_deployment(
    pool: &KvCachePool,
    s: &BuildSettings,
    metadata: ObjectMeta,
    ns: &str,
) -> Deployment {
    let name = pool.name_any();
    let r = &pool.spec.router;
    let container = Container {
        name: "router".into(),
        image: Some(r.image.clone().unwrap_or_else(|| s.default_image.clone())),
        // Routing settings are read live from the pool; only addresses here.
        args: Some(vec![
            "router".into(),
            "--pool".into(),
            format!("{ns}/{name}"),
            "--listen".into(),
            format!("0.0.0.0:{}", r.port),
            "--admin-listen".into(),
            format!("0.0.0.0:{}", r.admin_port),
        ]),
        // Its own pod is not one of its peers (placement sharing).
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![
            container_port("http", r.port),
            container_port("admin", r.admin_port),
        ]),
        readiness_probe: Some(http_probe("/readyz", "admin", 5)),
        liveness_probe: Some(http_probe("/healthz", "admin", 10)),
        resources: Some(r.resources.clone().unwrap_or(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("500m".into())),
                ("memory".to_string(), Quantity("512Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("2Gi".into()),
            )])),
            ..ResourceRequirements::default()
        })),
        security_context: Some(hardened()),
        ..Container::default()
    };
    Deployment {
        metadata,
        spec: DeploymentSpec {
            replicas: Some(r.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name, "router")),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name, "router")),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(router_name(&name)),
                    containers: vec![container],
                    termination_grace_period_seconds: Some(40),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}
