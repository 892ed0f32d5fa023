//! Deterministic tokenizer stand-in and stand-in text generation.
//!
//! Real tokenizers (BPE) make tokens of about 4 bytes of English text, with a
//! leading space glued to the word that follows it. This stand-in does the
//! same by rule: a token is an optional single leading space plus up to 4
//! further bytes of one word; punctuation and newlines are tokens of their
//! own. Token ids are a hash of the token's bytes. Tokens are therefore 1–5
//! bytes, so engine blocks of 16 tokens never line up with the router's
//! 64-byte blocks — as with real engines.
//!
//! Tokenizing is prefix-stable at token boundaries: if `a` ends at a
//! boundary (after a space, newline or punctuation), tokens(a + b) starts
//! with tokens(a). Chat templates here end every piece with a newline, so a
//! later chat turn's tokens extend the earlier turn's.

use xxhash_rust::xxh3::xxh3_64;

/// Longest run of word bytes in one token (plus an optional leading space).
const MAX_WORD_BYTES: usize = 4;

/// Token ids of `text`.
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / 4 + 1);
    for_each_token(text.as_bytes(), |t| out.push(token_id(t)));
    out
}

/// Number of tokens of `text`.
pub fn count_tokens(text: &str) -> usize {
    let mut n = 0;
    for_each_token(text.as_bytes(), |_| n += 1);
    n
}

fn token_id(bytes: &[u8]) -> u32 {
    xxh3_64(bytes) as u32
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80 || b == b'_'
}

fn for_each_token(bytes: &[u8], mut emit: impl FnMut(&[u8])) {
    for_each_token_range(bytes, |r| emit(&bytes[r]));
}

/// Calls `emit` with the byte range of each token of `bytes`, in order.
pub fn for_each_token_range(bytes: &[u8], mut emit: impl FnMut(std::ops::Range<usize>)) {
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        // One leading space joins the word after it.
        if bytes[i] == b' ' && i + 1 < bytes.len() && is_word(bytes[i + 1]) {
            i += 1;
        }
        if is_word(bytes[i]) {
            let word_start = i;
            while i < bytes.len() && is_word(bytes[i]) && i - word_start < MAX_WORD_BYTES {
                i += 1;
            }
        } else {
            i += 1;
        }
        emit(start..i);
    }
}

/// Syllables the stand-in words are made of.
const SYLLABLES: [&str; 32] = [
    "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ber", "dan", "fol", "gim", "hur", "jes",
    "kor", "lin", "mar", "nus", "pol", "qua", "ren", "sil", "tam", "und", "vor", "wes", "xan",
    "yul", "zen", "ath", "eko", "ist",
];

/// A deterministic stand-in text of exactly `tokens` tokens, drawn from
/// `seed`: words of 2–4 syllables, each after a space, a full stop every
/// dozen words. The same seed always gives the same text.
pub fn text_of_tokens(seed: u64, tokens: usize) -> String {
    let mut out = String::with_capacity(tokens * 5);
    let mut produced = 0;
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut words = 0u64;
    while produced < tokens {
        state = splitmix(state);
        let syllables = 2 + (state % 3) as usize;
        let mut word = String::new();
        for k in 0..syllables {
            word.push_str(SYLLABLES[((state >> (8 + 5 * k)) & 31) as usize]);
        }
        // " " + word: tokens of at most 4 word bytes, the first with the space.
        let word_tokens = word.len().div_ceil(MAX_WORD_BYTES);
        let room = tokens - produced;
        if word_tokens > room {
            word.truncate(room * MAX_WORD_BYTES);
        }
        out.push(' ');
        out.push_str(&word);
        produced += word_tokens.min(room);
        words += 1;
        if words.is_multiple_of(12) && produced < tokens {
            out.push('.');
            produced += 1;
        }
    }
    out
}

/// SplitMix64: a tiny, well-distributed step for deterministic streams.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_into_tokens_of_at_most_four_bytes_with_their_space() {
        let t: Vec<String> = {
            let mut v = Vec::new();
            for_each_token(b"Hello world, extraordinary!\n", |b| {
                v.push(String::from_utf8_lossy(b).into_owned())
            });
            v
        };
        assert_eq!(
            t,
            [
                "Hell", "o", " worl", "d", ",", " extr", "aord", "inar", "y", "!", "\n"
            ]
        );
    }

    #[test]
    fn text_ending_at_a_boundary_is_a_token_prefix_of_its_extension() {
        let a = "System: be brief.\nUser: hi there\n";
        let b = format!("{a}Assistant: hello, how can I help?\n");
        let (ta, tb) = (tokenize(a), tokenize(&b));
        assert_eq!(&tb[..ta.len()], &ta[..]);
    }

    #[test]
    fn stand_in_text_has_exactly_the_requested_tokens_and_is_seeded() {
        for n in [0, 1, 7, 16, 100, 512, 2048] {
            assert_eq!(count_tokens(&text_of_tokens(42, n)), n, "n = {n}");
        }
        assert_ne!(text_of_tokens(1, 50), text_of_tokens(2, 50));
        assert_eq!(text_of_tokens(3, 50), text_of_tokens(3, 50));
    }

    #[test]
    fn about_four_bytes_per_token_so_blocks_do_not_align() {
        let text = text_of_tokens(9, 10_000);
        let per_token = text.len() as f64 / 10_000.0;
        assert!(
            (3.0..5.0).contains(&per_token),
            "{per_token} bytes per token"
        );
    }
}
