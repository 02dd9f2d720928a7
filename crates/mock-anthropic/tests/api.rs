//! End-to-end behaviour over real sockets on 127.0.0.1.

mod common;

use std::io::Read;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use http::{Method, StatusCode};
use mock_anthropic::{MockConfig, MockServer, OutputMode};
use serde_json::{json, Value};

const GROUPS: [&str; 4] = ["requests", "input-tokens", "output-tokens", "tokens"];

/// Parse `YYYY-MM-DDTHH:MM:SSZ` to epoch seconds (an independent check of the formatter).
fn parse_rfc3339(s: &str) -> i64 {
    assert_eq!(s.len(), 20, "{s}");
    assert!(s.ends_with('Z') && &s[10..11] == "T", "{s}");
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Count days by walking years and months: slow but obviously right.
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = (1970..y)
        .map(|y| if leap(y) { 366 } else { 365 })
        .sum::<i64>();
    let lens = [
        31,
        if leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days += lens[..(m - 1) as usize].iter().sum::<i64>() + d - 1;
    days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)
}

fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn assert_rate_limit_headers(h: &http::HeaderMap) {
    for g in GROUPS {
        header_u64(h, &format!("anthropic-ratelimit-{g}-limit"));
        header_u64(h, &format!("anthropic-ratelimit-{g}-remaining"));
        let reset = parse_rfc3339(header(h, &format!("anthropic-ratelimit-{g}-reset")));
        assert!(
            (reset - now_epoch()).abs() <= 120,
            "{g} reset far off: {reset}"
        );
    }
    assert!(header(h, "request-id").starts_with("req_"));
}

#[tokio::test]
async fn json_round_trip_with_headers_and_record() {
    let mock = MockServer::start(MockConfig {
        requests_per_minute: 50,
        input_tokens_per_minute: 30_000,
        output_tokens_per_minute: 8_000,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": "Be brief.",                                   // 9 chars
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there, mock!"}]}], // 18
        "some_future_field": {"x": 1},
    });
    let r = send(
        mock.addr(),
        Method::POST,
        "/v1/messages?beta=true",
        &api_headers(&[("x-mock-caller", "agent-a"), ("x-custom", "kept")]),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r.headers, "content-type"), "application/json");
    assert_rate_limit_headers(&r.headers);
    let h = &r.headers;
    assert_eq!(header_u64(h, "anthropic-ratelimit-requests-limit"), 50);
    assert_eq!(header_u64(h, "anthropic-ratelimit-requests-remaining"), 49);
    assert_eq!(
        header_u64(h, "anthropic-ratelimit-input-tokens-remaining"),
        30_000 - 7
    );
    // Reserve mode: max_tokens is held while the response is produced.
    assert_eq!(
        header_u64(h, "anthropic-ratelimit-output-tokens-remaining"),
        8_000 - 100
    );
    assert_eq!(
        header_u64(h, "anthropic-ratelimit-tokens-limit"),
        8_000,
        "tightest = output"
    );

    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(v["content"][0]["type"], "text");
    assert!(!v["content"][0]["text"].as_str().unwrap().is_empty());
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    let u = &v["usage"];
    assert_eq!(u["input_tokens"], 7); // ceil(27 / 4)
    assert_eq!(u["output_tokens"], 16);
    assert_eq!(u["cache_creation_input_tokens"], 0);
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(u["cache_creation"]["ephemeral_5m_input_tokens"], 0);
    assert_eq!(u["service_tier"], "standard");

    let recs = mock.records();
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec.path, "/v1/messages?beta=true");
    assert_eq!(rec.headers["x-custom"], "kept");
    assert_eq!(rec.credential.as_deref(), Some(KEY));
    assert_eq!(rec.caller.as_deref(), Some("agent-a"));
    assert_eq!(rec.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(
        (rec.status, rec.stream, rec.input_tokens, rec.output_tokens),
        (200, false, 7, 16)
    );
    assert!(rec.end.unwrap() >= rec.start);

    // The unused 84 of the reservation came back.
    let r = messages(mock.addr(), &[], false).await;
    assert_eq!(
        header_u64(&r.headers, "anthropic-ratelimit-output-tokens-remaining"),
        8_000 - 16 - 100
    );
}

#[tokio::test]
async fn output_length_overrides_and_max_tokens_stop() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let r = messages(
        mock.addr(),
        &[
            ("x-mock-output-tokens", "500"),
            ("x-mock-input-tokens", "42"),
        ],
        false,
    )
    .await;
    let v = r.json();
    assert_eq!(v["usage"]["output_tokens"], 100, "capped by max_tokens");
    assert_eq!(v["usage"]["input_tokens"], 42);
    assert_eq!(v["stop_reason"], "max_tokens");
    let r = messages(mock.addr(), &[("x-mock-output-tokens", "lots")], false).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sse_event_order_and_pacing() {
    let mock = MockServer::start(MockConfig {
        tokens_per_sec: 20.0,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    let mut o = open(
        mock.addr(),
        Method::POST,
        "/v1/messages",
        &api_headers(&[("x-mock-output-tokens", "10")]),
        Some(&message_body(true)),
    )
    .await;
    assert_eq!(o.status, StatusCode::OK);
    assert_eq!(
        header(&o.headers, "content-type"),
        "text/event-stream; charset=utf-8"
    );
    assert_rate_limit_headers(&o.headers);
    let frames = frames(&mut o.body, t0).await;

    let mut names = Vec::new();
    let mut text = String::new();
    for (_, f) in &frames {
        // One whole event per frame.
        assert!(f.starts_with("event: ") && f.ends_with("\n\n"), "{f:?}");
        let mut lines = f.lines();
        let name = lines
            .next()
            .unwrap()
            .trim_start_matches("event: ")
            .to_string();
        let data: Value =
            serde_json::from_str(lines.next().unwrap().trim_start_matches("data: ")).unwrap();
        assert_eq!(data["type"], name.as_str());
        match name.as_str() {
            "message_start" => {
                assert_eq!(data["message"]["usage"]["output_tokens"], 1);
                assert_eq!(data["message"]["usage"]["input_tokens"], 5);
            }
            "content_block_delta" => text += data["delta"]["text"].as_str().unwrap(),
            "message_delta" => {
                assert_eq!(data["usage"]["output_tokens"], 10);
                assert_eq!(data["delta"]["stop_reason"], "end_turn");
            }
            _ => {}
        }
        names.push(name);
    }
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(vec!["content_block_delta"; 10]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    assert!(!text.is_empty());

    // 10 tokens at 20/s: about 500 ms between the start and the end.
    let first = frames[0].0;
    let last = frames[frames.len() - 1].0;
    assert!(
        first < Duration::from_millis(250),
        "first event at {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(400),
        "stream took only {:?}",
        last - first
    );
    assert!(last < Duration::from_secs(5));

    let rec = &mock.records()[0];
    assert!(rec.stream);
    assert_eq!(rec.output_tokens, 10);
    assert!(rec.end.unwrap() - rec.start >= Duration::from_millis(400));
}

#[tokio::test]
async fn drained_bucket_gives_429_with_retry_after_then_refills() {
    // 6,000 input tokens a minute = 100 a second.
    let mock = MockServer::start(MockConfig {
        input_tokens_per_minute: 6_000,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let ok = messages(mock.addr(), &[("x-mock-input-tokens", "6000")], false).await;
    assert_eq!(ok.status, StatusCode::OK);
    let limited = messages(mock.addr(), &[("x-mock-input-tokens", "100")], false).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let v = limited.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
    let retry = header_u64(&limited.headers, "retry-after");
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert_rate_limit_headers(&limited.headers);
    assert!(
        header_u64(
            &limited.headers,
            "anthropic-ratelimit-input-tokens-remaining"
        ) < 100
    );
    assert_eq!(mock.rate_limited_count(), 1);
    assert_eq!(mock.records()[1].input_tokens, 0, "a 429 charges nothing");

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let again = messages(mock.addr(), &[("x-mock-input-tokens", "100")], false).await;
    assert_eq!(again.status, StatusCode::OK);

    // Over the limit outright: never admissible, and said so.
    let never = messages(mock.addr(), &[("x-mock-input-tokens", "6001")], false).await;
    assert_eq!(never.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&never.headers, "x-should-retry"), "false");
    assert!(never.headers.get("retry-after").is_none());
}

#[tokio::test]
async fn buckets_are_per_credential_and_family() {
    let mock = MockServer::start(MockConfig {
        requests_per_minute: 1,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let a = messages(mock.addr(), &[], false).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        messages(mock.addr(), &[], false).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Same key, other family.
    let mut haiku = message_body(false);
    haiku["model"] = json!("claude-haiku-4-5");
    let r = send(
        mock.addr(),
        Method::POST,
        "/v1/messages",
        &api_headers(&[]),
        Some(&haiku),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Other credential via Bearer, same family.
    let r = send(
        mock.addr(),
        Method::POST,
        "/v1/messages",
        &[
            ("authorization", "Bearer other"),
            ("anthropic-version", "2026-10-21"),
        ],
        Some(&message_body(false)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(mock.records()[3].credential.as_deref(), Some("other"));
}

#[tokio::test]
async fn overloaded_injection_counts_down() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    mock.update(|c| c.fail_next_overloaded = 2);
    for _ in 0..2 {
        let r = messages(mock.addr(), &[], false).await;
        assert_eq!(r.status.as_u16(), 529);
        let v = r.json();
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert_eq!(v["error"]["message"], "Overloaded");
        assert_rate_limit_headers(&r.headers);
    }
    assert_eq!(
        messages(mock.addr(), &[], false).await.status,
        StatusCode::OK
    );
    assert_eq!(mock.overloaded_count(), 2);
    assert_eq!(mock.config().fail_next_overloaded, 0);
}

#[tokio::test]
async fn midstream_error_injection() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    mock.update(|c| c.fail_next_streams_midway = 1);
    let mut o = open(
        mock.addr(),
        Method::POST,
        "/v1/messages",
        &api_headers(&[("x-mock-output-tokens", "10")]),
        Some(&message_body(true)),
    )
    .await;
    assert_eq!(o.status, StatusCode::OK);
    let frames = frames(&mut o.body, Instant::now()).await;
    let last = &frames.last().unwrap().1;
    assert!(last.starts_with("event: error\n"), "{last}");
    assert!(last.contains("overloaded_error"));
    assert_eq!(
        frames
            .iter()
            .filter(|f| f.1.contains("content_block_delta"))
            .count(),
        5
    );
    assert_eq!(mock.records()[0].output_tokens, 5);
}

#[tokio::test]
async fn spend_limit_429_shape() {
    let mock = MockServer::start(MockConfig {
        spend_limit_reached: true,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let r = messages(mock.addr(), &[], false).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.get("retry-after").is_none());
    let v = r.json();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(
        v["error"]["details"]["error_code"],
        "enforced_spend_limit_reached"
    );
    assert_rate_limit_headers(&r.headers);
    mock.update(|c| c.spend_limit_reached = false);
    assert_eq!(
        messages(mock.addr(), &[], false).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn subscription_mode_headers() {
    let mock = MockServer::start(MockConfig {
        subscription: true,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let ok = messages(mock.addr(), &[], false).await;
    assert_eq!(
        header(&ok.headers, "anthropic-ratelimit-unified-status"),
        "allowed"
    );
    mock.update(|c| c.subscription_rejected = true);
    let r = messages(mock.addr(), &[], false).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&r.headers, "anthropic-ratelimit-unified-status"),
        "rejected"
    );
    let reset = header_u64(&r.headers, "anthropic-ratelimit-unified-reset") as i64;
    assert!((reset - now_epoch() - 5 * 3600).abs() <= 2, "reset {reset}");
}

#[tokio::test]
async fn gzip_when_asked_and_enabled() {
    let mock = MockServer::start(MockConfig {
        gzip: true,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let r = messages(mock.addr(), &[("accept-encoding", "gzip, deflate")], false).await;
    assert_eq!(header(&r.headers, "content-encoding"), "gzip");
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&r.bytes[..])
        .read_to_string(&mut plain)
        .unwrap();
    let v: Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(v["type"], "message");

    let r = messages(mock.addr(), &[], false).await;
    assert!(r.headers.get("content-encoding").is_none());
    assert_eq!(r.json()["type"], "message");

    // Streams are never compressed.
    let r = messages(mock.addr(), &[("accept-encoding", "gzip")], true).await;
    assert!(r.headers.get("content-encoding").is_none());
    assert!(String::from_utf8_lossy(&r.bytes).starts_with("event: message_start"));
}

#[tokio::test]
async fn count_tokens_has_its_own_bucket() {
    let mock = MockServer::start(MockConfig {
        requests_per_minute: 5,
        count_tokens_requests_per_minute: 2,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let body = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "12345678"}]});
    for expect_remaining in [1, 0] {
        let r = send(
            mock.addr(),
            Method::POST,
            "/v1/messages/count_tokens",
            &api_headers(&[]),
            Some(&body),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json(), json!({"input_tokens": 2}));
        assert_eq!(
            header_u64(&r.headers, "anthropic-ratelimit-requests-limit"),
            2
        );
        assert_eq!(
            header_u64(&r.headers, "anthropic-ratelimit-requests-remaining"),
            expect_remaining
        );
    }
    let r = send(
        mock.addr(),
        Method::POST,
        "/v1/messages/count_tokens",
        &api_headers(&[]),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(header_u64(&r.headers, "retry-after") >= 1);

    let m = messages(mock.addr(), &[], false).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(
        header_u64(&m.headers, "anthropic-ratelimit-requests-limit"),
        5
    );
    assert_eq!(
        header_u64(&m.headers, "anthropic-ratelimit-requests-remaining"),
        4
    );
}

#[tokio::test]
async fn peak_concurrency_counts_streams_until_their_end() {
    let mock = MockServer::start(MockConfig {
        tokens_per_sec: 50.0,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut stream = open(
        mock.addr(),
        Method::POST,
        "/v1/messages",
        &api_headers(&[("x-mock-output-tokens", "20")]),
        Some(&message_body(true)),
    )
    .await;
    assert_eq!(
        mock.active(),
        1,
        "headers are out but the stream is still active"
    );
    let quick = messages(mock.addr(), &[("x-mock-output-tokens", "1")], false).await;
    assert_eq!(quick.status, StatusCode::OK);
    assert_eq!(mock.peak_concurrency(), 2);
    eventually("quick request ended", || mock.active() == 1).await;

    frames(&mut stream.body, Instant::now()).await;
    eventually("stream ended", || mock.active() == 0).await;
    assert_eq!(mock.peak_concurrency(), 2);
    mock.reset_stats();
    assert_eq!(mock.peak_concurrency(), 0);
    assert!(mock.records().is_empty());
}

#[tokio::test]
async fn client_disconnect_mid_stream_ends_record_and_refunds() {
    let mock = MockServer::start(MockConfig {
        tokens_per_sec: 20.0,
        output_tokens_per_minute: 1_000,
        output_mode: OutputMode::Reserve,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut o = open(
        mock.addr(),
        Method::POST,
        "/v1/messages",
        &api_headers(&[("x-mock-output-tokens", "100")]),
        Some(&message_body(true)),
    )
    .await;
    assert_eq!(
        header_u64(&o.headers, "anthropic-ratelimit-output-tokens-remaining"),
        900
    );
    use http_body_util::BodyExt;
    for _ in 0..5 {
        o.body.frame().await.unwrap().unwrap();
    }
    drop(o); // closes the connection
    eventually("stream dropped", || mock.active() == 0).await;
    let rec = &mock.records()[0];
    assert!(rec.end.is_some());
    assert!(rec.output_tokens < 100, "charged {}", rec.output_tokens);
    // Everything not generated came back (give or take refill).
    let r = messages(mock.addr(), &[("x-mock-output-tokens", "1")], false).await;
    let remaining = header_u64(&r.headers, "anthropic-ratelimit-output-tokens-remaining");
    assert!(remaining >= 1_000 - 100 - 10, "remaining {remaining}");
}

#[tokio::test]
async fn generated_mode_charges_what_was_produced() {
    let mock = MockServer::start(MockConfig {
        output_tokens_per_minute: 1_000,
        output_mode: OutputMode::Generated,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let r = messages(mock.addr(), &[("x-mock-output-tokens", "30")], false).await;
    assert_eq!(
        header_u64(&r.headers, "anthropic-ratelimit-output-tokens-remaining"),
        1_000
    );
    let r = messages(mock.addr(), &[], false).await;
    let remaining = header_u64(&r.headers, "anthropic-ratelimit-output-tokens-remaining");
    assert!((970..=975).contains(&remaining), "remaining {remaining}");
}

#[tokio::test]
async fn errors_and_other_endpoints() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let a = mock.addr();
    let body = message_body(false);

    let r = send(
        a,
        Method::POST,
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"]["type"], "authentication_error");

    let r = send(
        a,
        Method::POST,
        "/v1/messages",
        &[("x-api-key", KEY)],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");

    let o = open(a, Method::POST, "/v1/messages", &api_headers(&[]), None).await;
    assert_eq!(o.status, StatusCode::BAD_REQUEST, "empty body is bad JSON");

    let r = send(
        a,
        Method::POST,
        "/v1/messages",
        &api_headers(&[]),
        Some(&json!({"model": "m"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let r = send(a, Method::GET, "/v1/nope", &api_headers(&[]), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));

    for path in ["/", "/api/hello"] {
        let r = send(a, Method::HEAD, path, &[], None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.bytes.is_empty());
    }

    let r = send(a, Method::GET, "/v1/models", &api_headers(&[]), None).await;
    let v = r.json();
    assert_eq!(v["data"][0]["type"], "model");
    assert!(v["data"][0]["display_name"].is_string());
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], v["data"][0]["id"]);
}

#[tokio::test]
async fn control_endpoints_for_out_of_process_users() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let a = mock.addr();
    messages(
        a,
        &[("x-mock-caller", "alpha"), ("x-mock-input-tokens", "10")],
        false,
    )
    .await;
    messages(a, &[("x-toklock-agent", "beta")], true).await;

    let s = send(a, Method::GET, "/_mock/stats", &[], None).await.json();
    assert_eq!(s["total"]["requests"], 2);
    assert_eq!(s["by_caller"]["alpha"]["input_tokens"], 10);
    assert_eq!(s["by_caller"]["beta"]["output_tokens"], 16);
    assert_eq!(s["by_credential"][KEY]["requests"], 2);
    assert!(s["peak_concurrency"].as_u64().unwrap() >= 1);

    let c = send(
        a,
        Method::POST,
        "/_mock/config",
        &[],
        Some(&json!({"fail_next_overloaded": 1})),
    )
    .await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(messages(a, &[], false).await.status.as_u16(), 529);
    let bad = send(
        a,
        Method::POST,
        "/_mock/config",
        &[],
        Some(&json!({"nonsense": 1})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    send(a, Method::POST, "/_mock/reset", &[], None).await;
    let s = send(a, Method::GET, "/_mock/stats", &[], None).await.json();
    assert_eq!(s["total"]["requests"], 0);
    assert!(mock.records().is_empty(), "control calls are not recorded");
}

#[tokio::test]
async fn latency_delays_the_headers() {
    let mock = MockServer::start(MockConfig {
        first_byte_latency: Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    let r = messages(mock.addr(), &[], false).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let addr = mock.addr();
    mock.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn records_are_capped_but_stats_keep_counting() {
    let mock = MockServer::start(MockConfig {
        max_records: 2,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    for _ in 0..3 {
        messages(mock.addr(), &[("x-mock-caller", "c")], false).await;
    }
    eventually("all ended", || mock.active() == 0).await;
    assert_eq!(mock.records().len(), 2);
    let s = mock.stats();
    assert_eq!(s.total.requests, 3);
    assert_eq!(s.records_not_kept, 1);
    assert_eq!(s.by_caller["c"].output_tokens, 3 * 16);
}
