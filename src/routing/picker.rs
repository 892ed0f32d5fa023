//! The routing decision: replica table, load bound, warm/cold/session choice,
//! ejection back-off. Pure: the caller passes `now` and does all I/O.

use std::collections::HashMap;
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_64;

use super::blocks::PromptBlocks;
use super::config::BYTES_PER_TOKEN;
pub use super::config::{Policy, RoutingConfig};
use super::index::{PrefixIndex, PrefixMatch, Slot};
use super::node::{NodeId, NodeNames, NodeTier};
use super::ring::Ring;

/// Why a replica was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// It holds the longest useful prefix of the prompt.
    Warm,
    /// Nobody holds a useful prefix: ring placement from the request's own key.
    Cold,
    /// The session header keyed the ring.
    Session,
    /// No prompt (or a baseline policy): chosen by load alone.
    Load,
    /// No replica holds the prefix but a node's cache does: a replica on
    /// that node loads it from there instead of recomputing.
    Node,
}

impl Reason {
    /// Stable lowercase label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            Reason::Warm => "warm",
            Reason::Cold => "cold",
            Reason::Session => "session",
            Reason::Load => "load",
            Reason::Node => "node",
        }
    }
}

/// What the router decided for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The chosen replica.
    pub replica: Slot,
    /// Why.
    pub reason: Reason,
    /// Leading prompt blocks the chosen replica was believed to hold.
    pub matched_blocks: u32,
    /// Prompt blocks hashed.
    pub total_blocks: u32,
    /// Blocks still to prefill there, counted as queued until first byte.
    pub pending_blocks: u64,
    /// Which incarnation of the slot: a slot a leaving replica frees can be
    /// reused, and this attempt's accounting must not land on the newcomer.
    pub epoch: u64,
}

/// Why no replica could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The replica set is empty.
    #[error("no replicas are configured")]
    NoReplicas,
    /// Every replica is ejected or was already tried.
    #[error("no healthy replica is available")]
    NoHealthyReplica,
}

/// One request as the router sees it.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The canonical prompt's blocks (empty: no prompt).
    pub blocks: &'a PromptBlocks,
    /// Session affinity key (the session header's value), if any.
    pub session: Option<&'a str>,
}

/// What an engine's own metrics said about its load.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineLoad {
    /// Requests the engine is running.
    pub running: u32,
    /// Requests queued in the engine, not yet scheduled.
    pub waiting: u32,
    /// Share of its KV cache in use (0..1), if reported.
    pub kv_usage: Option<f64>,
}

/// A scraped engine load and what it means next to local counts.
#[derive(Debug, Clone, Copy)]
struct EngineSignal {
    load: EngineLoad,
    /// Requests the engine holds that this router did not send (other
    /// routers' share), estimated when the scrape arrived.
    others: u32,
    at: Instant,
}

#[derive(Debug)]
struct Replica {
    name: String,
    node: Option<NodeId>,
    epoch: u64,
    in_flight: u32,
    pending_blocks: u64,
    failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    engine: Option<EngineSignal>,
}

impl Replica {
    fn healthy(&self, now: Instant) -> bool {
        self.ejected_until.is_none_or(|t| now >= t)
    }

    /// The engine's last report, while it is younger than `ttl`.
    fn fresh_engine(&self, now: Instant, ttl: std::time::Duration) -> Option<&EngineSignal> {
        self.engine
            .as_ref()
            .filter(|e| now.saturating_duration_since(e.at) <= ttl)
    }

    /// In flight here plus, while the engine's last report is fresh, what it
    /// runs or queues for others: the load the bound compares.
    fn load(&self, now: Instant, ttl: std::time::Duration) -> u32 {
        let others = self.fresh_engine(now, ttl).map_or(0, |e| e.others);
        self.in_flight.saturating_add(others)
    }
}

/// A point-in-time view of one replica, for metrics and readiness.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    /// Slot (local handle).
    pub slot: Slot,
    /// Replica name (URL or pod name).
    pub name: String,
    /// Requests in flight.
    pub in_flight: u32,
    /// Blocks routed there and not yet prefilled.
    pub pending_blocks: u64,
    /// Not ejected.
    pub healthy: bool,
    /// Blocks the index believes it holds.
    pub indexed_blocks: usize,
    /// The engine's last fresh report of its own load, if any.
    pub engine: Option<EngineLoad>,
}

/// A ring to build off the hot path after a membership change (see
/// [`Router::set_members_deferred`]).
#[derive(Debug)]
pub struct RingBuild {
    members: Vec<(String, Slot)>,
    vnodes: usize,
    generation: u64,
}

impl RingBuild {
    /// Builds the ring (the slow part: sorting every virtual node).
    pub fn build(self) -> BuiltRing {
        BuiltRing {
            ring: Ring::new(self.members, self.vnodes),
            generation: self.generation,
        }
    }
}

/// A built ring, ready for [`Router::install_ring`].
#[derive(Debug)]
pub struct BuiltRing {
    ring: Ring,
    generation: u64,
}

/// The router's whole state: replica table, ring, prefix index, loads.
///
/// Every method is synchronous and takes `now` where time matters; the proxy
/// wraps it in a lock, the offline benchmark drives it in virtual time.
#[derive(Debug)]
pub struct Router {
    cfg: RoutingConfig,
    replicas: Vec<Option<Replica>>,
    by_name: HashMap<String, Slot>,
    ring: Ring,
    /// Membership changes so far; a built ring is installed only if no
    /// later change made it stale.
    ring_generation: u64,
    index: PrefixIndex,
    nodes: NodeTier,
    node_names: NodeNames,
    rr: usize,
    /// Replicas that ever joined: each join's epoch.
    joins: u64,
    /// Recent peak of the total in flight, and when it was last updated.
    load_peak: (f64, Option<Instant>),
}

impl Router {
    /// A router with no replicas.
    pub fn new(cfg: RoutingConfig) -> Self {
        let index = PrefixIndex::new(cfg.index_capacity_blocks);
        let ring = Ring::new(std::iter::empty(), cfg.vnodes);
        let nodes = NodeTier::new(cfg.node_capacity_blocks);
        Self {
            cfg,
            replicas: Vec::new(),
            by_name: HashMap::new(),
            ring,
            ring_generation: 0,
            index,
            nodes,
            node_names: NodeNames::default(),
            rr: 0,
            joins: 0,
            load_peak: (0.0, None),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &RoutingConfig {
        &self.cfg
    }

    /// Replaces the settings, keeping replicas, loads and health. A new block
    /// size or index capacity makes the index start over (its hashes or
    /// bounds no longer apply); new virtual nodes rebuild the ring.
    pub fn reconfigure(&mut self, cfg: RoutingConfig) {
        if cfg.hasher != self.cfg.hasher {
            self.nodes = NodeTier::new(cfg.node_capacity_blocks);
        } else if cfg.node_capacity_blocks != self.cfg.node_capacity_blocks {
            self.nodes.set_capacity(cfg.node_capacity_blocks);
        }
        if cfg.hasher != self.cfg.hasher
            || cfg.index_capacity_blocks != self.cfg.index_capacity_blocks
        {
            self.index = PrefixIndex::new(cfg.index_capacity_blocks);
        }
        let ring_changed = cfg.vnodes != self.cfg.vnodes;
        self.cfg = cfg;
        if ring_changed {
            self.ring = Ring::new(
                self.by_name.iter().map(|(n, s)| (n.clone(), *s)),
                self.cfg.vnodes,
            );
        }
    }

    /// Sets the replica set by name (no node known). See [`Router::set_members`].
    pub fn set_replicas<S: AsRef<str>>(&mut self, names: &[S]) -> bool {
        let members: Vec<(&str, Option<&str>)> = names.iter().map(|n| (n.as_ref(), None)).collect();
        self.set_members(&members)
    }

    /// Sets the replica set: `(name, node)` pairs. New names join, missing
    /// names leave (their blocks move to their node's tier); the ring is
    /// rebuilt only when membership changed. Returns true when it changed.
    pub fn set_members(&mut self, members: &[(&str, Option<&str>)]) -> bool {
        match self.set_members_deferred(members) {
            Some(build) => {
                self.install_ring(build.build());
                true
            }
            None => false,
        }
    }

    /// Like [`Router::set_members`] but leaves the ring to the caller: when
    /// membership changed it returns the ring to build — outside any lock —
    /// and hand to [`Router::install_ring`]. Until then the old ring places
    /// cold requests (skipping replicas that left; newcomers take warm,
    /// session and load-only requests already).
    pub fn set_members_deferred(&mut self, members: &[(&str, Option<&str>)]) -> Option<RingBuild> {
        let wanted: std::collections::HashSet<&str> = members.iter().map(|m| m.0).collect();
        let mut changed = false;
        let leaving: Vec<String> = self
            .by_name
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in leaving {
            if let Some(slot) = self.by_name.remove(&name) {
                let blocks = self.index.remove_replica(slot);
                if let Some(node) = self.replicas[slot as usize].as_ref().and_then(|r| r.node) {
                    self.nodes.absorb(node, blocks);
                }
                self.replicas[slot as usize] = None;
                changed = true;
            }
        }
        for &(name, node) in members {
            let node = node.map(|n| self.node_names.id(n));
            if let Some(&slot) = self.by_name.get(name) {
                // A pod keeps its node; a static entry may gain one.
                self.replica_mut(slot).node = node;
                continue;
            }
            self.joins += 1;
            let replica = Replica {
                name: name.to_string(),
                node,
                epoch: self.joins,
                in_flight: 0,
                pending_blocks: 0,
                failures: 0,
                ejections: 0,
                ejected_until: None,
                engine: None,
            };
            let slot = match self.replicas.iter().position(Option::is_none) {
                Some(free) => {
                    self.replicas[free] = Some(replica);
                    free
                }
                None => {
                    self.replicas.push(Some(replica));
                    self.replicas.len() - 1
                }
            } as Slot;
            self.by_name.insert(name.to_string(), slot);
            changed = true;
        }
        if !changed {
            return None;
        }
        self.ring_generation += 1;
        Some(RingBuild {
            members: self.by_name.iter().map(|(n, s)| (n.clone(), *s)).collect(),
            vnodes: self.cfg.vnodes,
            generation: self.ring_generation,
        })
    }

    /// Installs a ring built from [`Router::set_members_deferred`]'s plan,
    /// unless a later membership change made it stale. True if installed.
    pub fn install_ring(&mut self, built: BuiltRing) -> bool {
        if built.generation != self.ring_generation {
            return false;
        }
        self.ring = built.ring;
        true
    }

    /// Records what `slot`'s engine reported about its load (`None`: the
    /// scrape failed or made no sense — the replica is judged by local
    /// counts alone, never penalised for it). Requests the engine runs or
    /// queues beyond this router's own in flight count as load.
    pub fn engine_load(&mut self, slot: Slot, load: Option<EngineLoad>, now: Instant) {
        if let Some(r) = self.replica_mut_opt(slot) {
            r.engine = load.map(|load| EngineSignal {
                load,
                others: (load.running.saturating_add(load.waiting)).saturating_sub(r.in_flight),
                at: now,
            });
        }
    }

    /// The slot of a replica name.
    pub fn slot_of(&self, name: &str) -> Option<Slot> {
        self.by_name.get(name).copied()
    }

    /// The name of a replica slot.
    pub fn name_of(&self, slot: Slot) -> Option<&str> {
        self.replica(slot).map(|r| r.name.as_str())
    }

    /// Number of replicas.
    pub fn replica_count(&self) -> usize {
        self.by_name.len()
    }

    /// Replicas not ejected at `now`.
    pub fn healthy_count(&self, now: Instant) -> usize {
        self.live().filter(|(_, r)| r.healthy(now)).count()
    }

    /// Status of every replica, by slot.
    pub fn status(&self, now: Instant) -> Vec<ReplicaStatus> {
        self.live()
            .map(|(slot, r)| ReplicaStatus {
                slot,
                name: r.name.clone(),
                in_flight: r.in_flight,
                pending_blocks: r.pending_blocks,
                healthy: r.healthy(now),
                indexed_blocks: self.index.blocks_held(slot),
                engine: r
                    .fresh_engine(now, self.cfg.engine_signal_ttl)
                    .map(|e| e.load),
            })
            .collect()
    }

    /// The prefix index (read-only).
    pub fn index(&self) -> &PrefixIndex {
        &self.index
    }

    /// Chooses a replica for `req`, skipping `exclude` (replicas already
    /// tried), and accounts for it: in flight +1, pending prefill +uncached,
    /// and the prompt's blocks recorded for it. Call [`Router::finish`] once
    /// the attempt ends, whatever its outcome.
    pub fn route(
        &mut self,
        req: &RouteRequest<'_>,
        exclude: &[Slot],
        now: Instant,
    ) -> Result<Decision, RouteError> {
        if self.by_name.is_empty() {
            return Err(RouteError::NoReplicas);
        }
        let ttl = self.cfg.engine_signal_ttl;
        let candidates: Vec<(Slot, u32)> = self
            .live()
            .filter(|(s, r)| r.healthy(now) && !exclude.contains(s))
            .map(|(s, r)| (s, r.load(now, ttl)))
            .collect();
        if candidates.is_empty() {
            return Err(RouteError::NoHealthyReplica);
        }
        let total: u32 = candidates.iter().map(|c| c.1).sum();
        let reference = self.load_reference(f64::from(total), now);
        let mut decision = self.pick(req, &candidates, reference);
        let r = self.replica_mut(decision.replica);
        decision.epoch = r.epoch;
        r.in_flight += 1;
        r.pending_blocks += decision.pending_blocks;
        if !req.blocks.is_empty() {
            self.index.record(decision.replica, req.blocks);
            self.spill_evicted();
        }
        Ok(decision)
    }

    /// Another router sent `prompt` to `slot`: the index learns that the
    /// replica holds it (no load is accounted: that router counts it).
    pub fn learn(&mut self, slot: Slot, prompt: &PromptBlocks) {
        if self.replica(slot).is_some() && !prompt.is_empty() {
            self.index.record(slot, prompt);
            self.spill_evicted();
        }
    }

    /// Blocks replicas' index entries lost go to those replicas' nodes.
    fn spill_evicted(&mut self) {
        if self.nodes.capacity() == 0 {
            // Nothing keeps them; the buffer must still not grow.
            self.index.take_evicted();
            return;
        }
        for (slot, h, w) in self.index.take_evicted() {
            if let Some(node) = self.replica(slot).and_then(|r| r.node) {
                self.nodes.absorb(node, [(h, w)]);
            }
        }
    }

    /// The first response byte arrived: the replica finished this prefill.
    pub fn first_byte(&mut self, decision: &mut Decision) {
        let pending = std::mem::take(&mut decision.pending_blocks);
        if let Some(r) = self.attempt_replica(decision) {
            r.pending_blocks = r.pending_blocks.saturating_sub(pending);
        }
    }

    /// The attempt ended (response finished, failed, or the client left).
    /// Counting it twice is harmless: only the first call counts.
    pub fn finish(&mut self, decision: &mut Decision) {
        self.first_byte(decision);
        if let Some(r) = self.attempt_replica(decision) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
        // A finished decision refers to nothing any more.
        decision.epoch = 0;
    }

    /// The replica an attempt went to, if it is still the same incarnation.
    fn attempt_replica(&mut self, decision: &Decision) -> Option<&mut Replica> {
        self.replica_mut_opt(decision.replica)
            .filter(|r| r.epoch == decision.epoch)
    }

    /// The replica answered: its failure streak ends.
    pub fn report_success(&mut self, slot: Slot) {
        if let Some(r) = self.replica_mut_opt(slot) {
            r.failures = 0;
            r.ejections = 0;
        }
    }

    /// The replica failed (connect error or reset before any response byte).
    /// Returns true when this failure ejected it.
    pub fn report_failure(&mut self, slot: Slot, now: Instant) -> bool {
        let (after, base, max) = (
            self.cfg.eject_after_failures.max(1),
            self.cfg.eject_base,
            self.cfg.eject_max,
        );
        let Some(r) = self.replica_mut_opt(slot) else {
            return false;
        };
        if !r.healthy(now) {
            return false;
        }
        r.failures += 1;
        // Back from an ejection, one more failure ejects again, for longer.
        if r.failures >= after || r.ejections > 0 {
            let backoff = base.saturating_mul(1u32 << r.ejections.min(16)).min(max);
            r.ejected_until = Some(now + backoff);
            r.ejections += 1;
            r.failures = 0;
            return true;
        }
        false
    }

    /// The engine that served `decision` reported `cached_tokens` of the
    /// prompt cached. When the index predicted far more (over twice as many
    /// blocks, and at least 4), the engine evidently dropped what the index
    /// still lists for that replica: the index drops as many of its least
    /// recently used blocks as it overestimated (the engine's own LRU went
    /// the same way), keeping the prompt just served, which the engine holds
    /// again once it has computed it. Returns true on such a misprediction.
    /// Tokens become blocks at ~4 canonical bytes per token.
    pub fn engine_feedback(
        &mut self,
        decision: &Decision,
        prompt: &PromptBlocks,
        cached_tokens: u64,
    ) -> bool {
        let predicted = decision.matched_blocks as usize;
        let block = self.cfg.hasher.block_bytes.max(1) as u64;
        let reported = usize::try_from(cached_tokens.saturating_mul(BYTES_PER_TOKEN) / block)
            .unwrap_or(usize::MAX);
        let same = self
            .replica(decision.replica)
            .is_some_and(|r| r.epoch == decision.epoch);
        // A node-tier prediction is about the node's cache, which engines
        // may not count as cached: not evidence against the replica's index.
        if !same
            || decision.reason == Reason::Node
            || predicted < 4
            || reported.saturating_mul(2) >= predicted
        {
            return false;
        }
        let over = predicted - reported;
        self.index.shrink(decision.replica, prompt, over);
        self.spill_evicted();
        true
    }

    /// The total in flight the load bound is computed from: `total`, or the
    /// recent peak decayed by the half-life if that is larger.
    pub fn load_reference(&mut self, total: f64, now: Instant) -> f64 {
        let (peak, at) = self.load_peak;
        let half_life = self.cfg.load_half_life.as_secs_f64();
        let decayed = match at {
            Some(at) if half_life > 0.0 => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                peak * 0.5f64.powf(dt / half_life)
            }
            _ => 0.0,
        };
        let reference = total.max(decayed);
        self.load_peak = (reference, Some(now));
        reference
    }

    fn pick(
        &mut self,
        req: &RouteRequest<'_>,
        candidates: &[(Slot, u32)],
        reference: f64,
    ) -> Decision {
        let total_blocks = req.blocks.len() as u32;
        let decision = |replica, reason, matched: u32| Decision {
            replica,
            reason,
            matched_blocks: matched,
            total_blocks,
            pending_blocks: u64::from(total_blocks - matched.min(total_blocks)),
            epoch: 0,
        };
        match self.cfg.policy {
            Policy::RoundRobin => {
                self.rr = self.rr.wrapping_add(1);
                let (slot, _) = candidates[self.rr % candidates.len()];
                let matched = self
                    .index
                    .lookup(req.blocks, f64::INFINITY)
                    .blocks_for(slot);
                return decision(slot, Reason::Load, matched);
            }
            Policy::LeastLoaded => {
                let slot = self.least_loaded(candidates);
                let matched = self
                    .index
                    .lookup(req.blocks, f64::INFINITY)
                    .blocks_for(slot);
                return decision(slot, Reason::Load, matched);
            }
            Policy::Kvmesh => {}
        }
        let bound = load_bound(self.cfg.load_factor, reference, candidates.len());
        // In-flight count by slot, for candidates only: O(1) eligibility checks.
        let mut load_of: Vec<Option<u32>> = vec![None; self.replicas.len()];
        for &(s, load) in candidates {
            load_of[s as usize] = Some(load);
        }
        let below = |slot: Slot, limit: u32| {
            load_of
                .get(slot as usize)
                .copied()
                .flatten()
                .is_some_and(|l| l < limit)
        };
        if let Some(session) = req.session {
            let slot = self.ring_first(xxh3_64(session.as_bytes()), &|s| below(s, bound));
            let matched = self
                .index
                .lookup(req.blocks, f64::INFINITY)
                .blocks_for(slot);
            return decision(slot, Reason::Session, matched);
        }
        if req.blocks.is_empty() {
            let eligible: Vec<(Slot, u32)> = candidates
                .iter()
                .copied()
                .filter(|&(_, load)| load < bound)
                .collect();
            let slot = self.least_loaded(&eligible);
            return decision(slot, Reason::Load, 0);
        }
        let n = req.blocks.len();
        let hot = if self.cfg.hot_prefix_share > 0.0 {
            self.cfg.hot_prefix_share
        } else {
            1.0 / (3 * self.replica_count().max(1)) as f64
        };
        let m: PrefixMatch = self.index.lookup(req.blocks, hot);
        // A match that ends inside the hot shared prefix is worth nothing:
        // every replica soon holds that part. Warm candidates: eligible
        // replicas holding more than that.
        let warm: Vec<(Slot, u32)> = m
            .matched
            .iter()
            .copied()
            .filter(|&(s, held)| held > m.shared && below(s, bound))
            .collect();
        let best_useful = warm.iter().map(|w| w.1).max().unwrap_or(0);
        // Key ties and cold placement by the block where this request parts
        // from what is shared and known: never by a prefix everyone carries.
        // The shared part ends at a branch point the index saw; the indexed
        // block after it is one of the branches, so it tells requests apart.
        let key_at = if best_useful > m.shared {
            best_useful as usize
        } else {
            req.blocks.next_indexed(m.shared as usize)
        }
        .min(n - 1);
        let key = req.blocks.hashes[key_at];
        // New prefixes take only replicas at or below the mean load (c = 1):
        // the headroom up to `c` stays for the sessions a replica already has,
        // so placing new work does not push existing sessions off their home.
        let fair = load_bound(self.cfg.cold_load_factor, reference, candidates.len());
        // ...and, once caches run full, whose cache footprint (blocks the
        // index holds for it) is near the mean, so no cache evicts first.
        // Below half full, footprints do not matter and the ring decides alone.
        let footprint = self.cfg.cold_footprint_factor;
        let half_full = self.index.capacity() / 2;
        let held: Vec<usize> = (0..self.replicas.len())
            .map(|s| self.index.blocks_held(s as Slot))
            .collect();
        let mean_held = candidates.iter().map(|c| held[c.0 as usize]).sum::<usize>() as f64
            / candidates.len() as f64;
        let roomy = |s: Slot| {
            let h = held[s as usize];
            below(s, fair)
                && (footprint <= 0.0 || h <= half_full || h as f64 <= footprint * mean_held)
        };
        let cold = if candidates.iter().any(|c| roomy(c.0)) {
            self.ring_first(key, &roomy)
        } else {
            self.ring_first(key, &|s| below(s, fair))
        };
        if warm.is_empty() {
            if let Some((slot, held)) =
                self.node_pick(req.blocks, key, m.shared, &|s| below(s, bound))
            {
                return decision(slot, Reason::Node, held);
            }
            return decision(cold, Reason::Cold, m.blocks_for(cold));
        }
        // Cost = blocks to compute there + queued prefill ahead of it; ties go
        // to the longer match, then to ring order from the key.
        let cost = |slot: Slot, useful_blocks: u32| -> f64 {
            let pending = self.replica(slot).map_or(0, |r| r.pending_blocks);
            (n as u64 - u64::from(useful_blocks)) as f64 + self.cfg.queue_weight * pending as f64
        };
        let mut best = (cold, 0u32, cost(cold, 0));
        let mut tied = false;
        for &(slot, u) in &warm {
            let c = cost(slot, u);
            if c < best.2 || (c == best.2 && u > best.1) {
                best = (slot, u, c);
                tied = false;
            } else if c == best.2 && u == best.1 {
                tied = true;
            }
        }
        if tied {
            let (c, u) = (best.2, best.1);
            let is_best = |s: Slot| {
                s == cold && u == 0
                    || warm
                        .iter()
                        .any(|&(w, wu)| w == s && wu == u && cost(s, wu) == c)
            };
            if let Some(first) = self.ring.candidates(key).find(|s| is_best(*s)) {
                best.0 = first;
            }
        }
        let reason = if best.1 > 0 {
            Reason::Warm
        } else {
            Reason::Cold
        };
        decision(best.0, reason, m.blocks_for(best.0))
    }

    /// The node whose cache holds the longest useful prefix of `prompt`
    /// (beyond the `shared` hot part) among nodes with an `eligible` replica,
    /// and that node's first eligible replica on the ring from `key`.
    fn node_pick(
        &mut self,
        prompt: &PromptBlocks,
        key: u64,
        shared: u32,
        eligible: &impl Fn(Slot) -> bool,
    ) -> Option<(Slot, u32)> {
        if self.nodes.capacity() == 0 {
            return None;
        }
        let mut nodes: Vec<NodeId> = self
            .live()
            .filter(|(s, _)| eligible(*s))
            .filter_map(|(_, r)| r.node)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let mut best: Option<(NodeId, u32)> = None;
        for node in nodes {
            let held = self.nodes.leading_blocks(node, prompt);
            if held > shared && best.is_none_or(|b| held > b.1) {
                best = Some((node, held));
            }
        }
        let (node, held) = best?;
        let slot = self
            .ring
            .candidates(key)
            .find(|&s| eligible(s) && self.replica(s).is_some_and(|r| r.node == Some(node)))?;
        Some((slot, held))
    }

    /// First replica on the ring from `key` that passes `eligible`. The load
    /// bound guarantees one exists among the candidates (while a ring build
    /// is pending, one of them may not be on the ring yet: then the first
    /// live ring member).
    fn ring_first(&self, key: u64, eligible: &impl Fn(Slot) -> bool) -> Slot {
        self.ring
            .candidates(key)
            .find(|s| eligible(*s))
            .or_else(|| {
                self.ring
                    .candidates(key)
                    .find(|s| self.replica(*s).is_some())
            })
            .or_else(|| self.live().map(|(s, _)| s).next())
            .unwrap_or(0)
    }

    fn least_loaded(&mut self, candidates: &[(Slot, u32)]) -> Slot {
        let min = candidates.iter().map(|c| c.1).min().unwrap_or(0);
        let tied: Vec<Slot> = candidates
            .iter()
            .filter(|c| c.1 == min)
            .map(|c| c.0)
            .collect();
        self.rr = self.rr.wrapping_add(1);
        tied.get(self.rr % tied.len().max(1)).copied().unwrap_or(0)
    }

    fn live(&self) -> impl Iterator<Item = (Slot, &Replica)> {
        self.replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i as Slot, r)))
    }

    fn replica(&self, slot: Slot) -> Option<&Replica> {
        self.replicas.get(slot as usize).and_then(Option::as_ref)
    }

    fn replica_mut_opt(&mut self, slot: Slot) -> Option<&mut Replica> {
        self.replicas
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
    }

    fn replica_mut(&mut self, slot: Slot) -> &mut Replica {
        // Invariant: `pick` only returns slots taken from live candidates.
        self.replicas[slot as usize]
            .as_mut()
            .expect("picked slot is a live replica")
    }
}

/// `ceil(c · (total + 1) / n)`: a replica with fewer requests in flight than
/// this may take one more (Mirrokni–Thorup–Zadimoghaddam). Some replica is
/// always below it, since the mean load is at most `total / n`.
pub fn load_bound(load_factor: f64, total: f64, replicas: usize) -> u32 {
    let n = replicas.max(1) as f64;
    (load_factor.max(1.0) * (total + 1.0) / n).ceil() as u32
}
