//! Replicas and settings from a `KvCachePool`: its selector and port choose
//! the pods (watched by `pods::run`), its `router` section sets routing live.

use std::sync::Arc;

use futures_util::StreamExt;
use http::HeaderName;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::pods::{self, selector_string};
use crate::crd::KvCachePool;
use crate::proxy::config::PodSource;
use crate::proxy::state::Shared;
use crate::routing::{BlockHasher, RoutingConfig};

/// The routing settings a pool asks for, on top of `base`.
pub fn settings(pool: &KvCachePool, base: &RoutingConfig) -> RoutingConfig {
    let r = &pool.spec.router;
    RoutingConfig {
        hasher: BlockHasher {
            block_bytes: usize::try_from(r.block_bytes).unwrap_or(64).max(1),
            ..base.hasher
        },
        load_factor: r.load_factor.max(1.0),
        index_capacity_blocks: usize::try_from(r.index_capacity_blocks).unwrap_or(1).max(1),
        node_capacity_blocks: node_capacity_blocks(pool),
        ..base.clone()
    }
}

/// How many prefix blocks one node's cache holds: its memory and disk over
/// the KV bytes of one block (`blockBytes` of prompt ≈ `blockBytes / 4`
/// tokens, each `kvBytesPerToken`). 0 if the sizes do not parse.
pub fn node_capacity_blocks(pool: &KvCachePool) -> usize {
    use crate::operator::quantity::bytes;
    let nc = &pool.spec.node_cache;
    let memory = bytes(&nc.memory.0).unwrap_or(0);
    let disk = nc
        .disk
        .as_ref()
        .map_or(0, |d| bytes(&d.size.0).unwrap_or(0));
    let r = &pool.spec.router;
    let tokens_per_block = (u64::try_from(r.block_bytes).unwrap_or(64)
        / crate::routing::config::BYTES_PER_TOKEN)
        .max(1);
    let block_kv =
        tokens_per_block.saturating_mul(u64::try_from(r.kv_bytes_per_token).unwrap_or(1).max(1));
    usize::try_from(memory.saturating_add(disk) / block_kv).unwrap_or(usize::MAX)
}

/// The pods a pool selects.
pub fn pod_source(pool: &KvCachePool, namespace: &str) -> PodSource {
    PodSource {
        namespace: namespace.to_string(),
        selector: selector_string(&pool.spec.selector),
        port: u16::try_from(pool.spec.port).unwrap_or(8000),
    }
}

/// A running pod watch and the means to stop it.
struct PodWatch {
    source: PodSource,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PodWatch {
    async fn end(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What an object that names a replica set asks for.
pub struct Wants {
    /// The pods.
    pub source: PodSource,
    /// Routing settings and session header to apply, if it carries any.
    pub settings: Option<(RoutingConfig, HeaderName)>,
}

/// Follows the `K` named `namespace/name` until `stop` turns true: its
/// settings apply live; a new selector or port restarts the pod watch; a
/// missing object leaves the router with no replicas (not ready) and says so.
pub async fn follow<K, F>(
    client: Client,
    namespace: String,
    name: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    wants: F,
) where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    F: Fn(&K) -> Wants,
{
    let kind = K::kind(&()).into_owned();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut current: Option<PodWatch> = None;
    let mut seen = false;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(event) = event else { break };
        let object = match event {
            Ok(Event::Apply(p) | Event::InitApply(p)) => Some(p),
            Ok(Event::Delete(_)) => None,
            Ok(Event::Init) => {
                seen = false;
                continue;
            }
            Ok(Event::InitDone) => {
                if seen {
                    continue;
                }
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, %kind, %name, "watch failed; retrying");
                continue;
            }
        };
        match object {
            Some(o) => {
                seen = true;
                let Wants { source, settings } = wants(&o);
                if let Some((routing, header)) = settings {
                    shared.apply_settings(routing, header);
                }
                if current.as_ref().map(|w| &w.source) != Some(&source) {
                    if let Some(old) = current.take() {
                        old.end().await;
                    }
                    tracing::info!(%kind, %name, selector = %source.selector, port = source.port, "watching its pods");
                    let (tx, rx) = watch::channel(false);
                    let task = tokio::spawn(pods::run(
                        client.clone(),
                        source.clone(),
                        shared.clone(),
                        rx,
                    ));
                    current = Some(PodWatch {
                        source,
                        stop: tx,
                        task,
                    });
                }
            }
            None => {
                if let Some(old) = current.take() {
                    old.end().await;
                }
                shared.set_backends(&[]);
                tracing::warn!(%kind, %name, %namespace, "it does not exist; no replicas, not ready");
            }
        }
    }
    if let Some(w) = current.take() {
        w.end().await;
    }
}

/// Follows KvCachePool `namespace/name` (see [`follow`]).
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let base = shared.cfg.routing.clone();
    let fallback_header = shared.cfg.session_header.clone();
    let ns = namespace.clone();
    follow::<KvCachePool, _>(client, namespace, name, shared, stop, move |p| {
        let header =
            HeaderName::from_bytes(p.spec.router.session_header.to_ascii_lowercase().as_bytes())
                .unwrap_or_else(|_| fallback_header.clone());
        Wants {
            source: pod_source(p, &ns),
            settings: Some((settings(p, &base), header)),
        }
    })
    .await;
}
