//! `kvmesh node-cache`: the node-local KV block store. One tiered store
//! (RAM under a hard byte bound, then an optional disk tier) behind two
//! protocols: LMCache's `lm://` remote-server protocol and Redis (RESP2).

pub mod lm;
pub mod metrics;
pub mod redis;
pub mod resp;
pub mod server;
pub mod store;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::lm::Framing;
use self::metrics::NodeCacheMetrics;
use self::redis::RedisContext;
use self::resp::Limits;
use self::server::ConnSettings;
use self::store::disk::{DiskConfig, DiskError};
use self::store::{Store, StoreConfig};
use crate::operator::quantity;
use crate::proxy::admin;
use crate::proxy::body::ProxyBody;
use crate::proxy::server::{ConnectionGauge, ServerSettings, serve};

fn byte_size(s: &str) -> Result<u64, quantity::BadQuantity> {
    quantity::bytes(s)
}

/// Flags of `kvmesh node-cache`. Byte sizes take plain numbers or
/// Kubernetes quantities (`64Gi`, `500M`).
#[derive(Debug, Clone, clap::Args)]
pub struct NodeCacheArgs {
    /// Address of the LMCache remote-server protocol (`lm://host:port`).
    #[arg(long, env = "KVMESH_LM_LISTEN", default_value = "0.0.0.0:65432")]
    pub lm_listen: SocketAddr,
    /// Address of the Redis protocol (`redis://host:port`).
    #[arg(long, env = "KVMESH_REDIS_LISTEN", default_value = "0.0.0.0:6379")]
    pub redis_listen: SocketAddr,
    /// Address of /healthz and /metrics.
    #[arg(long, env = "KVMESH_ADMIN_LISTEN", default_value = "0.0.0.0:9091")]
    pub admin_listen: SocketAddr,
    /// Hard bound of the RAM tier: keys, values and per-entry bookkeeping.
    #[arg(long, env = "KVMESH_MEMORY_BYTES", default_value = "1Gi", value_parser = byte_size)]
    pub memory_bytes: u64,
    /// Directory of the disk tier (values evicted from RAM are written here); none: RAM only.
    #[arg(long, env = "KVMESH_DISK_PATH")]
    pub disk_path: Option<PathBuf>,
    /// Hard bound of the disk tier's files (needs --disk-path).
    #[arg(long, env = "KVMESH_DISK_BYTES", value_parser = byte_size)]
    pub disk_bytes: Option<u64>,
    /// Largest value accepted; a larger one gets an error and the connection stays open.
    #[arg(long, env = "KVMESH_MAX_VALUE_BYTES", default_value = "64Mi", value_parser = byte_size)]
    pub max_value_bytes: u64,
    /// Value bytes waiting to be written to disk at most; past it spills are dropped
    /// and counted (default: a quarter of --memory-bytes, at most 64Mi, so the
    /// queue fits in the 256 MiB the operator grants the pod above the RAM tier).
    #[arg(long, env = "KVMESH_SPILL_QUEUE_BYTES", value_parser = byte_size)]
    pub spill_queue_bytes: Option<u64>,
    /// lm:// header layout of the LMCache release in use.
    #[arg(long, env = "KVMESH_LM_FRAMING", value_enum, default_value = "current")]
    pub lm_framing: Framing,
    /// Password Redis clients must send with AUTH (lm:// has no authentication).
    #[arg(long, env = "KVMESH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Close a connection that sends nothing for this long (0s: never, the
    /// default, as Redis's `timeout 0`: LMCache keeps one connection per
    /// engine open through idle hours and does not expect it to be closed;
    /// TCP keepalive still reaps peers that vanished).
    #[arg(long, env = "KVMESH_IDLE_TIMEOUT", default_value = "0s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
}

/// Why the node cache could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeCacheError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// The validated, typed configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreConfig,
    pub conn: ConnSettings,
    pub password: Option<String>,
}

impl NodeCacheArgs {
    /// Checks the flags together and builds the settings.
    pub fn settings(&self) -> Result<Settings, NodeCacheError> {
        let bad = |m: &str| Err(NodeCacheError::Settings(m.to_string()));
        if self.memory_bytes == 0 {
            return bad("--memory-bytes must be more than 0");
        }
        if self.max_value_bytes == 0 {
            return bad("--max-value-bytes must be more than 0");
        }
        if self.max_value_bytes > i32::MAX as u64 {
            return bad("--max-value-bytes must be below 2Gi (lm:// lengths are 32-bit)");
        }
        if self.password.as_deref() == Some("") {
            return bad("--password must not be empty (leave it unset for no password)");
        }
        let disk = match (&self.disk_path, self.disk_bytes) {
            (None, None) => None,
            (None, Some(_)) => return bad("--disk-bytes needs --disk-path"),
            (Some(_), None) => return bad("--disk-path needs --disk-bytes"),
            (Some(_), Some(0)) => return bad("--disk-bytes must be more than 0"),
            (Some(dir), Some(capacity)) => Some(DiskConfig {
                dir: dir.clone(),
                capacity,
                queue_bytes: self
                    .spill_queue_bytes
                    .unwrap_or((self.memory_bytes / 4).min(64 << 20)),
            }),
        };
        if disk.is_none() && self.spill_queue_bytes.is_some() {
            return bad("--spill-queue-bytes needs --disk-path");
        }
        Ok(Settings {
            store: StoreConfig {
                memory_bytes: self.memory_bytes,
                disk,
                max_value_bytes: self.max_value_bytes,
            },
            conn: ConnSettings {
                idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
                drain: Duration::from_secs(5),
                framing: self.lm_framing,
            },
            password: self.password.clone(),
        })
    }
}

/// A running node cache.
#[derive(Debug)]
pub struct NodeCacheHandle {
    pub store: Arc<Store>,
    pub metrics: NodeCacheMetrics,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeCacheHandle {
    /// Stops accepting, drains connections, then writes RAM and the spill
    /// queue to the disk tier (for at most `persist`) and stops the writer.
    pub async fn shutdown(self, persist: Duration) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let store = self.store.clone();
        let deadline = std::time::Instant::now() + persist;
        let _ = tokio::task::spawn_blocking(move || store.close(deadline)).await;
    }
}

/// Starts the node cache on already-bound listeners (tests bind port 0).
pub fn start(
    settings: Settings,
    lm: TcpListener,
    redis: TcpListener,
    admin: TcpListener,
) -> Result<NodeCacheHandle, NodeCacheError> {
    let metrics = NodeCacheMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let store = Arc::new(Store::open(settings.store.clone(), metrics.clone())?);
    let (stop_tx, stop) = watch::channel(false);
    let max_value = settings.store.max_value_bytes as usize;
    let limits = Limits {
        max_value_bytes: max_value,
        max_command_bytes: max_value.saturating_mul(2).saturating_add(1 << 20),
    };
    let ctx = Arc::new(RedisContext {
        store: store.clone(),
        metrics: metrics.clone(),
        password: settings.password.clone(),
        started: Instant::now(),
        commands: AtomicU64::new(0),
        next_client_id: AtomicU64::new(0),
    });
    let registry = Arc::new(registry);
    let admin_store = store.clone();
    let admin_metrics = metrics.clone();
    let mut admin_stop = stop.clone();
    let tasks = vec![
        tokio::spawn(server::serve_lm(
            lm,
            store.clone(),
            metrics.clone(),
            settings.conn.clone(),
            stop.clone(),
        )),
        tokio::spawn(server::serve_redis(
            redis,
            ctx,
            limits,
            settings.conn.clone(),
            stop.clone(),
        )),
        tokio::spawn(serve(
            admin,
            move |_| {
                let registry = registry.clone();
                let store = admin_store.clone();
                let metrics = admin_metrics.clone();
                tower::service_fn(move |req| {
                    admin_answer(registry.clone(), store.clone(), metrics.clone(), req)
                })
            },
            ServerSettings {
                header_read_timeout: Duration::from_secs(10),
                drain: Duration::from_secs(2),
                max_connections: 64,
            },
            ConnectionGauge::default(),
            async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            },
        )),
    ];
    Ok(NodeCacheHandle {
        store,
        metrics,
        stop: stop_tx,
        tasks,
    })
}

async fn admin_answer(
    registry: Arc<Registry>,
    store: Arc<Store>,
    metrics: NodeCacheMetrics,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" | "/readyz" => admin::text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            metrics.observe(&store.stats());
            admin::metrics(&registry)
        }
        _ => admin::not_found(),
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, NodeCacheError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeCacheError::Bind { addr, source })
}

/// `kvmesh node-cache`: serves until SIGTERM/SIGINT, then drains.
pub async fn run(args: NodeCacheArgs) -> Result<(), NodeCacheError> {
    let settings = args.settings()?;
    let lm = bind(args.lm_listen).await?;
    let redis = bind(args.redis_listen).await?;
    let admin = bind(args.admin_listen).await?;
    let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        lm = %addr(&lm),
        redis = %addr(&redis),
        admin = %addr(&admin),
        memory_bytes = settings.store.memory_bytes,
        disk_bytes = settings.store.disk.as_ref().map_or(0, |d| d.capacity),
        "node cache listening"
    );
    let handle = tokio::task::block_in_place(|| start(settings, lm, redis, admin))?;
    crate::telemetry::shutdown_signal().await;
    tracing::info!("shutdown requested");
    // Kubernetes gives 30 s by default between SIGTERM and SIGKILL; the
    // drain takes at most 5 s.
    handle.shutdown(Duration::from_secs(20)).await;
    tracing::info!("node cache stopped");
    Ok(())
}
