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
    holders: SmallVec<[Slot; 4]>,
    /// Distinct child blocks seen after this block (saturating). A block with
    /// many children is a branch point: a prefix that many requests share.
    fanout: u16,
}

/// What the index knows about one prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixMatch {
    /// Replicas that hold at least the first block, with their count of
    /// leading blocks held. Sorted by slot.
    pub matched: Vec<(Slot, u32)>,
    /// Leading blocks that form a *hot shared prefix*: the prompt up to the
    /// deepest block whose fan-out reached the threshold. Holding only these
    /// is not a reason to prefer a replica: every replica soon holds them.
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
    /// Partial last blocks by the block they follow: `(tail hash, length)`.
    tails: HashMap<u64, SmallVec<[(u64, u16); 2]>, HashIdentity>,
    /// Tail hash → the parent it is filed under (to unfile it on eviction).
    tail_parent: HashMap<u64, u64, HashIdentity>,
    replicas: Vec<Option<LruCache<u64, (), HashIdentity>>>,
    capacity: NonZeroUsize,
}

impl PrefixIndex {
    /// An empty index holding at most `capacity_blocks` blocks per replica.
    pub fn new(capacity_blocks: usize) -> Self {
        Self {
            entries: HashMap::default(),
            tails: HashMap::default(),
            tail_parent: HashMap::default(),
            replicas: Vec::new(),
            capacity: NonZeroUsize::new(capacity_blocks.max(1)).unwrap_or(NonZeroUsize::MIN),
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
            Some(Some(lru)) => lru.len(),
            _ => 0,
        }
    }

    /// Leading blocks of `prompt` each replica holds, and the hot shared
    /// depth (blocks whose fan-out is at least `hot_fanout`). A replica that
    /// holds the leading part of the first block it lacks (a recorded tail)
    /// is credited with that block too. O(blocks × holders).
    pub fn lookup(&self, prompt: &PromptBlocks, hot_fanout: u16) -> PrefixMatch {
        let hashes = &prompt.hashes;
        let mut alive: SmallVec<[Slot; 8]> = SmallVec::new();
        let mut done: Vec<(Slot, u32)> = Vec::new();
        let mut shared = 0u32;
        let mut depth = 0usize;
        for (i, h) in hashes.iter().enumerate() {
            let Some(entry) = self.entries.get(h) else {
                break;
            };
            let next: SmallVec<[Slot; 8]> = if i == 0 {
                entry.holders.iter().copied().collect()
            } else {
                alive
                    .iter()
                    .copied()
                    .filter(|s| entry.holders.contains(s))
                    .collect()
            };
            if next.is_empty() {
                break;
            }
            done.extend(
                alive
                    .iter()
                    .filter(|s| !next.contains(s))
                    .map(|s| (*s, i as u32)),
            );
            alive = next;
            depth = i + 1;
            if entry.fanout >= hot_fanout {
                shared = depth as u32;
            }
        }
        if depth < hashes.len() && (depth == 0 || !alive.is_empty()) {
            let filed = self.tails.get(&prompt.parent(depth));
            for &(tail, len) in filed.into_iter().flatten() {
                if prompt.tail_hash(depth, usize::from(len)) != Some(tail) {
                    continue;
                }
                let Some(entry) = self.entries.get(&tail) else {
                    continue;
                };
                let hit: SmallVec<[Slot; 8]> = entry
                    .holders
                    .iter()
                    .copied()
                    .filter(|s| depth == 0 || alive.contains(s))
                    .collect();
                if hit.is_empty() {
                    continue;
                }
                done.extend(
                    alive
                        .iter()
                        .filter(|s| !hit.contains(s))
                        .map(|s| (*s, depth as u32)),
                );
                done.extend(hit.iter().map(|s| (*s, depth as u32 + 1)));
                alive.clear();
                break;
            }
        }
        done.extend(alive.drain(..).map(|s| (s, depth as u32)));
        done.sort_unstable();
        PrefixMatch {
            matched: done,
            shared,
        }
    }

    /// Records that `slot` now holds every block of `prompt`, evicting its
    /// least recently used blocks beyond capacity.
    pub fn record(&mut self, slot: Slot, prompt: &PromptBlocks) {
        let hashes = &prompt.hashes;
        if hashes.is_empty() {
            return;
        }
        let idx = slot as usize;
        if self.replicas.len() <= idx {
            self.replicas.resize_with(idx + 1, || None);
        }
        let capacity = self.capacity;
        let lru = self.replicas[idx]
            .get_or_insert_with(|| LruCache::with_hasher(capacity, HashIdentity::default()));
        let mut files = Files {
            entries: &mut self.entries,
            tails: &mut self.tails,
            tail_parent: &mut self.tail_parent,
        };
        if let Some(tail) = prompt.tail()
            && files.touch(lru, slot, tail.hash)
        {
            files
                .tails
                .entry(tail.parent)
                .or_default()
                .push((tail.hash, tail.len));
            files.tail_parent.insert(tail.hash, tail.parent);
        }
        // Deepest first, so the root ends most recent (see type docs). A block
        // whose child was new to the index gains fan-out.
        let mut child_created = false;
        for &h in hashes.iter().rev() {
            let created = files.touch(lru, slot, h);
            if child_created && let Some(e) = files.entries.get_mut(&h) {
                e.fanout = e.fanout.saturating_add(1);
            }
            child_created = created;
        }
    }

    /// Forgets `slot`'s blocks of `prompt` from position `keep` on (the
    /// engine reported it holds only the first `keep`). Returns how many
    /// blocks were dropped.
    pub fn truncate(&mut self, slot: Slot, prompt: &PromptBlocks, keep: usize) -> usize {
        let Some(Some(lru)) = self.replicas.get_mut(slot as usize) else {
            return 0;
        };
        let tail = prompt.tail().map(|t| t.hash);
        let mut dropped = 0;
        for h in prompt.hashes.iter().skip(keep).copied().chain(tail) {
            if lru.pop(&h).is_some() {
                detach(&mut self.entries, h, slot);
                if !self.entries.contains_key(&h) {
                    unfile_tail(&mut self.tails, &mut self.tail_parent, h);
                }
                dropped += usize::from(Some(h) != tail);
            }
        }
        dropped
    }

    /// Forgets everything `slot` held (the replica left). Returns its blocks,
    /// most recent first.
    pub fn remove_replica(&mut self, slot: Slot) -> Vec<u64> {
        let Some(Some(lru)) = self.replicas.get_mut(slot as usize).map(Option::take) else {
            return Vec::new();
        };
        let blocks: Vec<u64> = lru.iter().map(|(h, ())| *h).collect();
        for &h in &blocks {
            detach(&mut self.entries, h, slot);
            if !self.entries.contains_key(&h) {
                unfile_tail(&mut self.tails, &mut self.tail_parent, h);
            }
        }
        blocks
    }
}

/// The index's maps, borrowed apart from the replica LRUs.
struct Files<'a> {
    entries: &'a mut HashMap<u64, Entry, HashIdentity>,
    tails: &'a mut HashMap<u64, SmallVec<[(u64, u16); 2]>, HashIdentity>,
    tail_parent: &'a mut HashMap<u64, u64, HashIdentity>,
}

impl Files<'_> {
    /// Marks `h` most recent in `slot`'s LRU and `slot` as a holder; evicts
    /// the LRU's oldest block if full. Returns true if `h` was new to the index.
    fn touch(&mut self, lru: &mut LruCache<u64, (), HashIdentity>, slot: Slot, h: u64) -> bool {
        if let Some((old, ())) = lru.push(h, ())
            && old != h
        {
            detach(self.entries, old, slot);
            if !self.entries.contains_key(&old) {
                unfile_tail(self.tails, self.tail_parent, old);
            }
        }
        let mut created = false;
        let entry = self.entries.entry(h).or_insert_with(|| {
            created = true;
            Entry::default()
        });
        if !entry.holders.contains(&slot) {
            entry.holders.push(slot);
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

fn detach(entries: &mut HashMap<u64, Entry, HashIdentity>, h: u64, slot: Slot) {
    if let Some(e) = entries.get_mut(&h) {
        e.holders.retain(|s| *s != slot);
        if e.holders.is_empty() {
            entries.remove(&h);
        }
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
        let m = ix.lookup(&p(&[1, 2, 3, 9]), u16::MAX);
        assert_eq!(m.matched, vec![(0, 3), (1, 2)]);
        assert_eq!(m.blocks_for(0), 3);
        assert_eq!(m.blocks_for(7), 0);
    }

    #[test]
    fn a_prompt_fully_held_matches_all_its_blocks() {
        let mut ix = PrefixIndex::new(100);
        ix.record(2, &p(&[5, 6, 7]));
        assert_eq!(ix.lookup(&p(&[5, 6, 7]), u16::MAX).matched, vec![(2, 3)]);
        assert_eq!(ix.lookup(&p(&[5, 6]), u16::MAX).matched, vec![(2, 2)]);
    }

    #[test]
    fn capacity_evicts_least_recent_prefix_tails_first() {
        let mut ix = PrefixIndex::new(4);
        ix.record(0, &p(&[1, 2, 3]));
        ix.record(0, &p(&[10, 11]));
        // Capacity 4: the oldest tail block (3) went first, prefix 1,2 kept.
        assert_eq!(ix.blocks_held(0), 4);
        assert_eq!(ix.lookup(&p(&[1, 2, 3]), u16::MAX).matched, vec![(0, 2)]);
        assert_eq!(ix.lookup(&p(&[10, 11]), u16::MAX).matched, vec![(0, 2)]);
        assert_eq!(ix.len(), 4);
    }

    #[test]
    fn fanout_marks_a_prefix_that_many_requests_branch_from() {
        let mut ix = PrefixIndex::new(100);
        let system = [1, 2, 3];
        for s in 0..5u64 {
            ix.record(s as Slot % 2, &p(&chain(&system, &[100 + s, 200 + s])));
        }
        let m = ix.lookup(&p(&chain(&system, &[999])), 4);
        assert_eq!(m.shared, 3, "the system prompt is the hot shared part");
        // A conversation that only extends itself is not a branch point.
        let mut ix = PrefixIndex::new(100);
        ix.record(0, &p(&[1, 2]));
        ix.record(0, &p(&[1, 2, 3, 4]));
        ix.record(0, &p(&[1, 2, 3, 4, 5, 6]));
        assert_eq!(ix.lookup(&p(&[1, 2, 3, 4, 5, 6, 7]), 4).shared, 0);
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
        let m = ix.lookup(&b2, u16::MAX);
        assert_eq!(m.blocks_for(3), b1.len() as u32, "partial block credited");
        assert_eq!(m.blocks_for(4), b1.len() as u32 - 1);
    }

    #[test]
    fn a_shared_start_inside_a_partial_block_is_no_match() {
        let hasher = BlockHasher::default();
        let mut ix = PrefixIndex::new(100);
        ix.record(0, &hasher.hash("m", b"prompt number 1"));
        assert!(
            ix.lookup(&hasher.hash("m", b"prompt number 2"), u16::MAX)
                .matched
                .is_empty()
        );
        assert_eq!(
            ix.lookup(&hasher.hash("m", b"prompt number 1 and more"), u16::MAX)
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
    fn truncate_drops_blocks_beyond_what_the_engine_reported() {
        let mut ix = PrefixIndex::new(100);
        ix.record(0, &p(&[1, 2, 3, 4]));
        ix.record(1, &p(&[1, 2, 3, 4]));
        assert_eq!(ix.truncate(0, &p(&[1, 2, 3, 4]), 1), 3);
        let m = ix.lookup(&p(&[1, 2, 3, 4]), u16::MAX);
        assert_eq!(m.matched, vec![(0, 1), (1, 4)]);
    }

    #[test]
    fn removing_a_replica_forgets_its_blocks_only() {
        let mut ix = PrefixIndex::new(100);
        ix.record(0, &p(&[1, 2]));
        ix.record(1, &p(&[1, 3]));
        let gone = ix.remove_replica(0);
        assert_eq!(gone.len(), 2);
        assert_eq!(ix.lookup(&p(&[1, 2]), u16::MAX).matched, vec![(1, 1)]);
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.blocks_held(0), 0);
    }
}
