//! toklock's own endpoints under the reserved `/toklock/` prefix, and the client side of
//! `toklock health`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::{full, ApiError, ProxyBody};
use crate::proxy::Shared;

/// Routes `/toklock/...`.
pub async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/toklock/health") | (&Method::HEAD, "/toklock/health") => json(
            StatusCode::OK,
            serde_json::json!({
                "status": "ok",
                "version": crate::VERSION,
                "uptime_s": shared.started.elapsed().as_secs(),
            }),
        ),
        (&Method::GET, "/toklock/status") => json(
            StatusCode::OK,
            serde_json::json!({
                "version": crate::VERSION,
                "uptime_s": shared.started.elapsed().as_secs(),
                "fair_by": shared.config.fair_by.to_string(),
                "queue": shared.queue.snapshot(),
            }),
        ),
        (&Method::GET, "/toklock/metrics") => {
            let text = shared.metrics.render(&shared.queue.snapshot());
            let mut response = Response::new(full(text));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (_, path) => ApiError::not_found(format!("toklock has no endpoint {path}")).into_response(),
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `toklock health`: GETs `/toklock/health` and returns an exit code (0 healthy, 1 not).
/// Without `url` it asks the --host/--port address, using loopback for a wildcard host.
pub async fn health_check(url: Option<&str>, listen: SocketAddr) -> i32 {
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => crate::server::base_url(listen),
    };
    let target = format!("{base}/toklock/health");
    let request = match Request::get(&target).body(Empty::<Bytes>::new()) {
        Ok(request) => request,
        Err(err) => {
            eprintln!("toklock health: bad URL {target}: {err}");
            return 1;
        }
    };
    let client = Client::builder(TokioExecutor::new()).build_http();
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    })
    .await;
    match outcome {
        Ok(Ok((status, body))) if status.is_success() => {
            println!("{}", String::from_utf8_lossy(&body));
            0
        }
        Ok(Ok((status, _))) => {
            eprintln!("toklock health: {target} answered {status}");
            1
        }
        Ok(Err(err)) => {
            eprintln!("toklock health: {target}: {err}");
            1
        }
        Err(_) => {
            eprintln!("toklock health: {target} did not answer within 5 s");
            1
        }
    }
}
