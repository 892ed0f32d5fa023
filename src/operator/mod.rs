//! The `KvCachePool` operator: desired-state builders (pure), status
//! computation (pure), the controller that applies them, leader election.

pub mod builders;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod quantity;
pub mod rbac;
pub mod run;
pub mod status;
