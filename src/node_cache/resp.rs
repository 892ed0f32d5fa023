//! RESP2 framing: an incremental request decoder with hard limits, and a
//! reply buffer that sends large values without copying them.
//!
//! The decoder keeps state between calls so that a value larger than
//! [`BIG_ARG`] gets one exact allocation that the connection reads into
//! directly (no growth of the read buffer, no copy), and so that a value
//! over the size limit is skipped as it streams in (the client gets an
//! error, the connection stays usable). A length that no limit allows, or
//! bytes that are not RESP, end the connection with Redis's wording.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Longest inline command, and longest `*`/`$` header line (Redis: 64 KiB).
pub const MAX_INLINE: usize = 64 * 1024;
/// Most arguments in one command (Redis: 1024 × 1024 × 1024; kept small here
/// because each argument costs a handle even when empty).
pub const MAX_ARGS: i64 = 1024 * 1024;
/// Largest bulk length accepted at all (Redis's `proto-max-bulk-len`); a
/// larger one closes the connection. Values between the configured value
/// limit and this are skipped with an error instead.
pub const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Arguments at least this long get their own allocation, read into directly.
pub const BIG_ARG: usize = 32 * 1024;
/// Bookkeeping charged per argument against the command limit.
const ARG_OVERHEAD: usize = 64;

/// Size limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single argument (value) accepted.
    pub max_value_bytes: usize,
    /// Largest command (arguments plus bookkeeping) accepted.
    pub max_command_bytes: usize,
}

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The command's arguments (name first).
    Command(Vec<Bytes>),
    /// A command with a value over the limits; it was read and discarded.
    TooLarge,
}

/// Bytes that are not a RESP request; the connection is closed after the reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: too big mbulk count string")]
    CountTooBig,
    #[error("Protocol error: bulk value not followed by CRLF")]
    MissingCrlf,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Start,
    Args,
    Big {
        dest: BytesMut,
        len: usize,
    },
    Skip {
        left: usize,
    },
}

/// Incremental RESP2 request decoder (multibulk and inline).
#[derive(Debug)]
pub struct RespDecoder {
    limits: Limits,
    state: State,
    args: Vec<Bytes>,
    remaining: usize,
    total: usize,
    too_large: bool,
}

/// Parses `<prefix><integer>\r\n` at the start of `buf`: the integer and the
/// bytes the line takes, or `None` if the line is not complete yet.
fn header_line(buf: &[u8], err: ProtocolError) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&c| c == b'\n') else {
        if buf.len() > MAX_INLINE {
            return Err(ProtocolError::CountTooBig);
        }
        return Ok(None);
    };
    let line = &buf[1..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let n = std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(err)?;
    Ok(Some((n, nl + 1)))
}

impl RespDecoder {
    /// A decoder for one connection.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Start,
            args: Vec::new(),
            remaining: 0,
            total: 0,
            too_large: false,
        }
    }

    /// Where the connection should read next, if the decoder is waiting for
    /// the rest of a large value: the value's own buffer and how many bytes
    /// it still needs (read at most that many).
    pub fn direct_target(&mut self) -> Option<(&mut BytesMut, usize)> {
        match &mut self.state {
            State::Big { dest, len } if dest.len() < *len + 2 => {
                let need = *len + 2 - dest.len();
                Some((dest, need))
            }
            _ => None,
        }
    }

    /// Consumes what it can of `buf`; returns the next complete request,
    /// or `None` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        loop {
            match &mut self.state {
                State::Start => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    if buf[0] != b'*' {
                        match self.inline(buf)? {
                            Some(args) if args.is_empty() => continue,
                            Some(args) => return Ok(Some(Decoded::Command(args))),
                            None => return Ok(None),
                        }
                    }
                    let Some((n, used)) = header_line(buf, ProtocolError::MultibulkLength)? else {
                        return Ok(None);
                    };
                    if n > MAX_ARGS {
                        return Err(ProtocolError::MultibulkLength);
                    }
                    buf.advance(used);
                    if n <= 0 {
                        continue; // `*0` and `*-1` are no command, as in Redis.
                    }
                    self.remaining = n as usize;
                    self.args = Vec::with_capacity(self.remaining.min(16));
                    self.total = 0;
                    self.too_large = false;
                    self.state = State::Args;
                }
                State::Args => {
                    if self.remaining == 0 {
                        self.state = State::Start;
                        let args = std::mem::take(&mut self.args);
                        return Ok(Some(if self.too_large {
                            Decoded::TooLarge
                        } else {
                            Decoded::Command(args)
                        }));
                    }
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    if buf[0] != b'$' {
                        return Err(ProtocolError::ExpectedBulk(buf[0] as char));
                    }
                    let Some((len, used)) = header_line(buf, ProtocolError::BulkLength)? else {
                        return Ok(None);
                    };
                    if !(0..=MAX_BULK).contains(&len) {
                        return Err(ProtocolError::BulkLength);
                    }
                    let len = len as usize;
                    let total = self.total + len + ARG_OVERHEAD;
                    if self.too_large
                        || len > self.limits.max_value_bytes
                        || total > self.limits.max_command_bytes
                    {
                        buf.advance(used);
                        self.too_large = true;
                        self.args.clear();
                        self.state = State::Skip { left: len + 2 };
                        continue;
                    }
                    if buf.len() >= used + len + 2 {
                        if &buf[used + len..used + len + 2] != b"\r\n" {
                            return Err(ProtocolError::MissingCrlf);
                        }
                        let arg = Bytes::copy_from_slice(&buf[used..used + len]);
                        buf.advance(used + len + 2);
                        self.push(arg, total);
                    } else if len >= BIG_ARG {
                        buf.advance(used);
                        let mut dest = BytesMut::with_capacity(len + 2);
                        dest.extend_from_slice(buf);
                        buf.clear();
                        self.total = total;
                        self.state = State::Big { dest, len };
                        return Ok(None);
                    } else {
                        return Ok(None);
                    }
                }
                State::Big { dest, len } => {
                    let need = *len + 2 - dest.len();
                    let n = need.min(buf.len());
                    dest.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                    if n < need {
                        return Ok(None);
                    }
                    if !dest.ends_with(b"\r\n") {
                        return Err(ProtocolError::MissingCrlf);
                    }
                    let len = *len;
                    let mut dest = std::mem::take(dest);
                    dest.truncate(len);
                    self.state = State::Args;
                    let total = self.total;
                    self.push(dest.freeze(), total);
                }
                State::Skip { left } => {
                    let n = (*left).min(buf.len());
                    buf.advance(n);
                    *left -= n;
                    if *left > 0 {
                        return Ok(None);
                    }
                    self.remaining -= 1;
                    self.state = State::Args;
                }
            }
        }
    }

    fn push(&mut self, arg: Bytes, total: usize) {
        self.args.push(arg);
        self.total = total;
        self.remaining -= 1;
    }

    /// An inline command (`PING\r\n`, as typed into telnet): whitespace-separated words.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let Some(nl) = buf.iter().position(|&c| c == b'\n') else {
            if buf.len() > MAX_INLINE {
                return Err(ProtocolError::InlineTooBig);
            }
            return Ok(None);
        };
        // Copied out, so that a stored value never pins the read buffer.
        let line = buf.split_to(nl + 1);
        Ok(Some(
            line[..nl]
                .split(|c| c.is_ascii_whitespace())
                .filter(|w| !w.is_empty())
                .map(Bytes::copy_from_slice)
                .collect(),
        ))
    }
}

/// Values at least this long are queued as their own chunk instead of copied.
const ZERO_COPY_MIN: usize = 16 * 1024;

/// Replies waiting to be written: small ones copied together, large values
/// queued as the shared `Bytes` the store holds.
#[derive(Debug, Default)]
pub struct ReplyBuf {
    small: BytesMut,
    chunks: VecDeque<Bytes>,
    /// The client switched to RESP3 with `HELLO 3`: nulls and maps use RESP3 types.
    pub resp3: bool,
}

impl ReplyBuf {
    /// A map of `n` pairs: `%n` in RESP3, a flat array of `2n` in RESP2.
    pub fn map(&mut self, n: usize) {
        if self.resp3 {
            self.small.put_u8(b'%');
            self.small.put_slice(n.to_string().as_bytes());
            self.small.put_slice(b"\r\n");
        } else {
            self.array(2 * n);
        }
    }

    /// `+OK`-style status.
    pub fn simple(&mut self, s: &str) {
        self.small.put_u8(b'+');
        self.small.put_slice(s.as_bytes());
        self.small.put_slice(b"\r\n");
    }

    /// `-ERR …` error line (newlines replaced: RESP errors are one line).
    pub fn error(&mut self, s: &str) {
        self.small.put_u8(b'-');
        for c in s.bytes() {
            self.small
                .put_u8(if c == b'\r' || c == b'\n' { b' ' } else { c });
        }
        self.small.put_slice(b"\r\n");
    }

    /// `:n`.
    pub fn int(&mut self, n: i64) {
        self.small.put_u8(b':');
        self.small.put_slice(n.to_string().as_bytes());
        self.small.put_slice(b"\r\n");
    }

    /// `*n` (the `n` elements follow).
    pub fn array(&mut self, n: usize) {
        self.small.put_u8(b'*');
        self.small.put_slice(n.to_string().as_bytes());
        self.small.put_slice(b"\r\n");
    }

    /// The null reply: `$-1` in RESP2, `_` in RESP3.
    pub fn nil(&mut self) {
        if self.resp3 {
            self.small.put_slice(b"_\r\n");
        } else {
            self.small.put_slice(b"$-1\r\n");
        }
    }

    /// A bulk string.
    pub fn bulk(&mut self, b: &[u8]) {
        self.bulk_header(b.len());
        self.small.put_slice(b);
        self.small.put_slice(b"\r\n");
    }

    /// A bulk string whose bytes are shared, not copied, when large.
    pub fn bulk_bytes(&mut self, b: Bytes) {
        if b.len() < ZERO_COPY_MIN {
            return self.bulk(&b);
        }
        self.bulk_header(b.len());
        self.flush_small();
        self.chunks.push_back(b);
        self.small.put_slice(b"\r\n");
    }

    fn bulk_header(&mut self, len: usize) {
        self.small.put_u8(b'$');
        self.small.put_slice(len.to_string().as_bytes());
        self.small.put_slice(b"\r\n");
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push_back(self.small.split().freeze());
        }
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.small.is_empty() && self.chunks.is_empty()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.small.len() + self.chunks.iter().map(Bytes::len).sum::<usize>()
    }

    /// Takes everything waiting, in order.
    pub fn take(&mut self) -> VecDeque<Bytes> {
        self.flush_small();
        std::mem::take(&mut self.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_value_bytes: 100_000,
        max_command_bytes: 300_000,
    };

    fn all(input: &[u8], chunk: usize) -> Result<Vec<Decoded>, ProtocolError> {
        let mut d = RespDecoder::new(LIMITS);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(x) = d.decode(&mut buf)? {
                out.push(x);
            }
        }
        Ok(out)
    }

    fn cmd(words: &[&[u8]]) -> Decoded {
        Decoded::Command(words.iter().map(|w| Bytes::copy_from_slice(w)).collect())
    }

    #[test]
    fn pipelined_multibulk_and_inline_commands_decode_in_any_chunking() {
        let big = vec![b'x'; 40_000];
        let mut input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nPING\r\n*0\r\n".to_vec();
        input.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$2\r\nbk\r\n$40000\r\n");
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\r\n  get  k \n");
        let want = vec![
            cmd(&[b"SET", b"k", b"hello"]),
            cmd(&[b"PING"]),
            cmd(&[b"SET", b"bk", &big]),
            cmd(&[b"get", b"k"]),
        ];
        for chunk in [1, 2, 7, 1000, 100_000] {
            assert_eq!(all(&input, chunk).unwrap(), want, "chunk {chunk}");
        }
    }

    #[test]
    fn a_value_over_the_limit_is_skipped_and_the_next_command_still_decodes() {
        let mut input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$200000\r\n".to_vec();
        input.extend_from_slice(&vec![b'v'; 200_000]);
        input.extend_from_slice(b"\r\n*1\r\n$4\r\nPING\r\n");
        for chunk in [3, 4096, 1 << 20] {
            assert_eq!(
                all(&input, chunk).unwrap(),
                vec![Decoded::TooLarge, cmd(&[b"PING"])]
            );
        }
    }

    #[test]
    fn garbage_and_absurd_lengths_are_protocol_errors() {
        assert_eq!(
            all(b"*2\r\n+PING\r\n", 100),
            Err(ProtocolError::ExpectedBulk('+'))
        );
        assert_eq!(all(b"*x\r\n", 100), Err(ProtocolError::MultibulkLength));
        assert_eq!(
            all(b"*99999999999\r\n", 100),
            Err(ProtocolError::MultibulkLength)
        );
        assert_eq!(all(b"*1\r\n$-5\r\n", 100), Err(ProtocolError::BulkLength));
        assert_eq!(
            all(b"*1\r\n$9999999999\r\n", 100),
            Err(ProtocolError::BulkLength)
        );
        assert_eq!(
            all(b"*1\r\n$2\r\nabcd", 100),
            Err(ProtocolError::MissingCrlf)
        );
        assert_eq!(
            all(&vec![b'a'; MAX_INLINE + 2], 4096),
            Err(ProtocolError::InlineTooBig)
        );
    }

    #[test]
    fn large_replies_are_queued_without_copying() {
        let mut r = ReplyBuf::default();
        r.simple("OK");
        let v = Bytes::from(vec![1u8; ZERO_COPY_MIN]);
        r.bulk_bytes(v.clone());
        r.nil();
        let chunks = r.take();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            &chunks[0][..],
            format!("+OK\r\n${}\r\n", ZERO_COPY_MIN).as_bytes()
        );
        assert_eq!(chunks[1].as_ptr(), v.as_ptr());
        assert_eq!(&chunks[2][..], b"\r\n$-1\r\n");
    }
}
