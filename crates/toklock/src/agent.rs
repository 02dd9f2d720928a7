//! Who is an agent: the key that fair queueing is keyed on.
//!
//! A TCP connection is not an agent (SDKs open one per concurrent request) and, locally, neither
//! is an IP address. [`identify`] picks the best name available under the configured
//! [`FairBy`] mode. Keys carry their source as a prefix so that sources never collide:
//!
//! | key                   | source                                                        |
//! |-----------------------|---------------------------------------------------------------|
//! | `name:NAME`           | `x-toklock-agent` header, or the `/a/NAME` path prefix          |
//! | `session:ID`          | Claude Code's `x-claude-code-session-id`                       |
//! | `pid:PID@START`       | the client process on this machine (start time in clock ticks) |
//! | `conn:N`              | the TCP connection (the server's connection counter)           |
//! | `ip:ADDR`             | the client IP address (IPv4-mapped IPv6 shown as IPv4)         |
//! | `key:HEX12`           | fingerprint of `x-api-key` / `authorization`                   |
//! | `header:VALUE`        | `header:NAME` mode; VALUE is a fingerprint for secret headers  |
//!
//! Names are printable ASCII, at most [`MAX_NAME_LEN`] characters, and injective: bytes outside
//! `!`..`~` (and `%`, `~`) are percent-encoded, and an over-long name is cut and suffixed with
//! `~` and a hash of the whole name.
//!
//! The path prefix is stripped by the server in every mode (so a base URL keeps working when
//! the mode changes) but only names the agent in `auto` mode: `header:NAME` and the others mean
//! the operator chose a different identity on purpose.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Uri};
use tokio::sync::watch;

use crate::credential::Fingerprint;
use crate::peer::{self, ProcessId};

/// Header an agent can name itself with, e.g. `ANTHROPIC_CUSTOM_HEADERS="x-toklock-agent: NAME"`.
pub const AGENT_HEADER: &str = "x-toklock-agent";

/// Sent by Claude Code on every request; subagents share their parent's session.
pub const SESSION_HEADER: &str = "x-claude-code-session-id";

/// Longest name kept in a key (after its source prefix); longer names are cut and hashed.
pub const MAX_NAME_LEN: usize = 64;

/// How long [`identify`] waits for a connection's process lookup before falling back to the
/// connection. The lookup starts at accept and normally ends before the body has been read.
pub const PROCESS_LOOKUP_WAIT: Duration = Duration::from_millis(250);

/// The name of one agent's queue. Never contains a secret.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentKey(Arc<str>);

impl AgentKey {
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        AgentKey(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the key came from: the part before the first `:` (`name`, `session`, `pid`, ...).
    pub fn source(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |(source, _)| source)
    }

    fn from_parts(source: &str, value: impl fmt::Display) -> Self {
        AgentKey(format!("{source}:{value}").into())
    }
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `--fair-by` (`TOKLOCK_FAIR_BY`) keys the fair queues on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FairBy {
    /// A name the agent gives itself, else the Claude Code session, else the client process,
    /// else the connection.
    #[default]
    Auto,
    /// One queue per TCP connection (the original toklock's behaviour).
    Connection,
    /// One queue per client process on this machine, else per connection.
    Process,
    /// One queue per client IP address.
    Ip,
    /// One queue per credential (by fingerprint), else per connection.
    ApiKey,
    /// One queue per value of this request header, else per connection.
    Header(HeaderName),
}

impl FairBy {
    /// Whether connections should start the `/proc` lookup when accepted.
    pub fn needs_process_lookup(&self) -> bool {
        matches!(self, FairBy::Auto | FairBy::Process)
    }
}

/// A `--fair-by` value that is not one of the modes; the message lists the valid ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseFairByError(String);

impl fmt::Display for ParseFairByError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseFairByError {}

const FAIR_BY_VALUES: &str = "auto, connection, process, ip, api-key, header:NAME";

impl FromStr for FairBy {
    type Err = ParseFairByError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        let mode = match lower.as_str() {
            "auto" => FairBy::Auto,
            "connection" => FairBy::Connection,
            "process" => FairBy::Process,
            "ip" => FairBy::Ip,
            "api-key" => FairBy::ApiKey,
            _ => match lower.strip_prefix("header:") {
                Some(name) => match HeaderName::from_bytes(name.trim().as_bytes()) {
                    Ok(name) => FairBy::Header(name),
                    Err(_) => {
                        return Err(ParseFairByError(format!(
                            "invalid header name in `{text}`: expected header:NAME with NAME \
                             an HTTP header name, e.g. header:x-team"
                        )))
                    }
                },
                None => {
                    return Err(ParseFairByError(format!(
                        "unknown fair-by mode `{text}`: expected one of {FAIR_BY_VALUES}"
                    )))
                }
            },
        };
        Ok(mode)
    }
}

impl fmt::Display for FairBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FairBy::Auto => f.write_str("auto"),
            FairBy::Connection => f.write_str("connection"),
            FairBy::Process => f.write_str("process"),
            FairBy::Ip => f.write_str("ip"),
            FairBy::ApiKey => f.write_str("api-key"),
            FairBy::Header(name) => write!(f, "header:{name}"),
        }
    }
}

/// Turns a name an agent chose into something safe for logs, metrics and keys: printable,
/// bounded, and still distinct from every other name. `None` when empty (after trimming
/// whitespace) or when it holds control characters, so the caller falls through to the next
/// source.
pub fn sanitize_name(raw: &[u8]) -> Option<String> {
    let raw = raw.trim_ascii();
    if raw.is_empty() || raw.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return None;
    }
    let mut out = String::with_capacity(raw.len().min(MAX_NAME_LEN));
    for &byte in raw {
        if byte.is_ascii_graphic() && byte != b'%' && byte != b'~' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.len() > MAX_NAME_LEN {
        // Cut on a char boundary (all ASCII here) and keep names distinct with a hash; `~` is
        // never otherwise left unescaped, so a cut name cannot equal a short one.
        let hash = Fingerprint::of_bytes(raw).to_string();
        out.truncate(MAX_NAME_LEN - hash.len() - 1);
        out.push('~');
        out.push_str(&hash);
    }
    Some(out)
}

/// Headers whose values are credentials: never put them in a key, only their fingerprint.
fn is_secret_header(name: &HeaderName) -> bool {
    const HINTS: [&str; 7] = [
        "auth",
        "key",
        "token",
        "secret",
        "password",
        "cookie",
        "credential",
    ];
    let name = name.as_str();
    HINTS.iter().any(|hint| name.contains(hint))
}

/// Splits an `/a/NAME` prefix off a request path: `/a/NAME/v1/messages?beta=true` gives
/// `("NAME", /v1/messages?beta=true)`, `/a/NAME` gives `("NAME", /)`. The name is
/// percent-decoded (lossily to UTF-8) but not sanitized; an empty name is still stripped and
/// then falls through in [`identify`]. Scheme and authority, if the URI had them, are kept.
pub fn strip_agent_prefix(uri: &Uri) -> Option<(String, Uri)> {
    let rest = uri.path().strip_prefix("/a/")?;
    let (name, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    let rewritten = Uri::from_parts(parts).ok()?;
    Some((percent_decode(name), rewritten))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One accepted connection, as agent identification sees it. Created by the server per
/// connection and shared by its requests; cheap to clone. The client process, when wanted, is
/// looked up once on the blocking pool and cached here.
#[derive(Clone)]
pub struct ConnectionInfo(Arc<ConnectionInner>);

struct ConnectionInner {
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    lookup_started: AtomicBool,
    process: watch::Sender<Lookup>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    Pending,
    Done(Option<ProcessId>),
}

impl ConnectionInfo {
    /// `id` is unique per connection for the proxy's lifetime; `peer` and `local` are the
    /// accepted socket's remote and local addresses.
    pub fn new(id: u64, peer: SocketAddr, local: SocketAddr) -> Self {
        ConnectionInfo(Arc::new(ConnectionInner {
            id,
            peer,
            local,
            lookup_started: AtomicBool::new(false),
            process: watch::Sender::new(Lookup::Pending),
        }))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    pub fn local(&self) -> SocketAddr {
        self.0.local
    }

    /// Starts finding the client process on the blocking pool, at most once per connection.
    /// Call it right after accept (when [`FairBy::needs_process_lookup`]) so the answer is
    /// ready by the time a request body has been read. Needs a tokio runtime; without one the
    /// lookup is recorded as failed.
    pub fn start_process_lookup(&self) {
        if self.0.lookup_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.0.process.send_replace(Lookup::Done(None));
            return;
        };
        let inner = Arc::clone(&self.0);
        runtime.spawn_blocking(move || {
            let found = peer::socket_owner(inner.peer, inner.local);
            tracing::debug!(conn = inner.id, peer = %inner.peer, process = ?found, "client process");
            inner.process.send_replace(Lookup::Done(found));
        });
    }

    /// The client process if the lookup has already finished and found one; never waits.
    pub fn process_now(&self) -> Option<ProcessId> {
        match *self.0.process.borrow() {
            Lookup::Done(found) => found,
            Lookup::Pending => None,
        }
    }

    /// The client process, starting the lookup if needed and waiting at most `bound` for it.
    pub async fn process(&self, bound: Duration) -> Option<ProcessId> {
        self.start_process_lookup();
        let mut done = self.0.process.subscribe();
        let waited =
            tokio::time::timeout(bound, done.wait_for(|l| matches!(l, Lookup::Done(_)))).await;
        match waited {
            Ok(Ok(lookup)) => match *lookup {
                Lookup::Done(found) => found,
                Lookup::Pending => None,
            },
            _ => None,
        }
    }

    fn key(&self) -> AgentKey {
        AgentKey::from_parts("conn", self.0.id)
    }

    #[cfg(test)]
    fn with_process(self, found: Option<ProcessId>) -> Self {
        self.0.lookup_started.store(true, Ordering::Release);
        self.0.process.send_replace(Lookup::Done(found));
        self
    }
}

impl fmt::Debug for ConnectionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionInfo")
            .field("id", &self.0.id)
            .field("peer", &self.0.peer)
            .field("local", &self.0.local)
            .field("process", &*self.0.process.borrow())
            .finish()
    }
}

/// The queue a request belongs to. Called once per scheduled request, after its body has been
/// read; `path_name` is the name from [`strip_agent_prefix`], if the path had one. Waits at
/// most [`PROCESS_LOOKUP_WAIT`] for the connection's process lookup, then falls back to the
/// connection. In `auto` mode the order is: `x-toklock-agent`, path prefix (both `name:`),
/// Claude Code session, client process, connection.
pub async fn identify(
    fair_by: &FairBy,
    headers: &HeaderMap,
    path_name: Option<&str>,
    conn: &ConnectionInfo,
) -> AgentKey {
    let header_name = |name: &str| {
        headers
            .get(name)
            .and_then(|value| sanitize_name(value.as_bytes()))
    };
    let chosen = match fair_by {
        FairBy::Auto => {
            let named = header_name(AGENT_HEADER)
                .or_else(|| path_name.and_then(|name| sanitize_name(name.as_bytes())));
            if let Some(name) = named {
                return AgentKey::from_parts("name", name);
            }
            if let Some(session) = header_name(SESSION_HEADER) {
                return AgentKey::from_parts("session", session);
            }
            process_key(conn).await
        }
        FairBy::Connection => None,
        FairBy::Process => process_key(conn).await,
        FairBy::Ip => Some(AgentKey::from_parts(
            "ip",
            peer::canonical_ip(conn.peer().ip()),
        )),
        FairBy::ApiKey => {
            let has_credential = headers.contains_key("x-api-key")
                || headers.contains_key(http::header::AUTHORIZATION);
            has_credential.then(|| AgentKey::from_parts("key", Fingerprint::of_request(headers)))
        }
        FairBy::Header(name) => headers.get(name).and_then(|value| {
            if is_secret_header(name) {
                let value = value.as_bytes().trim_ascii();
                (!value.is_empty())
                    .then(|| AgentKey::from_parts("header", Fingerprint::of_bytes(value)))
            } else {
                sanitize_name(value.as_bytes()).map(|v| AgentKey::from_parts("header", v))
            }
        }),
    };
    chosen.unwrap_or_else(|| conn.key())
}

async fn process_key(conn: &ConnectionInfo) -> Option<AgentKey> {
    let found = conn.process(PROCESS_LOOKUP_WAIT).await?;
    Some(AgentKey::from_parts("pid", found))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    /// A connection from somewhere no process lookup can succeed.
    fn remote_conn(id: u64) -> ConnectionInfo {
        ConnectionInfo::new(
            id,
            "203.0.113.7:50000".parse().unwrap(),
            "192.0.2.1:4000".parse().unwrap(),
        )
    }

    const SOME_PROCESS: ProcessId = ProcessId {
        pid: 4242,
        start_time: 99,
    };

    #[test]
    fn parses_and_displays_every_mode() {
        for text in [
            "auto",
            "connection",
            "process",
            "ip",
            "api-key",
            "header:x-team",
        ] {
            let mode: FairBy = text.parse().unwrap();
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!(" Auto ".parse::<FairBy>().unwrap(), FairBy::Auto);
        assert_eq!(
            "header:X-Team".parse::<FairBy>().unwrap(),
            FairBy::Header(HeaderName::from_static("x-team"))
        );
        assert_eq!(FairBy::default(), FairBy::Auto);
    }

    #[test]
    fn bad_modes_list_the_valid_ones() {
        let err = "socket".parse::<FairBy>().unwrap_err().to_string();
        assert!(err.contains("`socket`"), "{err}");
        for valid in [
            "auto",
            "connection",
            "process",
            "ip",
            "api-key",
            "header:NAME",
        ] {
            assert!(err.contains(valid), "{err}");
        }
        assert!("header:".parse::<FairBy>().is_err());
        assert!("header:bad name".parse::<FairBy>().is_err());
        assert!("".parse::<FairBy>().is_err());
    }

    #[test]
    fn works_as_a_clap_value_parser() {
        use clap::Parser;
        #[derive(Parser)]
        struct Args {
            #[arg(long, default_value = "auto")]
            fair_by: FairBy,
        }
        let args = Args::try_parse_from(["t", "--fair-by", "header:x-team"]).unwrap();
        assert_eq!(args.fair_by.to_string(), "header:x-team");
        assert_eq!(Args::try_parse_from(["t"]).unwrap().fair_by, FairBy::Auto);
        let err = Args::try_parse_from(["t", "--fair-by", "tcp"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("api-key"), "{err}");
    }

    #[test]
    fn only_auto_and_process_look_up_processes() {
        assert!(FairBy::Auto.needs_process_lookup());
        assert!(FairBy::Process.needs_process_lookup());
        assert!(!FairBy::Connection.needs_process_lookup());
        assert!(!FairBy::Ip.needs_process_lookup());
    }

    #[test]
    fn strips_the_prefix_and_keeps_the_query() {
        let uri: Uri = "/a/alice/v1/messages?beta=true".parse().unwrap();
        let (name, rest) = strip_agent_prefix(&uri).unwrap();
        assert_eq!(name, "alice");
        assert_eq!(rest, "/v1/messages?beta=true");

        let uri: Uri = "/a/bob".parse().unwrap();
        let (name, rest) = strip_agent_prefix(&uri).unwrap();
        assert_eq!((name.as_str(), rest.to_string().as_str()), ("bob", "/"));

        let uri: Uri = "/a/bob?x=1".parse().unwrap();
        assert_eq!(strip_agent_prefix(&uri).unwrap().1, "/?x=1");

        let uri: Uri = "/a/bob/".parse().unwrap();
        assert_eq!(strip_agent_prefix(&uri).unwrap().1, "/");
    }

    #[test]
    fn keeps_scheme_and_authority_of_absolute_uris() {
        let uri: Uri = "http://127.0.0.1:4000/a/x/v1/models".parse().unwrap();
        let (_, rest) = strip_agent_prefix(&uri).unwrap();
        assert_eq!(rest, "http://127.0.0.1:4000/v1/models");
    }

    #[test]
    fn leaves_other_paths_alone() {
        for path in [
            "/",
            "/a",
            "/api/hello",
            "/v1/messages",
            "/ab/x/v1",
            "/x/a/y",
        ] {
            let uri: Uri = path.parse().unwrap();
            assert_eq!(strip_agent_prefix(&uri), None, "{path}");
        }
    }

    #[test]
    fn odd_prefix_names_are_decoded_then_fall_through_when_bad() {
        let uri: Uri = "/a//v1/messages".parse().unwrap();
        let (name, rest) = strip_agent_prefix(&uri).unwrap();
        assert_eq!(
            (name.as_str(), rest.to_string().as_str()),
            ("", "/v1/messages")
        );
        assert_eq!(sanitize_name(name.as_bytes()), None);

        let uri: Uri = "/a/al%20ice/v1/messages".parse().unwrap();
        let (name, _) = strip_agent_prefix(&uri).unwrap();
        assert_eq!(name, "al ice");
        assert_eq!(sanitize_name(name.as_bytes()).unwrap(), "al%20ice");

        let uri: Uri = "/a/%0A/v1/messages".parse().unwrap();
        let (name, _) = strip_agent_prefix(&uri).unwrap();
        assert_eq!(sanitize_name(name.as_bytes()), None);

        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("a%zzb%4"), "a%zzb%4");
        assert_eq!(percent_decode("%41%62"), "Ab");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }

    #[test]
    fn sanitizing_is_printable_bounded_and_distinct() {
        assert_eq!(sanitize_name(b"alice").unwrap(), "alice");
        assert_eq!(sanitize_name(b"  alice\t").unwrap(), "alice");
        assert_eq!(sanitize_name(b""), None);
        assert_eq!(sanitize_name(b"   "), None);
        assert_eq!(sanitize_name(b"a\x00b"), None);
        assert_eq!(sanitize_name(b"a\nb"), None);
        assert_eq!(
            sanitize_name("agent é".as_bytes()).unwrap(),
            "agent%20%C3%A9"
        );
        assert_eq!(sanitize_name(b"\xff").unwrap(), "%FF");
        // `%` and `~` are escaped, so an escape or a cut mark never appears by accident.
        assert_eq!(sanitize_name(b"a%20b").unwrap(), "a%2520b");
        assert_eq!(sanitize_name(b"a~b").unwrap(), "a%7Eb");

        let long_a = "x".repeat(200) + "a";
        let long_b = "x".repeat(200) + "b";
        let (a, b) = (
            sanitize_name(long_a.as_bytes()).unwrap(),
            sanitize_name(long_b.as_bytes()).unwrap(),
        );
        assert_eq!(a.len(), MAX_NAME_LEN);
        assert_ne!(a, b);
        assert!(a.contains('~'));
        let exact = "y".repeat(MAX_NAME_LEN);
        assert_eq!(sanitize_name(exact.as_bytes()).unwrap(), exact);
        for name in [a, b] {
            assert!(name.bytes().all(|b| b.is_ascii_graphic()));
        }
    }

    #[tokio::test]
    async fn auto_prefers_header_then_path_then_session_then_process_then_connection() {
        let all = headers(&[(AGENT_HEADER, "alice"), (SESSION_HEADER, "s-1")]);
        let conn = remote_conn(7).with_process(Some(SOME_PROCESS));
        let auto = FairBy::Auto;

        let key = identify(&auto, &all, Some("bob"), &conn).await;
        assert_eq!(key.as_str(), "name:alice");
        assert_eq!(key.source(), "name");

        let no_header = headers(&[(SESSION_HEADER, "s-1")]);
        let key = identify(&auto, &no_header, Some("bob"), &conn).await;
        assert_eq!(key.as_str(), "name:bob");

        let key = identify(&auto, &no_header, None, &conn).await;
        assert_eq!(key.as_str(), "session:s-1");

        let key = identify(&auto, &HeaderMap::new(), None, &conn).await;
        assert_eq!(key.as_str(), "pid:4242@99");

        let key = identify(&auto, &HeaderMap::new(), None, &remote_conn(8)).await;
        assert_eq!(key.as_str(), "conn:8");
    }

    #[tokio::test]
    async fn header_and_path_names_share_a_queue() {
        let conn = remote_conn(1).with_process(None);
        let by_header = identify(
            &FairBy::Auto,
            &headers(&[(AGENT_HEADER, "al ice")]),
            None,
            &conn,
        )
        .await;
        let uri: Uri = "/a/al%20ice/v1/messages".parse().unwrap();
        let (name, _) = strip_agent_prefix(&uri).unwrap();
        let by_path = identify(&FairBy::Auto, &HeaderMap::new(), Some(&name), &conn).await;
        assert_eq!(by_header, by_path);
    }

    #[tokio::test]
    async fn empty_or_invalid_names_fall_through() {
        let conn = remote_conn(3).with_process(None);
        let blank = headers(&[(AGENT_HEADER, "  "), (SESSION_HEADER, "s-2")]);
        let key = identify(&FairBy::Auto, &blank, Some(""), &conn).await;
        assert_eq!(key.as_str(), "session:s-2");

        let blank_session = headers(&[(SESSION_HEADER, "")]);
        let key = identify(&FairBy::Auto, &blank_session, Some("\u{7}"), &conn).await;
        assert_eq!(key.as_str(), "conn:3");
    }

    #[tokio::test]
    async fn explicit_modes_use_one_source_then_the_connection() {
        let conn = remote_conn(5).with_process(Some(SOME_PROCESS));
        let h = headers(&[
            (AGENT_HEADER, "alice"),
            (SESSION_HEADER, "s-1"),
            ("x-api-key", "sk-ant-api03-secret"),
            ("x-team", "blue"),
        ]);
        let key = |mode: &str| {
            let mode: FairBy = mode.parse().unwrap();
            let (h, conn) = (h.clone(), conn.clone());
            async move { identify(&mode, &h, Some("bob"), &conn).await.to_string() }
        };
        assert_eq!(key("connection").await, "conn:5");
        assert_eq!(key("process").await, "pid:4242@99");
        assert_eq!(key("ip").await, "ip:203.0.113.7");
        assert_eq!(
            key("api-key").await,
            format!("key:{}", Fingerprint::of_request(&h))
        );
        assert_eq!(key("header:x-team").await, "header:blue");
        // The path name only counts in auto mode.
        assert_eq!(key("header:x-missing").await, "conn:5");

        let no_process = remote_conn(6).with_process(None);
        let key = identify(&FairBy::Process, &h, None, &no_process).await;
        assert_eq!(key.as_str(), "conn:6");
        let key = identify(&FairBy::ApiKey, &HeaderMap::new(), None, &no_process).await;
        assert_eq!(key.as_str(), "conn:6");
    }

    #[tokio::test]
    async fn ip_mode_unmaps_ipv4_mapped_peers() {
        let conn = ConnectionInfo::new(
            1,
            "[::ffff:10.1.2.3]:5000".parse().unwrap(),
            "[::ffff:10.1.2.1]:4000".parse().unwrap(),
        );
        let key = identify(&FairBy::Ip, &HeaderMap::new(), None, &conn).await;
        assert_eq!(key.as_str(), "ip:10.1.2.3");
    }

    #[tokio::test]
    async fn secrets_never_appear_in_keys() {
        let secret = "sk-ant-api03-very-secret-value";
        let conn = remote_conn(9).with_process(None);
        for name in [
            "x-api-key",
            "authorization",
            "proxy-authorization",
            "cookie",
            "x-auth-token",
        ] {
            let value = if name.contains("auth") {
                format!("Bearer {secret}")
            } else {
                secret.to_owned()
            };
            let h = headers(&[(name, &value)]);
            let mode: FairBy = format!("header:{name}").parse().unwrap();
            let key = identify(&mode, &h, None, &conn).await;
            assert_eq!(key.source(), "header", "{name}");
            assert!(!key.as_str().contains("secret"), "{name}: {key}");
            assert!(!key.as_str().contains("sk-ant"), "{name}: {key}");
            assert_eq!(key.as_str().len(), "header:".len() + 12, "{name}: {key}");

            let key = identify(&FairBy::ApiKey, &h, None, &conn).await;
            assert!(!key.as_str().contains("secret"), "{name}: {key}");
        }
        // Different credentials still get different queues.
        let a = identify(
            &FairBy::ApiKey,
            &headers(&[("x-api-key", "k1")]),
            None,
            &conn,
        )
        .await;
        let b = identify(
            &FairBy::ApiKey,
            &headers(&[("x-api-key", "k2")]),
            None,
            &conn,
        )
        .await;
        assert_ne!(a, b);
    }

    #[test]
    fn identify_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let conn = remote_conn(1);
        let headers = HeaderMap::new();
        let future = identify(&FairBy::Auto, &headers, None, &conn);
        assert_send(&future);
    }

    #[tokio::test]
    async fn lookup_runs_once_and_is_cached() {
        let conn = remote_conn(2);
        assert_eq!(conn.process_now(), None);
        conn.start_process_lookup();
        conn.start_process_lookup();
        assert_eq!(conn.process(Duration::from_secs(5)).await, None);
        assert_eq!(
            *conn.0.process.borrow(),
            Lookup::Done(None),
            "a remote peer is looked up and cached as not found"
        );
    }

    #[cfg(target_os = "linux")]
    mod real_sockets {
        use super::*;
        use tokio::net::{TcpListener, TcpStream};

        /// Connects from this process and accepts, as the server would, starting the lookup.
        async fn connect_and_accept(
            listener: &TcpListener,
            id: u64,
        ) -> (ConnectionInfo, TcpStream, TcpStream) {
            let client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let conn = ConnectionInfo::new(id, peer, stream.local_addr().unwrap());
            conn.start_process_lookup();
            (conn, client, stream)
        }

        #[tokio::test]
        async fn this_process_is_found_through_proc() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = TcpStream::connect(addr).await.unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let conn = ConnectionInfo::new(1, peer, stream.local_addr().unwrap());
            conn.start_process_lookup();
            let found = conn.process(Duration::from_secs(10)).await.unwrap();
            assert_eq!(found.pid, std::process::id());
            assert_eq!(conn.process_now(), Some(found));
            drop(client);
        }

        #[tokio::test]
        async fn two_connections_one_process_one_queue() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let first = connect_and_accept(&listener, 1).await;
            let second = connect_and_accept(&listener, 2).await;
            let h = HeaderMap::new();
            let (a, b) = (&first.0, &second.0);
            // Generous bound: the test host may be busy; production uses PROCESS_LOOKUP_WAIT.
            a.process(Duration::from_secs(10)).await.unwrap();
            b.process(Duration::from_secs(10)).await.unwrap();
            let pa = identify(&FairBy::Process, &h, None, a).await;
            let pb = identify(&FairBy::Process, &h, None, b).await;
            assert_eq!(pa, pb);
            assert!(
                pa.as_str()
                    .starts_with(&format!("pid:{}@", std::process::id())),
                "{pa}"
            );
            assert_eq!(identify(&FairBy::Auto, &h, None, a).await, pa);
            let ca = identify(&FairBy::Connection, &h, None, a).await;
            let cb = identify(&FairBy::Connection, &h, None, b).await;
            assert_ne!(ca, cb);
            assert_eq!((ca.as_str(), cb.as_str()), ("conn:1", "conn:2"));
        }

        /// The parent pid of `pid`, from field 4 of `/proc/<pid>/stat`.
        fn parent_of(pid: u32) -> Option<u32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().nth(1)?.parse().ok()
        }

        #[tokio::test]
        async fn a_child_process_is_a_different_agent() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let mut child = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 5"))
                .spawn()
                .expect("bash is installed");
            let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
            let (stream, peer) = accepted.unwrap().unwrap();
            let child_conn = ConnectionInfo::new(1, peer, stream.local_addr().unwrap());
            child_conn.start_process_lookup();
            let found = child_conn.process(Duration::from_secs(10)).await;

            let (own_conn, _own_client, _own_stream) = connect_and_accept(&listener, 2).await;
            let own = own_conn.process(Duration::from_secs(10)).await;

            let child_pid = child.id();
            // bash may hand fd 3 on to a forked `sleep`; either one is the child's side.
            let child_side =
                found.map(|p| p.pid == child_pid || parent_of(p.pid) == Some(child_pid));
            let _ = child.kill();
            let _ = child.wait();
            drop(stream);

            let found = found.expect("child's socket found");
            assert_eq!(child_side, Some(true), "found {found}, child {child_pid}");
            assert_eq!(own.map(|p| p.pid), Some(std::process::id()));
            let h = HeaderMap::new();
            assert_ne!(
                identify(&FairBy::Process, &h, None, &child_conn).await,
                identify(&FairBy::Process, &h, None, &own_conn).await
            );
        }
    }
}
