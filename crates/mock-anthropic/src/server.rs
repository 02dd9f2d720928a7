//! The listening server and its handle.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::MockConfig;
use crate::handlers::{handle, reset_stats};
use crate::records::{stats, Record, Stats};
use crate::state::{lock, Shared};

/// A running mock. Dropping it stops the server and closes its connections.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockServer {
    /// Start on `127.0.0.1:0` (an ephemeral port) in the current tokio runtime.
    pub async fn start(config: MockConfig) -> io::Result<MockServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Start on a given address.
    pub async fn start_on(addr: SocketAddr, config: MockConfig) -> io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(MockServer {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address (with the real port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port`, ready for `ANTHROPIC_BASE_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A copy of the current config.
    pub fn config(&self) -> MockConfig {
        self.shared.config()
    }

    /// Change the config while running; requests already admitted keep what they started
    /// with, new ones see the change. Limit changes apply to existing buckets (clamped).
    pub fn update(&self, f: impl FnOnce(&mut MockConfig)) {
        f(&mut lock(&self.shared.config));
    }

    /// Every request served since start or the last reset, in arrival-of-response order.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.shared.log).records()
    }

    /// The summary served at `GET /_mock/stats`.
    pub fn stats(&self) -> Stats {
        stats(&self.shared)
    }

    /// Most responses in flight at once (a stream counts until its body ends or is dropped).
    pub fn peak_concurrency(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Responses in flight now.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// 429s answered (rate-limit, spend-limit and subscription ones alike).
    pub fn rate_limited_count(&self) -> u64 {
        stats(&self.shared).total.rate_limited
    }

    /// 529s answered.
    pub fn overloaded_count(&self) -> u64 {
        stats(&self.shared).total.overloaded
    }

    /// Forget records and counters; the peak restarts from the current in-flight count.
    /// Buckets are untouched (see [`MockServer::reset_buckets`]).
    pub fn reset_stats(&self) {
        reset_stats(&self.shared);
    }

    /// Refill every bucket (they are recreated full on next use).
    pub fn reset_buckets(&self) {
        *lock(&self.shared.limiter) = Default::default();
    }

    /// Stop accepting, close every connection (streams included) and wait for the server
    /// task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Accept until told to stop. Connections live in a `JoinSet` owned by this task, so ending
/// or aborting the task aborts them all.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Typically EMFILE under a benchmark: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Nagle plus delayed ACK would add 40 ms stalls to small SSE frames.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}
