//! One simulated inference engine: a vLLM-style scheduler (continuous
//! batching, chunked prefill, a per-step token budget) over a prefix cache,
//! with a step-time latency model. Pure: time is passed in, in seconds.
//!
//! # Latency model (defaults: an 8B model in bf16 on one H100)
//!
//! Each scheduler step takes `step_s + prefill_token_s · prefill tokens +
//! decode_seq_s · decoding sequences`:
//! - `step_s` = 8 ms: one forward pass must read all 16 GB of weights from
//!   HBM (3.35 TB/s → ~4.8 ms) plus scheduling and sampling overhead; vLLM
//!   reports 8–12 ms inter-token latency for 8B models on H100 at small batch.
//! - `prefill_token_s` = 35 µs: 2 · 8e9 FLOPs per token at ~45% of the
//!   H100's 989 dense bf16 TFLOPS ≈ 28k tokens/s.
//! - `decode_seq_s` = 40 µs per sequence in the batch (its KV reads and sampling).
//! - `max_batched_tokens` = 8192 tokens per step, `max_num_seqs` = 256
//!   (vLLM's defaults with chunked prefill).
//! - `cache_tokens` = 400,000: ~60 GB of HBM left for KV after weights, at
//!   128 KiB per token for Llama-3-8B (32 layers × 8 KV heads × 128 dims × 2 × bf16).
//!
//! A request's time to first token is thus its wait in the queue plus the
//! steps that prefill its *uncached* tokens: the prefix cache is what makes
//! TTFT short.

use std::collections::VecDeque;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use super::cache::{PrefixCache, SharedNodeStore, block_keys};
use super::tokenizer::{text_of_tokens, tokenize};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per cache block (vLLM: 16).
    pub block_tokens: usize,
    /// KV cache capacity in tokens.
    pub cache_tokens: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Token budget of one step (prefill chunks + one per decoding sequence).
    pub max_batched_tokens: usize,
    /// Fixed time of a step, seconds.
    pub step_s: f64,
    /// Time per prefilled token, seconds.
    pub prefill_token_s: f64,
    /// Time per decoding sequence in a step, seconds.
    pub decode_seq_s: f64,
    /// Time to load one token's KV from the node cache, seconds.
    pub node_load_token_s: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_tokens: 16,
            cache_tokens: 400_000,
            max_num_seqs: 256,
            max_batched_tokens: 8192,
            step_s: 0.008,
            prefill_token_s: 0.000_035,
            decode_seq_s: 0.000_040,
            // 128 KiB per token over ~32 GB/s of host-to-device bandwidth.
            node_load_token_s: 0.000_004,
        }
    }
}

/// A request as the engine schedules it.
#[derive(Debug, Clone)]
pub struct SeqRequest {
    /// Caller's id, echoed in events.
    pub id: u64,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokens to generate.
    pub max_tokens: usize,
    /// Keys of the full blocks of prompt + output tokens.
    pub keys: Arc<[u64]>,
}

/// The reply a simulated engine generates for a prompt: deterministic
/// stand-in text of `max_tokens` tokens, seeded by the prompt.
pub fn reply_text(prompt_tokens: &[u32], max_tokens: usize) -> String {
    let mut bytes = Vec::with_capacity(prompt_tokens.len() * 4);
    for t in prompt_tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    text_of_tokens(xxh3_64(&bytes), max_tokens)
}

/// Builds the engine's view of a prompt: block keys of prompt + reply.
pub fn prepare(
    id: u64,
    model: &str,
    prompt: &[u32],
    max_tokens: usize,
    block_tokens: usize,
) -> (SeqRequest, String) {
    let reply = reply_text(prompt, max_tokens);
    let mut all = prompt.to_vec();
    all.extend(tokenize(&reply));
    let keys = block_keys(model, &all, block_tokens);
    (
        SeqRequest {
            id,
            prompt_tokens: prompt.len(),
            max_tokens,
            keys: keys.into(),
        },
        reply,
    )
}

/// What happened to a request during a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Prefill finished and the first token came out.
    FirstToken {
        id: u64,
        /// Prompt tokens found in the prefix cache.
        cached_tokens: usize,
        /// Prompt tokens.
        prompt_tokens: usize,
    },
    /// Another token came out (the `n`-th, counting from 1).
    Token { id: u64, n: usize },
    /// The request is done.
    Finished { id: u64 },
}

#[derive(Debug)]
struct Seq {
    req: SeqRequest,
    arrival: f64,
    cached_blocks: usize,
    prefilled: usize,
    generated: usize,
    pinned: Vec<u64>,
    private: usize,
}

impl Seq {
    fn prefill_done(&self) -> bool {
        self.prefilled >= self.req.prompt_tokens
    }
}

/// Counters and gauges, named after vLLM's metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_cache_usage: f64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: u64,
    /// Of those, tokens found.
    pub prefix_cache_hits: u64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: u64,
    /// Prompt tokens actually computed (not cached).
    pub prefill_tokens: u64,
    /// Prompt tokens loaded from the node cache instead of computed.
    pub node_hit_tokens: u64,
    /// Tokens generated.
    pub generation_tokens: u64,
    /// Requests finished.
    pub finished: u64,
}

/// One engine.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    cache: PrefixCache,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    /// The planned step: (index into `running`, prefill chunk; 0 = decode).
    batch: Vec<(usize, usize)>,
    stats: EngineStats,
    /// The node's cache, if the engine offloads to one.
    node: Option<SharedNodeStore>,
}

impl Engine {
    /// An idle engine with an empty cache.
    pub fn new(cfg: EngineConfig) -> Self {
        let blocks = cfg.cache_tokens / cfg.block_tokens.max(1);
        Self {
            cache: PrefixCache::new(blocks),
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            batch: Vec::new(),
            stats: EngineStats::default(),
            node: None,
        }
    }

    /// An engine that offloads evicted blocks to `node` and loads prefixes
    /// from it on a cache miss (vLLM with LMCache's remote backend).
    pub fn with_node_store(cfg: EngineConfig, node: SharedNodeStore) -> Self {
        Self {
            node: Some(node),
            ..Self::new(cfg)
        }
    }

    /// Settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Queues a request that arrived at `now`. A request that could never
    /// fit in the cache is refused (false), as vLLM refuses prompts longer
    /// than its capacity.
    pub fn submit(&mut self, req: SeqRequest, now: f64) -> bool {
        let blocks = (req.prompt_tokens + req.max_tokens).div_ceil(self.cfg.block_tokens);
        if blocks > self.cache.capacity() || req.prompt_tokens == 0 {
            return false;
        }
        self.waiting.push_back(Seq {
            req,
            arrival: now,
            cached_blocks: 0,
            prefilled: 0,
            generated: 0,
            pinned: Vec::new(),
            private: 0,
        });
        true
    }

    /// True when nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Counters and gauges now.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_cache_usage: self.cache.usage(),
            ..self.stats.clone()
        }
    }

    /// Arrival time of a queued or running request.
    pub fn arrival_of(&self, id: u64) -> Option<f64> {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .find(|s| s.req.id == id)
            .map(|s| s.arrival)
    }

    /// Plans the next step: admits waiting requests that fit and picks what
    /// each running request does. Returns the step's duration, or None when
    /// there is nothing to do.
    pub fn plan(&mut self) -> Option<f64> {
        self.batch.clear();
        let mut budget = self.cfg.max_batched_tokens;
        let (mut prefill, mut decode, mut loaded_tokens) = (0usize, 0usize, 0usize);
        for (i, s) in self.running.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if s.prefill_done() {
                self.batch.push((i, 0));
                budget -= 1;
                decode += 1;
            } else {
                let chunk = (s.req.prompt_tokens - s.prefilled).min(budget);
                self.batch.push((i, chunk));
                budget -= chunk;
                prefill += chunk;
            }
        }
        while budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(front) = self.waiting.front() else {
                break;
            };
            let bt = self.cfg.block_tokens;
            let prompt_blocks = front.req.prompt_tokens / bt;
            // The last prompt token is always computed (vLLM), so a fully
            // cached prompt still reuses at most (tokens - 1) / block.
            let reusable = ((front.req.prompt_tokens - 1) / bt).min(prompt_blocks);
            let cached = self
                .cache
                .cached_prefix(&front.req.keys[..reusable.min(front.req.keys.len())]);
            let total = (front.req.prompt_tokens + front.req.max_tokens).div_ceil(bt);
            let extra = total - cached;
            if !self.cache.admit(&front.req.keys[..cached], extra) {
                break;
            }
            // Blocks past the GPU hit that the node cache holds load from there.
            let loaded = match &self.node {
                Some(node) => node
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .leading(&front.req.keys[cached..reusable.min(front.req.keys.len())]),
                None => 0,
            };
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            s.cached_blocks = cached;
            s.prefilled = (cached + loaded) * bt;
            loaded_tokens += loaded * bt;
            self.stats.node_hit_tokens += (loaded * bt) as u64;
            s.pinned = front_keys(&s.req.keys, cached);
            s.private = extra;
            let cached_tokens = (cached * bt) as u64;
            self.stats.prefix_cache_queries += s.req.prompt_tokens as u64;
            self.stats.prefix_cache_hits += cached_tokens;
            self.stats.prompt_tokens += s.req.prompt_tokens as u64;
            self.stats.prefill_tokens +=
                s.req.prompt_tokens as u64 - cached_tokens - (loaded * bt) as u64;
            let chunk = (s.req.prompt_tokens - s.prefilled).min(budget);
            budget -= chunk;
            prefill += chunk;
            self.running.push(s);
            self.batch.push((self.running.len() - 1, chunk));
        }
        let evicted = self.cache.take_evicted();
        if let Some(node) = &self.node
            && !evicted.is_empty()
        {
            node.lock().unwrap_or_else(|e| e.into_inner()).put(&evicted);
        }
        if self.batch.is_empty() {
            return None;
        }
        Some(
            self.cfg.step_s
                + self.cfg.prefill_token_s * prefill as f64
                + self.cfg.decode_seq_s * decode as f64
                + self.cfg.node_load_token_s * loaded_tokens as f64,
        )
    }

    /// Completes the planned step: prefill progress, tokens out, requests
    /// done and their blocks left in the cache.
    pub fn complete(&mut self) -> Vec<Event> {
        let bt = self.cfg.block_tokens;
        let mut events = Vec::new();
        for &(i, chunk) in &self.batch {
            let s = &mut self.running[i];
            if chunk == 0 && s.prefill_done() {
                s.generated += 1;
                events.push(Event::Token {
                    id: s.req.id,
                    n: s.generated,
                });
            } else {
                s.prefilled += chunk;
                if s.prefill_done() {
                    // Full prompt blocks become shareable as soon as computed.
                    let prompt_blocks = (s.req.prompt_tokens / bt).min(s.req.keys.len());
                    let fresh = &s.req.keys[s.cached_blocks..prompt_blocks];
                    self.cache.publish(fresh);
                    s.pinned.extend_from_slice(fresh);
                    s.private -= fresh.len();
                    s.generated = 1;
                    events.push(Event::FirstToken {
                        id: s.req.id,
                        cached_tokens: s.cached_blocks * bt,
                        prompt_tokens: s.req.prompt_tokens,
                    });
                }
            }
            if s.prefill_done() && s.generated >= s.req.max_tokens {
                // Output blocks are cached too: the next chat turn carries them.
                let prompt_blocks = (s.req.prompt_tokens / bt).min(s.req.keys.len());
                let out = &s.req.keys[prompt_blocks..];
                self.cache.publish(out);
                s.pinned.extend_from_slice(out);
                s.private -= out.len();
                events.push(Event::Finished { id: s.req.id });
            }
        }
        self.batch.clear();
        let cache = &mut self.cache;
        let stats = &mut self.stats;
        self.running.retain(|s| {
            let done = s.prefill_done() && s.generated >= s.req.max_tokens;
            if done {
                cache.release(&s.pinned, s.private);
                stats.generation_tokens += s.generated as u64;
                stats.finished += 1;
            }
            !done
        });
        events
    }

    /// Drops every unused cached block (vLLM's `/reset_prefix_cache`).
    pub fn reset_cache(&mut self) {
        self.cache.reset();
    }
}

fn front_keys(keys: &[u64], n: usize) -> Vec<u64> {
    keys[..n].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EngineConfig {
        EngineConfig {
            cache_tokens: 16 * 64,
            max_batched_tokens: 256,
            ..EngineConfig::default()
        }
    }

    fn req(id: u64, prompt: &[u32], max_tokens: usize) -> SeqRequest {
        prepare(id, "m", prompt, max_tokens, 16).0
    }

    /// Runs until idle; returns (time, events) per step.
    fn run(e: &mut Engine, mut t: f64) -> Vec<(f64, Event)> {
        let mut out = Vec::new();
        while let Some(d) = e.plan() {
            t += d;
            out.extend(e.complete().into_iter().map(|ev| (t, ev)));
        }
        out
    }

    #[test]
    fn prefill_time_is_step_plus_per_token_cost_and_decode_is_per_step() {
        let mut e = Engine::new(cfg());
        let prompt: Vec<u32> = (0..100).collect();
        assert!(e.submit(req(1, &prompt, 3), 0.0));
        let ev = run(&mut e, 0.0);
        let c = cfg();
        let first = c.step_s + 100.0 * c.prefill_token_s;
        assert!(
            matches!(ev[0], (t, Event::FirstToken { id: 1, cached_tokens: 0, prompt_tokens: 100 }) if (t - first).abs() < 1e-12)
        );
        let second = first + c.step_s + c.decode_seq_s;
        assert!(matches!(ev[1], (t, Event::Token { id: 1, n: 2 }) if (t - second).abs() < 1e-12));
        assert!(matches!(ev.last(), Some((_, Event::Finished { id: 1 }))));
    }

    #[test]
    fn a_repeated_prompt_reuses_its_full_leading_blocks() {
        let mut e = Engine::new(cfg());
        let prompt: Vec<u32> = (0..100).collect();
        e.submit(req(1, &prompt, 2), 0.0);
        run(&mut e, 0.0);
        e.submit(req(2, &prompt, 2), 1.0);
        let ev = run(&mut e, 1.0);
        assert!(
            matches!(
                ev[0].1,
                Event::FirstToken {
                    cached_tokens: 96,
                    ..
                }
            ),
            "{ev:?}"
        );
        let s = e.stats();
        assert_eq!((s.prefix_cache_queries, s.prefix_cache_hits), (200, 96));
        assert_eq!(s.prefill_tokens, 104);
    }

    #[test]
    fn a_fully_cached_prompt_still_computes_its_last_token() {
        let mut e = Engine::new(cfg());
        let prompt: Vec<u32> = (0..64).collect();
        e.submit(req(1, &prompt, 1), 0.0);
        run(&mut e, 0.0);
        e.submit(req(2, &prompt, 1), 1.0);
        let ev = run(&mut e, 1.0);
        assert!(matches!(
            ev[0].1,
            Event::FirstToken {
                cached_tokens: 48,
                ..
            }
        ));
    }

    #[test]
    fn the_next_chat_turn_hits_the_previous_turns_prompt_and_reply() {
        let mut e = Engine::new(cfg());
        let turn1 = tokenize("<|user|>\nhello there<|end|>\n<|assistant|>\n");
        let (r1, reply) = prepare(1, "m", &turn1, 40, 16);
        e.submit(r1, 0.0);
        run(&mut e, 0.0);
        let mut turn2 = turn1.clone();
        turn2.extend(tokenize(&format!(
            "{reply}<|end|>\n<|user|>\nand more<|end|>\n<|assistant|>\n"
        )));
        e.submit(req(2, &turn2, 4), 5.0);
        let ev = run(&mut e, 5.0);
        let full = (turn1.len() + 40) / 16 * 16;
        assert!(
            matches!(ev[0].1, Event::FirstToken { cached_tokens, .. } if cached_tokens == full),
            "{ev:?}"
        );
    }

    #[test]
    fn a_queue_forms_when_the_token_budget_is_spent() {
        let mut e = Engine::new(EngineConfig {
            cache_tokens: 100_000,
            ..cfg()
        });
        for id in 0..4 {
            let prompt: Vec<u32> = (id * 1000..id * 1000 + 200).collect();
            e.submit(req(id as u64, &prompt, 1), 0.0);
        }
        let ev = run(&mut e, 0.0);
        let firsts: Vec<f64> = ev
            .iter()
            .filter(|(_, e)| matches!(e, Event::FirstToken { .. }))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(firsts.len(), 4);
        assert!(
            firsts.windows(2).all(|w| w[1] > w[0]),
            "budget 256 serves 200-token prompts one after another: {firsts:?}"
        );
    }

    #[test]
    fn requests_wait_for_cache_room_and_lru_blocks_make_way() {
        // 64 blocks: a 40-block request leaves room for no second one.
        let mut e = Engine::new(EngineConfig {
            max_batched_tokens: 4096,
            ..cfg()
        });
        let a: Vec<u32> = (0..600).collect();
        let b: Vec<u32> = (10_000..10_600).collect();
        e.submit(req(1, &a, 40), 0.0);
        e.submit(req(2, &b, 40), 0.0);
        e.plan();
        assert_eq!(e.stats().running, 1);
        assert_eq!(e.stats().waiting, 1);
        let ev = run(&mut e, 0.0);
        assert!(ev.iter().any(|(_, e)| *e == Event::Finished { id: 2 }));
        // b evicted a's blocks: a is a miss again.
        e.submit(req(3, &a, 1), 10.0);
        let ev = run(&mut e, 10.0);
        assert!(matches!(
            ev[0].1,
            Event::FirstToken {
                cached_tokens: 0,
                ..
            }
        ));
    }

    #[test]
    fn a_request_larger_than_the_cache_is_refused() {
        let mut e = Engine::new(cfg());
        let huge: Vec<u32> = (0..2000).collect();
        assert!(!e.submit(req(1, &huge, 1), 0.0));
        assert!(e.is_idle());
    }
}
