//! `kvmesh sim` end to end: simulated engines on 127.0.0.1:0, driven over
//! HTTP as vLLM and SGLang clients would.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kvmesh::sim::server::{SimArgs, SimHandle, spawn};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::timeout;

const MODEL: &str = "sim-llama-3.1-8b";

/// Every test finishes well within this.
const LIMIT: Duration = Duration::from_secs(20);

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn settings(replicas: usize) -> SimArgs {
    SimArgs::loopback(replicas, 100.0)
}

async fn start(args: SimArgs) -> SimHandle {
    let mut listeners = Vec::new();
    for _ in 0..args.replicas {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    spawn(&args, listeners).expect("engines start")
}

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(method: Method, addr: SocketAddr, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

/// Sends a request; returns status, headers and the whole body.
async fn call(
    c: &TestClient,
    method: Method,
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = c
        .request(request(method, addr, path, body))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes();
    (parts.status, parts.headers, body)
}

async fn get_json(c: &TestClient, addr: SocketAddr, path: &str) -> Value {
    let (status, _, body) = call(c, Method::GET, addr, path, "").await;
    assert_eq!(status, StatusCode::OK, "{path}");
    serde_json::from_slice(&body).expect("JSON")
}

async fn post_json(
    c: &TestClient,
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let (status, _, body) = call(c, Method::POST, addr, path, &body.to_string()).await;
    (status, serde_json::from_slice(&body).expect("JSON"))
}

/// A chat body: a long shared system prompt and a question.
fn chat(question: &str, max_tokens: usize, stream: bool) -> Value {
    let system = "You are a careful assistant for a shipping company. ".repeat(20);
    json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// The `data:` payloads of an SSE body.
fn sse_events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// A counter or gauge of `/metrics`.
async fn metric(c: &TestClient, addr: SocketAddr, name: &str) -> f64 {
    let (status, _, body) = call(c, Method::GET, addr, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body).into_owned();
    let prefix = format!("{name}{{model_name=\"{MODEL}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

#[tokio::test]
async fn a_streamed_chat_sends_one_chunk_per_token_that_joins_into_the_plain_answer() {
    timeout(LIMIT, async {
        let sim = start(settings(1)).await;
        let (c, addr) = (client(), sim.addrs[0]);
        let (status, plain) = post_json(
            &c,
            addr,
            "/v1/chat/completions",
            &chat("Where is my parcel?", 20, false),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(plain["object"], "chat.completion");
        assert_eq!(plain["choices"][0]["finish_reason"], "length");
        assert_eq!(plain["usage"]["completion_tokens"], 20);
        let content = plain["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
            .to_string();

        let body = chat("Where is my parcel?", 20, true).to_string();
        let (status, headers, body) =
            call(&c, Method::POST, addr, "/v1/chat/completions", &body).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("text/event-stream")
        );
        assert_eq!(headers["x-kvmesh-sim-engine"], "0");
        let events = sse_events(&body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).expect("chunk JSON"))
            .collect();
        let (tokens, usage) = chunks.split_at(chunks.len() - 1);
        assert_eq!(tokens.len(), 20, "one chunk per token");
        assert!(
            tokens
                .iter()
                .all(|t| t["object"] == "chat.completion.chunk")
        );
        assert_eq!(tokens[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(tokens[19]["choices"][0]["finish_reason"], "length");
        let streamed: String = tokens
            .iter()
            .map(|t| {
                t["choices"][0]["delta"]["content"]
                    .as_str()
                    .expect("delta content")
            })
            .collect();
        assert_eq!(streamed, content);
        assert_eq!(usage[0]["choices"], json!([]));
        assert_eq!(usage[0]["usage"]["completion_tokens"], 20);
        assert_eq!(
            usage[0]["usage"]["prompt_tokens"],
            plain["usage"]["prompt_tokens"]
        );
        sim.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_completion_request_gets_text_completion_shapes_streamed_or_not() {
    timeout(LIMIT, async {
        let sim = start(settings(1)).await;
        let (c, addr) = (client(), sim.addrs[0]);
        let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 7});
        let (status, plain) = post_json(&c, addr, "/v1/completions", &body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(plain["object"], "text_completion");
        let text = plain["choices"][0]["text"]
            .as_str()
            .expect("text")
            .to_string();

        let body =
            json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 7, "stream": true});
        let (status, _, body) =
            call(&c, Method::POST, addr, "/v1/completions", &body.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        let events = sse_events(&body);
        assert_eq!(
            events.len(),
            8,
            "7 tokens and [DONE], no usage chunk unless asked: {events:?}"
        );
        let streamed: String = events[..7]
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(e).expect("chunk")["choices"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(streamed, text);
        sim.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_repeated_prompt_reports_cached_tokens_and_moves_the_prefix_cache_counters() {
    timeout(LIMIT, async {
        let sim = start(settings(1)).await;
        let (c, addr) = (client(), sim.addrs[0]);
        let (_, first) = post_json(
            &c,
            addr,
            "/v1/chat/completions",
            &chat("Track order 17", 5, false),
        )
        .await;
        let (_, second) = post_json(
            &c,
            addr,
            "/v1/chat/completions",
            &chat("Track order 17", 5, false),
        )
        .await;
        let prompt = first["usage"]["prompt_tokens"]
            .as_u64()
            .expect("prompt tokens");
        let cached = |v: &Value| {
            v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .expect("cached tokens")
        };
        assert_eq!(cached(&first), 0, "a cold cache");
        assert!(
            cached(&second) > prompt / 2,
            "{} of {prompt} cached",
            cached(&second)
        );

        assert_eq!(
            metric(&c, addr, "vllm:prefix_cache_queries_total").await,
            (2 * prompt) as f64
        );
        assert_eq!(
            metric(&c, addr, "vllm:prefix_cache_hits_total").await,
            cached(&second) as f64
        );
        assert_eq!(metric(&c, addr, "vllm:request_success_total").await, 2.0);
        assert_eq!(metric(&c, addr, "vllm:generation_tokens_total").await, 10.0);
        assert_eq!(metric(&c, addr, "vllm:num_requests_running").await, 0.0);
        let stats = &sim.stats()[0];
        assert_eq!(
            (stats.prefix_cache_hits, stats.finished),
            (cached(&second), 2)
        );
        sim.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn malformed_or_impossible_requests_get_vllm_style_errors() {
    timeout(LIMIT, async {
        let sim = start(SimArgs {
            cache_tokens: 1024,
            ..settings(1)
        })
        .await;
        let (c, addr) = (client(), sim.addrs[0]);
        let long = "word ".repeat(2000);
        for (path, body, status, kind, words) in [
            (
                "/v1/chat/completions",
                "{oops".to_string(),
                400,
                "BadRequestError",
                "Invalid JSON",
            ),
            (
                "/v1/chat/completions",
                json!({"model": MODEL}).to_string(),
                400,
                "BadRequestError",
                "messages",
            ),
            (
                "/v1/completions",
                json!({"prompt": "x", "max_tokens": 0}).to_string(),
                400,
                "BadRequestError",
                "at least 1",
            ),
            (
                "/v1/completions",
                json!({"prompt": long}).to_string(),
                400,
                "BadRequestError",
                "maximum context length is 1024 tokens",
            ),
            (
                "/v1/completions",
                json!({"model": "gpt-9", "prompt": "x"}).to_string(),
                404,
                "NotFoundError",
                "gpt-9",
            ),
            (
                "/v1/embeddings",
                "{}".to_string(),
                404,
                "NotFoundError",
                "Not Found",
            ),
        ] {
            let (got, headers, body) = call(&c, Method::POST, addr, path, &body).await;
            assert_eq!(got.as_u16(), status, "{path} {body:?}");
            assert_eq!(headers["x-kvmesh-sim-engine"], "0");
            let v: Value = serde_json::from_slice(&body).expect("JSON error");
            assert_eq!(
                (v["object"].as_str(), v["type"].as_str(), v["code"].as_u64()),
                (Some("error"), Some(kind), Some(status as u64))
            );
            assert!(v["param"].is_null());
            assert!(
                v["message"].as_str().is_some_and(|m| m.contains(words)),
                "{v}"
            );
        }
        let (got, headers, _) = call(&c, Method::GET, addr, "/v1/chat/completions", "").await;
        assert_eq!(got, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers["allow"], "POST");
        assert_eq!(
            sim.stats()[0].prompt_tokens,
            0,
            "nothing reached the engine"
        );
        sim.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn fail_rate_one_answers_every_completion_with_a_500() {
    timeout(LIMIT, async {
        let sim = start(SimArgs {
            fail_rate: 1.0,
            ..settings(1)
        })
        .await;
        let (c, addr) = (client(), sim.addrs[0]);
        for _ in 0..3 {
            let (status, v) =
                post_json(&c, addr, "/v1/chat/completions", &chat("hi", 3, false)).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(v["object"], "error");
        }
        assert_eq!(
            call(&c, Method::GET, addr, "/health", "").await.0,
            StatusCode::OK,
            "probes are not faulted"
        );
        sim.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn close_rate_one_breaks_each_stream_after_its_first_token() {
    timeout(LIMIT, async {
        let sim = start(SimArgs {
            close_rate: 1.0,
            ..settings(1)
        })
        .await;
        let (c, addr) = (client(), sim.addrs[0]);
        let resp = c
            .request(request(
                Method::POST,
                addr,
                "/v1/chat/completions",
                &chat("hi", 50, true).to_string(),
            ))
            .await
            .expect("headers arrive");
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut received = Vec::new();
        let failed = loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    received.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]))
                }
                Some(Err(_)) => break true,
                None => break false,
            }
        };
        assert!(failed, "the stream ends with an error, not cleanly");
        let events = sse_events(&received);
        assert_eq!(
            events.len(),
            1,
            "exactly the first token arrived: {events:?}"
        );
        assert!(!events.iter().any(|e| e == "[DONE]"));
        // Non-streamed requests are not closed.
        let (status, _) = post_json(&c, addr, "/v1/chat/completions", &chat("hi", 5, false)).await;
        assert_eq!(status, StatusCode::OK);
        sim.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn stall_rate_one_never_answers_and_nothing_leaks_when_the_client_leaves() {
    timeout(LIMIT, async {
        let sim = start(SimArgs {
            stall_rate: 1.0,
            ..settings(1)
        })
        .await;
        let (c, addr) = (client(), sim.addrs[0]);
        for stream in [false, true] {
            let pending = c.request(request(
                Method::POST,
                addr,
                "/v1/chat/completions",
                &chat("hi", 5, stream).to_string(),
            ));
            assert!(
                timeout(Duration::from_millis(300), pending).await.is_err(),
                "no answer within 300 ms"
            );
        }
        // The clients left (their futures were dropped): the server lets go.
        while metric(&c, addr, "kvmesh_sim_stalled_requests").await > 0.0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stats = &sim.stats()[0];
        assert_eq!(
            (stats.prompt_tokens, stats.waiting, stats.running),
            (0, 0, 0),
            "stalled requests never reach the engine"
        );

        // One still waiting is released with a 503 when the server stops.
        let waiting = tokio::spawn({
            let c = c.clone();
            async move {
                c.request(request(
                    Method::POST,
                    addr,
                    "/v1/completions",
                    r#"{"prompt":"x"}"#,
                ))
                .await
                .map(|r| r.status())
            }
        });
        while metric(&c, addr, "kvmesh_sim_stalled_requests").await < 1.0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sim.shutdown().await;
        let status = waiting.await.expect("task").expect("an answer");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_breaks_nothing() {
    timeout(LIMIT, async {
        let sim = start(settings(1)).await;
        let (c, addr) = (client(), sim.addrs[0]);
        let resp = c
            .request(request(
                Method::POST,
                addr,
                "/v1/chat/completions",
                &chat("tell me a story", 300, true).to_string(),
            ))
            .await
            .expect("headers");
        let mut body = resp.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.data_ref().is_some_and(|d| d.starts_with(b"data: ")));
        drop(body);
        // The engine finishes the sequence on its own; later requests are served.
        let (status, v) = post_json(
            &c,
            addr,
            "/v1/chat/completions",
            &chat("and another", 3, false),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        while sim.stats()[0].finished < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(sim.stats()[0].running, 0);
        sim.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn probes_answer_in_the_shapes_vllm_clients_and_sglang_router_parse() {
    timeout(LIMIT, async {
        let sim = start(settings(1)).await;
        let (c, addr) = (client(), sim.addrs[0]);
        let (status, _, body) = call(&c, Method::GET, addr, "/health", "").await;
        assert_eq!((status, body.len()), (StatusCode::OK, 0));

        let models = get_json(&c, addr, "/v1/models").await;
        assert_eq!(models["object"], "list");
        assert_eq!(models["data"][0]["id"], MODEL);
        assert_eq!(models["data"][0]["root"], MODEL);
        assert!(models["data"][0]["max_model_len"].as_u64().is_some());

        for path in ["/server_info", "/get_server_info"] {
            let info = get_json(&c, addr, path).await;
            assert_eq!(info["model_path"], MODEL, "{path}");
            assert_eq!(info["served_model_name"], MODEL);
            assert_eq!(info["dp_size"], 1);
            // sgl-router reads `model` as an alias of `model_id`: both would not parse.
            assert!(info.get("model").is_none() || info.get("model_id").is_none());
        }
        for path in ["/model_info", "/get_model_info"] {
            let info = get_json(&c, addr, path).await;
            assert_eq!(
                (info["model_path"].as_str(), info["is_generation"].as_bool()),
                (Some(MODEL), Some(true)),
                "{path}"
            );
        }
        let load = get_json(&c, addr, "/get_load").await;
        let entry = &load[0];
        assert_eq!(load.as_array().map(Vec::len), Some(1), "{load}");
        for key in ["dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"] {
            assert!(entry[key].as_i64().is_some(), "{key} in {load}");
        }

        // Both cache resets empty the prefix cache.
        for reset in ["/flush_cache", "/reset_prefix_cache"] {
            post_json(&c, addr, "/v1/chat/completions", &chat("warm", 2, false)).await;
            let (status, _, _) = call(&c, Method::POST, addr, reset, "").await;
            assert_eq!(status, StatusCode::OK, "{reset}");
            let (_, again) =
                post_json(&c, addr, "/v1/chat/completions", &chat("warm", 2, false)).await;
            assert_eq!(
                again["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
                "after {reset}"
            );
        }
        sim.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn two_engines_on_two_ports_keep_separate_caches() {
    timeout(LIMIT, async {
        let sim = start(settings(2)).await;
        let c = client();
        assert_ne!(sim.addrs[0], sim.addrs[1]);
        let cached = |v: &Value| {
            v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .expect("cached")
        };
        let body = chat("same question", 4, false).to_string();
        let (_, h0, _) = call(
            &c,
            Method::POST,
            sim.addrs[0],
            "/v1/chat/completions",
            &body,
        )
        .await;
        let (_, warm) = post_json(
            &c,
            sim.addrs[0],
            "/v1/chat/completions",
            &chat("same question", 4, false),
        )
        .await;
        let (_, h1, cold) = call(
            &c,
            Method::POST,
            sim.addrs[1],
            "/v1/chat/completions",
            &body,
        )
        .await;
        let cold: Value = serde_json::from_slice(&cold).expect("JSON");
        assert_eq!(
            (&h0["x-kvmesh-sim-engine"], &h1["x-kvmesh-sim-engine"]),
            (&"0".parse().expect("hv"), &"1".parse().expect("hv"))
        );
        assert!(cached(&warm) > 0);
        assert_eq!(cached(&cold), 0, "engine 1 never saw the prompt");
        let stats = sim.stats();
        assert_eq!((stats[0].finished, stats[1].finished), (2, 1));
        sim.shutdown().await;
    })
    .await
    .expect("in time");
}

#[tokio::test]
async fn nonsense_settings_are_refused_before_anything_listens() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let err = spawn(
        &SimArgs {
            speed: 0.0,
            ..settings(1)
        },
        vec![listener],
    )
    .expect_err("refused");
    assert!(err.to_string().contains("--speed"), "{err}");
    let err = spawn(&settings(2), Vec::new()).expect_err("refused");
    assert!(err.to_string().contains("listeners"), "{err}");
}
