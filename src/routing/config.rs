//! Routing settings: the policy and the knobs of the kvmesh algorithm.

use std::str::FromStr;
use std::time::Duration;

use super::blocks::BlockHasher;
use super::ring::DEFAULT_VNODES;

/// Canonical prompt bytes per token, roughly (the block hasher works on
/// bytes, engines count tokens).
pub const BYTES_PER_TOKEN: u64 = 4;

/// How replicas are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Prefix-aware with bounded load (the product).
    #[default]
    Kvmesh,
    /// Each healthy replica in turn (a baseline).
    RoundRobin,
    /// Fewest requests in flight (a baseline).
    LeastLoaded,
}

impl Policy {
    /// The policy's name as used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Kvmesh => "kvmesh",
            Policy::RoundRobin => "round-robin",
            Policy::LeastLoaded => "least-loaded",
        }
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvmesh" => Ok(Policy::Kvmesh),
            "round-robin" => Ok(Policy::RoundRobin),
            "least-loaded" => Ok(Policy::LeastLoaded),
            other => Err(format!(
                "unknown policy {other:?}; expected kvmesh, round-robin or least-loaded"
            )),
        }
    }
}

/// Settings of the routing algorithm.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Which algorithm picks replicas.
    pub policy: Policy,
    /// Block size and how many blocks are hashed.
    pub hasher: BlockHasher,
    /// `c` of the load bound: a replica is eligible while its in-flight count
    /// is below `ceil(c · (total_in_flight + 1) / replicas)`. At least 1.0.
    /// 5 by default: a guard against pile-ups, not the objective — tighter
    /// bounds spill warm requests and recompute long prefixes elsewhere
    /// (docs/benchmarks.md has the sweep).
    pub load_factor: f64,
    /// Blocks remembered per replica (its KV cache, in blocks).
    pub index_capacity_blocks: usize,
    /// A prefix carried by at least this share of recent requests is a hot
    /// shared prefix (a system prompt): spread, never followed. 0 =
    /// automatic: a third of one replica's fair share, 1 / (3 · replicas)
    /// (the best balance of hit rate and spread measured in docs/benchmarks.md).
    pub hot_prefix_share: f64,
    /// Cost of one queued (not yet prefilled) block ahead, relative to one
    /// block to compute. 0 by default: on every simulated workload the
    /// in-flight bound alone did as well or better (docs/benchmarks.md).
    pub queue_weight: f64,
    /// `c` of the bound new prefixes are placed under (1: only replicas at
    /// or below the mean load take them).
    pub cold_load_factor: f64,
    /// New prefixes skip ring replicas whose cache footprint is above this
    /// multiple of the mean (0 = off).
    pub cold_footprint_factor: f64,
    /// Virtual nodes per replica on the ring.
    pub vnodes: usize,
    /// Half-life of the load reference. The bound is computed from the
    /// larger of the current total in flight and its recent peak decayed by
    /// this half-life, so a momentary lull elsewhere does not push a replica's
    /// existing sessions off it. Zero: the instantaneous total.
    pub load_half_life: Duration,
    /// Consecutive failures that eject a replica.
    pub eject_after_failures: u32,
    /// First ejection's length; each further one doubles it.
    pub eject_base: Duration,
    /// Longest ejection.
    pub eject_max: Duration,
    /// Blocks each node's cache holds (its memory and disk, in blocks): the
    /// node tier's bound. 0 turns the node tier off.
    pub node_capacity_blocks: usize,
    /// How long an engine's scraped load counts. A replica whose metrics
    /// stopped coming is judged by the router's own in-flight count again.
    pub engine_signal_ttl: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            policy: Policy::Kvmesh,
            hasher: BlockHasher::default(),
            load_factor: 5.0,
            index_capacity_blocks: 32_768,
            hot_prefix_share: 0.0,
            queue_weight: 0.0,
            cold_footprint_factor: 1.05,
            cold_load_factor: 1.0,
            vnodes: DEFAULT_VNODES,
            load_half_life: Duration::from_secs(1),
            eject_after_failures: 3,
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(30),
            node_capacity_blocks: 0,
            engine_signal_ttl: Duration::from_secs(15),
        }
    }
}
