//! The operator's Prometheus metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A failure's bounded error label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

/// Reconciles, failures, durations and leadership.
#[derive(Debug, Clone)]
pub struct OperatorMetrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub leader: Gauge,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            // A reconcile is a handful of API calls: 1 ms to ~16 s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            leader: Gauge::default(),
        }
    }
}

impl OperatorMetrics {
    /// Registers every metric under `kvmesh_operator_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kvmesh_operator");
        r.register(
            "reconciles",
            "Reconciles completed",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_failures",
            "Reconciles failed, by error",
            self.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            self.duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            self.leader.clone(),
        );
    }

    /// A reconcile finished.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// A reconcile failed.
    pub fn failed(&self, error: &'static str) {
        self.failures.get_or_create(&ErrorLabels { error }).inc();
    }
}
