//! The RESP decoder on arbitrary bytes, fed in pieces whose sizes come from
//! the input too: it must never panic, allocate past its limits, or decode
//! differently than when fed all at once.
#![no_main]

use bytes::BytesMut;
use kvmesh::node_cache::resp::{Decoded, Limits, ProtocolError, RespDecoder};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_value_bytes: 1 << 20,
    max_command_bytes: 4 << 20,
};

fn decode(input: &[u8], cut: usize) -> (Vec<Decoded>, Option<ProtocolError>) {
    let mut d = RespDecoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(cut.max(1)) {
        let mut piece = piece;
        if let Some((dest, need)) = d.direct_target() {
            let k = need.min(piece.len());
            dest.extend_from_slice(&piece[..k]);
            piece = &piece[k..];
        }
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(x)) => out.push(x),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input, input.len());
    let split = decode(input, cut as usize % 17 + 1);
    assert_eq!(whole, split);
});
