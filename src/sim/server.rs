//! `kvmesh sim`: N simulated OpenAI-compatible inference engines in one
//! process, each on its own port, each a vLLM-style [`Engine`] run in
//! (compressed) real time behind vLLM's HTTP API and SGLang's worker probes.
//!
//! Module layout:
//! - this file: settings, errors, starting and stopping the engines;
//! - `gpu`: the task that owns one [`Engine`] and runs its steps;
//! - `api`: the HTTP endpoints and their JSON shapes;
//! - `stream`: the server-sent-events body of a streamed completion;
//! - `metrics`: the engine's Prometheus metrics, under vLLM's names.
//!
//! [`Engine`]: super::engine::Engine

mod api;
mod gpu;
mod metrics;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::engine::{EngineConfig, EngineStats};
use super::tokenizer::splitmix;
use super::workload::Rng;
use crate::proxy::server::{ConnectionGauge, ServerSettings, serve};

pub use api::ENGINE_HEADER;
pub use stream::token_pieces;

/// Settings of `kvmesh sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Number of engines; engine i listens on port `listen.port() + i` (0 = ephemeral ports)
    #[arg(long, env = "KVMESH_SIM_REPLICAS", default_value_t = 4)]
    pub replicas: usize,
    /// Address of the first engine
    #[arg(long, env = "KVMESH_SIM_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Time compression: 10 = the model runs 10× faster than the latency model
    #[arg(long, env = "KVMESH_SIM_SPEED", default_value_t = 1.0)]
    pub speed: f64,
    /// KV cache capacity of each engine, in tokens
    #[arg(long, env = "KVMESH_SIM_CACHE_TOKENS", default_value_t = 400_000)]
    pub cache_tokens: usize,
    /// Model name the engines serve (and expect in requests)
    #[arg(long, env = "KVMESH_SIM_MODEL", default_value = "sim-llama-3.1-8b")]
    pub model: String,
    /// Fault injection (reliability tests): share of requests answered 500
    #[arg(long, env = "KVMESH_SIM_FAIL_RATE", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Fault injection: share of requests that stall (no answer until the client leaves)
    #[arg(long, env = "KVMESH_SIM_STALL_RATE", default_value_t = 0.0)]
    pub stall_rate: f64,
    /// Fault injection: share of streams closed abruptly after their first token
    #[arg(long, env = "KVMESH_SIM_CLOSE_RATE", default_value_t = 0.0)]
    pub close_rate: f64,
    /// Seed of the fault-injection draws
    #[arg(long, env = "KVMESH_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
}

impl SimArgs {
    /// `replicas` fault-free engines on ephemeral loopback ports at `speed`,
    /// with the defaults of `kvmesh sim` otherwise (demo, tests).
    pub fn loopback(replicas: usize, speed: f64) -> Self {
        Self {
            replicas,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            speed,
            cache_tokens: 400_000,
            model: crate::sim::workload::MODEL.to_string(),
            fail_rate: 0.0,
            stall_rate: 0.0,
            close_rate: 0.0,
            seed: 1,
        }
    }
}

/// Why the simulated engines could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listener has no local address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

impl SimArgs {
    /// Checks the settings; returns the engine configuration they give.
    fn engine_config(&self) -> Result<EngineConfig, SimError> {
        let bad = |m: String| Err(SimError::Settings(m));
        if self.replicas == 0 {
            return bad("--replicas must be at least 1".into());
        }
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return bad(format!(
                "--speed must be a positive number, got {}",
                self.speed
            ));
        }
        for (flag, rate) in [
            ("--fail-rate", self.fail_rate),
            ("--stall-rate", self.stall_rate),
            ("--close-rate", self.close_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return bad(format!("{flag} must be within 0..=1, got {rate}"));
            }
        }
        if self.model.is_empty() {
            return bad("--model must not be empty".into());
        }
        let cfg = EngineConfig {
            cache_tokens: self.cache_tokens,
            ..EngineConfig::default()
        };
        if self.cache_tokens < cfg.block_tokens {
            return bad(format!(
                "--cache-tokens must hold at least one {}-token block, got {}",
                cfg.block_tokens, self.cache_tokens
            ));
        }
        Ok(cfg)
    }

    /// Address of engine `i`.
    fn addr_of(&self, i: usize) -> Result<SocketAddr, SimError> {
        if self.listen.port() == 0 {
            return Ok(self.listen);
        }
        let port = u16::try_from(usize::from(self.listen.port()) + i).map_err(|_| {
            SimError::Settings(format!(
                "{} engines from port {} run past port 65535",
                self.replicas,
                self.listen.port()
            ))
        })?;
        Ok(SocketAddr::new(self.listen.ip(), port))
    }
}

/// Fault injection settings of one engine, with its own seeded draws.
#[derive(Debug)]
struct Faults {
    fail: f64,
    stall: f64,
    close: f64,
    rng: std::sync::Mutex<Rng>,
}

/// What fault, if any, a request meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Fail,
    Stall,
    Close,
}

impl Faults {
    /// Draws the fault of one request (three draws per request, so a
    /// setting's outcome does not depend on the others).
    fn draw(&self, stream: bool) -> Fault {
        if self.fail == 0.0 && self.stall == 0.0 && self.close == 0.0 {
            return Fault::None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let (f, s, c) = (rng.uniform(), rng.uniform(), rng.uniform());
        if f < self.fail {
            Fault::Fail
        } else if s < self.stall {
            Fault::Stall
        } else if stream && c < self.close {
            Fault::Close
        } else {
            Fault::None
        }
    }
}

/// Running engines: their addresses and the means to stop them.
#[derive(Debug)]
pub struct SimHandle {
    /// Where engine i listens.
    pub addrs: Vec<SocketAddr>,
    stats: Vec<watch::Receiver<EngineStats>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimHandle {
    /// Stops accepting, lets open requests finish (up to a drain timeout),
    /// then stops the engines and waits for every task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Each engine's counters and gauges after its latest step.
    pub fn stats(&self) -> Vec<EngineStats> {
        self.stats.iter().map(|s| s.borrow().clone()).collect()
    }
}

/// How long open connections get to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// Starts the engines on already-bound listeners (tests bind 127.0.0.1:0),
/// one engine per listener.
pub fn spawn(args: &SimArgs, listeners: Vec<TcpListener>) -> Result<SimHandle, SimError> {
    let cfg = args.engine_config()?;
    if listeners.len() != args.replicas {
        return Err(SimError::Settings(format!(
            "{} listeners for {} replicas",
            listeners.len(),
            args.replicas
        )));
    }
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()
        .map_err(SimError::LocalAddr)?;
    let (stop, stopped) = watch::channel(false);
    let settings = ServerSettings {
        header_read_timeout: Duration::from_secs(30),
        drain: DRAIN,
        max_connections: 10_000,
    };
    let mut stats = Vec::with_capacity(listeners.len());
    let mut tasks = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let metrics = metrics::EngineMetrics::new(&args.model);
        let (gpu_stop, gpu_stopped) = watch::channel(false);
        let (gpu, gpu_task) =
            gpu::Gpu::start(cfg.clone(), args.speed, metrics.clone(), gpu_stopped);
        stats.push(gpu.watch_stats());
        let replica = Arc::new(api::Replica {
            index,
            model: args.model.clone(),
            gpu,
            metrics,
            faults: Faults {
                fail: args.fail_rate,
                stall: args.stall_rate,
                close: args.close_rate,
                rng: std::sync::Mutex::new(Rng::new(splitmix(
                    args.seed.wrapping_add(index as u64),
                ))),
            },
            stop: stopped.clone(),
        });
        let shutdown = stopped_signal(stopped.clone());
        tasks.push(tokio::spawn(async move {
            let make = move |_peer| {
                let replica = replica.clone();
                tower::service_fn(move |req| api::handle(replica.clone(), req))
            };
            serve(
                listener,
                make,
                settings,
                ConnectionGauge::default(),
                shutdown,
            )
            .await;
            // Connections are drained: the engine has no one left to serve.
            let _ = gpu_stop.send(true);
            let _ = gpu_task.await;
            tracing::debug!(engine = index, "simulated engine stopped");
        }));
    }
    tracing::info!(
        engines = addrs.len(),
        speed = args.speed,
        cache_tokens = args.cache_tokens,
        model = %args.model,
        "simulated engines listening on {addrs:?}"
    );
    Ok(SimHandle {
        addrs,
        stats,
        stop,
        tasks,
    })
}

/// Resolves when `rx` turns true or its sender is gone.
async fn stopped_signal(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// `kvmesh sim`: validates, binds the engines' listeners, serves until
/// SIGTERM/SIGINT, then shuts down.
pub async fn run(args: SimArgs) -> Result<(), SimError> {
    args.engine_config()?;
    let mut listeners = Vec::with_capacity(args.replicas);
    for i in 0..args.replicas {
        let addr = args.addr_of(i)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        listeners.push(listener);
    }
    let stop_signal = crate::telemetry::shutdown_signal();
    let handle = spawn(&args, listeners)?;
    stop_signal.await;
    tracing::info!("shutdown signal received; stopping simulated engines");
    handle.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimArgs,
    }

    fn args(extra: &[&str]) -> SimArgs {
        let mut argv = vec!["kvmesh"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    #[test]
    fn defaults_are_valid_and_engines_take_consecutive_ports() {
        let a = args(&[]);
        assert!(a.engine_config().is_ok());
        assert_eq!(a.addr_of(3).map(|s| s.port()).ok(), Some(8003));
        let ephemeral = args(&["--listen", "127.0.0.1:0"]);
        assert_eq!(ephemeral.addr_of(5).map(|s| s.port()).ok(), Some(0));
        assert!(
            args(&["--listen", "127.0.0.1:65535", "--replicas", "2"])
                .addr_of(1)
                .is_err()
        );
    }

    #[test]
    fn nonsense_settings_are_refused() {
        for bad in [
            &["--replicas", "0"][..],
            &["--speed", "0"],
            &["--speed=-1"],
            &["--fail-rate", "1.5"],
            &["--stall-rate=-0.1"],
            &["--close-rate", "2"],
            &["--cache-tokens", "8"],
        ] {
            assert!(
                matches!(args(bad).engine_config(), Err(SimError::Settings(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fault_draws_follow_the_rates() {
        let faults = |fail, stall, close| Faults {
            fail,
            stall,
            close,
            rng: std::sync::Mutex::new(Rng::new(7)),
        };
        assert_eq!(faults(1.0, 0.0, 0.0).draw(true), Fault::Fail);
        assert_eq!(faults(0.0, 1.0, 0.0).draw(false), Fault::Stall);
        assert_eq!(faults(0.0, 0.0, 1.0).draw(true), Fault::Close);
        assert_eq!(
            faults(0.0, 0.0, 1.0).draw(false),
            Fault::None,
            "only streams are closed"
        );
        let half = faults(0.5, 0.0, 0.0);
        let failed = (0..1000)
            .filter(|_| half.draw(false) == Fault::Fail)
            .count();
        assert!((400..600).contains(&failed), "{failed}");
    }
}
