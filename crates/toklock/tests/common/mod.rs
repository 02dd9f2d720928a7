//! Shared test plumbing: a mock upstream and a toklock in front of it, both on 127.0.0.1.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mock_anthropic::{MockConfig, MockServer};
use toklock::{Config, Proxy, ProxyHandle};

pub const KEY: &str = "sk-ant-test-key-0001";

pub const SONNET: &str = "claude-sonnet-4-5";
pub const OPUS: &str = "claude-opus-4-1";
pub const HAIKU: &str = "claude-haiku-4-5";

/// An upstream allowing `requests_per_minute` that starts with an empty request bucket:
/// the first request gets a 429 with a retry-after.
pub fn empty_bucket(requests_per_minute: u64) -> MockConfig {
    MockConfig {
        requests_per_minute,
        initial_fill: 0.0,
        ..MockConfig::default()
    }
}

/// A whole response: status, headers, body bytes.
pub type Reply = (StatusCode, HeaderMap, Bytes);

/// An upstream that starts empty and refills 1,000 input tokens a second; each request
/// costs 200, so about five requests a second fit.
pub fn pressured() -> MockConfig {
    MockConfig {
        input_tokens_per_minute: 60_000,
        initial_fill: 0.05,
        tokens_per_sec: 400.0,
        default_output_tokens: 16,
        ..MockConfig::default()
    }
}

pub struct Pair {
    pub mock: MockServer,
    pub proxy: ProxyHandle,
}

impl Pair {
    pub async fn start(mock: MockConfig, edit: impl FnOnce(&mut Config)) -> Pair {
        let mock = MockServer::start(mock).await.expect("mock starts");
        let proxy = start_proxy(&mock.url(), edit).await;
        Pair { mock, proxy }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.proxy.base_url(), path)
    }
}

pub async fn start_proxy(upstream: &str, edit: impl FnOnce(&mut Config)) -> ProxyHandle {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: upstream.parse().unwrap(),
        ..Config::default()
    };
    edit(&mut config);
    Proxy::bind(config).await.expect("proxy binds").spawn()
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A Messages request body with `max_tokens` and an optional stream flag.
pub fn message_body(model: &str, max_tokens: u64, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
    })
    .to_string()
}

pub fn post(url: &str, body: impl Into<Bytes>, extra: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::post(url)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", KEY)
        .body(Full::new(body.into()))
        .unwrap();
    // Extra headers replace the defaults (a test may use another API key).
    for (name, value) in extra {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    request
}

pub async fn send(client: &TestClient, request: Request<Full<Bytes>>) -> Response<Incoming> {
    tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("response within 30 s")
        .expect("request succeeds")
}

/// Reads a whole response: status, headers, body bytes.
pub async fn collect(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("body within 30 s")
        .expect("body reads")
        .to_bytes();
    (parts.status, parts.headers, bytes)
}

/// POSTs `body` to `url` (with `post`'s default headers, then `headers`) on a fresh client
/// and reads the whole response.
pub async fn call(url: &str, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Reply {
    collect(send(&client(), post(url, body, headers)).await).await
}

/// A short non-streaming Messages call (`max_tokens` 8) through the proxy.
pub async fn messages(pair: &Pair, model: &str, headers: &[(&str, &str)]) -> Reply {
    call(
        &pair.url("/v1/messages"),
        message_body(model, 8, false),
        headers,
    )
    .await
}

/// A `count_tokens` call through the proxy.
pub async fn count_tokens(pair: &Pair) -> Reply {
    let body = message_body(SONNET, 1, false);
    call(&pair.url("/v1/messages/count_tokens"), body, &[]).await
}

/// The same call as `messages` to `url`, on its own task, so it can queue while the test
/// goes on (or be aborted).
pub fn spawn_messages(
    url: String,
    model: &str,
    headers: &[(&str, &str)],
) -> tokio::task::JoinHandle<Reply> {
    let body = message_body(model, 8, false);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::spawn(async move {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        call(&url, body, &headers).await
    })
}

/// A streaming Messages request through the proxy; the body is left for the test to read.
pub async fn open_stream(pair: &Pair, max_tokens: u64) -> Response<Incoming> {
    let body = message_body(SONNET, max_tokens, true);
    send(&client(), post(&pair.url("/v1/messages"), body, &[])).await
}

/// GET `url`, as an API client would (`with_key`) or bare, and read the whole response.
pub async fn get(url: &str, with_key: bool) -> Reply {
    let mut request = Request::get(url);
    if with_key {
        request = request
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01");
    }
    let request = request.body(Default::default()).unwrap();
    collect(send(&client(), request).await).await
}

/// HEAD `url` with no headers, and read the whole response.
pub async fn head(url: &str) -> Reply {
    let request = Request::head(url).body(Default::default()).unwrap();
    collect(send(&client(), request).await).await
}

/// A header that holds a number, such as `x-toklock-queue-ms`.
pub fn header_u64(headers: &HeaderMap, name: &str) -> u64 {
    headers[name].to_str().unwrap().parse().unwrap()
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Next data frame of a streaming body, as text.
pub async fn next_frame(body: &mut Incoming) -> Option<String> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("frame within 30 s")?
            .expect("frame reads");
        if let Ok(data) = frame.into_data() {
            return Some(String::from_utf8_lossy(&data).into_owned());
        }
    }
}

/// Waits up to `limit` for `check` to hold.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Starts the `toklock` binary with `args` and returns it with the base URL from its banner.
/// `env` sets (`Some`) or removes (`None`) variables. Its stderr is drained on a thread from
/// then on, so it can never block on a full pipe. Blocking: call it from `spawn_blocking` in
/// async tests.
pub fn spawn_toklock(args: &[&str], env: &[(&str, Option<&str>)]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_toklock"));
    command
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let mut child = command.spawn().expect("toklock starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let url = lines.by_ref().map_while(Result::ok).find_map(|line| {
        line.trim()
            .strip_prefix("export ANTHROPIC_BASE_URL=")
            .map(str::to_string)
    });
    std::thread::spawn(move || lines.for_each(drop));
    match url {
        Some(url) => (child, url),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("toklock printed no banner");
        }
    }
}
