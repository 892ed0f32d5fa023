//! The `KvCachePool` operator: desired-state builders (pure) and, in a later
//! step, the controller that applies them and writes status.

pub mod builders;
pub mod quantity;
