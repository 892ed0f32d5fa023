//! The L7 proxy: hyper/tower server, forwarding with retries, admin endpoints.

pub mod admin;
pub mod body;
pub mod config;
pub mod engine;
pub mod error;
pub mod feedback;
pub mod forward;
pub mod limit;
pub mod metrics;
pub mod peers;
pub mod server;
pub mod service;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Layer;

pub use config::{ConfigError, ProxyConfig, RouterArgs};
pub use service::{PREFIX_BLOCKS_HEADER, REASON_HEADER, REPLICA_HEADER};
use state::Shared;

/// A running proxy: its addresses and the means to stop it.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    /// Where the admin endpoints listen.
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ProxyHandle {
    /// Requests in flight across all replicas.
    pub fn in_flight(&self) -> u32 {
        self.shared
            .core()
            .router
            .status(state::now())
            .iter()
            .map(|s| s.in_flight)
            .sum()
    }

    /// The routing settings in force (they follow the pool with `--pool`).
    pub fn routing(&self) -> crate::routing::RoutingConfig {
        self.shared.routing()
    }

    /// Names of the current replicas.
    pub fn replicas(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .shared
            .core()
            .router
            .status(state::now())
            .into_iter()
            .map(|s| s.name)
            .collect();
        names.sort();
        names
    }

    /// Client connections open on the proxy port.
    pub fn open_connections(&self) -> i64 {
        self.shared.metrics.open_connections.get()
    }

    /// Stops accepting, drains (up to the drain timeout) and waits for both listeners.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts the proxy on already-bound listeners (tests bind 127.0.0.1:0).
pub fn spawn(
    cfg: ProxyConfig,
    listener: TcpListener,
    admin: TcpListener,
) -> std::io::Result<ProxyHandle> {
    spawn_with_client(cfg, listener, admin, None)
}

/// Like [`spawn`], with the Kubernetes client that pod discovery
/// (`--selector`) watches pods through.
pub fn spawn_with_client(
    cfg: ProxyConfig,
    listener: TcpListener,
    admin: TcpListener,
    kube_client: Option<kube::Client>,
) -> std::io::Result<ProxyHandle> {
    let source =
        crate::discovery::source_of(&cfg, kube_client.clone()).map_err(std::io::Error::other)?;
    let addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let metrics = metrics::Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let shared = Arc::new(Shared::new(cfg, metrics));
    let (stop, stopped) = watch::channel(false);
    // Replicas first (a static list applies at once), then the listeners.
    let source_task = source.start(shared.clone(), stop.subscribe());
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let (limit, body_timeout) = (shared.cfg.max_body_bytes, shared.cfg.body_timeout);
    let settings = server::ServerSettings {
        header_read_timeout: shared.cfg.header_read_timeout,
        drain: shared.cfg.drain_timeout,
        max_connections: shared.cfg.max_connections,
    };
    let proxy_shared = shared.clone();
    let proxy = tokio::spawn(server::serve(
        listener,
        move |peer| {
            limit::layer(limit, body_timeout)
                .layer(service::ProxyService::new(proxy_shared.clone(), Some(peer)))
        },
        settings,
        shared.metrics.open_connections.clone(),
        signal(stopped.clone()),
    ));
    let admin_shared = shared.clone();
    let admin = tokio::spawn(server::serve(
        admin,
        move |_| {
            let (shared, registry) = (admin_shared.clone(), registry.clone());
            tower::service_fn(move |req| admin::handle(shared.clone(), registry.clone(), req))
        },
        server::ServerSettings {
            max_connections: 64,
            ..settings
        },
        server::ConnectionGauge::default(),
        signal(stopped),
    ));
    let mut tasks = vec![proxy, admin];
    tasks.extend(source_task);
    if let (Some(interval), Some(source)) = (
        shared.cfg.peer_sync_interval,
        shared.cfg.peer_source.clone(),
    ) {
        let (tx, rx) = watch::channel(Vec::new());
        tasks.push(tokio::spawn(peers::follow(
            kube_client.clone(),
            source,
            tx,
            stop.subscribe(),
        )));
        tasks.push(tokio::spawn(peers::run(
            shared.clone(),
            interval,
            rx,
            stop.subscribe(),
        )));
    }
    if let Some(interval) = shared.cfg.engine_scrape_interval {
        tasks.push(tokio::spawn(engine::run(
            shared.clone(),
            interval,
            shared.cfg.engine_metrics_path.clone(),
            stop.subscribe(),
        )));
    }
    Ok(ProxyHandle {
        addr,
        admin_addr,
        shared,
        stop,
        tasks,
    })
}

/// Why `kvmesh router` could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid settings: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot reach the Kubernetes API for pod discovery: {0}")]
    Kube(#[source] kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// `kvmesh router`: validates settings, listens, serves until SIGTERM/SIGINT, drains.
pub async fn run(args: RouterArgs) -> Result<(), RunError> {
    let cfg = args.validate()?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })
    };
    let listener = bind(args.listen).await?;
    let admin = bind(args.admin_listen).await?;
    let backends = cfg.backends.len();
    let policy = cfg.routing.policy.name();
    let kube = if cfg.discovers() {
        Some(kube::Client::try_default().await.map_err(RunError::Kube)?)
    } else {
        None
    };
    let handle =
        spawn_with_client(cfg, listener, admin, kube).map_err(|source| RunError::Bind {
            addr: args.listen,
            source,
        })?;
    let stop_signal = crate::telemetry::shutdown_signal();
    tracing::info!(addr = %handle.addr, admin = %handle.admin_addr, backends, policy, "router listening");
    stop_signal.await;
    tracing::info!("shutdown requested");
    handle.shutdown().await;
    Ok(())
}
