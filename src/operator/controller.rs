//! The controller: watches pools and everything they own; reconcile =
//! validate → build → server-side apply each child → observe → write status.
//!
//! No finalizer: every child carries a controller owner reference to its
//! pool, so deleting the pool lets Kubernetes' garbage collector delete the
//! children, and the operator holds no state outside the cluster to clean up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::builders::{BuildSettings, Desired, SpecError, build, node_cache_name, router_name};
use super::metrics::OperatorMetrics;
use super::status::{Observed, compute};
use crate::crd::KvCachePool;
pub use crate::discovery::pods::{pod_serves, selector_string};

/// The one field manager every write uses: hand edits to owned fields are
/// taken back on the next reconcile.
pub const FIELD_MANAGER: &str = "kvmesh-operator";

/// A healthy pool is looked at again this often (endpoints come and go
/// without touching any owned object).
const RESYNC: Duration = Duration::from_secs(30);

/// Everything reconcile needs; tests build their own.
pub struct Context {
    pub client: Client,
    pub settings: BuildSettings,
    pub metrics: OperatorMetrics,
    pub recorder: Recorder,
    /// Consecutive failures per pool (for exponential back-off).
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, settings: BuildSettings, metrics: OperatorMetrics) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Self {
            client,
            settings,
            metrics,
            recorder,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a reconcile failed (it is retried with back-off).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the pool has no namespace")]
    NoNamespace,
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
}

impl Error {
    /// Bounded label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NoNamespace => "no_namespace",
            Error::Apply { .. } => "apply",
            Error::Read { .. } => "read",
            Error::Status(_) => "status",
        }
    }
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).into_owned(),
        name,
        source,
    })
}

async fn apply_all(client: &Client, ns: &str, d: &Desired) -> Result<(), Error> {
    // Order: what others reference first.
    apply(client, ns, &d.connection).await?;
    apply(client, ns, &d.node_cache_service).await?;
    apply(client, ns, &d.node_cache).await?;
    apply(client, ns, &d.router_account).await?;
    apply(client, ns, &d.router_binding).await?;
    apply(client, ns, &d.router_service).await?;
    apply(client, ns, &d.router).await
}

async fn observe(client: &Client, pool: &KvCachePool, ns: &str) -> Result<Observed, Error> {
    let name = pool.name_any();
    let read = |what| move |source| Error::Read { what, source };
    let ds = Api::<DaemonSet>::namespaced(client.clone(), ns)
        .get_opt(&node_cache_name(&name))
        .await
        .map_err(read("node-cache DaemonSet"))?;
    let dep = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&router_name(&name))
        .await
        .map_err(read("router Deployment"))?;
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector_string(&pool.spec.selector)))
        .await
        .map_err(read("inference pods"))?;
    let ds_status = ds.and_then(|d| d.status);
    Ok(Observed {
        node_cache_desired: ds_status.as_ref().map_or(0, |s| s.desired_number_scheduled),
        node_cache_ready: ds_status.as_ref().map_or(0, |s| s.number_ready),
        router_desired: pool.spec.router.replicas,
        router_ready: dep
            .and_then(|d| d.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        endpoints: pods.items.iter().filter(|p| pod_serves(p)).count() as i32,
    })
}

async fn write_status(
    client: &Client,
    pool: &KvCachePool,
    ns: &str,
    status: &crate::crd::KvCachePoolStatus,
) -> Result<(), Error> {
    let api: Api<KvCachePool> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": "kvmesh.io/v1alpha1",
        "kind": "KvCachePool",
        "status": status,
    });
    api.patch_status(
        &pool.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(Error::Status)
}

/// Brings one pool's children and status in line with its spec.
pub async fn reconcile(pool: Arc<KvCachePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = pool.namespace().ok_or(Error::NoNamespace)?;
    let now = Time(Timestamp::now());
    let result = match build(&pool, &ctx.settings) {
        Err(e) => invalid(&pool, &ctx, &ns, &e, now).await,
        Ok(desired) => {
            apply_all(&ctx.client, &ns, &desired).await?;
            let observed = observe(&ctx.client, &pool, &ns).await?;
            let status = compute(&pool, &observed, None, &ctx.settings.cluster_domain, now);
            write_status(&ctx.client, &pool, &ns, &status).await?;
            Ok(Action::requeue(RESYNC))
        }
    };
    ctx.failures().remove(&format!("{ns}/{}", pool.name_any()));
    ctx.metrics.reconciled(started.elapsed());
    result
}

/// An invalid spec: say so in status and an Event, touch no child, and
/// wait for the next change (no hot loop).
async fn invalid(
    pool: &KvCachePool,
    ctx: &Context,
    ns: &str,
    e: &SpecError,
    now: Time,
) -> Result<Action, Error> {
    tracing::warn!(pool = %pool.name_any(), namespace = ns, error = %e, "invalid pool spec");
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidSpec".into(),
        note: Some(e.to_string()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
        tracing::warn!(error = %err, "could not publish an event");
    }
    let status = compute(
        pool,
        &Observed::default(),
        Some(e),
        &ctx.settings.cluster_domain,
        now,
    );
    write_status(&ctx.client, pool, ns, &status).await?;
    Ok(Action::await_change())
}

/// Exponential back-off per pool: 1 s, 2 s, 4 s … up to 5 minutes.
pub fn error_policy(pool: Arc<KvCachePool>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    );
    let n = {
        let mut f = ctx.failures();
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    ctx.metrics.failed(err.metric_label());
    let delay = Duration::from_secs(1u64 << (n - 1).min(8)).min(Duration::from_secs(300));
    tracing::warn!(pool = %pool.name_any(), error = %err, attempt = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the controller over `namespace` (or all) until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let wc = watcher::Config::default();
    Controller::new(api::<KvCachePool>(&client, namespace), wc.clone())
        .owns(api::<DaemonSet>(&client, namespace), wc.clone())
        .owns(api::<Deployment>(&client, namespace), wc.clone())
        .owns(api::<Service>(&client, namespace), wc.clone())
        .owns(api::<ConfigMap>(&client, namespace), wc.clone())
        .owns(api::<ServiceAccount>(&client, namespace), wc.clone())
        .owns(api::<RoleBinding>(&client, namespace), wc)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}
