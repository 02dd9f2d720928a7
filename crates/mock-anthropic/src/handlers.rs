//! Routing and the API endpoints.

// Error replies are built at most once per request; boxing them would only add noise to
// every `?`.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::body::MockBody;
use crate::clock::{new_id, reset_epoch_secs};
use crate::config::{MockConfig, OutputMode};
use crate::limits::{
    model_family, retry_after_secs, write_count_tokens_headers, Admission, Cost, Key, Snapshot,
};
use crate::message::Plan;
use crate::records::{stats, Finish, Record, Settle};
use crate::reply::{
    accepts_gzip, caller, count_input_tokens, credential, header_str, header_u64, Ctx, Reply,
};
use crate::sse::SseStream;
use crate::state::{lock, Shared};

/// Request bodies above this get `413 request_too_large` (the real cap is 32 MB too).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Entry point for every request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<MockBody> {
    let cfg = shared.config();
    let ctx = Ctx {
        request_id: new_id("req_"),
        gzip: cfg.gzip && accepts_gzip(req.headers()),
    };
    if req.uri().path().starts_with("/_mock/") {
        return control(&shared, req, &ctx).await.into_response(None);
    }
    let headers = req.headers().clone();
    let draft = Record {
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".into(), |p| p.as_str().to_string()),
        credential: credential(&headers),
        caller: caller(&headers),
        headers,
        model: None,
        stream: false,
        status: 0,
        input_tokens: 0,
        output_tokens: 0,
        start: Instant::now(),
        end: None,
    };
    let mut fin = Finish::begin(shared.clone(), draft);
    let reply = route(&shared, &cfg, req, &ctx, &mut fin).await;
    fin.publish(reply.status.as_u16());
    reply.into_response(Some(fin))
}

async fn route(
    shared: &Shared,
    cfg: &MockConfig,
    req: Request<Incoming>,
    ctx: &Ctx,
    fin: &mut Finish,
) -> Reply {
    let result = match (req.method(), req.uri().path()) {
        (&Method::HEAD, "/" | "/api/hello") => Ok(Reply::empty(StatusCode::OK, ctx)),
        (&Method::POST, "/v1/messages") => messages(shared, cfg, req, ctx, fin).await,
        (&Method::POST, "/v1/messages/count_tokens") => {
            count_tokens(shared, cfg, req, ctx, fin).await
        }
        (&Method::GET, "/v1/models") => authorize(req.headers(), ctx).map(|_| models(ctx)),
        _ => Err(Reply::error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "Not found",
            ctx,
        )),
    };
    result.unwrap_or_else(|e| e)
}

/// Credential and API version, checked in that order like the real API.
fn authorize(headers: &HeaderMap, ctx: &Ctx) -> Result<String, Reply> {
    let Some(cred) = credential(headers) else {
        return Err(Reply::error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
            ctx,
        ));
    };
    if header_str(headers, "anthropic-version").is_none() {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
            ctx,
        ));
    }
    Ok(cred)
}

async fn read_json(req: Request<Incoming>, ctx: &Ctx) -> Result<Value, Reply> {
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err(Reply::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "Request exceeds the maximum allowed number of bytes.",
                ctx,
            ))
        }
        Err(e) => {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("could not read the request body: {e}"),
                ctx,
            ))
        }
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Reply::error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("There was an issue with your request body: {e}"),
            ctx,
        )
    })?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(bad_request("request body must be a JSON object", ctx))
    }
}

fn bad_request(message: &str, ctx: &Ctx) -> Reply {
    Reply::error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        ctx,
    )
}

async fn messages(
    shared: &Shared,
    cfg: &MockConfig,
    req: Request<Incoming>,
    ctx: &Ctx,
    fin: &mut Finish,
) -> Result<Reply, Reply> {
    let cred = authorize(req.headers(), ctx)?;
    let input_override = header_u64(req.headers(), "x-mock-input-tokens", ctx)?;
    let output_override = header_u64(req.headers(), "x-mock-output-tokens", ctx)?;
    let body = read_json(req, ctx).await?;

    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("model: Field required", ctx))?
        .to_string();
    let max_tokens = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .filter(|&m| m >= 1)
        .ok_or_else(|| bad_request("max_tokens: Field required (an integer >= 1)", ctx))?;
    if !body.get("messages").is_some_and(Value::is_array) {
        return Err(bad_request("messages: Field required", ctx));
    }
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if let Some(draft) = fin.draft() {
        draft.model = Some(model.clone());
        draft.stream = stream;
    }

    let wanted = output_override.unwrap_or(cfg.default_output_tokens);
    let plan = Plan {
        id: new_id("msg_"),
        input_tokens: input_override.unwrap_or_else(|| count_input_tokens(&body)),
        output_tokens: wanted.min(max_tokens),
        stop_reason: if wanted > max_tokens {
            "max_tokens"
        } else {
            "end_turn"
        },
        model,
    };
    let key: Key = (cred, model_family(&plan.model));
    let now = Instant::now();

    // Injected failures consume nothing, but still describe the buckets like any response.
    if cfg.spend_limit_reached {
        let snap = lock(&shared.limiter).peek(&key, cfg, now);
        let error = json!({
            "type": "rate_limit_error",
            "message": "You have reached your specified workspace API usage limits. \
                        You will regain access on the first of next month.",
            "details": {"error_code": "enforced_spend_limit_reached"},
        });
        let mut r = Reply::error_with(StatusCode::TOO_MANY_REQUESTS, error, ctx);
        decorate(&mut r, &snap, cfg, None);
        return Ok(r);
    }
    if cfg.subscription_rejected {
        let snap = lock(&shared.limiter).peek(&key, cfg, now);
        let mut r = rate_limited(ctx, "This request would exceed your account's rate limit.");
        if cfg.retry_after {
            r.set(
                "retry-after",
                &cfg.subscription_reset.as_secs().max(1).to_string(),
            );
        }
        decorate(&mut r, &snap, cfg, Some(cfg.subscription_reset));
        return Ok(r);
    }
    if shared.take_injection(|c| &mut c.fail_next_overloaded) {
        let snap = lock(&shared.limiter).peek(&key, cfg, now);
        let mut r = Reply::error(
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "overloaded_error",
            "Overloaded",
            ctx,
        );
        decorate(&mut r, &snap, cfg, None);
        return Ok(r);
    }

    let cost = Cost {
        input: plan.input_tokens,
        max_tokens,
    };
    let admission = lock(&shared.limiter).admit(&key, cost, cfg, now);
    let snap = match admission {
        Admission::Admitted(snap) => snap,
        Admission::Limited {
            snapshot,
            retry_after: Some(wait),
            what,
        } => {
            let mut r = rate_limited(
                ctx,
                &format!("This request would exceed the rate limit for your organization of {what} per minute. Please retry later."),
            );
            if cfg.retry_after {
                r.set("retry-after", &retry_after_secs(wait).to_string());
            }
            decorate(&mut r, &snapshot, cfg, Some(wait));
            return Ok(r);
        }
        Admission::Limited {
            snapshot,
            retry_after: None,
            what,
        } => {
            // Never admissible: waiting cannot help, so say so instead of giving a wait.
            let mut r = rate_limited(
                ctx,
                &format!("This request exceeds your organization's per-minute limit of {what} and can never be admitted. Reduce the prompt or max_tokens."),
            );
            r.set("x-should-retry", "false");
            decorate(&mut r, &snapshot, cfg, Some(Duration::from_secs(60)));
            return Ok(r);
        }
    };

    fin.settle = Some(Settle {
        key,
        mode: cfg.output_mode,
        reserved: if cfg.output_mode == OutputMode::Reserve {
            max_tokens
        } else {
            0
        },
    });
    if let Some(draft) = fin.draft() {
        draft.input_tokens = plan.input_tokens;
    }
    // A zero sleep still costs a timer tick (about 1 ms): skip it so benchmarks of the hop
    // in front of the mock are not swamped by the mock itself.
    if !cfg.first_byte_latency.is_zero() {
        tokio::time::sleep(cfg.first_byte_latency).await;
    }

    if stream {
        let fail_midway = shared.take_injection(|c| &mut c.fail_next_streams_midway);
        let mut r = Reply::empty(StatusCode::OK, ctx);
        r.set("content-type", "text/event-stream; charset=utf-8");
        r.set("cache-control", "no-cache");
        decorate(&mut r, &snap, cfg, None);
        r.body = MockBody::sse(SseStream::new(plan, cfg.token_interval(), fail_midway));
        Ok(r)
    } else {
        // Generation happens upstream whether or not the client waits for it.
        fin.generated = plan.output_tokens;
        let generation = cfg.generation_time(plan.output_tokens);
        if !generation.is_zero() {
            tokio::time::sleep(generation).await;
        }
        let mut r = Reply::json(StatusCode::OK, &plan.response(), ctx);
        decorate(&mut r, &snap, cfg, None);
        Ok(r)
    }
}

fn rate_limited(ctx: &Ctx, message: &str) -> Reply {
    Reply::error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        message,
        ctx,
    )
}

/// Rate-limit headers, and in subscription mode the unified family. `rejected_for` is set
/// on 429s: how long until the caller may come back.
fn decorate(r: &mut Reply, snap: &Snapshot, cfg: &MockConfig, rejected_for: Option<Duration>) {
    snap.write(&mut r.headers);
    if cfg.subscription || cfg.subscription_rejected {
        let (status, reset) = match rejected_for {
            Some(wait) => ("rejected", wait),
            None => ("allowed", cfg.subscription_reset),
        };
        r.set("anthropic-ratelimit-unified-status", status);
        r.set(
            "anthropic-ratelimit-unified-reset",
            &reset_epoch_secs(reset).to_string(),
        );
    }
}

async fn count_tokens(
    shared: &Shared,
    cfg: &MockConfig,
    req: Request<Incoming>,
    ctx: &Ctx,
    fin: &mut Finish,
) -> Result<Reply, Reply> {
    let cred = authorize(req.headers(), ctx)?;
    let input_override = header_u64(req.headers(), "x-mock-input-tokens", ctx)?;
    let body = read_json(req, ctx).await?;
    if let Some(draft) = fin.draft() {
        draft.model = body
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    let tokens = input_override.unwrap_or_else(|| count_input_tokens(&body));
    let admitted = lock(&shared.limiter).admit_count_tokens(&cred, cfg, Instant::now());
    match admitted {
        Ok(view) => {
            let mut r = Reply::json(StatusCode::OK, &json!({"input_tokens": tokens}), ctx);
            write_count_tokens_headers(&view, &mut r.headers);
            Ok(r)
        }
        Err((view, wait)) => {
            let mut r = rate_limited(
                ctx,
                "Number of count_tokens requests has exceeded your per-minute rate limit.",
            );
            if let (true, Some(wait)) = (cfg.retry_after, wait) {
                r.set("retry-after", &retry_after_secs(wait).to_string());
            }
            write_count_tokens_headers(&view, &mut r.headers);
            Ok(r)
        }
    }
}

fn models(ctx: &Ctx) -> Reply {
    let list = [
        ("claude-opus-4-5", "Claude Opus 4.5", "2025-11-24T00:00:00Z"),
        (
            "claude-sonnet-4-5",
            "Claude Sonnet 4.5",
            "2025-09-29T00:00:00Z",
        ),
        (
            "claude-haiku-4-5",
            "Claude Haiku 4.5",
            "2025-10-15T00:00:00Z",
        ),
    ];
    let data: Vec<Value> = list
        .iter()
        .map(|(id, name, created)| {
            json!({"type": "model", "id": id, "display_name": name, "created_at": created})
        })
        .collect();
    let body = json!({
        "data": data,
        "has_more": false,
        "first_id": list[0].0,
        "last_id": list[list.len() - 1].0,
    });
    Reply::json(StatusCode::OK, &body, ctx)
}

/// `/_mock/*`: stats, reset and live config for out-of-process users. Not recorded and not
/// counted as active, so polling them does not disturb what they measure.
async fn control(shared: &Shared, req: Request<Incoming>, ctx: &Ctx) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/_mock/stats") => {
            let value = serde_json::to_value(stats(shared)).unwrap_or(Value::Null);
            Reply::json(StatusCode::OK, &value, ctx)
        }
        (&Method::POST, "/_mock/reset") => {
            reset_stats(shared);
            Reply::json(StatusCode::OK, &json!({"ok": true}), ctx)
        }
        (&Method::POST, "/_mock/reset-buckets") => {
            *lock(&shared.limiter) = Default::default();
            Reply::json(StatusCode::OK, &json!({"ok": true}), ctx)
        }
        (&Method::GET, "/_mock/config") => {
            let value = serde_json::to_value(shared.config()).unwrap_or(Value::Null);
            Reply::json(StatusCode::OK, &value, ctx)
        }
        (&Method::POST, "/_mock/config") => {
            let patch = match read_json(req, ctx).await {
                Ok(p) => p,
                Err(r) => return r,
            };
            let mut cfg = lock(&shared.config);
            match cfg.merged(&patch) {
                Ok(new) => {
                    *cfg = new;
                    let value = serde_json::to_value(&*cfg).unwrap_or(Value::Null);
                    drop(cfg);
                    Reply::json(StatusCode::OK, &value, ctx)
                }
                Err(e) => bad_request(&e, ctx),
            }
        }
        _ => Reply::error(StatusCode::NOT_FOUND, "not_found_error", "Not found", ctx),
    }
}

/// Forget records and counters; the peak restarts from what is in flight now.
pub(crate) fn reset_stats(shared: &Shared) {
    lock(&shared.log).reset();
    let active = shared.active.load(std::sync::atomic::Ordering::SeqCst);
    shared
        .peak
        .store(active, std::sync::atomic::Ordering::SeqCst);
}
