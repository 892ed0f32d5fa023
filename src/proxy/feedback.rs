//! Engine feedback: finds the `cached_tokens` an engine reports in `usage`
//! (a JSON answer, or the final usage chunk of a stream) as the body passes
//! through, without buffering it.

const KEY: &[u8] = b"\"cached_tokens\":";

/// Scans body chunks for the last `"cached_tokens": N`.
#[derive(Debug, Default)]
pub struct CachedTokens {
    /// The end of the previous chunk, in case the key straddles two.
    carry: Vec<u8>,
    found: Option<u64>,
}

impl CachedTokens {
    /// Looks at the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let mut at = 0;
        while let Some(i) = find(&buf[at..], KEY) {
            let start = at + i + KEY.len();
            let digits: Vec<u8> = buf[start..]
                .iter()
                .skip_while(|b| b.is_ascii_whitespace())
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            let complete = buf[start..]
                .iter()
                .skip_while(|b| b.is_ascii_whitespace())
                .nth(digits.len())
                .is_some();
            if !digits.is_empty() && complete {
                self.found = std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|d| d.parse().ok());
            }
            at = start;
        }
        // Keep enough to catch a key (and its number) cut by the chunk edge.
        let keep = buf.len().min(KEY.len() + 24);
        self.carry = buf[buf.len() - keep..].to_vec();
    }

    /// The last value seen, if any.
    pub fn found(&self) -> Option<u64> {
        self.found
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_found_in_json_and_across_chunk_edges() {
        let mut s = CachedTokens::default();
        s.feed(br#"{"usage":{"prompt_tokens":40,"prompt_tokens_details":{"cached_tokens": 32}}}"#);
        assert_eq!(s.found(), Some(32));
        let text = b"data: {\"usage\":{\"prompt_tokens_details\":{\"cached_tokens\":128}}}\n\ndata: [DONE]\n\n";
        for cut in 1..text.len() {
            let mut s = CachedTokens::default();
            s.feed(&text[..cut]);
            s.feed(&text[cut..]);
            assert_eq!(s.found(), Some(128), "cut at {cut}");
        }
        let mut s = CachedTokens::default();
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
        assert_eq!(s.found(), None);
    }
}
