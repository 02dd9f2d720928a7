//! The listener: accepts connections, serves them with hyper (HTTP/1.1 and h2c), routes each
//! request to the admin endpoints or the forwarder, and drains on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::error::ProxyBody;
use crate::forward::Upstream;
use crate::proxy::{self, Shared};

/// A bound, not yet running proxy. Binding first lets callers learn the port (port 0) and
/// report a port in use before anything runs.
pub struct Proxy {
    config: Config,
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Why the proxy could not start.
#[derive(Debug)]
pub struct BindError {
    pub addr: SocketAddr,
    pub message: String,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot listen on {}: {}", self.addr, self.message)
    }
}

impl std::error::Error for BindError {}

impl Proxy {
    pub async fn bind(config: Config) -> Result<Proxy, BindError> {
        let upstream =
            Upstream::new(&config.upstream, config.upstream_timeout).map_err(|e| BindError {
                addr: config.listen,
                message: e.message,
            })?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| BindError {
                addr: config.listen,
                message: match source.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        "the address is already in use (is another toklock running? try --port)"
                            .to_string()
                    }
                    _ => source.to_string(),
                },
            })?;
        let shared = Arc::new(Shared::new(&config, upstream));
        Ok(Proxy {
            config,
            listener,
            shared,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Starts serving on the current tokio runtime.
    pub fn spawn(self) -> ProxyHandle {
        let addr = self.local_addr();
        let (control, control_rx) = watch::channel(Control::Run);
        let (done_tx, done) = watch::channel(false);
        tokio::spawn(async move {
            run(self, control_rx).await;
            let _ = done_tx.send(true);
        });
        tracing::debug!(%addr, "listening");
        ProxyHandle {
            inner: Arc::new(HandleInner {
                addr,
                control,
                done,
            }),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Control {
    Run,
    Drain,
    Abort,
}

/// Controls a running proxy. Cheap to clone.
#[derive(Clone)]
pub struct ProxyHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    addr: SocketAddr,
    control: watch::Sender<Control>,
    done: watch::Receiver<bool>,
}

impl ProxyHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// What `ANTHROPIC_BASE_URL` should be set to. A wildcard listen address is shown as
    /// loopback, which is what a local agent can reach.
    pub fn base_url(&self) -> String {
        base_url(self.inner.addr)
    }

    /// Stop accepting; let in-flight requests and streams finish within the grace period.
    pub fn shutdown(&self) {
        self.inner.control.send_if_modified(|state| {
            let change = *state == Control::Run;
            if change {
                *state = Control::Drain;
            }
            change
        });
    }

    /// Close everything now.
    pub fn abort(&self) {
        let _ = self.inner.control.send(Control::Abort);
    }

    /// Resolves once the proxy has stopped (after `shutdown` drained, or `abort`).
    pub async fn closed(&self) {
        let mut done = self.inner.done.clone();
        let _ = done.wait_for(|done| *done).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.inner.done.borrow()
    }
}

/// `http://ADDR` for a listen address, with a wildcard IP shown as loopback: what a client on
/// this machine can connect to.
pub fn base_url(listen: SocketAddr) -> String {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{addr}")
}

async fn run(proxy: Proxy, mut control: watch::Receiver<Control>) {
    let Proxy {
        config,
        listener,
        shared,
    } = proxy;
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut next_id: u64 = 0;

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        // Usually EMFILE or a connection reset before accept; keep serving.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                next_id += 1;
                let local = stream.local_addr().unwrap_or(config.listen);
                let conn = proxy::Connection::new(next_id, peer, local, &shared);
                let shared = shared.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    let conn = conn.clone();
                    async move { Ok::<Response<ProxyBody>, Infallible>(proxy::handle(req, shared, conn).await) }
                });
                let served = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let watched = graceful.watch(served);
                connections.spawn(async move {
                    if let Err(err) = watched.await {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = control.changed() => {
                if changed.is_err() || *control.borrow() != Control::Run {
                    break;
                }
            }
        }
    }
    drop(listener);

    if *control.borrow() == Control::Abort {
        connections.abort_all();
        return;
    }
    // Drain: tell every connection to finish what it has and close, then wait for them,
    // for a forced abort, or for the grace period, whichever comes first.
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        grace_s = config.shutdown_grace.as_secs_f64(),
        "draining"
    );
    let deadline = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(deadline);
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    loop {
        tokio::select! {
            _ = &mut drained => break,
            _ = &mut deadline => {
                tracing::warn!("grace period over; closing the remaining connections");
                break;
            }
            changed = control.changed() => {
                if changed.is_err() || *control.borrow() == Control::Abort {
                    break;
                }
            }
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
