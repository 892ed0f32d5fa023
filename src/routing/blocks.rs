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

    /// Chained hashes of `bytes`, seeded by `model` (which also names LoRA adapters).
    pub fn hash(&self, model: &str, bytes: &[u8]) -> PromptBlocks {
        let bytes = &bytes[..bytes.len().min(self.max_bytes())];
        PromptBlocks {
            hashes: block_hashes(model, bytes, self.block_bytes, self.max_blocks),
            seed: xxh3_64(model.as_bytes()),
            block_bytes: self.block_bytes.max(1),
            bytes: bytes.to_vec(),
        }
    }
}

/// Granularity of partial-block ("tail") hashes, in bytes.
pub const TAIL_STEP: usize = 8;

/// Marks tail hashes so they never equal a whole-block hash.
const TAIL_TWEAK: u64 = 0x7461_696c_5f6b_766d;

/// One prompt's blocks: chained hashes plus what is needed to hash the
/// leading part of any block ("tails").
///
/// Why tails: an engine caches a prompt's last, partial block once its own
/// output fills it, so the next chat turn (whose prompt carries that output)
/// finds it cached. A whole-block hash of the earlier, shorter block can never
/// match the later, longer one; a tail hash of its first `8·k` bytes can.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptBlocks {
    /// `h[i]` for each block, the last one possibly partial.
    pub hashes: Vec<u64>,
    seed: u64,
    block_bytes: usize,
    bytes: Vec<u8>,
}

impl PromptBlocks {
    /// Blocks from bare hashes (no tail information), e.g. from a trace.
    pub fn from_hashes(hashes: Vec<u64>) -> Self {
        Self {
            hashes,
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

    /// Bytes of block `i` that exist in this prompt.
    fn block_len(&self, i: usize) -> usize {
        let start = i * self.block_bytes;
        self.bytes.len().saturating_sub(start).min(self.block_bytes)
    }

    /// Hash of the first `len` bytes of block `i`, chained to `h[i-1]`.
    fn tail_hash(&self, i: usize, len: usize) -> u64 {
        let prev = if i == 0 {
            self.seed
        } else {
            self.hashes[i - 1]
        };
        let start = i * self.block_bytes;
        xxh3_64_with_seed(&self.bytes[start..start + len], prev ^ TAIL_TWEAK)
    }

    /// Tail hashes of block `i`, longest first: its first `8·k` bytes for
    /// every `8·k` shorter than a whole block that this prompt has.
    pub fn tail_probes(&self, i: usize) -> impl Iterator<Item = u64> + '_ {
        let have = if i < self.hashes.len() {
            self.block_len(i)
        } else {
            0
        };
        let top = have.min(self.block_bytes.saturating_sub(1)) / TAIL_STEP;
        (1..=top)
            .rev()
            .map(move |k| self.tail_hash(i, k * TAIL_STEP))
    }

    /// The tail hash to record for this prompt: its last block's leading
    /// `8·k` bytes, when that block is partial and has at least 8 bytes.
    pub fn recorded_tail(&self) -> Option<u64> {
        let last = self.hashes.len().checked_sub(1)?;
        let have = self.block_len(last);
        (have >= TAIL_STEP && have < self.block_bytes)
            .then(|| self.tail_hash(last, have / TAIL_STEP * TAIL_STEP))
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
    fn a_partial_last_block_is_found_again_by_a_longer_prompt() {
        let hasher = BlockHasher::default();
        let short = hasher.hash("m", &[b'a'; 64 + 20]);
        let mut longer_bytes = vec![b'a'; 64 + 20];
        longer_bytes.extend_from_slice(&[b'b'; 100]);
        let longer = hasher.hash("m", &longer_bytes);
        let tail = short.recorded_tail().expect("20-byte tail");
        assert!(longer.tail_probes(1).any(|t| t == tail));
        assert!(!longer.tail_probes(2).any(|t| t == tail));
        assert!(!longer.hashes.contains(&tail));
        // Whole blocks and tiny tails record nothing.
        assert_eq!(hasher.hash("m", &[b'a'; 128]).recorded_tail(), None);
        assert_eq!(hasher.hash("m", &[b'a'; 64 + 7]).recorded_tail(), None);
    }

    #[test]
    fn hash_output_is_stable_across_releases() {
        // Golden values: router instances of different versions must agree.
        let h = block_hashes("m", &[b'a'; 70], 64, 10);
        assert_eq!(h, GOLDEN);
    }

    const GOLDEN: [u64; 2] = [10476133233523496856, 11597445835644781199];
}
