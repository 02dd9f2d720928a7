//! Building responses: JSON (optionally gzipped), the error envelope, and request parsing
//! helpers shared by the handlers.

// Error replies are built at most once per request; boxing them would only add noise to
// every `?`.
#![allow(clippy::result_large_err)]

use std::io::Write;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::MockBody;
use crate::records::Finish;

/// Per-request facts every reply needs.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub request_id: String,
    /// The client accepts gzip and the config allows it.
    pub gzip: bool,
}

/// A response before the [`Finish`] guard is attached.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: MockBody,
}

impl Reply {
    pub fn empty(status: StatusCode, ctx: &Ctx) -> Self {
        let mut r = Self {
            status,
            headers: HeaderMap::new(),
            body: MockBody::full(Bytes::new()),
        };
        r.set("request-id", &ctx.request_id);
        r
    }

    /// A JSON reply, gzipped when the context says so.
    pub fn json(status: StatusCode, value: &Value, ctx: &Ctx) -> Self {
        let mut r = Self::empty(status, ctx);
        r.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let plain = value.to_string().into_bytes();
        let bytes = match ctx.gzip.then(|| gzip(&plain)).flatten() {
            Some(zipped) => {
                r.headers
                    .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                zipped
            }
            None => plain,
        };
        r.body = MockBody::full(Bytes::from(bytes));
        r
    }

    /// The error envelope every API error uses.
    pub fn error(status: StatusCode, kind: &str, message: &str, ctx: &Ctx) -> Self {
        Self::error_with(status, json!({"type": kind, "message": message}), ctx)
    }

    /// The error envelope with a custom `error` object (e.g. with `details`).
    pub fn error_with(status: StatusCode, error: Value, ctx: &Ctx) -> Self {
        let body = json!({"type": "error", "error": error, "request_id": ctx.request_id});
        Self::json(status, &body, ctx)
    }

    /// Set a header from a string, skipping values that are not valid header text.
    pub fn set(&mut self, name: &'static str, value: &str) {
        if let Ok(v) = HeaderValue::try_from(value) {
            self.headers.insert(HeaderName::from_static(name), v);
        }
    }

    pub fn into_response(self, finish: Option<Finish>) -> Response<MockBody> {
        let body = match finish {
            Some(f) => self.body.with_finish(f),
            None => self.body,
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).ok()?;
    enc.finish().ok()
}

/// Does `accept-encoding` list gzip with a non-zero quality?
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// A header as text, if present and valid.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The credential: `x-api-key`, else the token of `authorization: Bearer <token>`.
pub(crate) fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(key) = header_str(headers, "x-api-key") {
        return Some(key.to_string());
    }
    let auth = header_str(headers, "authorization")?;
    let (scheme, token) = auth.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// The caller tag for stats: `x-mock-caller`, else `x-toklock-agent`.
pub(crate) fn caller(headers: &HeaderMap) -> Option<String> {
    header_str(headers, "x-mock-caller")
        .or_else(|| header_str(headers, "x-toklock-agent"))
        .map(str::to_string)
}

/// An optional numeric override header; a malformed value is the test author's mistake and
/// gets a 400 rather than being silently ignored.
pub(crate) fn header_u64(headers: &HeaderMap, name: &str, ctx: &Ctx) -> Result<Option<u64>, Reply> {
    match header_str(headers, name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Reply::error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("{name}: expected a non-negative integer"),
                ctx,
            )
        }),
    }
}

/// Characters of text in `system` and `messages[].content`, divided by 4 and rounded up,
/// at least 1: a deterministic stand-in for a tokenizer.
pub(crate) fn count_input_tokens(body: &Value) -> u64 {
    fn text_chars(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(blocks) => blocks
                .iter()
                .map(|b| match b {
                    Value::String(s) => s.chars().count(),
                    _ => b
                        .get("text")
                        .and_then(Value::as_str)
                        .map_or(0, |s| s.chars().count()),
                })
                .sum(),
            _ => 0,
        }
    }
    let mut chars = body.get("system").map_or(0, text_chars);
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        chars += messages
            .iter()
            .filter_map(|m| m.get("content"))
            .map(text_chars)
            .sum::<usize>();
    }
    (chars as u64).div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_count_is_quarter_of_text() {
        let body = json!({
            "system": [{"type": "text", "text": "abcd"}],
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "xyz"},
                                              {"type": "image", "source": {}}]},
            ],
        });
        assert_eq!(count_input_tokens(&body), 3); // 12 chars
        assert_eq!(count_input_tokens(&json!({})), 1);
    }

    #[test]
    fn gzip_negotiation_and_credentials() {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("br, GZIP;q=0.5"));
        assert!(accepts_gzip(&h));
        h.insert(
            ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, deflate"),
        );
        assert!(!accepts_gzip(&h));
        h.insert("authorization", HeaderValue::from_static("Bearer  tok "));
        assert_eq!(credential(&h).as_deref(), Some("tok"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(credential(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("sk-1"));
        assert_eq!(credential(&h).as_deref(), Some("sk-1"));
    }
}
