//! Accept loop shared by the proxy and admin listeners: HTTP/1.1 + h2c,
//! keep-alive, header-read timeout, graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;

use super::body::ProxyBody;

/// Connection settings shared by both listeners.
#[derive(Debug, Clone, Copy)]
pub struct ServerSettings {
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// On shutdown, time open connections get to finish.
    pub drain: Duration,
    /// Open connections at most; past it, accepting waits for one to close.
    pub max_connections: usize,
}

/// Counts open connections (a Prometheus gauge, or a private one).
pub type ConnectionGauge = prometheus_client::metrics::gauge::Gauge;

/// Serves `listener` until `shutdown` resolves, then stops accepting and
/// waits up to `drain` for open connections (and their streams) to finish.
/// `make` builds the service for one connection from its peer address.
pub async fn serve<M, S>(
    listener: TcpListener,
    make: M,
    settings: ServerSettings,
    open: ConnectionGauge,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        // Past the connection limit, stop accepting (the kernel's backlog
        // holds new clients) until a connection closes.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(make(peer));
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let watched = graceful.watch(conn);
                let open = open.clone();
                open.inc();
                tokio::spawn(async move {
                    if let Err(e) = watched.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    open.dec();
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(open_connections = open, "stopped accepting; draining");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(settings.drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}
