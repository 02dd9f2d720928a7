//! One request's way through toklock: admin endpoints, body limits, then the forwarder.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::config::Config;
use crate::error::{ApiError, ProxyBody};
use crate::forward::Upstream;

/// State shared by every connection of one proxy.
pub struct Shared {
    pub config: Config,
    pub upstream: Upstream,
    pub started: std::time::Instant,
}

impl Shared {
    pub fn new(config: &Config, upstream: Upstream) -> Shared {
        Shared {
            config: config.clone(),
            upstream,
            started: std::time::Instant::now(),
        }
    }
}

/// What toklock knows about the client connection a request came on.
#[derive(Clone)]
pub struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

impl Connection {
    pub fn new(id: u64, peer: SocketAddr, local: SocketAddr, _shared: &Shared) -> Connection {
        Connection { id, peer, local }
    }
}

/// Answers one request. Never fails: every error becomes an Anthropic-shaped response.
pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: Connection,
) -> Response<ProxyBody> {
    let path = req.uri().path();
    if path == "/toklock" || path.starts_with("/toklock/") {
        return crate::admin::handle(req, &shared).await;
    }
    match forward(req, &shared, &conn).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn forward(
    req: Request<Incoming>,
    shared: &Shared,
    _conn: &Connection,
) -> Result<Response<ProxyBody>, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, shared.config.max_body).await?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let request = shared
        .upstream
        .request(&parts.method, path_and_query, &parts.headers, body)?;
    let response = shared.upstream.send(request).await?;
    Ok(response.map(|body| body.boxed()))
}

/// Reads the whole request body (it may have to be sent more than once), refusing more than
/// `max` bytes before anything reaches the upstream.
pub async fn read_body(
    headers: &http::HeaderMap,
    body: Incoming,
    max: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::too_large(format!(
            "request body is larger than toklock's limit of {max} bytes (--max-body)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(err) => Err(ApiError::invalid_request(format!(
            "could not read the request body: {err}"
        ))),
    }
}
