//! `kvmesh demo`: the main job with no cluster. Starts simulated engines and
//! two routers (kvmesh and round-robin) on loopback, replays the same chat
//! workload through each from a cold cache, and prints the comparison.

use std::path::PathBuf;

use clap::Parser;
use tokio::net::TcpListener;

use super::online::{OnlineConfig, OnlineResult, replay, reset_caches};
use super::{BenchError, report};
use crate::proxy::{ProxyHandle, RouterArgs};
use crate::sim::server::{SimArgs, SimHandle};
use crate::sim::workload::{Spec, build};

/// Flags of `kvmesh demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// A small workload that finishes in a few seconds (smoke test).
    #[arg(long, env = "KVMESH_DEMO_QUICK", value_parser = clap::builder::BoolishValueParser::new())]
    pub quick: bool,
    /// Simulated engines.
    #[arg(long, env = "KVMESH_DEMO_ENGINES", default_value_t = 4)]
    pub engines: usize,
    /// Workload seconds per wall second (higher is faster but adds timer
    /// noise to the measured TTFTs).
    #[arg(long, env = "KVMESH_DEMO_SPEED", default_value_t = 2.0)]
    pub speed: f64,
    /// Draw both runs' TTFT CDFs into this SVG file.
    #[arg(long, env = "KVMESH_DEMO_SVG")]
    pub svg: Option<PathBuf>,
    /// Seed of the workload.
    #[arg(long, env = "KVMESH_DEMO_SEED", default_value_t = 1)]
    pub seed: u64,
}

/// The demo's chat workload: many long conversations under one system
/// prompt, the case where routing decides how much prefill is redone.
pub fn workload(quick: bool) -> Spec {
    Spec::Chat {
        users: if quick { 12 } else { 64 },
        turns: if quick { 4 } else { 12 },
        system_tokens: 1024,
        question_tokens: 64,
        answer_tokens: if quick { 64 } else { 192 },
        rate: 8.0,
        think_s: 0.5,
    }
}

/// Runs the demo; returns (kvmesh, round-robin) results.
pub async fn run_demo(args: DemoArgs) -> Result<(OnlineResult, OnlineResult), BenchError> {
    let setup = |e: std::io::Error| BenchError::Usage(format!("cannot start the demo: {e}"));
    let w = build(&workload(args.quick), args.seed)?;
    eprintln!(
        "kvmesh demo: {} engines (simulated 8B model on H100, {}× speed), chat workload: {} requests",
        args.engines,
        args.speed,
        w.requests.len()
    );
    let mut listeners = Vec::new();
    for _ in 0..args.engines {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.map_err(setup)?);
    }
    let sim_args = SimArgs {
        seed: args.seed,
        ..SimArgs::loopback(args.engines, args.speed)
    };
    let sim: SimHandle = crate::sim::server::spawn(&sim_args, listeners)
        .map_err(|e| BenchError::Usage(format!("cannot start the engines: {e}")))?;
    let backends: Vec<String> = sim.addrs.iter().map(|a| format!("http://{a}")).collect();
    let metrics: Vec<String> = sim
        .addrs
        .iter()
        .map(|a| format!("http://{a}/metrics"))
        .collect();
    let kvmesh = start_router(&backends, "kvmesh").await?;
    let rr = start_router(&backends, "round-robin").await?;

    let mut results = Vec::new();
    for (name, handle) in [("kvmesh", &kvmesh), ("round-robin", &rr)] {
        reset_caches(&metrics).await;
        let cfg = OnlineConfig {
            target: format!("http://{}", handle.addr),
            engine_metrics: metrics.clone(),
            speed: args.speed,
            timeout: std::time::Duration::from_secs(600),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        results.push(replay(name, &w, &cfg).await?);
    }
    kvmesh.shutdown().await;
    rr.shutdown().await;
    sim.shutdown().await;

    println!("{}", super::online_table(&results));
    let (k, r) = (&results[0], &results[1]);
    println!(
        "kvmesh vs round-robin: mean TTFT {}×, p99 TTFT {}×, prefill tokens {}×, cache hit rate {} vs {}",
        report::ratio(k.ttft_mean_s / r.ttft_mean_s.max(f64::MIN_POSITIVE)),
        report::ratio(k.ttft_p99_s / r.ttft_p99_s.max(f64::MIN_POSITIVE)),
        match (k.prefill_tokens, r.prefill_tokens) {
            (Some(a), Some(b)) if b > 0 => report::ratio(a as f64 / b as f64),
            _ => "-".into(),
        },
        k.hit_rate.map_or("-".into(), report::pct),
        r.hit_rate.map_or("-".into(), report::pct),
    );
    println!(
        "(TTFT in model time: wall time × {}; same workload, caches reset before each run)",
        args.speed
    );
    if let Some(path) = &args.svg {
        let series = vec![
            (k.name.clone(), k.ttfts.clone()),
            (r.name.clone(), r.ttfts.clone()),
        ];
        report::svg_ttft_cdf(path, &series).map_err(|why| BenchError::Write {
            path: path.clone(),
            source: std::io::Error::other(why),
        })?;
        println!("TTFT CDFs written to {}", path.display());
    }
    let mut it = results.into_iter();
    match (it.next(), it.next()) {
        (Some(k), Some(r)) => Ok((k, r)),
        _ => Err(BenchError::Usage("demo produced no results".into())),
    }
}

/// Starts a router with `policy` in front of `backends` on loopback ports.
pub async fn start_router(backends: &[String], policy: &str) -> Result<ProxyHandle, BenchError> {
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: RouterArgs,
    }
    let list = backends.join(",");
    let flags = Flags::try_parse_from(["kvmesh", "--backend", &list, "--policy", policy])
        .map_err(|e| BenchError::Usage(e.to_string()))?;
    let cfg = flags
        .args
        .validate()
        .map_err(|e| BenchError::Usage(e.to_string()))?;
    let bind = |e: std::io::Error| BenchError::Usage(format!("cannot start a router: {e}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(bind)?;
    let admin = TcpListener::bind("127.0.0.1:0").await.map_err(bind)?;
    crate::proxy::spawn(cfg, listener, admin).map_err(bind)
}
