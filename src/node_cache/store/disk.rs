//! The disk tier: one file per value under one directory, a hard byte
//! bound with LRU eviction, write-behind through a byte-bounded queue.
//!
//! File layout and checksum: [`super::file`].
//!
//! A file is written to `<name>.<gen>.tmp` and renamed, so a reader sees a
//! whole file or none; a crash leaves a temp file, which `open` removes. A
//! file whose checksum, key or length does not match is a miss and is
//! deleted. Writes run on one dedicated thread; readers never wait for it:
//! a value waiting in the queue is served from the queue.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use lru::LruCache;

use super::Entry;
use super::file::{HEADER_LEN, decode_file, file_name, read_exact_file, scan_file, write_file};
use crate::node_cache::metrics::{DISK, NodeCacheMetrics};

/// Where the disk tier lives and how much it may hold.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub dir: PathBuf,
    /// Hard bound on the bytes of all files.
    pub capacity: u64,
    /// Bound on the value bytes waiting to be written; past it spills are dropped.
    pub queue_bytes: u64,
}

/// The disk tier could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot use the disk tier directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the disk writer thread: {0}")]
    Thread(#[source] io::Error),
}

#[derive(Debug, Clone, Copy)]
struct FileInfo {
    size: u64,
    generation: u64,
    expires_at_ms: u64,
}

#[derive(Debug)]
struct State {
    index: LruCache<Bytes, FileInfo>,
    /// Bytes of the files in `index` plus the file being written.
    used: u64,
    /// Values evicted from RAM and waiting for the writer, by key.
    pending: HashMap<Bytes, (u64, Entry)>,
    pending_bytes: u64,
}

enum Job {
    Write { key: Bytes, generation: u64 },
    Delete { key: Bytes },
    Clear,
    Stop,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    capacity: u64,
    queue_bytes: u64,
    state: Mutex<State>,
    generation: AtomicU64,
    metrics: NodeCacheMetrics,
    /// Set at shutdown: writes queued past it are dropped.
    deadline: Mutex<Option<Instant>>,
}

/// The disk tier. Dropping it stops the writer after the queued jobs.
#[derive(Debug)]
pub struct DiskTier {
    shared: Arc<Shared>,
    jobs: Sender<Job>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl DiskTier {
    /// Opens (creating if needed) `config.dir`, removes partial temp files,
    /// rebuilds the index from the files there (oldest first, so the LRU
    /// order survives a restart roughly by modification time), evicts down
    /// to the bound, and starts the writer thread.
    pub fn open(config: DiskConfig, metrics: NodeCacheMetrics) -> Result<Self, DiskError> {
        let dir = config.dir.clone();
        let dir_err = |source| DiskError::Dir {
            dir: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(dir_err)?;
        let mut found = Vec::new();
        for item in fs::read_dir(&dir).map_err(dir_err)? {
            let Ok(item) = item else { continue };
            let path = item.path();
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".kv") {
                continue;
            }
            match scan_file(&path) {
                Some(f) if file_name(&f.key) == name => {
                    let info = FileInfo {
                        size: f.size,
                        generation: 0,
                        expires_at_ms: f.expires_at_ms,
                    };
                    found.push((f.mtime, f.key, info));
                }
                _ => {
                    tracing::warn!(file = %path.display(), "removing an unreadable disk-tier file");
                    metrics.error("disk", "corrupt");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|(mtime, _, _)| *mtime);
        let mut index = LruCache::unbounded();
        let mut used = 0;
        let mut generation = 1;
        for (_, key, mut info) in found {
            used += info.size;
            info.generation = generation;
            generation += 1;
            index.put(key, info);
        }
        let mut evicted = 0;
        while used > config.capacity {
            let Some((key, info)) = index.pop_lru() else {
                break;
            };
            used -= info.size;
            let _ = fs::remove_file(dir.join(file_name(&key)));
            evicted += 1;
        }
        metrics.evictions.get_or_create(&DISK).inc_by(evicted);
        tracing::info!(dir = %dir.display(), entries = index.len(), bytes = used, "disk tier index rebuilt");
        let shared = Arc::new(Shared {
            dir,
            capacity: config.capacity,
            queue_bytes: config.queue_bytes,
            state: Mutex::new(State {
                index,
                used,
                pending: HashMap::new(),
                pending_bytes: 0,
            }),
            generation: AtomicU64::new(generation),
            metrics,
            deadline: Mutex::new(None),
        });
        let (jobs, rx) = channel();
        let worker = shared.clone();
        let writer = std::thread::Builder::new()
            .name("kvmesh-disk-writer".into())
            .spawn(move || worker.write_loop(rx))
            .map_err(DiskError::Thread)?;
        Ok(Self {
            shared,
            jobs,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The byte bound.
    pub fn capacity(&self) -> u64 {
        self.shared.capacity
    }

    /// Bytes of files, files, and value bytes waiting to be written.
    pub fn usage(&self) -> (u64, usize, u64) {
        let s = self.shared.lock();
        (s.used, s.index.len(), s.pending_bytes)
    }

    /// Queues `entry` (just evicted from RAM) for writing, unless the disk
    /// already holds it or it has expired. Never blocks on I/O: when the
    /// queue is full the value is dropped and counted.
    pub fn spill(&self, key: Bytes, entry: Entry, now_ms: u64) {
        self.enqueue(key, entry, now_ms, true);
    }

    /// At shutdown: queues `entries` (all of RAM, least recently used first)
    /// without the queue bound, and writes until `deadline`; what is left
    /// then is dropped and counted. Call [`DiskTier::close`] after it.
    pub fn persist(&self, entries: Vec<(Bytes, Entry)>, now_ms: u64, deadline: Instant) {
        *self
            .shared
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        for (k, e) in entries {
            self.enqueue(k, e, now_ms, false);
        }
    }

    fn enqueue(&self, key: Bytes, entry: Entry, now_ms: u64, bounded: bool) {
        if entry.expired(now_ms) {
            return;
        }
        let size = (HEADER_LEN + key.len() + entry.data.len()) as u64;
        let mut s = self.shared.lock();
        let on_disk = entry.disk_generation != 0
            && s.index
                .peek(&key)
                .is_some_and(|i| i.generation == entry.disk_generation);
        if on_disk {
            return;
        }
        let len = entry.data.len() as u64;
        if size > self.shared.capacity
            || (bounded && s.pending_bytes + len > self.shared.queue_bytes)
        {
            drop(s);
            self.shared.metrics.spill_drops.inc();
            return;
        }
        let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed);
        if let Some((_, old)) = s.pending.insert(key.clone(), (generation, entry)) {
            s.pending_bytes -= old.data.len() as u64;
        }
        s.pending_bytes += len;
        drop(s);
        let _ = self.jobs.send(Job::Write { key, generation });
    }

    /// Forgets `key` (it was overwritten or deleted); returns whether a live
    /// value was held. The file is removed by the writer, in queue order.
    pub fn invalidate(&self, key: &[u8], now_ms: u64) -> bool {
        let mut s = self.shared.lock();
        let mut live = false;
        if let Some((_, e)) = s.pending.remove(key) {
            s.pending_bytes -= e.data.len() as u64;
            live |= !e.expired(now_ms);
        }
        if let Some((k, info)) = s.index.pop_entry(key) {
            s.used -= info.size;
            live |= !expired(info.expires_at_ms, now_ms);
            drop(s);
            let _ = self.jobs.send(Job::Delete { key: k });
        }
        live
    }

    /// Whether the disk copy a value was read from (`generation`; 0 for a
    /// value served from the write queue) is still the key's current one.
    pub fn is_current(&self, key: &[u8], generation: u64) -> bool {
        let s = self.shared.lock();
        match generation {
            0 => s.pending.contains_key(key) || s.index.contains(key),
            g => s.index.peek(key).is_some_and(|i| i.generation == g),
        }
    }

    /// Whether a live value is held (without reading it).
    pub fn contains(&self, key: &[u8], now_ms: u64) -> bool {
        let s = self.shared.lock();
        if let Some((_, e)) = s.pending.get(key) {
            return !e.expired(now_ms);
        }
        s.index
            .peek(key)
            .is_some_and(|i| !expired(i.expires_at_ms, now_ms))
    }

    /// Reads `key` (blocking file I/O: call it off the async workers). A
    /// corrupt or truncated file is deleted and reads as a miss.
    pub fn read(&self, key: &[u8], now_ms: u64) -> Option<Entry> {
        let info = {
            let mut s = self.shared.lock();
            if let Some((_, e)) = s.pending.get(key) {
                return (!e.expired(now_ms)).then(|| e.clone());
            }
            *s.index.get(key)?
        };
        if expired(info.expires_at_ms, now_ms) {
            self.invalidate(key, now_ms);
            return None;
        }
        let path = self.shared.dir.join(file_name(key));
        let bytes = match read_exact_file(&path, info.size) {
            Ok(b) => b,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(file = %path.display(), error = %e, "disk-tier read failed");
                    self.shared.metrics.error("disk", "io");
                }
                self.shared.forget(key, info.generation, None);
                return None;
            }
        };
        match decode_file(key, bytes) {
            Some(mut e) => {
                e.disk_generation = info.generation;
                Some(e)
            }
            None => {
                tracing::warn!(file = %path.display(), "disk-tier file is corrupt; removed");
                self.shared.metrics.error("disk", "corrupt");
                self.shared.forget(key, info.generation, Some(&path));
                None
            }
        }
    }

    /// Drops every value and, in queue order, every file.
    pub fn clear(&self) {
        let mut s = self.shared.lock();
        s.index.clear();
        s.pending.clear();
        s.pending_bytes = 0;
        s.used = 0;
        drop(s);
        let _ = self.jobs.send(Job::Clear);
    }

    /// Calls `f` with every key (under the lock: keep `f` cheap).
    pub fn for_each_key(&self, mut f: impl FnMut(&[u8])) {
        let s = self.shared.lock();
        for (k, _) in s.index.iter() {
            f(k);
        }
        for k in s.pending.keys() {
            if !s.index.contains(k) {
                f(k);
            }
        }
    }

    /// Writes what is queued, then stops the writer thread.
    pub fn close(&self) {
        let _ = self.jobs.send(Job::Stop);
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        self.close();
    }
}

fn expired(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms != 0 && expires_at_ms <= now_ms
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No operation panics half-way through an update; a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops `key` from the index if it still names file `generation`, and
    /// deletes the file at `path` if given.
    fn forget(&self, key: &[u8], generation: u64, path: Option<&Path>) {
        let mut s = self.lock();
        if s.index
            .peek(key)
            .is_some_and(|i| i.generation == generation)
            && let Some(info) = s.index.pop(key)
        {
            s.used -= info.size;
            drop(s);
            if let Some(p) = path {
                let _ = fs::remove_file(p);
            }
        }
    }

    fn write_loop(&self, jobs: Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Write { key, generation } => self.write(key, generation),
                Job::Delete { key } => {
                    let _ = fs::remove_file(self.dir.join(file_name(&key)));
                }
                Job::Clear => self.remove_all_files(),
                Job::Stop => break,
            }
        }
    }

    fn remove_all_files(&self) {
        let Ok(items) = fs::read_dir(&self.dir) else {
            return;
        };
        // Values spilled after the clear are in the index again: keep their files.
        let keep: std::collections::HashSet<String> = {
            let s = self.lock();
            s.index.iter().map(|(k, _)| file_name(k)).collect()
        };
        for item in items.flatten() {
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".kv") && !keep.contains(name.as_ref()) {
                let _ = fs::remove_file(item.path());
            }
        }
    }

    fn write(&self, key: Bytes, generation: u64) {
        let late = self
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|d| Instant::now() >= d);
        if late {
            let mut s = self.lock();
            if matches!(s.pending.get(&key), Some((g, _)) if *g == generation)
                && let Some((_, e)) = s.pending.remove(&key)
            {
                s.pending_bytes -= e.data.len() as u64;
                drop(s);
                self.metrics.spill_drops.inc();
            }
            return;
        }
        // Take the value and reserve its bytes, evicting old files first so
        // the bound holds even while the file is being written.
        let (entry, size, victims) = {
            let mut s = self.lock();
            let entry = match s.pending.get(&key) {
                Some((g, e)) if *g == generation => e.clone(),
                _ => return, // superseded or deleted while queued
            };
            let size = (HEADER_LEN + key.len() + entry.data.len()) as u64;
            // An older file of the same key is replaced by the rename.
            if let Some(old) = s.index.pop(&key) {
                s.used -= old.size;
            }
            let mut victims = Vec::new();
            while s.used + size > self.capacity {
                match s.index.pop_lru() {
                    Some((k, info)) => {
                        s.used -= info.size;
                        victims.push(k);
                    }
                    None => break,
                }
            }
            s.used += size;
            (entry, size, victims)
        };
        self.metrics
            .evictions
            .get_or_create(&DISK)
            .inc_by(victims.len() as u64);
        for k in victims {
            let _ = fs::remove_file(self.dir.join(file_name(&k)));
        }
        let name = file_name(&key);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.{generation}.tmp"));
        let written = write_file(&tmp, &path, &key, &entry);
        let mut s = self.lock();
        let current = matches!(s.pending.get(&key), Some((g, _)) if *g == generation);
        if current {
            s.pending.remove(&key);
            s.pending_bytes -= entry.data.len() as u64;
        }
        match written {
            Ok(()) if current => {
                s.index.put(
                    key,
                    FileInfo {
                        size,
                        generation,
                        expires_at_ms: entry.expires_at_ms,
                    },
                );
                drop(s);
                self.metrics.spills.inc();
            }
            Ok(()) => {
                // Deleted or overwritten while being written.
                s.used -= size;
                drop(s);
                let _ = fs::remove_file(&path);
            }
            Err(e) => {
                s.used -= size;
                drop(s);
                tracing::warn!(file = %path.display(), error = %e, "disk-tier write failed; value dropped");
                let _ = fs::remove_file(&tmp);
                // An older file of the key may still be there, unindexed: a
                // restart must not bring it back.
                let _ = fs::remove_file(&path);
                self.metrics.error("disk", "io");
                self.metrics.spill_drops.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_cache::store::LmMeta;

    #[test]
    fn a_full_spill_queue_drops_and_counts_instead_of_waiting() {
        let dir = std::env::temp_dir().join(format!("kvmesh-disk-drop-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let metrics = NodeCacheMetrics::default();
        let disk = DiskTier::open(
            DiskConfig {
                dir: dir.clone(),
                capacity: 1 << 20,
                queue_bytes: 3000,
            },
            metrics.clone(),
        )
        .unwrap();
        let value = Bytes::from(vec![1u8; 1000]);
        let mut s = disk.shared.lock();
        s.pending_bytes = 2500; // as if a slow disk left 2500 bytes waiting
        drop(s);
        disk.spill(
            Bytes::from_static(b"over"),
            Entry::new(value.clone(), LmMeta::default(), 0),
            0,
        );
        assert_eq!(metrics.spill_drops.get(), 1);
        disk.shared.lock().pending_bytes = 0;
        disk.spill(
            Bytes::from_static(b"fits"),
            Entry::new(value, LmMeta::default(), 0),
            0,
        );
        disk.close();
        assert_eq!(metrics.spill_drops.get(), 1);
        assert_eq!(metrics.spills.get(), 1);
        assert!(disk.contains(b"fits", 0) && !disk.contains(b"over", 0));
        let _ = fs::remove_dir_all(&dir);
    }
}
