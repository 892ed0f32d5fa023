//! The simulated engine's prefix cache, as vLLM keeps it: fixed-size token
//! blocks named by chained keys, shared by reference, unreferenced blocks
//! evicted least recently used first.

use std::collections::HashMap;

use lru::LruCache;
use nohash_hasher::BuildNoHashHasher;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

type Identity = BuildNoHashHasher<u64>;

/// Keys of the full `block_tokens`-token blocks of `tokens`, chained and
/// seeded by the model: key `i` names blocks `0..=i`. A trailing partial
/// block has no key (engines cache only full blocks).
pub fn block_keys(model: &str, tokens: &[u32], block_tokens: usize) -> Vec<u64> {
    let mut prev = xxh3_64(model.as_bytes());
    let mut bytes = Vec::with_capacity(block_tokens * 4);
    tokens
        .chunks_exact(block_tokens.max(1))
        .map(|block| {
            bytes.clear();
            for t in block {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
            prev = xxh3_64_with_seed(&bytes, prev);
            prev
        })
        .collect()
}

/// Blocks of KV cache: cached (named, shareable) and private (being filled).
#[derive(Debug)]
pub struct PrefixCache {
    capacity: usize,
    /// Cached blocks and how many running sequences use each.
    refs: HashMap<u64, u32, Identity>,
    /// Cached blocks no sequence uses, least recent first out.
    evictable: LruCache<u64, (), Identity>,
    /// Blocks allocated to sequences and not (yet) cached.
    private: usize,
    /// Cached blocks evicted since the last [`PrefixCache::take_evicted`].
    evicted: Vec<u64>,
}

impl PrefixCache {
    /// A cache of `capacity_blocks` blocks.
    pub fn new(capacity_blocks: usize) -> Self {
        Self {
            capacity: capacity_blocks,
            refs: HashMap::default(),
            evictable: LruCache::unbounded_with_hasher(Identity::default()),
            private: 0,
            evicted: Vec::new(),
        }
    }

    /// Capacity in blocks.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks in use or cached.
    pub fn used(&self) -> usize {
        self.refs.len() + self.private
    }

    /// Share of blocks held by running sequences (vLLM's `kv_cache_usage_perc`):
    /// cached blocks nobody uses count as free, as they can be evicted.
    pub fn usage(&self) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        (self.used() - self.evictable.len()) as f64 / self.capacity as f64
    }

    /// Leading keys of `keys` that are cached.
    pub fn cached_prefix(&self, keys: &[u64]) -> usize {
        keys.iter()
            .take_while(|k| self.refs.contains_key(k))
            .count()
    }

    /// Pins `cached` (leading keys found cached) and allocates `extra`
    /// private blocks, evicting unused cached blocks as needed. False, with
    /// nothing changed, when it cannot fit.
    pub fn admit(&mut self, cached: &[u64], extra: usize) -> bool {
        let pinned_now_evictable = cached.iter().filter(|k| self.evictable.contains(k)).count();
        let reclaimable = self.evictable.len() - pinned_now_evictable;
        let free = self.capacity.saturating_sub(self.used());
        if free + reclaimable < extra {
            return false;
        }
        for k in cached {
            self.evictable.pop(k);
            *self.refs.entry(*k).or_insert(0) += 1;
        }
        while self.capacity.saturating_sub(self.used()) < extra {
            match self.evictable.pop_lru() {
                Some((k, ())) => {
                    self.refs.remove(&k);
                    self.evicted.push(k);
                }
                None => break,
            }
        }
        self.private += extra;
        true
    }

    /// Private blocks now hold `keys`: they become cached (pinned by their
    /// sequence). A key another sequence cached meanwhile is shared and the
    /// private copy freed.
    pub fn publish(&mut self, keys: &[u64]) {
        for k in keys {
            self.private = self.private.saturating_sub(1);
            self.evictable.pop(k);
            *self.refs.entry(*k).or_insert(0) += 1;
        }
    }

    /// A sequence ends: unpins `pinned` (unused ones become evictable, most
    /// recent) and frees its `private` blocks.
    pub fn release(&mut self, pinned: &[u64], private: usize) {
        for k in pinned {
            if let Some(r) = self.refs.get_mut(k) {
                *r = r.saturating_sub(1);
                if *r == 0 {
                    self.evictable.push(*k, ());
                }
            }
        }
        self.private = self.private.saturating_sub(private);
    }

    /// Blocks evicted since the last call, oldest first (an engine with a
    /// node cache offloads them there).
    pub fn take_evicted(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.evicted)
    }

    /// Drops every unused cached block.
    pub fn reset(&mut self) {
        while let Some((k, ())) = self.evictable.pop_lru() {
            self.refs.remove(&k);
        }
    }
}

/// A node's KV block store (kvmesh node-cache, as LMCache uses it): the
/// blocks its engines evicted, least recently used first out.
#[derive(Debug)]
pub struct NodeStore {
    blocks: LruCache<u64, (), Identity>,
    capacity: usize,
}

/// One node's store, shared by the engines on that node.
pub type SharedNodeStore = std::sync::Arc<std::sync::Mutex<NodeStore>>;

impl NodeStore {
    /// A store of `capacity_blocks` blocks.
    pub fn new(capacity_blocks: usize) -> Self {
        Self {
            blocks: LruCache::unbounded_with_hasher(Identity::default()),
            capacity: capacity_blocks,
        }
    }

    /// Stores `keys` (most recent last), evicting the oldest beyond capacity.
    pub fn put(&mut self, keys: &[u64]) {
        for &k in keys {
            self.blocks.push(k, ());
            while self.blocks.len() > self.capacity {
                self.blocks.pop_lru();
            }
        }
    }

    /// Leading keys of `keys` the store holds (marked recently used).
    pub fn leading(&mut self, keys: &[u64]) -> usize {
        keys.iter()
            .take_while(|k| self.blocks.get(k).is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_full_blocks_only_and_chain() {
        let toks: Vec<u32> = (0..40).collect();
        let k = block_keys("m", &toks, 16);
        assert_eq!(k.len(), 2);
        let other: Vec<u32> = (0..16).chain(100..124).collect();
        let k2 = block_keys("m", &other, 16);
        assert_eq!(k[0], k2[0]);
        assert_ne!(k[1], k2[1]);
        assert_ne!(block_keys("n", &toks, 16)[0], k[0]);
    }

    #[test]
    fn a_finished_sequence_leaves_its_blocks_cached_for_the_next() {
        let mut c = PrefixCache::new(10);
        assert!(c.admit(&[], 3));
        c.publish(&[1, 2, 3]);
        c.release(&[1, 2, 3], 0);
        assert_eq!(c.cached_prefix(&[1, 2, 3, 4]), 3);
        assert_eq!(c.used(), 3);
        assert_eq!(c.usage(), 0.0);
    }

    #[test]
    fn pinned_blocks_are_never_evicted_and_lru_goes_first() {
        let mut c = PrefixCache::new(4);
        assert!(c.admit(&[], 2));
        c.publish(&[1, 2]);
        c.release(&[1, 2], 0); // 1, 2 evictable (2 most recent)
        assert!(c.admit(&[], 2));
        c.publish(&[3, 4]); // full: 1, 2 cached unused; 3, 4 pinned
        assert!(c.admit(&[], 1), "evicts the least recent unused block");
        assert_eq!(c.cached_prefix(&[1]), 0);
        assert_eq!(c.cached_prefix(&[2]), 1);
        assert!(!c.admit(&[], 2), "3, 4 are pinned: no room");
        assert_eq!(c.used(), 4);
    }

    #[test]
    fn pinning_a_cached_prefix_keeps_it_through_evictions() {
        let mut c = PrefixCache::new(3);
        assert!(c.admit(&[], 2));
        c.publish(&[1, 2]);
        c.release(&[1, 2], 0);
        assert!(c.admit(&[1, 2], 1), "prefix pinned, one new block");
        assert_eq!(c.cached_prefix(&[1, 2]), 2);
        assert!(!c.admit(&[], 1));
        c.release(&[1, 2], 1);
        assert_eq!(c.used(), 2);
    }
}
