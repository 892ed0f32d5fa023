//! Whole-proxy tests: a kvmesh router in front of in-process backends on loopback.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Frame;
use kvmesh::proxy::{PREFIX_BLOCKS_HEADER, REASON_HEADER, REPLICA_HEADER};
use support::*;
use tokio::sync::mpsc;

async fn backends(n: usize, mode: Mode) -> Vec<TestBackend> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TestBackend::start(mode.clone()).await);
    }
    v
}

fn refs(b: &[TestBackend]) -> Vec<&TestBackend> {
    b.iter().collect()
}

fn max_over_mean(counts: impl IntoIterator<Item = usize>) -> f64 {
    let v: Vec<usize> = counts.into_iter().collect();
    let mean = v.iter().sum::<usize>() as f64 / v.len() as f64;
    *v.iter().max().unwrap_or(&0) as f64 / mean
}

fn replica_of(headers: &http::HeaderMap) -> String {
    headers[REPLICA_HEADER].to_str().expect("ascii").to_string()
}

const SYSTEM: &str = "You are a meticulous assistant for an online bookshop. Answer briefly, cite the catalogue, never invent titles. ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_up_chat_turns_land_on_the_replica_that_served_the_previous_turn() {
    let b = backends(4, Mode::Json).await;
    let router = router(&refs(&b), &[]).await;
    let addr = router.addr;
    // 250 sessions × 4 turns = 1000 requests, 16 sessions at a time.
    let system = SYSTEM.repeat(4);
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for session in 0..250 {
        let (sem, system) = (sem.clone(), system.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.expect("sem");
            let c = client();
            let mut history: Vec<(String, String)> = vec![("system".into(), system)];
            let mut served = Vec::new();
            for turn in 0..4 {
                history.push((
                    "user".into(),
                    format!(
                        "Session {session}, question {turn}: is book #{} in stock?",
                        session * 31 + turn
                    ),
                ));
                let msgs: Vec<(&str, &str)> = history
                    .iter()
                    .map(|(r, c)| (r.as_str(), c.as_str()))
                    .collect();
                let (status, headers, _) =
                    post(&c, addr, "/v1/chat/completions", chat("m", &msgs), &[]).await;
                assert_eq!(status, StatusCode::OK);
                served.push(replica_of(&headers));
                history.push((
                    "assistant".into(),
                    format!(
                        "Yes, book #{} is in stock, shelf {turn}.",
                        session * 31 + turn
                    ),
                ));
            }
            served
        }));
    }
    let (mut follow, mut same) = (0, 0);
    let mut per_replica: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let served = t.await.expect("session");
        for w in served.windows(2) {
            follow += 1;
            same += usize::from(w[0] == w[1]);
        }
        for r in served {
            *per_replica.entry(r).or_default() += 1;
        }
    }
    let sticky = same as f64 / follow as f64;
    assert!(
        sticky >= 0.95,
        "only {sticky:.3} of follow-ups stayed on their replica"
    );
    assert_eq!(per_replica.len(), 4, "{per_replica:?}");
    let share = max_over_mean(per_replica.values().copied());
    assert!(
        share <= 1.25,
        "max/mean request share {share:.2}: {per_replica:?}"
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_distinct_prefixes_spread_evenly() {
    let b = backends(4, Mode::Json).await;
    let router = router(&refs(&b), &[]).await;
    let c = client();
    for i in 0..2000 {
        let body = serde_json::json!({"model": "m", "prompt": format!("document {i}: {}", "lorem ipsum ".repeat(8))}).to_string();
        let (status, _, _) = post(&c, router.addr, "/v1/completions", body, &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let share = max_over_mean(b.iter().map(TestBackend::count));
    assert!(
        share <= 1.25,
        "max/mean {share:.2}: {:?}",
        b.iter().map(TestBackend::count).collect::<Vec<_>>()
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shared_prompt_at_high_concurrency_spills_to_more_than_one_replica() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let b = backends(4, Mode::Gate(gate.clone())).await;
    let router = router(&refs(&b), &[]).await;
    let body = chat("m", &[("system", &SYSTEM.repeat(8)), ("user", "hello")]);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (addr, body) = (router.addr, body.clone());
        tasks.push(tokio::spawn(async move {
            post(&client(), addr, "/v1/chat/completions", body, &[]).await
        }));
    }
    // All 32 are held by the backends at once.
    assert!(
        eventually(Duration::from_secs(10), || b
            .iter()
            .map(TestBackend::count)
            .sum::<usize>()
            == 32)
        .await
    );
    let busy = b.iter().filter(|x| x.count() > 0).count();
    assert!(busy > 1, "all 32 concurrent requests went to one replica");
    let max = b.iter().map(TestBackend::count).max().unwrap_or(0);
    assert!(max <= 10, "load bound ceil(1.25·32/4)=10 exceeded: {max}");
    gate.add_permits(1000);
    for t in tasks {
        assert_eq!(t.await.expect("task").0, StatusCode::OK);
    }
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_chunks_reach_the_client_before_the_backend_finishes() {
    let (hook, mut streams) = mpsc::unbounded_channel();
    let b = backends(1, Mode::Stream(hook)).await;
    let router = router(&refs(&b), &[]).await;
    let req = http::Request::post(format!("http://{}/v1/chat/completions", router.addr))
        .body(http_body_util::Full::new(Bytes::from(chat(
            "m",
            &[("user", "stream please")],
        ))))
        .expect("request");
    let c = client();
    let resp_fut = tokio::spawn(async move { c.request(req).await });
    let frames = streams.recv().await.expect("backend got the request");
    let resp = resp_fut.await.expect("task").expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    for i in 0..3 {
        let chunk = format!("data: {{\"chunk\":{i}}}\n\n");
        frames
            .send(Ok(Frame::data(Bytes::from(chunk.clone()))))
            .await
            .expect("send");
        // The backend has not finished: this chunk must arrive on its own.
        let got = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("chunk in time");
        let got = got.expect("frame").expect("ok").into_data().expect("data");
        assert_eq!(got, chunk.as_bytes());
    }
    frames
        .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
        .await
        .expect("send");
    drop(frames);
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(rest, "data: [DONE]\n\n");
    assert!(eventually(Duration::from_secs(5), || router.in_flight() == 0).await);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnect_cancels_the_upstream_request_and_in_flight_returns_to_zero() {
    let (hook, mut streams) = mpsc::unbounded_channel();
    let b = backends(1, Mode::Stream(hook)).await;
    let router = router(&refs(&b), &[]).await;
    let req = http::Request::post(format!("http://{}/v1/completions", router.addr))
        .body(http_body_util::Full::new(Bytes::from(
            r#"{"model":"m","prompt":"tell me a long story","stream":true}"#,
        )))
        .expect("request");
    let c = client();
    let resp = c.request(req).await.expect("response");
    let frames = streams.recv().await.expect("backend got the request");
    frames
        .send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
        .await
        .expect("send");
    let mut body = resp.into_body();
    body.frame().await.expect("frame").expect("ok");
    assert_eq!(router.in_flight(), 1);
    drop(body);
    drop(c);
    // The router drops its upstream stream: the backend's body channel closes.
    tokio::time::timeout(Duration::from_secs(10), frames.closed())
        .await
        .expect("upstream cancelled");
    assert!(
        eventually(Duration::from_secs(5), || router.in_flight() == 0).await,
        "in-flight leaked"
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_fails_no_request_that_had_not_started() {
    let b = backends(4, Mode::Json).await;
    // A long back-off: however slow the machine, the dead replica is ejected once.
    let router = router(&refs(&b), &["--eject-base", "60s", "--eject-max", "60s"]).await;
    let c = client();
    b[1].kill();
    for i in 0..200 {
        let body =
            serde_json::json!({"model": "m", "prompt": format!("request {i}: summarise the report")}).to_string();
        let (status, headers, _) = post(&c, router.addr, "/v1/completions", body, &[]).await;
        assert_eq!(status, StatusCode::OK, "request {i} failed");
        assert_ne!(replica_of(&headers), b[1].name);
    }
    let (_, metrics) = get(&c, &format!("http://{}/metrics", router.admin_addr)).await;
    let ejected = format!(
        "kvmesh_router_ejections_total{{replica=\"{}\"}} 1",
        b[1].name
    );
    assert!(metrics.contains(&ejected), "{metrics}");
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_answers_503_with_an_openai_style_error() {
    let b = backends(2, Mode::Json).await;
    let router = router(&refs(&b), &[]).await;
    for x in &b {
        x.kill();
    }
    let c = client();
    for _ in 0..5 {
        let (status, headers, body) = post(
            &c,
            router.addr,
            "/v1/completions",
            r#"{"model":"m","prompt":"hi"}"#,
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json error");
        assert_eq!(v["error"]["type"], "server_error");
        assert!(
            matches!(
                v["error"]["code"].as_str(),
                Some("upstream_unreachable" | "no_healthy_replica")
            ),
            "{v}"
        );
    }
    let (status, _) = get(&c, &format!("http://{}/readyz", router.admin_addr)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_413_and_never_reaches_a_backend() {
    let b = backends(1, Mode::Json).await;
    let router = router(&refs(&b), &["--max-body-bytes", "1000"]).await;
    let c = client();
    let (status, _, body) = post(&c, router.addr, "/v1/completions", vec![b'x'; 5000], &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["code"], "request_too_large");
    assert_eq!(b[0].count(), 0);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_forwarded_untouched_and_the_backend_answer_returned() {
    let b = backends(
        2,
        Mode::Fixed(400, r#"{"error":{"message":"bad json from engine"}}"#),
    )
    .await;
    let router = router(&refs(&b), &[]).await;
    let c = client();
    let raw = b"{\"model\": \"m\", \"messages\": [ oops";
    let (status, _, body) = post(&c, router.addr, "/v1/chat/completions", &raw[..], &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, r#"{"error":{"message":"bad json from engine"}}"#);
    let seen: Vec<Seen> = b
        .iter()
        .flat_map(|x| x.seen.lock().expect("lock").clone())
        .collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, &raw[..]);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_json_types_and_unknown_paths_are_routed_by_load() {
    let b = backends(2, Mode::Json).await;
    let router = router(&refs(&b), &[]).await;
    let c = client();
    for body in [
        r#"{"model":"m","prompt":5}"#,
        r#"{"model":"m","messages":"x"}"#,
        r#"{"model":7}"#,
        "[]",
        "null",
    ] {
        for path in [
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/responses",
            "/v1/messages",
        ] {
            let (status, headers, _) = post(&c, router.addr, path, body, &[]).await;
            assert_eq!(status, StatusCode::OK, "{path} {body}");
            assert_eq!(headers[PREFIX_BLOCKS_HEADER], "0/0");
        }
    }
    let (status, body) = get(&c, &format!("http://{}/v1/models?limit=3", router.addr)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("backend"));
    let last = b
        .iter()
        .flat_map(|x| x.seen.lock().expect("lock").clone())
        .find(|s| s.method == "GET")
        .expect("GET forwarded");
    assert_eq!(last.path, "/v1/models?limit=3");
    let (_, metrics) = get(&c, &format!("http://{}/metrics", router.admin_addr)).await;
    assert!(
        metrics.contains("kvmesh_router_decisions_total{reason=\"load\"} 21"),
        "{metrics}"
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_say_which_replica_served_and_how_much_prefix_it_held() {
    let b = backends(3, Mode::Json).await;
    let router = router(&refs(&b), &[]).await;
    let c = client();
    let first = chat(
        "m",
        &[
            ("system", &SYSTEM.repeat(3)),
            ("user", "What is new this week?"),
        ],
    );
    let (_, h1, body) = post(&c, router.addr, "/v1/chat/completions", first.clone(), &[]).await;
    let replica = replica_of(&h1);
    assert!(
        String::from_utf8_lossy(&body).contains(&replica),
        "header names the replica that answered"
    );
    assert!(
        h1[PREFIX_BLOCKS_HEADER]
            .to_str()
            .expect("ascii")
            .starts_with("0/")
    );
    let (_, h2, _) = post(&c, router.addr, "/v1/chat/completions", first, &[]).await;
    assert_eq!(replica_of(&h2), replica);
    let blocks = h2[PREFIX_BLOCKS_HEADER]
        .to_str()
        .expect("ascii")
        .to_string();
    let (m, t) = blocks.split_once('/').expect("m/t");
    assert_eq!(m, t, "a repeated prompt is fully matched: {blocks}");
    assert_eq!(h2[REASON_HEADER], "warm");
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_header_pins_requests_to_one_replica() {
    let b = backends(4, Mode::Json).await;
    let router = router(&refs(&b), &["--session-header", "X-User"]).await;
    let c = client();
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        let body = serde_json::json!({"model": "m", "prompt": format!("unrelated prompt {i}")})
            .to_string();
        let (_, h, _) = post(
            &c,
            router.addr,
            "/v1/completions",
            body,
            &[("x-user", "alice")],
        )
        .await;
        seen.insert(replica_of(&h));
    }
    assert_eq!(seen.len(), 1);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let b = backends(2, Mode::Json).await;
    let router = router(&refs(&b), &[]).await;
    let c = client();
    post(
        &c,
        router.addr,
        "/v1/completions",
        r#"{"model":"m","prompt":"hello there"}"#,
        &[],
    )
    .await;
    let admin = router.admin_addr;
    assert_eq!(
        get(&c, &format!("http://{admin}/healthz")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&c, &format!("http://{admin}/readyz")).await.0,
        StatusCode::OK
    );
    let (status, m) = get(&c, &format!("http://{admin}/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "kvmesh_router_requests_total{route=\"completions\",status=\"200\"",
        "kvmesh_router_decisions_total{reason=\"cold\"} 1",
        "kvmesh_router_prefix_match_ratio_bucket",
        "kvmesh_router_upstream_ttfb_seconds_bucket",
        "kvmesh_router_in_flight{replica=",
        "kvmesh_router_replica_healthy{replica=",
        "kvmesh_router_open_connections ",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    assert_eq!(
        get(&c, &format!("http://{admin}/nope")).await.0,
        StatusCode::NOT_FOUND
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_open_stream_finish_and_refuses_new_connections() {
    let (hook, mut streams) = mpsc::unbounded_channel();
    let b = backends(1, Mode::Stream(hook)).await;
    let router = router(&refs(&b), &[]).await;
    let addr = router.addr;
    let c = client();
    let req = http::Request::post(format!("http://{addr}/v1/completions"))
        .body(http_body_util::Full::new(Bytes::from(
            r#"{"model":"m","prompt":"x"}"#,
        )))
        .expect("request");
    let resp = c.request(req).await.expect("response");
    let frames = streams.recv().await.expect("stream");
    let stopping = tokio::spawn(router.shutdown());
    // New connections are refused once the listener closes.
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            addr
        )
        .is_err())
        .await
    );
    frames
        .send(Ok(Frame::data(Bytes::from_static(b"data: late\n\n"))))
        .await
        .expect("send");
    drop(frames);
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("stream finished")
        .to_bytes();
    assert_eq!(body, "data: late\n\n");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("drained")
        .expect("task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_and_h2c_backends_are_served() {
    let b = backends(2, Mode::Json).await;
    let router = router(&refs(&b), &["--upstream-h2c"]).await;
    let c = h2c_client();
    for i in 0..10 {
        let body = format!(r#"{{"model":"m","prompt":"h2 prompt {i}"}}"#);
        let (status, headers, body) = post(&c, router.addr, "/v1/completions", body, &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(String::from_utf8_lossy(&body).contains(&replica_of(&headers)));
    }
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = backends(1, Mode::Json).await;
    let router = router(&refs(&b), &["--header-read-timeout", "200ms"]).await;
    let mut slow = tokio::net::TcpStream::connect(router.addr)
        .await
        .expect("connect");
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    // The router closes the connection (possibly after a 408) instead of waiting forever.
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 10 s");
    assert_eq!(b[0].count(), 0);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_body_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = backends(1, Mode::Json).await;
    let router = router(&refs(&b), &["--body-timeout", "200ms"]).await;
    let mut slow = tokio::net::TcpStream::connect(router.addr)
        .await
        .expect("connect");
    slow.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\"",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("request_timeout"));
    assert_eq!(b[0].count(), 0);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_clients_wait_for_a_free_slot() {
    let b = backends(1, Mode::Json).await;
    let router = router(&refs(&b), &["--max-connections", "1"]).await;
    let hog = tokio::net::TcpStream::connect(router.addr)
        .await
        .expect("connect");
    // Let the router take the first connection before the second arrives.
    assert!(eventually(Duration::from_secs(5), || router.open_connections() == 1).await);
    let addr = router.addr;
    let waiting = tokio::spawn(async move {
        post(
            &client(),
            addr,
            "/v1/completions",
            r#"{"model":"m","prompt":"x"}"#,
            &[],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served beyond --max-connections");
    drop(hog);
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served after a slot freed")
        .expect("task");
    assert_eq!(status, StatusCode::OK);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_reporting_no_cached_tokens_loses_its_stale_index_entries() {
    let b = backends(
        1,
        Mode::Fixed(
            200,
            r#"{"usage":{"prompt_tokens":300,"prompt_tokens_details":{"cached_tokens":0}}}"#,
        ),
    )
    .await;
    let router = router(&refs(&b), &[]).await;
    let c = client();
    let ask = |topic: &str| {
        chat(
            "m",
            &[
                ("system", &format!("{topic}: {}", SYSTEM.repeat(6))),
                ("user", "Same question every time"),
            ],
        )
    };
    let (old, served) = (ask("old"), ask("new"));
    let blocks = |h: &http::HeaderMap| h[PREFIX_BLOCKS_HEADER].to_str().expect("ascii").to_string();
    for body in [&old, &served] {
        let (_, h, _) = post(&c, router.addr, "/v1/chat/completions", body.clone(), &[]).await;
        assert!(blocks(&h).starts_with("0/"));
    }
    // The index predicts a full hit; the engine says it had nothing cached:
    // it dropped what the index still lists, oldest first.
    let (_, h, _) = post(&c, router.addr, "/v1/chat/completions", served.clone(), &[]).await;
    let (m, t) = blocks(&h)
        .split_once('/')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .expect("m/t");
    assert_eq!(m, t, "predicted a full hit");
    // So the index drops as many of its oldest blocks as it overestimated
    // (12, the older prompt's tail entry first, then 11 of its 12 blocks);
    // the prompt just computed stays (the engine holds it again).
    let (_, h, _) = post(&c, router.addr, "/v1/chat/completions", old, &[]).await;
    assert_eq!(blocks(&h), "1/12", "stale entries kept");
    let (_, metrics) = get(&c, &format!("http://{}/metrics", router.admin_addr)).await;
    let line = format!(
        "kvmesh_router_prefix_mispredictions_total{{replica=\"{}\"}} 1",
        b[0].name
    );
    assert!(metrics.contains(&line), "{metrics}");
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_reporting_a_deep_queue_gets_fewer_requests_and_garbage_metrics_are_ignored() {
    let b = backends(3, Mode::Json).await;
    *b[0].metrics.lock().expect("lock") = "# TYPE vllm:num_requests_waiting gauge\n\
        vllm:num_requests_waiting{model_name=\"m\"} 60\n\
        vllm:num_requests_running{model_name=\"m\"} 16\n\
        vllm:kv_cache_usage_perc{model_name=\"m\"} 0.97\n"
        .to_string();
    *b[1].metrics.lock().expect("lock") =
        "<html><body>vllm:num_requests_waiting lots</body></html>".to_string();
    // b[2] answers /metrics with 404.
    let router = router(&refs(&b), &["--engine-scrape-interval", "100ms"]).await;
    let c = client();
    let admin = router.admin_addr;
    let (deep, garbage, missing) = (&b[0].name, &b[1].name, &b[2].name);
    let mut page = String::new();
    for _ in 0..100 {
        page = get(&c, &format!("http://{admin}/metrics")).await.1;
        if page.contains(&format!(
            "kvmesh_router_engine_queue_depth{{replica=\"{deep}\"}} 60"
        )) && page.contains(&format!(
            "kvmesh_router_engine_scrape_errors_total{{replica=\"{garbage}\"}}"
        )) && page.contains(&format!(
            "kvmesh_router_engine_scrape_errors_total{{replica=\"{missing}\"}}"
        )) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        page.contains(&format!(
            "kvmesh_router_engine_kv_usage_ratio{{replica=\"{deep}\"}} 0.97"
        )),
        "{page}"
    );
    assert!(
        !page.contains(&format!(
            "kvmesh_router_engine_queue_depth{{replica=\"{garbage}\"}}"
        )),
        "garbage became a load:\n{page}"
    );
    for i in 0..90 {
        let body = serde_json::json!({"model": "m", "prompt": format!("question {i}: {}", "lorem ipsum ".repeat(8))}).to_string();
        let (status, _, _) = post(&c, router.addr, "/v1/completions", body, &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let counts: Vec<usize> = b.iter().map(TestBackend::count).collect();
    assert!(counts[0] < 9, "the deep queue took {counts:?}");
    assert!(
        counts[1] > 25 && counts[2] > 25,
        "engines with bad metrics were penalised: {counts:?}"
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_learns_its_peers_placements_and_refuses_garbage_batches() {
    let b = backends(4, Mode::Json).await;
    // B first, so A can name B's admin port as its peer.
    let router_b = router(&refs(&b), &["--peer-sync-interval", "0"]).await;
    let peer = format!("http://{}", router_b.admin_addr);
    let router_a = router(
        &refs(&b),
        &["--peer", &peer, "--peer-sync-interval", "50ms"],
    )
    .await;
    let c = client();
    let prompts: Vec<String> = (0..12)
        .map(|i| {
            serde_json::json!({"model": "m", "prompt": format!("document {i}: {}", "lorem ipsum dolor ".repeat(30))})
                .to_string()
        })
        .collect();
    let mut placed = Vec::new();
    for p in &prompts {
        let (status, h, _) = post(&c, router_a.addr, "/v1/completions", p.clone(), &[]).await;
        assert_eq!(status, StatusCode::OK);
        placed.push(replica_of(&h));
    }
    let admin_b = router_b.admin_addr;
    let mut learned = false;
    for _ in 0..100 {
        let page = get(&c, &format!("http://{admin_b}/metrics")).await.1;
        if page.contains("kvmesh_router_peer_records_received_total 12") {
            learned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(learned, "router B never learned A's 12 placements");
    for (p, where_a) in prompts.iter().zip(&placed) {
        let (_, h, _) = post(&c, router_b.addr, "/v1/completions", p.clone(), &[]).await;
        assert_eq!(
            &replica_of(&h),
            where_a,
            "B sent a prompt A placed elsewhere"
        );
        assert_eq!(h[REASON_HEADER], "warm");
    }
    // A batch that is not one: 400, counted, B still routes.
    let resp = c
        .request(
            http::Request::post(format!("http://{admin_b}/kvmesh/v1/placements"))
                .body(http_body_util::Full::new(Bytes::from_static(
                    b"KVMP\x01garbage",
                )))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let page = get(&c, &format!("http://{admin_b}/metrics")).await.1;
    assert!(
        page.contains("kvmesh_router_peer_batches_rejected_total 1"),
        "{page}"
    );
    let (status, _, _) = post(
        &c,
        router_b.addr,
        "/v1/completions",
        prompts[0].clone(),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    router_a.shutdown().await;
    router_b.shutdown().await;
}
