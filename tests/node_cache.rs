//! `kvmesh node-cache` in process: lm:// golden bytes, Redis behaviour with
//! raw sockets and real clients (redis-cli, redis-py, an LMCache-framed
//! Python client), the disk tier across restarts, and hostile input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvmesh::node_cache::lm::{self, Framing};
use kvmesh::node_cache::server::ConnSettings;
use kvmesh::node_cache::store::disk::DiskConfig;
use kvmesh::node_cache::store::{LmMeta, StoreConfig};
use kvmesh::node_cache::{NodeCacheHandle, Settings, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: u64 = 1 << 20;

struct Cache {
    handle: NodeCacheHandle,
    lm: String,
    redis: String,
    admin: String,
}

fn settings(memory: u64, disk: Option<&Path>, framing: Framing) -> Settings {
    Settings {
        store: StoreConfig {
            memory_bytes: memory,
            disk: disk.map(|d| DiskConfig {
                dir: d.to_path_buf(),
                capacity: 64 * MIB,
                queue_bytes: 64 * MIB,
            }),
            max_value_bytes: 4 * MIB,
        },
        conn: ConnSettings {
            idle_timeout: Some(Duration::from_secs(30)),
            drain: Duration::from_secs(2),
            framing,
        },
        password: None,
    }
}

async fn serve(settings: Settings) -> Cache {
    let lm = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redis = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = |l: &TcpListener| l.local_addr().unwrap().to_string();
    let (lm_addr, redis_addr, admin_addr) = (addr(&lm), addr(&redis), addr(&admin));
    Cache {
        handle: start(settings, lm, redis, admin).unwrap(),
        lm: lm_addr,
        redis: redis_addr,
        admin: admin_addr,
    }
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .expect("closed in time")
        .is_ok_and(|n| n == 0)
}

/// Removes a test's directory when the test ends (after its server stops:
/// declare it before the server).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("node-cache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------- lm:// ----------

async fn lm_reply(s: &mut TcpStream, framing: Framing) -> Vec<i32> {
    let mut b = vec![0u8; framing.reply_len()];
    s.read_exact(&mut b).await.unwrap();
    b.chunks(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const META: LmMeta = LmMeta {
    fmt: 3,
    dtype: 3,
    shape: [32, 2, 256, 1024],
    location: 1,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lm_put_then_get_echoes_every_header_field_and_the_payload() {
    let c = serve(settings(64 * MIB, None, Framing::Current)).await;
    let mut s = TcpStream::connect(&c.lm).await.unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    s.write_all(&lm::encode_request(
        Framing::Current,
        1,
        payload.len() as i32,
        META,
        b"chunk-1",
    ))
    .await
    .unwrap();
    s.write_all(&payload).await.unwrap();
    s.write_all(&lm::encode_request(
        Framing::Current,
        2,
        0,
        LmMeta::default(),
        b"chunk-1",
    ))
    .await
    .unwrap();
    assert_eq!(
        lm_reply(&mut s, Framing::Current).await,
        [200, 100_000, 3, 3, 32, 2, 256, 1024, 1]
    );
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, payload);
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lm_miss_exist_health_and_list_answer_with_lmcaches_exact_bytes() {
    let c = serve(settings(64 * MIB, None, Framing::Current)).await;
    let mut s = TcpStream::connect(&c.lm).await.unwrap();
    let ask = |cmd: i32, key: &'static [u8]| {
        lm::encode_request(Framing::Current, cmd, 0, LmMeta::default(), key)
    };
    let le = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut raw = [0u8; 36];
    s.write_all(&ask(2, b"absent")).await.unwrap();
    s.read_exact(&mut raw).await.unwrap();
    assert_eq!(raw.to_vec(), le(&[400, 0, 1, 2, 0, 0, 0, 0, 0]));
    s.write_all(&ask(3, b"absent")).await.unwrap();
    s.read_exact(&mut raw).await.unwrap();
    assert_eq!(raw.to_vec(), le(&[400, 0, 1, 2, 0, 0, 0, 0, 0]));
    s.write_all(&ask(5, b"")).await.unwrap();
    s.read_exact(&mut raw).await.unwrap();
    assert_eq!(raw.to_vec(), le(&[200, 0, 1, 2, 0, 0, 0, 0, 0]));
    s.write_all(&ask(4, b"")).await.unwrap();
    s.read_exact(&mut raw).await.unwrap();
    assert_eq!(raw.to_vec(), le(&[400, 0, 1, 2, 0, 0, 0, 0, 0]));
    s.write_all(&lm::encode_request(
        Framing::Current,
        1,
        3,
        META,
        b"present",
    ))
    .await
    .unwrap();
    s.write_all(b"abc").await.unwrap();
    s.write_all(&ask(3, b"present")).await.unwrap();
    s.read_exact(&mut raw).await.unwrap();
    assert_eq!(raw.to_vec(), le(&[200, 0, 1, 2, 0, 0, 0, 0, 0]));
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_lm_framings_round_trip_with_their_own_header_sizes() {
    for (framing, want) in [
        (Framing::NoLocation, vec![200, 5, 3, 3, 32, 2, 256, 1024]),
        (Framing::LengthOnly, vec![200, 5]),
    ] {
        let c = serve(settings(64 * MIB, None, framing)).await;
        let mut s = TcpStream::connect(&c.lm).await.unwrap();
        let put = lm::encode_request(framing, 1, 5, META, b"old");
        assert_eq!(put.len(), framing.request_len());
        s.write_all(&put).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.write_all(&lm::encode_request(
            framing,
            2,
            0,
            LmMeta::default(),
            b"old",
        ))
        .await
        .unwrap();
        assert_eq!(lm_reply(&mut s, framing).await, want, "{framing:?}");
        let mut body = [0u8; 5];
        s.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"hello");
        s.write_all(&lm::encode_request(
            framing,
            2,
            0,
            LmMeta::default(),
            b"nope",
        ))
        .await
        .unwrap();
        assert_eq!(lm_reply(&mut s, framing).await[0], 400);
        c.handle.shutdown(Duration::ZERO).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_lm_put_is_skipped_and_the_connection_keeps_working() {
    let c = serve(settings(64 * MIB, None, Framing::Current)).await;
    let mut s = TcpStream::connect(&c.lm).await.unwrap();
    let big = vec![1u8; (5 * MIB) as usize];
    s.write_all(&lm::encode_request(
        Framing::Current,
        1,
        big.len() as i32,
        META,
        b"big",
    ))
    .await
    .unwrap();
    s.write_all(&big).await.unwrap();
    s.write_all(&lm::encode_request(Framing::Current, 3, 0, META, b"big"))
        .await
        .unwrap();
    assert_eq!(lm_reply(&mut s, Framing::Current).await[0], 400);
    s.write_all(&lm::encode_request(Framing::Current, 5, 0, META, b""))
        .await
        .unwrap();
    assert_eq!(lm_reply(&mut s, Framing::Current).await[0], 200);
    assert!(
        metrics(&c.admin)
            .await
            .contains(r#"kvmesh_node_cache_errors_total{protocol="lm",kind="too_large"} 1"#)
    );
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lm_garbage_truncated_frames_and_negative_lengths_close_only_that_connection() {
    let c = serve(settings(64 * MIB, None, Framing::Current)).await;
    let mut healthy = TcpStream::connect(&c.lm).await.unwrap();
    // Unknown command: a failure reply, then the connection closes.
    let mut s = TcpStream::connect(&c.lm).await.unwrap();
    s.write_all(&[0xAB; 186]).await.unwrap();
    assert_eq!(lm_reply(&mut s, Framing::Current).await[0], 400);
    assert_eq!(s.read(&mut [0u8; 1]).await.unwrap(), 0);
    // Negative length.
    let mut s = TcpStream::connect(&c.lm).await.unwrap();
    s.write_all(&lm::encode_request(Framing::Current, 1, -1, META, b"k"))
        .await
        .unwrap();
    assert_eq!(lm_reply(&mut s, Framing::Current).await[0], 400);
    assert_eq!(s.read(&mut [0u8; 1]).await.unwrap(), 0);
    // A truncated header, then a truncated payload, then hang up.
    let mut s = TcpStream::connect(&c.lm).await.unwrap();
    s.write_all(&[1, 0, 0]).await.unwrap();
    drop(s);
    let mut s = TcpStream::connect(&c.lm).await.unwrap();
    s.write_all(&lm::encode_request(Framing::Current, 1, 1000, META, b"cut"))
        .await
        .unwrap();
    s.write_all(&[0u8; 10]).await.unwrap();
    drop(s);
    healthy
        .write_all(&lm::encode_request(Framing::Current, 5, 0, META, b""))
        .await
        .unwrap();
    assert_eq!(lm_reply(&mut healthy, Framing::Current).await[0], 200);
    healthy
        .write_all(&lm::encode_request(Framing::Current, 3, 0, META, b"cut"))
        .await
        .unwrap();
    assert_eq!(
        lm_reply(&mut healthy, Framing::Current).await[0],
        400,
        "a cut PUT stores nothing"
    );
    c.handle.shutdown(Duration::ZERO).await;
}

// ---------- Redis with raw bytes ----------

async fn redis_exchange(s: &mut TcpStream, send: &[u8], want: &[u8]) {
    s.write_all(send).await.unwrap();
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("reply in time")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_redis_commands_get_their_replies_in_order() {
    let c = serve(settings(64 * MIB, None, Framing::Current)).await;
    let mut s = TcpStream::connect(&c.redis).await.unwrap();
    redis_exchange(
        &mut s,
        b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$2\r\nxy\r\nGET a\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\nPING\r\n*3\r\n$6\r\nEXISTS\r\n$1\r\na\r\n$1\r\na\r\n*4\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\na\r\nDEL a b\r\nSTRLEN a\r\nDBSIZE\r\n",
        b"+OK\r\n$2\r\nxy\r\n$-1\r\n+PONG\r\n:2\r\n*3\r\n$2\r\nxy\r\n$-1\r\n$2\r\nxy\r\n:1\r\n:0\r\n:0\r\n",
    )
    .await;
    redis_exchange(
        &mut s,
        b"SELECT 0\r\nSELECT 1\r\nGET\r\nFOO bar\r\nSET k v EX 0\r\nSET k v PX 100000 NX\r\nSET k w NX\r\nSET k w XX\r\nGET k\r\nAUTH pw\r\n",
        b"+OK\r\n-ERR DB index is out of range\r\n-ERR wrong number of arguments for 'get' command\r\n-ERR unknown command 'FOO', with args beginning with: 'bar' \r\n-ERR invalid expire time in 'set' command\r\n+OK\r\n$-1\r\n+OK\r\n$1\r\nw\r\n-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
    )
    .await;
    redis_exchange(
        &mut s,
        b"MULTI\r\nSET t 1\r\nGET t\r\nEXEC\r\nHELLO 3\r\n",
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n$1\r\n1\r\n%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n$5\r\nproto\r\n:3\r\n",
    )
    .await;
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_read_as_missing() {
    let c = serve(settings(64 * MIB, None, Framing::Current)).await;
    let mut s = TcpStream::connect(&c.redis).await.unwrap();
    redis_exchange(&mut s, b"SET e v PX 30\r\nEXISTS e\r\n", b"+OK\r\n:1\r\n").await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    redis_exchange(&mut s, b"GET e\r\nEXISTS e\r\n", b"$-1\r\n:0\r\n").await;
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_is_required_before_anything_else() {
    let mut st = settings(64 * MIB, None, Framing::Current);
    st.password = Some("s3cret".into());
    let c = serve(st).await;
    let mut s = TcpStream::connect(&c.redis).await.unwrap();
    redis_exchange(
        &mut s,
        b"GET a\r\nAUTH nope\r\nAUTH s3cret\r\nGET a\r\n",
        b"-NOAUTH Authentication required.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n$-1\r\n",
    )
    .await;
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_garbage_and_huge_lengths_are_errors_that_spare_other_connections() {
    let c = serve(settings(64 * MIB, None, Framing::Current)).await;
    let mut healthy = TcpStream::connect(&c.redis).await.unwrap();
    redis_exchange(&mut healthy, b"SET h 1\r\n", b"+OK\r\n").await;
    for (garbage, error) in [
        (
            &b"*1\r\n$99999999999\r\n"[..],
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*9999999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*2\r\n:1\r\n",
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"*1\r\n$-3\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
    ] {
        let mut s = TcpStream::connect(&c.redis).await.unwrap();
        redis_exchange(&mut s, garbage, error.replace("-ERR ", "-").as_bytes()).await;
        assert_eq!(
            s.read(&mut [0u8; 1]).await.unwrap(),
            0,
            "closed after {error}"
        );
    }
    // A value over --max-value-bytes: an error, and the connection goes on.
    let mut s = TcpStream::connect(&c.redis).await.unwrap();
    let big = 5 * MIB as usize;
    s.write_all(format!("*3\r\n$3\r\nSET\r\n$1\r\nb\r\n${big}\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(&vec![b'x'; big]).await.unwrap();
    redis_exchange(
        &mut s,
        b"\r\nGET b\r\n",
        b"-ERR value larger than the limit (4194304 bytes per value, 9437184 per command)\r\n$-1\r\n",
    )
    .await;
    // A truncated command, then hang up.
    let mut cut = TcpStream::connect(&c.redis).await.unwrap();
    cut.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nz\r\n$100\r\nabc")
        .await
        .unwrap();
    drop(cut);
    // Random bytes.
    let mut noise = TcpStream::connect(&c.redis).await.unwrap();
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = noise.write_all(&bytes).await;
    drop(noise);
    redis_exchange(&mut healthy, b"GET h\r\nEXISTS z\r\n", b"$1\r\n1\r\n:0\r\n").await;
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_active_ones_are_not() {
    let mut st = settings(64 * MIB, None, Framing::Current);
    st.conn.idle_timeout = Some(Duration::from_millis(200));
    let c = serve(st).await;
    let mut idle_redis = TcpStream::connect(&c.redis).await.unwrap();
    let mut idle_lm = TcpStream::connect(&c.lm).await.unwrap();
    let mut busy = TcpStream::connect(&c.redis).await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        redis_exchange(&mut busy, b"PING\r\n", b"+PONG\r\n").await;
    }
    assert!(closed(&mut idle_redis).await);
    assert!(closed(&mut idle_lm).await);
    c.handle.shutdown(Duration::ZERO).await;
}

// ---------- disk tier ----------

async fn metrics(admin: &str) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn gauge(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing in\n{metrics}"))
}

async fn set(s: &mut TcpStream, key: &str, value: &[u8]) {
    s.write_all(
        format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            value.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(value).await.unwrap();
    s.write_all(b"\r\n").await.unwrap();
    let mut ok = [0u8; 5];
    s.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");
}

async fn get(s: &mut TcpStream, key: &str) -> Option<Vec<u8>> {
    s.write_all(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes())
        .await
        .unwrap();
    let mut line = Vec::new();
    loop {
        let b = s.read_u8().await.unwrap();
        line.push(b);
        if line.ends_with(b"\r\n") {
            break;
        }
    }
    let len: i64 = std::str::from_utf8(&line[1..line.len() - 2])
        .unwrap()
        .parse()
        .unwrap();
    if len < 0 {
        return None;
    }
    let mut v = vec![0u8; len as usize + 2];
    s.read_exact(&mut v).await.unwrap();
    v.truncate(len as usize);
    Some(v)
}

fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_evicted_from_ram_are_read_back_from_disk_and_survive_a_restart() {
    let dir = temp_dir("restart");
    let _cleanup = Cleanup(dir.clone());
    let c = serve(settings(4 * MIB, Some(&dir), Framing::Current)).await;
    let mut s = TcpStream::connect(&c.redis).await.unwrap();
    for i in 0..24 {
        set(&mut s, &format!("v{i}"), &value(i, 512 * 1024)).await;
    }
    // The first ones left RAM long ago: they come back from disk.
    for i in 0..24 {
        assert_eq!(
            get(&mut s, &format!("v{i}")).await,
            Some(value(i, 512 * 1024)),
            "v{i}"
        );
    }
    let m = metrics(&c.admin).await;
    assert!(
        gauge(&m, r#"kvmesh_node_cache_hits_total{tier="disk"}"#) > 0.0,
        "{m}"
    );
    assert!(
        gauge(&m, r#"kvmesh_node_cache_promotions_total"#) > 0.0,
        "{m}"
    );
    assert!(gauge(&m, r#"kvmesh_node_cache_bytes{tier="ram"}"#) <= (4 * MIB) as f64);
    drop(s);
    c.handle.shutdown(Duration::from_secs(10)).await;

    // A new process over the same directory: everything is there.
    let c = serve(settings(4 * MIB, Some(&dir), Framing::Current)).await;
    let mut s = TcpStream::connect(&c.redis).await.unwrap();
    let m = metrics(&c.admin).await;
    assert_eq!(
        gauge(&m, r#"kvmesh_node_cache_entries{tier="disk"}"#),
        24.0,
        "{m}"
    );
    for i in 0..24 {
        assert_eq!(
            get(&mut s, &format!("v{i}")).await,
            Some(value(i, 512 * 1024)),
            "v{i} after restart"
        );
    }
    // lm:// sees the same store.
    let mut l = TcpStream::connect(&c.lm).await.unwrap();
    l.write_all(&lm::encode_request(Framing::Current, 3, 0, META, b"v3"))
        .await
        .unwrap();
    assert_eq!(lm_reply(&mut l, Framing::Current).await[0], 200);
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_partial_files_are_misses_and_are_removed() {
    let dir = temp_dir("corrupt");
    let _cleanup = Cleanup(dir.clone());
    let c = serve(settings(4 * MIB, Some(&dir), Framing::Current)).await;
    let mut s = TcpStream::connect(&c.redis).await.unwrap();
    for i in 0..6 {
        set(&mut s, &format!("c{i}"), &value(i, 256 * 1024)).await;
    }
    drop(s);
    c.handle.shutdown(Duration::from_secs(10)).await;

    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kv"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 6);
    // Flip one byte in a value, cut another file short, leave a temp file.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xFF;
    std::fs::write(&files[0], bytes).unwrap();
    let bytes = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(dir.join("deadbeef.kv.7.tmp"), b"partial").unwrap();
    std::fs::write(dir.join("0123.kv"), b"not a cache file").unwrap();

    let c = serve(settings(4 * MIB, Some(&dir), Framing::Current)).await;
    let m = metrics(&c.admin).await;
    assert_eq!(
        gauge(&m, r#"kvmesh_node_cache_entries{tier="disk"}"#),
        5.0,
        "the truncated file is dropped at start\n{m}"
    );
    assert!(
        !files[1].exists()
            && !dir.join("deadbeef.kv.7.tmp").exists()
            && !dir.join("0123.kv").exists()
    );
    let mut s = TcpStream::connect(&c.redis).await.unwrap();
    let mut found = 0;
    for i in 0..6 {
        if let Some(v) = get(&mut s, &format!("c{i}")).await {
            assert_eq!(v, value(i, 256 * 1024), "never a wrong value");
            found += 1;
        }
    }
    assert_eq!(found, 4, "the corrupt and the truncated value are misses");
    assert!(!files[0].exists(), "the corrupt file is deleted when read");
    let m = metrics(&c.admin).await;
    // Two found by the start-up scan (truncated, foreign), one when read.
    assert_eq!(
        gauge(
            &m,
            r#"kvmesh_node_cache_errors_total{protocol="disk",kind="corrupt"}"#
        ),
        3.0,
        "{m}"
    );
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_tier_stays_within_its_bound() {
    let dir = temp_dir("disk-bound");
    let _cleanup = Cleanup(dir.clone());
    let mut st = settings(2 * MIB, Some(&dir), Framing::Current);
    if let Some(d) = st.store.disk.as_mut() {
        d.capacity = 8 * MIB;
    }
    let c = serve(st).await;
    let mut s = TcpStream::connect(&c.redis).await.unwrap();
    for i in 0..120 {
        set(&mut s, &format!("b{i}"), &value(i, 256 * 1024)).await;
    }
    c.handle.shutdown(Duration::from_secs(10)).await;
    let on_disk: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 8 * MIB, "{on_disk} bytes on disk");
    assert!(on_disk > 6 * MIB, "the disk tier is used: {on_disk}");
}

// ---------- real clients ----------

/// Whether `tool` runs here. CI (`KVMESH_REQUIRE_TOOLS=1`) fails without it;
/// elsewhere the test is skipped, loudly.
fn have(tool: &str, probe: &[&str]) -> bool {
    let ok = std::process::Command::new(tool)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("KVMESH_REQUIRE_TOOLS").is_none(),
            "{tool} is required (KVMESH_REQUIRE_TOOLS is set) but `{tool} {}` failed",
            probe.join(" ")
        );
        eprintln!(
            "SKIPPED: `{tool} {}` failed; install it to run this test (.ci/run does)",
            probe.join(" ")
        );
    }
    ok
}

async fn run_tool(cmd: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("tool finished in time")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

fn script(name: &str) -> String {
    format!("{}/tests/node_cache/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lmcache_framed_python_client_round_trips() {
    if !have("python3", &["-c", "import struct, socket"]) {
        return;
    }
    let c = serve(settings(64 * MIB, None, Framing::Current)).await;
    let out = run_tool(
        "python3",
        &[&script("lmcache_client.py"), "127.0.0.1", port(&c.lm)],
        None,
    )
    .await;
    assert!(out.contains("lmcache client: ok"), "{out}");
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_works_with_pipelines_mget_resp3_and_lmcaches_key_pattern() {
    if !have("python3", &["-c", "import redis"]) {
        return;
    }
    let c = serve(settings(64 * MIB, None, Framing::Current)).await;
    let out = run_tool(
        "python3",
        &[&script("redis_py_client.py"), port(&c.redis)],
        None,
    )
    .await;
    assert!(out.contains("redis-py: ok"), "{out}");
    c.handle.shutdown(Duration::ZERO).await;

    let mut st = settings(64 * MIB, None, Framing::Current);
    st.password = Some("pw-123".into());
    let c = serve(st).await;
    let out = run_tool(
        "python3",
        &[&script("redis_py_client.py"), port(&c.redis), "pw-123"],
        None,
    )
    .await;
    assert!(out.contains("redis-py: ok"), "{out}");
    c.handle.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_commands_and_pipe_mode_work() {
    if !have("redis-cli", &["--version"]) {
        return;
    }
    let c = serve(settings(64 * MIB, None, Framing::Current)).await;
    let p = port(&c.redis);
    let cli = |args: &[&str]| {
        let mut v = vec!["-h", "127.0.0.1", "-p", p];
        v.extend_from_slice(args);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_tool("redis-cli", &refs, None).await
    };
    assert_eq!(run(cli(&["PING"])).await.trim(), "PONG");
    assert_eq!(
        run(cli(&["SET", "greeting", "hello world"])).await.trim(),
        "OK"
    );
    assert_eq!(run(cli(&["GET", "greeting"])).await.trim(), "hello world");
    assert_eq!(run(cli(&["MSET", "a", "1", "b", "2"])).await.trim(), "OK");
    assert_eq!(run(cli(&["MGET", "a", "b", "c"])).await, "1\n2\n\n");
    assert_eq!(run(cli(&["EXISTS", "a", "b", "c"])).await.trim(), "2");
    assert!(
        run(cli(&["INFO", "memory"]))
            .await
            .contains("maxmemory:67108864")
    );
    // Pipe mode: many commands in one stream.
    let mut input = String::new();
    for i in 0..1000 {
        input.push_str(&format!("SET pk{i} value-{i}\r\n"));
    }
    let refs: Vec<String> = cli(&["--pipe"]);
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    let out = run_tool("redis-cli", &refs, Some(input.as_bytes())).await;
    assert!(out.contains("errors: 0, replies: 1000"), "{out}");
    assert_eq!(run(cli(&["GET", "pk999"])).await.trim(), "value-999");
    assert_eq!(run(cli(&["DBSIZE"])).await.trim(), "1003");
    // A value from stdin (-x), 1 MiB.
    let big = "z".repeat(1 << 20);
    let refs: Vec<String> = cli(&["-x", "SET", "big"]);
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    assert_eq!(
        run_tool("redis-cli", &refs, Some(big.as_bytes()))
            .await
            .trim(),
        "OK"
    );
    assert_eq!(run(cli(&["STRLEN", "big"])).await.trim(), "1048576");
    c.handle.shutdown(Duration::ZERO).await;
}
