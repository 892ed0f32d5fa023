//! Pure routing: request bytes → canonical prompt → chained block hashes →
//! prefix index, ring and load bound → a decision. No I/O, no clock reads.

pub mod blocks;
pub mod config;
pub mod index;
pub mod node;
pub mod picker;
pub mod prompt;
pub mod ring;

pub use blocks::{BlockHasher, PromptBlocks, block_hashes};
pub use index::{PrefixIndex, PrefixMatch};
pub use picker::{Decision, Policy, Reason, RouteError, RouteRequest, Router, RoutingConfig};
pub use prompt::{Endpoint, Prompt, canonical_prompt};
pub use ring::Ring;
