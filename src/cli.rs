//! The `kvmesh` command line: one subcommand per mode.

use clap::{Parser, Subcommand};

use crate::telemetry::{LogFormat, init_logging};

/// Cache-aware LLM request router and KV-cache operator for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "kvmesh", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "KVMESH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job with no cluster: simulated engines behind a kvmesh router and a round-robin router, one workload through each, side by side.
    Demo(crate::bench::demo::DemoArgs),
    /// The L7 proxy: sends each request to the replica most likely to hold its prompt prefix.
    Router(crate::proxy::RouterArgs),
    /// Replays a workload and reports prefix-cache hit rate, time to first token and balance.
    Bench(crate::bench::BenchArgs),
    /// Simulated OpenAI-compatible inference engines (prefix cache + latency model) on loopback ports.
    Sim(crate::sim::server::SimArgs),
    /// Reconciles KvCachePools into node caches, routers and engine wiring (in a cluster).
    Operator(crate::operator::run::OperatorArgs),
    /// Node-local KV block store (RAM, then disk) speaking LMCache's lm:// and the Redis protocol.
    NodeCache(crate::node_cache::NodeCacheArgs),
    /// Prints the KvCachePool CustomResourceDefinition as YAML (`kubectl apply -f -`).
    Crd,
}

/// Runs the parsed command line; the error is printed by `main`.
pub fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Command::Crd = cli.command {
        print!("{}", crate::crd::crd_yaml()?);
        return Ok(());
    }
    // The demo and benchmarks print tables; their servers' routine logs would bury them.
    let level = match cli.command {
        Command::Demo(_) | Command::Bench(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Demo(args) => {
            runtime.block_on(crate::bench::demo::run_demo(args))?;
        }
        Command::Router(args) => runtime.block_on(crate::proxy::run(args))?,
        Command::Bench(args) => runtime.block_on(crate::bench::run_bench(args))?,
        Command::Sim(args) => runtime.block_on(crate::sim::server::run(args))?,
        Command::Operator(args) => runtime.block_on(crate::operator::run::run(args))?,
        Command::NodeCache(args) => runtime.block_on(crate::node_cache::run(args))?,
        Command::Crd => {}
    }
    Ok(())
}
