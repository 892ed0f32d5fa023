//! The `kvmesh node-cache` binary as the DaemonSet runs it: its flags, its
//! memory under a write storm, SIGTERM, and a restart over the same disk.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn kvmesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvmesh"))
}

struct Running {
    child: Child,
    redis: String,
    admin: String,
    log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with the DaemonSet's flags (ports 0) plus `extra`.
fn spawn(memory: u64, disk: Option<(&PathBuf, u64)>, extra: &[&str]) -> Running {
    let mut args: Vec<String> = [
        "--log-format",
        "json",
        "node-cache",
        "--lm-listen",
        "127.0.0.1:0",
        "--redis-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--memory-bytes",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(memory.to_string());
    if let Some((dir, bytes)) = disk {
        args.extend([
            "--disk-path".into(),
            dir.display().to_string(),
            "--disk-bytes".into(),
            bytes.to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut child = kvmesh()
        .args(&args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Owned from here on: a failed expectation below still ends the process.
    let mut running = Running {
        child,
        redis: String::new(),
        admin: String::new(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = running
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("node cache logged its addresses");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        if v["message"] == "node cache listening" {
            running.redis = v["redis"].as_str().expect("redis").to_string();
            running.admin = v["admin"].as_str().expect("admin").to_string();
            return running;
        }
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("admin");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn metric(admin: &str, series: &str) -> f64 {
    let m = http_get(admin, "/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing in\n{m}"))
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn set(s: &mut TcpStream, key: &str, value: &[u8]) {
    write!(
        s,
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
        key.len(),
        value.len()
    )
    .expect("write");
    s.write_all(value).expect("write");
    s.write_all(b"\r\n").expect("write");
    let mut ok = [0u8; 5];
    s.read_exact(&mut ok).expect("reply");
    assert_eq!(&ok, b"+OK\r\n");
}

fn get(s: &mut TcpStream, key: &str) -> Option<Vec<u8>> {
    write!(s, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).expect("write");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        s.read_exact(&mut b).expect("reply");
        line.push(b[0]);
    }
    let len: i64 = std::str::from_utf8(&line[1..line.len() - 2])
        .expect("utf8")
        .parse()
        .expect("len");
    if len < 0 {
        return None;
    }
    let mut v = vec![0u8; len as usize + 2];
    s.read_exact(&mut v).expect("value");
    v.truncate(len as usize);
    Some(v)
}

fn value(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 131 + j * 7) as u8).collect()
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
        .join(format!("node-cache-proc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn sigterm_and_wait(r: &mut Running) {
    let status = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = r.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node cache did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn inconsistent_flags_are_refused_with_the_reason() {
    for (args, want) in [
        (
            &["--disk-bytes", "1Gi"][..],
            "--disk-bytes needs --disk-path",
        ),
        (
            &["--disk-path", "/tmp/x"][..],
            "--disk-path needs --disk-bytes",
        ),
        (
            &["--memory-bytes", "0"][..],
            "--memory-bytes must be more than 0",
        ),
        (&["--memory-bytes", "lots"][..], "is not a byte quantity"),
        (&["--lm-framing", "v9"][..], "invalid value 'v9'"),
    ] {
        let out = kvmesh().arg("node-cache").args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// The bound a user sets is what RAM holds: a write storm of ten times the
/// capacity keeps the reported bytes at or under `--memory-bytes`, and the
/// process's resident memory under the bound plus a stated overhead.
/// `OVERHEAD` is the resident memory of the idle process (≈ 22 MiB for this
/// debug build), the spill queue (a quarter of the RAM tier here, 8 MiB),
/// values in flight on the four connections (4 MiB) and glibc's allocator
/// slack (measured 5–20 MiB: its mmap threshold slides up after large frees).
/// Observed peaks: 76–88 MiB for a 32 MiB tier.
#[test]
fn a_write_storm_of_ten_times_capacity_stays_within_the_memory_bound() {
    const CAPACITY: u64 = 32 * MIB;
    const OVERHEAD: u64 = 64 * MIB;
    let dir = temp_dir("storm");
    let _cleanup = Cleanup(dir.clone());
    let r = spawn(CAPACITY, Some((&dir, 128 * MIB)), &[]);
    let pid = r.child.id();
    let baseline = rss_bytes(pid);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let addr = r.redis.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).expect("connect");
                let sizes = [MIB as usize, 256 * 1024, 4096, 64 * 1024];
                let mut written = 0u64;
                let mut i = 0;
                // 4 writers × 80 MiB = 320 MiB = 10 × capacity.
                while written < 80 * MIB {
                    let len = sizes[i % sizes.len()];
                    set(&mut s, &format!("w{w}-{i}"), &value(i, len));
                    written += len as u64;
                    i += 1;
                }
            })
        })
        .collect();
    let mut peak_rss = 0;
    let mut peak_bytes = 0.0f64;
    while writers.iter().any(|w| !w.is_finished()) {
        peak_rss = peak_rss.max(rss_bytes(pid));
        peak_bytes = peak_bytes.max(metric(&r.admin, r#"kvmesh_node_cache_bytes{tier="ram"}"#));
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in writers {
        w.join().expect("writer");
    }
    peak_rss = peak_rss.max(rss_bytes(pid));
    peak_bytes = peak_bytes.max(metric(&r.admin, r#"kvmesh_node_cache_bytes{tier="ram"}"#));
    eprintln!(
        "baseline RSS {} KiB, peak RSS {} KiB, peak RAM-tier bytes {} KiB",
        baseline / 1024,
        peak_rss / 1024,
        peak_bytes as u64 / 1024
    );
    assert!(
        peak_bytes <= CAPACITY as f64,
        "RAM tier reported {peak_bytes}"
    );
    assert!(
        peak_rss <= CAPACITY + OVERHEAD,
        "RSS {} MiB is over {} MiB + {} MiB",
        peak_rss / MIB,
        CAPACITY / MIB,
        OVERHEAD / MIB
    );
    assert!(metric(&r.admin, r#"kvmesh_node_cache_evictions_total{tier="ram"}"#) > 0.0);
}

#[test]
fn sigterm_writes_ram_to_disk_and_a_restarted_process_serves_it() {
    let dir = temp_dir("sigterm");
    let _cleanup = Cleanup(dir.clone());
    let mut r = spawn(
        16 * MIB,
        Some((&dir, 64 * MIB)),
        &["--spill-queue-bytes", "64Mi"],
    );
    let mut s = TcpStream::connect(&r.redis).expect("connect");
    for i in 0..40 {
        set(&mut s, &format!("k{i}"), &value(i, 512 * 1024));
    }
    drop(s);
    assert!(http_get(&r.admin, "/healthz").starts_with("HTTP/1.1 200"));
    sigterm_and_wait(&mut r);
    let rest: Vec<String> = r.log.try_iter().collect();
    assert!(
        rest.iter()
            .any(|l| l.contains("RAM tier written to the disk tier")),
        "{rest:?}"
    );

    let r = spawn(16 * MIB, Some((&dir, 64 * MIB)), &[]);
    assert_eq!(
        metric(&r.admin, r#"kvmesh_node_cache_entries{tier="disk"}"#),
        40.0
    );
    let mut s = TcpStream::connect(&r.redis).expect("connect");
    for i in 0..40 {
        assert_eq!(
            get(&mut s, &format!("k{i}")),
            Some(value(i, 512 * 1024)),
            "k{i}"
        );
    }
}
