//! The HTTP endpoints of one simulated engine: vLLM's OpenAI-compatible API
//! and metrics, and the probes SGLang's router makes of its workers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::gpu::Gpu;
use super::metrics::EngineMetrics;
use super::stream::{self, Ending, Meta};
use super::{Fault, Faults};
use crate::proxy::body::{ProxyBody, boxed};
use crate::sim::engine::{Event, prepare};
use crate::sim::template::{self, Api};

/// Response header naming the engine that answered.
pub const ENGINE_HEADER: &str = "x-kvmesh-sim-engine";

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 32 << 20;

/// Everything one engine's endpoints share.
#[derive(Debug)]
pub(super) struct Replica {
    pub index: usize,
    pub model: String,
    pub gpu: Gpu,
    pub metrics: EngineMetrics,
    pub faults: Faults,
    /// Turns true when the server shuts down.
    pub stop: watch::Receiver<bool>,
}

/// The endpoints, by path.
#[derive(Debug, Clone, Copy)]
enum Route {
    Chat,
    Completions,
    Models,
    Health,
    Metrics,
    ServerInfo,
    ModelInfo,
    Load,
    FlushCache,
    ResetPrefixCache,
}

fn route(path: &str) -> Option<(Method, Route)> {
    Some(match path {
        "/v1/chat/completions" => (Method::POST, Route::Chat),
        "/v1/completions" => (Method::POST, Route::Completions),
        "/v1/models" => (Method::GET, Route::Models),
        "/health" | "/health_generate" => (Method::GET, Route::Health),
        "/metrics" => (Method::GET, Route::Metrics),
        "/server_info" | "/get_server_info" => (Method::GET, Route::ServerInfo),
        "/model_info" | "/get_model_info" => (Method::GET, Route::ModelInfo),
        "/get_load" => (Method::GET, Route::Load),
        "/flush_cache" => (Method::POST, Route::FlushCache),
        "/reset_prefix_cache" => (Method::POST, Route::ResetPrefixCache),
        _ => return None,
    })
}

/// Answers one request; every answer names the engine.
pub(super) async fn handle(
    r: Arc<Replica>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut resp = match route(req.uri().path()) {
        None => error(StatusCode::NOT_FOUND, "NotFoundError", "Not Found".into()),
        Some((method, _)) if method != req.method() => {
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "Method Not Allowed".into(),
            );
            if let Ok(v) = HeaderValue::from_str(method.as_str()) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            resp
        }
        Some((_, route)) => answer(&r, route, req).await,
    };
    resp.headers_mut()
        .insert(ENGINE_HEADER, HeaderValue::from(r.index));
    Ok(resp)
}

async fn answer(r: &Replica, route: Route, req: Request<Incoming>) -> Response<ProxyBody> {
    match route {
        Route::Chat => generate(r, Api::Chat, req).await,
        Route::Completions => generate(r, Api::Completions, req).await,
        Route::Health => empty(StatusCode::OK),
        Route::Models => json_response(StatusCode::OK, &models(r)),
        Route::ServerInfo => json_response(StatusCode::OK, &server_info(r)),
        Route::ModelInfo => json_response(StatusCode::OK, &model_info(r)),
        Route::Load => json_response(StatusCode::OK, &load(r)),
        Route::Metrics => match r.metrics.encode() {
            Ok(text) => text_response(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                format!("encoding metrics failed: {e}"),
            ),
        },
        Route::FlushCache | Route::ResetPrefixCache => match r.gpu.reset_cache().await {
            Ok(()) if matches!(route, Route::FlushCache) => text_response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "Cache flushed.\n".into(),
            ),
            Ok(()) => empty(StatusCode::OK),
            Err(e) => unavailable(e),
        },
    }
}

/// A completion: parse, check, maybe meet a fault, run on the engine, answer.
async fn generate(r: &Replica, api: Api, req: Request<Incoming>) -> Response<ProxyBody> {
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let msg = format!("The request body is larger than {MAX_BODY_BYTES} bytes.");
            return error(StatusCode::PAYLOAD_TOO_LARGE, "BadRequestError", msg);
        }
        Err(e) => return bad_request(format!("Could not read the request body: {e}")),
    };
    let input = match template::parse(api, &body, &r.model) {
        Ok(i) => i,
        Err(e) => return bad_request(e.0),
    };
    if input.model != r.model {
        let msg = format!("The model `{}` does not exist.", input.model);
        return error(StatusCode::NOT_FOUND, "NotFoundError", msg);
    }
    let cfg = r.gpu.config();
    let max_len = cfg.cache_tokens / cfg.block_tokens * cfg.block_tokens;
    let (prompt, asked) = (input.tokens.len(), input.max_tokens);
    if prompt.saturating_add(asked) > max_len {
        let place = match api {
            Api::Chat => "messages",
            Api::Completions => "prompt",
        };
        return bad_request(format!(
            "This model's maximum context length is {max_len} tokens. However, you requested \
             {} tokens ({prompt} in the {place}, {asked} in the completion). Please reduce the \
             length of the {place} or completion.",
            prompt + asked
        ));
    }
    let fault = r.faults.draw(input.stream);
    match fault {
        Fault::Fail => {
            let msg = "Simulated engine failure (--fail-rate).".to_string();
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                msg,
            );
        }
        Fault::Stall => return stall(r).await,
        Fault::None | Fault::Close => {}
    }

    let id = r.gpu.next_id();
    let (seq, reply) = prepare(id, &r.model, &input.tokens, asked, cfg.block_tokens);
    let (tx, mut events) = mpsc::unbounded_channel();
    if let Err(e) = r.gpu.submit(seq, tx).await {
        return unavailable(e);
    }
    tracing::debug!(
        engine = r.index,
        id,
        prompt_tokens = prompt,
        max_tokens = asked,
        stream = input.stream,
        "request queued"
    );
    let meta = Meta {
        id: match api {
            Api::Chat => format!("chatcmpl-sim{}-{id}", r.index),
            Api::Completions => format!("cmpl-sim{}-{id}", r.index),
        },
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: r.model.clone(),
        api,
        prompt_tokens: prompt,
        max_tokens: asked,
    };
    if input.stream {
        let ending = Ending {
            include_usage: input.include_usage,
            close_after_first: fault == Fault::Close,
        };
        let mut resp = Response::new(stream::body(meta, ending, reply, events));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return resp;
    }
    let mut cached_tokens = 0;
    while let Some(ev) = events.recv().await {
        match ev {
            Event::FirstToken {
                cached_tokens: c, ..
            } => cached_tokens = c,
            Event::Token { .. } => {}
            Event::Finished { .. } => {
                return json_response(StatusCode::OK, &meta.answer(&reply, cached_tokens));
            }
        }
    }
    unavailable(super::gpu::Stopped)
}

/// Fault injection: no answer until the client leaves (the handler is then
/// dropped) or the server shuts down. The engine never sees the request.
async fn stall(r: &Replica) -> Response<ProxyBody> {
    let _held = r.metrics.stalled();
    let mut stop = r.stop.clone();
    let _ = stop.wait_for(|s| *s).await;
    unavailable(super::gpu::Stopped)
}

/// `/v1/models`, vLLM's shape.
fn models(r: &Replica) -> Value {
    let cfg = r.gpu.config();
    json!({
        "object": "list",
        "data": [{
            "id": r.model,
            "object": "model",
            "created": 0,
            "owned_by": "kvmesh-sim",
            "root": r.model,
            "parent": null,
            "max_model_len": cfg.cache_tokens / cfg.block_tokens * cfg.block_tokens,
        }],
    })
}

/// SGLang's `/server_info`: the fields sgl-router reads (all optional
/// there; `model_id`/`model` are left out because it aliases them).
fn server_info(r: &Replica) -> Value {
    let cfg = r.gpu.config();
    json!({
        "model_path": r.model,
        "tokenizer_path": r.model,
        "served_model_name": r.model,
        "tp_size": 1,
        "dp_size": 1,
        "pp_size": 1,
        "is_embedding": false,
        "context_length": cfg.cache_tokens / cfg.block_tokens * cfg.block_tokens,
        "max_total_num_tokens": cfg.cache_tokens,
        "max_running_requests": cfg.max_num_seqs,
        "max_prefill_tokens": cfg.max_batched_tokens,
        "chunked_prefill_size": cfg.max_batched_tokens,
        "page_size": cfg.block_tokens,
        "version": concat!("kvmesh-sim-", env!("CARGO_PKG_VERSION")),
    })
}

/// SGLang's `/model_info`.
fn model_info(r: &Replica) -> Value {
    json!({
        "model_path": r.model,
        "tokenizer_path": r.model,
        "is_generation": true,
        "has_image_understanding": false,
        "has_audio_understanding": false,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "weight_version": "default",
    })
}

/// SGLang's `/get_load`: one entry per data-parallel rank (here one).
fn load(r: &Replica) -> Value {
    let s = r.gpu.stats();
    let used = (s.kv_cache_usage * r.gpu.config().cache_tokens as f64).round() as u64;
    json!([{
        "dp_rank": 0,
        "num_reqs": s.running + s.waiting,
        "num_waiting_reqs": s.waiting,
        "num_tokens": used,
    }])
}

fn with_type(mut resp: Response<ProxyBody>, ctype: &'static str) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}

fn json_response(status: StatusCode, v: &Value) -> Response<ProxyBody> {
    let mut resp = Response::new(boxed(Full::new(Bytes::from(v.to_string()))));
    *resp.status_mut() = status;
    with_type(resp, "application/json")
}

fn text_response(status: StatusCode, ctype: &'static str, text: String) -> Response<ProxyBody> {
    let mut resp = Response::new(boxed(Full::new(Bytes::from(text))));
    *resp.status_mut() = status;
    with_type(resp, ctype)
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(boxed(Empty::<Bytes>::new()));
    *resp.status_mut() = status;
    resp
}

/// vLLM's error shape.
fn error(status: StatusCode, kind: &str, message: String) -> Response<ProxyBody> {
    let v = json!({
        "object": "error",
        "message": message,
        "type": kind,
        "param": null,
        "code": status.as_u16(),
    });
    json_response(status, &v)
}

fn bad_request(message: String) -> Response<ProxyBody> {
    error(StatusCode::BAD_REQUEST, "BadRequestError", message)
}

fn unavailable(e: super::gpu::Stopped) -> Response<ProxyBody> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailableError",
        format!("{e}; the server is shutting down."),
    )
}
