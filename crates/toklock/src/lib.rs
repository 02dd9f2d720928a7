//! toklock: a token-aware rate-limit queue proxy for the Anthropic API.
//!
//! Agents point `ANTHROPIC_BASE_URL` at toklock. Inference calls wait in per-agent queues and go
//! upstream only as fast as Anthropic's own rate-limit headers allow; everything else passes
//! straight through. The binary (`src/bin/toklock.rs`) and the Node addon (`crates/toklock-node`)
//! are thin adapters over this library.

pub mod admin;
pub mod agent;
pub mod body;
pub mod budget;
pub mod cli;
pub mod config;
pub mod credential;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod peer;
pub mod proxy;
pub mod queue;
pub mod ratelimit;
pub mod scheduler;
pub mod server;
pub mod token_fair;
pub mod usage;

pub use config::Config;
pub use server::{Proxy, ProxyHandle};

/// The crate version; the npm package and `--version` report the same string.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
