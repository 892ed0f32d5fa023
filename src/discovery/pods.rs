//! Replicas from Kubernetes pods: a watch on the pods a label selector
//! matches; a replica is a Ready pod with an IP that is not terminating,
//! named by the pod (ring placement survives IP changes).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use http::uri::Authority;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::proxy::config::{Backend, PodSource};
use crate::proxy::state::Shared;

/// `matchLabels`/`matchExpressions` as a label selector string.
pub fn selector_string(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// A pod that can take requests: Ready, with an IP, not terminating. The
/// router's replicas and the operator's endpoint count both use this.
pub fn pod_serves(p: &Pod) -> bool {
    let status = p.status.as_ref();
    p.metadata.deletion_timestamp.is_none()
        && status
            .and_then(|s| s.pod_ip.as_ref())
            .is_some_and(|ip| !ip.is_empty())
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The replica a pod is, if it can take requests now.
pub fn endpoint(pod: &Pod, port: u16) -> Option<Backend> {
    if !pod_serves(pod) {
        return None;
    }
    let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    let authority: Authority = format!("{host}:{port}").parse().ok()?;
    Some(Backend {
        name: pod.name_any(),
        authority,
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
    })
}

/// Watches the pods `selector` picks in `namespace` until `stop` turns
/// true, calling `changed` with all of them after every change (a full
/// relist replaces the set at once). Watch errors back off and retry.
pub async fn watch_pods(
    client: Client,
    namespace: &str,
    selector: &str,
    mut stop: watch::Receiver<bool>,
    mut changed: impl FnMut(&BTreeMap<String, Pod>),
) {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(selector);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    let mut fresh: Option<BTreeMap<String, Pod>> = None;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(event) = event else { break };
        match event {
            Err(e) => {
                tracing::warn!(error = %e, %namespace, %selector, "pod watch failed; retrying");
                continue;
            }
            Ok(Event::Init) => fresh = Some(BTreeMap::new()),
            Ok(Event::InitApply(p)) => {
                if let Some(f) = fresh.as_mut() {
                    f.insert(p.name_any(), p);
                }
                continue;
            }
            Ok(Event::InitDone) => pods = fresh.take().unwrap_or_default(),
            Ok(Event::Apply(p)) => {
                pods.insert(p.name_any(), p);
            }
            Ok(Event::Delete(p)) => {
                pods.remove(&p.name_any());
            }
        }
        changed(&pods);
    }
}

/// Keeps `shared`'s replica set equal to the ready pods of `source`, until
/// `stop` turns true.
pub async fn run(
    client: Client,
    source: PodSource,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    watch_pods(client, &source.namespace, &source.selector, stop, |pods| {
        let backends: Vec<Backend> = pods
            .values()
            .filter_map(|p| endpoint(p, source.port))
            .collect();
        if shared.set_backends(&backends) {
            if backends.is_empty() {
                tracing::warn!(namespace = %source.namespace, selector = %source.selector, "no ready pod matches the selector; not ready");
            } else {
                tracing::info!(replicas = backends.len(), "replica set changed");
            }
        }
    })
    .await;
}
