//! A loopback stand-in for the Anthropic API, for toklock's tests and benchmarks.
//!
//! It enforces real, continuously refilling token buckets per credential and model family,
//! answers 429s with `retry-after` and the full `anthropic-ratelimit-*` header set, streams
//! SSE at a configurable token speed, and records every request so tests can assert on what
//! reached the upstream (headers, concurrency, tokens per caller).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mock_anthropic::{MockConfig, MockServer};
//! let mock = MockServer::start(MockConfig { requests_per_minute: 60, ..MockConfig::default() }).await?;
//! println!("ANTHROPIC_BASE_URL={}", mock.url());
//! mock.update(|cfg| cfg.fail_next_overloaded = 1); // the next Messages call gets a 529
//! # Ok(()) }
//! ```
//!
//! Choices where the real API is unknown or a test needs determinism:
//! - Input tokens = ceil(characters of text in `system` and `messages[].content` / 4), at
//!   least 1; `x-mock-input-tokens: N` overrides. Output = min(max_tokens,
//!   `x-mock-output-tokens` or the configured default).
//! - A request that can never fit (cost above a bucket's per-minute limit) gets a 429
//!   `rate_limit_error` with `x-should-retry: false` and no `retry-after`.
//! - `tokens-*` headers copy whichever of input/output has less remaining.
//! - Remaining tokens are exact unless [`MockConfig::round_remaining`] is on; gzip is off
//!   unless [`MockConfig::gzip`] is on (both keep raw tests and benchmarks simple).
//! - Injected errors (529, spend limit, subscription rejection) charge nothing but still
//!   carry the rate-limit headers; a non-matching method on a known path is a 404.
//! - Output of a non-streaming call is charged in full even if the client leaves early
//!   (generation happens upstream anyway); a dropped stream is charged what it sent.
//! - Out-of-process users can read `GET /_mock/stats`, `POST /_mock/reset`,
//!   `POST /_mock/reset-buckets`, and read or patch the config with `GET`/`POST /_mock/config`.

mod body;
mod bucket;
mod clock;
mod config;
mod handlers;
mod limits;
mod message;
mod records;
mod reply;
mod server;
mod sse;
mod state;

pub use body::MockBody;
pub use bucket::Bucket;
pub use config::{MockConfig, OutputMode};
pub use limits::model_family;
pub use records::{Record, Stats, Tally};
pub use server::MockServer;
