//! The command line, shared by the `toklock` binary and the Node addon's CLI entry so both
//! accept exactly the same flags. Signal handling stays with the caller: this module only
//! takes a `stop` future.

use std::ffi::OsString;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, Subcommand};
use http::Uri;

use crate::agent::FairBy;
use crate::config::Config;
use crate::scheduler::{PolicyKind, SchedulerConfig};
use crate::server::Proxy;

/// Token-aware rate-limit queue proxy for the Anthropic API.
///
/// Point agents at it with ANTHROPIC_BASE_URL; they wait in fair per-agent queues instead of
/// seeing 429s.
#[derive(Parser, Debug, Clone)]
#[command(name = "toklock", version, about, long_about = None)]
pub struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, global = true, env = "TOKLOCK_PORT", default_value_t = 4000)]
    pub port: u16,

    /// Address to listen on. Use 0.0.0.0 to accept other hosts (the Docker image does).
    #[arg(long, global = true, env = "TOKLOCK_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Upstream API base URL (http:// or https://).
    #[arg(
        long,
        env = "TOKLOCK_UPSTREAM",
        default_value = "https://api.anthropic.com"
    )]
    pub upstream: String,

    /// Log level or tracing filter (error, warn, info, debug, trace).
    #[arg(long, env = "TOKLOCK_LOG", default_value = "info")]
    pub log: String,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "TOKLOCK_MAX_BODY", default_value_t = 32 * 1024 * 1024)]
    pub max_body: usize,

    /// Seconds that open requests and streams may take to finish after SIGINT/SIGTERM.
    #[arg(long, env = "TOKLOCK_SHUTDOWN_GRACE", default_value_t = 30.0)]
    pub shutdown_grace: f64,

    /// Seconds to wait for the upstream's response headers before answering 504.
    #[arg(long, env = "TOKLOCK_UPSTREAM_TIMEOUT", default_value_t = 600.0)]
    pub upstream_timeout: f64,

    /// What one agent is, for fair queueing: auto, connection, process, ip, api-key or
    /// header:NAME. `auto` takes the x-toklock-agent header or an /a/NAME path prefix, then
    /// Claude Code's session id, then the client process, then the connection.
    #[arg(long, env = "TOKLOCK_FAIR_BY", default_value = "auto")]
    pub fair_by: FairBy,

    /// How the next request is chosen among agents that have work.
    #[arg(
        long,
        env = "TOKLOCK_SCHEDULE",
        value_enum,
        default_value = "round-robin"
    )]
    pub schedule: Schedule,

    /// Requests in flight per budget while it has plenty left.
    #[arg(long, env = "TOKLOCK_MAX_INFLIGHT", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_inflight: u32,

    /// Below this many tokens left (capped at a third of the bucket's limit), one at a time.
    #[arg(long, env = "TOKLOCK_SLOW_BELOW", default_value_t = 10_000)]
    pub slow_below: u64,

    /// Below this many tokens left (capped at a tenth of the bucket's limit), pause until
    /// enough has refilled.
    #[arg(long, env = "TOKLOCK_PAUSE_BELOW", default_value_t = 3_000)]
    pub pause_below: u64,

    /// Body bytes held in queues and in flight before new requests get 503.
    #[arg(long, env = "TOKLOCK_MAX_QUEUED_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_queued_bytes: u64,

    /// Seconds a request may wait in its queue before the caller gets 504 (default: no
    /// limit; wait as long as the client does).
    #[arg(long, env = "TOKLOCK_MAX_WAIT")]
    pub max_wait: Option<f64>,

    /// Times one request is retried after a 529 or 503 before the caller gets it.
    #[arg(long, env = "TOKLOCK_OVERLOAD_RETRIES", default_value_t = 5)]
    pub overload_retries: u32,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Scheduling policies among agents.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Take turns: one request per agent per round.
    RoundRobin,
    /// Share by tokens: the agent that has consumed the fewest (input x1, output x2, as the
    /// upstream reports them) goes next.
    TokenFair,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Ask a running toklock whether it is healthy (exit 0) or not (exit 1). Needs no shell
    /// or curl, so container health checks can use it.
    Health {
        /// Base URL of the proxy; defaults to the --host/--port settings.
        #[arg(long)]
        url: Option<String>,
    },
}

impl Args {
    /// The runtime configuration these flags describe.
    pub fn config(&self) -> Result<Config, String> {
        let upstream: Uri = self
            .upstream
            .parse()
            .map_err(|e| format!("invalid --upstream {:?}: {e}", self.upstream))?;
        match upstream.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(format!(
                    "invalid --upstream {:?}: it must start with http:// or https://",
                    self.upstream
                ))
            }
        }
        if upstream.host().is_none() {
            return Err(format!("invalid --upstream {:?}: no host", self.upstream));
        }
        Ok(Config {
            listen: SocketAddr::new(self.host, self.port),
            upstream,
            max_body: self.max_body,
            shutdown_grace: seconds("--shutdown-grace", self.shutdown_grace)?,
            upstream_timeout: seconds("--upstream-timeout", self.upstream_timeout)?,
            fair_by: self.fair_by.clone(),
            scheduler: SchedulerConfig {
                max_inflight: self.max_inflight as usize,
                slow_below: self.slow_below,
                pause_below: self.pause_below,
                overload_retries: self.overload_retries,
                max_queued_bytes: self.max_queued_bytes,
                policy: match self.schedule {
                    Schedule::RoundRobin => PolicyKind::RoundRobin,
                    Schedule::TokenFair => PolicyKind::TokenFair,
                },
                ..SchedulerConfig::default()
            },
            max_wait: self
                .max_wait
                .map(|s| seconds("--max-wait", s))
                .transpose()?,
        })
    }
}

fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("invalid {flag} {value}: expected a number of seconds >= 0"))
}

/// Installs a stderr logger once; later calls are no-ops (the addon may start many servers).
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Everything the binary does but signals: parse `argv`, then serve until `stop` resolves
/// (draining open requests) or run a subcommand. Returns the process exit code.
pub async fn main_with<I, T>(argv: I, stop: impl Future<Output = ()>) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(err) => {
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return code;
        }
    };
    let config = match args.config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("toklock: {message}");
            return 2;
        }
    };
    if let Some(Command::Health { url }) = &args.command {
        return crate::admin::health_check(url.as_deref(), config.listen).await;
    }
    init_tracing(&args.log);
    serve(config, stop).await
}

/// Binds, prints where to point agents, and serves until `stop`; then drains.
pub async fn serve(config: Config, stop: impl Future<Output = ()>) -> i32 {
    let proxy = match Proxy::bind(config).await {
        Ok(proxy) => proxy,
        Err(err) => {
            eprintln!("toklock: {err}");
            return 1;
        }
    };
    let handle = proxy.spawn();
    // One write, so a pipe reader never sees the banner in pieces.
    let banner = format!(
        "toklock {} listening on {}\n  export ANTHROPIC_BASE_URL={}\n",
        crate::VERSION,
        handle.local_addr(),
        handle.base_url(),
    );
    let _ = std::io::stderr().lock().write_all(banner.as_bytes());
    tokio::select! {
        _ = stop => {
            tracing::info!("shutting down: draining open requests");
            handle.shutdown();
            handle.closed().await;
        }
        _ = handle.closed() => {}
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_flag_picks_the_policy() {
        let policy = |argv: &[&str]| {
            Args::try_parse_from(argv)
                .unwrap()
                .config()
                .unwrap()
                .scheduler
                .policy
        };
        assert_eq!(policy(&["toklock"]), PolicyKind::RoundRobin);
        assert_eq!(
            policy(&["toklock", "--schedule", "token-fair"]),
            PolicyKind::TokenFair
        );
        assert_eq!(
            policy(&["toklock", "--schedule", "round-robin"]),
            PolicyKind::RoundRobin
        );
        assert!(Args::try_parse_from(["toklock", "--schedule", "fifo"]).is_err());
    }
}
