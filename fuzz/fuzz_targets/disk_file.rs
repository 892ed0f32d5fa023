//! Disk-tier files of arbitrary bytes: rejected or decoded, never a panic.
#![no_main]

use bytes::Bytes;
use kvmesh::node_cache::store::file::decode_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_file(b"key", Bytes::copy_from_slice(data));
});
