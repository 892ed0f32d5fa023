//! lm:// request headers of arbitrary bytes in every framing: decode or
//! fail, never panic; what decodes re-encodes to an equivalent header.
#![no_main]

use kvmesh::node_cache::lm::{self, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for framing in [Framing::Current, Framing::NoLocation, Framing::LengthOnly] {
        let n = framing.request_len().min(data.len());
        if let Ok(r) = lm::parse_request(framing, &data[..n]) {
            let command = match r.command {
                lm::Command::Put => 1,
                lm::Command::Get => 2,
                lm::Command::Exist => 3,
                lm::Command::List => 4,
                lm::Command::Health => 5,
            };
            let again = lm::encode_request(framing, command, r.length as i32, r.meta, &r.key);
            assert_eq!(lm::parse_request(framing, &again), Ok(r));
        }
    }
});
