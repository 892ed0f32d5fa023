//! Where replicas come from: a static `--backend` list, or the Ready pods
//! that a label selector matches, watched live.

pub mod inference_pool;
pub mod pods;
pub mod pool;
pub mod rbac;
