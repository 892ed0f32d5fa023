//! The router's Prometheus metrics: one struct, one `register`, bounded labels.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::routing::{Endpoint, Reason};

/// The parsed API route of a request (bounded: five values).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RouteLabel {
    completions,
    chat_completions,
    responses,
    messages,
    other,
}

impl From<Endpoint> for RouteLabel {
    fn from(e: Endpoint) -> Self {
        match e {
            Endpoint::Completions => RouteLabel::completions,
            Endpoint::ChatCompletions => RouteLabel::chat_completions,
            Endpoint::Responses => RouteLabel::responses,
            Endpoint::Messages => RouteLabel::messages,
            Endpoint::Other => RouteLabel::other,
        }
    }
}

/// Why a replica was chosen (bounded: five values).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReasonLabel {
    warm,
    cold,
    session,
    load,
    node,
}

impl From<Reason> for ReasonLabel {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Warm => ReasonLabel::warm,
            Reason::Cold => ReasonLabel::cold,
            Reason::Session => ReasonLabel::session,
            Reason::Load => ReasonLabel::load,
            Reason::Node => ReasonLabel::node,
        }
    }
}

/// Labels of a finished request. `replica` is "none" when no replica was
/// reached; replica names are bounded by the replica set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: RouteLabel,
    pub status: u16,
    pub replica: String,
}

/// One replica.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub replica: String,
}

/// One decision reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: ReasonLabel,
}

/// Everything the router counts.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub decisions: Family<ReasonLabels, Counter>,
    pub prefix_match_ratio: Histogram,
    pub upstream_ttfb: Family<ReplicaLabels, Histogram>,
    pub in_flight: Family<ReplicaLabels, Gauge>,
    pub retries: Family<ReplicaLabels, Counter>,
    pub ejections: Family<ReplicaLabels, Counter>,
    pub healthy: Family<ReplicaLabels, Gauge>,
    pub open_connections: Gauge,
    pub mispredictions: Family<ReplicaLabels, Counter>,
    pub engine_queue_depth: Family<ReplicaLabels, Gauge>,
    pub engine_running: Family<ReplicaLabels, Gauge>,
    pub engine_kv_usage: Family<ReplicaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub engine_scrape_errors: Family<ReplicaLabels, Counter>,
    pub peer_batches_sent: Counter,
    pub peer_send_errors: Counter,
    pub peer_records_received: Counter,
    pub peer_batches_rejected: Counter,
    pub peer_records_dropped: Counter,
}

/// Time to first byte spans a cached short prompt (milliseconds) to a long
/// prefill behind a queue (minutes): 1 ms to ~5 min, doubling.
fn ttfb_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 19,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            decisions: Family::default(),
            // Tenths: the share of the prompt's blocks found cached.
            prefix_match_ratio: Histogram::new([
                0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
            ]),
            upstream_ttfb: Family::new_with_constructor(ttfb_histogram),
            in_flight: Family::default(),
            retries: Family::default(),
            ejections: Family::default(),
            healthy: Family::default(),
            open_connections: Gauge::default(),
            mispredictions: Family::default(),
            engine_queue_depth: Family::default(),
            engine_running: Family::default(),
            engine_kv_usage: Family::default(),
            engine_scrape_errors: Family::default(),
            peer_batches_sent: Counter::default(),
            peer_send_errors: Counter::default(),
            peer_records_received: Counter::default(),
            peer_batches_rejected: Counter::default(),
            peer_records_dropped: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under `kvmesh_router_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kvmesh_router");
        r.register(
            "requests",
            "Requests answered, by API route, HTTP status and replica",
            self.requests.clone(),
        );
        r.register(
            "decisions",
            "Routing decisions by reason (warm, cold, session, load, node)",
            self.decisions.clone(),
        );
        r.register(
            "prefix_match_ratio",
            "Share of a prompt's blocks the chosen replica was believed to hold",
            self.prefix_match_ratio.clone(),
        );
        r.register(
            "upstream_ttfb_seconds",
            "Time from sending a request upstream to its first response body byte",
            self.upstream_ttfb.clone(),
        );
        r.register(
            "in_flight",
            "Requests in flight per replica",
            self.in_flight.clone(),
        );
        r.register(
            "retries",
            "Attempts moved to another replica after a failure, by the failed replica",
            self.retries.clone(),
        );
        r.register(
            "ejections",
            "Times a replica was ejected after consecutive failures",
            self.ejections.clone(),
        );
        r.register(
            "replica_healthy",
            "1 if the replica is not ejected",
            self.healthy.clone(),
        );
        r.register(
            "open_connections",
            "Client connections open on the proxy port",
            self.open_connections.clone(),
        );
        r.register(
            "prefix_mispredictions",
            "Responses whose engine reported far fewer cached tokens than the index predicted (the index was corrected)",
            self.mispredictions.clone(),
        );
        r.register(
            "engine_queue_depth",
            "Requests waiting in the engine's queue, as last scraped from its /metrics",
            self.engine_queue_depth.clone(),
        );
        r.register(
            "engine_running",
            "Requests the engine is running, as last scraped from its /metrics",
            self.engine_running.clone(),
        );
        r.register(
            "engine_kv_usage_ratio",
            "Share of the engine's KV cache in use (0..1), as last scraped",
            self.engine_kv_usage.clone(),
        );
        r.register(
            "engine_scrape_errors",
            "Engine /metrics scrapes that failed or made no sense (ignored for routing)",
            self.engine_scrape_errors.clone(),
        );
        r.register(
            "peer_batches_sent",
            "Placement batches delivered to peer routers",
            self.peer_batches_sent.clone(),
        );
        r.register(
            "peer_send_errors",
            "Placement batches a peer router did not take (dropped)",
            self.peer_send_errors.clone(),
        );
        r.register(
            "peer_records_received",
            "Placements learned from peer routers",
            self.peer_records_received.clone(),
        );
        r.register(
            "peer_batches_rejected",
            "Placement batches from peers refused as malformed or incompatible",
            self.peer_batches_rejected.clone(),
        );
        r.register(
            "peer_records_dropped",
            "Placements not queued for peers because the batch was full",
            self.peer_records_dropped.clone(),
        );
    }

    /// Labels for one replica.
    pub fn replica(name: &str) -> ReplicaLabels {
        ReplicaLabels {
            replica: name.to_string(),
        }
    }
}
