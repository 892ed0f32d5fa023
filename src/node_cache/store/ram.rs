//! The RAM tier: an LRU map under a hard byte bound (keys, values and a
//! fixed per-entry allowance for bookkeeping all count).
//!
//! Why `lru` behind one mutex rather than moka or quick_cache: moka applies
//! its weight bound eventually (inserts are buffered), so memory can pass
//! the bound under a write storm; quick_cache splits the bound across shards,
//! so one multi-MiB KV chunk can be larger than a shard and be refused.
//! Every operation here is O(1) and never does I/O while holding the lock.

use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;

use super::Entry;

/// Bytes charged per entry on top of key and value: the map slot, the LRU
/// links, the `Bytes` handles and the allocator's rounding.
pub const ENTRY_OVERHEAD: u64 = 192;

/// What one entry costs against the bound.
pub fn weight(key: &[u8], entry: &Entry) -> u64 {
    key.len() as u64 + entry.data.len() as u64 + ENTRY_OVERHEAD
}

/// The RAM tier.
#[derive(Debug)]
pub struct RamTier {
    capacity: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    map: LruCache<Bytes, Entry>,
    used: u64,
}

/// The entry is larger than the whole tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

impl RamTier {
    /// An empty tier holding at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                used: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent (no
        // operation here panics half-way), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The byte bound.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The live entry under `key`, marked most recently used. An expired
    /// entry is dropped and reported as absent.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<Entry> {
        let mut inner = self.lock();
        let expired = match inner.map.get(key) {
            None => return None,
            Some(e) if !e.expired(now_ms) => return Some(e.clone()),
            Some(_) => true,
        };
        if expired {
            inner.remove(key);
        }
        None
    }

    /// Whether a live entry is held under `key` (recency untouched).
    pub fn contains(&self, key: &[u8], now_ms: u64) -> bool {
        self.lock()
            .map
            .peek(key)
            .is_some_and(|e| !e.expired(now_ms))
    }

    /// Stores `entry`, first evicting least recently used entries (each
    /// handed to `on_evict`) until it fits: the bound holds at every
    /// instant. `then` runs last, still under the lock, so that what it does
    /// to the disk tier is ordered with other writers of the same key.
    pub fn insert(
        &self,
        key: Bytes,
        entry: Entry,
        mut on_evict: impl FnMut(Bytes, Entry),
        then: impl FnOnce(),
    ) -> Result<(), TooLarge> {
        let w = weight(&key, &entry);
        let mut inner = self.lock();
        inner.remove(&key);
        if w > self.capacity {
            then();
            return Err(TooLarge);
        }
        inner.put_within(self.capacity, key, entry, w, &mut on_evict);
        then();
        Ok(())
    }

    /// Puts back a value read from a lower tier, unless RAM already holds
    /// the key or `still_current` (checked under the lock) says a newer
    /// write or a delete happened meanwhile. Returns whether it was stored.
    pub fn promote(
        &self,
        key: Bytes,
        entry: Entry,
        still_current: impl FnOnce() -> bool,
        mut on_evict: impl FnMut(Bytes, Entry),
    ) -> bool {
        let w = weight(&key, &entry);
        if w > self.capacity {
            return false;
        }
        let mut inner = self.lock();
        if inner.map.contains(&key) || !still_current() {
            return false;
        }
        inner.put_within(self.capacity, key, entry, w, &mut on_evict);
        true
    }

    /// Removes `key`, then runs `then` under the lock; returns the entry if
    /// it was held, and `then`'s result.
    pub fn remove_then<T>(&self, key: &[u8], then: impl FnOnce() -> T) -> (Option<Entry>, T) {
        let mut inner = self.lock();
        let e = inner.remove(key);
        (e, then())
    }

    /// Removes `key`; returns the entry if it was held.
    pub fn remove(&self, key: &[u8]) -> Option<Entry> {
        self.lock().remove(key)
    }

    /// Drops everything.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.used = 0;
    }

    /// Takes every entry out, least recently used first (for a shutdown spill).
    pub fn drain(&self) -> Vec<(Bytes, Entry)> {
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(inner.map.len());
        while let Some(kv) = inner.map.pop_lru() {
            out.push(kv);
        }
        inner.used = 0;
        out
    }

    /// Bytes charged and entries held.
    pub fn usage(&self) -> (u64, usize) {
        let inner = self.lock();
        (inner.used, inner.map.len())
    }

    /// Calls `f` with every key (under the lock: keep `f` cheap).
    pub fn for_each_key(&self, mut f: impl FnMut(&[u8])) {
        for (k, _) in self.lock().map.iter() {
            f(k);
        }
    }
}

impl Inner {
    /// Evicts least recently used entries (each to `on_evict`) until `w`
    /// more bytes fit under `capacity`, then stores `entry` (weighing `w`).
    fn put_within(
        &mut self,
        capacity: u64,
        key: Bytes,
        entry: Entry,
        w: u64,
        on_evict: &mut impl FnMut(Bytes, Entry),
    ) {
        while self.used + w > capacity {
            let Some((k, e)) = self.map.pop_lru() else {
                break;
            };
            self.used -= weight(&k, &e);
            on_evict(k, e);
        }
        self.used += w;
        self.map.put(key, entry);
    }

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let (k, e) = self.map.pop_entry(key)?;
        self.used -= weight(&k, &e);
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_cache::store::LmMeta;

    fn entry(n: usize) -> Entry {
        Entry::new(Bytes::from(vec![7u8; n]), LmMeta::default(), 0)
    }

    #[test]
    fn the_byte_bound_holds_and_the_least_recently_used_goes_first() {
        let ram = RamTier::new(3 * (100 + 1 + ENTRY_OVERHEAD));
        let mut evicted = Vec::new();
        for k in ["a", "b", "c"] {
            ram.insert(
                Bytes::from(k),
                entry(100),
                |k, e| evicted.push((k, e)),
                || (),
            )
            .unwrap();
        }
        assert!(evicted.is_empty());
        assert!(ram.get(b"a", 0).is_some()); // a is now the most recent
        ram.insert(
            Bytes::from("d"),
            entry(100),
            |k, e| evicted.push((k, e)),
            || (),
        )
        .unwrap();
        assert_eq!(evicted.len(), 1);
        assert_eq!(&evicted[0].0[..], b"b");
        let (used, n) = ram.usage();
        assert!(used <= ram.capacity());
        assert_eq!(n, 3);
    }

    #[test]
    fn an_entry_larger_than_the_tier_is_refused_and_replacing_recounts() {
        let ram = RamTier::new(1000);
        let none = |_: Bytes, _: Entry| panic!("nothing to evict");
        assert_eq!(
            ram.insert(Bytes::from("big"), entry(1000), none, || ()),
            Err(TooLarge)
        );
        ram.insert(Bytes::from("k"), entry(10), none, || ())
            .unwrap();
        ram.insert(Bytes::from("k"), entry(20), none, || ())
            .unwrap();
        assert_eq!(ram.usage(), (1 + 20 + ENTRY_OVERHEAD, 1));
        assert!(
            !ram.promote(Bytes::from("k"), entry(5), || true, none),
            "RAM's copy wins over a promoted one"
        );
        assert!(ram.remove(b"k").is_some());
        assert_eq!(ram.usage(), (0, 0));
        assert!(
            !ram.promote(Bytes::from("k"), entry(5), || false, none),
            "stale"
        );
        assert!(ram.promote(Bytes::from("k"), entry(5), || true, none));
    }

    #[test]
    fn expired_entries_read_as_absent() {
        let ram = RamTier::new(10_000);
        let e = Entry::new(Bytes::from_static(b"v"), LmMeta::default(), 50);
        ram.insert(Bytes::from("k"), e, |_, _| (), || ()).unwrap();
        assert!(ram.get(b"k", 49).is_some());
        assert!(ram.get(b"k", 50).is_none());
        assert_eq!(ram.usage(), (0, 0));
    }
}
