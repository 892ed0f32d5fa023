//! Where replicas come from: one [`ReplicaSource`] trait, one implementation
//! per source — a static `--backend` list, the Ready pods a label selector
//! matches (`--selector`), a `KvCachePool` (`--pool`, which also sets routing
//! live) or a Gateway API Inference Extension `InferencePool`
//! (`--inference-pool`).

pub mod inference_pool;
pub mod pods;
pub mod pool;
pub mod rbac;

use std::sync::Arc;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::config::{Backend, PodSource, ProxyConfig};
use crate::proxy::state::Shared;

/// A source of replicas for the router.
pub trait ReplicaSource: Send {
    /// Makes `shared`'s replica set (and, for pools, its routing settings)
    /// follow the source until `stop` turns true. A source that changes
    /// returns the task that follows it; a fixed one applies itself at once.
    fn start(
        self: Box<Self>,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>>;
}

/// `--backend URL…`: a fixed list.
pub struct StaticList(pub Vec<Backend>);

impl ReplicaSource for StaticList {
    fn start(
        self: Box<Self>,
        shared: Arc<Shared>,
        _: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        shared.set_backends(&self.0);
        None
    }
}

/// `--selector k=v --namespace ns --port N`: Ready pods a selector matches.
pub struct PodSelector {
    pub client: Client,
    pub source: PodSource,
}

impl ReplicaSource for PodSelector {
    fn start(
        self: Box<Self>,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        Some(tokio::spawn(pods::run(
            self.client,
            self.source,
            shared,
            stop,
        )))
    }
}

/// `--pool ns/name`: a `KvCachePool`'s pods and routing settings.
pub struct KvCachePoolSource {
    pub client: Client,
    pub namespace: String,
    pub name: String,
}

impl ReplicaSource for KvCachePoolSource {
    fn start(
        self: Box<Self>,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        Some(tokio::spawn(pool::run(
            self.client,
            self.namespace,
            self.name,
            shared,
            stop,
        )))
    }
}

/// `--inference-pool ns/name`: a GIE `InferencePool`'s pods.
pub struct InferencePoolSource {
    pub client: Client,
    pub namespace: String,
    pub name: String,
}

impl ReplicaSource for InferencePoolSource {
    fn start(
        self: Box<Self>,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        Some(tokio::spawn(inference_pool::run(
            self.client,
            self.namespace,
            self.name,
            shared,
            stop,
        )))
    }
}

/// The source `cfg` names. Kubernetes sources need `client`.
pub fn source_of(
    cfg: &ProxyConfig,
    client: Option<Client>,
) -> Result<Box<dyn ReplicaSource>, &'static str> {
    if !cfg.discovers() {
        return Ok(Box::new(StaticList(cfg.backends.clone())));
    }
    let client = client.ok_or("pod discovery needs a Kubernetes client")?;
    if let Some(source) = cfg.pods.clone() {
        Ok(Box::new(PodSelector { client, source }))
    } else if let Some((namespace, name)) = cfg.pool.clone() {
        Ok(Box::new(KvCachePoolSource {
            client,
            namespace,
            name,
        }))
    } else if let Some((namespace, name)) = cfg.inference_pool.clone() {
        Ok(Box::new(InferencePoolSource {
            client,
            namespace,
            name,
        }))
    } else {
        Err("no replica source configured")
    }
}
