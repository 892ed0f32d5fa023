//! Property tests of the node cache's parsers: arbitrary bytes never panic
//! them, and what they decode does not depend on how the bytes were split.
//! (The cargo-fuzz targets in `fuzz/` run the same parsers unbounded.)

use bytes::{Bytes, BytesMut};
use kvmesh::node_cache::lm::{self, Framing};
use kvmesh::node_cache::resp::{Decoded, Limits, ProtocolError, RespDecoder};
use kvmesh::node_cache::store::LmMeta;
use kvmesh::node_cache::store::file::decode_file;
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    max_value_bytes: 64 * 1024,
    max_command_bytes: 256 * 1024,
};

/// Feeds `input` in pieces of the given sizes (cycled); returns what was
/// decoded up to the first error, and the error.
fn decode_all(input: &[u8], cuts: &[usize]) -> (Vec<Decoded>, Option<ProtocolError>) {
    let mut d = RespDecoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts[i % cuts.len()].clamp(1, rest.len());
        i += 1;
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        // Read as the server does: into the decoder's own buffer when it asks.
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

fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

fn resp_like() -> impl Strategy<Value = Vec<u8>> {
    // Mostly RESP-shaped fragments, so the fuzzing reaches deep states.
    let frag = prop_oneof![
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()),
        Just(b"$40000\r\n".to_vec()),
        Just(b"$70000\r\n".to_vec()),
        "[0-9]{1,12}".prop_map(|s| s.into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    proptest::collection::vec(frag, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_resp_decoder_never_panics_and_ignores_how_bytes_are_split(
        input in prop_oneof![resp_like(), proptest::collection::vec(any::<u8>(), 0..2048)],
        cuts in proptest::collection::vec(1usize..300, 1..8),
    ) {
        let whole = decode_all(&input, &[input.len().max(1)]);
        let split = decode_all(&input, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn lm_headers_of_any_bytes_decode_or_fail_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        for framing in [Framing::Current, Framing::NoLocation, Framing::LengthOnly] {
            let n = framing.request_len().min(bytes.len());
            let _ = lm::parse_request(framing, &bytes[..n]);
        }
    }

    #[test]
    fn lm_requests_round_trip_through_the_codec(
        command in 1i32..=5,
        length in 0i32..i32::MAX,
        meta in any::<[i32; 7]>(),
        key in "[!-~]{0,150}",
    ) {
        let meta = LmMeta::from_array(meta);
        let buf = lm::encode_request(Framing::Current, command, length, meta, key.as_bytes());
        let r = lm::parse_request(Framing::Current, &buf).unwrap();
        prop_assert_eq!(r.length, length as u32);
        prop_assert_eq!(r.meta, meta);
        prop_assert_eq!(&r.key[..], key.as_bytes());
    }

    #[test]
    fn disk_files_of_any_bytes_are_rejected_or_decoded_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let _ = decode_file(b"k", Bytes::from(bytes));
    }
}

proptest! {
    // Large arguments make each case costly: fewer cases.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_command_encoded_as_multibulk_decodes_to_its_arguments(
        commands in proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..40),
                    proptest::collection::vec(any::<u8>(), 30_000..50_000),
                ],
                1..4,
            ),
            1..4,
        ),
        cuts in proptest::collection::vec(1usize..70_000, 1..6),
    ) {
        let input: Vec<u8> = commands.iter().flat_map(|c| encode(c)).collect();
        let (got, err) = decode_all(&input, &cuts);
        prop_assert_eq!(err, None);
        let want: Vec<Decoded> = commands
            .iter()
            .map(|c| Decoded::Command(c.iter().map(|a| Bytes::copy_from_slice(a)).collect()))
            .collect();
        prop_assert_eq!(got, want);
    }
}
