//! Admin endpoints on their own port: /healthz, /readyz, /metrics.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;

use super::body::{ProxyBody, boxed};
use super::state::Shared;

/// Answers one admin request.
pub async fn handle(
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if shared.ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "no healthy replica\n"),
        "/metrics" => {
            shared.refresh_gauges();
            metrics(&registry)
        }
        super::peers::PLACEMENTS_PATH => {
            let (status, body) = super::peers::receive(&shared, req).await;
            text(status, body)
        }
        _ => not_found(),
    })
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<ProxyBody> {
    answer(status, "text/plain", body.into())
}

/// 404 for admin paths that do not exist.
pub fn not_found() -> Response<ProxyBody> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// `registry` in the OpenMetrics text format (shared by every admin port).
pub fn metrics(registry: &Registry) -> Response<ProxyBody> {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => answer(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            out,
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        ),
    }
}

fn answer(status: StatusCode, ctype: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(boxed(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp
}
