//! The forwarder end to end: real sockets, toklock in front of mock-anthropic.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use mock_anthropic::MockConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn json_round_trip_keeps_status_headers_and_body() {
    let pair = Pair::start(MockConfig::default(), |_| {}).await;
    let body = message_body(SONNET, 32, false);
    let (status, headers, body) = call(&pair.url("/v1/messages"), body, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let message = json(&body);
    assert_eq!(message["type"], "message");
    assert!(message["usage"]["output_tokens"].as_u64().unwrap() > 0);
    for name in [
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
        "request-id",
    ] {
        assert!(
            headers.contains_key(name),
            "{name} missing from the response"
        );
    }
}

#[tokio::test]
async fn sse_frames_are_not_buffered() {
    // 40 tokens at 20 tokens/s: the upstream takes about two seconds to finish.
    let mock = MockConfig {
        tokens_per_sec: 20.0,
        default_output_tokens: 40,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    let started = Instant::now();
    let response = open_stream(&pair, 40).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.into_body();
    let first = next_frame(&mut body).await.expect("a first frame");
    assert!(first.contains("message_start"), "first frame: {first}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "first event took {:?}",
        started.elapsed()
    );
    assert_eq!(
        pair.mock.active(),
        1,
        "the upstream should still be generating"
    );

    let mut text = first;
    while let Some(frame) = next_frame(&mut body).await {
        text.push_str(&frame);
    }
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(events.last(), Some(&"message_stop"));
    assert!(events.contains(&"message_delta"));
    assert!(
        events
            .iter()
            .filter(|e| **e == "content_block_delta")
            .count()
            > 1
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_the_rest_pass_untouched() {
    let pair = Pair::start(MockConfig::default(), |_| {}).await;
    let body = message_body(SONNET, 8, false);
    let request = format!(
        "POST /v1/messages?beta=true HTTP/1.1\r\n\
         Host: toklock.local\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: keep-alive, X-Drop-Me\r\n\
         X-Drop-Me: 1\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         x-api-key: {KEY}\r\n\
         authorization: Bearer also-passed\r\n\
         anthropic-version: 2023-06-01\r\n\
         anthropic-beta: claude-code-20250219,interleaved-thinking-2025-05-14\r\n\
         x-claude-code-session-id: 3f2a\r\n\
         x-stainless-lang: js\r\n\
         x-app: cli\r\n\
         \r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(pair.proxy.local_addr())
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 16];
    stream.read_exact(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));

    let records = pair.mock.records();
    let record = records
        .iter()
        .find(|r| r.path.starts_with("/v1/messages"))
        .expect("request reached the mock");
    assert_eq!(record.path, "/v1/messages?beta=true");
    let h = &record.headers;
    for gone in ["x-drop-me", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            !h.contains_key(gone),
            "{gone} should not reach the upstream"
        );
    }
    assert_eq!(h["host"], pair.mock.addr().to_string().as_str());
    assert_eq!(h["x-api-key"], KEY);
    assert_eq!(h["authorization"], "Bearer also-passed");
    assert_eq!(h["anthropic-version"], "2023-06-01");
    assert_eq!(
        h["anthropic-beta"],
        "claude-code-20250219,interleaved-thinking-2025-05-14"
    );
    assert_eq!(h["x-claude-code-session-id"], "3f2a");
    assert_eq!(h["x-stainless-lang"], "js");
    assert_eq!(h["x-app"], "cli");
}

#[tokio::test]
async fn compressed_bodies_pass_unchanged() {
    let mock = MockConfig {
        gzip: true,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    let (url, body) = (pair.url("/v1/messages"), message_body(SONNET, 16, false));
    let (status, headers, body) = call(&url, body, &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(
        &body[..2],
        &[0x1f, 0x8b],
        "the body should still be gzip on the wire"
    );
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(json(plain.as_bytes())["type"], "message");
}

#[tokio::test]
async fn head_probe_models_and_count_tokens_pass_through() {
    let pair = Pair::start(MockConfig::default(), |_| {}).await;
    let (status, _, body) = head(&pair.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());

    let (status, _, body) = get(&pair.url("/v1/models"), true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(json(&body)["data"]
        .as_array()
        .is_some_and(|d| !d.is_empty()));

    let (status, _, body) = count_tokens(&pair).await;
    assert_eq!(status, StatusCode::OK);
    assert!(json(&body)["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn oversized_bodies_get_413_and_never_reach_the_upstream() {
    let pair = Pair::start(MockConfig::default(), |c| c.max_body = 1000).await;
    let big = format!(
        "{{\"model\":\"{SONNET}\",\"pad\":\"{}\"}}",
        "x".repeat(5000)
    );
    let (status, _, body) = call(&pair.url("/v1/messages"), big.clone(), &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let error = json(&body);
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "request_too_large");

    // Chunked, with no Content-Length to check up front: the limit still holds.
    let mut stream = tokio::net::TcpStream::connect(pair.proxy.local_addr())
        .await
        .unwrap();
    let head = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n0\r\n\r\n", big.len(), big);
    let _ = stream.write_all(chunk.as_bytes()).await;
    let mut reply = vec![0u8; 12];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"HTTP/1.1 413");
    assert!(
        pair.mock.records().is_empty(),
        "nothing may reach the upstream"
    );
}

#[tokio::test]
async fn dead_upstream_is_502_naming_the_host_not_the_key() {
    let proxy = start_proxy("http://127.0.0.1:1", |_| {}).await;
    let url = format!("{}/v1/messages", proxy.base_url());
    let (status, _, body) = call(&url, message_body(SONNET, 8, false), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let error = json(&body);
    assert_eq!(error["error"]["type"], "api_error");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("127.0.0.1"), "{message}");
    assert!(!message.contains(KEY));
}

#[tokio::test]
async fn silent_upstream_is_504() {
    let mock = MockConfig {
        first_byte_latency: Duration::from_secs(5),
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |c| c.upstream_timeout = Duration::from_millis(300)).await;
    let (status, _, body) = messages(&pair, SONNET, &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json(&body)["error"]["type"], "timeout_error");
}

#[tokio::test]
async fn client_going_away_mid_stream_drops_the_upstream_request() {
    let mock = MockConfig {
        tokens_per_sec: 10.0,
        default_output_tokens: 100,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |_| {}).await;
    let response = open_stream(&pair, 100).await;
    let mut body = response.into_body();
    next_frame(&mut body).await.expect("first frame");
    assert_eq!(pair.mock.active(), 1);
    drop(body);
    assert!(
        eventually(Duration::from_secs(5), || pair.mock.active() == 0).await,
        "the upstream stream should end when the client leaves"
    );
    let record = pair.mock.records().into_iter().find(|r| r.stream).unwrap();
    assert!(record.end.is_some());
    assert!(
        record.output_tokens < 100,
        "generation should stop early, got {}",
        record.output_tokens
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_open_stream() {
    let mock = MockConfig {
        tokens_per_sec: 20.0,
        default_output_tokens: 30,
        ..MockConfig::default()
    };
    let pair = Pair::start(mock, |c| c.shutdown_grace = Duration::from_secs(20)).await;
    let response = open_stream(&pair, 30).await;
    let mut body = response.into_body();
    next_frame(&mut body).await.expect("first frame");

    pair.proxy.shutdown();
    // New connections are refused once the listener is gone.
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            pair.proxy.local_addr()
        )
        .is_err())
        .await,
        "the listener should close on shutdown"
    );
    assert!(
        !pair.proxy.is_closed(),
        "an open stream keeps the proxy draining"
    );
    let mut rest = String::new();
    while let Some(frame) = next_frame(&mut body).await {
        rest.push_str(&frame);
    }
    assert!(
        rest.contains("message_stop"),
        "the stream should finish: {rest}"
    );
    tokio::time::timeout(Duration::from_secs(10), pair.proxy.closed())
        .await
        .expect("closed after the drain");
}

#[tokio::test]
async fn health_endpoint_and_reserved_prefix() {
    let pair = Pair::start(MockConfig::default(), |_| {}).await;
    let (status, _, body) = get(&pair.url("/toklock/health"), false).await;
    assert_eq!(status, StatusCode::OK);
    let health = json(&body);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], toklock::VERSION);
    let (status, _, body) = get(&pair.url("/toklock/nope"), false).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"]["type"], "not_found_error");
    assert!(pair.mock.records().is_empty(), "/toklock/ is never proxied");
}
