//! Runtime settings, shared by the binary and the Node addon.

use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;

use crate::agent::FairBy;
use crate::scheduler::SchedulerConfig;

/// Everything a running proxy needs to know. Built from the CLI (`cli::Args`) or by hand.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where requests go: scheme, host and optional port (a path prefix is kept).
    pub upstream: Uri,
    /// Largest request body accepted; Anthropic's own limit is 32 MiB.
    pub max_body: usize,
    /// How long in-flight requests may run after a shutdown is asked for.
    pub shutdown_grace: Duration,
    /// How long to wait for the upstream's response headers before answering 504.
    pub upstream_timeout: Duration,
    /// What one agent (one fair queue) is.
    pub fair_by: FairBy,
    /// Budget watermarks, concurrency, retries and the memory cap of the queues.
    pub scheduler: SchedulerConfig,
    /// Longest a request may wait in its queue before the caller gets 504; None waits as
    /// long as the client does.
    pub max_wait: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            upstream: Uri::from_static("https://api.anthropic.com"),
            max_body: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(600),
            fair_by: FairBy::default(),
            scheduler: SchedulerConfig::default(),
            max_wait: None,
        }
    }
}
