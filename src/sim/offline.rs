//! Offline evaluation: a workload against N simulated engines in virtual
//! time, routed by the real `routing` code (and baselines), no sockets.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use super::engine::{Engine, EngineConfig, Event};
use super::sglang::{SglangCacheAware, SglangConfig, routing_text};
use super::workload::{Arrival, Workload, infinite_cache_bound};
use crate::routing::picker::{EngineLoad, RouteRequest};
use crate::routing::{
    BlockHasher, Decision, Endpoint, Policy, PromptBlocks, Ring, Router, RoutingConfig,
    canonical_prompt,
};

/// A way to place requests, for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// kvmesh's router.
    Kvmesh,
    /// Round-robin over engines.
    RoundRobin,
    /// Fewest requests in flight.
    LeastLoaded,
    /// Uniformly at random (seeded).
    Random,
    /// Consistent hash of the prompt's first 1 KB, no load bound.
    ConsistentHash,
    /// Re-implementation of SGLang's router `cache_aware` policy.
    SglangCacheAware,
}

impl PolicyKind {
    /// Every policy, in table order.
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::Kvmesh,
        PolicyKind::RoundRobin,
        PolicyKind::LeastLoaded,
        PolicyKind::Random,
        PolicyKind::ConsistentHash,
        PolicyKind::SglangCacheAware,
    ];

    /// Name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Kvmesh => "kvmesh",
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::LeastLoaded => "least-loaded",
            PolicyKind::Random => "random",
            PolicyKind::ConsistentHash => "consistent-hash",
            PolicyKind::SglangCacheAware => "sglang-cache-aware (re-impl)",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "kvmesh" => Some(Self::Kvmesh),
            "round-robin" => Some(Self::RoundRobin),
            "least-loaded" => Some(Self::LeastLoaded),
            "random" => Some(Self::Random),
            "consistent-hash" => Some(Self::ConsistentHash),
            "sglang" | "sglang-cache-aware" => Some(Self::SglangCacheAware),
            _ => None,
        }
    }
}

/// Settings of an offline run.
#[derive(Debug, Clone)]
pub struct OfflineConfig {
    pub engines: usize,
    pub engine: EngineConfig,
    /// kvmesh's routing settings (its index capacity is set from the engine cache).
    pub routing: RoutingConfig,
    pub seed: u64,
    /// kvmesh router instances, each with its own index; request `i` goes
    /// through router `i mod routers` (as a Service spreads clients).
    pub routers: usize,
    /// Every this many virtual seconds each router reads each engine's
    /// running and queued requests (its `/metrics`); None: no engine signals.
    pub engine_scrape_s: Option<f64>,
    /// Engines per node sharing one node cache (0: no node cache).
    pub engines_per_node: usize,
    /// Each node cache's size, in tokens of KV.
    pub node_cache_tokens: usize,
    /// Whether kvmesh's router keeps its node tier (it needs node caches to
    /// help).
    pub node_tier: bool,
    /// Whether routers read each answer's cached-token count and correct
    /// their index (the proxy always does).
    pub engine_feedback: bool,
    /// Routers tell each other their placements this many seconds later
    /// (None: they do not).
    pub share_placements_s: Option<f64>,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self {
            engines: 8,
            engine: EngineConfig::default(),
            routing: RoutingConfig::default(),
            seed: 1,
            routers: 1,
            engine_scrape_s: None,
            engines_per_node: 0,
            node_cache_tokens: 0,
            node_tier: true,
            engine_feedback: true,
            share_placements_s: None,
        }
    }
}

/// What one policy achieved on one workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub requests: usize,
    pub refused: usize,
    /// Prompt tokens served from engine caches / prompt tokens.
    pub hit_rate: f64,
    /// `hit_rate` / the infinite shared cache's hit rate.
    pub bound_share: f64,
    /// Prompt tokens computed (not cached).
    pub prefill_tokens: u64,
    /// Prompt tokens loaded from node caches / prompt tokens.
    pub node_hit_rate: f64,
    pub ttft_mean_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
    /// Busiest engine's requests / mean requests per engine.
    pub max_mean_requests: f64,
    /// Busiest engine's prompt tokens / mean.
    pub max_mean_tokens: f64,
    /// Virtual seconds from first arrival to last completion.
    pub makespan_s: f64,
}

/// Per-request routing inputs, computed once per workload and shared by
/// every policy's run.
pub struct Prepared {
    blocks: Vec<PromptBlocks>,
    texts: Vec<String>,
    bound: f64,
}

impl Prepared {
    /// Canonical prompts and block hashes with `hasher`; SGLang's routing
    /// text when `with_text`.
    pub fn new(w: &Workload, hasher: BlockHasher, with_text: bool) -> Self {
        let blocks = w
            .requests
            .iter()
            .map(|r| {
                canonical_prompt(Endpoint::ChatCompletions, &r.body, hasher.max_bytes())
                    .map(|p| hasher.hash(&p.model, p.bytes))
                    .unwrap_or_default()
            })
            .collect();
        let texts = if with_text {
            w.requests
                .iter()
                .map(|r| {
                    serde_json::from_slice(&r.body)
                        .map(|v| routing_text(&v))
                        .unwrap_or_default()
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            blocks,
            texts,
            bound: infinite_cache_bound(w),
        }
    }

    /// The infinite shared cache's hit rate on this workload.
    pub fn bound(&self) -> f64 {
        self.bound
    }
}

enum Placer {
    /// One or more router instances.
    Router(Vec<Router>),
    Random(super::workload::Rng),
    Hash(Ring),
    Sglang(Box<SglangCacheAware>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct At(f64);
impl Eq for At {}
impl PartialOrd for At {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for At {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive(usize),
    Step(usize),
    /// Request `id`'s placement reaches the other routers.
    Learn(usize),
}

/// Runs `w` under `kind`.
pub fn run(w: &Workload, prep: &Prepared, kind: PolicyKind, cfg: &OfflineConfig) -> PolicyResult {
    let n = cfg.engines.max(1);
    let names: Vec<String> = (0..n).map(|i| format!("engine-{i}")).collect();
    let per_node = cfg.engines_per_node;
    let node_of = |i: usize| (per_node > 0).then(|| format!("node-{}", i / per_node));
    let node_names: Vec<Option<String>> = (0..n).map(node_of).collect();
    let router = |policy| {
        let routers = (0..cfg.routers.max(1))
            .map(|_| {
                let mut r = Router::new(RoutingConfig {
                    policy,
                    // The index remembers about what an engine's cache holds:
                    // ~4 bytes per token, so one 64-byte block per 16 tokens.
                    index_capacity_blocks: (cfg.engine.cache_tokens / 16).max(1),
                    node_capacity_blocks: if cfg.node_tier && per_node > 0 {
                        cfg.node_cache_tokens / 16
                    } else {
                        0
                    },
                    ..cfg.routing.clone()
                });
                let members: Vec<(&str, Option<&str>)> = names
                    .iter()
                    .zip(&node_names)
                    .map(|(n, node)| (n.as_str(), node.as_deref()))
                    .collect();
                r.set_members(&members);
                r
            })
            .collect();
        Placer::Router(routers)
    };
    let mut placer = match kind {
        PolicyKind::Kvmesh => router(Policy::Kvmesh),
        PolicyKind::RoundRobin => router(Policy::RoundRobin),
        PolicyKind::LeastLoaded => router(Policy::LeastLoaded),
        PolicyKind::Random => Placer::Random(super::workload::Rng::new(cfg.seed)),
        PolicyKind::ConsistentHash => Placer::Hash(Ring::new(
            names.iter().cloned().zip(0..),
            cfg.routing.vnodes,
        )),
        PolicyKind::SglangCacheAware => {
            Placer::Sglang(Box::new(SglangCacheAware::new(n, SglangConfig::default())))
        }
    };
    let slot_engine: HashMap<u32, usize> = match &placer {
        // Every router instance got the same names in the same order, so
        // the same slots.
        Placer::Router(r) => names
            .iter()
            .enumerate()
            .filter_map(|(i, nm)| r[0].slot_of(nm).map(|s| (s, i)))
            .collect(),
        _ => (0..n).map(|i| (i as u32, i)).collect(),
    };

    let base = Instant::now();
    let node_stores: Vec<crate::sim::cache::SharedNodeStore> = if per_node > 0 {
        (0..n.div_ceil(per_node))
            .map(|_| {
                std::sync::Arc::new(std::sync::Mutex::new(crate::sim::cache::NodeStore::new(
                    cfg.node_cache_tokens / cfg.engine.block_tokens.max(1),
                )))
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut engines: Vec<Engine> = (0..n)
        .map(|i| match node_stores.get(i / per_node.max(1)) {
            Some(store) if per_node > 0 => {
                Engine::with_node_store(cfg.engine.clone(), store.clone())
            }
            _ => Engine::new(cfg.engine.clone()),
        })
        .collect();
    let mut next_scrape = 0.0f64;
    let mut stepping = vec![false; n];
    let mut in_flight = vec![0usize; n];
    let mut heap: BinaryHeap<Reverse<(At, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Reverse<(At, u64, Ev)>>, t: f64, e: Ev| {
        seq += 1;
        heap.push(Reverse((At(t), seq, e)));
    };
    let next_turn: HashMap<(usize, usize), usize> = w
        .requests
        .iter()
        .map(|r| ((r.session, r.turn), r.id))
        .collect();
    for r in &w.requests {
        if let Arrival::At(t) = r.arrival {
            push(&mut heap, t, Ev::Arrive(r.id));
        }
    }
    let total = w.requests.len();
    let mut arrived_at = vec![0.0f64; total];
    let mut engine_of = vec![usize::MAX; total];
    // Each request's router instance and decision.
    let mut decisions: Vec<Option<(usize, Decision)>> = vec![None; total];
    let mut learn_slot = vec![0u32; total];
    let mut ttft = Vec::with_capacity(total);
    let (mut cached, mut prompt) = (0u64, 0u64);
    let mut per_engine_requests = vec![0usize; n];
    let mut per_engine_tokens = vec![0u64; n];
    let (mut refused, mut first_at, mut last_at) = (0usize, f64::INFINITY, 0.0f64);

    while let Some(Reverse((At(now), _, ev))) = heap.pop() {
        let when = base + Duration::from_secs_f64(now);
        match ev {
            Ev::Arrive(id) => {
                let r = &w.requests[id];
                arrived_at[id] = now;
                first_at = first_at.min(now);
                let e = match &mut placer {
                    Placer::Router(routers) => {
                        if let Some(every) = cfg.engine_scrape_s
                            && now >= next_scrape
                        {
                            // Scrapes happen on a period; modelled at the first
                            // arrival after each tick.
                            next_scrape = (now / every).floor() * every + every;
                            // Every router reads the same engine state.
                            let loads: Vec<(u32, EngineLoad)> = slot_engine
                                .iter()
                                .map(|(&slot, &e)| {
                                    let st = engines[e].stats();
                                    let load = EngineLoad {
                                        running: st.running as u32,
                                        waiting: st.waiting as u32,
                                        kv_usage: Some(st.kv_cache_usage),
                                    };
                                    (slot, load)
                                })
                                .collect();
                            for router in routers.iter_mut() {
                                for &(slot, load) in &loads {
                                    router.engine_load(slot, Some(load), when);
                                }
                            }
                        }
                        let k = id % routers.len();
                        let req = RouteRequest {
                            blocks: &prep.blocks[id],
                            session: None,
                        };
                        match routers[k].route(&req, &[], when) {
                            Ok(d) => {
                                let e = slot_engine.get(&d.replica).copied().unwrap_or(0);
                                learn_slot[id] = d.replica;
                                decisions[id] = Some((k, d));
                                if let Some(delay) = cfg.share_placements_s
                                    && routers.len() > 1
                                {
                                    push(&mut heap, now + delay, Ev::Learn(id));
                                }
                                e
                            }
                            Err(_) => 0,
                        }
                    }
                    Placer::Random(rng) => rng.below(n),
                    Placer::Hash(ring) => {
                        let h = &prep.blocks[id].hashes;
                        let key = h
                            .get(h.len().min(16).saturating_sub(1))
                            .copied()
                            .unwrap_or(0);
                        ring.candidates(key).next().map_or(0, |s| s as usize)
                    }
                    Placer::Sglang(s) => {
                        let text = prep.texts.get(id).map_or("", String::as_str);
                        s.pick(text, &in_flight, now).min(n - 1)
                    }
                };
                engine_of[id] = e;
                let mut sr = r.seq.clone();
                sr.id = id as u64;
                if engines[e].submit(sr, now) {
                    in_flight[e] += 1;
                    per_engine_requests[e] += 1;
                    per_engine_tokens[e] += r.prompt_tokens as u64;
                    if !stepping[e]
                        && let Some(d) = engines[e].plan()
                    {
                        stepping[e] = true;
                        push(&mut heap, now + d, Ev::Step(e));
                    }
                } else {
                    refused += 1;
                    if let (Placer::Router(routers), Some((k, mut d))) =
                        (&mut placer, decisions[id].take())
                    {
                        routers[k].finish(&mut d);
                    }
                }
            }
            Ev::Learn(id) => {
                if let Placer::Router(routers) = &mut placer {
                    let from = id % routers.len();
                    for (j, router) in routers.iter_mut().enumerate() {
                        if j != from {
                            router.learn(learn_slot[id], &prep.blocks[id]);
                        }
                    }
                }
            }
            Ev::Step(e) => {
                for event in engines[e].complete() {
                    match event {
                        Event::FirstToken {
                            id,
                            cached_tokens,
                            prompt_tokens,
                        } => {
                            let id = id as usize;
                            ttft.push(now - arrived_at[id]);
                            cached += cached_tokens as u64;
                            prompt += prompt_tokens as u64;
                            if let (Placer::Router(routers), Some((k, d))) =
                                (&mut placer, decisions[id].as_mut())
                            {
                                routers[*k].first_byte(d);
                                // As the proxy does with `usage.cached_tokens`.
                                if cfg.engine_feedback {
                                    routers[*k].engine_feedback(
                                        d,
                                        &prep.blocks[id],
                                        cached_tokens as u64,
                                    );
                                }
                            }
                        }
                        Event::Token { .. } => {}
                        Event::Finished { id } => {
                            let id = id as usize;
                            last_at = last_at.max(now);
                            in_flight[engine_of[id]] -= 1;
                            if let (Placer::Router(routers), Some((k, mut d))) =
                                (&mut placer, decisions[id].take())
                            {
                                routers[k].finish(&mut d);
                            }
                            let r = &w.requests[id];
                            if let Some(&next) = next_turn.get(&(r.session, r.turn + 1))
                                && let Arrival::AfterPrevious(think) = w.requests[next].arrival
                            {
                                push(&mut heap, now + think, Ev::Arrive(next));
                            }
                        }
                    }
                }
                match engines[e].plan() {
                    Some(d) => push(&mut heap, now + d, Ev::Step(e)),
                    None => stepping[e] = false,
                }
            }
        }
    }
    ttft.sort_by(f64::total_cmp);
    let hit_rate = if prompt == 0 {
        0.0
    } else {
        cached as f64 / prompt as f64
    };
    let prefill_tokens = engines.iter().map(|e| e.stats().prefill_tokens).sum();
    let node_hit_tokens: u64 = engines.iter().map(|e| e.stats().node_hit_tokens).sum();
    PolicyResult {
        policy: kind.name().to_string(),
        requests: total,
        refused,
        hit_rate,
        bound_share: if prep.bound > 0.0 {
            hit_rate / prep.bound
        } else {
            0.0
        },
        prefill_tokens,
        node_hit_rate: if prompt == 0 {
            0.0
        } else {
            node_hit_tokens as f64 / prompt as f64
        },
        ttft_mean_s: mean(&ttft),
        ttft_p50_s: quantile(&ttft, 0.50),
        ttft_p99_s: quantile(&ttft, 0.99),
        max_mean_requests: max_over_mean(per_engine_requests.iter().map(|&x| x as f64)),
        max_mean_tokens: max_over_mean(per_engine_tokens.iter().map(|&x| x as f64)),
        makespan_s: if last_at > first_at {
            last_at - first_at
        } else {
            0.0
        },
    }
}

/// Mean of `v` (0 when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The `q` quantile of sorted `v` (nearest rank; 0 when empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Largest value over the mean (1.0 = perfectly even).
pub fn max_over_mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    let m = mean(&v);
    if m == 0.0 {
        0.0
    } else {
        v.iter().copied().fold(0.0, f64::max) / m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::workload::{Spec, build};

    fn small() -> (Workload, OfflineConfig) {
        let spec = Spec::SharedPrefix {
            groups: 32,
            prompts: 4,
            system_tokens: 512,
            question_tokens: 32,
            output_tokens: 8,
            rate: 20.0,
        };
        let cfg = OfflineConfig {
            engines: 4,
            ..OfflineConfig::default()
        };
        (build(&spec, 5).expect("workload"), cfg)
    }

    #[test]
    fn every_request_completes_under_every_policy() {
        let (w, cfg) = small();
        let prep = Prepared::new(&w, BlockHasher::default(), true);
        for kind in PolicyKind::ALL {
            let r = run(&w, &prep, kind, &cfg);
            assert_eq!((r.requests, r.refused), (128, 0), "{}", kind.name());
            assert!(r.ttft_p50_s > 0.0 && r.ttft_p99_s >= r.ttft_p50_s);
            assert!(
                r.hit_rate <= prep.bound() + 1e-9,
                "{} beat the bound",
                kind.name()
            );
        }
    }

    #[test]
    fn kvmesh_beats_round_robin_on_shared_prefixes() {
        let (w, cfg) = small();
        let prep = Prepared::new(&w, BlockHasher::default(), false);
        let k = run(&w, &prep, PolicyKind::Kvmesh, &cfg);
        let rr = run(&w, &prep, PolicyKind::RoundRobin, &cfg);
        assert!(
            k.hit_rate > rr.hit_rate * 1.3,
            "kvmesh {} vs rr {}",
            k.hit_rate,
            rr.hit_rate
        );
        assert!(k.prefill_tokens < rr.prefill_tokens);
        assert!(k.ttft_mean_s < rr.ttft_mean_s);
    }

    #[test]
    fn the_same_run_gives_the_same_numbers() {
        let (w, cfg) = small();
        let prep = Prepared::new(&w, BlockHasher::default(), false);
        let a = run(&w, &prep, PolicyKind::Kvmesh, &cfg);
        let b = run(&w, &prep, PolicyKind::Kvmesh, &cfg);
        assert_eq!(
            (a.hit_rate, a.ttft_mean_s, a.prefill_tokens),
            (b.hit_rate, b.ttft_mean_s, b.prefill_tokens)
        );
    }

    #[test]
    fn quantiles_and_shares_are_computed_as_documented() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(
            (quantile(&v, 0.5), quantile(&v, 0.99), quantile(&v, 0.0)),
            (2.0, 4.0, 1.0)
        );
        assert_eq!(max_over_mean([1.0, 1.0, 2.0].into_iter()), 1.5);
    }
}
