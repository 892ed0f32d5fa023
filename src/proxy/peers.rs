//! Placement sharing between router replicas.
//!
//! Each router replica keeps its own prefix index, so a prefix one replica
//! placed is unknown to the others until they place it themselves; under
//! load they place it differently and the engines compute it twice. So every
//! router tells its peers, a few times a second, where it sent which
//! prompt: a batch of `(replica name, prompt blocks)` records POSTed to each
//! peer's admin port at [`PLACEMENTS_PATH`]. A peer records them in its index
//! as if it had routed them (no load is accounted: the sender counts that).
//! Best effort: a batch that cannot be sent is dropped and counted.
//!
//! Wire format (little-endian): `b"KVMP"`, version `1u8`, block bytes `u32`,
//! then records: name length `u16`, name (UTF-8), block count `u32`, the
//! hashes the index records (`u64` each, at
//! [`PromptBlocks::indexed_positions`], which the count determines: all of a
//! short prompt, about one in eight of a long one), a tail flag `u8` and, if
//! 1, tail parent `u64`, length `u16`, hash `u64`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::join_all;
use http::uri::Authority;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use k8s_openapi::api::core::v1::Pod;
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use super::state::Shared;
use crate::routing::PromptBlocks;
use crate::routing::blocks::Tail;

/// Admin path peers POST placements to.
pub const PLACEMENTS_PATH: &str = "/kvmesh/v1/placements";

const MAGIC: &[u8; 4] = b"KVMP";
const VERSION: u8 = 1;
/// Largest batch sent or accepted.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Most blocks one record may carry (the hasher's own limit is lower).
const MAX_RECORD_BLOCKS: usize = 1 << 16;

/// Placements waiting to be sent.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Mutex<BytesMut>,
}

impl Outbox {
    /// Queues one placement; false (dropped) when the batch is full.
    pub fn push(&self, replica: &str, blocks: &PromptBlocks) -> bool {
        if replica.len() > usize::from(u16::MAX) {
            return false;
        }
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let before = buf.len();
        encode_record(&mut buf, replica, blocks);
        if buf.len() > MAX_BATCH_BYTES {
            buf.truncate(before);
            return false;
        }
        true
    }

    /// Takes the queued records (empty if none).
    pub fn take(&self) -> BytesMut {
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn encode_record(buf: &mut BytesMut, replica: &str, blocks: &PromptBlocks) {
    buf.put_u16_le(replica.len() as u16);
    buf.put_slice(replica.as_bytes());
    buf.put_u32_le(blocks.hashes.len() as u32);
    for i in blocks.indexed_positions() {
        buf.put_u64_le(blocks.hashes[i]);
    }
    match blocks.tail() {
        Some(t) => {
            buf.put_u8(1);
            buf.put_u64_le(t.parent);
            buf.put_u16_le(t.len);
            buf.put_u64_le(t.hash);
        }
        None => buf.put_u8(0),
    }
}

/// A batch: header plus `records` (as [`Outbox::take`] returns them).
pub fn encode_batch(block_bytes: usize, records: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(9 + records.len());
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u32_le(u32::try_from(block_bytes).unwrap_or(u32::MAX));
    out.put_slice(records);
    out.freeze()
}

/// Parses a batch into `(replica, blocks)` records; an error names what is
/// wrong (nothing is applied from a bad batch).
pub fn decode_batch(
    mut b: &[u8],
    block_bytes: usize,
) -> Result<Vec<(String, PromptBlocks)>, String> {
    if b.len() < 9 || &b[..4] != MAGIC {
        return Err("not a placements batch".into());
    }
    b.advance(4);
    let version = b.get_u8();
    if version != VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let theirs = b.get_u32_le() as usize;
    if theirs != block_bytes {
        return Err(format!(
            "block size {theirs} differs from ours ({block_bytes})"
        ));
    }
    let short = || "truncated record".to_string();
    let mut out = Vec::new();
    while b.has_remaining() {
        if b.remaining() < 2 {
            return Err(short());
        }
        let len = usize::from(b.get_u16_le());
        if b.remaining() < len + 4 {
            return Err(short());
        }
        let name = std::str::from_utf8(&b[..len])
            .map_err(|_| "replica name is not UTF-8".to_string())?
            .to_string();
        b.advance(len);
        let n = b.get_u32_le() as usize;
        if n > MAX_RECORD_BLOCKS {
            return Err(format!("{n} blocks in one record"));
        }
        // Only the indexed positions travel; the rest stay 0 (the index
        // never reads them).
        let mut blocks = PromptBlocks::from_hashes(vec![0; n]);
        let positions: Vec<usize> = blocks.indexed_positions().collect();
        if b.remaining() < positions.len() * 8 + 1 {
            return Err(short());
        }
        for i in positions {
            blocks.hashes[i] = b.get_u64_le();
        }
        let tail = match b.get_u8() {
            0 => None,
            1 if b.remaining() >= 18 => Some(Tail {
                parent: b.get_u64_le(),
                len: b.get_u16_le(),
                hash: b.get_u64_le(),
            }),
            1 => return Err(short()),
            f => return Err(format!("bad tail flag {f}")),
        };
        out.push((name, PromptBlocks::from_parts(blocks.hashes, tail)));
    }
    Ok(out)
}

/// Applies a received batch: each record the index learns. Returns how many
/// records named a current replica.
pub fn apply(shared: &Shared, body: &[u8]) -> Result<usize, String> {
    let block_bytes = shared.core().router.config().hasher.block_bytes;
    let records = decode_batch(body, block_bytes)?;
    let mut core = shared.core();
    let mut applied = 0;
    for (name, blocks) in &records {
        if let Some(slot) = core.router.slot_of(name) {
            core.router.learn(slot, blocks);
            applied += 1;
        }
    }
    Ok(applied)
}

/// Handles `POST /kvmesh/v1/placements` on the admin port.
pub async fn receive(shared: &Shared, req: Request<hyper::body::Incoming>) -> (StatusCode, String) {
    if req.method() != http::Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST only\n".into());
    }
    let body = match Limited::new(req.into_body(), MAX_BATCH_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("cannot read batch: {e}\n")),
    };
    match apply(shared, &body) {
        Ok(n) => {
            shared.metrics.peer_records_received.inc_by(n as u64);
            (StatusCode::NO_CONTENT, String::new())
        }
        Err(why) => {
            shared.metrics.peer_batches_rejected.inc();
            tracing::debug!(error = %why, "placements batch rejected");
            (StatusCode::BAD_REQUEST, format!("{why}\n"))
        }
    }
}

/// Where peers are.
#[derive(Debug, Clone)]
pub enum PeerSource {
    /// A fixed list of admin addresses.
    Static(Vec<Authority>),
    /// Ready router pods matching `selector` in `namespace` (other than
    /// `own_pod`), on their container port named `admin`, else `port`.
    Pods {
        namespace: String,
        selector: String,
        port: u16,
        own_pod: Option<String>,
    },
}

/// Sends the outbox to every peer each `interval` until `stop`.
pub async fn run(
    shared: Arc<Shared>,
    interval: Duration,
    peers: watch::Receiver<Vec<Authority>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_secs(2).max(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Taken even with no peer to send to, so it never fills up.
        let records = shared.peers.take();
        let targets = peers.borrow().clone();
        if records.is_empty() || targets.is_empty() {
            continue;
        }
        let block_bytes = shared.core().router.config().hasher.block_bytes;
        let batch = encode_batch(block_bytes, &records);
        let sends = targets.into_iter().map(|peer| {
            let (shared, batch) = (shared.clone(), batch.clone());
            async move {
                let r = tokio::time::timeout(timeout, send(&shared, &peer, batch)).await;
                (peer, r.unwrap_or_else(|_| Err("timed out".into())))
            }
        });
        for (peer, result) in join_all(sends).await {
            match result {
                Ok(()) => {
                    shared.metrics.peer_batches_sent.inc();
                }
                Err(why) => {
                    shared.metrics.peer_send_errors.inc();
                    tracing::debug!(peer = %peer, error = %why, "placements not delivered");
                }
            }
        }
    }
}

async fn send(shared: &Shared, peer: &Authority, batch: Bytes) -> Result<(), String> {
    let post = Request::post(PLACEMENTS_PATH)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(batch))
        .map_err(|e| e.to_string())?;
    super::forward::side_request(&shared.client, peer, post, 64 << 10)
        .await
        .map(drop)
}

/// Keeps `tx` equal to the peers `source` names, until `stop`.
pub async fn follow(
    client: Option<Client>,
    source: PeerSource,
    tx: watch::Sender<Vec<Authority>>,
    stop: watch::Receiver<bool>,
) {
    let (namespace, selector, port, own_pod) = match source {
        PeerSource::Static(list) => {
            let _ = tx.send(list);
            return;
        }
        PeerSource::Pods {
            namespace,
            selector,
            port,
            own_pod,
        } => (namespace, selector, port, own_pod),
    };
    let Some(client) = client else { return };
    crate::discovery::pods::watch_pods(client, &namespace, &selector, stop, |pods| {
        let peers: Vec<Authority> = pods
            .values()
            .filter(|p| own_pod.as_deref() != Some(p.name_any().as_str()))
            .filter_map(|p| crate::discovery::pods::endpoint(p, admin_port(p).unwrap_or(port)))
            .map(|b| b.authority)
            .collect();
        tx.send_if_modified(|old| {
            let changed = *old != peers;
            *old = peers;
            changed
        });
    })
    .await;
}

/// A pod's container port named `admin`.
fn admin_port(p: &Pod) -> Option<u16> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|cp| cp.name.as_deref() == Some("admin"))
        .and_then(|cp| u16::try_from(cp.container_port).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::BlockHasher;

    #[test]
    fn a_batch_round_trips_hashes_and_tails() {
        let h = BlockHasher::default();
        let with_tail = h.hash(
            "m",
            "a prompt that ends inside its last block, a bit longer".repeat(3),
        );
        let whole = PromptBlocks::from_hashes(vec![1, 2, 3]);
        let outbox = Outbox::default();
        assert!(outbox.push("pod-a", &with_tail));
        assert!(outbox.push("pod-b", &whole));
        let batch = encode_batch(h.block_bytes, &outbox.take());
        assert!(outbox.take().is_empty());
        let got = decode_batch(&batch, h.block_bytes).expect("decodes");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "pod-a");
        assert_eq!(got[0].1.hashes, with_tail.hashes);
        assert!(with_tail.tail().is_some());
        assert_eq!(got[0].1.tail(), with_tail.tail());
        assert_eq!(got[1].1.hashes, vec![1, 2, 3]);
        assert_eq!(got[1].1.tail(), None);
        // A long prompt sends only what the index records.
        let long = PromptBlocks::from_hashes((1..=100).collect());
        outbox.push("pod-c", &long);
        let records = outbox.take();
        assert!(records.len() < 8 * 40, "{} bytes", records.len());
        let got =
            decode_batch(&encode_batch(h.block_bytes, &records), h.block_bytes).expect("decodes");
        let mut ix = crate::routing::PrefixIndex::new(1000);
        ix.record(0, &got[0].1);
        assert_eq!(ix.lookup(&long, f64::INFINITY).blocks_for(0), 100);
    }

    #[test]
    fn bad_batches_are_refused_whole() {
        let outbox = Outbox::default();
        outbox.push("pod-a", &PromptBlocks::from_hashes(vec![7; 5]));
        let good = encode_batch(64, &outbox.take());
        assert!(decode_batch(&good, 128).is_err(), "another block size");
        assert_eq!(
            decode_batch(&good[..9], 64),
            Ok(Vec::new()),
            "header only: empty"
        );
        for cut in [3, 8, 12, good.len() - 1] {
            assert!(decode_batch(&good[..cut], 64).is_err(), "cut at {cut}");
        }
        let mut huge = good[..9].to_vec();
        huge.extend_from_slice(&[1, 0, b'x']);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_batch(&huge, 64).is_err(), "a huge declared count");
        assert!(decode_batch(b"GET / HTTP/1.1\r\n", 64).is_err());
    }
}
