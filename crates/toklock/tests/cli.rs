//! The `toklock` binary as a user runs it: banner, errors, signals, exit codes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_toklock");

/// Starts toklock on a free port (with a dead upstream) and returns it with its base URL.
fn start(extra: &[&str]) -> (Child, String) {
    let args = [
        &["--port", "0", "--upstream", "http://127.0.0.1:1"][..],
        extra,
    ]
    .concat();
    common::spawn_toklock(&args, &[])
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn sigterm_and_sigint_exit_zero() {
    for sig in ["TERM", "INT"] {
        let (mut child, url) = start(&[]);
        assert!(url.starts_with("http://127.0.0.1:"));
        signal(&child, sig);
        assert_eq!(
            wait_exit(&mut child, Duration::from_secs(10)),
            Some(0),
            "SIG{sig}"
        );
    }
}

#[test]
fn health_subcommand_reports_a_running_proxy() {
    let (mut child, url) = start(&[]);
    let out = Command::new(BIN)
        .args(["health", "--url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\""));
    signal(&child, "TERM");
    wait_exit(&mut child, Duration::from_secs(10));
    let out = Command::new(BIN)
        .args(["health", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a stopped proxy is unhealthy");
}

#[test]
fn port_in_use_is_one_line_and_non_zero() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN).args(["--port", &port]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line, got: {err}");
    assert!(
        err.contains("already in use") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn bad_flags_fail_without_a_panic() {
    for args in [
        &["--bogus"][..],
        &["--port", "99999"],
        &["--upstream", "ftp://x"],
        &["--host", "nohost"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("toklock {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--port",
        "--host",
        "--upstream",
        "--log",
        "--max-body",
        "--shutdown-grace",
        "TOKLOCK_PORT",
    ] {
        assert!(help.contains(flag), "--help should mention {flag}");
    }
}

#[test]
fn env_twins_configure_the_listener() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let mut child = Command::new(BIN)
        .env("TOKLOCK_PORT", port.to_string())
        .env("TOKLOCK_HOST", "127.0.0.1")
        .env("TOKLOCK_UPSTREAM", "http://127.0.0.1:1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    stderr.read_line(&mut banner).unwrap();
    assert!(banner.contains(&format!("127.0.0.1:{port}")), "{banner}");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
}

/// The first signal drains (an open stream keeps the process alive); a second one exits at
/// once with 130.
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = mock_anthropic::MockServer::start(mock_anthropic::MockConfig {
        tokens_per_sec: 5.0,
        default_output_tokens: 200,
        ..Default::default()
    })
    .await
    .unwrap();
    let upstream = mock.url();
    let (mut child, url) = tokio::task::spawn_blocking(move || {
        common::spawn_toklock(
            &["--port", "0", "--log", "warn", "--upstream", &upstream],
            &[],
        )
    })
    .await
    .unwrap();

    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":200,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));

    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the open stream should keep toklock draining"
    );
    let started = Instant::now();
    signal(&child, "INT");
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(130));
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(stream);
}
