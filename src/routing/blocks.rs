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
    pub fn hash(&self, model: &str, bytes: &[u8]) -> Vec<u64> {
        block_hashes(model, bytes, self.block_bytes, self.max_blocks)
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
    fn hash_output_is_stable_across_releases() {
        // Golden values: router instances of different versions must agree.
        let h = block_hashes("m", &[b'a'; 70], 64, 10);
        assert_eq!(h, GOLDEN);
    }

    const GOLDEN: [u64; 2] = [10476133233523496856, 11597445835644781199];
}
