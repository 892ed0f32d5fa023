//! Simulated inference engines and the workloads that measure routing:
//! tokenizer and chat template stand-ins, a vLLM-style prefix cache and
//! scheduler with a latency model, the `kvmesh sim` HTTP server, workloads,
//! the virtual-time runner and the baselines it compares against.

pub mod cache;
pub mod engine;
pub mod offline;
pub mod server;
pub mod sglang;
pub mod template;
pub mod tokenizer;
pub mod trace;
pub mod workload;
