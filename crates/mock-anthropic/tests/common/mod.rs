//! A tiny HTTP/1 client over a fresh TCP connection per request, so tests see exactly what
//! the mock put on the wire (no transparent decompression, no pooling).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

pub const KEY: &str = "sk-ant-test-key";

/// An open response whose body has not been read.
pub struct Open {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Incoming,
}

pub async fn open(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Open {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let resp = sender
        .send_request(req.body(Full::new(payload)).unwrap())
        .await
        .expect("send");
    let (parts, body) = resp.into_parts();
    Open {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub struct Done {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Bytes,
}

impl Done {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).expect("JSON body")
    }
}

pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Done {
    let o = open(addr, method, path, headers, body).await;
    let bytes = o.body.collect().await.expect("body").to_bytes();
    Done {
        status: o.status,
        headers: o.headers,
        bytes,
    }
}

/// Standard headers of an API call with the test key.
pub fn api_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("x-api-key", KEY), ("anthropic-version", "2023-06-01")];
    h.extend_from_slice(extra);
    h
}

pub fn message_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello there, mock!"}],
    })
}

/// POST /v1/messages with the test key and extra headers.
pub async fn messages(addr: SocketAddr, extra: &[(&str, &str)], stream: bool) -> Done {
    send(
        addr,
        Method::POST,
        "/v1/messages",
        &api_headers(extra),
        Some(&message_body(stream)),
    )
    .await
}

/// Read body frames with their arrival time relative to `t0`.
pub async fn frames(body: &mut Incoming, t0: Instant) -> Vec<(Duration, String)> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        if let Ok(data) = frame.into_data() {
            out.push((
                t0.elapsed(),
                String::from_utf8(data.to_vec()).expect("utf-8"),
            ));
        }
    }
    out
}

pub fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

pub fn header_u64(h: &HeaderMap, name: &str) -> u64 {
    header(h, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} not an integer"))
}

/// Wait (bounded) until `cond` holds.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
