//! Chained prefix-block hashes: `h[i] = xxh3(h[i-1] ‖ block[i])`, seeded by the model.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Splits canonical prompt bytes into fixed-size blocks and chains their hashes.
///
/// `h[i]` names the whole prefix up to and including block `i`: two prompts share
/// their first `k` hashes exactly when they share their first `k` blocks (and
/// model). The last block may be partial; it is hashed as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHasher {
    /// Bytes per block (64 ≈ 16 tokens, vLLM's block size).
    pub block_bytes: usize,
    /// At most this many leading blocks are hashed.
    pub max_blocks: usize,
}

impl Default for BlockHasher {
    fn default() -> Self {
        Self {
            block_bytes: 64,
            max_blocks: 4096,
        }
    }
}

impl BlockHasher {
    /// The most canonical bytes that are ever hashed; the canonicaliser can stop there.
    pub fn max_bytes(&self) -> usize {
        self.block_bytes.saturating_mul(self.max_blocks)
    }

    /// Chained hashes of `bytes`, seeded by `model` (which also names LoRA
    /// adapters). Pass an owned `Vec` to keep the bytes without a copy.
    pub fn hash(&self, model: &str, bytes: impl Into<Vec<u8>>) -> PromptBlocks {
        let mut bytes = bytes.into();
        bytes.truncate(self.max_bytes());
        PromptBlocks {
            hashes: block_hashes(model, &bytes, self.block_bytes, self.max_blocks),
            seed: xxh3_64(model.as_bytes()),
            block_bytes: self.block_bytes.max(1),
            bytes,
            known_tail: None,
        }
    }
}

/// Leading blocks that the prefix index records one by one.
pub const DENSE_BLOCKS: usize = 16;

/// Beyond the dense head, the index records every this-many-th block (and
/// the last): a 220 KB prompt costs ~450 index entries instead of ~3500, and
/// a match is still found to the block where it ends (see `PrefixIndex::lookup`).
pub const INDEX_STRIDE: usize = 8;

/// Marks tail hashes so they never equal a whole-block hash.
const TAIL_TWEAK: u64 = 0x7461_696c_5f6b_766d;

/// A prompt's last, partial block as the index records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// Hash of the block before it (the model seed for block 0).
    pub parent: u64,
    /// Its length in bytes (less than a block).
    pub len: u16,
    /// Hash of its bytes, in a domain apart from whole-block hashes.
    pub hash: u64,
}

/// One prompt's blocks: chained hashes plus what is needed to hash the
/// leading part of any block ("tails").
///
/// Why tails: an engine caches a prompt's last, partial block once its own
/// output fills it, so the next chat turn (whose prompt carries that output)
/// finds it cached. The whole-block hash of the earlier, shorter block can
/// never match the later, longer one; a hash of the later block's first
/// `len` bytes can, exactly when the earlier block is a prefix of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptBlocks {
    /// `h[i]` for each block, the last one possibly partial.
    pub hashes: Vec<u64>,
    seed: u64,
    block_bytes: usize,
    bytes: Vec<u8>,
    /// The tail, when known without the bytes (received from a peer).
    known_tail: Option<Tail>,
}

impl PromptBlocks {
    /// Blocks from bare hashes (no tail information), e.g. from a trace.
    pub fn from_hashes(hashes: Vec<u64>) -> Self {
        Self {
            hashes,
            ..Self::default()
        }
    }

    /// Blocks as another router described them: hashes and the tail.
    pub fn from_parts(hashes: Vec<u64>, tail: Option<Tail>) -> Self {
        Self {
            hashes,
            known_tail: tail,
            ..Self::default()
        }
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when the prompt has no blocks.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Positions the prefix index records, in ascending order: the dense
    /// head, every [`INDEX_STRIDE`]-th block after it, and the last block.
    pub fn indexed_positions(&self) -> impl DoubleEndedIterator<Item = usize> + Clone + use<> {
        let n = self.hashes.len();
        let dense = n.min(DENSE_BLOCKS);
        let first_sparse = DENSE_BLOCKS.next_multiple_of(INDEX_STRIDE) + INDEX_STRIDE - 1;
        let sparse = (first_sparse..n.saturating_sub(1)).step_by(INDEX_STRIDE);
        let last = (n > dense).then(|| n - 1);
        (0..dense).chain(sparse).chain(last)
    }

    /// The first indexed position at or after `i` (the last block if none).
    pub fn next_indexed(&self, i: usize) -> usize {
        let last = self.hashes.len().saturating_sub(1);
        let p = if i < DENSE_BLOCKS {
            i
        } else {
            i + (INDEX_STRIDE - 1 - i % INDEX_STRIDE)
        };
        p.min(last)
    }

    /// The hash block `i` chains from.
    pub fn parent(&self, i: usize) -> u64 {
        if i == 0 {
            self.seed
        } else {
            self.hashes[i - 1]
        }
    }

    /// Hash of the first `len` bytes of block `i`, if this prompt has them.
    pub fn tail_hash(&self, i: usize, len: usize) -> Option<u64> {
        let start = i.checked_mul(self.block_bytes)?;
        let have = self.bytes.len().saturating_sub(start).min(self.block_bytes);
        (i < self.hashes.len() && len > 0 && len <= have).then(|| {
            xxh3_64_with_seed(&self.bytes[start..start + len], self.parent(i) ^ TAIL_TWEAK)
        })
    }

    /// This prompt's last block when it is partial.
    pub fn tail(&self) -> Option<Tail> {
        if self.known_tail.is_some() {
            return self.known_tail;
        }
        let last = self.hashes.len().checked_sub(1)?;
        let len = self.bytes.len() - last * self.block_bytes;
        if len >= self.block_bytes {
            return None;
        }
        Some(Tail {
            parent: self.parent(last),
            len: u16::try_from(len).ok()?,
            hash: self.tail_hash(last, len)?,
        })
    }
}

/// Chained block hashes of `bytes` (see [`BlockHasher`]).
pub fn block_hashes(model: &str, bytes: &[u8], block_bytes: usize, max_blocks: usize) -> Vec<u64> {
    let block_bytes = block_bytes.max(1);
    let n = bytes.len().div_ceil(block_bytes).min(max_blocks);
    let mut out = Vec::with_capacity(n);
    let mut prev = xxh3_64(model.as_bytes());
    for block in bytes.chunks(block_bytes).take(n) {
        // Seeding the block hash with the previous hash is the chain: it is
        // xxh3 of (h[i-1], block[i]) without copying the block.
        prev = xxh3_64_with_seed(block, prev);
        out.push(prev);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefix_gives_shared_leading_hashes() {
        let a = block_hashes("m", &[b'a'; 200], 64, 100);
        let mut other = vec![b'a'; 128];
        other.extend_from_slice(&[b'b'; 72]);
        let b = block_hashes("m", &other, 64, 100);
        assert_eq!(a.len(), 4);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        assert_ne!(a[3], b[3]);
    }

    #[test]
    fn model_seeds_the_chain() {
        let a = block_hashes("llama", b"hello world", 64, 100);
        let b = block_hashes("qwen", b"hello world", 64, 100);
        assert_ne!(a, b);
    }

    #[test]
    fn equal_block_content_at_different_depth_hashes_differently() {
        let h = block_hashes("m", &[b'x'; 128], 64, 100);
        assert_ne!(h[0], h[1]);
    }

    #[test]
    fn hashing_stops_at_max_blocks() {
        assert_eq!(block_hashes("m", &[0; 1000], 64, 3).len(), 3);
        assert_eq!(block_hashes("m", &[0; 65], 64, 100).len(), 2);
        assert!(block_hashes("m", b"", 64, 100).is_empty());
    }

    #[test]
    fn a_partial_last_block_is_found_again_by_a_prompt_that_extends_it() {
        let hasher = BlockHasher::default();
        let short = hasher.hash("m", [b'a'; 64 + 20]);
        let mut longer_bytes = vec![b'a'; 64 + 20];
        longer_bytes.extend_from_slice(&[b'b'; 100]);
        let longer = hasher.hash("m", longer_bytes);
        let tail = short.tail().expect("20-byte tail");
        assert_eq!((tail.len, tail.parent), (20, short.hashes[0]));
        assert_eq!(longer.tail_hash(1, 20), Some(tail.hash));
        assert!(!longer.hashes.contains(&tail.hash));
        // A prompt that differs inside those 20 bytes does not match.
        let mut other = vec![b'a'; 64 + 19];
        other.push(b'z');
        assert_ne!(hasher.hash("m", other).tail_hash(1, 20), Some(tail.hash));
        // Whole blocks have no tail.
        assert_eq!(hasher.hash("m", [b'a'; 128]).tail(), None);
    }

    #[test]
    fn the_index_records_a_dense_head_then_every_eighth_block_and_the_last() {
        let hasher = BlockHasher::default();
        let p = |n: usize| {
            hasher
                .hash("m", vec![b'x'; n * 64 - 1])
                .indexed_positions()
                .collect::<Vec<_>>()
        };
        assert_eq!(p(3), vec![0, 1, 2]);
        assert_eq!(p(16), (0..16).collect::<Vec<_>>());
        let mut want: Vec<usize> = (0..16).collect();
        want.extend([23, 31, 39, 40]);
        assert_eq!(p(41), want);
        assert_eq!(*p(40).last().expect("last"), 39);
        assert_eq!(p(40).iter().filter(|&&i| i == 39).count(), 1);
        assert_eq!(p(3500).len(), 16 + 435 + 1); // 23, 31, …, 3495; then 3499
        let b = hasher.hash("m", [b'x'; 41 * 64 - 1]);
        assert_eq!(
            [
                b.next_indexed(5),
                b.next_indexed(16),
                b.next_indexed(23),
                b.next_indexed(24)
            ],
            [5, 23, 23, 31]
        );
        assert_eq!(b.next_indexed(39), 39);
        assert_eq!(b.next_indexed(40), 40);
    }

    #[test]
    fn hash_output_is_stable_across_releases() {
        // Golden values: router instances of different versions must agree.
        let h = block_hashes("m", &[b'a'; 70], 64, 10);
        assert_eq!(h, GOLDEN);
    }

    const GOLDEN: [u64; 2] = [10476133233523496856, 11597445835644781199];
}
