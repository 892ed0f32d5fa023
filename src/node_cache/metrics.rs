//! The node cache's Prometheus metrics: one struct, one `register`, bounded labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::store::StoreStats;

/// One storage tier: `"ram"` or `"disk"`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: &'static str,
}

/// One wire protocol: `"lm"` or `"redis"`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

/// A command of a protocol; unknown commands are counted as `"unknown"`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub protocol: &'static str,
    pub command: &'static str,
}

/// A failure of a protocol (or of the disk tier, `protocol="disk"`), by kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub protocol: &'static str,
    pub kind: &'static str,
}

/// The RAM tier's label.
pub const RAM: TierLabels = TierLabels { tier: "ram" };
/// The disk tier's label.
pub const DISK: TierLabels = TierLabels { tier: "disk" };

/// Everything the node cache counts. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct NodeCacheMetrics {
    pub hits: Family<TierLabels, Counter>,
    pub misses: Family<TierLabels, Counter>,
    pub bytes: Family<TierLabels, Gauge>,
    pub capacity: Family<TierLabels, Gauge>,
    pub entries: Family<TierLabels, Gauge>,
    pub evictions: Family<TierLabels, Counter>,
    pub spills: Counter,
    pub spill_drops: Counter,
    pub promotions: Counter,
    pub connections: Family<ProtocolLabels, Gauge>,
    pub commands: Family<CommandLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
}

impl NodeCacheMetrics {
    /// Registers every metric under `kvmesh_node_cache_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kvmesh_node_cache");
        r.register("hits", "Lookups answered, by tier", self.hits.clone());
        r.register(
            "misses",
            "Lookups a tier could not answer, by tier",
            self.misses.clone(),
        );
        r.register(
            "bytes",
            "Bytes held (keys, values and bookkeeping), by tier",
            self.bytes.clone(),
        );
        r.register(
            "capacity_bytes",
            "Byte bound of each tier",
            self.capacity.clone(),
        );
        r.register("entries", "Values held, by tier", self.entries.clone());
        r.register(
            "evictions",
            "Values evicted to stay within the byte bound, by tier",
            self.evictions.clone(),
        );
        r.register(
            "spills",
            "Values evicted from RAM and written to disk",
            self.spills.clone(),
        );
        r.register(
            "spill_drops",
            "Values evicted from RAM and not written to disk (queue full, or write failed)",
            self.spill_drops.clone(),
        );
        r.register(
            "promotions",
            "Values read from disk and put back in RAM",
            self.promotions.clone(),
        );
        r.register(
            "connections",
            "Open client connections, by protocol",
            self.connections.clone(),
        );
        r.register(
            "commands",
            "Commands served, by protocol and command",
            self.commands.clone(),
        );
        r.register(
            "errors",
            "Errors, by protocol and kind",
            self.errors.clone(),
        );
        // Every tier's series exist from the start, so dashboards see zeros, not gaps.
        for tier in [RAM, DISK] {
            let _ = self.hits.get_or_create(&tier);
            let _ = self.misses.get_or_create(&tier);
            let _ = self.evictions.get_or_create(&tier);
        }
        for protocol in ["lm", "redis"] {
            let _ = self.connections.get_or_create(&ProtocolLabels { protocol });
        }
    }

    /// Copies the store's sizes into the gauges (called before each scrape).
    pub fn observe(&self, stats: &StoreStats) {
        self.bytes.get_or_create(&RAM).set(stats.ram_bytes as i64);
        self.capacity
            .get_or_create(&RAM)
            .set(stats.ram_capacity as i64);
        self.entries
            .get_or_create(&RAM)
            .set(stats.ram_entries as i64);
        self.bytes.get_or_create(&DISK).set(stats.disk_bytes as i64);
        self.capacity
            .get_or_create(&DISK)
            .set(stats.disk_capacity as i64);
        self.entries
            .get_or_create(&DISK)
            .set(stats.disk_entries as i64);
    }

    /// A command was served.
    pub fn command(&self, protocol: &'static str, command: &'static str) {
        self.commands
            .get_or_create(&CommandLabels { protocol, command })
            .inc();
    }

    /// Something failed.
    pub fn error(&self, protocol: &'static str, kind: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { protocol, kind })
            .inc();
    }
}
