//! Disk-tier throughput: 2 GiB of 1 MiB values spilled through the write
//! queue (the writer thread: checksum, temp file, rename), the index rebuilt
//! from the directory, then every value read back and verified — one reader,
//! then two. Compare with `dd` on the same disk (benches/node_cache.sh).
//!
//! Usage: cargo bench --bench node_cache_disk -- DIR

use std::time::Instant;

use bytes::Bytes;
use kvmesh::node_cache::metrics::NodeCacheMetrics;
use kvmesh::node_cache::store::disk::{DiskConfig, DiskTier};
use kvmesh::node_cache::store::{Entry, LmMeta};

const VALUE: usize = 1 << 20;
const COUNT: usize = 2048;

fn main() {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("kvmesh-disk-bench"));
    let _ = std::fs::remove_dir_all(&dir);
    let config = DiskConfig {
        dir: dir.clone(),
        capacity: 4 << 30,
        queue_bytes: 4 << 30,
    };
    let mib = (VALUE * COUNT) as f64 / (1 << 20) as f64;
    let data: Vec<u8> = (0..VALUE).map(|i| (i * 7 + i / 4096) as u8).collect();
    let data = Bytes::from(data);

    let disk = DiskTier::open(config.clone(), NodeCacheMetrics::default()).expect("open");
    let t = Instant::now();
    for i in 0..COUNT {
        let entry = Entry::new(data.clone(), LmMeta::default(), 0);
        disk.spill(Bytes::from(format!("key-{i}")), entry, 0);
    }
    disk.close();
    let write = t.elapsed().as_secs_f64();
    drop(disk);
    println!(
        "disk tier write: {:.0} MiB/s ({mib:.0} MiB in {write:.2} s)",
        mib / write
    );

    let t = Instant::now();
    let disk = DiskTier::open(config, NodeCacheMetrics::default()).expect("reopen");
    println!(
        "index rebuild: {} files in {:.0} ms",
        disk.usage().1,
        t.elapsed().as_secs_f64() * 1e3
    );
    for readers in [1usize, 2] {
        let t = Instant::now();
        std::thread::scope(|s| {
            for r in 0..readers {
                let disk = &disk;
                s.spawn(move || {
                    for i in (r..COUNT).step_by(readers) {
                        let e = disk.read(format!("key-{i}").as_bytes(), 0).expect("hit");
                        assert_eq!(e.data.len(), VALUE);
                    }
                });
            }
        });
        let read = t.elapsed().as_secs_f64();
        println!(
            "disk tier read, {readers} reader(s), verified: {:.0} MiB/s",
            mib / read
        );
    }
    drop(disk);
    let _ = std::fs::remove_dir_all(&dir);
}
