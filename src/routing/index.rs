//! Prefix index: block hash → replicas that likely hold it, LRU-bounded per replica.

use std::collections::HashMap;
use std::num::NonZeroUsize;

use lru::LruCache;
use nohash_hasher::BuildNoHashHasher;
use smallvec::SmallVec;

use super::blocks::PromptBlocks;

/// A replica's local handle in the router (its position in the replica table).
/// Stable while the replica exists; never sent over the wire.
pub type Slot = u32;

/// Block hashes are already uniform xxh3 outputs: hashing them again is waste.
type HashIdentity = BuildNoHashHasher<u64>;

#[derive(Debug, Default)]
struct Entry {
    /// Sorted, so walks intersect them by merging.
    holders: SmallVec<[Slot; 4]>,
    /// Recent requests that carried this block (see [`Traffic`]).
    traffic: Traffic,
}

/// Requests per window of [`HOT_WINDOW`] recorded requests, this window and
/// the last: a two-bucket sliding count, cheap to keep on every entry.
#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    window: u32,
    current: u16,
    previous: u16,
}

/// Recorded requests per traffic window.
pub const HOT_WINDOW: u64 = 256;

/// A prefix is judged hot only once this many recent requests carried it.
pub const HOT_MIN_REQUESTS: f64 = 4.0;

impl Traffic {
    fn bump(&mut self, tick: u64) {
        let w = (tick / HOT_WINDOW) as u32;
        if self.window != w {
            self.previous = if self.window + 1 == w {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.window = w;
        }
        self.current = self.current.saturating_add(1);
    }

    /// Requests in the last [`HOT_WINDOW`] recorded, estimated.
    fn estimate(&self, tick: u64) -> f64 {
        let w = (tick / HOT_WINDOW) as u32;
        let into = (tick % HOT_WINDOW) as f64 / HOT_WINDOW as f64;
        match w.checked_sub(self.window) {
            Some(0) => f64::from(self.current) + f64::from(self.previous) * (1.0 - into),
            Some(1) => f64::from(self.current) * (1.0 - into),
            _ => 0.0,
        }
    }
}

/// What the index knows about one prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Replicas that hold at least the first block, with their count of
    /// leading blocks held. Sorted by slot.
    pub matched: Vec<(Slot, u32)>,
    /// Leading blocks that form a *hot shared prefix*: the prompt up to the
    /// deepest block carried by at least the hot share of recent requests.
    /// Holding only these is no reason to prefer a replica: no one replica
    /// can take that much traffic, so every replica soon holds them.
    pub shared: u32,
}

impl PrefixMatch {
    /// Leading blocks held by `slot` (0 if none).
    pub fn blocks_for(&self, slot: Slot) -> u32 {
        self.matched
            .binary_search_by_key(&slot, |(s, _)| *s)
            .map(|i| self.matched[i].1)
            .unwrap_or(0)
    }
}

/// Which replicas likely hold which prefix blocks.
///
/// Each replica has an LRU of at most `capacity` block hashes (its KV cache
/// in blocks). A request's blocks are touched last-to-first, so a replica's
/// shallower blocks are always at least as recent as deeper ones: eviction
/// trims prefixes from the tail, as engines do, and a replica holding block
/// `i` also holds blocks `0..i`.
#[derive(Debug)]
pub struct PrefixIndex {
    entries: HashMap<u64, Entry, HashIdentity>,
    /// Requests recorded so far, and per traffic window.
    tick: u64,
    seen: Traffic,
    /// Partial last blocks by the block they follow: `(tail hash, length)`.
    tails: HashMap<u64, SmallVec<[(u64, u16); 2]>, HashIdentity>,
    /// Tail hash → the parent it is filed under (to unfile it on eviction).
    tail_parent: HashMap<u64, u64, HashIdentity>,
    replicas: Vec<Option<Lru>>,
    capacity: NonZeroUsize,
    /// Blocks evicted since the last [`PrefixIndex::take_evicted`], oldest
    /// first: `(replica, hash, weight)`. The node tier takes them.
    evicted: Vec<(Slot, u64, u32)>,
}

impl PrefixIndex {
    /// An empty index holding at most `capacity_blocks` blocks per replica.
    pub fn new(capacity_blocks: usize) -> Self {
        Self {
            entries: HashMap::default(),
            tick: 0,
            seen: Traffic::default(),
            tails: HashMap::default(),
            tail_parent: HashMap::default(),
            replicas: Vec::new(),
            capacity: NonZeroUsize::new(capacity_blocks.max(1)).unwrap_or(NonZeroUsize::MIN),
            evicted: Vec::new(),
        }
    }

    /// Blocks per replica.
    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    /// Distinct blocks known across all replicas.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Blocks recorded for `slot`.
    pub fn blocks_held(&self, slot: Slot) -> usize {
        match self.replicas.get(slot as usize) {
            Some(Some(lru)) => lru.blocks,
            _ => 0,
        }
    }

    /// Leading blocks of `prompt` each replica holds, and the hot shared
    /// depth: blocks carried by at least `hot_share` of recent requests.
    ///
    /// Walks the prompt's indexed positions, then, between the last match and
    /// the first miss, each block one by one (a shorter prompt recorded its
    /// last block there), then the partial-block tail: a replica holding the
    /// leading part of the first block it lacks is credited with that block.
    /// O(indexed blocks × holders).
    pub fn lookup(&self, prompt: &PromptBlocks, hot_share: f64) -> PrefixMatch {
        let hashes = &prompt.hashes;
        if hashes.is_empty() {
            return PrefixMatch::default();
        }
        let mut walk = Walk::default();
        let mut shared = 0u32;
        // Deeper blocks are carried by no more requests than shallower ones:
        // once one is not hot, none after it is.
        let seen = self.seen.estimate(self.tick).max(1.0);
        let mut hot = true;
        let mut stop = hashes.len();
        for i in prompt.indexed_positions() {
            match self.entries.get(&hashes[i]) {
                Some(entry) if walk.advance(i, &entry.holders) => {
                    if hot {
                        let carried = entry.traffic.estimate(self.tick);
                        hot = carried >= HOT_MIN_REQUESTS && carried >= hot_share * seen;
                        if hot {
                            shared = walk.depth as u32;
                        }
                    }
                }
                _ => {
                    stop = i;
                    break;
                }
            }
        }
        // Between the last indexed match and the first indexed miss, a
        // shorter prompt may have recorded its last block or its tail.
        let end = stop.min(hashes.len() - 1);
        for (j, h) in hashes.iter().enumerate().take(end + 1).skip(walk.depth) {
            if walk.depth > 0 && walk.alive.is_empty() {
                break;
            }
            if let Some(entry) = self.entries.get(h)
                && walk.advance(j, &entry.holders)
            {
                continue;
            }
            if self.tail_match(prompt, j, &mut walk) {
                break;
            }
        }
        PrefixMatch {
            matched: walk.finish(),
            shared,
        }
    }

    /// Credits block `j` to the walk's replicas that recorded a tail of it.
    fn tail_match(&self, prompt: &PromptBlocks, j: usize, walk: &mut Walk) -> bool {
        let filed = self.tails.get(&prompt.parent(j));
        filed.into_iter().flatten().any(|&(tail, len)| {
            prompt.tail_hash(j, usize::from(len)) == Some(tail)
                && self
                    .entries
                    .get(&tail)
                    .is_some_and(|entry| walk.advance(j, &entry.holders))
        })
    }

    /// Records that `slot` now holds every block of `prompt`, evicting its
    /// least recently used blocks beyond capacity (counted in blocks: an
    /// index entry stands for itself and the unindexed blocks before it).
    pub fn record(&mut self, slot: Slot, prompt: &PromptBlocks) {
        let hashes = &prompt.hashes;
        if hashes.is_empty() {
            return;
        }
        let idx = slot as usize;
        if self.replicas.len() <= idx {
            self.replicas.resize_with(idx + 1, || None);
        }
        self.tick += 1;
        self.seen.bump(self.tick);
        let tick = self.tick;
        let lru = self.replicas[idx].get_or_insert_with(Lru::default);
        let mut files = Files {
            entries: &mut self.entries,
            tails: &mut self.tails,
            tail_parent: &mut self.tail_parent,
            capacity: self.capacity.get(),
            evicted: &mut self.evicted,
        };
        if let Some(tail) = prompt.tail()
            && files.touch(lru, slot, tail.hash, 1)
        {
            files
                .tails
                .entry(tail.parent)
                .or_default()
                .push((tail.hash, tail.len));
            files.tail_parent.insert(tail.hash, tail.parent);
        }
        // Deepest first, so the root ends most recent (see type docs); each
        // block counts one more request carrying it.
        let positions: SmallVec<[usize; 64]> = prompt.indexed_positions().collect();
        for (k, &i) in positions.iter().enumerate().rev() {
            let weight = i - k.checked_sub(1).map_or(0, |p| positions[p] + 1) + 1;
            files.touch(lru, slot, hashes[i], weight);
            if let Some(e) = files.entries.get_mut(&hashes[i]) {
                e.traffic.bump(tick);
            }
        }
    }

    /// Forgets `slot`'s least recently used blocks, about `blocks` of them,
    /// never touching `keep`'s (the prompt it is serving now). For when the
    /// engine turned out to hold less than the index thought: what it
    /// dropped is, as in its own LRU, what was used longest ago. The dropped
    /// blocks count as evicted (see [`PrefixIndex::take_evicted`]). Returns
    /// the blocks dropped.
    pub fn shrink(&mut self, slot: Slot, keep: &PromptBlocks, blocks: usize) -> usize {
        let Some(Some(lru)) = self.replicas.get_mut(slot as usize) else {
            return 0;
        };
        let keep_tail = keep.tail().map(|t| t.hash);
        let mut dropped = 0;
        while dropped < blocks {
            let Some((&h, _)) = lru.list.peek_lru() else {
                break;
            };
            if keep.hashes.contains(&h) || keep_tail == Some(h) {
                break;
            }
            let Some((_, w)) = lru.list.pop_lru() else {
                break;
            };
            lru.blocks -= w as usize;
            dropped += w as usize;
            self.evicted.push((slot, h, w));
            detach(
                &mut self.entries,
                &mut self.tails,
                &mut self.tail_parent,
                h,
                slot,
            );
        }
        dropped
    }

    /// Blocks evicted from replicas' LRUs since the last call, oldest first:
    /// `(replica, hash, weight)`.
    pub fn take_evicted(&mut self) -> Vec<(Slot, u64, u32)> {
        std::mem::take(&mut self.evicted)
    }

    /// Forgets everything `slot` held (the replica left). Returns its blocks
    /// with their weights, oldest first.
    pub fn remove_replica(&mut self, slot: Slot) -> Vec<(u64, u32)> {
        let Some(Some(lru)) = self.replicas.get_mut(slot as usize).map(Option::take) else {
            return Vec::new();
        };
        let blocks: Vec<(u64, u32)> = lru.list.iter().rev().map(|(h, w)| (*h, *w)).collect();
        for &(h, _) in &blocks {
            detach(
                &mut self.entries,
                &mut self.tails,
                &mut self.tail_parent,
                h,
                slot,
            );
        }
        blocks
    }
}

/// Replicas still matching as a lookup walks a prompt, and those done.
#[derive(Default)]
struct Walk {
    /// Sorted.
    alive: Vec<Slot>,
    spare: Vec<Slot>,
    done: Vec<(Slot, u32)>,
    /// Leading blocks every `alive` replica holds.
    depth: usize,
}

impl Walk {
    /// Block `i` is held by `holders` (sorted): keep the alive replicas among
    /// them (all of them at the first block). False, changing nothing, if none.
    fn advance(&mut self, i: usize, holders: &[Slot]) -> bool {
        if self.depth == 0 {
            if holders.is_empty() {
                return false;
            }
            self.alive.extend_from_slice(holders);
            self.depth = i + 1;
            return true;
        }
        // Along a shared prefix the holders rarely change.
        if holders == self.alive.as_slice() {
            self.depth = i + 1;
            return true;
        }
        // One merge of two sorted lists splits `alive` into kept and done.
        self.spare.clear();
        let mut h = holders.iter().peekable();
        let mut kept_all = true;
        for &a in &self.alive {
            while h.next_if(|&&x| x < a).is_some() {}
            if h.next_if(|&&x| x == a).is_some() {
                self.spare.push(a);
            } else {
                kept_all = false;
            }
        }
        if self.spare.is_empty() {
            return false;
        }
        if !kept_all {
            let depth = self.depth as u32;
            let spare = &self.spare;
            self.done.extend(
                self.alive
                    .iter()
                    .filter(|a| spare.binary_search(a).is_err())
                    .map(|&a| (a, depth)),
            );
        }
        std::mem::swap(&mut self.alive, &mut self.spare);
        self.depth = i + 1;
        true
    }

    fn finish(mut self) -> Vec<(Slot, u32)> {
        let depth = self.depth as u32;
        self.done.extend(self.alive.iter().map(|&s| (s, depth)));
        self.done.sort_unstable();
        self.done
    }
}

/// One replica's recency list; values are the blocks each entry stands for.
#[derive(Debug)]
struct Lru {
    list: LruCache<u64, u32, HashIdentity>,
    blocks: usize,
}

impl Default for Lru {
    fn default() -> Self {
        Self {
            list: LruCache::unbounded_with_hasher(HashIdentity::default()),
            blocks: 0,
        }
    }
}

/// The index's maps, borrowed apart from the replica LRUs.
struct Files<'a> {
    entries: &'a mut HashMap<u64, Entry, HashIdentity>,
    tails: &'a mut HashMap<u64, SmallVec<[(u64, u16); 2]>, HashIdentity>,
    tail_parent: &'a mut HashMap<u64, u64, HashIdentity>,
    capacity: usize,
    evicted: &'a mut Vec<(Slot, u64, u32)>,
}

impl Files<'_> {
    /// Marks `h` most recent in `slot`'s LRU and `slot` as a holder; evicts
    /// the LRU's oldest block if full. Returns true if `h` was new to the index.
    fn touch(&mut self, lru: &mut Lru, slot: Slot, h: u64, weight: usize) -> bool {
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        match lru.list.push(h, weight) {
            Some((_, old)) => lru.blocks = lru.blocks + weight as usize - old as usize,
            None => lru.blocks += weight as usize,
        }
        while lru.blocks > self.capacity && lru.list.len() > 1 {
            let Some((old, w)) = lru.list.pop_lru() else {
                break;
            };
            lru.blocks -= w as usize;
            self.evicted.push((slot, old, w));
            detach(self.entries, self.tails, self.tail_parent, old, slot);
        }
        let mut created = false;
        let entry = self.entries.entry(h).or_insert_with(|| {
            created = true;
            Entry::default()
        });
        if let Err(at) = entry.holders.binary_search(&slot) {
            entry.holders.insert(at, slot);
        }
        created
    }
}

/// Removes a tail that no replica holds any more from the tail files.
fn unfile_tail(
    tails: &mut HashMap<u64, SmallVec<[(u64, u16); 2]>, HashIdentity>,
    tail_parent: &mut HashMap<u64, u64, HashIdentity>,
    hash: u64,
) {
    if let Some(parent) = tail_parent.remove(&hash)
        && let Some(list) = tails.get_mut(&parent)
    {
        list.retain(|(t, _)| *t != hash);
        if list.is_empty() {
            tails.remove(&parent);
        }
    }
}

/// `slot` no longer holds `h`: the entry goes when no replica holds it, and
/// with it a tail that was filed under its parent.
fn detach(
    entries: &mut HashMap<u64, Entry, HashIdentity>,
    tails: &mut HashMap<u64, SmallVec<[(u64, u16); 2]>, HashIdentity>,
    tail_parent: &mut HashMap<u64, u64, HashIdentity>,
    h: u64,
    slot: Slot,
) {
    if let Some(e) = entries.get_mut(&h) {
        e.holders.retain(|s| *s != slot);
        if e.holders.is_empty() {
            entries.remove(&h);
        }
    }
    if !entries.contains_key(&h) {
        unfile_tail(tails, tail_parent, h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::BlockHasher;

    fn p(h: &[u64]) -> PromptBlocks {
        PromptBlocks::from_hashes(h.to_vec())
    }

    fn chain(prefix: &[u64], extra: &[u64]) -> Vec<u64> {
        prefix.iter().chain(extra).copied().collect()
    }

    #[test]
    fn lookup_counts_leading_blocks_per_replica() {
        let mut ix = PrefixIndex::new(100);
        ix.record(0, &p(&[1, 2, 3, 4]));
        ix.record(1, &p(&[1, 2]));
        let m = ix.lookup(&p(&[1, 2, 3, 9]), f64::INFINITY);
        assert_eq!(m.matched, vec![(0, 3), (1, 2)]);
        assert_eq!(m.blocks_for(0), 3);
        assert_eq!(m.blocks_for(7), 0);
    }

    #[test]
    fn a_prompt_fully_held_matches_all_its_blocks() {
        let mut ix = PrefixIndex::new(100);
        ix.record(2, &p(&[5, 6, 7]));
        assert_eq!(
            ix.lookup(&p(&[5, 6, 7]), f64::INFINITY).matched,
            vec![(2, 3)]
        );
        assert_eq!(ix.lookup(&p(&[5, 6]), f64::INFINITY).matched, vec![(2, 2)]);
    }

    #[test]
    fn capacity_evicts_least_recent_prefix_tails_first() {
        let mut ix = PrefixIndex::new(4);
        ix.record(0, &p(&[1, 2, 3]));
        ix.record(0, &p(&[10, 11]));
        // Capacity 4: the oldest tail block (3) went first, prefix 1,2 kept.
        assert_eq!(ix.blocks_held(0), 4);
        assert_eq!(
            ix.lookup(&p(&[1, 2, 3]), f64::INFINITY).matched,
            vec![(0, 2)]
        );
        assert_eq!(
            ix.lookup(&p(&[10, 11]), f64::INFINITY).matched,
            vec![(0, 2)]
        );
        assert_eq!(ix.len(), 4);
    }

    #[test]
    fn a_prefix_most_recent_requests_carry_is_hot_and_a_rare_one_is_not() {
        let mut ix = PrefixIndex::new(10_000);
        let system = [1, 2, 3];
        for s in 0..40u64 {
            // Every request carries the system prompt; group 7's prefix one in four.
            let group = if s % 4 == 0 { 7 } else { 100 + s };
            ix.record(s as Slot % 2, &p(&chain(&system, &[group, 1000 + s])));
        }
        let m = ix.lookup(&p(&chain(&system, &[7, 999])), 0.5);
        assert_eq!(
            m.shared, 3,
            "the system prompt is hot, group 7 (25%) is not at 50%"
        );
        let m = ix.lookup(&p(&chain(&system, &[7, 999])), 0.2);
        assert_eq!(m.shared, 4, "at a 20% threshold group 7 is hot too");
        // Too few requests to judge: nothing is hot yet.
        let mut ix = PrefixIndex::new(100);
        for s in 0..3u64 {
            ix.record(0, &p(&chain(&system, &[100 + s])));
        }
        assert_eq!(ix.lookup(&p(&chain(&system, &[9])), 0.1).shared, 0);
    }

    #[test]
    fn traffic_counts_fade_after_two_windows() {
        let mut t = Traffic::default();
        for tick in 1..=10 {
            t.bump(tick);
        }
        assert_eq!(t.estimate(10), 10.0);
        assert_eq!(t.estimate(HOT_WINDOW + HOT_WINDOW / 2), 5.0);
        assert_eq!(t.estimate(3 * HOT_WINDOW), 0.0);
    }

    #[test]
    fn the_next_chat_turn_finds_the_previous_turns_partial_last_block() {
        let hasher = BlockHasher::default();
        let turn1 = "system prompt ".repeat(10) + "user: hello there, my question";
        let turn2 = turn1.clone() + " assistant: an answer that fills the block and more text";
        let (b1, b2) = (
            hasher.hash("m", turn1.as_bytes()),
            hasher.hash("m", turn2.as_bytes()),
        );
        let mut ix = PrefixIndex::new(100);
        ix.record(3, &b1);
        ix.record(
            4,
            &hasher.hash(
                "m",
                ("system prompt ".repeat(10) + "user: other").as_bytes(),
            ),
        );
        let m = ix.lookup(&b2, f64::INFINITY);
        assert_eq!(m.blocks_for(3), b1.len() as u32, "partial block credited");
        assert_eq!(m.blocks_for(4), b1.len() as u32 - 1);
    }

    #[test]
    fn a_shared_start_inside_a_partial_block_is_no_match() {
        let hasher = BlockHasher::default();
        let mut ix = PrefixIndex::new(100);
        ix.record(0, &hasher.hash("m", b"prompt number 1"));
        assert!(
            ix.lookup(&hasher.hash("m", b"prompt number 2"), f64::INFINITY)
                .matched
                .is_empty()
        );
        assert_eq!(
            ix.lookup(
                &hasher.hash("m", b"prompt number 1 and more"),
                f64::INFINITY
            )
            .matched,
            vec![(0, 1)]
        );
    }

    #[test]
    fn evicted_and_removed_tails_leave_no_trace() {
        let hasher = BlockHasher::default();
        let mut ix = PrefixIndex::new(4);
        for i in 0..50 {
            ix.record(
                i % 2,
                &hasher.hash("m", format!("short prompt {i}").as_bytes()),
            );
        }
        assert!(
            ix.tails.len() <= 8 && ix.tail_parent.len() <= 8,
            "{} tails filed",
            ix.tail_parent.len()
        );
        ix.remove_replica(0);
        ix.remove_replica(1);
        assert!(ix.is_empty() && ix.tails.is_empty() && ix.tail_parent.is_empty());
    }

    #[test]
    fn shrink_drops_the_oldest_blocks_but_not_the_prompt_being_served() {
        let mut ix = PrefixIndex::new(100);
        ix.record(0, &p(&[1, 2]));
        ix.record(0, &p(&[7, 8]));
        ix.record(0, &p(&[4, 5]));
        let serving = p(&[4, 5]);
        // Recency, oldest first: 2, 1, 8, 7, 5, 4 (a prompt's root is its most recent).
        assert_eq!(ix.shrink(0, &serving, 4), 4, "oldest first");
        assert_eq!(ix.lookup(&p(&[1, 2]), f64::INFINITY).blocks_for(0), 0);
        assert_eq!(ix.lookup(&p(&[7, 8]), f64::INFINITY).blocks_for(0), 0);
        assert_eq!(ix.shrink(0, &serving, 10), 0, "the served prompt stays");
        assert_eq!(ix.lookup(&serving, f64::INFINITY).blocks_for(0), 2);
        assert_eq!(ix.take_evicted().len(), 4);
    }

    #[test]
    fn removing_a_replica_forgets_its_blocks_only() {
        let mut ix = PrefixIndex::new(100);
        ix.record(0, &p(&[1, 2]));
        ix.record(1, &p(&[1, 3]));
        let gone = ix.remove_replica(0);
        assert_eq!(gone.len(), 2);
        assert_eq!(ix.lookup(&p(&[1, 2]), f64::INFINITY).matched, vec![(1, 1)]);
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.blocks_held(0), 0);
    }
}
