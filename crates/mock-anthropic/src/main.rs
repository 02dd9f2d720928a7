//! `mock-anthropic`: run the mock upstream as a process, for SDK tests and benchmarks.
//!
//! The first line on stdout is `listening on http://HOST:PORT`, so a script can start it
//! with `--port 0` and read the port back.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use mock_anthropic::{MockConfig, MockServer, OutputMode};

/// A loopback stand-in for the Anthropic API with real rate-limit buckets.
#[derive(Debug, Parser)]
#[command(name = "mock-anthropic", version)]
struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to bind; 0 picks a free one (printed on the first stdout line).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Messages requests per minute (per credential and model family).
    #[arg(long)]
    rpm: Option<u64>,
    /// Input tokens per minute.
    #[arg(long)]
    itpm: Option<u64>,
    /// Output tokens per minute.
    #[arg(long)]
    otpm: Option<u64>,
    /// count_tokens requests per minute (per credential).
    #[arg(long)]
    count_tokens_rpm: Option<u64>,
    /// Delay before response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Generation speed in tokens per second; 0 = instant.
    #[arg(long, default_value_t = 0.0)]
    tokens_per_sec: f64,
    /// Output length when the request does not say (capped by max_tokens).
    #[arg(long)]
    output_tokens: Option<u64>,
    /// How full new buckets start, from 0.0 (empty) to 1.0 (full).
    #[arg(long, default_value_t = 1.0)]
    initial_fill: f64,
    /// How output tokens are charged.
    #[arg(long, value_enum, default_value_t = OutputMode::Reserve)]
    output_mode: OutputMode,
    /// Gzip JSON responses for clients that accept it.
    #[arg(long)]
    gzip: bool,
    /// Round remaining-token headers to the nearest 1,000 like the real API.
    #[arg(long)]
    round_remaining: bool,
    /// Leave `retry-after` off rate-limit 429s.
    #[arg(long)]
    no_retry_after: bool,
    /// Subscription mode: add the `anthropic-ratelimit-unified-*` headers.
    #[arg(long)]
    subscription: bool,
    /// Keep at most this many request records (stats keep counting past it).
    #[arg(long)]
    max_records: Option<usize>,
}

impl Args {
    fn config(&self) -> MockConfig {
        let d = MockConfig::default();
        MockConfig {
            requests_per_minute: self.rpm.unwrap_or(d.requests_per_minute),
            input_tokens_per_minute: self.itpm.unwrap_or(d.input_tokens_per_minute),
            output_tokens_per_minute: self.otpm.unwrap_or(d.output_tokens_per_minute),
            count_tokens_requests_per_minute: self
                .count_tokens_rpm
                .unwrap_or(d.count_tokens_requests_per_minute),
            first_byte_latency: Duration::from_millis(self.latency_ms),
            tokens_per_sec: self.tokens_per_sec,
            default_output_tokens: self.output_tokens.unwrap_or(d.default_output_tokens),
            output_mode: self.output_mode,
            initial_fill: self.initial_fill,
            gzip: self.gzip,
            round_remaining: self.round_remaining,
            retry_after: !self.no_retry_after,
            subscription: self.subscription,
            max_records: self.max_records.unwrap_or(d.max_records),
            ..d
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    // Handlers first: a signal right after the banner must stop us cleanly, not by default.
    let signals = Signals::install()?;
    let server = MockServer::start_on(SocketAddr::new(args.host, args.port), args.config()).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.url())?;
        out.flush()?;
    }
    signals.wait().await;
    server.shutdown().await;
    Ok(())
}

#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn wait(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
