//! Upstream side: the pooled backend client and request/response header rewriting.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::config::Backend;
use super::error::ProxyError;

/// Pooled HTTP/1.1 (or h2c) client to the backends.
pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the backend client: connect timeout, TCP_NODELAY, idle pool.
pub fn client(connect_timeout: Duration, h2c: bool) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(h2c)
        .build(connector)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Drops hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(h);
    }
    headers.remove(header::UPGRADE);
}

/// The request to send to `backend`: same method, path, query and headers
/// (minus hop-by-hop and Host), `x-forwarded-for` extended with the client.
pub fn upstream_request(
    parts: &Parts,
    body: Bytes,
    backend: &Backend,
    peer: Option<SocketAddr>,
) -> Result<Request<Full<Bytes>>, ProxyError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::builder()
        .scheme("http")
        .authority(backend.authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("cannot forward path: {e}")))?;
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(host) = parts.headers.get(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    if let Some(peer) = peer {
        let ip = peer.ip().to_string();
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// A request of the router's own (engine metrics, peer placements) to
/// `authority`: `req` carries the path; the answer's body, at most `limit`
/// bytes, when its status is a success. Errors are one line of text.
pub async fn side_request(
    client: &UpstreamClient,
    authority: &http::uri::Authority,
    mut req: Request<Full<Bytes>>,
    limit: usize,
) -> Result<Bytes, String> {
    use http_body_util::{BodyExt, Limited};
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = format!("http://{authority}{path}")
        .parse::<Uri>()
        .map_err(|e| format!("bad address {authority}: {e}"))?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions?x=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn hop_by_hop_headers_do_not_cross_the_proxy() {
        let p = parts(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("authorization", "Bearer k"),
            ("host", "router.local"),
        ]);
        let backend = Backend::parse("http://10.0.0.1:8000").expect("backend");
        let req = upstream_request(
            &p,
            Bytes::from_static(b"{}"),
            &backend,
            Some("192.0.2.7:5555".parse().expect("addr")),
        )
        .expect("request");
        let h = req.headers();
        for gone in ["connection", "x-secret-hop", "keep-alive", "te", "host"] {
            assert!(h.get(gone).is_none(), "{gone} was forwarded");
        }
        assert_eq!(h["authorization"], "Bearer k");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-host"], "router.local");
        assert_eq!(
            req.uri().to_string(),
            "http://10.0.0.1:8000/v1/chat/completions?x=1"
        );
    }

    #[test]
    fn x_forwarded_for_is_appended_to() {
        let p = parts(&[("x-forwarded-for", "198.51.100.1")]);
        let backend = Backend::parse("http://b:1").expect("backend");
        let req = upstream_request(
            &p,
            Bytes::new(),
            &backend,
            Some("192.0.2.7:1".parse().expect("addr")),
        )
        .expect("request");
        assert_eq!(req.headers()["x-forwarded-for"], "198.51.100.1, 192.0.2.7");
    }
}
