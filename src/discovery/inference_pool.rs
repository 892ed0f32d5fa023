//! Replicas from a Gateway API Inference Extension `InferencePool`
//! (`inference.networking.k8s.io/v1`): its selector and first target port,
//! so kvmesh can front pools users already declared for GIE.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::{Client, CustomResource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::pods::selector_string;
use super::pool::{Wants, follow};
use crate::proxy::config::PodSource;
use crate::proxy::state::Shared;

/// The fields of an InferencePool that kvmesh reads (others are ignored).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "inference.networking.k8s.io",
    version = "v1",
    kind = "InferencePool",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// Labels of the model server pods.
    pub selector: PoolSelector,
    /// Ports the model servers listen on; kvmesh uses the first.
    #[serde(default)]
    pub target_ports: Vec<TargetPort>,
}

/// GIE's selector: a plain label map.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// One target port.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct TargetPort {
    pub number: i32,
}

/// The pods an InferencePool selects (port 8000 if it names none).
pub fn pod_source(pool: &InferencePool, namespace: &str) -> PodSource {
    let selector = selector_string(&LabelSelector {
        match_labels: Some(pool.spec.selector.match_labels.clone()),
        ..LabelSelector::default()
    });
    let port = pool
        .spec
        .target_ports
        .first()
        .and_then(|p| u16::try_from(p.number).ok())
        .unwrap_or(8000);
    PodSource {
        namespace: namespace.to_string(),
        selector,
        port,
    }
}

/// Follows InferencePool `namespace/name`.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let ns = namespace.clone();
    follow::<InferencePool, _>(client, namespace, name, shared, stop, move |p| Wants {
        source: pod_source(p, &ns),
        settings: None,
    })
    .await;
}
