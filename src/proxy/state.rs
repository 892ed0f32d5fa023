//! State shared by every request: the router behind one lock, backends,
//! the upstream client, metrics and settings.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::config::{Backend, ProxyConfig};
use super::forward::{UpstreamClient, client};
use super::metrics::Metrics;
use crate::routing::index::Slot;
use crate::routing::{Router, RoutingConfig};

/// The routing state and where each replica is. Held only for the few
/// microseconds a decision takes; never across an await.
#[derive(Debug)]
pub struct Core {
    pub router: Router,
    pub backends: HashMap<Slot, Backend>,
    /// Header that pins a session (live: a pool can change it).
    pub session_header: http::HeaderName,
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct Shared {
    core: Mutex<Core>,
    pub client: UpstreamClient,
    pub metrics: Metrics,
    pub cfg: ProxyConfig,
    /// Placements not yet sent to peer routers.
    pub peers: super::peers::Outbox,
}

impl Shared {
    /// Builds the state for `cfg`, with no replicas yet (its
    /// [`crate::discovery::ReplicaSource`] supplies them).
    pub fn new(cfg: ProxyConfig, metrics: Metrics) -> Self {
        let core = Core {
            router: Router::new(cfg.routing.clone()),
            backends: HashMap::new(),
            session_header: cfg.session_header.clone(),
        };
        Self {
            core: Mutex::new(core),
            client: client(cfg.connect_timeout, cfg.upstream_h2c),
            metrics,
            cfg,
            peers: super::peers::Outbox::default(),
        }
    }

    /// Makes `backends` the replica set: newcomers join, missing ones leave
    /// (their in-flight requests finish), the ring is rebuilt only when
    /// membership changed. Returns true when it changed.
    pub fn set_backends(&self, backends: &[Backend]) -> bool {
        let members: Vec<(&str, Option<&str>)> = backends
            .iter()
            .map(|b| (b.name.as_str(), b.node.as_deref()))
            .collect();
        let (build, moved) = {
            let mut core = self.core();
            let build = core.router.set_members_deferred(&members);
            let map: HashMap<Slot, Backend> = backends
                .iter()
                .filter_map(|b| core.router.slot_of(&b.name).map(|s| (s, b.clone())))
                .collect();
            // An address can change without the name changing (a pod restarted).
            let moved = map != core.backends;
            core.backends = map;
            (build, moved)
        };
        // The ring is built outside the lock (requests keep flowing on the
        // old one) and swapped in.
        let changed = build.is_some();
        if let Some(build) = build {
            let ring = build.build();
            self.core().router.install_ring(ring);
        }
        changed || moved
    }

    /// Applies new routing settings live: requests in flight keep their
    /// accounting; a new block size or index capacity starts a fresh index.
    pub fn apply_settings(&self, routing: RoutingConfig, session_header: http::HeaderName) {
        let mut core = self.core();
        core.router.reconfigure(routing);
        core.session_header = session_header;
    }

    /// The routing settings in force.
    pub fn routing(&self) -> RoutingConfig {
        self.core().router.config().clone()
    }

    /// Locks the routing state. A panic while holding it cannot leave the
    /// counters half-updated in a way worse than stopping, so poisoning is
    /// ignored rather than taking the router down.
    pub fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when at least one replica is not ejected.
    pub fn ready(&self) -> bool {
        self.core().router.healthy_count(now()) > 0
    }

    /// Refreshes the per-replica gauges (called at scrape time).
    pub fn refresh_gauges(&self) {
        let status = self.core().router.status(now());
        self.metrics.in_flight.clear();
        self.metrics.healthy.clear();
        self.metrics.engine_queue_depth.clear();
        self.metrics.engine_running.clear();
        self.metrics.engine_kv_usage.clear();
        for s in status {
            let l = Metrics::replica(&s.name);
            if let Some(e) = s.engine {
                let m = &self.metrics;
                m.engine_queue_depth
                    .get_or_create(&l)
                    .set(i64::from(e.waiting));
                m.engine_running.get_or_create(&l).set(i64::from(e.running));
                if let Some(u) = e.kv_usage {
                    m.engine_kv_usage.get_or_create(&l).set(u);
                }
            }
            self.metrics
                .in_flight
                .get_or_create(&l)
                .set(i64::from(s.in_flight));
            self.metrics
                .healthy
                .get_or_create(&l)
                .set(i64::from(s.healthy));
        }
    }
}

/// The routing clock: tokio's (so paused-time tests drive back-offs).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
