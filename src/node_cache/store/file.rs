//! One disk-tier file: its layout, checksum, and how it is read and written.
//!
//! Layout (little-endian), `HEADER_LEN` bytes then key then value:
//!
//! ```text
//!  0  magic "KVMC\x01\0\0\0"
//!  8  key length        u32
//! 12  lm metadata       7 × i32 (fmt, dtype, shape[4], location)
//! 40  expiry            u64 (unix ms, 0 = never)
//! 48  value length      u64
//! 56  checksum          u64 (xxh3 of bytes 8..56, key, value)
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::SystemTime;

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_128;

use super::{Entry, LmMeta};

/// Bytes before the key in every file.
pub const HEADER_LEN: usize = 64;
const MAGIC: [u8; 8] = *b"KVMC\x01\0\0\0";

/// What the start-up scan learns from a file without reading its value.
#[derive(Debug)]
pub struct Scanned {
    pub key: Bytes,
    /// Bytes of the whole file.
    pub size: u64,
    pub expires_at_ms: u64,
    pub mtime: SystemTime,
}

/// The file name of `key`: a hash, so any key byte is allowed.
pub fn file_name(key: &[u8]) -> String {
    format!("{:032x}.kv", xxh3_128(key))
}

/// The bytes of a file holding `key` and `entry`, header and key only
/// (the value is written after it without a copy).
pub fn encode_header(key: &[u8], entry: &Entry) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN + key.len());
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&(key.len() as u32).to_le_bytes());
    for v in entry.meta.to_array() {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&entry.expires_at_ms.to_le_bytes());
    h.extend_from_slice(&(entry.data.len() as u64).to_le_bytes());
    let sum = checksum(&h[8..56], key, &entry.data);
    h.extend_from_slice(&sum.to_le_bytes());
    h.extend_from_slice(key);
    h
}

/// XXH3-64 of the three parts in a row (twox-hash's, which uses AVX2 when
/// the CPU has it: twice SSE2's speed, the whole cost of verifying a read).
fn checksum(fields: &[u8], key: &[u8], value: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = twox_hash::XxHash3_64::with_seed(0);
    h.write(fields);
    h.write(key);
    h.write(value);
    h.finish()
}

struct Header {
    key_len: usize,
    meta: LmMeta,
    expires_at_ms: u64,
    value_len: u64,
    checksum: u64,
}

fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < HEADER_LEN || b[..8] != MAGIC {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let mut meta = [0i32; 7];
    for (i, m) in meta.iter_mut().enumerate() {
        *m = u32_at(12 + 4 * i) as i32;
    }
    Some(Header {
        key_len: u32_at(8) as usize,
        meta: LmMeta::from_array(meta),
        expires_at_ms: u64_at(40),
        value_len: u64_at(48),
        checksum: u64_at(56),
    })
}

/// Decodes a whole file; `None` when it is not a valid file for `key`.
pub fn decode_file(key: &[u8], file: Bytes) -> Option<Entry> {
    let h = parse_header(&file)?;
    let key_end = HEADER_LEN.checked_add(h.key_len)?;
    let end = (key_end as u64).checked_add(h.value_len)?;
    if end != file.len() as u64 || &file[HEADER_LEN..key_end] != key {
        return None;
    }
    if checksum(&file[8..56], key, &file[key_end..]) != h.checksum {
        return None;
    }
    Some(Entry::new(file.slice(key_end..), h.meta, h.expires_at_ms))
}
/// Reads a file expected to be `size` bytes into one exact allocation.
pub fn read_exact_file(path: &Path, size: u64) -> io::Result<Bytes> {
    let mut f = File::open(path)?;
    let actual = f.metadata()?.len();
    if actual != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {actual} bytes, index says {size}"),
        ));
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// Reads a file's header and key: (key, info, mtime) if it is well formed
/// and as long as its header says. The checksum is checked on read.
pub fn scan_file(path: &Path) -> Option<Scanned> {
    let mut f = File::open(path).ok()?;
    let meta = f.metadata().ok()?;
    let mut head = [0u8; HEADER_LEN];
    f.read_exact(&mut head).ok()?;
    let h = parse_header(&head)?;
    if h.key_len > 1 << 20 {
        return None;
    }
    let size = (HEADER_LEN as u64 + h.key_len as u64).checked_add(h.value_len)?;
    if size != meta.len() {
        return None;
    }
    let mut key = vec![0u8; h.key_len];
    f.read_exact(&mut key).ok()?;
    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Some(Scanned {
        key: Bytes::from(key),
        size,
        expires_at_ms: h.expires_at_ms,
        mtime,
    })
}

/// Writes `entry` to `tmp`, then renames it to `path` (readers see all or nothing).
pub fn write_file(tmp: &Path, path: &Path, key: &[u8], entry: &Entry) -> io::Result<()> {
    let mut f = File::create(tmp)?;
    f.write_all(&encode_header(key, entry))?;
    f.write_all(&entry.data)?;
    drop(f);
    fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_plain_xxh3_so_files_stay_readable() {
        // Files written with xxhash-rust's streaming XXH3 (before the
        // switch) must still verify.
        let value: Vec<u8> = (0..300_000).map(|i| (i * 13) as u8).collect();
        let mut old = xxhash_rust::xxh3::Xxh3Default::new();
        old.update(b"fields");
        old.update(b"key");
        old.update(&value);
        assert_eq!(checksum(b"fields", b"key", &value), old.digest());
    }

    #[test]
    fn a_file_round_trips_and_any_flipped_byte_is_detected() {
        let e = Entry::new(
            Bytes::from_static(b"value bytes"),
            LmMeta {
                fmt: 1,
                dtype: 3,
                shape: [2, 3, 4, 5],
                location: 1,
            },
            0,
        );
        let mut file = encode_header(b"key", &e);
        file.extend_from_slice(&e.data);
        let back = decode_file(b"key", Bytes::from(file.clone())).unwrap();
        assert_eq!(back.data, e.data);
        assert_eq!(back.meta, e.meta);
        assert!(decode_file(b"other", Bytes::from(file.clone())).is_none());
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            assert!(decode_file(b"key", Bytes::from(bad)).is_none(), "byte {i}");
        }
        assert!(decode_file(b"key", Bytes::from(file[..file.len() - 1].to_vec())).is_none());
    }
}
