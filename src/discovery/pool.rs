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
        ..base.clone()
    }
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

/// Follows pool `namespace/name` until `stop` turns true: settings apply
/// live; a new selector or port restarts the pod watch; a missing pool
/// leaves the router with no replicas (not ready) and says so.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<KvCachePool> = Api::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let base = shared.cfg.routing.clone();
    let mut current: Option<PodWatch> = None;
    let mut seen = false;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(event) = event else { break };
        let pool = match event {
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
                tracing::warn!(error = %e, pool = %name, "pool watch failed; retrying");
                continue;
            }
        };
        match pool {
            Some(p) => {
                seen = true;
                let header = HeaderName::from_bytes(
                    p.spec.router.session_header.to_ascii_lowercase().as_bytes(),
                )
                .unwrap_or_else(|_| shared.cfg.session_header.clone());
                shared.apply_settings(settings(&p, &base), header);
                let source = pod_source(&p, &namespace);
                if current.as_ref().map(|w| &w.source) != Some(&source) {
                    if let Some(old) = current.take() {
                        old.end().await;
                    }
                    tracing::info!(pool = %name, selector = %source.selector, port = source.port, "watching the pool's pods");
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
                tracing::warn!(pool = %name, namespace = %namespace, "the KvCachePool does not exist; no replicas, not ready");
            }
        }
    }
    if let Some(w) = current.take() {
        w.end().await;
    }
}
