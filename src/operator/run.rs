//! `kvmesh operator`: leader election, the controller while leading, and
//! the admin endpoints (/healthz, /readyz, /metrics).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::builders::{BuildSettings, ROUTER_CLUSTER_ROLE};
use super::controller::{Context, run_controller};
use super::leader::Elector;
use super::metrics::OperatorMetrics;
use crate::proxy::admin;
use crate::proxy::body::ProxyBody;
use crate::proxy::server::{ConnectionGauge, ServerSettings, serve};

/// Flags of `kvmesh operator`.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Watch pools in this namespace only (default: all namespaces).
    #[arg(long, env = "KVMESH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KVMESH_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Image for node caches and routers whose pool names none.
    #[arg(long, env = "KVMESH_IMAGE", default_value = concat!("ghcr.io/kvmesh/kvmesh:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// The cluster's DNS domain (for the URLs in pool status).
    #[arg(long, env = "KVMESH_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The ClusterRole (installed by the chart) bound to each pool's router.
    #[arg(long, env = "KVMESH_ROUTER_CLUSTER_ROLE", default_value = ROUTER_CLUSTER_ROLE)]
    pub router_cluster_role: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "KVMESH_LEASE_NAME", default_value = "kvmesh-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own; the chart sets POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kvmesh-system")]
    pub lease_namespace: String,
    /// This replica's identity in the election (the chart sets POD_NAME).
    #[arg(long, env = "POD_NAME", default_value = "kvmesh-operator")]
    pub identity: String,
    /// How long a leader's lease lasts without renewal.
    #[arg(long, env = "KVMESH_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
}

/// Why the operator could not run.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// `kvmesh operator`, with the Kubernetes client from the environment
/// (in-cluster service account or kubeconfig).
pub async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    let stop_signal = crate::telemetry::shutdown_signal();
    let client = Client::try_default().await.map_err(OperatorError::Client)?;
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| OperatorError::Bind {
            addr: args.admin_listen,
            source,
        })?;
    let (stop_tx, stop) = watch::channel(false);
    let running = tokio::spawn(operate(client, args, admin, stop));
    stop_signal.await;
    tracing::info!("shutdown requested");
    let _ = stop_tx.send(true);
    let _ = running.await;
    Ok(())
}

/// Runs the operator on `client` until `stop` turns true: campaigns for the
/// lease and reconciles only while leading.
pub async fn operate(
    client: Client,
    args: OperatorArgs,
    admin: TcpListener,
    stop: watch::Receiver<bool>,
) {
    let metrics = OperatorMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let admin_task = tokio::spawn(serve(
        admin,
        move |_| {
            let registry = registry.clone();
            tower::service_fn(move |req| admin_answer(registry.clone(), req))
        },
        ServerSettings {
            header_read_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(5),
            max_connections: 64,
        },
        ConnectionGauge::default(),
        wait_stop(stop.clone()),
    ));

    let elector = Elector::new(
        Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        &args.lease_name,
        &args.identity,
        args.lease_duration,
    );
    let (lead_tx, mut leading) = watch::channel(false);
    let election = tokio::spawn(elector.run(lead_tx, stop.clone()));
    let settings = BuildSettings {
        default_image: args.image.clone(),
        cluster_domain: args.cluster_domain.clone(),
        router_cluster_role: args.router_cluster_role.clone(),
    };
    let ctx = Arc::new(Context::new(client, settings, metrics.clone()));
    loop {
        let mut s = stop.clone();
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { break },
            _ = s.wait_for(|s| *s) => break,
        }
        tracing::info!(identity = %args.identity, "leading: reconciling pools");
        metrics.leader.set(1);
        let mut lost = leading.clone();
        let mut s = stop.clone();
        let ended = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => {}
                _ = s.wait_for(|s| *s) => {}
            }
        };
        run_controller(ctx.clone(), args.namespace.as_deref(), ended).await;
        metrics.leader.set(0);
        tracing::info!("stopped reconciling");
        if *stop.borrow() {
            break;
        }
    }
    let _ = election.await;
    let _ = admin_task.await;
}

async fn admin_answer(
    registry: Arc<Registry>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" | "/readyz" => admin::text(StatusCode::OK, "ok\n"),
        "/metrics" => admin::metrics(&registry),
        _ => admin::not_found(),
    })
}
