//! An HTTPS upstream on loopback with a certificate that only `SSL_CERT_FILE` vouches for:
//! toklock must trust the system store (corporate CAs), negotiate HTTP/2 by ALPN, and answer
//! a clear 502 when the certificate is not trusted.

mod common;

use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// Serves HTTPS on 127.0.0.1 with a self-signed certificate for `localhost`; every answer
/// says which HTTP version it was asked in. Returns the port and the certificate's PEM.
async fn https_upstream() -> (u16, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert = certified.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = format!(
                        "{{\"data\":[],\"has_more\":false,\"path\":\"{}\"}}",
                        req.uri().path()
                    );
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        "x-seen-version",
                        format!("{:?}", req.version()).parse().unwrap(),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, cert_pem)
}

fn start_toklock(upstream: &str, cert_file: Option<&std::path::Path>) -> (Child, String) {
    let cert_file = cert_file.map(|path| path.to_string_lossy().into_owned());
    common::spawn_toklock(
        &["--port", "0", "--log", "warn", "--upstream", upstream],
        &[
            ("SSL_CERT_FILE", cert_file.as_deref()),
            ("SSL_CERT_DIR", None),
        ],
    )
}

async fn get(url: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = Request::get(url)
        .header("x-api-key", "sk-ant-tls-test-key")
        .body(Full::default())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("answer within 20 s")
        .unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn https_upstream_trusted_through_ssl_cert_file_speaks_h2() {
    let (port, pem) = https_upstream().await;
    let dir = std::env::temp_dir().join(format!("toklock-tls-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_file = dir.join("ca.pem");
    std::fs::write(&cert_file, pem).unwrap();
    let upstream = format!("https://localhost:{port}");

    let (mut trusted, url) = start_toklock(&upstream, Some(&cert_file));
    let (status, headers, body) = get(&format!("{url}/v1/models")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        headers["x-seen-version"], "HTTP/2.0",
        "ALPN should pick HTTP/2"
    );
    let _ = trusted.kill();
    let _ = trusted.wait();

    // Without the certificate in its store, the same upstream is a clear 502.
    let (mut untrusted, url) = start_toklock(&upstream, None);
    let (status, _, body) = get(&format!("{url}/v1/models")).await;
    let _ = untrusted.kill();
    let _ = untrusted.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "api_error");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("localhost"), "{message}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    assert!(!message.contains("sk-ant-tls-test-key"));
}
