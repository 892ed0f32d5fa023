//! Errors of the request path, and the one place they become HTTP responses.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::body::{ProxyBody, boxed};
use crate::routing::RouteError;

/// Why the router answered a request itself instead of relaying a backend's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request body exceeded `--max-body-bytes`.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The client did not send its body within `--body-timeout`.
    #[error("request body was not received within {secs} s")]
    BodyTimeout { secs: u64 },
    /// Reading the request body failed (client reset, bad framing).
    #[error("could not read the request body")]
    BodyRead(#[source] hyper::Error),
    /// No replica could be chosen.
    #[error("{0}")]
    Route(#[from] RouteError),
    /// Every attempt failed to reach a backend.
    #[error("could not reach a backend after {attempts} attempt(s)")]
    Upstream {
        attempts: usize,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// A backend accepted the request but sent no response headers in time.
    #[error("backend {replica} did not answer within {secs} s")]
    UpstreamTimeout { replica: String, secs: u64 },
    /// The request could not be turned into an upstream request.
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl ProxyError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyRead(_) | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Route(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Nothing reachable: the service is unavailable, not a bad answer.
            ProxyError::Upstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable machine-readable code (OpenAI's `error.code`), also a metric/log label.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::BodyTimeout { .. } => "request_timeout",
            ProxyError::BodyRead(_) => "bad_request_body",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Route(RouteError::NoReplicas) => "no_replicas",
            ProxyError::Route(RouteError::NoHealthyReplica) => "no_healthy_replica",
            ProxyError::Upstream { .. } => "upstream_unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
        }
    }

    /// OpenAI-style error type.
    fn kind(&self) -> &'static str {
        if self.status().is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        }
    }

    /// The response the client sees: `{"error":{"message","type","code"}}`.
    pub fn into_response(self) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "code": self.code(),
            }
        });
        let mut resp = Response::new(boxed(Full::new(Bytes::from(body.to_string()))));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_become_openai_style_json() {
        let resp = ProxyError::BodyTooLarge { limit: 10 }.into_response();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "request_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("message")
                .contains("10 bytes")
        );
    }
}
