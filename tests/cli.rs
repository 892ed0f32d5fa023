//! The `kvmesh` binary as a user runs it: flags, errors, signals.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kvmesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvmesh"))
}

#[test]
fn help_lists_only_subcommands_that_work() {
    let out = kvmesh().arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        [
            "demo",
            "router",
            "bench",
            "sim",
            "operator",
            "node-cache",
            "crd",
            "help"
        ],
        "{text}"
    );
}

#[test]
fn invalid_settings_exit_nonzero_with_the_reason() {
    let out = kvmesh()
        .args([
            "router",
            "--backend",
            "https://engine:8000",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only http:// backends are supported"), "{err}");

    let out = kvmesh().args(["router"]).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backend"));
}

#[test]
fn sigterm_stops_the_router_cleanly() {
    let mut child = kvmesh()
        .args([
            "--log-format",
            "json",
            "router",
            "--backend",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let admin = loop {
        let line = lines
            .next()
            .expect("router logged before exiting")
            .expect("line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        if v["message"] == "router listening" {
            break v["admin"].as_str().expect("admin address").to_string();
        }
    };
    // The admin port answers: the process is up.
    let mut s = std::net::TcpStream::connect(&admin).expect("admin port");
    std::io::Write::write_all(
        &mut s,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "router did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("shutdown requested")),
        "{rest:?}"
    );
}

#[test]
fn demo_quick_runs_both_routers_and_prints_the_comparison() {
    let mut child = kvmesh()
        .args(["demo", "--quick", "--speed", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("demo --quick did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("read");
    assert!(status.success(), "{out}");
    for want in [
        "kvmesh ",
        "round-robin ",
        "kvmesh vs round-robin: mean TTFT",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let errors_column_is_zero = out
        .lines()
        .filter(|l| {
            (l.starts_with("kvmesh ") || l.starts_with("round-robin ")) && !l.contains(" vs ")
        })
        .all(|l| l.split_whitespace().nth(7) == Some("0"));
    assert!(errors_column_is_zero, "{out}");
}
