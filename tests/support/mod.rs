//! In-process test servers: inference backends that record what they receive
//! and can be told to stream, hold, or fail; and a kvmesh router in front.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What a test backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// How a test backend answers.
#[derive(Clone, Default)]
pub enum Mode {
    /// 200 with `{"backend": name}`.
    #[default]
    Json,
    /// Streams: each request hands the test a sender for its body frames
    /// through this channel; the body ends when the test drops the sender.
    Stream(mpsc::UnboundedSender<FrameSender>),
    /// Holds every request until the gate opens, then answers JSON.
    Gate(Arc<tokio::sync::Semaphore>),
    /// Answers with this status and body, whatever came in.
    Fixed(u16, &'static str),
}

type TestBody = BoxBody<Bytes, Infallible>;

/// Pushes body frames of one streamed response.
pub type FrameSender = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A fake inference engine on 127.0.0.1:0.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The engine metrics page `GET /metrics` serves (empty: 404). Scrapes
    /// are not recorded in `seen`.
    pub metrics: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestBackend {
    pub async fn start(mode: Mode) -> TestBackend {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), mode).await
    }

    /// On a given address (e.g. 127.0.0.2 with another backend's port, as
    /// pods share a port on different IPs).
    pub async fn start_on(addr: SocketAddr, mode: Mode) -> TestBackend {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let name = format!("http://{addr}");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(Mutex::new(String::new()));
        let (seen2, name2, metrics2) = (seen.clone(), name.clone(), metrics.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, mode, name) = (seen2.clone(), mode.clone(), name2.clone());
                let metrics = metrics2.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, mode, name) = (seen.clone(), mode.clone(), name.clone());
                        let metrics = metrics.clone();
                        async move {
                            if req.method() == http::Method::GET && req.uri().path() == "/metrics" {
                                let page = metrics.lock().expect("lock").clone();
                                let status = if page.is_empty() { 404 } else { 200 };
                                return Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(page)).boxed())
                                        .expect("response"),
                                );
                            }
                            Ok::<_, Infallible>(answer(req, seen, mode, name).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestBackend {
            name,
            addr,
            seen,
            metrics,
            task,
        }
    }

    /// Stops accepting and closes every open connection: connects are refused.
    pub fn kill(&self) {
        self.task.abort();
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: Mode,
    name: String,
) -> Response<TestBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    seen.lock().expect("lock").push(Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body,
    });
    let json = || {
        Response::builder()
            .header("content-type", "application/json")
            .header("connection", "keep-alive")
            .body(Full::new(Bytes::from(format!("{{\"backend\":\"{name}\"}}"))).boxed())
            .expect("response")
    };
    match mode {
        Mode::Json => json(),
        Mode::Fixed(status, text) => Response::builder()
            .status(StatusCode::from_u16(status).expect("status"))
            .body(Full::new(Bytes::from_static(text.as_bytes())).boxed())
            .expect("response"),
        Mode::Gate(gate) => {
            let _permit = gate.acquire().await.expect("gate");
            json()
        }
        Mode::Stream(hook) => {
            let (tx, rx) = mpsc::channel(16);
            let _ = hook.send(tx);
            let stream = futures_util::stream::unfold(
                rx,
                |mut rx: mpsc::Receiver<Result<Frame<Bytes>, Infallible>>| async move {
                    rx.recv().await.map(|f| (f, rx))
                },
            );
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BoxBody::new(StreamBody::new(stream)))
                .expect("response")
        }
    }
}

/// A kvmesh router in front of `backends`, with extra flags.
pub async fn router(backends: &[&TestBackend], extra: &[&str]) -> kvmesh::proxy::ProxyHandle {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: kvmesh::proxy::RouterArgs,
    }
    let list = backends
        .iter()
        .map(|b| b.name.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut argv = vec!["kvmesh", "--backend", list.as_str()];
    argv.extend_from_slice(extra);
    let cfg = Cli::parse_from(argv).args.validate().expect("valid config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    kvmesh::proxy::spawn(cfg, listener, admin).expect("spawn")
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client that speaks HTTP/2 without TLS (prior knowledge).
pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// POSTs JSON to the router; returns status, headers and the whole body.
pub async fn post(
    c: &TestClient,
    addr: SocketAddr,
    path: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut b = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(Full::new(body.into())).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

pub async fn get(c: &TestClient, url: &str) -> (StatusCode, String) {
    let resp = c.get(url.parse().expect("uri")).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `cond` every few milliseconds until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

/// A chat completion body.
pub fn chat(model: &str, messages: &[(&str, &str)]) -> String {
    let msgs: Vec<serde_json::Value> = messages
        .iter()
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    serde_json::json!({"model": model, "messages": msgs}).to_string()
}
