//! The tiered store behind both protocols: RAM first, then disk.
//!
//! Reads try RAM, then the disk tier (whose file is verified, then the value
//! is promoted back into RAM, keeping its file: a value read back from disk
//! costs no second write when it is evicted again). Writes go to RAM; what
//! RAM evicts is queued for the disk tier and written behind.

pub mod disk;
pub mod file;
pub mod ram;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use self::disk::{DiskConfig, DiskError, DiskTier};
use self::ram::RamTier;
use super::metrics::{DISK, NodeCacheMetrics, RAM};

/// What LMCache stores beside a chunk and expects back on GET: memory
/// format, dtype, shape (padded to four dimensions) and location.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LmMeta {
    pub fmt: i32,
    pub dtype: i32,
    pub shape: [i32; 4],
    pub location: i32,
}

impl LmMeta {
    /// fmt, dtype, shape[0..4], location.
    pub fn to_array(self) -> [i32; 7] {
        let [a, b, c, d] = self.shape;
        [self.fmt, self.dtype, a, b, c, d, self.location]
    }

    /// The inverse of [`LmMeta::to_array`].
    pub fn from_array(v: [i32; 7]) -> Self {
        Self {
            fmt: v[0],
            dtype: v[1],
            shape: [v[2], v[3], v[4], v[5]],
            location: v[6],
        }
    }
}

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub data: Bytes,
    pub meta: LmMeta,
    /// Unix time in milliseconds after which the value is gone; 0 = never.
    pub expires_at_ms: u64,
    /// The disk-tier file this value was read from (0: none). Evicting it
    /// again while that file is current costs no write.
    pub disk_generation: u64,
}

impl Entry {
    /// A value with its metadata and expiry (0 = never).
    pub fn new(data: Bytes, meta: LmMeta, expires_at_ms: u64) -> Self {
        Self {
            data,
            meta,
            expires_at_ms,
            disk_generation: 0,
        }
    }

    /// Whether the value has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }
}

/// The store's sizing.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Hard bound of the RAM tier.
    pub memory_bytes: u64,
    /// The disk tier, if any.
    pub disk: Option<DiskConfig>,
    /// Largest value accepted.
    pub max_value_bytes: u64,
}

/// Why a value was not stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("value of {len} bytes is larger than the limit of {max} bytes")]
    ValueTooLarge { len: u64, max: u64 },
    #[error("value of {len} bytes does not fit in the cache")]
    NoRoom { len: u64 },
}

/// Sizes of both tiers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub ram_bytes: u64,
    pub ram_capacity: u64,
    pub ram_entries: u64,
    pub disk_bytes: u64,
    pub disk_capacity: u64,
    pub disk_entries: u64,
    /// Value bytes evicted from RAM and waiting to be written.
    pub spill_queue_bytes: u64,
}

/// RAM tier, optional disk tier, and their counters.
#[derive(Debug)]
pub struct Store {
    ram: RamTier,
    disk: Option<DiskTier>,
    max_value_bytes: u64,
    metrics: NodeCacheMetrics,
}

/// Now, as Unix milliseconds (the clock of key expiry).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Opens the store; with a disk tier, rebuilds its index from its directory.
    pub fn open(config: StoreConfig, metrics: NodeCacheMetrics) -> Result<Self, DiskError> {
        let disk = match config.disk {
            Some(d) => Some(DiskTier::open(d, metrics.clone())?),
            None => None,
        };
        Ok(Self {
            ram: RamTier::new(config.memory_bytes),
            disk,
            max_value_bytes: config.max_value_bytes,
            metrics,
        })
    }

    /// Largest value accepted.
    pub fn max_value_bytes(&self) -> u64 {
        self.max_value_bytes
    }

    /// Whether a disk tier is configured.
    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// Looks `key` up in RAM only (counts a RAM hit or miss).
    pub fn get_ram(&self, key: &[u8]) -> Option<Entry> {
        let found = self.ram.get(key, now_ms());
        let counter = if found.is_some() {
            &self.metrics.hits
        } else {
            &self.metrics.misses
        };
        counter.get_or_create(&RAM).inc();
        found
    }

    /// Looks `key` up on disk (blocking I/O) and promotes a hit into RAM.
    pub fn get_disk(&self, key: &[u8]) -> Option<Entry> {
        let disk = self.disk.as_ref()?;
        let now = now_ms();
        let Some(entry) = disk.read(key, now) else {
            self.metrics.misses.get_or_create(&DISK).inc();
            return None;
        };
        self.metrics.hits.get_or_create(&DISK).inc();
        let generation = entry.disk_generation;
        let promoted = self.ram.promote(
            Bytes::copy_from_slice(key),
            entry.clone(),
            || disk.is_current(key, generation),
            |k, e| self.evicted(k, e, now),
        );
        if promoted {
            self.metrics.promotions.inc();
        }
        Some(entry)
    }

    /// Looks `key` up in RAM, then on disk (on the blocking pool).
    pub async fn get(self: &Arc<Self>, key: &Bytes) -> Option<Entry> {
        if let Some(e) = self.get_ram(key) {
            return Some(e);
        }
        self.disk.as_ref()?;
        if !self
            .disk
            .as_ref()
            .is_some_and(|d| d.contains(key, now_ms()))
        {
            self.metrics.misses.get_or_create(&DISK).inc();
            return None;
        }
        let store = self.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || store.get_disk(&key))
            .await
            .ok()
            .flatten()
    }

    /// Whether a live value is held under `key`, in either tier (no disk read).
    pub fn contains(&self, key: &[u8]) -> bool {
        let now = now_ms();
        self.ram.contains(key, now) || self.disk.as_ref().is_some_and(|d| d.contains(key, now))
    }

    /// Stores `entry` under `key`, replacing any older value in both tiers.
    pub fn put(&self, key: Bytes, entry: Entry) -> Result<(), StoreError> {
        let len = entry.data.len() as u64;
        if len > self.max_value_bytes {
            return Err(StoreError::ValueTooLarge {
                len,
                max: self.max_value_bytes,
            });
        }
        let now = now_ms();
        // Under the RAM lock: evictions are queued for the disk tier and the
        // key's old disk copy is dropped in the same order as other writers'.
        let stored = self.ram.insert(
            key.clone(),
            entry.clone(),
            |k, e| self.evicted(k, e, now),
            || {
                if let Some(d) = &self.disk {
                    d.invalidate(&key, now);
                }
            },
        );
        match (stored, &self.disk) {
            (Ok(()), _) => Ok(()),
            // Larger than all of RAM: straight to the disk tier.
            (Err(_), Some(d)) => {
                d.spill(key, entry, now);
                Ok(())
            }
            (Err(_), None) => Err(StoreError::NoRoom { len }),
        }
    }

    /// Removes `key` from both tiers; returns whether a live value was held.
    pub fn remove(&self, key: &[u8]) -> bool {
        let now = now_ms();
        let (in_ram, on_disk) = self.ram.remove_then(key, || {
            self.disk.as_ref().is_some_and(|d| d.invalidate(key, now))
        });
        in_ram.is_some_and(|e| !e.expired(now)) || on_disk
    }

    /// Drops every value in both tiers.
    pub fn clear(&self) {
        self.ram.clear();
        if let Some(d) = &self.disk {
            d.clear();
        }
    }

    /// Distinct keys held in either tier (expired ones not yet dropped included).
    pub fn key_count(&self) -> u64 {
        let Some(disk) = &self.disk else {
            return self.ram.usage().1 as u64;
        };
        let mut keys = std::collections::HashSet::new();
        self.ram.for_each_key(|k| {
            keys.insert(Bytes::copy_from_slice(k));
        });
        disk.for_each_key(|k| {
            if !keys.contains(k) {
                keys.insert(Bytes::copy_from_slice(k));
            }
        });
        keys.len() as u64
    }

    /// Sizes of both tiers.
    pub fn stats(&self) -> StoreStats {
        let (ram_bytes, ram_entries) = self.ram.usage();
        let mut s = StoreStats {
            ram_bytes,
            ram_capacity: self.ram.capacity(),
            ram_entries: ram_entries as u64,
            ..StoreStats::default()
        };
        if let Some(d) = &self.disk {
            let (bytes, entries, queued) = d.usage();
            s.disk_bytes = bytes;
            s.disk_capacity = d.capacity();
            s.disk_entries = entries as u64;
            s.spill_queue_bytes = queued;
        }
        s
    }

    /// At shutdown: writes what RAM holds to the disk tier (so a restart
    /// finds it there) until `deadline`, then stops the disk writer.
    /// Blocking; call once.
    pub fn close(&self, deadline: std::time::Instant) {
        if let Some(d) = &self.disk {
            let entries = self.ram.drain();
            let n = entries.len();
            d.persist(entries, now_ms(), deadline);
            d.close();
            tracing::info!(entries = n, "RAM tier written to the disk tier");
        }
    }

    /// One entry left RAM: counted, and queued for the disk tier.
    fn evicted(&self, key: Bytes, entry: Entry, now: u64) {
        self.metrics.evictions.get_or_create(&RAM).inc();
        if let Some(d) = &self.disk {
            d.spill(key, entry, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(store: &Store, key: &[u8]) -> Option<Entry> {
        store.get_ram(key).or_else(|| store.get_disk(key))
    }

    /// Each key has one writer; under heavy eviction, spills, promotions and
    /// deletes from four threads, a read returns the writer's latest value
    /// or nothing — never an older value, never one it deleted.
    #[test]
    fn a_key_never_reads_back_an_older_or_deleted_value_under_pressure() {
        let dir = std::env::temp_dir().join(format!("kvmesh-store-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(
            StoreConfig {
                memory_bytes: 64 * 1024,
                disk: Some(DiskConfig {
                    dir: dir.clone(),
                    capacity: 2 << 20,
                    queue_bytes: 128 * 1024,
                }),
                max_value_bytes: 1 << 20,
            },
            NodeCacheMetrics::default(),
        )
        .unwrap();
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let store = &store;
                s.spawn(move || {
                    let mut latest: [Option<u32>; 8] = [None; 8];
                    let mut x = t.wrapping_mul(2654435761) | 1;
                    for version in 1..=1500u32 {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        let k = (x % 8) as usize;
                        let key = Bytes::from(format!("t{t}-k{k}"));
                        match x % 5 {
                            0 => {
                                store.remove(&key);
                                latest[k] = None;
                            }
                            1 | 2 => {
                                let mut v = version.to_le_bytes().to_vec();
                                v.resize(1024 + (x % 3000) as usize, t as u8);
                                store
                                    .put(
                                        key.clone(),
                                        Entry::new(Bytes::from(v), LmMeta::default(), 0),
                                    )
                                    .unwrap();
                                latest[k] = Some(version);
                            }
                            _ => {
                                if let Some(e) = read(store, &key) {
                                    let got = u32::from_le_bytes(e.data[..4].try_into().unwrap());
                                    assert_eq!(Some(got), latest[k], "{key:?}");
                                }
                            }
                        }
                    }
                });
            }
        });
        let stats = store.stats();
        let disk_hits = store.metrics.hits.get_or_create(&DISK).get();
        assert!(disk_hits > 0, "the disk tier was exercised");
        assert!(stats.ram_bytes <= 64 * 1024);
        assert!(stats.disk_bytes <= 2 << 20);
        store.close(std::time::Instant::now());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
