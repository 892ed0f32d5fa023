//! `kvmesh bench`: replays a workload — offline against simulated engines in
//! virtual time, or online against a URL — and reports hit rate, TTFT and balance.

pub mod demo;
pub mod online;
pub mod report;

use std::path::PathBuf;
use std::time::Instant;

use crate::routing::{BlockHasher, RoutingConfig};
use crate::sim::engine::EngineConfig;
use crate::sim::offline::{OfflineConfig, PolicyKind, PolicyResult, Prepared, run};
use crate::sim::workload::{Spec, Workload, WorkloadError, build};

/// Which workload to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadName {
    /// Chat sessions under one shared system prompt.
    Chat,
    /// SGLang's generated shared prefix: 64 groups × 16 prompts.
    SharedPrefix,
    /// Questions over Zipf-popular documents.
    Rag,
    /// A Mooncake JSONL trace (`--trace FILE`).
    Trace,
}

/// Workload flags shared by every mode.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Workload to replay.
    #[arg(
        long,
        env = "KVMESH_BENCH_WORKLOAD",
        value_enum,
        default_value = "chat"
    )]
    pub workload: WorkloadName,
    /// Trace file for `--workload trace` (Mooncake JSONL).
    #[arg(long, env = "KVMESH_BENCH_TRACE")]
    pub trace: Option<PathBuf>,
    /// Tokens of stand-in text per trace hash id (the trace's own blocks are 512).
    #[arg(long, env = "KVMESH_BENCH_TOKENS_PER_BLOCK", default_value_t = 512)]
    pub tokens_per_block: usize,
    /// Multiplies trace timestamps (0.5 = twice as fast).
    #[arg(long, env = "KVMESH_BENCH_TIME_SCALE", default_value_t = 1.0)]
    pub time_scale: f64,
    /// Replay at most this many trace requests (0 = all).
    #[arg(long, env = "KVMESH_BENCH_LIMIT", default_value_t = 0)]
    pub limit: usize,
    /// Chat: sessions.
    #[arg(long, env = "KVMESH_BENCH_USERS")]
    pub users: Option<usize>,
    /// Chat: turns per session.
    #[arg(long, env = "KVMESH_BENCH_TURNS")]
    pub turns: Option<usize>,
    /// Chat: tokens of the system prompt every session shares.
    #[arg(long, env = "KVMESH_BENCH_SYSTEM_TOKENS")]
    pub system_tokens: Option<usize>,
    /// Chat: tokens per user question.
    #[arg(long, env = "KVMESH_BENCH_QUESTION_TOKENS")]
    pub question_tokens: Option<usize>,
    /// Chat: tokens per answer (`max_tokens`).
    #[arg(long, env = "KVMESH_BENCH_ANSWER_TOKENS")]
    pub answer_tokens: Option<usize>,
    /// Chat: seconds between an answer and the next question.
    #[arg(long, env = "KVMESH_BENCH_THINK")]
    pub think: Option<f64>,
    /// Arrival rate: new sessions (chat) or requests (others) per second.
    #[arg(long, env = "KVMESH_BENCH_RATE")]
    pub rate: Option<f64>,
    /// Seed of every random choice.
    #[arg(long, env = "KVMESH_BENCH_SEED", default_value_t = 1)]
    pub seed: u64,
}

impl WorkloadArgs {
    /// The workload these flags describe.
    pub fn spec(&self) -> Result<Spec, BenchError> {
        let mut spec = match self.workload {
            WorkloadName::Chat => Spec::chat(),
            WorkloadName::SharedPrefix => Spec::shared_prefix(),
            WorkloadName::Rag => Spec::rag(),
            WorkloadName::Trace => Spec::Trace {
                path: self.trace.clone().ok_or(BenchError::Usage(
                    "--workload trace needs --trace FILE".into(),
                ))?,
                tokens_per_block: self.tokens_per_block,
                time_scale: self.time_scale,
                limit: self.limit,
            },
        };
        match &mut spec {
            Spec::Chat {
                users,
                turns,
                system_tokens,
                question_tokens,
                answer_tokens,
                rate,
                think_s,
            } => {
                *users = self.users.unwrap_or(*users);
                *turns = self.turns.unwrap_or(*turns);
                *system_tokens = self.system_tokens.unwrap_or(*system_tokens);
                *question_tokens = self.question_tokens.unwrap_or(*question_tokens);
                *answer_tokens = self.answer_tokens.unwrap_or(*answer_tokens);
                *rate = self.rate.unwrap_or(*rate);
                *think_s = self.think.unwrap_or(*think_s);
            }
            Spec::SharedPrefix { rate, .. } | Spec::Rag { rate, .. } => {
                *rate = self.rate.unwrap_or(*rate)
            }
            Spec::Trace { .. } => {}
        }
        Ok(spec)
    }

    /// Builds the workload.
    pub fn build(&self) -> Result<Workload, BenchError> {
        Ok(build(&self.spec()?, self.seed)?)
    }
}

/// Flags of `kvmesh bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Simulate engines in virtual time instead of sending HTTP requests.
    #[arg(long, env = "KVMESH_BENCH_OFFLINE", value_parser = clap::builder::BoolishValueParser::new())]
    pub offline: bool,
    /// Offline: simulated engines.
    #[arg(long, env = "KVMESH_BENCH_ENGINES", default_value_t = 8)]
    pub engines: usize,
    /// Offline: KV cache per engine, in tokens.
    #[arg(long, env = "KVMESH_BENCH_CACHE_TOKENS", default_value_t = 400_000)]
    pub cache_tokens: usize,
    /// Offline: policies to compare (kvmesh, round-robin, least-loaded,
    /// random, consistent-hash, sglang), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kvmesh,round-robin,least-loaded,random,consistent-hash,sglang"
    )]
    pub policies: Vec<String>,
    /// Offline: kvmesh's load factor `c` (see `kvmesh router --help`).
    #[arg(long, env = "KVMESH_BENCH_LOAD_FACTOR", default_value_t = 5.0)]
    pub load_factor: f64,
    /// Offline: kvmesh's queue weight.
    #[arg(long, env = "KVMESH_BENCH_QUEUE_WEIGHT", default_value_t = 0.0)]
    pub queue_weight: f64,
    /// Offline: kvmesh's cold footprint factor (0 = off).
    #[arg(
        long,
        env = "KVMESH_BENCH_COLD_FOOTPRINT_FACTOR",
        default_value_t = 1.05
    )]
    pub cold_footprint_factor: f64,
    /// Offline: `c` of the bound new prefixes are placed under (see
    /// `kvmesh router --help`).
    #[arg(long, env = "KVMESH_BENCH_COLD_LOAD_FACTOR", default_value_t = 1.0)]
    pub cold_load_factor: f64,
    /// Offline: kvmesh's hot prefix share (0 = 1/engines).
    #[arg(long, env = "KVMESH_BENCH_HOT_PREFIX_SHARE", default_value_t = 0.0)]
    pub hot_prefix_share: f64,
    /// Offline: kvmesh router instances, each with its own index; requests
    /// go through them in turn (as a Service spreads clients).
    #[arg(long, env = "KVMESH_BENCH_ROUTERS", default_value_t = 1)]
    pub routers: usize,
    /// Offline: every this many virtual seconds, routers read each engine's
    /// running and queued requests (0 = engine signals off).
    #[arg(long, env = "KVMESH_BENCH_ENGINE_SCRAPE", default_value_t = 5.0)]
    pub engine_scrape: f64,
    /// Offline: with several routers, each tells the others its placements
    /// this many virtual seconds later (0 = never; the router's
    /// `--peer-sync-interval` is 250ms).
    #[arg(long, env = "KVMESH_BENCH_PEER_SYNC", default_value_t = 0.25)]
    pub peer_sync: f64,
    /// Offline: routers read each answer's cached-token count and correct
    /// their index, as the proxy does (`false` to compare without).
    #[arg(long, env = "KVMESH_BENCH_ENGINE_FEEDBACK", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub engine_feedback: bool,
    /// Offline: engines per node sharing one node cache (0 = no node caches).
    #[arg(long, env = "KVMESH_BENCH_ENGINES_PER_NODE", default_value_t = 0)]
    pub engines_per_node: usize,
    /// Offline: each node cache's size, in tokens of KV.
    #[arg(
        long,
        env = "KVMESH_BENCH_NODE_CACHE_TOKENS",
        default_value_t = 1_600_000
    )]
    pub node_cache_tokens: usize,
    /// Offline: kvmesh's node tier (routing to a node whose cache holds the
    /// prefix); `false` keeps node caches but routes without them.
    #[arg(long, env = "KVMESH_BENCH_NODE_TIER", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub node_tier: bool,
    /// Online: base URL to replay against; repeat to compare several
    /// (`NAME=URL` names a run).
    #[arg(long = "target", env = "KVMESH_BENCH_TARGETS", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Online: an engine's Prometheus endpoint (repeat), read before and
    /// after each run for the prefix-cache hit rate.
    #[arg(
        long = "engine-metrics",
        env = "KVMESH_BENCH_ENGINE_METRICS",
        value_delimiter = ','
    )]
    pub engine_metrics: Vec<String>,
    /// Online: before each run, ask every engine to drop its prefix cache
    /// (`POST /reset_prefix_cache` beside its metrics URL).
    #[arg(long, env = "KVMESH_BENCH_RESET_CACHES", value_parser = clap::builder::BoolishValueParser::new())]
    pub reset_caches: bool,
    /// Online: workload seconds per wall second (match `kvmesh sim --speed`).
    #[arg(long, env = "KVMESH_BENCH_SPEED", default_value_t = 1.0)]
    pub speed: f64,
    /// Online: a request slower than this fails.
    #[arg(long, env = "KVMESH_BENCH_TIMEOUT", default_value = "600s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Write the results as JSON to this file.
    #[arg(long, env = "KVMESH_BENCH_JSON")]
    pub json: Option<PathBuf>,
    /// Online: draw the runs' TTFT CDFs into this SVG file.
    #[arg(long, env = "KVMESH_BENCH_SVG")]
    pub svg: Option<PathBuf>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `kvmesh bench`.
pub async fn run_bench(args: BenchArgs) -> Result<(), BenchError> {
    let json = if args.offline {
        serde_json::to_string_pretty(&offline(&args)?)
    } else {
        let results = online(&args).await?;
        if let Some(path) = &args.svg {
            let series: Vec<(String, Vec<f64>)> = results
                .iter()
                .map(|r| (r.name.clone(), r.ttfts.clone()))
                .collect();
            report::svg_ttft_cdf(path, &series).map_err(|why| BenchError::Write {
                path: path.clone(),
                source: std::io::Error::other(why),
            })?;
        }
        serde_json::to_string_pretty(&results)
    };
    if let Some(path) = &args.json {
        std::fs::write(path, json.unwrap_or_default()).map_err(|source| BenchError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Replays the workload against every `--target` and prints the table.
pub async fn online(args: &BenchArgs) -> Result<Vec<online::OnlineResult>, BenchError> {
    if args.targets.is_empty() {
        return Err(BenchError::Usage("give --target URL (or --offline)".into()));
    }
    let w = args.workload.build()?;
    let mut results = Vec::new();
    for t in &args.targets {
        let (name, url) = match t.split_once('=') {
            Some((n, u)) if !n.contains("://") => (n.to_string(), u.to_string()),
            _ => (t.clone(), t.clone()),
        };
        if args.reset_caches {
            online::reset_caches(&args.engine_metrics).await;
        }
        let cfg = online::OnlineConfig {
            target: url,
            engine_metrics: args.engine_metrics.clone(),
            speed: args.speed,
            timeout: args.timeout,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        results.push(online::replay(&name, &w, &cfg).await?);
    }
    println!(
        "{} ({} requests)\n{}",
        w.name,
        w.requests.len(),
        online_table(&results)
    );
    Ok(results)
}

/// The online results as a text table.
pub fn online_table(results: &[online::OnlineResult]) -> String {
    let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or("-".to_string(), f);
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                opt(r.hit_rate, report::pct),
                r.prefill_tokens
                    .map_or("-".into(), |t| format!("{:.2}M", t as f64 / 1e6)),
                report::ms(r.ttft_mean_s),
                report::ms(r.ttft_p50_s),
                report::ms(r.ttft_p99_s),
                opt(r.max_mean_requests, report::ratio),
                r.errors.to_string(),
                format!("{:.1}", r.wall_s),
            ]
        })
        .collect();
    report::table(
        &[
            "run",
            "hit rate",
            "prefill tok",
            "TTFT mean ms",
            "p50 ms",
            "p99 ms",
            "max/mean req",
            "errors",
            "wall s",
        ],
        &rows,
    )
}

/// Runs the offline comparison and prints its table.
pub fn offline(args: &BenchArgs) -> Result<Vec<PolicyResult>, BenchError> {
    let kinds: Vec<PolicyKind> = args
        .policies
        .iter()
        .map(|p| {
            PolicyKind::parse(p.trim())
                .ok_or_else(|| BenchError::Usage(format!("unknown policy {p:?}")))
        })
        .collect::<Result<_, _>>()?;
    if args.engines == 0 || args.cache_tokens == 0 || args.routers == 0 {
        return Err(BenchError::Usage(
            "--engines, --cache-tokens and --routers must be at least 1".into(),
        ));
    }
    if !(args.cold_load_factor >= 1.0 && args.cold_load_factor.is_finite()) {
        return Err(BenchError::Usage(
            "--cold-load-factor must be a number ≥ 1".into(),
        ));
    }
    if !(args.peer_sync.is_finite() && args.peer_sync >= 0.0) {
        return Err(BenchError::Usage(
            "--peer-sync must be a number of seconds ≥ 0".into(),
        ));
    }
    if !(args.engine_scrape.is_finite() && args.engine_scrape >= 0.0) {
        return Err(BenchError::Usage(
            "--engine-scrape must be a number of seconds ≥ 0".into(),
        ));
    }
    let started = Instant::now();
    let w = args.workload.build()?;
    let prep = Prepared::new(
        &w,
        BlockHasher::default(),
        kinds.contains(&PolicyKind::SglangCacheAware),
    );
    eprintln!(
        "workload {}: {} requests, built in {:.1} s; infinite-cache bound {}",
        w.name,
        w.requests.len(),
        started.elapsed().as_secs_f64(),
        report::pct(prep.bound())
    );
    let cfg = OfflineConfig {
        engines: args.engines,
        engine: EngineConfig {
            cache_tokens: args.cache_tokens,
            ..EngineConfig::default()
        },
        seed: args.workload.seed,
        routing: RoutingConfig {
            load_factor: args.load_factor,
            queue_weight: args.queue_weight,
            cold_footprint_factor: args.cold_footprint_factor,
            hot_prefix_share: args.hot_prefix_share,
            cold_load_factor: args.cold_load_factor,
            ..RoutingConfig::default()
        },
        routers: args.routers,
        engine_scrape_s: (args.engine_scrape > 0.0).then_some(args.engine_scrape),
        engines_per_node: args.engines_per_node,
        node_cache_tokens: args.node_cache_tokens,
        node_tier: args.node_tier,
        engine_feedback: args.engine_feedback,
        share_placements_s: (args.peer_sync > 0.0).then_some(args.peer_sync),
    };
    let mut results = Vec::new();
    for kind in kinds {
        let t = Instant::now();
        let r = run(&w, &prep, kind, &cfg);
        eprintln!(
            "  {} simulated in {:.1} s",
            kind.name(),
            t.elapsed().as_secs_f64()
        );
        results.push(r);
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.policy.clone(),
                report::pct(r.hit_rate),
                report::pct(r.bound_share),
                format!("{:.2}M", r.prefill_tokens as f64 / 1e6),
                report::pct(r.node_hit_rate),
                report::ms(r.ttft_mean_s),
                report::ms(r.ttft_p50_s),
                report::ms(r.ttft_p99_s),
                report::ratio(r.max_mean_requests),
                report::ratio(r.max_mean_tokens),
            ]
        })
        .collect();
    println!(
        "{} on {} engines × {} cache tokens ({} requests)\n{}",
        w.name,
        args.engines,
        args.cache_tokens,
        w.requests.len(),
        report::table(
            &[
                "policy",
                "hit rate",
                "of bound",
                "prefill tok",
                "node hit",
                "TTFT mean ms",
                "p50 ms",
                "p99 ms",
                "max/mean req",
                "max/mean tok"
            ],
            &rows
        )
    );
    Ok(results)
}
