//! kvmesh: a cache-aware LLM request router and KV-cache operator for Kubernetes.
#![forbid(unsafe_code)]

pub mod cli;
pub mod proxy;
pub mod routing;
pub mod telemetry;
