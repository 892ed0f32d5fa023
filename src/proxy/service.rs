//! The proxy service: canonicalise, route, forward with retries, relay.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use tower::Service;

use super::body::{InFlight, ProxyBody, Relay, boxed};
use super::error::ProxyError;
use super::forward::{strip_hop_by_hop, upstream_request};
use super::metrics::{ReasonLabels, RequestLabels, RouteLabel};
use super::state::{Shared, now};
use crate::routing::picker::RouteRequest;
use crate::routing::{Endpoint, canonical_prompt};

/// Response header naming the replica that served the request.
pub const REPLICA_HEADER: &str = "x-kvmesh-replica";
/// Response header `matched/total`: prompt blocks believed cached / hashed.
pub const PREFIX_BLOCKS_HEADER: &str = "x-kvmesh-prefix-blocks";
/// Response header: why the replica was chosen (warm, cold, session, load).
pub const REASON_HEADER: &str = "x-kvmesh-reason";

/// Serves one client connection's requests (after body buffering).
#[derive(Debug, Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
}

impl ProxyService {
    /// A service for a connection from `peer`.
    pub fn new(shared: Arc<Shared>, peer: Option<SocketAddr>) -> Self {
        Self { shared, peer }
    }
}

impl Service<Request<Bytes>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let shared = self.shared.clone();
        let peer = self.peer;
        Box::pin(async move { Ok(handle(shared, peer, req).await) })
    }
}

async fn handle(
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
    req: Request<Bytes>,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let endpoint = if parts.method == Method::POST {
        Endpoint::from_path(parts.uri.path())
    } else {
        Endpoint::Other
    };
    let route = RouteLabel::from(endpoint);
    // Settings can change live (from the pool): read them once per request.
    let (hasher, session_header) = {
        let core = shared.core();
        (core.router.config().hasher, core.session_header.clone())
    };
    let blocks = Arc::new(
        canonical_prompt(endpoint, &body, hasher.max_bytes())
            .map(|p| hasher.hash(&p.model, p.bytes))
            .unwrap_or_default(),
    );
    let session = parts
        .headers
        .get(&session_header)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let request = RouteRequest {
        blocks: &blocks,
        session,
    };

    let mut tried = Vec::new();
    let mut last_error = None;
    for attempt in 0..=shared.cfg.retries {
        let picked = {
            let mut core = shared.core();
            match core.router.route(&request, &tried, now()) {
                Ok(d) => {
                    let backend = core.backends.get(&d.replica).cloned();
                    Ok((d, backend))
                }
                Err(e) => Err(e),
            }
        };
        // Peers learn the placement (encoded outside the router lock).
        if let Ok((_, Some(b))) = &picked
            && shared.cfg.peer_sync_interval.is_some()
            && !blocks.is_empty()
            && !shared.peers.push(&b.name, &blocks)
        {
            shared.metrics.peer_records_dropped.inc();
        }
        let (decision, backend) = match picked {
            Ok((d, Some(b))) => (d, b),
            Ok((mut d, None)) => {
                // Cannot happen: backends and router change together.
                shared.core().router.finish(&mut d);
                return error_response(
                    &shared,
                    route,
                    ProxyError::BadRequest("replica has no address".into()),
                );
            }
            Err(e) => {
                let err = match last_error.take() {
                    Some(source) => ProxyError::Upstream {
                        attempts: attempt,
                        source,
                    },
                    None => ProxyError::Route(e),
                };
                return error_response(&shared, route, err);
            }
        };
        let slot = decision.replica;
        shared
            .metrics
            .decisions
            .get_or_create(&ReasonLabels {
                reason: decision.reason.into(),
            })
            .inc();
        if decision.total_blocks > 0 {
            shared
                .metrics
                .prefix_match_ratio
                .observe(f64::from(decision.matched_blocks) / f64::from(decision.total_blocks));
        }
        let guard = InFlight::new(shared.clone(), decision, backend.name.clone());
        let upstream = match upstream_request(&parts, body.clone(), &backend, peer) {
            Ok(r) => r,
            Err(e) => return error_response(&shared, route, e),
        };
        tracing::debug!(
            replica = %backend.name,
            reason = guard.decision().reason.label(),
            matched_blocks = guard.decision().matched_blocks,
            total_blocks = guard.decision().total_blocks,
            attempt,
            "routing"
        );
        match tokio::time::timeout(shared.cfg.upstream_timeout, shared.client.request(upstream))
            .await
        {
            Err(_) => {
                tracing::warn!(replica = %backend.name, "backend sent no response headers in time");
                let err = ProxyError::UpstreamTimeout {
                    replica: backend.name.clone(),
                    secs: shared.cfg.upstream_timeout.as_secs(),
                };
                return error_response(&shared, route, err);
            }
            Ok(Err(e)) => {
                let ejected = shared.core().router.report_failure(slot, now());
                let labels = super::metrics::Metrics::replica(&backend.name);
                shared.metrics.retries.get_or_create(&labels).inc();
                if ejected {
                    shared.metrics.ejections.get_or_create(&labels).inc();
                    tracing::warn!(replica = %backend.name, error = %e, "replica ejected after repeated failures");
                } else {
                    tracing::info!(replica = %backend.name, error = %e, "backend failed before responding; trying another");
                }
                tried.push(slot);
                last_error = Some(e);
                drop(guard);
            }
            Ok(Ok(resp)) => {
                shared.core().router.report_success(slot);
                let (mut head, incoming) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                let d = guard.decision();
                if let Ok(v) = HeaderValue::from_str(&backend.name) {
                    head.headers.insert(REPLICA_HEADER, v);
                }
                head.headers
                    .insert(REASON_HEADER, HeaderValue::from_static(d.reason.label()));
                if let Ok(v) =
                    HeaderValue::from_str(&format!("{}/{}", d.matched_blocks, d.total_blocks))
                {
                    head.headers.insert(PREFIX_BLOCKS_HEADER, v);
                }
                shared
                    .metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        route,
                        status: head.status.as_u16(),
                        replica: backend.name.clone(),
                    })
                    .inc();
                return Response::from_parts(
                    head,
                    boxed(Relay::new(incoming, guard, Some(blocks.clone()))),
                );
            }
        }
    }
    let err = match last_error {
        Some(source) => ProxyError::Upstream {
            attempts: shared.cfg.retries + 1,
            source,
        },
        None => ProxyError::Route(crate::routing::RouteError::NoHealthyReplica),
    };
    error_response(&shared, route, err)
}

/// The one place an error becomes a response (and is counted and logged).
fn error_response(shared: &Shared, route: RouteLabel, err: ProxyError) -> Response<ProxyBody> {
    tracing::warn!(code = err.code(), error = %err, "request answered by the router");
    shared
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: err.status().as_u16(),
            replica: "none".to_string(),
        })
        .inc();
    err.into_response()
}
