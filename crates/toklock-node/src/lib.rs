//! Node.js addon for toklock: the same library as the `toklock` binary, loaded in-process so
//! `npx toklock` and `require('toklock').start()` need no compiler, no postinstall and no child
//! process. The hand-written JS in `npm/toklock` wraps these exports; keep this layer thin.
//!
//! Nothing here installs signal handlers: under Node the JS shim owns SIGINT/SIGTERM and calls
//! [`Cli::stop`].

use std::any::Any;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use napi::{Error, Result, Status};
use napi_derive::napi;
use tokio::sync::watch;
use toklock::scheduler::PolicyKind;
use toklock::{Config, Proxy, ProxyHandle};

/// Options for [`start`]; every field is optional and defaults like the CLI flag of the same
/// name. Times are in seconds, like `--shutdown-grace`, so a config can be shared with the CLI.
#[napi(object)]
#[derive(Default)]
pub struct StartOptions {
    /// Port to listen on; 0 picks a free one. Default 4000.
    pub port: Option<f64>,
    /// IP address to listen on ("localhost" means 127.0.0.1). Default 127.0.0.1.
    pub host: Option<String>,
    /// Upstream API base URL (http:// or https://). Default https://api.anthropic.com.
    pub upstream: Option<String>,
    /// Largest request body accepted, in bytes. Default 32 MiB.
    pub max_body: Option<f64>,
    /// Seconds that open requests and streams may take to finish after `close()`. Default 30.
    pub shutdown_grace: Option<f64>,
    /// Seconds to wait for the upstream's response headers before answering 504. Default 600.
    pub upstream_timeout: Option<f64>,
    /// What one agent (one fair queue) is: auto, connection, process, ip, api-key or
    /// header:NAME, like `--fair-by`. Default auto.
    pub fair_by: Option<String>,
    /// How the next agent is chosen: "round-robin" (turns per request) or "token-fair"
    /// (turns weighted by the tokens each agent used), like `--schedule`. Default round-robin.
    pub schedule: Option<String>,
    /// Requests in flight per budget while it has plenty left (1 to 1000). Default 3.
    pub max_inflight: Option<f64>,
    /// Tokens left in a bucket below which its lane narrows to one request. Default 10000.
    pub slow_below: Option<f64>,
    /// Tokens left in a bucket below which its lane pauses. Default 3000.
    pub pause_below: Option<f64>,
    /// Body bytes queued or in flight before new requests are refused. Default 512 MiB.
    pub max_queued_bytes: Option<f64>,
    /// Longest a request may wait in its queue, in seconds, before the caller gets 504.
    /// Default: as long as the client waits.
    pub max_wait: Option<f64>,
    /// Times one request is requeued after a 529/503 before the caller gets it. Default 5.
    pub overload_retries: Option<f64>,
    /// Log filter for toklock's stderr logs (error, warn, info, debug, trace). Default warn.
    /// The first server or CLI run in a process sets it for the whole process.
    pub log: Option<String>,
}

/// Binds and starts a proxy on the addon's tokio runtime. Resolves once it is listening, so
/// `port` is known (port 0) and a port in use rejects instead of failing later.
#[napi]
pub async fn start(options: Option<StartOptions>) -> Result<Server> {
    guarded(async move {
        let options = options.unwrap_or_default();
        let config = config_from(&options).map_err(invalid)?;
        toklock::cli::init_tracing(options.log.as_deref().unwrap_or("warn"));
        let proxy = Proxy::bind(config)
            .await
            .map_err(|err| Error::new(Status::GenericFailure, err.to_string()))?;
        Ok(Server {
            handle: proxy.spawn(),
        })
    })
    .await
}

/// A running proxy. Dropping it on the JS side does not stop it: call `close()`.
#[napi]
pub struct Server {
    handle: ProxyHandle,
}

#[napi]
impl Server {
    /// The port actually bound (useful after `port: 0`).
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        u32::from(self.handle.local_addr().port())
    }

    /// The address bound, e.g. "127.0.0.1".
    #[napi(getter)]
    pub fn host(&self) -> String {
        self.handle.local_addr().ip().to_string()
    }

    /// `http://HOST:PORT`, the value for ANTHROPIC_BASE_URL.
    #[napi(getter)]
    pub fn url(&self) -> String {
        self.handle.base_url()
    }

    /// Stops accepting and resolves once open requests and streams have finished (or the
    /// shutdown grace ran out).
    #[napi]
    pub async fn close(&self) -> Result<()> {
        let handle = self.handle.clone();
        guarded(async move {
            handle.shutdown();
            handle.closed().await;
            Ok(())
        })
        .await
    }

    /// Resolves once the proxy has stopped, however that happened.
    #[napi]
    pub async fn closed(&self) -> Result<()> {
        let handle = self.handle.clone();
        guarded(async move {
            handle.closed().await;
            Ok(())
        })
        .await
    }

    /// Drops every connection now, without draining.
    #[napi(catch_unwind)]
    pub fn abort(&self) {
        self.handle.abort();
    }
}

/// One run of the command line. A handle object rather than a global so a `stop()` that comes
/// before `run()` has started waiting is not lost.
#[napi]
pub struct Cli {
    stop: Arc<watch::Sender<bool>>,
}

#[napi]
impl Cli {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Cli {
            stop: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Runs the toklock command line (`argv[0]` is the program name) exactly as the binary
    /// does, minus signal handling; resolves to the exit code once `stop()` has drained it.
    #[napi]
    pub async fn run(&self, argv: Vec<String>) -> Result<i32> {
        let mut stopped = self.stop.subscribe();
        guarded(async move {
            let stop = async move {
                // An error means the sender is gone, which only happens once `Cli` is dropped:
                // nobody can ask for a stop after that, so treat it as one.
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            Ok(toklock::cli::main_with(argv, stop).await)
        })
        .await
    }

    /// Asks `run()` to stop accepting, drain open requests and resolve. Idempotent.
    #[napi(catch_unwind)]
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// The toklock version compiled into this addon (the npm package must match it).
#[napi]
pub fn version() -> &'static str {
    toklock::VERSION
}

/// Runs a future and turns a panic into a rejected promise with the panic message: napi's own
/// catch only keeps `&str` payloads, and a panic must never take down the host process.
async fn guarded<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(Error::new(
            Status::GenericFailure,
            format!("toklock panicked: {}", panic_message(payload.as_ref())),
        )),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "unknown panic"
    }
}

fn invalid(message: String) -> Error {
    Error::new(Status::InvalidArg, message)
}

/// Validates JS-supplied options into a [`Config`]. Messages name the option as JS spells it.
fn config_from(options: &StartOptions) -> std::result::Result<Config, String> {
    let defaults = Config::default();
    let port = match options.port {
        None => defaults.listen.port(),
        Some(port) if port.fract() == 0.0 && (0.0..=65535.0).contains(&port) => port as u16,
        Some(port) => {
            return Err(format!(
                "invalid port {port}: expected an integer from 0 to 65535"
            ))
        }
    };
    let host = match options.host.as_deref() {
        None => defaults.listen.ip(),
        Some("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(host) => host.trim_matches(['[', ']']).parse().map_err(|_| {
            format!("invalid host {host:?}: expected an IP address such as 127.0.0.1 or ::1")
        })?,
    };
    let upstream = match options.upstream.as_deref() {
        None => defaults.upstream.clone(),
        Some(upstream) => parse_upstream(upstream)?,
    };
    let max_body = match options.max_body {
        None => defaults.max_body,
        Some(bytes) if bytes.fract() == 0.0 && bytes >= 1.0 && bytes <= usize::MAX as f64 => {
            bytes as usize
        }
        Some(bytes) => {
            return Err(format!(
                "invalid maxBody {bytes}: expected a whole number of bytes >= 1"
            ))
        }
    };
    let fair_by = match options.fair_by.as_deref() {
        None => defaults.fair_by.clone(),
        Some(fair_by) => fair_by
            .parse()
            .map_err(|e| format!("invalid fairBy {fair_by:?}: {e}"))?,
    };
    let mut scheduler = defaults.scheduler;
    match options.schedule.as_deref() {
        None => {}
        Some("round-robin") => scheduler.policy = PolicyKind::RoundRobin,
        Some("token-fair") => scheduler.policy = PolicyKind::TokenFair,
        Some(other) => {
            return Err(format!(
                "invalid schedule {other:?}: expected \"round-robin\" or \"token-fair\""
            ))
        }
    }
    if let Some(n) = integer("maxInflight", options.max_inflight, 1, 1000)? {
        scheduler.max_inflight = n as usize;
    }
    if let Some(n) = integer("slowBelow", options.slow_below, 0, u64::MAX)? {
        scheduler.slow_below = n;
    }
    if let Some(n) = integer("pauseBelow", options.pause_below, 0, u64::MAX)? {
        scheduler.pause_below = n;
    }
    if let Some(n) = integer("maxQueuedBytes", options.max_queued_bytes, 1, u64::MAX)? {
        scheduler.max_queued_bytes = n;
    }
    if let Some(n) = integer("overloadRetries", options.overload_retries, 0, 1000)? {
        scheduler.overload_retries = n as u32;
    }
    // `..defaults` keeps library settings this API does not expose (yet).
    #[allow(clippy::needless_update)]
    Ok(Config {
        listen: SocketAddr::new(host, port),
        upstream,
        max_body,
        shutdown_grace: seconds("shutdownGrace", options.shutdown_grace)?
            .unwrap_or(defaults.shutdown_grace),
        upstream_timeout: seconds("upstreamTimeout", options.upstream_timeout)?
            .unwrap_or(defaults.upstream_timeout),
        fair_by,
        scheduler,
        max_wait: seconds("maxWait", options.max_wait)?.or(defaults.max_wait),
        ..defaults
    })
}

fn parse_upstream(upstream: &str) -> std::result::Result<http::Uri, String> {
    let uri: http::Uri = upstream
        .parse()
        .map_err(|e| format!("invalid upstream {upstream:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "invalid upstream {upstream:?}: it must start with http:// or https://"
        ));
    }
    if uri.host().is_none() {
        return Err(format!("invalid upstream {upstream:?}: no host"));
    }
    Ok(uri)
}

/// A whole number in `min..=max`; JS numbers arrive as f64.
fn integer(
    name: &str,
    value: Option<f64>,
    min: u64,
    max: u64,
) -> std::result::Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(v) if v.fract() == 0.0 && v >= min as f64 && v <= max as f64 => Ok(Some(v as u64)),
        Some(v) if max == u64::MAX => Err(format!(
            "invalid {name} {v}: expected a whole number >= {min}"
        )),
        Some(v) => Err(format!(
            "invalid {name} {v}: expected a whole number from {min} to {max}"
        )),
    }
}

fn seconds(name: &str, value: Option<f64>) -> std::result::Result<Option<Duration>, String> {
    value
        .map(|value| {
            Duration::try_from_secs_f64(value)
                .map_err(|_| format!("invalid {name} {value}: expected a number of seconds >= 0"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_library() {
        let config = config_from(&StartOptions::default()).unwrap();
        let defaults = Config::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.upstream, defaults.upstream);
        assert_eq!(config.max_body, defaults.max_body);
    }

    #[test]
    fn options_are_validated() {
        let bad = |options: StartOptions| config_from(&options).unwrap_err();
        assert!(bad(StartOptions {
            port: Some(70000.0),
            ..Default::default()
        })
        .contains("invalid port 70000"));
        assert!(bad(StartOptions {
            port: Some(1.5),
            ..Default::default()
        })
        .contains("invalid port"));
        assert!(bad(StartOptions {
            host: Some("example.com".into()),
            ..Default::default()
        })
        .contains("invalid host"));
        assert!(bad(StartOptions {
            upstream: Some("ftp://x".into()),
            ..Default::default()
        })
        .contains("http:// or https://"));
        assert!(bad(StartOptions {
            shutdown_grace: Some(-1.0),
            ..Default::default()
        })
        .contains("invalid shutdownGrace"));
        assert!(bad(StartOptions {
            fair_by: Some("nobody".into()),
            ..Default::default()
        })
        .contains("invalid fairBy \"nobody\""));
        assert!(bad(StartOptions {
            max_inflight: Some(0.0),
            ..Default::default()
        })
        .contains("invalid maxInflight 0: expected a whole number from 1 to 1000"));
    }

    #[test]
    fn scheduler_options_reach_the_config() {
        let config = config_from(&StartOptions {
            fair_by: Some("header:x-team".into()),
            max_inflight: Some(7.0),
            max_wait: Some(2.5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.fair_by.to_string(), "header:x-team");
        assert_eq!(config.scheduler.max_inflight, 7);
        assert_eq!(config.max_wait, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = runtime
            .block_on(guarded(
                std::future::ready(()).map(|()| -> Result<()> { panic!("boom {}", 42) }),
            ))
            .unwrap_err();
        assert_eq!(err.reason, "toklock panicked: boom 42");
    }

    #[test]
    fn localhost_and_ipv6_hosts() {
        let config = config_from(&StartOptions {
            host: Some("localhost".into()),
            port: Some(0.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:0".parse().unwrap());
        let config = config_from(&StartOptions {
            host: Some("[::1]".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(config.listen.is_ipv6());
    }
}
