//! One request's way through toklock: admin endpoints, body limits, then either straight to
//! the upstream or, for inference calls, through the fair queue and its budget.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::agent::{self, ConnectionInfo};
use crate::body::HeldBody;
use crate::config::Config;
use crate::credential::Fingerprint;
use crate::error::{full, ApiError, ProxyBody};
use crate::forward::Upstream;
use crate::metrics::{Metrics, Rejection};
use crate::queue::{Queue, Slot, Ticket};
use crate::ratelimit::{classify_429, Classified429};
use crate::scheduler::BudgetKey;
use crate::usage::UsageScanner;

/// Time spent waiting in toklock's queue, on every proxied response.
pub const QUEUE_MS_HEADER: &str = "x-toklock-queue-ms";

/// The most of an upstream 429 body read to tell a spend-limit 429 from an ordinary one.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// State shared by every connection of one proxy.
pub struct Shared {
    pub config: Config,
    pub upstream: Upstream,
    pub queue: Queue,
    pub metrics: Metrics,
    pub started: Instant,
}

impl Shared {
    /// Needs a tokio runtime (the queue spawns its wake-up task).
    pub fn new(config: &Config, upstream: Upstream) -> Shared {
        Shared {
            config: config.clone(),
            upstream,
            queue: Queue::new(config.scheduler),
            metrics: Metrics::default(),
            started: Instant::now(),
        }
    }
}

/// What toklock knows about the client connection a request came on.
#[derive(Clone)]
pub struct Connection {
    pub info: ConnectionInfo,
}

impl Connection {
    /// Starts the client-process lookup off the hot path when the fairness key may need it.
    pub fn new(id: u64, peer: SocketAddr, local: SocketAddr, shared: &Shared) -> Connection {
        let info = ConnectionInfo::new(id, peer, local);
        if shared.config.fair_by.needs_process_lookup() {
            info.start_process_lookup();
        }
        Connection { info }
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
        Err(err) => {
            let why = match err.status {
                StatusCode::SERVICE_UNAVAILABLE => Some(Rejection::QueueFull),
                StatusCode::GATEWAY_TIMEOUT if err.message.contains("--max-wait") => {
                    Some(Rejection::MaxWait)
                }
                StatusCode::PAYLOAD_TOO_LARGE => Some(Rejection::TooLarge),
                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => Some(Rejection::Upstream),
                _ => None,
            };
            if let Some(why) = why {
                shared.metrics.rejected(why);
            }
            err.into_response()
        }
    }
}

/// Only inference calls spend the budget; everything else (probes, model lists, token
/// counting) goes straight through and never waits behind them.
pub fn is_scheduled(method: &Method, path: &str) -> bool {
    method == Method::POST && matches!(path, "/v1/messages" | "/v1/complete")
}

async fn forward(
    req: Request<Incoming>,
    shared: &Shared,
    conn: &Connection,
) -> Result<Response<ProxyBody>, ApiError> {
    let arrived = Instant::now();
    let (mut parts, body) = req.into_parts();
    // `/a/NAME/...` names the agent; the upstream never sees the prefix.
    let path_name = agent::strip_agent_prefix(&parts.uri).map(|(name, uri)| {
        parts.uri = uri;
        name
    });
    let body = read_body(&parts.headers, body, shared.config.max_body).await?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let send = |body: Bytes| async {
        let request =
            shared
                .upstream
                .request(&parts.method, &path_and_query, &parts.headers, body)?;
        shared.upstream.send(request).await
    };

    if !is_scheduled(&parts.method, parts.uri.path()) {
        shared.metrics.passthrough();
        let mut response = send(body).await?.map(|b| b.boxed());
        set_queue_ms(&mut response, Duration::ZERO);
        return Ok(response);
    }

    shared.metrics.scheduled();
    let agent = agent::identify(
        &shared.config.fair_by,
        &parts.headers,
        path_name.as_deref(),
        &conn.info,
    )
    .await;
    let key = BudgetKey::new(Fingerprint::of_request(&parts.headers), &model_of(&body));
    let lane = format!("{}/{}", key.credential, key.family);
    tracing::debug!(%agent, %lane, bytes = body.len(), "queued");
    let ticket = shared.queue.admit(agent, key, body.len()).map_err(|over| {
        ApiError::overloaded(format!(
            "toklock's queues are full ({} of {} bytes held); try again shortly (--max-queued-bytes)",
            over.held_bytes, over.max_queued_bytes
        ))
    })?;
    let deadline = shared.config.max_wait.map(|wait| arrived + wait);
    let mut slot = wait_turn(ticket, deadline, shared.config.max_wait).await?;

    loop {
        let response = send(body.clone()).await?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let (mut parts, error_body) = response.into_parts();
            let error_body = read_capped(error_body).await;
            match classify_429(&parts.headers, &readable(&parts.headers, &error_body)) {
                Classified429::Retryable => {
                    shared.metrics.requeued_429();
                    tracing::info!(%lane, "upstream 429: requeued at the front");
                    slot = wait_turn(
                        slot.rate_limited(&parts.headers),
                        deadline,
                        shared.config.max_wait,
                    )
                    .await?;
                    continue;
                }
                Classified429::PassThrough(reason) => {
                    shared.metrics.passed_429();
                    tracing::warn!(%lane, ?reason, "upstream 429 passed to the caller");
                    slot.observe(status, &parts.headers);
                    // The body is whole again; its length comes from the body itself.
                    parts.headers.remove(header::CONTENT_LENGTH);
                    let mut response = Response::from_parts(parts, full(error_body));
                    set_queue_ms(&mut response, slot.queue_wait());
                    return Ok(response);
                }
            }
        }
        // 529 overloaded_error, or a 503 from the API or a gateway in front of it.
        if matches!(status.as_u16(), 529 | 503) {
            match slot.overloaded(response.headers()) {
                Ok(ticket) => {
                    shared.metrics.overload_retry();
                    tracing::info!(%lane, %status, "upstream overloaded: retrying after a backoff");
                    // Let go of the failed response before waiting.
                    drop(response);
                    slot = wait_turn(ticket, deadline, shared.config.max_wait).await?;
                    continue;
                }
                Err(kept) => slot = kept,
            }
        } else {
            slot.observe(status, response.headers());
        }
        let waited = slot.queue_wait();
        shared.metrics.waited(waited);
        let usage = UsageScanner::for_response(response.status(), response.headers());
        let mut response = response.map(|inner| HeldBody::new(inner, slot, usage).boxed());
        set_queue_ms(&mut response, waited);
        return Ok(response);
    }
}

/// Waits for the queue to hand out a slot, up to the `--max-wait` deadline.
async fn wait_turn(
    ticket: Ticket,
    deadline: Option<Instant>,
    max_wait: Option<Duration>,
) -> Result<Slot, ApiError> {
    let outcome = match deadline {
        None => ticket.await,
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, ticket).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return Err(ApiError::gateway_timeout(format!(
                        "the request waited in toklock's queue longer than --max-wait ({} s) for the rate limit to allow it",
                        max_wait.unwrap_or_default().as_secs_f64()
                    )))
                }
            }
        }
    };
    outcome.map_err(|closed| ApiError::overloaded(closed.to_string()))
}

fn set_queue_ms<B>(response: &mut Response<B>, waited: Duration) {
    response.headers_mut().insert(
        QUEUE_MS_HEADER,
        HeaderValue::from(waited.as_millis() as u64),
    );
}

/// The `model` field of a Messages body, which picks the budget (limits are per family).
/// Anything unreadable shares one "unknown" budget; the upstream will judge the body.
pub fn model_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    serde_json::from_slice::<ModelOnly>(body)
        .ok()
        .and_then(|m| m.model)
        .unwrap_or_default()
}

/// An error body as text for classification: SDKs ask for gzip, and a gzipped spend-limit 429
/// read as gibberish would look like an ordinary one and be retried forever. The caller still
/// gets the original bytes.
fn readable<'a>(headers: &http::HeaderMap, body: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    if !gzip {
        return std::borrow::Cow::Borrowed(body);
    }
    let mut text = Vec::new();
    let decoder = flate2::read::GzDecoder::new(body);
    // Capped like the body itself, so a hostile upstream cannot inflate it without bound.
    match std::io::Read::read_to_end(
        &mut std::io::Read::take(decoder, MAX_ERROR_BODY as u64),
        &mut text,
    ) {
        Ok(_) => std::borrow::Cow::Owned(text),
        Err(_) => std::borrow::Cow::Borrowed(body),
    }
}

/// Reads an upstream error body, keeping at most `MAX_ERROR_BODY` bytes.
async fn read_capped(body: Incoming) -> Bytes {
    let read = Limited::new(body, MAX_ERROR_BODY).collect();
    match tokio::time::timeout(Duration::from_secs(30), read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inference_calls_are_scheduled() {
        assert!(is_scheduled(&Method::POST, "/v1/messages"));
        assert!(is_scheduled(&Method::POST, "/v1/complete"));
        assert!(!is_scheduled(&Method::POST, "/v1/messages/count_tokens"));
        assert!(!is_scheduled(&Method::GET, "/v1/models"));
        assert!(!is_scheduled(&Method::HEAD, "/"));
        assert!(!is_scheduled(&Method::GET, "/v1/messages"));
    }

    #[test]
    fn gzipped_error_bodies_are_read_for_classification() {
        use std::io::Write;
        let json = br#"{"type":"error","error":{"type":"rate_limit_error","message":"cap","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(json).unwrap();
        let gz = encoder.finish().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert_eq!(&*readable(&headers, &gz), &json[..]);
        assert!(matches!(
            classify_429(&headers, &readable(&headers, &gz)),
            Classified429::PassThrough(_)
        ));
        assert_eq!(&*readable(&http::HeaderMap::new(), json), &json[..]);
        assert_eq!(&*readable(&headers, b"not gzip"), b"not gzip");
    }

    #[test]
    fn model_is_read_from_the_body_or_left_empty() {
        assert_eq!(
            model_of(br#"{"max_tokens":5,"model":"claude-opus-4-1"}"#),
            "claude-opus-4-1"
        );
        assert_eq!(model_of(b"not json"), "");
        assert_eq!(model_of(br#"{"model":7}"#), "");
    }
}
