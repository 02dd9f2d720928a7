//! The `mock-anthropic` binary: announces its port, serves, and exits on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

#[tokio::test]
async fn binary_prints_port_serves_and_exits_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-anthropic"))
        .args([
            "--port",
            "0",
            "--rpm",
            "7",
            "--output-tokens",
            "3",
            "--output-mode",
            "generated",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .trim()
        .strip_prefix("listening on http://")
        .expect(&first);
    let addr: SocketAddr = url.parse().unwrap();

    let r = messages(addr, &[], false).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        header_u64(&r.headers, "anthropic-ratelimit-requests-limit"),
        7
    );
    assert_eq!(r.json()["usage"]["output_tokens"], 3);

    // Signal only the child we started, by its id.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("binary did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
