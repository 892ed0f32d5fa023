//! An in-process Kubernetes API server double for tests: a real
//! `kube::Client` (and kube-runtime's `watcher`, reflector and `Controller`)
//! talks to it over plain HTTP on 127.0.0.1. It is a test double, not an
//! apiserver: small, in memory, no authentication.
//!
//! Served: `/api/v1/...` and `/apis/{group}/{version}/...`, namespaced
//! (`.../namespaces/{ns}/{plural}[/{name}[/status]]`), all-namespaces
//! (`.../{plural}`) and cluster-scoped paths, for the resources listed in
//! `store.rs` (more with [`ApiDouble::register`]); anything else is 404.
//! GET, list and watch with label selectors (`=`, `==`, `!=`, `in`,
//! `notin`, `k`, `!k`, `>`, `<`) and field selectors on any dotted path;
//! POST (with `generateName`), PUT with resourceVersion preconditions,
//! DELETE (with preconditions; finalizers hold the object with a
//! deletionTimestamp until removed; dependents are garbage-collected by
//! ownerReference uid), DELETE on a collection; PATCH as server-side apply,
//! merge patch, strategic merge patch and JSON patch; the `status`
//! subresource; `dryRun=All`; PartialObjectMetadata answers (metadata
//! watchers); `/version`. Metadata: unique `uid`, one global monotonic
//! `resourceVersion`, `generation` (+1 when anything outside metadata and
//! status changes), `creationTimestamp`, `managedFields` entries (manager,
//! operation, time). A write that changes nothing changes no
//! resourceVersion and emits no event, as with the real apiserver (so
//! controllers that re-apply identical state do not loop).
//!
//! Watches send newline-delimited events, chunked: with no or `"0"`
//! resourceVersion the current objects as ADDED first; from a given
//! resourceVersion the retained history after it (the last 10,000 events);
//! older than that, an in-stream `ERROR` event with a 410 `Expired` Status
//! — the real watch cache does the same, and kube-runtime's watcher only
//! re-lists on that event (it retries a failed watch request with the same
//! resourceVersion forever). `sendInitialEvents=true` (streaming lists) ends
//! the initial objects with the `k8s.io/initial-events-end` BOOKMARK. An
//! object that starts or stops matching a watch's selectors is seen ADDED
//! or DELETED. Streams end at `timeoutSeconds` (with a BOOKMARK first when
//! `allowWatchBookmarks=true`), on `set_failing(true)` (as an apiserver
//! restart would end them) and at shutdown.
//!
//! Fidelity gaps (what a real apiserver does and this double does not):
//! - Server-side apply has no field ownership: no conflicts between field
//!   managers (`force` is accepted and ignored), and fields a manager stops
//!   applying are not removed. Apply is a deep merge (maps merge, lists
//!   and scalars replace, null deletes). `managedFields` carries no fieldsV1.
//! - Strategic merge patch is a plain merge patch: lists are replaced, not
//!   merged by key (containers, conditions, ownerReferences), and `$patch`
//!   directives are not understood.
//! - No validation or defaulting: no schemas, no CRD registration (custom
//!   kinds are configured in `store.rs`/`register`), any field is accepted,
//!   names are not checked, namespaces need not exist, nothing is immutable.
//! - No admission, authentication, authorization, rate limits, pagination
//!   (`limit`/`continue` are ignored: lists return everything), no
//!   `resourceVersionMatch` semantics (lists always return the latest
//!   state), no periodic BOOKMARKs, no `Table` output, no discovery
//!   (`/api`, `/apis`) and no protobuf, YAML (except apply bodies), gzip or
//!   HTTP/2.
//! - PUT never creates; unconditional PUT (no resourceVersion) is always
//!   allowed; status in a create through the main resource is dropped.
//! - Garbage collection is synchronous (the real one is eventual) and
//!   background-only: deleting an object deletes, recursively, every object
//!   whose ownerReferences all point at absent uids, and an object written
//!   with only absent owners is deleted right after the write (ADDED then
//!   DELETED). No foreground deletion, no `propagationPolicy`/orphaning, no
//!   removal of dangling ownerReferences from dependents that keep another
//!   owner; owners are matched by uid only; grace periods are ignored (pods
//!   go at once unless they have finalizers).
//! - Field selectors accept any path (the real server allows a few per kind).
//! - Some errors differ in code: invalid input is mostly 400 (the real one
//!   often answers 422 Invalid); a failed JSON patch is 422.
//! - `requests()` records the query decoded (`labelSelector=app=x`).
//! - `sendInitialEvents` with a non-zero resourceVersion streams the current
//!   state, not the state at that version.

#![allow(dead_code)]

mod handlers;
mod jsonops;
mod store;
mod watches;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use self::store::{Res, Store};

/// State shared by the server tasks and the test.
pub(crate) struct Shared {
    store: Mutex<Store>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running double. Stops when dropped (or on [`ApiDouble::shutdown`]).
pub struct ApiDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ApiDouble {
    /// Starts on 127.0.0.1:0; stops when dropped (or on shutdown()).
    pub async fn start() -> ApiDouble {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            shutdown,
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        ApiDouble {
            addr,
            shared,
            stop,
            task: Some(task),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kube::Client pointed at this server (plain http, no auth, default namespace "default").
    ///
    /// Built on a plain `HttpConnector` rather than `Client::try_from(Config)`:
    /// that one always builds a rustls connector, and in test builds rustls
    /// has both the `ring` and `aws-lc-rs` providers enabled (through
    /// dev-dependencies), so it panics unless a process-wide CryptoProvider
    /// was installed. This client therefore lacks kube's default retry layer
    /// (which only retries 429/503/504) and its tracing layer.
    pub fn client(&self) -> kube::Client {
        use kube::client::ConfigExt;
        let url = format!("http://{}", self.addr)
            .parse()
            .expect("a valid URL");
        let config = kube::Config::new(url);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<kube::client::Body>();
        let service = tower::ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .service(http);
        kube::Client::new(service, config.default_namespace)
    }

    fn resource(&self, api_version: &str, plural: &str) -> Res {
        self.shared
            .lock()
            .resource(api_version, plural)
            .unwrap_or_else(|| panic!("apidouble: unknown resource {api_version} {plural} (see store.rs or register())"))
    }

    /// Serves one more resource type (e.g. a CRD defined in a test).
    pub fn register(
        &self,
        api_version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status_subresource: bool,
    ) {
        let mut st = self.shared.lock();
        st.resources
            .retain(|r| !(r.api_version == api_version && r.plural == plural));
        st.resources.push(Res {
            api_version: api_version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status: status_subresource,
        });
    }

    /// Direct access for tests (no HTTP): the stored object or None. `api_version` like "v1" or "apps/v1", `plural` like "daemonsets".
    pub fn get(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let res = self.resource(api_version, plural);
        self.shared
            .lock()
            .objects
            .get(&Store::key(&res, namespace, name))
            .cloned()
    }

    /// Every stored object of a type (in `namespace`, or all when None), ordered by namespace and name.
    pub fn list(&self, api_version: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let res = self.resource(api_version, plural);
        let st = self.shared.lock();
        st.objects
            .iter()
            .filter(|(k, _)| {
                k.0 == res.api_version && k.1 == res.plural && namespace.is_none_or(|n| k.2 == n)
            })
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Replace/create an object directly as a user or another controller would (bumps resourceVersion, emits watch events; a change outside .status bumps generation for resources with a status subresource). Use it to simulate `kubectl edit` and kubelet/controllers updating status (e.g. DaemonSet status.numberReady).
    ///
    /// The whole object is written, status included; the namespace comes
    /// from `metadata.namespace` ("default" when absent). An object whose
    /// ownerReferences all name absent uids is garbage-collected at once.
    /// Panics on an unknown resource or a missing name.
    pub fn put(&self, api_version: &str, plural: &str, object: Value) {
        let res = self.resource(api_version, plural);
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .expect("put: metadata.name is required")
            .to_string();
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        self.shared
            .lock()
            .write(&res, &ns, &name, object, None, false);
    }

    /// Patch just .status directly (merge), as the deployment/daemonset controllers would.
    /// Panics when the object does not exist.
    pub fn set_status(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) {
        let res = self.resource(api_version, plural);
        let mut st = self.shared.lock();
        let key = Store::key(&res, namespace, name);
        let mut obj =
            st.objects.get(&key).cloned().unwrap_or_else(|| {
                panic!("set_status: {plural} {namespace}/{name} does not exist")
            });
        let mut merged = obj.get("status").cloned().unwrap_or(Value::Null);
        jsonops::merge_patch(&mut merged, &status);
        obj["status"] = merged;
        st.write(&res, namespace, name, obj, None, false);
    }

    /// Deletes directly, as `kubectl delete` would (finalizers and garbage
    /// collection included). False when there was no such object.
    pub fn delete(&self, api_version: &str, plural: &str, namespace: &str, name: &str) -> bool {
        let res = self.resource(api_version, plural);
        self.shared
            .lock()
            .delete(&Store::key(&res, namespace, name), false)
            .is_some()
    }

    /// While `true`, every HTTP request is answered 500 (for backoff/recovery tests).
    /// Turning it on also ends every open watch stream, as an apiserver restart would.
    pub fn set_failing(&self, failing: bool) {
        let mut st = self.shared.lock();
        st.failing = failing;
        if failing {
            st.watchers.clear();
        }
    }

    /// Forgets the watch history, so resuming watches get 410 Expired and re-list.
    pub fn compact_history(&self) {
        self.shared.lock().compact();
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// HTTP requests served so far, as "METHOD path?query" strings (for assertions on what a controller called).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Stops accepting, ends watch streams, and waits (at most about a
    /// second) for open connections to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ApiDouble {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Resolves once shutdown is requested (or the double is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                let mut stop = stop.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handlers::handle(shared.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = stopped(&mut stop) => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    conns.abort_all();
}
