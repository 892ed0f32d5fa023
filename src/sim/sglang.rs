//! Re-implementation of SGLang's router `cache_aware` policy (approximate radix tree over
//! request text, shortest-queue fallback under load imbalance) — labelled as such; this is
//! **not SGLang's code**. It is written from a reading of the original and exists only as a
//! baseline for kvmesh's offline benchmark.
//!
//! # Source followed
//!
//! Repository `sgl-project/sglang`, commit `1ea6b740a7c9f1e4f813e4f4e8b3084ac18044b8`
//! (2025-12-06, the last upstream commit before `sgl-router/` was renamed to
//! `sgl-model-gateway/` in #14312; read from a mirror that carries upstream history):
//!
//! * `sgl-router/src/policies/cache_aware.rs` — `CacheAwarePolicy::select_worker`;
//! * `sgl-router/src/policies/tree.rs` — the approximate radix `Tree` (`insert`,
//!   `prefix_match`, `get_smallest_tenant`, `evict_tenant_by_size`);
//! * `sgl-router/src/routers/http/router.rs` — `route_typed_request` (routing text is
//!   `extract_text_for_routing()`; a worker's load is incremented at dispatch and decremented
//!   at completion, only when the policy is `cache_aware`);
//! * `sgl-router/src/protocols/{chat,completion,generate}.rs` — `extract_text_for_routing`;
//! * `sgl-router/src/main.rs` and `bindings/python/sglang_router/router_args.py` — defaults.
//!
//! # The algorithm (as found in that source)
//!
//! * One radix tree is shared by all workers ("tenants"). Edge labels are compressed strings;
//!   a node's children are keyed by the first character of their label. Every node holds a
//!   map *tenant → last-access timestamp (ms)*; a tenant is on a node iff that worker was sent
//!   a request whose text runs through the node, so each tenant's node set is prefix-closed.
//!   The tree also keeps, per tenant, the number of **characters** (Unicode scalar values) on
//!   the nodes it holds. All workers are registered up front by inserting `""`, which puts
//!   them on the root with a count of 0.
//! * Per request, with `load` = the router's in-flight count per worker:
//!   * *imbalanced* iff `max_load - min_load > balance_abs_threshold` **and**
//!     `max_load > min_load * balance_rel_threshold` (both strict; the ratio test in `f32`).
//!     Then the worker with the smallest load (first one on ties) is chosen and the text is
//!     inserted under it.
//!   * otherwise `prefix_match` walks the shared tree as far as the text matches (a partially
//!     matched edge counts its matched characters) and returns the matched length plus one
//!     tenant of the last node reached (the first key of that node's hash map); it then
//!     refreshes that tenant's timestamps from that node up to the root — even if the request
//!     is not then sent there. `match_rate = matched_chars / text_chars` (0 for empty text).
//!     If `match_rate > cache_threshold` the matched tenant is chosen, otherwise the tenant
//!     with the fewest characters in the tree (`get_smallest_tenant`, not the least loaded).
//!     The text is inserted under the chosen worker (every node on its path gets the
//!     tenant and the current timestamp; new leaves and split nodes are counted).
//! * Every `eviction_interval_secs` a background thread calls
//!   `evict_tenant_by_size(max_tree_size)`: all (tenant, node) pairs where the node is a leaf
//!   *for that tenant* go into a min-heap by timestamp; popping in order, while the tenant's
//!   character count exceeds `max_tree_size` the tenant is removed from the node (count
//!   decremented by the node's label length), a node left with no tenants and no children is
//!   unlinked, and the parent is pushed if it became a leaf for the tenant. Nodes are not
//!   re-merged. (`max_tree_size` is documented as "nodes" but is compared with characters.)
//!
//! Defaults (deployed, i.e. the CLI / Python launcher defaults): `cache_threshold = 0.3`,
//! `balance_abs_threshold = 64`, `balance_rel_threshold = 1.5`, `eviction_interval = 120 s`,
//! `max_tree_size = 2^26 = 67_108_864` characters per tenant. (The in-crate
//! `CacheAwareConfig::default()` — 0.5 / 32 / 1.1 / 30 s / 10_000 — is only a fallback and
//! not what `sglang_router` runs with.)
//!
//! Routing text (regular HTTP mode): for chat, each message in order contributes — `system`,
//! `user`, `tool`: its content (a string, or the `text` parts joined by `" "`), even if
//! empty; `assistant`: `format!("{content} {reasoning_content}").trim()`, skipped if both are
//! empty; `function`: its content — and the pieces are joined with `" "`. Completions: the
//! prompt (an array of prompts joined by `" "`). `/generate`: `text`, else `input_ids`
//! rendered as decimal numbers joined by `" "`.
//!
//! # Deliberate simplifications / deviations
//!
//! 1. One model, hence one tree (the source keeps one tree per model id).
//! 2. Workers are indices `0..workers`, all healthy and registered at construction; no
//!    circuit breakers, no worker add/removal, so the source's stale-tenant removal and
//!    "first healthy worker" / random fall-backs never arise (an impossible "no tenant"
//!    outcome falls back to worker 0 without inserting, as the source does).
//! 3. Time is virtual: `now_secs` is converted to whole milliseconds like the source's
//!    `SystemTime` stamps; equal-millisecond ties, which the source's `BinaryHeap` breaks
//!    arbitrarily, are broken by access order (a logical sequence number), then by tenant
//!    and node id.
//! 4. The eviction thread becomes lazy periodic eviction: the clock starts at the first
//!    `pick`, and the first `pick` at or after each interval boundary evicts before routing.
//!    This is equivalent because eviction depends only on tree state, which changes only in
//!    `pick`; several elapsed boundaries collapse into one eviction (which is idempotent).
//!    `eviction_interval_secs <= 0` (or non-finite) disables eviction, as `0` does in the
//!    source.
//! 5. Hash-map iteration order made deterministic: `prefix_match`'s "first key of the
//!    node's `DashMap`" is a fixed, per-node pseudo-random order (xxh3 of the tenant seeded
//!    per node; a split's new node inherits the seed, as `DashMap::clone` keeps the hasher);
//!    `get_smallest_tenant`'s tie between equal counts takes the lowest index (the source's
//!    one global map gives a fixed but arbitrary order, i.e. the same up to relabelling).
//! 6. Load is the `in_flight` slice passed in (missing entries count as 0).
//! 7. Labels are stored as UTF-8 bytes; matching is cut back to character boundaries and
//!    every count is in characters, so results equal the source's `chars()`-based code.
//! 8. `prefix_match` refreshes the chosen tenant's timestamp only on nodes that hold it (the
//!    source inserts unconditionally, which is the same since tenant sets are prefix-closed).
//! 9. `routing_text` reads a `serde_json::Value` leniently where the source deserializes a
//!    typed request and rejects malformed bodies: a missing/null/non-text content counts as
//!    `""`, unknown roles are skipped, and the `developer` role (rejected at this commit) is
//!    treated like `system`, as later `sgl-model-gateway` versions do.
//! 10. Not modelled: metrics, processed counters, PD (prefill/decode) mode (whose chat
//!     routing text is the first message only), and later `sgl-model-gateway` changes (e.g.
//!     its low-match branch picks the least-loaded worker instead of the smallest tree).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Configuration of the re-implemented policy (names follow `sglang_router`'s options).
#[derive(Debug, Clone)]
pub struct SglangConfig {
    /// Minimum prefix match rate (exclusive) for routing to the best-matching worker.
    pub cache_threshold: f64,
    /// Load spread (exclusive) above which the system may be imbalanced.
    pub balance_abs_threshold: usize,
    /// Load ratio (exclusive) above which the system may be imbalanced.
    pub balance_rel_threshold: f64,
    /// Per-worker character budget enforced by LRU eviction.
    pub max_tree_size: usize,
    /// Period of the eviction pass in (virtual) seconds; `<= 0` disables eviction.
    pub eviction_interval_secs: f64,
}

impl Default for SglangConfig {
    /// `sglang_router`'s deployed defaults (CLI and Python launcher).
    fn default() -> Self {
        Self {
            cache_threshold: 0.3,
            balance_abs_threshold: 64,
            balance_rel_threshold: 1.5,
            max_tree_size: 1 << 26,
            eviction_interval_secs: 120.0,
        }
    }
}

/// Re-implementation of SGLang's `cache_aware` routing policy over `workers` workers.
pub struct SglangCacheAware {
    cfg: SglangConfig,
    workers: usize,
    tree: Tree,
    next_eviction_secs: Option<f64>,
}

impl fmt::Debug for SglangCacheAware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SglangCacheAware")
            .field("cfg", &self.cfg)
            .field("workers", &self.workers)
            .field("tenant_chars", &self.tree.tenant_chars)
            .field("live_nodes", &self.tree.live_nodes())
            .field("next_eviction_secs", &self.next_eviction_secs)
            .finish()
    }
}

impl SglangCacheAware {
    /// A policy over `workers` workers (at least one), all registered with empty trees.
    pub fn new(workers: usize, cfg: SglangConfig) -> Self {
        let workers = workers.max(1);
        Self {
            cfg,
            workers,
            tree: Tree::new(workers),
            next_eviction_secs: None,
        }
    }

    /// Chooses a worker for a request whose routing text is `text`, given each worker's
    /// current in-flight count; records the text in the chosen worker's tree. `now_secs` is
    /// virtual time (for LRU timestamps / periodic eviction).
    pub fn pick(&mut self, text: &str, in_flight: &[usize], now_secs: f64) -> usize {
        self.maybe_evict(now_secs);
        let now_ms = millis(now_secs);

        let load = |i: usize| in_flight.get(i).copied().unwrap_or(0);
        let (min_load, max_load) = (0..self.workers).fold((usize::MAX, 0), |(lo, hi), i| {
            (lo.min(load(i)), hi.max(load(i)))
        });
        let min_load = if min_load == usize::MAX { 0 } else { min_load };

        // The source compares in f32; keep its rounding.
        let imbalanced = max_load.saturating_sub(min_load) > self.cfg.balance_abs_threshold
            && (max_load as f32) > (min_load as f32) * (self.cfg.balance_rel_threshold as f32);

        if imbalanced {
            // `min_by_key` returns the first minimum, as in the source.
            let idx = (0..self.workers).min_by_key(|&i| load(i)).unwrap_or(0);
            self.tree.insert(text, idx, now_ms);
            return idx;
        }

        let (matched_chars, matched_tenant) = self.tree.prefix_match(text, now_ms);
        let match_rate = if text.is_empty() {
            0.0f32
        } else {
            matched_chars as f32 / text.chars().count() as f32
        };
        let selected = if match_rate > self.cfg.cache_threshold as f32 {
            matched_tenant
        } else {
            self.tree.smallest_tenant()
        };
        match selected {
            Some(idx) if idx < self.workers => {
                self.tree.insert(text, idx, now_ms);
                idx
            }
            // Unreachable with every worker registered; the source falls back to the first
            // healthy worker without touching the tree.
            _ => 0,
        }
    }

    fn maybe_evict(&mut self, now_secs: f64) {
        let interval = self.cfg.eviction_interval_secs;
        if !(interval.is_finite() && interval > 0.0 && now_secs.is_finite()) {
            return;
        }
        match self.next_eviction_secs {
            None => self.next_eviction_secs = Some(now_secs + interval),
            Some(due) if now_secs >= due => {
                self.tree.evict(self.cfg.max_tree_size);
                let periods = ((now_secs - due) / interval).floor() + 1.0;
                self.next_eviction_secs = Some(due + periods * interval);
            }
            Some(_) => {}
        }
    }
}

/// The routing text SGLang's router would use for an OpenAI chat/completions JSON body:
/// for chat, the message contents concatenated with `" "` (not the serialized messages).
/// Returns "" if none.
///
/// Chat bodies (`messages`) follow `ChatCompletionRequest::extract_text_for_routing`;
/// completions bodies (`prompt`) and SGLang `/generate` bodies (`text`, `input_ids`) follow
/// their own `extract_text_for_routing`. See the module docs for the exact rules.
pub fn routing_text(body: &Value) -> String {
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        return chat_routing_text(messages);
    }
    if let Some(prompt) = body.get("prompt") {
        return match prompt {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<&str>>>()
                .map(|v| v.join(" "))
                .unwrap_or_default(),
            _ => String::new(),
        };
    }
    if let Some(text) = body.get("text").and_then(Value::as_str) {
        return text.to_owned();
    }
    if let Some(ids) = body.get("input_ids").and_then(Value::as_array) {
        let mut out: Vec<String> = Vec::new();
        for id in ids {
            match id {
                Value::Array(batch) => out.extend(batch.iter().map(number_text)),
                other => out.push(number_text(other)),
            }
        }
        return out.join(" ");
    }
    String::new()
}

fn number_text(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

fn chat_routing_text(messages: &[Value]) -> String {
    let mut pieces: Vec<String> = Vec::with_capacity(messages.len());
    for msg in messages {
        match msg.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "user" | "tool" | "developer" => {
                pieces.push(content_simple_string(msg.get("content")));
            }
            "assistant" => {
                let main = content_simple_string(msg.get("content"));
                let reasoning = msg
                    .get("reasoning_content")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !(main.is_empty() && reasoning.is_empty()) {
                    pieces.push(format!("{main} {reasoning}").trim().to_owned());
                }
            }
            "function" => pieces.push(
                msg.get("content")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ),
            _ => {}
        }
    }
    pieces.join(" ")
}

/// `MessageContent::to_simple_string`: a string as is, or the `text` parts joined by `" "`.
fn content_simple_string(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<&str>>()
            .join(" "),
        _ => String::new(),
    }
}

fn millis(now_secs: f64) -> u64 {
    if now_secs.is_finite() && now_secs > 0.0 {
        // `as` saturates for out-of-range values.
        (now_secs * 1000.0) as u64
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------
// The shared multi-tenant approximate radix tree.
// ---------------------------------------------------------------------------------------

/// A last-access time: milliseconds as in the source, then access order to break ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp {
    ms: u64,
    seq: u64,
}

const ROOT: usize = 0;

#[derive(Debug, Clone)]
struct Node {
    /// Edge label (UTF-8); empty only for the root and for freed slots.
    label: String,
    /// `label.chars().count()`.
    label_chars: usize,
    parent: Option<usize>,
    /// Children keyed by the first character of their label, sorted by that character.
    children: Vec<(char, usize)>,
    /// Tenants holding this node with their last-access stamps (few; order irrelevant).
    tenants: Vec<(usize, Stamp)>,
    /// Stands in for the node's hash-map hasher: fixes the "first key" order.
    seed: u64,
    alive: bool,
}

impl Node {
    fn has(&self, tenant: usize) -> bool {
        self.tenants.iter().any(|&(t, _)| t == tenant)
    }
}

#[derive(Debug, Clone)]
struct Tree {
    nodes: Vec<Node>,
    free: Vec<usize>,
    /// Characters held per tenant (`tenant_char_count`).
    tenant_chars: Vec<usize>,
    seq: u64,
    seeds: u64,
}

impl Tree {
    /// A tree with `workers` tenants registered on the root (as `init_workers` inserting `""`).
    fn new(workers: usize) -> Self {
        let mut tree = Tree {
            nodes: Vec::new(),
            free: Vec::new(),
            tenant_chars: vec![0; workers],
            seq: 0,
            seeds: 0,
        };
        let seed = tree.fresh_seed();
        tree.nodes.push(Node {
            label: String::new(),
            label_chars: 0,
            parent: None,
            children: Vec::new(),
            tenants: Vec::new(),
            seed,
            alive: true,
        });
        for tenant in 0..workers {
            tree.insert("", tenant, 0);
        }
        tree
    }

    fn fresh_seed(&mut self) -> u64 {
        self.seeds += 1;
        xxh3_64_with_seed(&self.seeds.to_le_bytes(), 0x5eed_5617_a9c0_ffee)
    }

    fn stamp(&mut self, ms: u64) -> Stamp {
        self.seq += 1;
        Stamp { ms, seq: self.seq }
    }

    fn live_nodes(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    fn find_child(&self, node: usize, c: char) -> Option<usize> {
        let children = &self.nodes[node].children;
        children
            .binary_search_by_key(&c, |&(k, _)| k)
            .ok()
            .map(|i| children[i].1)
    }

    fn set_child(&mut self, node: usize, c: char, child: usize) {
        let children = &mut self.nodes[node].children;
        match children.binary_search_by_key(&c, |&(k, _)| k) {
            Ok(i) => children[i].1 = child,
            Err(i) => children.insert(i, (c, child)),
        }
    }

    fn alloc(&mut self, node: Node) -> usize {
        if let Some(id) = self.free.pop() {
            self.nodes[id] = node;
            id
        } else {
            self.nodes.push(node);
            self.nodes.len() - 1
        }
    }

    /// Puts `tenant` on `node` with `stamp`, counting the label if the tenant is new there.
    fn attach(&mut self, node: usize, tenant: usize, stamp: Stamp) {
        let n = &mut self.nodes[node];
        if let Some(entry) = n.tenants.iter_mut().find(|e| e.0 == tenant) {
            entry.1 = stamp;
        } else {
            n.tenants.push((tenant, stamp));
            if let Some(count) = self.tenant_chars.get_mut(tenant) {
                *count += n.label_chars;
            }
        }
    }

    /// `Tree::insert`: records `text` under `tenant`.
    fn insert(&mut self, text: &str, tenant: usize, now_ms: u64) {
        let stamp = self.stamp(now_ms);
        self.attach(ROOT, tenant, stamp);
        let mut cur = ROOT;
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match self.find_child(cur, c) {
                None => {
                    let seed = self.fresh_seed();
                    let leaf = self.alloc(Node {
                        label: rest.to_owned(),
                        label_chars: rest.chars().count(),
                        parent: Some(cur),
                        children: Vec::new(),
                        tenants: Vec::new(),
                        seed,
                        alive: true,
                    });
                    self.set_child(cur, c, leaf);
                    self.attach(leaf, tenant, stamp);
                    return;
                }
                Some(child) => {
                    let shared = shared_prefix_bytes(&self.nodes[child].label, rest);
                    if shared == 0 {
                        // Cannot happen (the first character matched); never loop forever.
                        return;
                    }
                    let next = if shared < self.nodes[child].label.len() {
                        self.split(child, shared)
                    } else {
                        child
                    };
                    self.attach(next, tenant, stamp);
                    cur = next;
                    rest = rest.get(shared..).unwrap_or("");
                }
            }
        }
    }

    /// Splits `child`'s label at byte `at` (a character boundary, `0 < at < len`): a new
    /// node carrying the prefix and a copy of `child`'s tenants takes `child`'s place.
    fn split(&mut self, child: usize, at: usize) -> usize {
        let suffix = self.nodes[child].label.split_off(at);
        let prefix = std::mem::replace(&mut self.nodes[child].label, suffix);
        let prefix_chars = prefix.chars().count();
        let (Some(first), Some(suffix_first)) = (
            prefix.chars().next(),
            self.nodes[child].label.chars().next(),
        ) else {
            // Unreachable for 0 < at < len; undo to keep the tree intact.
            let suffix = std::mem::take(&mut self.nodes[child].label);
            self.nodes[child].label = prefix + &suffix;
            return child;
        };
        let parent = self.nodes[child].parent;
        let mid = self.alloc(Node {
            label: prefix,
            label_chars: prefix_chars,
            parent,
            children: vec![(suffix_first, child)],
            tenants: self.nodes[child].tenants.clone(),
            seed: self.nodes[child].seed,
            alive: true,
        });
        let c = &mut self.nodes[child];
        c.label_chars -= prefix_chars;
        c.parent = Some(mid);
        if let Some(p) = parent {
            self.set_child(p, first, mid);
        }
        mid
    }

    /// `Tree::prefix_match`: characters of `text` matched by the whole tree, and one tenant
    /// of the last node reached (whose timestamps up to the root are refreshed).
    fn prefix_match(&mut self, text: &str, now_ms: u64) -> (usize, Option<usize>) {
        let mut cur = ROOT;
        let mut rest = text;
        let mut matched_bytes = 0;
        while let Some(c) = rest.chars().next() {
            let Some(child) = self.find_child(cur, c) else {
                break;
            };
            let shared = shared_prefix_bytes(&self.nodes[child].label, rest);
            matched_bytes += shared;
            cur = child;
            if shared == 0 || shared < self.nodes[child].label.len() {
                break;
            }
            rest = rest.get(shared..).unwrap_or("");
        }
        let matched_chars = text.get(..matched_bytes).map_or(0, |s| s.chars().count());

        let tenant = self.first_tenant(cur);
        if let Some(t) = tenant {
            let stamp = self.stamp(now_ms);
            let mut node = Some(cur);
            while let Some(n) = node {
                if let Some(entry) = self.nodes[n].tenants.iter_mut().find(|e| e.0 == t) {
                    entry.1 = stamp;
                }
                node = self.nodes[n].parent;
            }
        }
        (matched_chars, tenant)
    }

    /// The "first key" of `node`'s tenant map: a fixed pseudo-random order per node.
    fn first_tenant(&self, node: usize) -> Option<usize> {
        let n = &self.nodes[node];
        n.tenants
            .iter()
            .map(|&(t, _)| (xxh3_64_with_seed(&(t as u64).to_le_bytes(), n.seed), t))
            .min()
            .map(|(_, t)| t)
    }

    /// `get_smallest_tenant`: fewest characters, lowest index on ties.
    fn smallest_tenant(&self) -> Option<usize> {
        self.tenant_chars
            .iter()
            .enumerate()
            .min_by_key(|&(i, &count)| (count, i))
            .map(|(i, _)| i)
    }

    fn is_leaf_for(&self, node: usize, tenant: usize) -> bool {
        self.nodes[node].has(tenant)
            && self.nodes[node]
                .children
                .iter()
                .all(|&(_, ch)| !self.nodes[ch].has(tenant))
    }

    /// `evict_tenant_by_size`: LRU-evicts each tenant's leaves until it holds at most
    /// `max_size` characters.
    fn evict(&mut self, max_size: usize) {
        let mut heap: BinaryHeap<Reverse<(Stamp, usize, usize)>> = BinaryHeap::new();
        for (id, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            for &(t, stamp) in &node.tenants {
                if node.children.iter().all(|&(_, ch)| !self.nodes[ch].has(t)) {
                    heap.push(Reverse((stamp, t, id)));
                }
            }
        }

        while let Some(Reverse((_, tenant, node))) = heap.pop() {
            if self.tenant_chars.get(tenant).is_none_or(|&c| c <= max_size) {
                continue;
            }
            if !self.nodes[node].alive || !self.nodes[node].has(tenant) {
                continue;
            }
            let label_chars = self.nodes[node].label_chars;
            if let Some(count) = self.tenant_chars.get_mut(tenant) {
                *count = count.saturating_sub(label_chars);
            }
            self.nodes[node].tenants.retain(|e| e.0 != tenant);

            let parent = self.nodes[node].parent;
            if let Some(p) = parent {
                if self.nodes[node].children.is_empty() && self.nodes[node].tenants.is_empty() {
                    if let Some(first) = self.nodes[node].label.chars().next() {
                        self.nodes[p].children.retain(|&(k, _)| k != first);
                    }
                    self.free_node(node);
                }
                if self.is_leaf_for(p, tenant)
                    && let Some(&(_, stamp)) = self.nodes[p].tenants.iter().find(|e| e.0 == tenant)
                {
                    heap.push(Reverse((stamp, tenant, p)));
                }
            }
        }
    }

    fn free_node(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.alive = false;
        n.label = String::new();
        n.label_chars = 0;
        n.children = Vec::new();
        n.tenants = Vec::new();
        n.parent = None;
        self.free.push(node);
    }
}

/// Length in bytes of the longest common prefix of `a` and `b` that ends on a character
/// boundary of both (so the matched part is a whole number of characters).
fn shared_prefix_bytes(a: &str, b: &str) -> usize {
    const CHUNK: usize = 32;
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let max = ab.len().min(bb.len());
    let mut i = 0;
    while i + CHUNK <= max && ab[i..i + CHUNK] == bb[i..i + CHUNK] {
        i += CHUNK;
    }
    while i < max && ab[i] == bb[i] {
        i += 1;
    }
    while i > 0 && !(a.is_char_boundary(i) && b.is_char_boundary(i)) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests;
