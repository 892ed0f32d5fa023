//! LMCache's remote-server (`lm://`) framing: fixed-size little-endian
//! request and reply headers, pure encode/decode with no I/O.
//!
//! Current LMCache (`lmcache/v1/protocol.py`) packs a request as
//! `struct.pack("iiiiiiiii150s", command, length, fmt, dtype, location,
//! shape0..3, key.ljust(150))` (186 bytes) and a reply as
//! `struct.pack("iiiiiiiii", code, length, fmt, dtype, shape0..3, location)`
//! (36 bytes; location last). Earlier releases had no `location` (182/32
//! bytes) and, before that, no metadata at all (`"ii150s"` / `"ii"`,
//! 158/8 bytes).

use bytes::Bytes;

use super::store::LmMeta;

/// Bytes of the space-padded key field.
pub const KEY_LEN: usize = 150;
/// Reply code: success.
pub const SUCCESS: i32 = 200;
/// Reply code: failure (miss, or unsupported command).
pub const FAIL: i32 = 400;

/// Which LMCache release's header layout is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Framing {
    /// 186-byte requests, 36-byte replies (LMCache ≥ 0.2, with `location`).
    #[default]
    Current,
    /// 182-byte requests, 32-byte replies (fmt, dtype and shape, no `location`).
    NoLocation,
    /// 158-byte requests, 8-byte replies (command, length and key only).
    LengthOnly,
}

impl Framing {
    /// Bytes of one request header.
    pub const fn request_len(self) -> usize {
        match self {
            Framing::Current => 9 * 4 + KEY_LEN,
            Framing::NoLocation => 8 * 4 + KEY_LEN,
            Framing::LengthOnly => 2 * 4 + KEY_LEN,
        }
    }

    /// Bytes of one reply header.
    pub const fn reply_len(self) -> usize {
        match self {
            Framing::Current => 9 * 4,
            Framing::NoLocation => 8 * 4,
            Framing::LengthOnly => 2 * 4,
        }
    }
}

/// The longest request header of any framing.
pub const MAX_REQUEST_LEN: usize = Framing::Current.request_len();
/// The longest reply header of any framing.
pub const MAX_REPLY_LEN: usize = Framing::Current.reply_len();

/// A client command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Put,
    Get,
    Exist,
    List,
    Health,
}

impl Command {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Command::Put => "put",
            Command::Get => "get",
            Command::Exist => "exist",
            Command::List => "list",
            Command::Health => "health",
        }
    }
}

/// One decoded request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    /// Payload bytes that follow (PUT) — never negative.
    pub length: u32,
    /// What a PUT stores and a GET must echo (zeros in `LengthOnly` framing).
    pub meta: LmMeta,
    /// The key with its padding stripped.
    pub key: Bytes,
}

/// A request header that cannot be served; the connection cannot be trusted after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LmError {
    #[error("request header is {got} bytes, expected {want}")]
    Short { got: usize, want: usize },
    #[error("unknown command {0}")]
    UnknownCommand(i32),
    #[error("negative payload length {0}")]
    NegativeLength(i32),
}

fn i32_at(b: &[u8], i: usize) -> i32 {
    i32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Decodes one request header (`buf` must be `framing.request_len()` bytes).
pub fn parse_request(framing: Framing, buf: &[u8]) -> Result<Request, LmError> {
    let want = framing.request_len();
    if buf.len() != want {
        return Err(LmError::Short {
            got: buf.len(),
            want,
        });
    }
    let command = match i32_at(buf, 0) {
        1 => Command::Put,
        2 => Command::Get,
        3 => Command::Exist,
        4 => Command::List,
        5 => Command::Health,
        other => return Err(LmError::UnknownCommand(other)),
    };
    let raw_length = i32_at(buf, 1);
    let length = u32::try_from(raw_length).map_err(|_| LmError::NegativeLength(raw_length))?;
    let meta = match framing {
        Framing::Current => LmMeta {
            fmt: i32_at(buf, 2),
            dtype: i32_at(buf, 3),
            location: i32_at(buf, 4),
            shape: [
                i32_at(buf, 5),
                i32_at(buf, 6),
                i32_at(buf, 7),
                i32_at(buf, 8),
            ],
        },
        Framing::NoLocation => LmMeta {
            fmt: i32_at(buf, 2),
            dtype: i32_at(buf, 3),
            shape: [
                i32_at(buf, 4),
                i32_at(buf, 5),
                i32_at(buf, 6),
                i32_at(buf, 7),
            ],
            location: 0,
        },
        Framing::LengthOnly => LmMeta::default(),
    };
    let key_field = &buf[want - KEY_LEN..];
    // Python's `key.decode().strip()`: padding is spaces (NULs tolerated too).
    let pad = |c: &u8| c.is_ascii_whitespace() || *c == 0;
    let start = key_field
        .iter()
        .position(|c| !pad(c))
        .unwrap_or(key_field.len());
    let end = key_field
        .iter()
        .rposition(|c| !pad(c))
        .map_or(start, |e| e + 1);
    Ok(Request {
        command,
        length,
        meta,
        key: Bytes::copy_from_slice(&key_field[start..end]),
    })
}

/// Encodes one reply header; the first `framing.reply_len()` bytes are it.
pub fn encode_reply(framing: Framing, code: i32, length: u32, meta: LmMeta) -> [u8; MAX_REPLY_LEN] {
    let [s0, s1, s2, s3] = meta.shape;
    let fields: &[i32] = match framing {
        Framing::Current => &[
            code,
            length as i32,
            meta.fmt,
            meta.dtype,
            s0,
            s1,
            s2,
            s3,
            meta.location,
        ],
        Framing::NoLocation => &[code, length as i32, meta.fmt, meta.dtype, s0, s1, s2, s3],
        Framing::LengthOnly => &[code, length as i32],
    };
    let mut out = [0u8; MAX_REPLY_LEN];
    for (i, v) in fields.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// The metadata LMCache's own server sends with a miss and with EXIST,
/// HEALTH and LIST answers: `MemoryFormat(1)`, `torch.float16` (2), shape
/// zeros, no location.
pub const EMPTY_META: LmMeta = LmMeta {
    fmt: 1,
    dtype: 2,
    shape: [0; 4],
    location: 0,
};

/// Encodes a request header as LMCache's client does (for tests and tools).
pub fn encode_request(
    framing: Framing,
    command: i32,
    length: i32,
    meta: LmMeta,
    key: &[u8],
) -> Vec<u8> {
    let [s0, s1, s2, s3] = meta.shape;
    let fields: &[i32] = match framing {
        Framing::Current => &[
            command,
            length,
            meta.fmt,
            meta.dtype,
            meta.location,
            s0,
            s1,
            s2,
            s3,
        ],
        Framing::NoLocation => &[command, length, meta.fmt, meta.dtype, s0, s1, s2, s3],
        Framing::LengthOnly => &[command, length],
    };
    let mut out: Vec<u8> = fields.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut k = key[..key.len().min(KEY_LEN)].to_vec();
    k.resize(KEY_LEN, b' ');
    out.extend_from_slice(&k);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: LmMeta = LmMeta {
        fmt: 3,
        dtype: 4,
        shape: [32, 2, 256, 1024],
        location: 1,
    };

    #[test]
    fn a_current_request_decodes_every_field_and_strips_the_key() {
        let buf = encode_request(Framing::Current, 1, 4096, META, b"model@1@0@abc@half");
        assert_eq!(buf.len(), 186);
        let r = parse_request(Framing::Current, &buf).unwrap();
        assert_eq!(r.command, Command::Put);
        assert_eq!(r.length, 4096);
        assert_eq!(r.meta, META);
        assert_eq!(&r.key[..], b"model@1@0@abc@half");
    }

    #[test]
    fn the_miss_reply_is_byte_exact() {
        let b = encode_reply(Framing::Current, FAIL, 0, EMPTY_META);
        let want: Vec<u8> = [400i32, 0, 1, 2, 0, 0, 0, 0, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(&b[..36], &want[..]);
    }

    #[test]
    fn older_framings_have_their_sizes_and_field_orders() {
        let buf = encode_request(Framing::NoLocation, 2, 0, META, b"k");
        assert_eq!(buf.len(), 182);
        let r = parse_request(Framing::NoLocation, &buf).unwrap();
        assert_eq!(
            r.meta,
            LmMeta {
                location: 0,
                ..META
            }
        );
        let buf = encode_request(Framing::LengthOnly, 3, 0, META, b"k");
        assert_eq!(buf.len(), 158);
        assert_eq!(
            parse_request(Framing::LengthOnly, &buf).unwrap().meta,
            LmMeta::default()
        );
        let b = encode_reply(Framing::NoLocation, SUCCESS, 9, META);
        assert_eq!(&b[28..32], &1024i32.to_le_bytes());
        assert_eq!(&b[32..36], &[0; 4]);
        let b = encode_reply(Framing::LengthOnly, SUCCESS, 9, META);
        assert_eq!(&b[..8], &[200, 0, 0, 0, 9, 0, 0, 0]);
    }

    #[test]
    fn bad_commands_and_negative_lengths_are_errors() {
        let buf = encode_request(Framing::Current, 9, 0, META, b"k");
        assert_eq!(
            parse_request(Framing::Current, &buf),
            Err(LmError::UnknownCommand(9))
        );
        let buf = encode_request(Framing::Current, 1, -5, META, b"k");
        assert_eq!(
            parse_request(Framing::Current, &buf),
            Err(LmError::NegativeLength(-5))
        );
        assert!(matches!(
            parse_request(Framing::Current, &buf[..10]),
            Err(LmError::Short { .. })
        ));
    }
}
