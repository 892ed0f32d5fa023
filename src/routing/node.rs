//! Node tier: which prefix blocks each node's cache (the node-cache
//! DaemonSet) likely holds.
//!
//! Engines on one node offload the KV blocks they evict to that node's
//! cache, and a replica that leaves leaves its blocks there too. So when a
//! replica's index entry is evicted, or a replica is removed, its blocks
//! move to its node's entry here, bounded per node by the node cache's size
//! in blocks, least recently used first out. A prompt that no replica holds
//! but a node does is best sent to a replica on that node: it loads the
//! blocks from node memory or disk instead of recomputing them.

use std::collections::HashMap;

use lru::LruCache;
use nohash_hasher::BuildNoHashHasher;

use super::blocks::PromptBlocks;

/// A node's local handle in the router.
pub type NodeId = u32;

type HashIdentity = BuildNoHashHasher<u64>;

/// One node's recency list of blocks; values are the blocks each entry
/// stands for (as in the replica index, an entry covers the unindexed
/// blocks before it).
#[derive(Debug)]
struct NodeLru {
    list: LruCache<u64, u32, HashIdentity>,
    blocks: usize,
}

/// Per-node prefix blocks, each node bounded to `capacity` blocks.
#[derive(Debug)]
pub struct NodeTier {
    nodes: HashMap<NodeId, NodeLru>,
    capacity: usize,
}

impl NodeTier {
    /// A tier keeping at most `capacity_blocks` per node (0: off, keeps nothing).
    pub fn new(capacity_blocks: usize) -> Self {
        Self {
            nodes: HashMap::new(),
            capacity: capacity_blocks,
        }
    }

    /// Blocks per node (0: the tier is off).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks `node` is believed to hold.
    pub fn blocks_held(&self, node: NodeId) -> usize {
        self.nodes.get(&node).map_or(0, |n| n.blocks)
    }

    /// `node`'s cache received `blocks` (hash, weight), oldest first: each
    /// becomes the node's most recent, evicting its oldest beyond capacity.
    pub fn absorb(&mut self, node: NodeId, blocks: impl IntoIterator<Item = (u64, u32)>) {
        if self.capacity == 0 {
            return;
        }
        let capacity = self.capacity;
        let n = self.nodes.entry(node).or_insert_with(|| NodeLru {
            list: LruCache::unbounded_with_hasher(HashIdentity::default()),
            blocks: 0,
        });
        for (h, w) in blocks {
            match n.list.push(h, w) {
                Some((old_h, old)) if old_h == h => n.blocks = n.blocks + w as usize - old as usize,
                _ => n.blocks += w as usize,
            }
            while n.blocks > capacity && n.list.len() > 1 {
                let Some((_, w)) = n.list.pop_lru() else {
                    break;
                };
                n.blocks -= w as usize;
            }
        }
    }

    /// Leading blocks of `prompt` that `node` holds, counted as a replica
    /// match is: up to and including the last indexed block held without a
    /// gap from the start. Marks what it finds most recent (it is about to
    /// be used).
    pub fn leading_blocks(&mut self, node: NodeId, prompt: &PromptBlocks) -> u32 {
        let Some(n) = self.nodes.get_mut(&node) else {
            return 0;
        };
        let mut held = 0;
        for i in prompt.indexed_positions() {
            if n.list.get(&prompt.hashes[i]).is_none() {
                break;
            }
            held = i as u32 + 1;
        }
        held
    }

    /// Changes the per-node bound, evicting what no longer fits.
    pub fn set_capacity(&mut self, capacity_blocks: usize) {
        self.capacity = capacity_blocks;
        if capacity_blocks == 0 {
            self.nodes.clear();
            return;
        }
        for n in self.nodes.values_mut() {
            while n.blocks > capacity_blocks && n.list.len() > 1 {
                let Some((_, w)) = n.list.pop_lru() else {
                    break;
                };
                n.blocks -= w as usize;
            }
        }
    }
}

/// Interned node names.
#[derive(Debug, Default)]
pub struct NodeNames {
    ids: HashMap<String, NodeId>,
    next: NodeId,
}

impl NodeNames {
    /// The id of `name`, assigned on first sight.
    pub fn id(&mut self, name: &str) -> NodeId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.next;
        self.next += 1;
        self.ids.insert(name.to_string(), id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(h: &[u64]) -> PromptBlocks {
        PromptBlocks::from_hashes(h.to_vec())
    }

    #[test]
    fn a_node_matches_leading_blocks_it_absorbed_and_stops_at_a_gap() {
        let mut t = NodeTier::new(100);
        t.absorb(7, [(1, 1), (2, 1), (4, 1)]);
        assert_eq!(t.leading_blocks(7, &prompt(&[1, 2, 3, 4])), 2);
        assert_eq!(t.leading_blocks(7, &prompt(&[9, 2])), 0);
        assert_eq!(
            t.leading_blocks(8, &prompt(&[1, 2])),
            0,
            "another node holds nothing"
        );
    }

    #[test]
    fn a_node_keeps_its_most_recent_blocks_within_capacity() {
        let mut t = NodeTier::new(3);
        t.absorb(0, [(1, 1), (2, 1), (3, 1), (4, 1)]);
        assert_eq!(t.blocks_held(0), 3);
        assert_eq!(t.leading_blocks(0, &prompt(&[1])), 0, "oldest went first");
        assert_eq!(t.leading_blocks(0, &prompt(&[2, 3, 4])), 3);
        t.set_capacity(1);
        assert_eq!(t.blocks_held(0), 1);
        let mut off = NodeTier::new(0);
        off.absorb(0, [(1, 1)]);
        assert_eq!(off.blocks_held(0), 0, "capacity 0 turns the tier off");
    }
}
