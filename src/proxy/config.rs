//! `kvmesh router` settings: the clap flags (each with a `KVMESH_…` env var),
//! parsed once into a validated [`ProxyConfig`].

use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme, Uri};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::routing::{BlockHasher, Policy, RoutingConfig};

/// Flags of `kvmesh router`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// Address the proxy listens on (OpenAI-compatible API).
    #[arg(long, env = "KVMESH_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "KVMESH_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Inference backend base URL (http://host:port); repeat or comma-separate.
    #[arg(
        long = "backend",
        env = "KVMESH_BACKENDS",
        value_delimiter = ',',
        required_unless_present_any = ["selector", "pool", "inference_pool"]
    )]
    pub backends: Vec<String>,
    /// Instead of --backend: the KvCachePool `namespace/name` whose pods
    /// are the replicas; its routing settings apply live.
    #[arg(long, env = "KVMESH_POOL", conflicts_with_all = ["backends", "selector"])]
    pub pool: Option<String>,
    /// Instead of --backend: a Gateway API Inference Extension InferencePool
    /// `namespace/name` (inference.networking.k8s.io/v1) whose pods are the replicas.
    #[arg(long, env = "KVMESH_INFERENCE_POOL", conflicts_with_all = ["backends", "selector", "pool"])]
    pub inference_pool: Option<String>,
    /// Instead of --backend: route to the Ready pods matching this label
    /// selector (e.g. `app=vllm`), watched in --namespace.
    #[arg(long, env = "KVMESH_SELECTOR", conflicts_with = "backends")]
    pub selector: Option<String>,
    /// Namespace of the pods --selector matches.
    #[arg(long, env = "KVMESH_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Port the selected pods serve the OpenAI API on.
    #[arg(long, env = "KVMESH_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Routing policy: kvmesh (prefix-aware, bounded load), or the baselines
    /// round-robin and least-loaded.
    #[arg(long, env = "KVMESH_POLICY", default_value = "kvmesh", value_parser = ["kvmesh", "round-robin", "least-loaded"])]
    pub policy: String,
    /// Bytes of canonical prompt per hashed block (64 ≈ 16 tokens).
    #[arg(long, env = "KVMESH_BLOCK_BYTES", default_value_t = 64)]
    pub block_bytes: usize,
    /// Hash at most this many leading blocks of a prompt.
    #[arg(long, env = "KVMESH_MAX_BLOCKS", default_value_t = 4096)]
    pub max_blocks: usize,
    /// Load factor c: a replica takes a request while its in-flight count is
    /// below ceil(c·(total+1)/replicas). At least 1.0.
    #[arg(long, env = "KVMESH_LOAD_FACTOR", default_value_t = 5.0)]
    pub load_factor: f64,
    /// Prefix blocks remembered per replica (≈ its KV cache size in blocks).
    #[arg(long, env = "KVMESH_INDEX_CAPACITY_BLOCKS", default_value_t = 32_768)]
    pub index_capacity_blocks: usize,
    /// Share of recent requests (0–1) that makes the prefix they carry a hot
    /// shared prefix (spread over replicas, not followed); 0 = 1/(3·replicas).
    #[arg(long, env = "KVMESH_HOT_PREFIX_SHARE", default_value_t = 0.0)]
    pub hot_prefix_share: f64,
    /// Weight of queued prefill blocks against blocks to compute (0: the
    /// in-flight bound alone guards queues).
    #[arg(long, env = "KVMESH_QUEUE_WEIGHT", default_value_t = 0.0)]
    pub queue_weight: f64,
    /// New prefixes skip replicas whose cache footprint exceeds this
    /// multiple of the mean (0 = off).
    #[arg(long, env = "KVMESH_COLD_FOOTPRINT_FACTOR", default_value_t = 1.05)]
    pub cold_footprint_factor: f64,
    /// `c` of the bound new prefixes are placed under: 1 = only replicas at
    /// or below the mean load take them. With several router replicas that
    /// do not share placements (`--peer-sync-interval 0`), set it to the load
    /// factor so they agree (docs/benchmarks.md).
    #[arg(long, env = "KVMESH_COLD_LOAD_FACTOR", default_value_t = 1.0)]
    pub cold_load_factor: f64,
    /// Request header whose value pins a session to a replica (ring key).
    #[arg(long, env = "KVMESH_SESSION_HEADER", default_value = "x-session-id")]
    pub session_header: String,
    /// Largest request body accepted; larger gets 413.
    #[arg(long, env = "KVMESH_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Open client connections at most; past it, new ones wait in the
    /// kernel's accept queue until one closes.
    #[arg(long, env = "KVMESH_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Time allowed to receive a request body; slower gets 408.
    #[arg(long, env = "KVMESH_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// Time allowed for a client to send request headers.
    #[arg(long, env = "KVMESH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// TCP connect timeout to a backend; a timeout counts as a connect failure.
    #[arg(long, env = "KVMESH_CONNECT_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Time a backend has to send response headers (long prompts queue for a
    /// while); past it the client gets 504.
    #[arg(long, env = "KVMESH_UPSTREAM_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,
    /// Further replicas tried after a connect failure or a reset before any
    /// response byte.
    #[arg(long, env = "KVMESH_RETRIES", default_value_t = 2)]
    pub retries: usize,
    /// Consecutive failures that eject a replica.
    #[arg(long, env = "KVMESH_EJECT_AFTER", default_value_t = 3)]
    pub eject_after: u32,
    /// First ejection's length; doubles on each repeat.
    #[arg(long, env = "KVMESH_EJECT_BASE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub eject_base: Duration,
    /// Longest ejection.
    #[arg(long, env = "KVMESH_EJECT_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub eject_max: Duration,
    /// On SIGTERM/SIGINT, how long in-flight streams may take to finish.
    #[arg(long, env = "KVMESH_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) to backends.
    #[arg(long, env = "KVMESH_UPSTREAM_H2C", value_parser = clap::builder::BoolishValueParser::new())]
    pub upstream_h2c: bool,
    /// Scrape each replica's own metrics (vLLM/SGLang queue and running
    /// counts) into the load bound; `false` routes on local counts alone.
    #[arg(long, env = "KVMESH_ENGINE_SIGNALS", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub engine_signals: bool,
    /// How often engines' metrics are scraped.
    #[arg(long, env = "KVMESH_ENGINE_SCRAPE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub engine_scrape_interval: Duration,
    /// Path of the engines' Prometheus metrics.
    #[arg(long, env = "KVMESH_ENGINE_METRICS_PATH", default_value = "/metrics")]
    pub engine_metrics_path: String,
    /// Peer routers' admin addresses (`http://host:port`, repeat or
    /// comma-separate) to share placements with. With `--pool`, the pool's
    /// other router pods are found by themselves.
    #[arg(long = "peer", env = "KVMESH_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// How often placements are sent to peer routers (0 = never).
    #[arg(long, env = "KVMESH_PEER_SYNC_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub peer_sync_interval: Duration,
    /// This router's pod name (its own pod is not a peer).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Blocks each node's cache holds (node tier bound; 0 = off). With
    /// `--pool`, the pool's node cache size decides.
    #[arg(long, env = "KVMESH_NODE_CACHE_BLOCKS", default_value_t = 0)]
    pub node_cache_blocks: usize,
}

/// One inference backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Replica identity (ring key, metric label): the URL, or the pod name.
    pub name: String,
    /// Where requests go.
    pub authority: Authority,
    /// The node it runs on, when known.
    pub node: Option<String>,
}

impl Backend {
    /// Parses `http://host:port` (no path, query or TLS).
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::Backend {
            url: url.to_string(),
            why: why.to_string(),
        };
        let uri: Uri = url
            .trim_end_matches('/')
            .parse()
            .map_err(|_| bad("not a URL"))?;
        match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => {}
            Some(_) => return Err(bad("only http:// backends are supported")),
            None => return Err(bad("missing http:// scheme")),
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(
                "a backend is host:port only; the request path is kept as sent",
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("missing host"))?;
        Ok(Self {
            name: format!("http://{authority}"),
            authority,
            node: None,
        })
    }
}

/// Validated settings of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub routing: RoutingConfig,
    pub backends: Vec<Backend>,
    /// Pods to discover instead of a static list.
    pub pods: Option<PodSource>,
    /// A KvCachePool (`namespace`, `name`) to follow instead.
    pub pool: Option<(String, String)>,
    /// An InferencePool (`namespace`, `name`) to follow instead.
    pub inference_pool: Option<(String, String)>,
    pub session_header: HeaderName,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub body_timeout: Duration,
    pub header_read_timeout: Duration,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub retries: usize,
    pub drain_timeout: Duration,
    pub upstream_h2c: bool,
    /// Scrape engines' metrics this often (None: engine signals off).
    pub engine_scrape_interval: Option<Duration>,
    /// Send placements to peers this often (None: never).
    pub peer_sync_interval: Option<Duration>,
    /// Where peer routers are.
    pub peer_source: Option<super::peers::PeerSource>,
    pub engine_metrics_path: String,
}

/// Pods that form the replica set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSource {
    pub namespace: String,
    pub selector: String,
    pub port: u16,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("backend {url:?}: {why}")]
    Backend { url: String, why: String },
    #[error("backend {0} is listed twice")]
    DuplicateBackend(String),
    #[error("--load-factor must be a number ≥ 1.0, got {0}")]
    LoadFactor(f64),
    #[error("--peer {0:?}: {1}")]
    Peer(String, String),
    #[error("--cold-load-factor must be a number ≥ 1.0, got {0}")]
    ColdLoadFactor(f64),
    #[error("--hot-prefix-share must be between 0 and 1, got {0}")]
    HotShare(f64),
    #[error("--queue-weight must be a number ≥ 0, got {0}")]
    QueueWeight(f64),
    #[error("--{0} must be at least 1")]
    Zero(&'static str),
    #[error("--engine-scrape-interval must be at least 100ms, got {0:?}")]
    ScrapeInterval(Duration),
    #[error("--engine-metrics-path {0:?} must be a URL path starting with /")]
    MetricsPath(String),
    #[error("--session-header {0:?} is not a valid header name")]
    SessionHeader(String),
    #[error("--selector must not be empty (it would select every pod in the namespace)")]
    EmptySelector,
    #[error("--pool and --inference-pool take namespace/name, got {0:?}")]
    Pool(String),
    #[error("--port must be between 1 and 65535")]
    Port,
    #[error("unknown policy: {0}")]
    Policy(String),
}

impl ProxyConfig {
    /// True when replicas come from Kubernetes (a client is needed).
    pub fn discovers(&self) -> bool {
        self.pods.is_some() || self.pool.is_some() || self.inference_pool.is_some()
    }
}

impl RouterArgs {
    /// Checks every setting and builds the typed config.
    pub fn validate(&self) -> Result<ProxyConfig, ConfigError> {
        if !(self.load_factor >= 1.0 && self.load_factor.is_finite()) {
            return Err(ConfigError::LoadFactor(self.load_factor));
        }
        if !(0.0..=1.0).contains(&self.hot_prefix_share) {
            return Err(ConfigError::HotShare(self.hot_prefix_share));
        }
        if !(self.queue_weight >= 0.0 && self.queue_weight.is_finite()) {
            return Err(ConfigError::QueueWeight(self.queue_weight));
        }
        if !(self.cold_load_factor.is_finite() && self.cold_load_factor >= 1.0) {
            return Err(ConfigError::ColdLoadFactor(self.cold_load_factor));
        }
        for (name, v) in [
            ("block-bytes", self.block_bytes),
            ("max-blocks", self.max_blocks),
            ("index-capacity-blocks", self.index_capacity_blocks),
            ("max-body-bytes", self.max_body_bytes),
            ("max-connections", self.max_connections),
            ("eject-after", self.eject_after as usize),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.engine_signals && self.engine_scrape_interval < Duration::from_millis(100) {
            return Err(ConfigError::ScrapeInterval(self.engine_scrape_interval));
        }
        if !self.engine_metrics_path.starts_with('/')
            || self
                .engine_metrics_path
                .parse::<http::uri::PathAndQuery>()
                .is_err()
        {
            return Err(ConfigError::MetricsPath(self.engine_metrics_path.clone()));
        }
        let session_header =
            HeaderName::from_bytes(self.session_header.to_ascii_lowercase().as_bytes())
                .map_err(|_| ConfigError::SessionHeader(self.session_header.clone()))?;
        let mut backends: Vec<Backend> = Vec::new();
        for url in &self.backends {
            let b = Backend::parse(url)?;
            if backends.iter().any(|x| x.name == b.name) {
                return Err(ConfigError::DuplicateBackend(b.name));
            }
            backends.push(b);
        }
        let policy: Policy = self.policy.parse().map_err(ConfigError::Policy)?;
        let pods = match &self.selector {
            Some(sel) if sel.trim().is_empty() => return Err(ConfigError::EmptySelector),
            Some(_) if self.port == 0 => return Err(ConfigError::Port),
            Some(sel) => Some(PodSource {
                namespace: self.namespace.clone(),
                selector: sel.trim().to_string(),
                port: self.port,
            }),
            None => None,
        };
        let ns_name = |v: &Option<String>| -> Result<Option<(String, String)>, ConfigError> {
            match v {
                Some(p) => match p.split_once('/') {
                    Some((ns, name))
                        if !ns.is_empty() && !name.is_empty() && !name.contains('/') =>
                    {
                        Ok(Some((ns.to_string(), name.to_string())))
                    }
                    _ => Err(ConfigError::Pool(p.clone())),
                },
                None => Ok(None),
            }
        };
        let pool = ns_name(&self.pool)?;
        let peer_source = if !self.peers.is_empty() {
            let list = self
                .peers
                .iter()
                .map(|u| {
                    Backend::parse(u)
                        .map(|b| b.authority)
                        .map_err(|e| ConfigError::Peer(u.clone(), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(super::peers::PeerSource::Static(list))
        } else {
            pool.as_ref()
                .map(|(ns, name)| super::peers::PeerSource::Pods {
                    namespace: ns.clone(),
                    selector: crate::discovery::pods::selector_string(&LabelSelector {
                        match_labels: Some(crate::operator::builders::selector_labels(
                            name, "router",
                        )),
                        ..LabelSelector::default()
                    }),
                    port: self.admin_listen.port(),
                    own_pod: self.pod_name.clone(),
                })
        };
        let inference_pool = ns_name(&self.inference_pool)?;
        Ok(ProxyConfig {
            routing: RoutingConfig {
                policy,
                hasher: BlockHasher {
                    block_bytes: self.block_bytes,
                    max_blocks: self.max_blocks,
                },
                load_factor: self.load_factor,
                index_capacity_blocks: self.index_capacity_blocks,
                hot_prefix_share: self.hot_prefix_share,
                queue_weight: self.queue_weight,
                cold_footprint_factor: self.cold_footprint_factor,
                cold_load_factor: self.cold_load_factor,
                eject_after_failures: self.eject_after,
                eject_base: self.eject_base,
                eject_max: self.eject_max,
                node_capacity_blocks: self.node_cache_blocks,
                // Three scrapes missed: the engine's word no longer counts.
                engine_signal_ttl: self.engine_scrape_interval.saturating_mul(3),
                ..RoutingConfig::default()
            },
            backends,
            pods,
            pool,
            inference_pool,
            session_header,
            max_body_bytes: self.max_body_bytes,
            max_connections: self.max_connections,
            body_timeout: self.body_timeout,
            header_read_timeout: self.header_read_timeout,
            connect_timeout: self.connect_timeout,
            upstream_timeout: self.upstream_timeout,
            retries: self.retries,
            drain_timeout: self.drain_timeout,
            upstream_h2c: self.upstream_h2c,
            engine_scrape_interval: self.engine_signals.then_some(self.engine_scrape_interval),
            peer_sync_interval: (!self.peer_sync_interval.is_zero() && peer_source.is_some())
                .then_some(self.peer_sync_interval),
            peer_source,
            engine_metrics_path: self.engine_metrics_path.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RouterArgs,
    }

    fn parse(extra: &[&str]) -> Result<ProxyConfig, String> {
        let mut argv = vec!["kvmesh"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.args.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let cfg = parse(&["--backend", "http://127.0.0.1:8000"]).expect("valid");
        assert_eq!(cfg.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(cfg.retries, 2);
        assert_eq!(cfg.routing.load_factor, 5.0);
        assert_eq!(cfg.routing.hasher.block_bytes, 64);
        assert_eq!(cfg.routing.hasher.max_blocks, 4096);
        assert_eq!(cfg.routing.index_capacity_blocks, 32_768);
        assert_eq!(cfg.session_header.as_str(), "x-session-id");
        assert_eq!(cfg.drain_timeout, Duration::from_secs(30));
        assert_eq!(cfg.backends[0].name, "http://127.0.0.1:8000");
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&["--backend", "https://a:1"], "only http://"),
            (&["--backend", "a:1"], "scheme"),
            (&["--backend", "http://a:1/v1"], "host:port only"),
            (&["--backend", "http://a:1,http://a:1"], "twice"),
            (
                &["--backend", "http://a:1", "--load-factor", "0.5"],
                "≥ 1.0",
            ),
            (
                &["--backend", "http://a:1", "--load-factor", "NaN"],
                "≥ 1.0",
            ),
            (
                &["--backend", "http://a:1", "--block-bytes", "0"],
                "block-bytes",
            ),
            (
                &["--backend", "http://a:1", "--session-header", "bad header"],
                "header name",
            ),
            (
                &["--backend", "http://a:1", "--policy", "random"],
                "invalid value",
            ),
            (
                &["--backend", "http://a:1", "--body-timeout", "soon"],
                "invalid value",
            ),
        ];
        for (argv, want) in cases {
            let err = parse(argv).expect_err("must be refused");
            assert!(err.contains(want), "{argv:?}: {err}");
        }
    }

    #[test]
    fn comma_separated_backends_are_accepted() {
        let cfg = parse(&["--backend", "http://a:1,http://b:2/"]).expect("valid");
        let names: Vec<_> = cfg.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["http://a:1", "http://b:2"]);
    }
}
