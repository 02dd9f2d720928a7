//! Forwarding: one pooled keep-alive client to the upstream, and the header hygiene of a
//! transparent reverse proxy. Bodies stream through untouched (compressed stays compressed).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::ApiError;

/// Where requests go and the client that takes them there.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: Arc<Base>,
    timeout: Duration,
}

struct Base {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// Path prefix of the upstream URL without a trailing slash ("" for none).
    prefix: String,
}

impl Upstream {
    /// Builds the pooled client. TLS uses rustls with the `ring` provider and trusts both the
    /// bundled webpki roots (bare containers) and the system store (corporate CAs;
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
    pub fn new(upstream: &Uri, timeout: Duration) -> Result<Upstream, ApiError> {
        let scheme = upstream
            .scheme()
            .cloned()
            .unwrap_or(http::uri::Scheme::HTTPS);
        let authority = upstream
            .authority()
            .cloned()
            .ok_or_else(|| ApiError::invalid_request("upstream URL has no host"))?;
        let prefix = upstream.path().trim_end_matches('/').to_string();

        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_keepalive(Some(Duration::from_secs(60)));
        http.set_connect_timeout(Some(Duration::from_secs(30)));

        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::bad_gateway(format!("TLS setup failed: {e}")))?
        .with_root_certificates(root_store())
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);

        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Upstream {
            client,
            base: Arc::new(Base {
                scheme,
                authority,
                prefix,
            }),
            timeout,
        })
    }

    /// The upstream host, for error messages (never carries credentials).
    pub fn host(&self) -> &str {
        self.base.authority.host()
    }

    /// Builds the upstream request: same method, path and query under the upstream base,
    /// hop-by-hop headers dropped, `Host` set from the upstream, everything else untouched.
    pub fn request(
        &self,
        method: &http::Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, ApiError> {
        let uri = Uri::builder()
            .scheme(self.base.scheme.clone())
            .authority(self.base.authority.clone())
            .path_and_query(format!("{}{}", self.base.prefix, path_and_query))
            .build()
            .map_err(|e| ApiError::invalid_request(format!("cannot build upstream URL: {e}")))?;
        let mut out = Request::new(Full::new(body));
        *out.method_mut() = method.clone();
        *out.uri_mut() = uri;
        let out_headers = out.headers_mut();
        copy_end_to_end(headers, out_headers);
        // The client adds Host (HTTP/1.1) or :authority (HTTP/2) from the URI; the body is
        // whole, so its length is known and set by the client.
        out_headers.remove(header::HOST);
        out_headers.remove(header::CONTENT_LENGTH);
        Ok(out)
    }

    /// Sends a request and waits for the response headers (not the body).
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ApiError> {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(mut response)) => {
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }
            Ok(Err(err)) => {
                tracing::warn!(upstream = %self.host(), error = %error_chain(&err), "upstream request failed");
                Err(ApiError::bad_gateway(format!(
                    "toklock could not reach the upstream {}: {}",
                    self.host(),
                    error_chain(&err)
                )))
            }
            Err(_) => Err(ApiError::gateway_timeout(format!(
                "the upstream {} sent no response headers within {} s",
                self.host(),
                self.timeout.as_secs()
            ))),
        }
    }
}

/// Bundled webpki roots plus whatever the system store has.
fn root_store() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(native_roots = added, "loaded system root certificates");
    roots
}

/// Flattens an error and its sources into one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Headers that describe one connection, not the message; RFC 9110 section 7.6.1.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_hop_by_hop(name: &HeaderName, named_by_connection: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || named_by_connection.contains(name)
}

/// Header names listed in `Connection`, which are hop-by-hop for this message.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let named = connection_named(from);
    for (name, value) in from {
        if !is_hop_by_hop(name, &named) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Removes hop-by-hop headers in place (used on upstream responses).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    for name in HOP_BY_HOP.iter().copied() {
        headers.remove(name);
    }
    for name in named {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Upstream {
        Upstream::new(&url.parse().unwrap(), Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn request_keeps_path_query_and_end_to_end_headers() {
        let up = upstream("https://api.example.com");
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:4000".parse().unwrap());
        headers.insert("x-api-key", "sk-test".parse().unwrap());
        headers.insert("anthropic-beta", "a,b".parse().unwrap());
        headers.insert("connection", "keep-alive, x-drop-me".parse().unwrap());
        headers.insert("x-drop-me", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("te", "trailers".parse().unwrap());
        headers.insert("proxy-authorization", "Basic x".parse().unwrap());
        headers.insert("transfer-encoding", "chunked".parse().unwrap());
        let req = up
            .request(
                &http::Method::POST,
                "/v1/messages?beta=true",
                &headers,
                Bytes::new(),
            )
            .unwrap();
        assert_eq!(
            req.uri().to_string(),
            "https://api.example.com/v1/messages?beta=true"
        );
        let h = req.headers();
        assert_eq!(h["x-api-key"], "sk-test");
        assert_eq!(h["anthropic-beta"], "a,b");
        for gone in [
            "host",
            "connection",
            "x-drop-me",
            "keep-alive",
            "te",
            "proxy-authorization",
            "transfer-encoding",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be dropped");
        }
    }

    #[test]
    fn upstream_path_prefix_is_kept() {
        let up = upstream("http://gateway.local:8080/anthropic/");
        let req = up
            .request(
                &http::Method::GET,
                "/v1/models",
                &HeaderMap::new(),
                Bytes::new(),
            )
            .unwrap();
        assert_eq!(
            req.uri().to_string(),
            "http://gateway.local:8080/anthropic/v1/models"
        );
    }
}
