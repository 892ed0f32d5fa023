//! kvmesh: a cache-aware LLM request router and KV-cache operator for Kubernetes.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod crd;
pub mod discovery;
pub mod node_cache;
pub mod operator;
pub mod proxy;
pub mod routing;
pub mod sim;
pub mod telemetry;
