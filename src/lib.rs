//! kvmesh: a cache-aware LLM request router and KV-cache operator for Kubernetes.
#![forbid(unsafe_code)]

pub mod routing;
