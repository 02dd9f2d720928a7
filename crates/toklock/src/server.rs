//! The listener: accepts connections, serves them with hyper, and drains on shutdown.
//! (Skeleton: API is fixed, implementation lands next.)

use std::net::SocketAddr;

use crate::config::Config;

/// A bound, not yet running proxy. Binding first lets callers learn the port (port 0) and
/// report a port in use before anything runs.
pub struct Proxy {
    config: Config,
    listener: tokio::net::TcpListener,
}

/// Why the proxy could not start.
#[derive(Debug)]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot listen on {}: {}", self.addr, self.source)
    }
}

impl std::error::Error for BindError {}

impl Proxy {
    pub async fn bind(config: Config) -> Result<Proxy, BindError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| BindError {
                addr: config.listen,
                source,
            })?;
        Ok(Proxy { config, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.config.listen)
    }

    /// Starts serving on the current tokio runtime.
    pub fn spawn(self) -> ProxyHandle {
        todo!()
    }
}

/// Controls a running proxy. Cheap to clone.
#[derive(Clone)]
pub struct ProxyHandle {
    addr: SocketAddr,
}

impl ProxyHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, what `ANTHROPIC_BASE_URL` should be set to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting; let in-flight requests and streams finish within the grace period.
    pub fn shutdown(&self) {}

    /// Close everything now.
    pub fn abort(&self) {}

    /// Resolves once the proxy has stopped (after `shutdown` drained, or `abort`).
    pub async fn closed(&self) {}
}
